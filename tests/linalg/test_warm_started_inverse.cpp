// WarmStartedDampedInverse: the warm-started Newton–Schulz refresh against the exact damped
// inverse (accuracy on preconditioned gradients within the stated tolerance), the fall-back
// to the exact Cholesky inverse whenever the error check fails, and the error channels.
#include <catch2/catch.hpp>
#include <kfopt/linalg/warm_started_inverse.hpp>

#include <cmath>
#include <limits>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

template <typename Scalar>
Mat<Scalar> damped(const Mat<Scalar>& A, double lambda) {
  Mat<Scalar> B = A;
  B.diagonal().array() += static_cast<Scalar>(lambda);
  return B;
}

// One moving-average step A ← (1 − w) A + w S with S the second moment of `samples` draws.
template <typename Scalar>
Mat<Scalar> moving_average_step(Rng& rng, const Mat<Scalar>& A, double w, int samples) {
  const Mat<double> X = rng.normal<double>(samples, A.rows());
  Mat<double> S = X.transpose() * X / static_cast<double>(samples);
  S = (0.5 * (S + S.transpose())).eval();
  return ((1.0 - w) * A.template cast<double>() + w * S).template cast<Scalar>();
}

// Relative error of X Z against the exact (A + λI)⁻¹ Z (computed in double by full-pivot LU).
template <typename Scalar>
double preconditioned_error(const Mat<Scalar>& X, const Mat<Scalar>& A, double lambda,
                            const Mat<double>& Z) {
  const Mat<double> exact = dense_inverse<double>(damped(Mat<double>(A.template cast<double>()),
                                                         lambda)) * Z;
  const Mat<double> approx = X.template cast<double>() * Z;
  return relative_error(approx, exact);
}

// ‖I − (A + λI) X‖₂ in double.
template <typename Scalar>
double residual_norm(const Mat<Scalar>& X, const Mat<Scalar>& A, double lambda) {
  const Mat<double> M = damped(Mat<double>(A.template cast<double>()), lambda);
  const Mat<double> R = Mat<double>::Identity(A.rows(), A.rows()) - M * X.template cast<double>();
  return Eigen::JacobiSVD<Mat<double>>(R).singularValues()(0);
}

}  // namespace

TEST_CASE("warm start: the first refresh is the exact inverse (fall-back)",
          "[kron][warm_start]") {
  Rng rng(81);
  const Mat<double> A = rng.spd<double>(40, 0.2, 5.0);
  kfopt::WarmStartedDampedInverse<double> warm(40);
  REQUIRE(warm.compute(A, 0.1).info() == kfopt::Status::Success);
  CHECK(warm.last_fell_back());
  CHECK(warm.last_iterations() == 0);
  CHECK(relative_error(warm.inverse(), dense_inverse<double>(damped(A, 0.1))) <= 1e-12);
  CHECK(warm.state().fallbacks == 1);
  CHECK(warm.state().iterated == 0);
}

// iteration_cost = 0 (iterate whenever the screen says the tolerance is reachable) in the
// tests of the iteration itself: with the default cost model a CPU never iterates (below).
kfopt::WarmStartOptions<double> free_iteration() {
  kfopt::WarmStartOptions<double> options;
  options.iteration_cost = 0.0;
  return options;
}

TEST_CASE("warm start: a slowly changing factor is refreshed by iteration to 1e-8",
          "[kron][warm_start]") {
  Rng rng(82);
  const int n = 80;
  Mat<double> A = rng.spd<double>(n, 0.2, 5.0);
  const double lambda = 0.05;
  kfopt::WarmStartedDampedInverse<double> warm(n, free_iteration());
  REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
  const Mat<double> Z = rng.normal<double>(n, 7);
  for (int step = 0; step < 5; ++step) {
    // A full-rank batch (2n samples) and a small step: ‖R₀‖ of order 1e-3.
    A = moving_average_step(rng, A, 1e-3, 2 * n);
    REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
    CHECK_FALSE(warm.last_fell_back());
    CHECK(warm.last_iterations() >= 1);
    CHECK(warm.last_residual() <= 1e-8);
    // The stated contract: ‖I − M X‖₂ ≤ tolerance, hence every preconditioned vector is
    // within the tolerance relatively.
    CHECK(residual_norm(warm.inverse(), A, lambda) <= 1e-8);
    CHECK(preconditioned_error(warm.inverse(), A, lambda, Z) <= 1e-8);
    CHECK((warm.inverse() - warm.inverse().transpose()).norm() == 0);
  }
  CHECK(warm.state().iterated == 5);
  CHECK(warm.state().fallbacks == 1);
  CHECK(warm.state().refreshes == 6);
}

TEST_CASE("warm start: the default cost model recomputes exactly instead of iterating",
          "[kron][warm_start]") {
  // The same slowly changing factor: ‖R₀‖ ~ 1e-3 needs two squarings for 1e-8, each about
  // three exact inverses' flops (iteration_cost = 3), so every refresh is the exact
  // Cholesky inverse; a cost below 1/2 lets the same refreshes iterate.
  Rng rng(82);
  const int n = 80;
  Mat<double> A = rng.spd<double>(n, 0.2, 5.0);
  const double lambda = 0.05;
  kfopt::WarmStartedDampedInverse<double> warm(n);
  kfopt::WarmStartOptions<double> cheap;
  cheap.iteration_cost = 0.45;
  kfopt::WarmStartedDampedInverse<double> fast_gemm(n, cheap);
  REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
  REQUIRE(fast_gemm.compute(A, lambda).info() == kfopt::Status::Success);
  const Mat<double> Z = rng.normal<double>(n, 7);
  for (int step = 0; step < 5; ++step) {
    A = moving_average_step(rng, A, 1e-3, 2 * n);
    REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
    CHECK(warm.last_fell_back());
    CHECK(warm.last_iterations() == 0);
    CHECK(warm.last_residual() > 1e-8);  // the screen's lower bound: not reusable
    CHECK(relative_error(warm.inverse(), dense_inverse<double>(damped(A, lambda))) <= 1e-12);
    REQUIRE(fast_gemm.compute(A, lambda).info() == kfopt::Status::Success);
    CHECK_FALSE(fast_gemm.last_fell_back());
    CHECK(preconditioned_error(fast_gemm.inverse(), A, lambda, Z) <= 1e-8);
  }
  CHECK(warm.state().iterated == 0);
  CHECK(warm.state().fallbacks == 6);
  CHECK(fast_gemm.state().iterated == 5);
}

TEST_CASE("warm start: an unchanged factor needs no iteration", "[kron][warm_start]") {
  Rng rng(83);
  const Mat<double> A = rng.spd<double>(30);
  kfopt::WarmStartedDampedInverse<double> warm(30);
  REQUIRE(warm.compute(A, 0.1).info() == kfopt::Status::Success);
  const Mat<double> first = warm.inverse();
  REQUIRE(warm.compute(A, 0.1).info() == kfopt::Status::Success);
  CHECK_FALSE(warm.last_fell_back());
  CHECK(warm.last_iterations() == 0);
  CHECK(warm.inverse() == first);
}

TEST_CASE("warm start: a factor that barely moved keeps its inverse (screen, no O(n^3) work)",
          "[kron][warm_start]") {
  Rng rng(89);
  const int n = 70;
  const Mat<double> A = rng.spd<double>(n, 0.2, 5.0);
  const double lambda = 0.05;
  kfopt::WarmStartedDampedInverse<double> warm(n);
  REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
  const Mat<double> first = warm.inverse();
  // A moving-average step of weight 1e-12: the old inverse is within 1e-8 of the new one.
  const Mat<double> B = moving_average_step(rng, A, 1e-12, 2 * n);
  REQUIRE(warm.compute(B, lambda).info() == kfopt::Status::Success);
  CHECK_FALSE(warm.last_fell_back());
  CHECK(warm.last_iterations() == 0);
  CHECK(warm.state().reused == 1);
  CHECK(warm.inverse() == first);
  CHECK(warm.last_residual() <= 1e-8);
  CHECK(residual_norm(warm.inverse(), B, lambda) <= 1e-8);
  CHECK(preconditioned_error(warm.inverse(), B, lambda, rng.normal<double>(n, 4)) <= 1e-8);
  // A step of 1e-3 is too large to reuse: iterated (or exact), never reused.
  const Mat<double> C = moving_average_step(rng, B, 1e-3, 2 * n);
  REQUIRE(warm.compute(C, lambda).info() == kfopt::Status::Success);
  CHECK(warm.state().reused == 1);
  CHECK(preconditioned_error(warm.inverse(), C, lambda, rng.normal<double>(n, 4)) <= 1e-8);
  CHECK(warm.state().refreshes ==
        warm.state().reused + warm.state().iterated + warm.state().fallbacks);
}

TEST_CASE("warm start: iterative refinement turns an inverse at tolerance ε into ε² gradients",
          "[kron][warm_start]") {
  Rng rng(90);
  const int n = 80;
  const Mat<double> A = rng.spd<double>(n, 0.2, 5.0);
  const double lambda = 0.05;
  const Mat<double> Z = rng.normal<double>(n, 6);
  kfopt::WarmStartOptions<double> options;
  options.tolerance = 1e-4;  // a loose refresh, made accurate per application
  kfopt::WarmStartedDampedInverse<double> warm(n, options);
  REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
  Mat<double> B = A;
  for (int step = 0; step < 4; ++step) {
    B = moving_average_step(rng, B, step == 0 ? 1e-7 : 1e-3, 2 * n);
    REQUIRE(warm.compute(B, lambda).info() == kfopt::Status::Success);
    const double eps = residual_norm(warm.inverse(), B, lambda);
    CHECK(eps <= 1e-4);
    const Mat<double> exact = dense_inverse<double>(damped(B, lambda)) * Z;
    Mat<double> plain, refined, twice;
    warm.apply(Z, plain);
    warm.apply(Z, refined, 1);
    warm.apply(Z, twice, 2);
    CHECK(relative_error(plain, exact) <= std::max(eps, 1e-13) * 1.01);
    CHECK(relative_error(refined, exact) <= std::max(eps * eps, 1e-13) * 1.01);
    CHECK(relative_error(refined, exact) <= 1e-8);
    CHECK(relative_error(twice, exact) <= 1e-12);
  }
  CHECK(warm.state().reused >= 1);  // the 1e-7 step keeps the inverse
  // Contract checks.
  Mat<double> out;
  CHECK_THROWS_AS(warm.apply(Mat<double>::Ones(n + 1, 2), out), kfopt::ShapeError);
  CHECK_THROWS_AS(warm.apply(Z, out, -1), kfopt::InvalidInputError);
  kfopt::WarmStartedDampedInverse<double> restored(options);
  restored.set_state(warm.state());
  restored.apply(Z, out);  // no refinement: fine
  CHECK(out == Mat<double>(warm.inverse() * Z));
  CHECK_THROWS_AS(restored.apply(Z, out, 1), kfopt::NumericalError);
  kfopt::WarmStartedDampedInverse<double> empty(n);
  CHECK_THROWS_AS(empty.apply(Z, out), kfopt::NumericalError);
}

TEST_CASE("warm start: a new damping is absorbed by the iteration", "[kron][warm_start]") {
  Rng rng(84);
  const Mat<double> A = rng.spd<double>(50, 0.5, 4.0);
  kfopt::WarmStartedDampedInverse<double> warm(50, free_iteration());
  REQUIRE(warm.compute(A, 0.100).info() == kfopt::Status::Success);
  REQUIRE(warm.compute(A, 0.101).info() == kfopt::Status::Success);
  CHECK_FALSE(warm.last_fell_back());
  CHECK(warm.damping() == 0.101);
  CHECK(residual_norm(warm.inverse(), A, 0.101) <= 1e-8);
}

TEST_CASE("warm start: falls back to the exact inverse when the error check fails",
          "[kron][warm_start]") {
  Rng rng(85);
  const int n = 60;
  const Mat<double> A = rng.spd<double>(n, 0.2, 5.0);
  const double lambda = 0.02;
  const Mat<double> Z = rng.normal<double>(n, 5);

  SECTION("the starting residual is above max_initial_residual") {
    // A large step with a rank-deficient batch: ‖R₀‖ far above 0.5.
    const Mat<double> B = moving_average_step(rng, A, 0.5, 8);
    kfopt::WarmStartedDampedInverse<double> warm(n);
    warm.compute(A, lambda);
    REQUIRE(warm.compute(B, lambda).info() == kfopt::Status::Success);
    CHECK(warm.last_fell_back());
    CHECK(warm.last_iterations() == 0);
    CHECK(warm.last_residual() > 0.5);
    CHECK(preconditioned_error(warm.inverse(), B, lambda, Z) <= 1e-12);
    CHECK(warm.state().fallbacks == 2);
  }
  SECTION("the tolerance is not reached within max_iterations") {
    const Mat<double> B = moving_average_step(rng, A, 2e-2, 2 * n);
    kfopt::WarmStartOptions<double> options;
    options.max_iterations = 1;  // one step squares ‖R₀‖ ~ 1e-2: not 1e-8
    kfopt::WarmStartedDampedInverse<double> warm(n, options);
    warm.compute(A, lambda);
    REQUIRE(warm.compute(B, lambda).info() == kfopt::Status::Success);
    CHECK(warm.last_fell_back());
    CHECK(warm.last_iterations() == 0);  // given up before a step that could not suffice
    CHECK(warm.last_residual() > 1e-8);
    CHECK(preconditioned_error(warm.inverse(), B, lambda, Z) <= 1e-12);
    // With more iterations allowed the same change is absorbed.
    kfopt::WarmStartedDampedInverse<double> patient(n, free_iteration());
    patient.compute(A, lambda);
    REQUIRE(patient.compute(B, lambda).info() == kfopt::Status::Success);
    CHECK_FALSE(patient.last_fell_back());
    CHECK(preconditioned_error(patient.inverse(), B, lambda, Z) <= 1e-8);
  }
  SECTION("max_iterations = 0 always recomputes") {
    kfopt::WarmStartOptions<double> options;
    options.max_iterations = 0;
    kfopt::WarmStartedDampedInverse<double> warm(n, options);
    warm.compute(A, lambda);
    REQUIRE(warm.compute(A, lambda).info() == kfopt::Status::Success);
    CHECK(warm.last_fell_back());
  }
}

TEST_CASE("warm start in float meets the float tolerance", "[kron][warm_start]") {
  Rng rng(86);
  const int n = 40;
  Mat<float> A = rng.spd<float>(n, 0.5, 4.0);
  kfopt::WarmStartOptions<float> options;
  options.iteration_cost = 0.0f;
  kfopt::WarmStartedDampedInverse<float> warm(n, options);
  REQUIRE(warm.compute(A, 0.1f).info() == kfopt::Status::Success);
  A = moving_average_step(rng, A, 1e-3, 2 * n);
  REQUIRE(warm.compute(A, 0.1f).info() == kfopt::Status::Success);
  CHECK_FALSE(warm.last_fell_back());
  CHECK(warm.last_residual() <= 1e-3f);
  CHECK(preconditioned_error(warm.inverse(), A, 0.1, rng.normal<double>(n, 3)) <= 1e-3);
}

TEST_CASE("warm start: errors keep the previous inverse", "[kron][warm_start][errors]") {
  Rng rng(87);
  const Mat<double> A = rng.spd<double>(6);
  kfopt::WarmStartedDampedInverse<double> warm;
  CHECK_THROWS_AS(warm.inverse(), kfopt::NumericalError);
  REQUIRE(warm.compute(A, 0.5).info() == kfopt::Status::Success);
  const Mat<double> inv = warm.inverse();

  Mat<double> bad = A;
  bad(0, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK(warm.compute(bad, 0.5).info() == kfopt::Status::NonFiniteInput);
  CHECK(warm.inverse() == inv);

  // Indefinite: the iteration cannot converge and the exact fall-back refuses.
  Mat<double> indefinite = -A;
  CHECK(warm.compute(indefinite, 0.0).info() == kfopt::Status::NumericalIssue);
  CHECK(warm.inverse() == inv);
  CHECK(warm.damping() == 0.5);
  CHECK(warm.state().failed == 2);

  CHECK_THROWS_AS(warm.compute(A, -1.0), kfopt::InvalidInputError);
  CHECK_THROWS_AS(warm.compute(Mat<double>::Ones(2, 3), 0.1), kfopt::ShapeError);
  CHECK_THROWS_AS(warm.compute(rng.spd<double>(7), 0.1), kfopt::ShapeError);
  Mat<double> asym = A;
  asym(0, 1) += 1.0;
  CHECK_THROWS_AS(warm.compute(asym, 0.1), kfopt::InvalidInputError);
  CHECK(warm.inverse() == inv);

  // reset() forgets; a new size is then accepted.
  warm.reset();
  CHECK_FALSE(warm.has_result());
  REQUIRE(warm.compute(rng.spd<double>(7), 0.1).info() == kfopt::Status::Success);
}

TEST_CASE("warm start: options are validated and the state round-trips",
          "[kron][warm_start][errors]") {
  kfopt::WarmStartOptions<double> options;
  options.tolerance = 0.0;
  CHECK_THROWS_AS(kfopt::WarmStartedDampedInverse<double>(options), kfopt::HyperparameterError);
  options = {};
  options.max_initial_residual = 1.0;
  CHECK_THROWS_AS(kfopt::WarmStartedDampedInverse<double>(options), kfopt::HyperparameterError);
  options = {};
  options.max_iterations = -1;
  CHECK_THROWS_AS(kfopt::WarmStartedDampedInverse<double>(options), kfopt::HyperparameterError);
  options = {};
  options.norm_iterations = 0;
  CHECK_THROWS_AS(kfopt::WarmStartedDampedInverse<double>(options), kfopt::HyperparameterError);
  options = {};
  options.iteration_cost = -0.5;
  CHECK_THROWS_AS(kfopt::WarmStartedDampedInverse<double>(options), kfopt::HyperparameterError);
  options.iteration_cost = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(kfopt::WarmStartedDampedInverse<double>(options), kfopt::HyperparameterError);

  Rng rng(88);
  const Mat<double> A = rng.spd<double>(12);
  kfopt::WarmStartedDampedInverse<double> warm;
  REQUIRE(warm.compute(A, 0.2).info() == kfopt::Status::Success);
  const auto saved = warm.state();
  kfopt::WarmStartedDampedInverse<double> restored;
  restored.set_state(saved);
  CHECK(restored.inverse() == warm.inverse());
  CHECK(restored.damping() == 0.2);
  REQUIRE(restored.compute(A, 0.2).info() == kfopt::Status::Success);
  CHECK_FALSE(restored.last_fell_back());

  // A corrupted checkpoint is refused and the restored state is kept.
  const Mat<double> kept = restored.inverse();
  auto corrupted = saved;
  corrupted.inverse(3, 4) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(restored.set_state(corrupted), kfopt::InvalidInputError);
  corrupted = saved;
  corrupted.damping = -0.1;
  CHECK_THROWS_AS(restored.set_state(corrupted), kfopt::InvalidInputError);
  corrupted.damping = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(restored.set_state(corrupted), kfopt::InvalidInputError);
  CHECK(restored.inverse() == kept);
  CHECK(restored.damping() == 0.2);
}
