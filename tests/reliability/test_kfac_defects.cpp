// K-FAC's part of the non-finite audit: each test reproduces a reported failure of Kfac and
// its blocks in a few lines and asserts the fixed behaviour.
//   - one huge but finite statistic (1e300 in double, 1e30 in float) poisoned A or G;
//   - KL clipping was skipped when Σ⟨Δ, Z⟩ overflowed, so a huge gradient took a huge step;
//   - a refused step folded the lazily scaled factor averages in place, so the run that
//     had the refused call differed in the last bits from the run that had not;
//   - a NaN already in the caller's weights was stepped into every weight;
//   - infinite weight decay, KL bound or damping bound were accepted.
#include <catch2/catch.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <typename Derived>
bool bits_equal(const Eigen::DenseBase<Derived>& a, const Eigen::DenseBase<Derived>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.derived().data(), b.derived().data(),
                     sizeof(typename Derived::Scalar) * static_cast<std::size_t>(a.size())) == 0;
}

// A deterministic, finite batch that changes with `t` (no two steps alike).
template <typename Scalar>
Mat<Scalar> batch(Eigen::Index rows, Eigen::Index cols, int t, double phase) {
  Mat<Scalar> m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i) {
      m(i, j) = static_cast<Scalar>(std::sin(0.7 * static_cast<double>(i + 3 * j) + 1.3 * t + phase));
    }
  }
  return m;
}

template <typename Scalar>
Scalar huge() {
  return static_cast<Scalar>(sizeof(Scalar) == sizeof(float) ? 1e30 : 1e300);
}

// A dense layer 3 → 2 registered with `layer` options.
template <typename Scalar>
struct DenseNet {
  Mat<Scalar> W = batch<Scalar>(2, 3, 0, 0.1), dW = Mat<Scalar>::Zero(2, 3);
  Vec<Scalar> b = Vec<Scalar>::Constant(2, Scalar(0.05)), db = Vec<Scalar>::Zero(2);
  kfopt::Kfac<Scalar> kfac;
  std::size_t id;
  DenseNet(kfopt::KfacOptions o, bool bias, kfopt::DenseLayerOptions layer = {})
      : kfac(o), id(bias ? kfac.add_dense_layer("fc", W, dW, b, db, layer)
                         : kfac.add_dense_layer("fc", W, dW, layer)) {}
  void gradients(int t) {
    dW = batch<Scalar>(2, 3, t, 2.0) * Scalar(0.1);
    db = batch<Scalar>(2, 1, t, 3.0) * Scalar(0.1);
  }
  kfopt::Status statistics(int t) {
    return kfac.record_statistics(id, batch<Scalar>(8, 3, t, 0.5), batch<Scalar>(8, 2, t, 1.5));
  }
};

}  // namespace

TEMPLATE_TEST_CASE("K-FAC: one huge statistic is refused whole and leaves A and G unchanged",
                   "[reliability][kfac]", float, double) {
  using S = TestType;
  kfopt::KfacOptions chol;
  chol.inverse_method = kfopt::InverseMethod::Cholesky;
  kfopt::DenseLayerOptions diagonal;
  diagonal.input_factor = kfopt::FactorStructure::Diagonal;
  diagonal.gradient_factor = kfopt::FactorStructure::Diagonal;
  struct Case {
    const char* name;
    kfopt::KfacOptions o;
    bool bias;
    kfopt::DenseLayerOptions layer;
  };
  for (const Case& c : {Case{"dense", {}, true, {}}, Case{"dense, Cholesky", chol, true, {}},
                        Case{"diagonal factors", {}, true, diagonal}, Case{"no bias", {}, false, {}}}) {
    for (int which = 0; which < 2; ++which) {
      INFO(c.name << ", huge entry in " << (which == 0 ? "a" : "g"));
      DenseNet<S> net(c.o, c.bias, c.layer);
      REQUIRE(net.statistics(0) == kfopt::Status::Success);
      REQUIRE(net.statistics(1) == kfopt::Status::Success);  // the average is lazily scaled now
      const Mat<S> A = net.kfac.block(net.id).input_factor();
      const Mat<S> G = net.kfac.block(net.id).gradient_factor();
      Mat<S> a = batch<S>(8, 3, 2, 0.5), g = batch<S>(8, 2, 2, 1.5);
      (which == 0 ? a(3, 1) : g(5, 0)) = huge<S>();
      CHECK(net.kfac.record_statistics(net.id, a, g) == kfopt::Status::Overflow);
      CHECK(net.kfac.state().skipped_statistics == 1);
      CHECK(bits_equal(net.kfac.block(net.id).input_factor(), A));
      CHECK(bits_equal(net.kfac.block(net.id).gradient_factor(), G));
      // The block keeps training on good data.
      CHECK(net.statistics(2) == kfopt::Status::Success);
      net.gradients(0);
      CHECK(net.kfac.step() == kfopt::Status::Success);
      CHECK(net.W.allFinite());
      CHECK(net.kfac.block(net.id).input_factor().allFinite());
    }
  }
}

TEMPLATE_TEST_CASE("K-FAC recurrent block: one huge statistic is refused whole in every approximation",
                   "[reliability][kfac]", float, double) {
  using S = TestType;
  for (auto approx : {kfopt::RecurrentApproximation::Independent, kfopt::RecurrentApproximation::Option1,
                      kfopt::RecurrentApproximation::Option2}) {
    for (int which = 0; which < 2; ++which) {
      INFO("approximation " << static_cast<int>(approx) << ", huge entry in " << (which == 0 ? "a" : "g"));
      Mat<S> W = batch<S>(2, 3, 0, 0.2), dW = Mat<S>::Zero(2, 3);
      Vec<S> b = Vec<S>::Zero(2), db = Vec<S>::Zero(2);
      kfopt::Kfac<S> kfac;
      kfopt::RecurrentLayerOptions ro;
      ro.approximation = approx;
      const std::size_t id = kfac.add_recurrent_layer("rnn", W, dW, b, db, ro);
      const Eigen::VectorXi lengths = (Eigen::VectorXi(3) << 3, 1, 2).finished();
      REQUIRE(kfac.record_sequence_statistics(id, batch<S>(9, 3, 0, 0.5), batch<S>(9, 2, 0, 1.5), lengths) ==
              kfopt::Status::Success);
      const auto& blk = kfac.recurrent_block(id);
      const Mat<S> A0 = blk.a0(), A1 = blk.a1(), G0 = blk.g0(), G1 = blk.g1();
      Mat<S> a = batch<S>(9, 3, 1, 0.5), g = batch<S>(9, 2, 1, 1.5);
      (which == 0 ? a(3, 2) : g(6, 1)) = huge<S>();  // rows of real steps (t = 1, i = 0; t = 2, i = 0)
      CHECK(kfac.record_sequence_statistics(id, a, g, lengths) == kfopt::Status::Overflow);
      CHECK(bits_equal(blk.a0(), A0));
      CHECK(bits_equal(blk.a1(), A1));
      CHECK(bits_equal(blk.g0(), G0));
      CHECK(bits_equal(blk.g1(), G1));
      // A huge value in a padded step is never read: the batch is accepted.
      Mat<S> padded = batch<S>(9, 3, 1, 0.5);
      padded(4, 0) = huge<S>();  // t = 1, i = 1: sequence 1 has length 1
      CHECK(kfac.record_sequence_statistics(id, padded, batch<S>(9, 2, 1, 1.5), lengths) ==
            kfopt::Status::Success);
      CHECK(blk.a0().allFinite());
    }
  }
}

TEMPLATE_TEST_CASE("K-FAC: KL clipping holds when the sum of <Delta, Z> overflows", "[reliability][kfac]", float,
                   double) {
  using S = TestType;
  // With momentum 0 and no weight decay, a clipped step is invariant to the gradient's
  // scale (Δ scales with it, ν inversely), so the step from c·∇ must equal the step from ∇.
  const S scale = static_cast<S>(sizeof(S) == sizeof(float) ? 1e20 : 1e160);
  kfopt::KfacOptions o;
  o.momentum = 0.0;
  o.learning_rate = 0.5;
  o.kl_clip = 1e-6;
  o.damping = 1e-2;
  DenseNet<S> small(o, true), big(o, true);
  for (auto* net : {&small, &big}) REQUIRE(net->statistics(0) == kfopt::Status::Success);
  small.gradients(1);
  big.gradients(1);
  big.dW *= scale;
  big.db *= scale;
  REQUIRE(small.kfac.step() == kfopt::Status::Success);
  REQUIRE(small.kfac.state().last_clip_scale < 1.0);  // the small step is clipped too
  REQUIRE(big.kfac.step() == kfopt::Status::Success);
  CHECK(big.kfac.state().last_clip_scale < 1e-10);
  const Mat<S> W0 = batch<S>(2, 3, 0, 0.1);
  const Mat<S> step_small = small.W - W0, step_big = big.W - W0;
  const double tol = sizeof(S) == sizeof(float) ? 1e-4 : 1e-10;
  CHECK((step_big - step_small).norm() <= tol * step_small.norm());
  CHECK((big.b - small.b).norm() <= tol * (small.b - Vec<S>::Constant(2, S(0.05))).norm());
}

TEMPLATE_TEST_CASE("K-FAC: a refused step is a bit-for-bit no-op for the rest of the run",
                   "[reliability][kfac]", float, double) {
  using S = TestType;
  kfopt::KfacOptions o;
  o.inverse_period = 5;
  o.learning_rate = 0.05;
  o.kl_clip = 0.0;
  // Both runs record statistics every iteration and step on iterations other than 2. On
  // iteration 2 (the factor averages lazily scaled, the next statistics arriving before
  // the next refresh), run B calls step() on a NaN gradient, which is refused; run A makes
  // no call. The two runs must end bit for bit alike.
  auto run = [&](bool refused_call) {
    DenseNet<S> net(o, true);
    for (int t = 0; t < 9; ++t) {
      REQUIRE(net.statistics(t) == kfopt::Status::Success);
      net.gradients(t);
      if (t == 2) {
        if (refused_call) {
          net.dW(1, 1) = std::numeric_limits<S>::quiet_NaN();
          REQUIRE(net.kfac.step() == kfopt::Status::NonFiniteInput);
        }
        continue;
      }
      REQUIRE(net.kfac.step() == kfopt::Status::Success);
    }
    return std::make_pair(Mat<S>(net.W), Vec<S>(net.b));
  };
  const auto a = run(false), b = run(true);
  CHECK(bits_equal(a.first, b.first));
  CHECK(bits_equal(a.second, b.second));
}

TEMPLATE_TEST_CASE("K-FAC: a NaN already in the caller's weights is refused, not stepped",
                   "[reliability][kfac]", float, double) {
  using S = TestType;
  DenseNet<S> net({}, true);
  REQUIRE(net.statistics(0) == kfopt::Status::Success);
  net.W(0, 2) = std::numeric_limits<S>::quiet_NaN();
  net.gradients(0);
  const Mat<S> W = net.W;
  const Vec<S> b = net.b;
  CHECK(net.kfac.step() == kfopt::Status::NonFiniteInput);
  CHECK(net.kfac.state().counters.skipped_nonfinite == 1);
  CHECK(bits_equal(net.W, W));
  CHECK(bits_equal(net.b, b));
  net.W(0, 2) = S(0.1);
  CHECK(net.kfac.step() == kfopt::Status::Success);
  CHECK(net.W.allFinite());
}

TEST_CASE("KfacOptions refuse infinite weight decay, KL bound and damping bound", "[reliability][kfac]") {
  const double inf = std::numeric_limits<double>::infinity();
  kfopt::KfacOptions o;
  o.weight_decay = inf;
  CHECK_THROWS_AS(o.validate(), kfopt::HyperparameterError);
  o = {};
  o.kl_clip = inf;
  CHECK_THROWS_AS(o.validate(), kfopt::HyperparameterError);
  o = {};
  o.max_damping = inf;
  CHECK_THROWS_AS(o.validate(), kfopt::HyperparameterError);
  o = {};
  CHECK_NOTHROW(o.validate());
}
