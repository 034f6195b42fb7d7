// Save and resume through a checkpoint file, for every optimizer of the library except K-FAC,
// in float and double: N steps, save (optimizer state + model weights), load into a freshly
// constructed optimizer and model, M more steps; the weights and the optimizer's complete
// state must equal those of an uninterrupted N + M run bit for bit. The checkpoint is taken
// where a training loop would take it (between steps; for KroneckerFilter also after the
// statistics of the next step were recorded), and N is chosen so that schedules, phases and
// cached values are mid-way (e.g. KroneckerFilter's trace refresh every 3 predictions).
#include <catch2/catch.hpp>
#include <kfopt/io/checkpoint.hpp>

#include <functional>

#include "io/checkpoint_fixtures.hpp"

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
