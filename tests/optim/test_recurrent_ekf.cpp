// The recurrent case of Ollivier 2018 (arXiv:1703.00209): the tanh cell's Jacobians and the
// RTRL tangent against finite differences; the joint EKF over (state, θ) against a dense
// joint filter written here with the full transition matrix and explicit inverses; and the
// theorem itself — the joint EKF started from the degenerate covariance equals natural
// gradient on RTRL with the state corrected along the tangent, and keeps the degenerate
// form — over 200 steps of a chaotic series, for λ = 0, a constant λ and a schedule.
#include <catch2/catch.hpp>
#include <kfopt/filter/observation_models.hpp>
#include <kfopt/optim/kalman/ekf_natural_gradient_correspondence.hpp>
#include <kfopt/optim/kalman/joint_extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/natural_gradient_rtrl.hpp>
#include <kfopt/optim/kalman/rtrl.hpp>
#include <kfopt/models/tanh_rnn_cell.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

using Cell = kfopt::TanhRnnCell<double>;
using Gauss = kfopt::GaussianObservation<double>;

// The logistic map in its chaotic regime: input x_t, target x_{t+1}.
std::vector<double> logistic_map(int T, double x0 = 0.3) {
  std::vector<double> x{x0};
  for (int t = 0; t < T; ++t) x.push_back(3.9 * x.back() * (1 - x.back()));
  return x;
}

Vec<double> scalar(double v) { return Vec<double>::Constant(1, v); }

template <typename Scalar>
bool same_bits(const Mat<Scalar>& a, const Mat<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<size_t>(a.size())) == 0;
}
template <typename Scalar>
bool same_bits(const Vec<Scalar>& a, const Vec<Scalar>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<size_t>(a.size())) == 0;
}

// Runs the cell forward (no learning) and returns s_T and z_T.
void run_forward(const Cell& cell, const Vec<double>& theta, const Vec<double>& s0,
                 const Mat<double>& inputs, Vec<double>& s, Vec<double>& z) {
  const Eigen::Index n = cell.state_dim(), d = cell.param_dim(), k = cell.output_dim();
  Mat<double> ds(n, n), dth(n, d), hs(k, n), hth(k, d);
  s = s0;
  Vec<double> next(n);
  z.resize(k);
  for (Eigen::Index t = 0; t < inputs.cols(); ++t) {
    cell.transition(s, theta, inputs.col(t), next, ds, dth);
    s = next;
  }
  cell.observe(s, theta, inputs.col(inputs.cols() - 1), z, hs, hth);
}

}  // namespace

TEST_CASE("tanh cell: transition and read-out Jacobians against finite differences",
          "[optim][rtrl]") {
  Rng rng(301);
  const Cell cell(3, 2, 2);
  const Eigen::Index n = 3, d = cell.param_dim(), k = 2;
  CHECK(d == 9 + 6 + 3 + 6 + 2);
  const Vec<double> theta = 0.5 * rng.normal<double>(d, 1);
  const Vec<double> s = 0.5 * rng.normal<double>(n, 1);
  const Vec<double> u = rng.normal<double>(2, 1);
  Vec<double> out(n), z(k);
  Mat<double> ds(n, n), dth(n, d), hs(k, n), hth(k, d);
  cell.transition(s, theta, u, out, ds, dth);
  cell.observe(s, theta, u, z, hs, hth);
  // Values against the formula.
  const Mat<double> W = dense_unvec<double>(theta.segment(0, 9), 3, 3);
  const Mat<double> U = dense_unvec<double>(theta.segment(9, 6), 3, 2);
  const Vec<double> b = theta.segment(15, 3);
  const Mat<double> V = dense_unvec<double>(theta.segment(18, 6), 2, 3);
  const Vec<double> c = theta.segment(24, 2);
  CHECK(relative_error(out, (W * s + U * u + b).array().tanh().matrix().eval()) <= 1e-14);
  CHECK(relative_error(z, (V * s + c).eval()) <= 1e-14);
  const double h = 1e-6;
  Mat<double> fd_ds(n, n), fd_dth(n, d), fd_hs(k, n), fd_hth(k, d);
  Vec<double> a(n), bb(n), za(k), zb(k);
  Mat<double> t1(n, n), t2(n, d), t3(k, n), t4(k, d);
  for (Eigen::Index j = 0; j < n; ++j) {
    Vec<double> sp = s, sm = s;
    sp(j) += h;
    sm(j) -= h;
    cell.transition(sp, theta, u, a, t1, t2);
    cell.transition(sm, theta, u, bb, t1, t2);
    fd_ds.col(j) = (a - bb) / (2 * h);
    cell.observe(sp, theta, u, za, t3, t4);
    cell.observe(sm, theta, u, zb, t3, t4);
    fd_hs.col(j) = (za - zb) / (2 * h);
  }
  for (Eigen::Index j = 0; j < d; ++j) {
    Vec<double> tp = theta, tm = theta;
    tp(j) += h;
    tm(j) -= h;
    cell.transition(s, tp, u, a, t1, t2);
    cell.transition(s, tm, u, bb, t1, t2);
    fd_dth.col(j) = (a - bb) / (2 * h);
    cell.observe(s, tp, u, za, t3, t4);
    cell.observe(s, tm, u, zb, t3, t4);
    fd_hth.col(j) = (za - zb) / (2 * h);
  }
  CHECK(relative_error(ds, fd_ds) <= 1e-8);
  CHECK(relative_error(dth, fd_dth) <= 1e-8);
  CHECK(relative_error(hs, fd_hs) <= 1e-8);
  CHECK(relative_error(hth, fd_hth) <= 1e-8);
}

TEST_CASE("RTRL tangent A_t = ds_t/dθ and H_t = dz_t/dθ against finite differences through time",
          "[optim][rtrl]") {
  Rng rng(302);
  const Cell cell(4, 2, 1);
  const Eigen::Index d = cell.param_dim();
  const Vec<double> theta = 0.4 * rng.normal<double>(d, 1);
  const Vec<double> s0 = 0.2 * rng.normal<double>(4, 1);
  const Mat<double> inputs = rng.normal<double>(2, 25);
  kfopt::Rtrl<Cell> rtrl(cell, s0);
  Vec<double> z(1);
  Mat<double> H(1, d);
  for (Eigen::Index t = 0; t < inputs.cols(); ++t) {
    REQUIRE(rtrl.propagate(theta, inputs.col(t)) == kfopt::Status::Success);
    if (t + 1 == inputs.cols()) REQUIRE(rtrl.output(theta, inputs.col(t), z, H) == kfopt::Status::Success);
    rtrl.commit();
  }
  const double h = 1e-6;
  Mat<double> fdA(4, d), fdH(1, d);
  for (Eigen::Index j = 0; j < d; ++j) {
    Vec<double> tp = theta, tm = theta, sp, sm, zp, zm;
    tp(j) += h;
    tm(j) -= h;
    run_forward(cell, tp, s0, inputs, sp, zp);
    run_forward(cell, tm, s0, inputs, sm, zm);
    fdA.col(j) = (sp - sm) / (2 * h);
    fdH.col(j) = (zp - zm) / (2 * h);
  }
  CHECK(relative_error(rtrl.tangent(), fdA) <= 1e-7);
  CHECK(relative_error(H, fdH) <= 1e-7);
  Vec<double> s_end, z_end;
  run_forward(cell, theta, s0, inputs, s_end, z_end);
  CHECK(relative_error(rtrl.hidden(), s_end) <= 1e-14);
  CHECK(relative_error(z, z_end) <= 1e-14);
}

TEST_CASE("joint EKF against a dense joint filter with the full transition matrix",
          "[optim][ekf][rtrl]") {
  // A general (non-degenerate) prior over (s, θ): the joint filter is an ordinary EKF on
  // x = (s, θ) with F = [[∂f/∂s, ∂f/∂θ], [0, I]], H = [∂h/∂s, ∂h/∂θ], R = σ² — written out
  // here with D×D products and an explicit inverse of S.
  Rng rng(303);
  const Cell cell(3, 1, 1);
  const Eigen::Index n = 3, d = cell.param_dim(), D = n + d;
  const double noise = 0.05, lambda = 0.02;
  const std::vector<double> x = logistic_map(80);
  const Vec<double> theta0 = 0.3 * rng.normal<double>(d, 1);
  const Vec<double> s0 = Vec<double>::Zero(n);
  const Mat<double> P0 = rng.spd<double>(D, 0.05, 0.5);
  for (kfopt::KalmanForm form : {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Joseph}) {
    kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
    hp.fading = lambda;
    hp.form = form;
    kfopt::JointExtendedKalmanFilter<Cell, Gauss> joint(cell, Gauss(1, noise), s0, P0, hp);
    Vec<double> theta = theta0;
    Vec<double> xs(D);
    xs << s0, theta0;
    Mat<double> P = P0;
    Vec<double> next(n), z(1);
    Mat<double> ds(n, n), dth(n, d), hs(1, n), hth(1, d);
    for (int t = 0; t < 80; ++t) {
      REQUIRE(joint.step(theta, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
      // Dense reference.
      cell.transition(xs.head(n), xs.tail(d), scalar(x[t]), next, ds, dth);
      Mat<double> F = Mat<double>::Identity(D, D);
      F.topLeftCorner(n, n) = ds;
      F.topRightCorner(n, d) = dth;
      xs.head(n) = next;
      P = F * P * F.transpose() / (1 - lambda);
      cell.observe(xs.head(n), xs.tail(d), scalar(x[t]), z, hs, hth);
      Mat<double> H(1, D);
      H << hs, hth;
      const Mat<double> S = H * P * H.transpose() + noise * Mat<double>::Identity(1, 1);
      const Mat<double> K = P * H.transpose() * dense_inverse(S);
      xs += K * (scalar(x[t + 1]) - z);
      P = (Mat<double>::Identity(D, D) - K * H) * P;
    }
    INFO("form " << kfopt::to_string(form));
    CHECK(relative_error(theta, xs.tail(d).eval()) <= 1e-10);
    CHECK(relative_error(joint.hidden(), xs.head(n).eval()) <= 1e-10);
    CHECK(relative_error(joint.covariance(), P) <= 1e-10);
  }
}

TEST_CASE("joint EKF from the degenerate covariance = natural gradient on RTRL",
          "[optim][ekf][rtrl][natural_gradient]") {
  Rng rng(304);
  const Cell cell(3, 1, 1);
  const Eigen::Index n = 3, d = cell.param_dim();
  const int T = 200;
  const double noise = 0.02;
  const std::vector<double> x = logistic_map(T, 0.41);
  struct Case {
    const char* name;
    double fading;
    std::function<double(std::int64_t)> schedule;
    bool random_tangent;
  };
  const std::vector<Case> cases = {
      {"lambda = 0, A0 = 0", 0.0, {}, false},
      {"lambda = 0, random A0", 0.0, {}, true},
      {"constant lambda = 0.01", 0.01, {}, false},
      {"lambda schedule", 0.0, [](std::int64_t t) { return 0.002 + 0.02 / (1.0 + t / 10.0); }, true}};
  for (const Case& c : cases) {
    const Vec<double> theta0 = 0.3 * rng.normal<double>(d, 1);
    const Vec<double> s0 = 0.1 * rng.normal<double>(n, 1);
    const Mat<double> A0 = c.random_tangent ? Mat<double>(0.1 * rng.normal<double>(n, d))
                                            : Mat<double>::Zero(n, d).eval();
    const Mat<double> P0 = rng.spd<double>(d, 0.2, 1.0);
    kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
    hp.fading = c.fading;
    hp.fading_schedule = c.schedule;
    const Mat<double> joint_P0 =
        kfopt::JointExtendedKalmanFilter<Cell, Gauss>::degenerate_covariance(A0, P0);
    kfopt::JointExtendedKalmanFilter<Cell, Gauss> joint(cell, Gauss(1, noise), s0, joint_P0, hp);
    const auto twin = kfopt::natural_gradient_twin<double>(hp, P0, 1.0);
    kfopt::NaturalGradientRtrlHyperparameters<double> nh;
    nh.natural_gradient = twin.hyperparameters;
    kfopt::NaturalGradientRtrl<Cell, Gauss> ngr(cell, Gauss(1, noise), s0, twin.initial_fisher, nh, A0);

    Vec<double> theta_joint = theta0, theta_ng = theta0;
    double worst_theta = 0, worst_state = 0, worst_P = 0, worst_form = 0;
    for (int t = 0; t < T; ++t) {
      REQUIRE(joint.step(theta_joint, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
      REQUIRE(ngr.step(theta_ng, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
      worst_theta = std::max(worst_theta, relative_error(theta_ng, theta_joint));
      worst_state = std::max(worst_state, relative_error(ngr.hidden(), joint.hidden()));
      if (t % 20 == 19) {
        const double eta = ngr.natural_gradient().state().last_step_size;
        const Mat<double>& Pj = joint.covariance();
        const Mat<double> Ptt = Pj.bottomRightCorner(d, d);
        const Mat<double> A = ngr.tangent();
        worst_P = std::max(worst_P, relative_error(
                                        (eta * ngr.natural_gradient().inverse_fisher()).eval(), Ptt));
        // The degenerate form: 𝒫^sθ = A 𝒫^θθ and 𝒫^ss = A 𝒫^θθ Aᵀ with the RTRL tangent.
        worst_form = std::max(worst_form, relative_error(Pj.topRightCorner(n, d).eval(), (A * Ptt).eval()));
        worst_form = std::max(worst_form, relative_error(Pj.topLeftCorner(n, n).eval(),
                                                         (A * Ptt * A.transpose()).eval()));
      }
    }
    INFO(c.name);
    CHECK(worst_theta <= 1e-9);
    CHECK(worst_state <= 1e-9);
    CHECK(worst_P <= 1e-9);
    CHECK(worst_form <= 1e-9);
    CHECK((theta_joint - theta0).norm() > 0.1);  // it learned something
  }
}

TEST_CASE("recurrent filters in float track their double runs", "[optim][ekf][rtrl]") {
  Rng rng(305);
  const Eigen::Index n = 2;
  const kfopt::TanhRnnCell<float> cf(n, 1, 1);
  const Cell cd(n, 1, 1);
  const Eigen::Index d = cd.param_dim();
  const std::vector<double> x = logistic_map(60, 0.2);
  const Vec<double> theta0 = 0.3 * rng.normal<double>(d, 1);
  const Mat<double> P0 = 0.5 * Mat<double>::Identity(d, d);
  const Mat<double> joint_P0 =
      kfopt::JointExtendedKalmanFilter<Cell, Gauss>::degenerate_covariance(Mat<double>::Zero(n, d), P0);
  kfopt::JointExtendedKalmanFilter<Cell, Gauss> jd(cd, Gauss(1, 0.05), Vec<double>::Zero(n), joint_P0);
  kfopt::JointExtendedKalmanFilter<kfopt::TanhRnnCell<float>, kfopt::GaussianObservation<float>> jf(
      cf, kfopt::GaussianObservation<float>(1, 0.05f), Vec<float>::Zero(n), joint_P0.cast<float>());
  kfopt::NaturalGradientRtrlHyperparameters<float> nh;
  nh.natural_gradient.step_size_schedule = kfopt::harmonic_step_sizes<float>(1.0f);
  kfopt::NaturalGradientRtrl<kfopt::TanhRnnCell<float>, kfopt::GaussianObservation<float>> nf(
      cf, kfopt::GaussianObservation<float>(1, 0.05f), Vec<float>::Zero(n),
      (2.0 * Mat<double>::Identity(d, d)).cast<float>(), nh);
  Vec<double> td = theta0;
  Vec<float> tf = theta0.cast<float>(), tn = tf;
  for (int t = 0; t < 60; ++t) {
    REQUIRE(jd.step(td, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
    Vec<float> u(1), y(1);
    u(0) = static_cast<float>(x[t]);
    y(0) = static_cast<float>(x[t + 1]);
    REQUIRE(jf.step(tf, u, y) == kfopt::Status::Success);
    REQUIRE(nf.step(tn, u, y) == kfopt::Status::Success);
  }
  CHECK(relative_error(tf.cast<double>(), td) <= 1e-3);
  CHECK(relative_error(tn.cast<double>(), td) <= 1e-3);
}

TEST_CASE("recurrent filters: bad input leaves θ, state, tangent and covariance unchanged",
          "[optim][ekf][rtrl][errors]") {
  Rng rng(306);
  const Cell cell(2, 1, 1);
  const Eigen::Index n = 2, d = cell.param_dim();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Mat<double> P0 = Mat<double>::Identity(d, d);
  const Mat<double> joint_P0 =
      kfopt::JointExtendedKalmanFilter<Cell, Gauss>::degenerate_covariance(Mat<double>::Zero(n, d), P0);
  kfopt::JointExtendedKalmanFilter<Cell, Gauss> joint(cell, Gauss(1, 0.1), Vec<double>::Zero(n), joint_P0);
  kfopt::NaturalGradientRtrl<Cell, Gauss> ngr(cell, Gauss(1, 0.1), Vec<double>::Zero(n), P0);
  Vec<double> theta = 0.3 * rng.normal<double>(d, 1);
  for (int t = 0; t < 3; ++t) {
    REQUIRE(joint.step(theta, scalar(0.1 * t), scalar(0.2)) == kfopt::Status::Success);
    REQUIRE(ngr.step(theta, scalar(0.1 * t), scalar(0.2)) == kfopt::Status::Success);
  }
  const Vec<double> theta0 = theta;
  const auto joint_before = joint.state();
  const auto ng_before = ngr.state();
  auto unchanged = [&](std::int64_t skipped) {
    CHECK(same_bits(theta, theta0));
    CHECK(same_bits(joint.hidden(), joint_before.hidden));
    CHECK(same_bits(joint.covariance(), joint_before.covariance.storage()));
    CHECK(joint.state().step == joint_before.step);
    CHECK(joint.state().skipped == skipped);
    const auto now = ngr.state();
    CHECK(same_bits(now.recurrent.hidden, ng_before.recurrent.hidden));
    CHECK(same_bits(now.recurrent.tangent, ng_before.recurrent.tangent));
    CHECK(same_bits(now.natural_gradient.fisher.storage(), ng_before.natural_gradient.fisher.storage()));
    CHECK(now.natural_gradient.step == ng_before.natural_gradient.step);
    CHECK(now.skipped == skipped);
  };
  CHECK(joint.step(theta, scalar(nan), scalar(0.2)) == kfopt::Status::NonFiniteInput);
  CHECK(ngr.step(theta, scalar(nan), scalar(0.2)) == kfopt::Status::NonFiniteInput);
  unchanged(1);
  CHECK(joint.step(theta, scalar(0.3), scalar(nan)) == kfopt::Status::NonFiniteInput);
  CHECK(ngr.step(theta, scalar(0.3), scalar(nan)) == kfopt::Status::NonFiniteInput);
  unchanged(2);
  Vec<double> theta_bad = theta;
  theta_bad(0) = nan;
  CHECK(joint.step(theta_bad, scalar(0.3), scalar(0.2)) == kfopt::Status::NonFiniteInput);
  CHECK(ngr.step(theta_bad, scalar(0.3), scalar(0.2)) == kfopt::Status::NonFiniteInput);
  unchanged(3);
  const Vec<double> u2 = Vec<double>::Zero(2);
  CHECK_THROWS_WITH(joint.step(theta, u2, scalar(0.2)), Catch::Contains("2x1") && Catch::Contains("1x1"));
  CHECK_THROWS_AS(ngr.step(theta, u2, scalar(0.2)), kfopt::ShapeError);
  CHECK_THROWS_AS(joint.step(theta, scalar(0.3), Vec<double>::Zero(2)), kfopt::ShapeError);
  unchanged(3);

  // Construction errors: information form, mismatched output sizes, indefinite prior.
  kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
  hp.form = kfopt::KalmanForm::Information;
  CHECK_THROWS_WITH((kfopt::JointExtendedKalmanFilter<Cell, Gauss>(cell, Gauss(1, 0.1), Vec<double>::Zero(n), joint_P0, hp)),
                    Catch::Contains("form"));
  CHECK_THROWS_AS((kfopt::JointExtendedKalmanFilter<Cell, Gauss>(cell, Gauss(2, 0.1), Vec<double>::Zero(n), joint_P0)),
                  kfopt::ShapeError);
  CHECK_THROWS_AS((kfopt::NaturalGradientRtrl<Cell, Gauss>(cell, Gauss(2, 0.1), Vec<double>::Zero(n), P0)),
                  kfopt::ShapeError);
  Mat<double> bad = joint_P0;
  bad(n, n) = -1;
  CHECK_THROWS_AS((kfopt::JointExtendedKalmanFilter<Cell, Gauss>(cell, Gauss(1, 0.1), Vec<double>::Zero(n), bad)),
                  kfopt::InvalidInputError);
  kfopt::Rtrl<Cell> rtrl(cell, Vec<double>::Zero(n));
  Vec<double> z(1);
  Mat<double> H(1, d);
  CHECK_THROWS_AS(rtrl.output(theta, scalar(0.1), z, H), kfopt::InvalidInputError);  // nothing propagated
}

TEST_CASE("recurrent filters: advance without a target, checkpoint and restore",
          "[optim][ekf][rtrl]") {
  Rng rng(307);
  const Cell cell(2, 1, 1);
  const Eigen::Index n = 2, d = cell.param_dim();
  const std::vector<double> x = logistic_map(40, 0.33);
  const Mat<double> P0 = 0.5 * Mat<double>::Identity(d, d);
  const Mat<double> joint_P0 =
      kfopt::JointExtendedKalmanFilter<Cell, Gauss>::degenerate_covariance(Mat<double>::Zero(n, d), P0);
  kfopt::JointExtendedKalmanFilter<Cell, Gauss> joint(cell, Gauss(1, 0.05), Vec<double>::Zero(n), joint_P0);
  const auto twin = kfopt::natural_gradient_twin<double>(kfopt::ExtendedKalmanFilterHyperparameters<double>(), P0);
  kfopt::NaturalGradientRtrlHyperparameters<double> nh;
  nh.natural_gradient = twin.hyperparameters;
  kfopt::NaturalGradientRtrl<Cell, Gauss> ngr(cell, Gauss(1, 0.05), Vec<double>::Zero(n), twin.initial_fisher, nh);
  Vec<double> ta = 0.3 * rng.normal<double>(d, 1), tb = ta;
  // Steps with a target, then inputs without one (advance), then targets again: the two
  // forms stay equal through the target-less stretch (both propagate s and A / 𝒫 only).
  for (int t = 0; t < 40; ++t) {
    if (t >= 10 && t < 15) {
      REQUIRE(joint.advance(ta, scalar(x[t])) == kfopt::Status::Success);
      REQUIRE(ngr.advance(tb, scalar(x[t])) == kfopt::Status::Success);
    } else {
      REQUIRE(joint.step(ta, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
      REQUIRE(ngr.step(tb, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
    }
  }
  CHECK(relative_error(ta, tb) <= 1e-10);
  CHECK(relative_error(joint.hidden(), ngr.hidden()) <= 1e-10);
  const Mat<double> A = ngr.tangent();
  CHECK(relative_error(joint.covariance().topRightCorner(n, d).eval(),
                       (A * joint.parameter_covariance()).eval()) <= 1e-10);

  // Checkpoint, run on, restore, run the same stretch again: bit-identical.
  const auto joint_saved = joint.state();
  const auto ng_saved = ngr.state();
  const Vec<double> ta_saved = ta, tb_saved = tb;
  Vec<double> first_a, first_b;
  for (int pass = 0; pass < 2; ++pass) {
    for (int t = 0; t < 10; ++t) {
      REQUIRE(joint.step(ta, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
      REQUIRE(ngr.step(tb, scalar(x[t]), scalar(x[t + 1])) == kfopt::Status::Success);
    }
    if (pass == 0) {
      first_a = ta;
      first_b = tb;
      joint.set_state(joint_saved);
      ngr.set_state(ng_saved);
      ta = ta_saved;
      tb = tb_saved;
    } else {
      CHECK(same_bits(ta, first_a));
      CHECK(same_bits(tb, first_b));
    }
  }
}
