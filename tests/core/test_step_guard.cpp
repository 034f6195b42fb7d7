// The transactional step guard (core/step_guard.hpp) and registration by object address:
// the one-pass finiteness check against an element-by-element scan, begin_step's refusals,
// checked stores, GuardedUpdate's refusals after blocks and tiles were written in place
// (bit-for-bit rollback, NonFiniteInput before Overflow), restore validation messages, the moved-from sentinel, and vectors followed through
// reassignment.
#include <catch2/catch.hpp>
#include <kfopt/core/step_guard.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <utility>
#include <vector>

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

namespace {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Two blocks spanning several tiles each, with lengths that are not multiples of a tile or
// of a SIMD packet, so a refusal can come after whole blocks and tiles were written in place.
template <typename S>
struct TwoBlocks {
  // Three tiles, the last one 3 elements long.
  static constexpr Eigen::Index kLength = 2 * kfopt::detail::GuardedUpdate<S>::kTile + 3;
  TwoBlocks()
      : W(Mat<S>::Random(61, 97)), dW(Mat<S>::Random(61, 97)), b(Mat<S>::Random(kLength, 1)),
        db(Mat<S>::Random(kLength, 1)) {
    params.add("w", W, dW);
    params.add("b", b, db);
  }
  Mat<S> W, dW, b, db;
  kfopt::ParameterSet<S> params;
};

template <typename S>
bool same_bits(const Mat<S>& x, const Mat<S>& y) {
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::memcmp(x.data(), y.data(), sizeof(S) * static_cast<std::size_t>(x.size())) == 0;
}

// p ← p − 2 ∇, state s ← ∇ · scale, through checked stores (the optimizers' pattern).
template <typename S>
kfopt::Status guarded_step(kfopt::detail::GuardedUpdate<S>& guarded, kfopt::ParameterSet<S>& params,
                           kfopt::BlockBuffers<S>& state, S scale) {
  kfopt::detail::shape_buffers_like(state, params);
  return guarded.run("kfopt::Test::step", params,
                     [&](std::size_t i, Eigen::Index o, Eigen::Index n, const auto& grad, const auto& p,
                         auto& pn, auto& guard) {
                       return guard.checked(kfopt::detail::store(kfopt::detail::tile(state[i], o, n), grad * scale),
                                            kfopt::detail::store(pn, p - S(2) * grad));
                     });
}

}  // namespace

TEMPLATE_TEST_CASE("store_checked: every term reads the values before the pass; the check agrees with a scan", "[core][guard]",
                   float, double) {
  using S = TestType;
  using L = std::numeric_limits<S>;
  using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
  std::mt19937 rng(11);
  for (const Eigen::Index n : {Eigen::Index(1), Eigen::Index(7), Eigen::Index(16), Eigen::Index(37), Eigen::Index(2053)}) {
    for (int trial = 0; trial < 12; ++trial) {
      Arr x = Arr::Random(n), y = Arr::Random(n), a(n), b(n);
      const S specials[] = {L::quiet_NaN(), L::infinity(), -L::infinity(), L::max()};
      if (trial % 2 == 1) {
        std::uniform_int_distribution<Eigen::Index> at(0, n - 1);
        (trial % 4 == 1 ? x : y)(at(rng)) = specials[(trial / 2) % 4];
      }
      kfopt::detail::Tile<S> ta(a.data(), n), tb(b.data(), n);
      // b ← b + x and x ← x − x0 are stored over their own inputs: every term reads the values
      // from before the pass (b = y + x0, a = 2·x0), whatever the order of the terms.
      b = y;
      const Arr twice = S(2) * x;
      const Arr plus = y + x;
      kfopt::detail::Tile<S> tx(x.data(), n);
      const Arr x0 = x;
      const bool finite = kfopt::detail::store_checked<S>(
          n, kfopt::detail::store(ta, S(2) * x), kfopt::detail::check(y), kfopt::detail::store(tb, tb + x),
          kfopt::detail::store(tx, x - x0));
      CHECK(std::memcmp(a.data(), twice.data(), sizeof(S) * static_cast<std::size_t>(n)) == 0);
      CHECK(std::memcmp(b.data(), plus.data(), sizeof(S) * static_cast<std::size_t>(n)) == 0);
      CHECK(finite == (scan_finite(twice) && scan_finite(y) && scan_finite(plus) && scan_finite(x0)));
      // x was stored over (x − x0 at the old x: 0, or NaN where x0 was not finite) after the
      // other terms had read it.
      CHECK(scan_finite(x) == scan_finite(x0));
    }
  }
}

TEMPLATE_TEST_CASE("GuardedUpdate: a refusal in a late tile leaves every block bit-for-bit unchanged",
                   "[core][guard]", float, double) {
  using S = TestType;
  using L = std::numeric_limits<S>;
  TwoBlocks<S> m;
  kfopt::detail::GuardedUpdate<S> guarded;
  kfopt::BlockBuffers<S> state;
  const Mat<S> W0 = m.W, b0 = m.b;
  REQUIRE(guarded_step(guarded, m.params, state, S(1)) == kfopt::Status::Success);
  CHECK(m.W.isApprox(W0 - S(2) * m.dW));
  CHECK(m.b.isApprox(b0 - S(2) * m.db));
  CHECK(same_bits(state[1], m.db));
  struct Case {
    const char* name;
    std::function<void(TwoBlocks<S>&)> inject;
    kfopt::Status expected;
    std::function<void(TwoBlocks<S>&)> undo;
  };
  const std::vector<Case> cases = {
      {"NaN gradient, last entry of the last block",
       [](TwoBlocks<S>& t) { t.db(t.db.size() - 1) = L::quiet_NaN(); }, kfopt::Status::NonFiniteInput,
       [](TwoBlocks<S>& t) { t.db(t.db.size() - 1) = S(0.5); }},
      {"Inf parameter, in the last (third) tile of the last block",
       [](TwoBlocks<S>& t) { t.b(t.b.size() - 2) = L::infinity(); }, kfopt::Status::NonFiniteInput,
       [](TwoBlocks<S>& t) { t.b(t.b.size() - 2) = S(0.25); }},
      {"overflowing result (p − 2∇ with ∇ = max), last block",
       [](TwoBlocks<S>& t) { t.db(t.db.size() - 30) = -L::max(); }, kfopt::Status::Overflow,
       [](TwoBlocks<S>& t) { t.db(t.db.size() - 30) = S(0.5); }},
      {"overflow in the first block, NaN gradient later: NonFiniteInput wins",
       [](TwoBlocks<S>& t) {
         t.dW(10, 3) = -L::max();
         t.db(t.db.size() - 1) = L::quiet_NaN();
       },
       kfopt::Status::NonFiniteInput,
       [](TwoBlocks<S>& t) {
         t.dW(10, 3) = S(0.5);
         t.db(t.db.size() - 1) = S(0.5);
       }},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    c.inject(m);
    const Mat<S> W = m.W, b = m.b;
    CHECK(guarded_step(guarded, m.params, state, S(1)) == c.expected);
    CHECK(same_bits(m.W, W));
    CHECK(same_bits(m.b, b));
    c.undo(m);
    REQUIRE(guarded_step(guarded, m.params, state, S(1)) == kfopt::Status::Success);
  }
  // A state result that overflows (∇ · max) refuses too, and leaves the parameters.
  m.dW(0, 0) = S(4);
  const Mat<S> W = m.W, b = m.b;
  CHECK(guarded_step(guarded, m.params, state, L::max()) == kfopt::Status::Overflow);
  CHECK(same_bits(m.W, W));
  CHECK(same_bits(m.b, b));
}

TEST_CASE("GuardedUpdate with GuardedInputs::Values does not read the gradients", "[core][guard]") {
  TwoBlocks<double> m;
  m.db(17) = std::numeric_limits<double>::quiet_NaN();
  kfopt::detail::GuardedUpdate<double> guarded;
  const Eigen::MatrixXd W = m.W;
  const kfopt::Status s = guarded.run(
      "kfopt::Test::predict", m.params,
      [&](std::size_t, Eigen::Index, Eigen::Index, const auto&, const auto& p, auto& pn, auto& guard) {
        return guard.checked(kfopt::detail::store(pn, 0.5 * p));
      },
      kfopt::detail::GuardedInputs::Values);
  CHECK(s == kfopt::Status::Success);
  CHECK(m.W.isApprox(0.5 * W));
  m.b(m.b.size() - 1) = std::numeric_limits<double>::infinity();
  const Eigen::MatrixXd W2 = m.W, b2 = m.b;
  CHECK(guarded.run(
            "kfopt::Test::predict", m.params,
            [&](std::size_t, Eigen::Index, Eigen::Index, const auto&, const auto& p, auto& pn, auto& guard) {
              return guard.checked(kfopt::detail::store(pn, 0.5 * p));
            },
            kfopt::detail::GuardedInputs::Values) == kfopt::Status::NonFiniteInput);
  CHECK(same_bits(m.W, W2));
  CHECK(same_bits(m.b, b2));
}
