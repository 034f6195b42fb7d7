// Save and resume through a checkpoint file, for every optimizer of the library, in float
// and double: N steps, save (optimizer state + model weights), load into a freshly
// constructed optimizer and model, M more steps; the weights and the optimizer's complete
// state must equal those of an uninterrupted N + M run bit for bit. The checkpoint is taken
// where a training loop would take it (between steps; for KroneckerFilter also after the
// statistics of the next step were recorded), and N is chosen so that schedules, phases and
// cached values are mid-way (e.g. KroneckerFilter's trace refresh every 3 predictions, K-FAC's
// inverse refresh every 3 steps: the resumed run first steps with the saved, stale spectra).
#include <catch2/catch.hpp>
#include <kfopt/io/checkpoint.hpp>

#include <functional>

#include "io/checkpoint_fixtures.hpp"
#include "support/kfac_fixture.hpp"

using namespace kfopt_checkpoint_test;

namespace {

// Runs the comparison for fixtures made by `make()`.
template <typename Fixture, typename Make>
void check_resume(const std::string& name, Make make, int N, int M) {
  INFO("optimizer " << name << ", N = " << N << ", M = " << M);
  TempPath file("resume_" + name);
  Fixture uninterrupted = make();
  for (int t = 0; t < N + M; ++t) uninterrupted.step(t);

  {
    Fixture first = make();
    for (int t = 0; t < N; ++t) first.step(t);
    first.prepare(N);
    kfopt::Checkpoint ck;
    ck.set("optimizer", first.opt.state_dict());
    ck.set("model", first.model());
    kfopt::save_checkpoint(file.path, ck);
  }
  Fixture resumed = make();
  const kfopt::Checkpoint ck = kfopt::load_checkpoint(file.path);
  resumed.load_model(ck.get("model"));
  ck.restore("optimizer", resumed.opt);
  resumed.finish(N);
  for (int t = N + 1; t < N + M; ++t) resumed.step(t);

  CHECK(resumed.same_weights(uninterrupted));
  CHECK(resumed.opt.state_dict() == uninterrupted.opt.state_dict());

  // The same run without the checkpoint would differ (the comparison can fail): a fresh
  // optimizer on the restored weights does not continue the run.
  Fixture restarted = make();
  restarted.load_model(ck.get("model"));
  restarted.prepare(N);
  restarted.finish(N);
  for (int t = N + 1; t < N + M; ++t) restarted.step(t);
  CHECK_FALSE(restarted.opt.state_dict() == uninterrupted.opt.state_dict());
}

}  // namespace

TEMPLATE_TEST_CASE("resume bit for bit: first-order optimizers", "[io][resume]", float, double) {
  using S = TestType;
  kfopt::SgdOptions sgd;
  sgd.learning_rate = 0.05;
  sgd.momentum = 0.9;
  sgd.nesterov = true;
  sgd.weight_decay = 0.01;
  check_resume<ParamFixture<kfopt::Sgd, S, kfopt::SgdOptions>>(
      "sgd", [&] { return ParamFixture<kfopt::Sgd, S, kfopt::SgdOptions>(sgd); }, 7, 6);

  for (bool amsgrad : {false, true}) {
    kfopt::AdamOptions adam = kfopt::AdamOptions::adamw(0.01);
    adam.amsgrad = amsgrad;
    adam.beta2 = amsgrad ? 0.6 : adam.beta2;  // v falls below its running maximum
    check_resume<ParamFixture<kfopt::Adam, S, kfopt::AdamOptions>>(
        amsgrad ? "amsgrad" : "adamw",
        [&] { return ParamFixture<kfopt::Adam, S, kfopt::AdamOptions>(adam); }, 5, 8);
  }

  kfopt::RmsPropOptions rms;
  rms.centered = true;
  rms.momentum = 0.5;
  check_resume<ParamFixture<kfopt::RmsProp, S, kfopt::RmsPropOptions>>(
      "rmsprop", [&] { return ParamFixture<kfopt::RmsProp, S, kfopt::RmsPropOptions>(rms); }, 6, 5);
}

TEMPLATE_TEST_CASE("resume bit for bit: Bayesian-filter optimizers", "[io][resume]", float,
                   double) {
  using S = TestType;
  for (kfopt::FisherEstimate fisher : {kfopt::FisherEstimate::Gradient, kfopt::FisherEstimate::Centered}) {
    kfopt::FilterRmsPropOptions frms;
    frms.learning_rate = 0.01;
    frms.fisher = fisher;
    check_resume<ParamFixture<kfopt::FilterRmsProp, S, kfopt::FilterRmsPropOptions>>(
        "filter_rmsprop",
        [&] { return ParamFixture<kfopt::FilterRmsProp, S, kfopt::FilterRmsPropOptions>(frms); }, 6, 5);

    kfopt::FilterAdamOptions fadam = kfopt::FilterAdamOptions::combined(0.01, 0.01);
    fadam.fisher = fisher;
    check_resume<ParamFixture<kfopt::FilterAdam, S, kfopt::FilterAdamOptions>>(
        "filter_adam",
        [&] { return ParamFixture<kfopt::FilterAdam, S, kfopt::FilterAdamOptions>(fadam); }, 6, 5);

    kfopt::FilterFixedPointOptions ffp = kfopt::FilterFixedPointOptions::adamw(0.01, 0.01);
    ffp.fisher = fisher;
    check_resume<ParamFixture<kfopt::FilterFixedPoint, S, kfopt::FilterFixedPointOptions>>(
        "filter_fixed_point",
        [&] { return ParamFixture<kfopt::FilterFixedPoint, S, kfopt::FilterFixedPointOptions>(ffp); },
        6, 5);
  }

  for (kfopt::KroneckerProjectionMethod method :
       {kfopt::KroneckerProjectionMethod::FirstOrder, kfopt::KroneckerProjectionMethod::Exact}) {
    kfopt::KroneckerFilterOptions kf = kfopt::KroneckerFilterOptions::whitening(0.02, 0.05);
    kf.projection = method;
    kf.trace_period = 3;  // N = 4: the cached traces of prediction 3 are read by prediction 4
    check_resume<KroneckerFilterFixture<S>>("kronecker_filter",
                                            [&] { return KroneckerFilterFixture<S>(kf); }, 4, 5);
  }
}

TEMPLATE_TEST_CASE("resume bit for bit: Kalman optimizers", "[io][resume]", float, double) {
  using S = TestType;
  for (kfopt::KalmanForm form :
       {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Joseph, kfopt::KalmanForm::Information}) {
    kfopt::ExtendedKalmanFilterHyperparameters<S> ekf;
    ekf.form = form;
    ekf.fading = S(0.01);
    check_resume<LogisticFixture<Ekf, S>>("ekf", [&] { return LogisticFixture<Ekf, S>(ekf); }, 6, 6);

    kfopt::OnlineNaturalGradientHyperparameters<S> ong;
    ong.form = form;
    ong.step_size = S(0.1);
    check_resume<LogisticFixture<Ong, S>>("ong", [&] { return LogisticFixture<Ong, S>(ong); }, 6, 6);
  }

  check_resume<RtrlFixture<S>>("rtrl", [] { return RtrlFixture<S>(); }, 5, 5);

  kfopt::ExtendedKalmanFilterHyperparameters<S> joint;
  joint.fading = S(0.02);
  check_resume<JointEkfFixture<S>>("joint_ekf", [&] { return JointEkfFixture<S>(joint); }, 5, 5);

  kfopt::NaturalGradientRtrlHyperparameters<S> ng;
  ng.natural_gradient.step_size = S(0.05);
  check_resume<NgRtrlFixture<S>>("ng_rtrl", [&] { return NgRtrlFixture<S>(ng); }, 5, 5);
}

TEMPLATE_TEST_CASE("resume bit for bit: K-FAC", "[io][resume]", float, double) {
  using S = TestType;
  using Fixture = kfopt_kfac_test::KfacFixture<S>;
  // Dense layers (bias, no bias, diagonal A, diagonal G) and recurrent layers (Independent,
  // Option 1, Option 2; mixed sequence lengths), adaptive damping changing λ every second
  // report, spectra refreshed every 3 steps: N = 4 resumes between refreshes.
  auto problem = [](kfopt::InverseMethod method, kfopt::DampingStyle style) {
    kfopt_kfac_test::KfacProblem p;
    p.options.learning_rate = 0.05;
    p.options.damping = 0.01;
    p.options.inverse_method = method;
    p.options.damping_style = style;
    p.options.inverse_period = 3;
    p.options.decay = 0.8;
    p.options.adaptive_damping = true;
    p.options.damping_adaptation = 0.7;
    p.options.damping_adaptation_period = 2;
    return p;
  };
  const auto eig = problem(kfopt::InverseMethod::Eigendecomposition, kfopt::DampingStyle::Factored);
  check_resume<Fixture>("kfac_eigen", [&] { return Fixture(eig); }, 4, 6);
  check_resume<Fixture>("kfac_eigen_late", [&] { return Fixture(eig); }, 8, 4);
  const auto chol = problem(kfopt::InverseMethod::Cholesky, kfopt::DampingStyle::Factored);
  check_resume<Fixture>("kfac_cholesky", [&] { return Fixture(chol); }, 4, 6);
  const auto exact = problem(kfopt::InverseMethod::Eigendecomposition, kfopt::DampingStyle::Exact);
  check_resume<Fixture>("kfac_exact", [&] { return Fixture(exact); }, 5, 5);
}
