// Kfac's state dict without files: a save/load round trip continues a run bit for bit
// (dense layers with both inverse methods and damping styles, diagonal factors, layers
// without bias, recurrent layers with all three approximations, adaptive damping, resumed
// mid-way through an inverse period), taking the state changes nothing (the factors' lazy
// blends stay pending), and refused loads name the layer and entry and change nothing.
#include <catch2/catch.hpp>

#include <limits>
#include <string>

#include "support/kfac_fixture.hpp"

using namespace kfopt_kfac_test;

namespace {

KfacProblem problem(kfopt::InverseMethod method, kfopt::DampingStyle style) {
  KfacProblem p;
  p.options.learning_rate = 0.05;
  p.options.damping = 0.01;
  p.options.inverse_method = method;
  p.options.damping_style = style;
  p.options.inverse_period = 3;
  p.options.decay = 0.8;  // the lazy scale folds back every few batches
  p.options.adaptive_damping = true;
  p.options.damping_adaptation = 0.7;
  p.options.damping_adaptation_period = 2;
  p.options.weight_decay = 0.01;
  return p;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// N steps, the statistics of step N, save; a fresh Kfac loads and both run M more steps.
template <typename S>
void check_round_trip(const KfacProblem& p, int N, int M) {
  KfacFixture<S> first(p);
  for (int t = 0; t < N; ++t) first.step(t);
  first.prepare(N);
  const kfopt::StateDict saved = first.opt.state_dict();
  const kfopt::StateDict model = first.model();

  KfacFixture<S> resumed(p);
  resumed.load_model(model);
  resumed.opt.load_state_dict(saved);
  CHECK(resumed.opt.state_dict() == saved);

  for (int t = N; t < N + M; ++t) {
    if (t > N) first.prepare(t);
    first.finish(t);
    if (t > N) resumed.prepare(t);
    resumed.finish(t);
  }
  CHECK(resumed.same_weights(first));
  CHECK(resumed.opt.state_dict() == first.opt.state_dict());
  // The damping did change during the run (the adaptive rule was exercised).
  CHECK(first.opt.damping() != p.options.damping);
}

}  // namespace

TEMPLATE_TEST_CASE("Kfac state dict: a round trip continues the run bit for bit", "[optim][kfac][state_dict]",
                   float, double) {
  using S = TestType;
  using kfopt::DampingStyle;
  using kfopt::InverseMethod;
  SECTION("eigendecomposition, factored damping, dense and recurrent layers") {
    check_round_trip<S>(problem(InverseMethod::Eigendecomposition, DampingStyle::Factored), 4, 6);
    check_round_trip<S>(problem(InverseMethod::Eigendecomposition, DampingStyle::Factored), 6, 4);
  }
  SECTION("Cholesky, factored damping") {
    check_round_trip<S>(problem(InverseMethod::Cholesky, DampingStyle::Factored), 4, 6);
  }
  SECTION("eigendecomposition, exact damping") {
    check_round_trip<S>(problem(InverseMethod::Eigendecomposition, DampingStyle::Exact), 5, 5);
  }
  SECTION("before the first step: no statistics, no spectra") {
    check_round_trip<S>(problem(InverseMethod::Eigendecomposition, DampingStyle::Factored), 0, 5);
  }
}

TEST_CASE("Kfac state dict: the dict's layout", "[optim][kfac][state_dict]") {
  KfacFixture<float> f(problem(kfopt::InverseMethod::Eigendecomposition, kfopt::DampingStyle::Factored));
  for (int t = 0; t < 2; ++t) f.step(t);
  const kfopt::StateDict d = f.opt.state_dict();
  CHECK(d.type() == "kfopt::Kfac");
  CHECK(d.scalar_type() == kfopt::ScalarType::Float32);
  // fc: 3×4 weights and a bias: A is 5×5, G 3×3, momentum [W b] 3×5.
  CHECK(d.entry("fc/A").describe() == "5x5 float32");
  CHECK(d.entry("fc/G").describe() == "3x3 float32");
  CHECK(d.entry("fc/momentum").describe() == "3x5 float32");
  CHECK(d.entry("fc/A_scale").describe() == "scalar float64");
  CHECK(d.entry("fc/A_eigenvectors").describe() == "5x5 float32");
  CHECK(d.entry("fc/A_eigenvalues").describe() == "5 float32");
  CHECK(d.entry("embed/A").describe() == "6x1 float32");  // diagonal, with the bias coordinate
  CHECK_FALSE(d.contains("embed/A_eigenvectors"));
  CHECK(d.entry("wide/G").describe() == "4x1 float32");
  CHECK(d.entry("rnn_opt2/A0").describe() == "3x3 float32");
  CHECK(d.entry("rnn_opt2/refresh/G1").describe() == "3x3 float32");
  CHECK(d.scalar<std::int64_t>("rnn_opt2/refreshes") == 1);
  CHECK(d.scalar<std::int64_t>("steps") == 2);
  CHECK(d.scalar<std::int64_t>("fc/A_updates") == 2);
  // The stored A and G are those the block reads: A_scale · A is the current factor.
  const Eigen::MatrixXf A = d.array<float>("fc/A") * static_cast<float>(d.scalar<double>("fc/A_scale"));
  CHECK(A.isApprox(f.opt.block(0).input_factor(), 1e-5f));
  CHECK(d.hyperparameter("rnn_opt1.kind").value == kfopt::HyperparameterValue(std::string("recurrent")));
  CHECK(d.hyperparameter("learning_rate").kind == kfopt::HyperparameterKind::Restored);
  CHECK(d.hyperparameter("inverse_method").kind == kfopt::HyperparameterKind::Structural);
}

TEMPLATE_TEST_CASE("Kfac state dict: taking the state changes nothing", "[optim][kfac][state_dict]",
                   float, double) {
  using S = TestType;
  // One run takes the state after every batch of statistics (the factors' blends are then
  // pending, with a lazy scale below 1), the other never: the runs agree bit for bit.
  const KfacProblem p = problem(kfopt::InverseMethod::Eigendecomposition, kfopt::DampingStyle::Factored);
  KfacFixture<S> watched(p), plain(p);
  bool pending_seen = false;
  for (int t = 0; t < 9; ++t) {
    watched.prepare(t);
    const kfopt::StateDict d = watched.opt.state_dict();
    pending_seen = pending_seen || d.scalar<double>("fc/A_scale") < 1.0;
    CHECK(watched.opt.state_dict() == d);
    watched.finish(t);
    plain.step(t);
  }
  CHECK(pending_seen);
  CHECK(watched.same_weights(plain));
  CHECK(watched.opt.state_dict() == plain.opt.state_dict());
}

TEST_CASE("Kfac state dict: loading into a Kfac that has run continues the saved run", "[optim][kfac][state_dict]") {
  const KfacProblem p = problem(kfopt::InverseMethod::Eigendecomposition, kfopt::DampingStyle::Factored);
  KfacFixture<double> early(p);
  early.prepare(0);  // statistics, but no step yet: no spectra
  const kfopt::StateDict saved = early.opt.state_dict();
  KfacFixture<double> busy(p);
  for (int t = 0; t < 5; ++t) busy.step(t);
  busy.load_model(early.model());
  busy.opt.load_state_dict(saved);  // the spectra and snapshots of the later run are dropped
  CHECK(busy.opt.state_dict() == saved);
  for (int t = 0; t < 4; ++t) {
    if (t > 0) {
      early.prepare(t);
      busy.prepare(t);
    }
    early.finish(t);
    busy.finish(t);
  }
  CHECK(busy.same_weights(early));
  CHECK(busy.opt.state_dict() == early.opt.state_dict());
}

TEST_CASE("Kfac state dict: refused loads name the layer and entry and change nothing", "[optim][kfac][state_dict]") {
  const KfacProblem p = problem(kfopt::InverseMethod::Eigendecomposition, kfopt::DampingStyle::Factored);
  KfacFixture<double> target(p);
  for (int t = 0; t < 4; ++t) target.step(t);
  const kfopt::StateDict before = target.opt.state_dict();
  const kfopt::StateDict model_before = target.model();
  KfacFixture<double> other(p);
  for (int t = 0; t < 5; ++t) other.step(t);
  other.prepare(5);
  const kfopt::StateDict good = other.opt.state_dict();
  auto refused = [&](const kfopt::StateDict& d, const std::string& expected) {
    const std::string msg = error_of([&] { target.opt.load_state_dict(d); });
    INFO("message: " << msg);
    CHECK(msg.find("kfopt::Kfac::load_state_dict") != std::string::npos);
    CHECK(msg.find(expected) != std::string::npos);
    CHECK(target.opt.state_dict() == before);
    CHECK(target.model() == model_before);
  };
  SECTION("a NaN in a factor") {
    kfopt::StateDict d = good;
    Eigen::MatrixXd G = d.array<double>("fc/G");
    G(1, 1) = std::numeric_limits<double>::quiet_NaN();
    d.set_array("fc/G", G);
    refused(d, "entry 'fc/G' (3x3 float64) holds NaN or Inf");
  }
  SECTION("an indefinite factor, a negative diagonal factor") {
    kfopt::StateDict d = good;
    Eigen::MatrixXd A = d.array<double>("fc/A");
    A(0, 0) = -1.0;
    d.set_array("fc/A", A);
    refused(d, "entry 'fc/A' (5x5 float64) is not positive semi-definite");
    d = good;
    Eigen::MatrixXd E = d.array<double>("embed/A");
    E(2, 0) = -0.5;
    d.set_array("embed/A", E);
    refused(d, "entry 'embed/A' (6x1 float64) holds a negative value");
  }
  SECTION("a lazy scale out of range") {
    kfopt::StateDict d = good;
    d.set_scalar<double>("fc_nobias/G_scale", 1e-6);
    refused(d, "layer 'fc_nobias'");
    refused(d, "lazy scale");
  }
  SECTION("eigenvectors that are not orthonormal, eigenvalues out of order") {
    kfopt::StateDict d = good;
    Eigen::MatrixXd U = d.array<double>("fc/G_eigenvectors");
    U.col(0) *= 2.0;
    d.set_array("fc/G_eigenvectors", U);
    refused(d, "(layer 'fc')");
    refused(d, "not orthonormal");
    d = good;
    Eigen::MatrixXd ev = d.array<double>("fc/A_eigenvalues");
    std::swap(ev(0, 0), ev(4, 0));
    d.set_array("fc/A_eigenvalues", ev, 1);
    refused(d, "ascending");
  }
  SECTION("a recurrent snapshot that is not symmetric, a broken length distribution") {
    kfopt::StateDict d = good;
    Eigen::MatrixXd A0 = d.array<double>("rnn_opt1/refresh/A0");
    A0(0, 1) += 0.5;
    d.set_array("rnn_opt1/refresh/A0", A0);
    refused(d, "entry 'rnn_opt1/refresh/A0' (4x4 float64) is not symmetric");
    d = good;
    Eigen::MatrixXd w = d.array<double>("rnn_opt2/refresh/length_weights");
    w(0, 0) += 0.25;
    d.set_array("rnn_opt2/refresh/length_weights", w, 1);
    refused(d, "(layer 'rnn_opt2')");
    refused(d, "sum to 1");
  }
  SECTION("a negative counter") {
    kfopt::StateDict d = good;
    d.set_scalar<std::int64_t>("rnn_indep/A_updates", -1);
    refused(d, "entry 'rnn_indep/A_updates' (scalar int64) holds -1");
  }
  SECTION("another layer set, kind or structure") {
    KfacProblem dense_only = p;
    dense_only.recurrent = false;
    KfacFixture<double> fewer(dense_only);
    fewer.step(0);
    refused(fewer.opt.state_dict(), "rnn_indep");
    KfacProblem other_options = p;
    other_options.options.inverse_method = kfopt::InverseMethod::Cholesky;
    KfacFixture<double> cholesky(other_options);
    cholesky.step(0);
    refused(cholesky.opt.state_dict(), "hyperparameter 'inverse_method'");
    // The same names, the layer "fc" recurrent instead of dense.
    kfopt::Kfac<double> swapped(p.options);
    Eigen::MatrixXd W = Eigen::MatrixXd::Zero(3, 4), dW = W;
    Eigen::VectorXd b = Eigen::VectorXd::Zero(3), db = b;
    swapped.add_recurrent_layer("fc", W, dW, b, db);
    const std::string msg = error_of([&] { swapped.load_state_dict(good); });
    CHECK(msg.find("kfopt::Kfac::load_state_dict") != std::string::npos);
  }
  SECTION("another scalar type") {
    KfacFixture<float> single(p);
    single.step(0);
    refused(single.opt.state_dict(), "holds float32 state but this optimizer is float64");
  }
}
