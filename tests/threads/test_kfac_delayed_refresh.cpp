// K-FAC's delayed refresh (KfacOptions::refresh_delay d): the refresh due at step k is
// computed from the factors at step k and first used by step k + d.
//  - On a background thread it gives the same parameters, bit for bit, as the same schedule
//    computed on the caller's thread, for dense, diagonal and recurrent (Independent,
//    Option 1, Option 2) layers, eigendecompositions and Cholesky inverses, factored and
//    exact damping, adaptive damping, on 1 and 2 threads.
//  - Which step sees which refresh is checked against eigendecompositions of the factors
//    taken when each refresh started (Eigen's own solver).
//  - A save while a refresh is under way resumes bit for bit; so does a copy; a refused
//    step swaps nothing and starts nothing twice.
// Under ThreadSanitizer (cmake/dev.sh tsan) the same runs check the background thread for
// races.
#include <catch2/catch.hpp>
#include <kfopt/linalg/threads.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <Eigen/Eigenvalues>

#include "support/kfac_fixture.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using kfopt_kfac_test::KfacFixture;
using kfopt_kfac_test::KfacProblem;

// Every weight and bias of the fixture, concatenated.
template <typename S>
std::vector<S> weights(const KfacFixture<S>& f) {
  std::vector<S> all;
  for (const auto& l : f.layers) {
    all.insert(all.end(), l.W.data(), l.W.data() + l.W.size());
    all.insert(all.end(), l.b.data(), l.b.data() + l.b.size());
  }
  return all;
}

// The weights after `steps` steps of the fixture with `options`, on `threads` threads.
template <typename S>
std::vector<S> train(KfacProblem problem, int threads, int steps) {
  kfopt::set_threads(threads);
  KfacFixture<S> f(problem);
  for (int t = 0; t < steps; ++t) f.step(t);
  kfopt::set_threads(0);
  return weights(f);
}

KfacProblem delayed_problem(int delay, bool background) {
  KfacProblem p;
  p.options.inverse_period = 4;
  p.options.refresh_delay = delay;
  p.options.refresh_in_background = background;
  p.options.learning_rate = 0.1;
  return p;
}

template <typename S>
void check_background_equals_synchronous(KfacProblem base, const char* what) {
  constexpr int steps = 30;
  for (int delay : {1, 3, 4}) {
    INFO(what << ", refresh_delay " << delay);
    KfacProblem sync = base, background = base;
    sync.options.refresh_delay = background.options.refresh_delay = delay;
    sync.options.refresh_in_background = false;
    background.options.refresh_in_background = true;
    const std::vector<S> reference = train<S>(sync, 1, steps);
    CHECK(train<S>(background, 1, steps) == reference);
    CHECK(train<S>(background, 2, steps) == reference);
    CHECK(train<S>(sync, 2, steps) == reference);
    KfacProblem immediate = base;
    immediate.options.refresh_delay = 0;
    CHECK(train<S>(immediate, 1, steps) != reference);  // the delay changes the schedule
  }
}

}  // namespace

TEMPLATE_TEST_CASE("a background refresh gives the parameters of its synchronous schedule bit for bit",
                   "[threads][kfac][delayed]", float, double) {
  using S = TestType;
  KfacProblem eig = delayed_problem(1, true);
  check_background_equals_synchronous<S>(eig, "eigendecomposition, factored damping, all layers");

  KfacProblem chol = eig;
  chol.options.inverse_method = kfopt::InverseMethod::Cholesky;
  chol.recurrent = false;  // the recurrent blocks always eigendecompose
  check_background_equals_synchronous<S>(chol, "Cholesky inverses, dense layers");

  KfacProblem exact = eig;
  exact.options.damping_style = kfopt::DampingStyle::Exact;
  check_background_equals_synchronous<S>(exact, "exact damping");

  KfacProblem adaptive = eig;
  adaptive.options.adaptive_damping = true;
  adaptive.options.damping_adaptation_period = 1;  // λ changes between a start and its swap
  check_background_equals_synchronous<S>(adaptive, "adaptive damping");
}

TEST_CASE("step k + d is the first step to use the refresh started at step k",
          "[threads][kfac][delayed]") {
  using S = double;
  constexpr int period = 4, delay = 2;
  KfacProblem p = delayed_problem(delay, true);
  p.recurrent = false;
  p.diagonal = false;
  KfacFixture<S> f(p);
  // Eigenvalues (ascending) of layer 0's A as each refresh starts: at every multiple of the
  // period, before the step.
  std::vector<Eigen::VectorXd> started;
  for (int t = 0; t < 22; ++t) {
    f.prepare(t);
    if (t % period == 0) {
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(f.opt.block(0).input_factor());
      started.push_back(es.eigenvalues());
    }
    f.finish(t);
    // The first refresh (step 0) has nothing to wait for: it is used at once. After that,
    // the refresh started at step k is in use from step k + d on.
    int in_use = 0;
    for (int k = period; k + delay <= t; k += period) in_use = k / period;
    const Eigen::VectorXd held = f.opt.block(0).input_spectrum().eigenvalues().cast<double>();
    INFO("after step " << t << ", expecting the refresh of step " << in_use * period);
    REQUIRE(held.size() == started[static_cast<std::size_t>(in_use)].size());
    CHECK((held - started[static_cast<std::size_t>(in_use)]).cwiseAbs().maxCoeff() <=
          1e-12 * started[static_cast<std::size_t>(in_use)].cwiseAbs().maxCoeff());
    if (static_cast<std::size_t>(in_use + 1) < started.size()) {  // a newer one has started
      CHECK((held - started[static_cast<std::size_t>(in_use + 1)]).cwiseAbs().maxCoeff() >
            1e-6 * started[static_cast<std::size_t>(in_use)].cwiseAbs().maxCoeff());
    }
    const bool pending = t >= period && t % period < delay;
    CHECK(f.opt.state().refresh_swap_step == (pending ? (t / period) * period + delay : -1));
  }
}

TEMPLATE_TEST_CASE("a save while a refresh is under way resumes bit for bit",
                   "[threads][kfac][delayed][state]", float, double) {
  using S = TestType;
  constexpr int steps = 26, period = 4, delay = 3;
  KfacProblem p = delayed_problem(delay, true);
  p.options.adaptive_damping = true;
  KfacFixture<S> uninterrupted(p);
  for (int t = 0; t < steps; ++t) uninterrupted.step(t);

  for (int saved_after : {5, 8, 15}) {  // pending (swap at 7), pending (11), none
    INFO("saved after step " << saved_after);
    KfacFixture<S> first(p);
    for (int t = 0; t <= saved_after; ++t) first.step(t);
    const kfopt::StateDict state = first.opt.state_dict();
    const kfopt::StateDict model = first.model();
    const bool pending = saved_after >= period && saved_after % period < delay;
    CHECK((first.opt.state().refresh_swap_step >= 0) == pending);
    CHECK(state.scalar<std::int64_t>("fc/has_pending_refresh") == (pending ? 1 : 0));

    KfacFixture<S> resumed(p);
    resumed.load_model(model);
    resumed.opt.load_state_dict(state);
    for (int t = saved_after + 1; t < steps; ++t) resumed.step(t);
    CHECK(resumed.same_weights(uninterrupted));
  }

  // A state of an optimizer without the delay does not load, and says why.
  KfacProblem immediate = p;
  immediate.options.refresh_delay = 0;
  KfacFixture<S> other(immediate);
  other.step(0);
  KfacFixture<S> target(p);
  target.step(0);
  CHECK_THROWS_WITH(target.opt.load_state_dict(other.opt.state_dict()),
                    Catch::Contains("refresh_delay"));
  CHECK_THROWS_WITH(other.opt.load_state_dict(target.opt.state_dict()),
                    Catch::Contains("refresh_delay"));
}

TEMPLATE_TEST_CASE("a copy taken while a refresh is under way continues as the original would",
                   "[threads][kfac][delayed]", float, double) {
  using S = TestType;
  constexpr int steps = 20;
  const KfacProblem p = delayed_problem(3, true);
  KfacFixture<S> uninterrupted(p);
  for (int t = 0; t < steps; ++t) uninterrupted.step(t);
  KfacFixture<S> f(p);
  for (int t = 0; t < steps; ++t) {
    if (t == 6) {  // the refresh of step 4 is under way until step 7
      REQUIRE(f.opt.state().refresh_swap_step == 7);
      kfopt::Kfac<S> copy(f.opt);
      f.opt = std::move(copy);
    }
    f.step(t);
  }
  CHECK(f.same_weights(uninterrupted));
}

TEMPLATE_TEST_CASE("a refused step neither swaps in a refresh nor starts one twice",
                   "[threads][kfac][delayed]", float, double) {
  using S = TestType;
  constexpr int steps = 20;
  const KfacProblem p = delayed_problem(2, true);
  KfacFixture<S> clean(p);
  for (int t = 0; t < steps; ++t) clean.step(t);
  KfacFixture<S> f(p);
  for (int t = 0; t < steps; ++t) {
    f.prepare(t);
    if (t == 4 || t == 6) {  // a refresh is due at step 4 and swapped in at step 6
      for (auto& l : f.layers) l.dW(0, 0) = std::numeric_limits<S>::quiet_NaN();
      CHECK(f.opt.step() == kfopt::Status::NonFiniteInput);
      CHECK(f.opt.state().refresh_swap_step == (t == 4 ? -1 : 6));
    }
    f.finish(t);  // recomputes every gradient
  }
  CHECK(f.same_weights(clean));
  CHECK(f.opt.state().counters.skipped_nonfinite == 2);
}

TEST_CASE("the refresh delay is validated and refused where the caller refreshes",
          "[threads][kfac][delayed]") {
  kfopt::KfacOptions o;
  o.inverse_period = 5;
  o.refresh_delay = 6;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("refresh_delay") && Catch::Contains("inverse_period"));
  o.refresh_delay = -1;
  CHECK_THROWS_AS(o.validate(), kfopt::HyperparameterError);
  o.refresh_delay = 5;
  CHECK_NOTHROW(o.validate());

  KfacProblem p = delayed_problem(2, true);
  p.recurrent = false;
  KfacFixture<double> f(p);
  f.prepare(0);
  const auto identity = [](std::size_t, const Eigen::MatrixXd& z, Eigen::MatrixXd& d) {
    d = z;
    return kfopt::Status::Success;
  };
  CHECK_THROWS_WITH(f.opt.step_with_preconditioner(identity),
                    Catch::Contains("step_with_preconditioner") && Catch::Contains("refresh_delay"));
  CHECK_THROWS_WITH(f.opt.step_with_installed_refresh(),
                    Catch::Contains("step_with_installed_refresh"));
  CHECK(f.opt.state().counters.steps == 0);
}
