// The transactional step guard (core/step_guard.hpp) and registration by object address:
// the one-pass finiteness check against an element-by-element scan, begin_step's refusals,
// restore validation messages, the moved-from sentinel, and vectors followed through
// reassignment.
#include <catch2/catch.hpp>
#include <kfopt/core/step_guard.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <utility>

namespace {

template <typename Derived>
bool scan_finite(const Eigen::DenseBase<Derived>& x) {
  for (Eigen::Index j = 0; j < x.cols(); ++j)
    for (Eigen::Index i = 0; i < x.rows(); ++i)
      if (!std::isfinite(static_cast<double>(x(i, j)))) return false;
  return true;
}

}  // namespace

TEMPLATE_TEST_CASE("all_finite agrees with an element-by-element scan", "[core][guard]", float, double) {
  using S = TestType;
  using L = std::numeric_limits<S>;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> pick(0, 6);
  const S specials[] = {L::quiet_NaN(), L::infinity(), -L::infinity(), L::max(), -L::max(),
                        L::denorm_min(), S(0)};
  for (int trial = 0; trial < 200; ++trial) {
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> a = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>::Random(7, 5);
    Eigen::Matrix<S, Eigen::Dynamic, 1> b = Eigen::Matrix<S, Eigen::Dynamic, 1>::Random(13);
    const int hits = trial % 3;
    for (int h = 0; h < hits; ++h) {
      a(trial % 7, (trial / 7) % 5) = specials[pick(rng)];
      b((trial * 3) % 13) = specials[pick(rng)];
    }
    CHECK(kfopt::detail::all_finite(a) == scan_finite(a));
    CHECK(kfopt::detail::all_finite(a, b) == (scan_finite(a) && scan_finite(b)));
  }
  Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> all_max =
      Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>::Constant(4, 4, L::max());
  CHECK(kfopt::detail::all_finite(all_max));  // the sum of x − x cannot overflow
  CHECK(kfopt::detail::all_finite(Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>(0, 3)));
}

TEST_CASE("begin_step refuses a NaN parameter in storage and names the operation on a resize",
          "[core][guard]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Ones(2, 2), dW = Eigen::MatrixXd::Zero(2, 2);
  Eigen::VectorXd b = Eigen::VectorXd::Ones(2), db = Eigen::VectorXd::Zero(2);
  kfopt::ParameterSet<double> params;
  params.add("fc.weight", W, dW);
  params.add("fc.bias", b, db);
  kfopt::StepCounters counters;
  CHECK(kfopt::detail::begin_step("kfopt::Test::step", params, counters) == kfopt::Status::Success);
  b(1) = std::numeric_limits<double>::quiet_NaN();
  CHECK(kfopt::detail::begin_step("kfopt::Test::step", params, counters) ==
        kfopt::Status::NonFiniteInput);
  CHECK(counters.skipped_nonfinite == 1);
  b(1) = 1.0;
  db.resize(3);
  CHECK_THROWS_WITH(kfopt::detail::begin_step("kfopt::Test::step", params, counters),
                    Catch::Contains("kfopt::Test::step") && Catch::Contains("gradient of 'fc.bias'") &&
                        Catch::Contains("3x1") && Catch::Contains("2x1"));
  db.resize(2);
  b.resize(4);
  CHECK_THROWS_WITH(kfopt::detail::begin_step("kfopt::Test::step", params, counters),
                    Catch::Contains("parameter 'fc.bias'") && Catch::Contains("4x1"));
}

TEST_CASE("vectors are followed through reassignment, raw storage by address", "[core][params][asan]") {
  Eigen::VectorXd b = Eigen::VectorXd::Ones(3), db = Eigen::VectorXd::Zero(3);
  kfopt::ParameterSet<double> params;
  auto& block = params.add("bias", b, db);
  b = Eigen::VectorXd::Constant(3, 2.0).eval();  // new buffer, old one freed
  db = Eigen::VectorXd::Constant(3, 5.0).eval();
  CHECK(block.value().data() == b.data());
  CHECK(block.gradient().data() == db.data());
  block.value()(0) = 7.0;
  CHECK(b(0) == 7.0);
  CHECK(block.gradient()(2) == 5.0);
  double raw[4] = {1, 2, 3, 4}, graw[4] = {0, 0, 0, 0};
  Eigen::Map<Eigen::MatrixXd> map(raw, 2, 2);
  auto& rb = params.add("raw", map.data(), graw, 2, 2);
  rb.value()(1, 1) = 9.0;
  CHECK(raw[3] == 9.0);
}

TEST_CASE("restore validation names the operation, the entry, the block and the value",
          "[core][guard]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Ones(2, 2), dW = Eigen::MatrixXd::Zero(2, 2);
  kfopt::ParameterSet<double> params;
  params.add("fc.weight", W, dW);
  kfopt::BlockBuffers<double> v = kfopt::detail::zero_buffers_like(params);
  v[0](1, 0) = -2.5;
  CHECK_THROWS_WITH(kfopt::detail::require_state_buffers("kfopt::Test::set_state", "second_moment", v,
                                                         params, kfopt::detail::BufferRange::NonNegative),
                    Catch::Contains("kfopt::Test::set_state") && Catch::Contains("second_moment") &&
                        Catch::Contains("fc.weight") && Catch::Contains("-2.5") && Catch::Contains(">= 0"));
  CHECK_NOTHROW(kfopt::detail::require_state_buffers("op", "m", v, params, kfopt::detail::BufferRange::Finite));
  v[0](0, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(kfopt::detail::require_state_buffers("op", "m", v, params, kfopt::detail::BufferRange::Finite),
                  kfopt::InvalidInputError);
  kfopt::StepCounters c;
  c.steps = -1;
  CHECK_THROWS_WITH(kfopt::detail::require_counters("kfopt::Test::set_state", c),
                    Catch::Contains("counters.steps") && Catch::Contains("-1"));
}

TEST_CASE("MoveSentinel: moved-from objects refuse use, copies and move targets do not",
          "[core][guard]") {
  struct Holder {
    kfopt::detail::MoveSentinel usable;
  };
  Holder a;
  Holder b(std::move(a));
  CHECK_THROWS_WITH(a.usable.require("kfopt::Test::step"),  // NOLINT(bugprone-use-after-move)
                    Catch::Contains("kfopt::Test::step") && Catch::Contains("moved from"));
  CHECK_NOTHROW(b.usable.require("op"));
  Holder c = b;
  CHECK_NOTHROW(c.usable.require("op"));
  a = std::move(c);  // assigning a live object makes the target usable again
  CHECK_NOTHROW(a.usable.require("op"));
  CHECK_THROWS_AS(c.usable.require("op"), kfopt::InvalidInputError);  // NOLINT(bugprone-use-after-move)
  CHECK(to_string(kfopt::Status::Overflow) == std::string("overflow"));
}
