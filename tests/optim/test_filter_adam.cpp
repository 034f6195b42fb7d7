// Filter Adam (Aitchison 2018, §2.1.2) and the fixed-point form, checked numerically:
// - the 2×2 updates equal a general dense Kalman filter (the filter/ layer's KalmanUpdater
//   and kalman_predict) and a textbook eq. 3/4 filter with explicit inverses, run on the
//   same model (both mean forms);
// - in the limits of §2.1.2 (σ² → ∞, Σ_ww dropped from the mean, η_w = 0) the steady step
//   approaches Adam's η⟨g⟩/sqrt⟨e²⟩ as the data pin the momentum down, following the
//   steady state of eq. 20 solved without approximation; eq. 21–22 hold there;
// - Nesterov placement and the decoupled weight decay of the prior;
// - the fixed-point form runs from SGD with step σ² (σ² → 0) to AdamW (σ² → ∞);
// - bad input: rejected options, skipped non-finite steps, clamped covariances;
// - the vectorized in-place step: step() equals update() then predict() and a scalar loop of
//   the element-wise filter bit for bit (every form and Fisher estimate, clamps and pinned
//   weights included); a refusal in the last tile of a 10⁵-parameter block (NaN/Inf input, an
//   overflow in the update or in the prediction) leaves everything bit-for-bit unchanged.
#include <catch2/catch.hpp>
#include <kfopt/filter/gaussian_belief.hpp>
#include <kfopt/filter/kalman_predict.hpp>
#include <kfopt/filter/kalman_update.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/bayes_filter/filter_fixed_point.hpp>
#include <kfopt/optim/first_order/sgd.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

template <typename Scalar>
struct AdamTol;
template <>
struct AdamTol<double> {
  static constexpr double rel = 1e-10;
};
template <>
struct AdamTol<float> {
  static constexpr double rel = 2e-4;
};

struct Model {
  double eta, eta_p, eta_w, sigma2, ww0;
  double keep_w() const { return 1.0 - (eta * eta + eta_w * eta_w) / (2.0 * sigma2); }
  Mat<double> F() const {
    Mat<double> f(2, 2);
    f << keep_w(), eta, 0.0, 1.0 - eta_p;
    return f;
  }
  Mat<double> Q() const {
    Mat<double> q = Mat<double>::Zero(2, 2);
    q(0, 0) = eta_w * eta_w;
    q(1, 1) = eta_p * eta_p;
    return q;
  }
  Mat<double> P0() const {
    Mat<double> p = Mat<double>::Zero(2, 2);
    p(0, 0) = ww0;
    p(1, 1) = eta_p / (2.0 - eta_p);
    return p;
  }
};

kfopt::FilterAdamOptions options_of(const Model& m, kfopt::FilterAdamForm form) {
  kfopt::FilterAdamOptions o;
  o.learning_rate = m.eta;
  o.momentum_rate = m.eta_p;
  o.weight_noise = m.eta_w;
  o.prior_variance = m.sigma2;
  o.initial_weight_variance = m.ww0;
  o.form = form;
  o.fisher = kfopt::FisherEstimate::Supplied;
  return o;
}

// Steady state of eq. 20 (σ² → ∞, η_w = 0) without the "Σ_pp pinned" approximation: with
// x = η sqrt⟨e²⟩/η_p and Σ_wp = y η_p/sqrt⟨e²⟩, 1 = 2y(1 + sqrt(2xy))/x + y².
double continuous_y(double x) {
  double y = 0.5;
  for (int i = 0; i < 100; ++i) {
    const double sq = std::sqrt(2 * x * y);
    const double f = 2 * y * (1 + sq) / x + y * y - 1;
    const double df = 2 * (1 + sq) / x + 2 * y * (x / sq) / x + 2 * y;
    y -= f / df;
  }
  return y;
}

// A deterministic gradient stream that depends on the parameters: ∇ = G cos t + 0.3 p.
struct Stream {
  Mat<double> W0, G;
  explicit Stream(unsigned seed, Eigen::Index rows, Eigen::Index cols) {
    Rng rng(seed);
    W0 = rng.normal<double>(rows, cols);
    G = rng.normal<double>(rows, cols);
  }
  template <typename Scalar>
  Mat<Scalar> gradient(int t, const Mat<Scalar>& W) const {
    return (G * std::cos(0.7 * t) + 0.3 * W.template cast<double>()).template cast<Scalar>();
  }
};

}  // namespace

TEMPLATE_TEST_CASE("FilterAdam: the 2x2 updates equal a dense Kalman filter on the same model (eq. 3, 4, 7, 16, 17)",
                   "[optim][filter_adam]", double, float) {
  using Scalar = TestType;
  const int n = 3, steps = 40;
  const Model m{0.05, 0.2, 0.03, 0.5, 0.4};
  for (const auto form : {kfopt::FilterAdamForm::Combined, kfopt::FilterAdamForm::Adam}) {
    const bool direct = form == kfopt::FilterAdamForm::Combined;
    Rng rng(31);
    Mat<Scalar> w = rng.normal<Scalar>(n, 1), dw(n, 1);
    kfopt::ParameterSet<Scalar> params;
    params.add("w", w, dw);
    kfopt::FilterAdam<Scalar> opt(params, options_of(m, form));
    kfopt::BlockBuffers<Scalar> e{Mat<Scalar>(n, 1)};

    // Reference 1: the filter layer's dense Kalman filter over z = (w0, p0, w1, p1, ...).
    Mat<double> F = Mat<double>::Zero(2 * n, 2 * n), Q = F, P = F;
    for (int i = 0; i < n; ++i) {
      F.block(2 * i, 2 * i, 2, 2) = m.F();
      Q.block(2 * i, 2 * i, 2, 2) = m.Q();
      P.block(2 * i, 2 * i, 2, 2) = m.P0();
    }
    Vec<double> mean0 = Vec<double>::Zero(2 * n);
    for (int i = 0; i < n; ++i) mean0(2 * i) = static_cast<double>(w(i));
    kfopt::GaussianBelief<double> belief(mean0, P);
    kfopt::KalmanUpdater<double> updater;
    Mat<double> work;
    // Reference 2: textbook per-parameter filter, eq. 3 and eq. 4a with explicit inverses.
    std::vector<Mat<double>> Sigma(n, m.P0());
    std::vector<Vec<double>> mu(n, Vec<double>::Zero(2));
    for (int i = 0; i < n; ++i) mu[i](0) = static_cast<double>(w(i));

    double worst_dense = 0, worst_textbook = 0;
    for (int t = 0; t < steps; ++t) {
      dw = rng.normal<Scalar>(n, 1);
      e[0] = rng.normal<Scalar>(n, 1);
      REQUIRE(opt.update(e) == kfopt::Status::Success);
      // Dense: Λ_like = Σ_i e_i² u_i u_iᵀ (G row i picks w_i), score g = (−∇_i, 0).
      Mat<double> Gt = Mat<double>::Zero(2 * n, n);
      Vec<double> score = Vec<double>::Zero(2 * n);
      for (int i = 0; i < n; ++i) {
        Gt(2 * i, i) = static_cast<double>(e[0](i));
        score(2 * i) = -static_cast<double>(dw(i));
      }
      const Vec<double> before = belief.mean;
      REQUIRE(updater.update(belief, Gt, score) == kfopt::Status::Success);
      if (!direct) {  // Adam form: the weight's mean does not take the Σ_ww g term
        for (int i = 0; i < n; ++i) belief.mean(2 * i) = before(2 * i);
      }
      for (int i = 0; i < n; ++i) {
        Mat<double> lambda = Mat<double>::Zero(2, 2);
        lambda(0, 0) = static_cast<double>(e[0](i)) * static_cast<double>(e[0](i));
        Sigma[i] = (Sigma[i].inverse() + lambda).inverse();  // eq. 4a
        Vec<double> g(2);
        g << -static_cast<double>(dw(i)), 0.0;
        Vec<double> inc = Sigma[i] * g;  // eq. 6
        if (!direct) inc(0) = 0.0;
        mu[i] += inc;
      }
      auto compare = [&]() {
        const Mat<double> Pd = belief.covariance.covariance();
        const auto& st = opt.state();
        for (int i = 0; i < n; ++i) {
          Vec<double> got(5), dense(5), text(5);
          got << static_cast<double>(w(i)), static_cast<double>(st.momentum[0](i)),
              static_cast<double>(st.weight_variance[0](i)), static_cast<double>(st.cross_covariance[0](i)),
              static_cast<double>(st.momentum_variance[0](i));
          dense << belief.mean(2 * i), belief.mean(2 * i + 1), Pd(2 * i, 2 * i), Pd(2 * i, 2 * i + 1),
              Pd(2 * i + 1, 2 * i + 1);
          text << mu[i](0), mu[i](1), Sigma[i](0, 0), Sigma[i](0, 1), Sigma[i](1, 1);
          worst_dense = std::max(worst_dense, relative_error(got, dense));
          worst_textbook = std::max(worst_textbook, relative_error(got, text));
        }
      };
      compare();
      REQUIRE(opt.predict() == kfopt::Status::Success);
      REQUIRE(kfopt::kalman_predict<double>(belief, F, Q, work) == kfopt::Status::Success);
      for (int i = 0; i < n; ++i) {
        mu[i] = m.F() * mu[i];                                           // eq. 3a
        Sigma[i] = m.F() * Sigma[i] * m.F().transpose() + m.Q();         // eq. 3b
      }
      compare();
    }
    INFO((direct ? "Combined" : "Adam") << " form: worst relative error vs dense Kalman filter "
                                        << worst_dense << ", vs textbook " << worst_textbook);
    CHECK(worst_dense <= AdamTol<Scalar>::rel);
    CHECK(worst_textbook <= AdamTol<Scalar>::rel);
    CHECK(opt.state().clamped_variances == 0);
  }
}

TEST_CASE("FilterAdam: the steady step approaches Adam's eta<g>/sqrt<e^2> as the data pin the momentum down",
          "[optim][filter_adam]") {
  // §2.1.2 limits: σ² → ∞, η_w = 0, Σ_ww dropped from the mean (Adam form). The gradient
  // alternates ḡ ± s_n, e = ∇ (Adam's own normalizer), so ⟨g⟩ = ḡ, ⟨e²⟩ = ḡ² + s_n² = 1.
  // Eq. 21 needs Σ_pp ≪ η_p/2, which holds for x = η sqrt⟨e²⟩/η_p ≫ 1; solving eq. 20 without
  // that approximation predicts the step y(x) · η⟨g⟩/sqrt⟨e²⟩. η_p = 1e-4 keeps the per-step
  // update Σ_ww e² = η_p sqrt(2x) small (SI §4.1).
  const double eta_p = 1e-4, gbar = 0.6, sn = 0.8;
  double previous_gap = 1.0;
  for (const double x : {10.0, 100.0, 1000.0}) {
    const double eta = x * eta_p;
    Mat<double> W = Mat<double>::Zero(1, 1), dW(1, 1), A = W, dA(1, 1);
    kfopt::ParameterSet<double> pf, pa;
    pf.add("w", W, dW);
    pa.add("w", A, dA);
    kfopt::FilterAdamOptions o;
    o.learning_rate = eta;
    o.momentum_rate = eta_p;
    o.prior_variance = 1e30;
    o.initial_weight_variance = 1e-2;
    kfopt::FilterAdam<double> filter(pf, o);
    kfopt::AdamOptions ao;
    ao.learning_rate = eta;
    ao.beta1 = 1.0 - eta_p;
    ao.beta2 = 0.999;
    kfopt::Adam<double> adam(pa, ao);
    const int steps = static_cast<int>(20 / eta_p), window = 20000;
    double w0 = 0, a0 = 0;
    bool ok = true;
    for (int t = 0; t < steps; ++t) {
      dW(0) = dA(0) = gbar + ((t % 2) ? sn : -sn);
      ok = ok && filter.step() == kfopt::Status::Success && adam.step() == kfopt::Status::Success;
      if (t == steps - window - 1) {
        w0 = W(0);
        a0 = A(0);
      }
    }
    REQUIRE(ok);
    const double target = eta * gbar;  // η⟨g⟩/sqrt⟨e²⟩, a descent step
    const double filter_step = -(W(0) - w0) / window, adam_step = -(A(0) - a0) / window;
    const double y = continuous_y(x);
    const auto& st = filter.state();
    const double wp = st.cross_covariance[0](0), ww = st.weight_variance[0](0);
    INFO("x = " << x << ": filter step / (eta<g>/sqrt<e2>) = " << filter_step / target
                << ", Adam's = " << adam_step / target << ", steady state of eq. 20: y = " << y
                << "; Sigma_wp sqrt<e2>/eta_p = " << wp / eta_p << ", Sigma_ww = " << ww
                << " vs eq. 22 sqrt(2 eta Sigma_wp/<e2>) = " << std::sqrt(2 * eta * wp));
    CHECK(adam_step / target == Approx(1.0).epsilon(1e-3));
    CHECK(wp / eta_p == Approx(y).epsilon(2e-3));                     // eq. 21 with the exact y
    CHECK(ww == Approx(std::sqrt(2 * eta * wp)).epsilon(0.02));        // eq. 22
    const double discrete = ww;                                       // Σ_ww e², ⟨e²⟩ = 1
    CHECK(std::abs(filter_step / target - y) <= 1.5 * y * discrete + 2e-3);
    const double gap = 1.0 - filter_step / adam_step;                 // distance to Adam
    CHECK(gap > 0.0);
    CHECK(gap <= 1.2 * std::sqrt(2.0 / x));
    CHECK(gap < 0.5 * previous_gap);
    previous_gap = gap;
  }
}

TEST_CASE("FilterAdam: Nesterov placement, decoupled weight decay and the direct Sigma_ww term",
          "[optim][filter_adam]") {
  const Model m{0.05, 0.2, 0.03, 0.5, 0.4};
  Rng rng(2);
  Mat<double> w = rng.normal<double>(4, 1), dw(4, 1), w2 = w, dw2(4, 1);
  kfopt::ParameterSet<double> p1, p2;
  p1.add("w", w, dw);
  p2.add("w", w2, dw2);
  kfopt::FilterAdam<double> combined(p1, options_of(m, kfopt::FilterAdamForm::Combined));
  kfopt::FilterAdam<double> adam(p2, options_of(m, kfopt::FilterAdamForm::Adam));
  kfopt::BlockBuffers<double> e{Mat<double>(4, 1)};
  CHECK_THROWS_AS(combined.predict(), kfopt::InvalidInputError);
  for (int t = 0; t < 10; ++t) {
    dw = dw2 = rng.normal<double>(4, 1);
    e[0] = rng.normal<double>(4, 1);
    const Mat<double> before = w, before2 = w2;
    REQUIRE(combined.update(e) == kfopt::Status::Success);
    REQUIRE(adam.update(e) == kfopt::Status::Success);
    CHECK_THROWS_AS(adam.update(e), kfopt::InvalidInputError);
    // The Combined form moves the weight by Σ_ww g; the Adam form leaves it to the momentum.
    CHECK((w - (before - combined.state().weight_variance[0].cwiseProduct(dw))).cwiseAbs().maxCoeff() < 1e-15);
    CHECK(w2 == before2);
    // predict(): the look-ahead point keep_w μ_w + η μ_p, where the next gradient belongs.
    const Mat<double> expected = m.keep_w() * w + m.eta * combined.state().momentum[0];
    REQUIRE(combined.predict() == kfopt::Status::Success);
    CHECK((w - expected).cwiseAbs().maxCoeff() < 1e-15);
    REQUIRE(adam.predict() == kfopt::Status::Success);
  }
  // Decoupled weight decay from the prior: with no data and no momentum, w decays by
  // keep_w = 1 − (η² + η_w²)/(2σ²) per step whatever the covariance.
  Mat<double> v = Mat<double>::Constant(2, 1, 3.0), dv = Mat<double>::Zero(2, 1);
  kfopt::ParameterSet<double> p3;
  p3.add("v", v, dv);
  kfopt::FilterAdam<double> decay(p3, options_of(m, kfopt::FilterAdamForm::Combined));
  kfopt::BlockBuffers<double> zero{Mat<double>::Zero(2, 1)};
  for (int t = 0; t < 50; ++t) REQUIRE(decay.step(zero) == kfopt::Status::Success);
  CHECK(v(0) == Approx(3.0 * std::pow(m.keep_w(), 50)).epsilon(1e-13));
  // step() = update() then predict().
  Mat<double> a = Mat<double>::Ones(3, 1), da(3, 1), b = a, db(3, 1);
  kfopt::ParameterSet<double> pa, pb;
  pa.add("a", a, da);
  pb.add("b", b, db);
  auto o = options_of(m, kfopt::FilterAdamForm::Adam);
  o.fisher = kfopt::FisherEstimate::Centered;
  kfopt::FilterAdam<double> fa(pa, o), fb(pb, o);
  for (int t = 0; t < 6; ++t) {
    da = db = rng.normal<double>(3, 1);
    REQUIRE(fa.step() == kfopt::Status::Success);
    REQUIRE(fb.update() == kfopt::Status::Success);
    REQUIRE(fb.predict() == kfopt::Status::Success);
    CHECK(a == b);
  }
}

TEMPLATE_TEST_CASE("FilterFixedPoint: runs from SGD with step sigma2 (sigma2 -> 0) to AdamW (sigma2 -> inf)",
                   "[optim][filter_fixed_point]", double, float) {
  using Scalar = TestType;
  const Stream stream(17, 3, 4);
  const int steps = 200;
  // AdamW limit: lr = η, wd = η/(2σ²) (so lr·wd = η²/(2σ²), the prior's decay).
  double previous = 0;
  for (const double sigma2 : {1.0, 1e2, 1e4}) {
    const double eta = 1e-2;
    Mat<Scalar> W = stream.W0.cast<Scalar>(), dW(3, 4), V = W, dV(3, 4);
    kfopt::ParameterSet<Scalar> pf, pa;
    pf.add("W", W, dW);
    pa.add("W", V, dV);
    kfopt::FilterFixedPointOptions o;
    o.learning_rate = eta;
    o.prior_variance = sigma2;
    kfopt::FilterFixedPoint<Scalar> fixed(pf, o);
    auto ao = kfopt::AdamOptions::adamw(eta, eta / (2 * sigma2));
    ao.epsilon = 1e-30;
    kfopt::Adam<Scalar> adamw(pa, ao);
    bool ok = true;
    for (int t = 0; t < steps; ++t) {
      dW = stream.gradient<Scalar>(t, W);
      dV = stream.gradient<Scalar>(t, V);
      ok = ok && fixed.step() == kfopt::Status::Success && adamw.step() == kfopt::Status::Success;
    }
    REQUIRE(ok);
    const Mat<double> moved = V.template cast<double>() - stream.W0;
    const double diff = relative_error(W.template cast<double>(), V.template cast<double>()) *
                        V.template cast<double>().norm() / moved.norm();
    INFO("sigma2 = " << sigma2 << ": |fixed point − AdamW| / |AdamW displacement| = " << diff);
    if (std::is_same<Scalar, double>::value) {
      CHECK(diff <= eta / sigma2);  // ≈ η/(2σ² sqrt v̂) per step
      if (previous > 0) CHECK(diff == Approx(previous / 100).epsilon(0.3));  // ∝ 1/σ²
    } else {
      CHECK(diff <= eta / sigma2 + 1e-4);
    }
    previous = diff;
  }
  // SGD limit (β1 = 0): lr = σ², L2 weight decay wd = η²/(2σ⁴) (the same decay for SGD);
  // η = σ/10 keeps the decay at 0.005 per step; r = 2σ² sqrt(v)/η = 20 σ sqrt(v) → 0 and the
  // step differs from σ² by (r/2)² = 100 σ² v relative. Starting at W = 0 makes the
  // displacement the gradients' (the decay acts identically on both).
  previous = 0;
  for (const double sigma2 : {1e-4, 1e-6}) {
    const double eta = 0.1 * std::sqrt(sigma2);
    Mat<Scalar> W = Mat<Scalar>::Zero(3, 4), dW(3, 4), V = W, dV(3, 4);
    kfopt::ParameterSet<Scalar> pf, ps;
    pf.add("W", W, dW);
    ps.add("W", V, dV);
    kfopt::FilterFixedPointOptions o;
    o.learning_rate = eta;
    o.prior_variance = sigma2;
    o.beta1 = 0.0;
    kfopt::FilterFixedPoint<Scalar> fixed(pf, o);
    kfopt::SgdOptions so;
    so.learning_rate = sigma2;
    so.weight_decay = eta * eta / (2 * sigma2 * sigma2);
    kfopt::Sgd<Scalar> sgd(ps, so);
    bool ok = true;
    for (int t = 0; t < steps; ++t) {
      dW = stream.gradient<Scalar>(t, W);
      dV = stream.gradient<Scalar>(t, V);
      ok = ok && fixed.step() == kfopt::Status::Success && sgd.step() == kfopt::Status::Success;
    }
    REQUIRE(ok);
    const double diff = relative_error(W.template cast<double>(), V.template cast<double>());
    INFO("sigma2 = " << sigma2 << ": |fixed point − SGD(lr = sigma2)| / |SGD displacement| = " << diff);
    if (std::is_same<Scalar, double>::value) {
      CHECK(diff <= 500 * sigma2);  // (r/2)² = 100 σ² v with v ≲ 5 here
      if (previous > 0) CHECK(diff == Approx(previous / 100).epsilon(0.3));  // ∝ σ²
    } else {
      CHECK(diff <= 500 * sigma2 + 1e-3);
    }
    previous = diff;
  }
}

TEMPLATE_TEST_CASE("FilterAdam and FilterFixedPoint: bad input is rejected, skipped or clamped",
                   "[optim][filter_adam]", double, float) {
  using Scalar = TestType;
  Mat<Scalar> w = Mat<Scalar>::Ones(3, 1), dw = Mat<Scalar>::Ones(3, 1);
  kfopt::ParameterSet<Scalar> params;
  params.add("w", w, dw);
  auto bad = [&](auto mutate, const char* field) {
    kfopt::FilterAdamOptions o;
    mutate(o);
    CHECK_THROWS_AS(kfopt::FilterAdam<Scalar>(params, o), kfopt::HyperparameterError);
    CHECK_THROWS_WITH(kfopt::FilterAdam<Scalar>(params, o), Catch::Contains(field));
  };
  bad([](auto& o) { o.prior_variance = 0.0; }, "prior_variance");
  bad([](auto& o) { o.prior_variance = -2.0; }, "prior_variance");
  bad([](auto& o) { o.learning_rate = -1.0; }, "learning_rate");
  bad([](auto& o) { o.learning_rate = 0.3; o.prior_variance = 0.01; }, "learning_rate");
  bad([](auto& o) { o.momentum_rate = 0.0; }, "momentum_rate");
  bad([](auto& o) { o.momentum_rate = 1.5; }, "momentum_rate");
  bad([](auto& o) { o.weight_noise = -0.1; }, "weight_noise");
  bad([](auto& o) { o.initial_weight_variance = -1.0; }, "initial_weight_variance");
  bad([](auto& o) { o.centering_decay = -0.5; }, "centering_decay");
  auto bad_fp = [&](auto mutate, const char* field) {
    kfopt::FilterFixedPointOptions o;
    mutate(o);
    CHECK_THROWS_WITH(kfopt::FilterFixedPoint<Scalar>(params, o), Catch::Contains(field));
  };
  bad_fp([](auto& o) { o.learning_rate = 0.0; }, "learning_rate");
  bad_fp([](auto& o) { o.prior_variance = 0.0; }, "prior_variance");
  bad_fp([](auto& o) { o.beta1 = 1.0; }, "beta1");
  bad_fp([](auto& o) { o.beta2 = -0.1; }, "beta2");

  // Non-finite gradient: skipped, nothing written.
  kfopt::FilterAdam<Scalar> opt(params, kfopt::FilterAdamOptions{});
  REQUIRE(opt.step() == kfopt::Status::Success);
  const Mat<Scalar> before = w;
  const auto state = opt.state();
  dw(2) = std::numeric_limits<Scalar>::infinity();
  CHECK(opt.step() == kfopt::Status::NonFiniteInput);
  CHECK(w == before);
  CHECK(opt.state().momentum[0] == state.momentum[0]);
  CHECK(opt.state().weight_variance[0] == state.weight_variance[0]);
  CHECK(opt.state().counters.skipped_nonfinite == 1);
  CHECK(opt.phase() == kfopt::FilterPhase::Prior);
  kfopt::FilterFixedPoint<Scalar> fp(params, kfopt::FilterFixedPointOptions{});
  CHECK(fp.step() == kfopt::Status::NonFiniteInput);
  CHECK(w == before);
  CHECK(fp.state().counters.skipped_nonfinite == 1);
  CHECK(fp.state().first_moment[0].isZero());

  // A nearly singular covariance and a huge e: the Schur complement Σ_pp − Σ_wp²/Σ_ww
  // would be pushed below 0 by rounding; it is clamped and counted, never NaN.
  dw.setConstant(Scalar(1));
  kfopt::FilterAdamOptions so;
  so.fisher = kfopt::FisherEstimate::Supplied;
  kfopt::FilterAdam<Scalar> sup(params, so);
  auto s = sup.state();
  s.weight_variance[0].setConstant(Scalar(1));
  s.cross_covariance[0].setConstant(Scalar(1));
  s.momentum_variance[0].setConstant(Scalar(1));
  sup.set_state(s);
  kfopt::BlockBuffers<Scalar> e{Mat<Scalar>::Constant(3, 1, std::is_same<Scalar, float>::value ? Scalar(1e5) : Scalar(1e9))};
  REQUIRE(sup.update(e) == kfopt::Status::Success);
  const auto& st = sup.state();
  CHECK(st.clamped_variances >= 1);
  for (int i = 0; i < 3; ++i) {
    const Scalar ww = st.weight_variance[0](i), wp = st.cross_covariance[0](i), pp = st.momentum_variance[0](i);
    CHECK(ww >= Scalar(0));
    CHECK(pp >= Scalar(0));
    CHECK(wp * wp <= ww * pp * Scalar(1.0001));
  }
  CHECK(w.allFinite());
  e[0](0) = std::numeric_limits<Scalar>::quiet_NaN();
  REQUIRE(sup.predict() == kfopt::Status::Success);
  CHECK(sup.update(e) == kfopt::Status::NonFiniteInput);
  kfopt::BlockBuffers<Scalar> wrong{Mat<Scalar>::Ones(2, 1)};
  CHECK_THROWS_AS(sup.update(wrong), kfopt::ShapeError);
  s.momentum_variance[0](0) = Scalar(-1);
  CHECK_THROWS_AS(sup.set_state(s), kfopt::InvalidInputError);
}

namespace {

// A 10⁵-parameter block (49 tiles of the guarded pass, core/step_guard.hpp) and a 147-element
// one (its end in the scalar remainder of any SIMD packet), with gradients.
template <typename Scalar>
struct LargeModel {
  Mat<Scalar> W, dW, b, db;
  kfopt::ParameterSet<Scalar> params;
  explicit LargeModel(unsigned seed) {
    Rng rng(seed);
    W = rng.normal<Scalar>(250, 400);
    b = rng.normal<Scalar>(147, 1);
    dW = rng.normal<Scalar>(250, 400);
    db = rng.normal<Scalar>(147, 1);
    params.add("w", W, dW);
    params.add("b", b, db);
  }
};

template <typename Scalar>
bool same_bits(const Mat<Scalar>& x, const Mat<Scalar>& y) {
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::memcmp(x.data(), y.data(), sizeof(Scalar) * static_cast<std::size_t>(x.size())) == 0;
}
template <typename Scalar>
bool same_bits(const kfopt::BlockBuffers<Scalar>& x, const kfopt::BlockBuffers<Scalar>& y) {
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (!same_bits(x[i], y[i])) return false;
  }
  return true;
}

// Every bit FilterAdam and its parameters carry.
template <typename Scalar>
struct Snapshot {
  Mat<Scalar> W, b;
  typename kfopt::FilterAdam<Scalar>::State s;
  Snapshot(const LargeModel<Scalar>& m, const kfopt::FilterAdam<Scalar>& opt)
      : W(m.W), b(m.b), s(opt.state()) {}
  // Everything equal, bit for bit, except the refusal counter, which moved by `refused`.
  bool equals(const Snapshot& o, std::int64_t refused = 0) const {
    return same_bits(W, o.W) && same_bits(b, o.b) && same_bits(s.momentum, o.s.momentum) &&
           same_bits(s.weight_variance, o.s.weight_variance) &&
           same_bits(s.cross_covariance, o.s.cross_covariance) &&
           same_bits(s.momentum_variance, o.s.momentum_variance) &&
           same_bits(s.gradient_average, o.s.gradient_average) &&
           std::memcmp(&s.centering_weight, &o.s.centering_weight, sizeof(double)) == 0 &&
           s.phase == o.s.phase && s.counters.steps == o.s.counters.steps &&
           s.counters.skipped_nonfinite + refused == o.s.counters.skipped_nonfinite &&
           s.clamped_variances == o.s.clamped_variances;
  }
};

// Covariances on the edge of the PSD cone (Σ_wp² = Σ_ww Σ_pp up to rounding, some Σ_ww = 0),
// so that the update and the prediction clamp some of them.
template <typename Scalar>
void edge_covariances(kfopt::FilterAdam<Scalar>& opt, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto s = opt.state();
  for (std::size_t i = 0; i < s.momentum.size(); ++i) {
    for (Eigen::Index k = 0; k < s.momentum[i].size(); ++k) {
      if (u(rng) > 0.3) continue;
      Scalar& ww = s.weight_variance[i].data()[k];
      Scalar& wp = s.cross_covariance[i].data()[k];
      Scalar& pp = s.momentum_variance[i].data()[k];
      ww = static_cast<Scalar>(0.1 * u(rng));
      pp = static_cast<Scalar>(0.1 * u(rng));
      wp = (u(rng) < 0.5 ? Scalar(-1) : Scalar(1)) * std::sqrt(ww * pp);
      if (u(rng) < 0.1) ww = wp = Scalar(0);
    }
  }
  opt.set_state(s);
}

// Gradients (and supplied e) of mixed scales: 3% at 1e25 / 1e200 (e² overflows: the weight is
// pinned), some zero, some tiny.
template <typename Scalar>
void mixed_gradients(LargeModel<Scalar>& m, kfopt::BlockBuffers<Scalar>& e, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const double huge = std::is_same<Scalar, float>::value ? 1e25 : 1e200;
  for (Mat<Scalar>* g : {&m.dW, &m.db, &e[0], &e[1]}) {
    for (Eigen::Index k = 0; k < g->size(); ++k) {
      const double r = 0.5 * (u(rng) + 1.0);
      const double v = r < 0.03 ? huge * u(rng) : r < 0.06 ? 0.0 : r < 0.09 ? 1e-30 * u(rng) : u(rng);
      g->data()[k] = static_cast<Scalar>(v);
    }
  }
}

// The step as a scalar loop over the elements with the element-wise filter's functions
// (filter/elementwise_filter.hpp): the data update, then the prediction, in place.
template <typename Scalar>
void reference_step(LargeModel<Scalar>& m, typename kfopt::FilterAdam<Scalar>::State& s,
                    const kfopt::FilterAdamOptions& o, const kfopt::BlockBuffers<Scalar>& e) {
  const auto drift = kfopt::MomentumDrift<Scalar>::from(o.learning_rate, o.momentum_rate,
                                                        o.weight_noise, o.prior_variance);
  const double weight = o.centering_decay * s.centering_weight + 1.0;
  const Scalar inverse_weight = static_cast<Scalar>(1.0 / weight);
  for (std::size_t i = 0; i < 2; ++i) {
    Mat<Scalar>& w = i == 0 ? m.W : m.b;
    const Mat<Scalar>& g = i == 0 ? m.dW : m.db;
    for (Eigen::Index k = 0; k < w.size(); ++k) {
      kfopt::WeightMomentumCovariance<Scalar> c{s.weight_variance[i].data()[k],
                                                s.cross_covariance[i].data()[k],
                                                s.momentum_variance[i].data()[k]};
      const Scalar grad = g.data()[k];
      Scalar sample = grad;
      if (o.fisher == kfopt::FisherEstimate::Centered) {
        Scalar& average = s.gradient_average[i].data()[k];
        sample = grad - average;
        const Scalar step = sample * inverse_weight;
        average = average + step;
      } else if (o.fisher == kfopt::FisherEstimate::Supplied) {
        sample = e[i].data()[k];
      }
      s.clamped_variances += kfopt::momentum_filter_update(c, sample) ? 1 : 0;
      Scalar mean_w = w.data()[k];
      if (o.form == kfopt::FilterAdamForm::Combined) {
        const Scalar step = c.ww * grad;
        mean_w = mean_w - step;
      }
      const Scalar step = c.wp * grad;
      Scalar mean_p = s.momentum[i].data()[k] - step;
      s.clamped_variances += kfopt::momentum_filter_predict(drift, mean_w, mean_p, c) ? 1 : 0;
      w.data()[k] = mean_w;
      s.momentum[i].data()[k] = mean_p;
      s.weight_variance[i].data()[k] = c.ww;
      s.cross_covariance[i].data()[k] = c.wp;
      s.momentum_variance[i].data()[k] = c.pp;
    }
  }
  if (o.fisher == kfopt::FisherEstimate::Centered) s.centering_weight = weight;
  ++s.counters.steps;
}

}  // namespace

TEMPLATE_TEST_CASE("FilterAdam: step() equals update() then predict() and a scalar loop of the element-wise filter, bit for bit",
                   "[optim][filter_adam]", float, double) {
  using Scalar = TestType;
  for (const auto form : {kfopt::FilterAdamForm::Adam, kfopt::FilterAdamForm::Combined}) {
    for (const auto fisher : {kfopt::FisherEstimate::Gradient, kfopt::FisherEstimate::Centered,
                              kfopt::FisherEstimate::Supplied}) {
      INFO("form " << static_cast<int>(form) << ", fisher " << kfopt::to_string(fisher));
      kfopt::FilterAdamOptions o = kfopt::FilterAdamOptions::combined(0.01, 0.02);
      o.form = form;
      o.fisher = fisher;
      o.momentum_rate = 0.3;
      LargeModel<Scalar> a(7), b(7), r(7);
      kfopt::FilterAdam<Scalar> fused(a.params, o), split(b.params, o);
      edge_covariances(fused, 3);
      edge_covariances(split, 3);
      auto s = fused.state();
      kfopt::BlockBuffers<Scalar> e{Mat<Scalar>(250, 400), Mat<Scalar>(147, 1)};
      for (int t = 0; t < 4; ++t) {
        mixed_gradients(a, e, 100 + t);
        mixed_gradients(b, e, 100 + t);
        mixed_gradients(r, e, 100 + t);
        const bool supplied = fisher == kfopt::FisherEstimate::Supplied;
        REQUIRE((supplied ? fused.step(e) : fused.step()) == kfopt::Status::Success);
        REQUIRE((supplied ? split.update(e) : split.update()) == kfopt::Status::Success);
        REQUIRE(split.predict() == kfopt::Status::Success);
        reference_step(r, s, o, e);
        const Snapshot<Scalar> x(a, fused), y(b, split);
        CHECK(x.equals(y));
        CHECK(same_bits(a.W, r.W));
        CHECK(same_bits(a.b, r.b));
        CHECK(same_bits(x.s.momentum, s.momentum));
        CHECK(same_bits(x.s.weight_variance, s.weight_variance));
        CHECK(same_bits(x.s.cross_covariance, s.cross_covariance));
        CHECK(same_bits(x.s.momentum_variance, s.momentum_variance));
        CHECK(same_bits(x.s.gradient_average, s.gradient_average));
        CHECK(x.s.clamped_variances == s.clamped_variances);
        CHECK(x.s.counters.steps == s.counters.steps);
      }
      CHECK(s.clamped_variances > 0);  // the clamps were exercised
    }
  }
}

TEMPLATE_TEST_CASE("FilterAdam: a refusal in the last tile of a 1e5-parameter block leaves parameters and state bit-for-bit unchanged",
                   "[optim][filter_adam]", float, double) {
  using Scalar = TestType;
  using L = std::numeric_limits<Scalar>;
  // Where the bad entry goes: the last element of the 10⁵ block (its last tile, after 48 tiles
  // whose new parameters were written in place and must be restored) or of the 147-element
  // block (the scalar remainder, after the whole first block was written).
  for (const bool last_block : {false, true}) {
    INFO((last_block ? "last element of the 147-element block" : "last element of the 1e5 block"));
    auto at = [&](Mat<Scalar>& big, Mat<Scalar>& small) -> Scalar& {
      return last_block ? small(small.size() - 1) : big(big.size() - 1);
    };
    const std::size_t block = last_block ? 1 : 0;
    const Eigen::Index index = last_block ? 146 : 99999;
    auto fresh = [&](kfopt::FilterAdamOptions o, LargeModel<Scalar>& m) {
      kfopt::FilterAdam<Scalar> opt(m.params, o);
      REQUIRE(opt.step() == kfopt::Status::Success);
      return opt;
    };
    kfopt::FilterAdamOptions centered;
    centered.fisher = kfopt::FisherEstimate::Centered;

    {
      INFO("NaN gradient: step() and update() refuse (NonFiniteInput)");
      LargeModel<Scalar> m(11);
      auto opt = fresh(kfopt::FilterAdamOptions::combined(), m);
      at(m.dW, m.db) = L::quiet_NaN();
      const Snapshot<Scalar> before(m, opt);
      CHECK(opt.step() == kfopt::Status::NonFiniteInput);
      CHECK(before.equals(Snapshot<Scalar>(m, opt), 1));
      CHECK(opt.update() == kfopt::Status::NonFiniteInput);
      CHECK(before.equals(Snapshot<Scalar>(m, opt), 2));
    }
    {
      INFO("Inf parameter: step(), update() and predict() refuse (NonFiniteInput)");
      LargeModel<Scalar> m(12);
      auto opt = fresh(kfopt::FilterAdamOptions{}, m);
      at(m.W, m.b) = L::infinity();
      const Snapshot<Scalar> before(m, opt);
      CHECK(opt.step() == kfopt::Status::NonFiniteInput);
      CHECK(opt.update() == kfopt::Status::NonFiniteInput);
      CHECK(before.equals(Snapshot<Scalar>(m, opt), 2));
      at(m.W, m.b) = Scalar(0.5);
      REQUIRE(opt.update() == kfopt::Status::Success);
      at(m.W, m.b) = -L::infinity();
      const Snapshot<Scalar> posterior(m, opt);
      CHECK(opt.predict() == kfopt::Status::NonFiniteInput);
      CHECK(posterior.equals(Snapshot<Scalar>(m, opt), 1));
      CHECK(opt.phase() == kfopt::FilterPhase::Posterior);
    }
    {
      INFO("the prediction's weight mean overflows: step() refuses whole; update() is taken, predict() refuses");
      LargeModel<Scalar> m(13);
      auto opt = fresh(kfopt::FilterAdamOptions{}, m);
      auto s = opt.state();
      s.momentum[block](index) = L::max() / Scalar(2);  // keep_w · max + η · max/2 > max
      opt.set_state(s);
      at(m.W, m.b) = L::max();
      at(m.dW, m.db) = Scalar(0);
      const Snapshot<Scalar> before(m, opt);
      CHECK(opt.step() == kfopt::Status::Overflow);
      CHECK(before.equals(Snapshot<Scalar>(m, opt), 1));
      CHECK(opt.phase() == kfopt::FilterPhase::Prior);
      REQUIRE(opt.update() == kfopt::Status::Success);
      const Snapshot<Scalar> posterior(m, opt);
      CHECK(opt.predict() == kfopt::Status::Overflow);
      CHECK(posterior.equals(Snapshot<Scalar>(m, opt), 1));
      CHECK(opt.phase() == kfopt::FilterPhase::Posterior);
    }
    {
      INFO("the prediction's weight variance overflows (weight_variance, cross_covariance, momentum_variance near max): step() refuses (Overflow)");
      LargeModel<Scalar> m(14);
      auto opt = fresh(kfopt::FilterAdamOptions{}, m);
      auto s = opt.state();
      const Scalar big = L::max() * Scalar(0.9999);  // (keep_w + η)² big > max
      s.weight_variance[block](index) = s.cross_covariance[block](index) = s.momentum_variance[block](index) = big;
      opt.set_state(s);
      at(m.dW, m.db) = Scalar(0);
      const Snapshot<Scalar> before(m, opt);
      CHECK(opt.step() == kfopt::Status::Overflow);
      CHECK(before.equals(Snapshot<Scalar>(m, opt), 1));
    }
    {
      INFO("the centered gradient average overflows: step() and update() refuse (Overflow)");
      LargeModel<Scalar> m(15);
      auto opt = fresh(centered, m);
      auto s = opt.state();
      s.gradient_average[block](index) = -L::max() * Scalar(0.9);
      opt.set_state(s);
      at(m.dW, m.db) = L::max() * Scalar(0.9);  // e = ∇ − ĝ overflows
      const Snapshot<Scalar> before(m, opt);
      CHECK(opt.step() == kfopt::Status::Overflow);
      CHECK(opt.update() == kfopt::Status::Overflow);
      CHECK(before.equals(Snapshot<Scalar>(m, opt), 2));
    }
  }
}
