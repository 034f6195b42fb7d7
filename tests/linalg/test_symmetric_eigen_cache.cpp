// SymmetricEigenCache and DampedCholeskyInverse against explicit dense inverses (full-pivot
// LU in double), the defining property of the SPD inverse square root, and their error
// channels.
#include <catch2/catch.hpp>
#include <kfopt/linalg/damped_cholesky_inverse.hpp>
#include <kfopt/linalg/symmetric_eigen_cache.hpp>

#include <cmath>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

template <typename Scalar>
Mat<Scalar> damped(const Mat<Scalar>& A, double lambda) {
  Mat<Scalar> B = A;
  B.diagonal().array() += static_cast<Scalar>(lambda);
  return B;
}

// Q diag(d) Qᵀ for a fixed random orthogonal Q, built in double.
Mat<double> with_spectrum(Rng& rng, const Vec<double>& d) {
  const Mat<double> Q =
      Eigen::HouseholderQR<Mat<double>>(rng.normal<double>(d.size(), d.size())).householderQ();
  Mat<double> S = Q * d.asDiagonal() * Q.transpose();
  return 0.5 * (S + S.transpose());
}

}  // namespace

TEMPLATE_TEST_CASE("eigen cache: damped inverse for any lambda equals the dense inverse",
                   "[kron][eigen]", float, double) {
  Rng rng(11);
  for (int n = 1; n <= 7; ++n) {
    const Mat<TestType> A = rng.spd<TestType>(n, 0.5, 4.0);
    kfopt::SymmetricEigenCache<TestType> cache(n);
    REQUIRE(cache.compute(A).info() == kfopt::Status::Success);
    for (double lambda : {0.0, 1e-3, 0.1, 2.0, 50.0}) {
      const Mat<TestType> expected = dense_inverse<TestType>(damped(A, lambda));
      CHECK(relative_error(cache.damped_inverse(static_cast<TestType>(lambda)), expected) <=
            Tolerance<TestType>::dense);
      const Mat<TestType> X = rng.normal<TestType>(n, 3);
      Mat<TestType> out;
      REQUIRE(cache.apply_damped_inverse(static_cast<TestType>(lambda), X, out) ==
              kfopt::Status::Success);
      CHECK(relative_error(out, Mat<TestType>(expected * X)) <= Tolerance<TestType>::dense);
      const Mat<TestType> Y = rng.normal<TestType>(2, n);
      REQUIRE(cache.apply_damped_inverse(static_cast<TestType>(lambda), Y, out,
                                         kfopt::Side::Right) == kfopt::Status::Success);
      CHECK(relative_error(out, Mat<TestType>(Y * expected)) <= Tolerance<TestType>::dense);
    }
  }
}

TEST_CASE("eigen cache: from n = 256 (kfopt's blocked eigensolver) the damped inverse equals "
          "the dense inverse", "[kron][eigen]") {
  // The Eigen backend switches solvers at n = 256; this exercises the large-n path through
  // the cache (the solver itself is tested in test_symmetric_eigensolver.cpp).
  Rng rng(12);
  const int n = 257;
  const Mat<double> A = rng.spd<double>(n, 0.5, 4.0);
  kfopt::SymmetricEigenCache<double, kfopt::DecompositionBackend::Eigen> cache(n);
  REQUIRE(cache.compute(A).info() == kfopt::Status::Success);
  for (double lambda : {1e-3, 1.0}) {
    CHECK(relative_error(cache.damped_inverse(lambda), dense_inverse<double>(damped(A, lambda))) <=
          1e-10);
  }
}

TEMPLATE_TEST_CASE("eigen cache: inverse square root is the SPD root of the damped inverse",
                   "[kron][eigen]", float, double) {
  Rng rng(12);
  for (int n = 1; n <= 6; ++n) {
    const Mat<TestType> A = rng.spd<TestType>(n, 0.3, 3.0);
    kfopt::SymmetricEigenCache<TestType> cache;
    cache.compute(A);
    for (double lambda : {0.0, 0.25}) {
      const Mat<TestType> S = cache.inverse_sqrt(static_cast<TestType>(lambda));
      // The SPD square root is unique: symmetric, positive definite and S² = (A + λI)⁻¹.
      CHECK((S - S.transpose()).norm() == 0);
      CHECK(Eigen::LLT<Mat<TestType>>(S).info() == Eigen::Success);
      const Mat<TestType> expected = dense_inverse<TestType>(damped(A, lambda));
      CHECK(relative_error(Mat<TestType>(S * S), expected) <= Tolerance<TestType>::dense);
      // apply_inverse_sqrt from both sides agrees with the dense root.
      const Mat<TestType> X = rng.normal<TestType>(n, 2);
      Mat<TestType> out;
      REQUIRE(cache.apply_inverse_sqrt(static_cast<TestType>(lambda), X, out) ==
              kfopt::Status::Success);
      CHECK(relative_error(out, Mat<TestType>(S * X)) <= Tolerance<TestType>::dense);
      // And the square root squares back to A + λI.
      const Mat<TestType> R = cache.sqrt(static_cast<TestType>(lambda));
      CHECK(relative_error(Mat<TestType>(R * R), damped(A, lambda)) <= Tolerance<TestType>::dense);
    }
  }
}

TEST_CASE("eigen cache: negative eigenvalues are clipped at zero and counted", "[kron][eigen]") {
  Rng rng(13);
  Vec<double> d(4);
  d << -1e-3, 0.5, 1.5, 3.0;
  const Mat<double> A = with_spectrum(rng, d);
  kfopt::SymmetricEigenCache<double> cache;
  REQUIRE(cache.compute(A).info() == kfopt::Status::Success);
  CHECK(cache.clipped_count() == 1);
  CHECK(cache.min_eigenvalue_before_clipping() == Approx(-1e-3).epsilon(1e-8));
  CHECK(cache.eigenvalues().minCoeff() == 0.0);
  // The damped inverse is that of the PSD part: Q diag(0, .5, 1.5, 3) Qᵀ + λI.
  Vec<double> clipped = d;
  clipped(0) = 0.0;
  Rng same(13);
  const Mat<double> psd_part = with_spectrum(same, clipped);
  const double lambda = 0.01;
  CHECK(relative_error(cache.damped_inverse(lambda), dense_inverse<double>(damped(psd_part, lambda))) <=
        1e-10);
  CHECK(cache.trace() == Approx(5.0).epsilon(1e-12));
}

TEST_CASE("eigen cache: a singular factor with zero damping reports instead of dividing by 0",
          "[kron][eigen][errors]") {
  Rng rng(14);
  Vec<double> d(3);
  d << 0.0, 1.0, 2.0;
  const Mat<double> A = with_spectrum(rng, d);
  kfopt::SymmetricEigenCache<double> cache;
  cache.compute(A);
  Mat<double> out = Mat<double>::Constant(3, 2, 7.0);
  const Mat<double> before = out;
  CHECK(cache.apply_damped_inverse(0.0, Mat<double>::Ones(3, 2), out) ==
        kfopt::Status::NumericalIssue);
  CHECK(cache.apply_inverse_sqrt(0.0, Mat<double>::Ones(3, 2), out) ==
        kfopt::Status::NumericalIssue);
  CHECK(out == before);
  CHECK_THROWS_AS(cache.damped_inverse(0.0), kfopt::NumericalError);
  CHECK_FALSE(cache.is_invertible(0.0));
  CHECK(cache.is_invertible(1e-6));
  CHECK(cache.damped_inverse(1e-6).allFinite());
}

TEST_CASE("eigen cache: wrong input throws, non-finite input keeps the previous result",
          "[kron][eigen][errors]") {
  Rng rng(15);
  kfopt::SymmetricEigenCache<double> cache;
  CHECK_THROWS_AS(cache.eigenvalues(), kfopt::NumericalError);  // nothing computed yet
  CHECK(cache.info() == kfopt::Status::NotComputed);
  const Mat<double> A = rng.spd<double>(3);
  cache.compute(A);
  const Vec<double> ev = cache.eigenvalues();
  const Mat<double> U = cache.eigenvectors();

  CHECK_THROWS_AS(cache.compute(Mat<double>::Ones(3, 4)), kfopt::ShapeError);
  Mat<double> nonsym = A;
  nonsym(0, 2) += 0.5;
  CHECK_THROWS_AS(cache.compute(nonsym), kfopt::InvalidInputError);
  Mat<double> nan = A;
  nan(1, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK(cache.compute(nan).info() == kfopt::Status::NonFiniteInput);
  CHECK(cache.eigenvalues() == ev);
  CHECK(cache.eigenvectors() == U);
  Mat<double> out;
  CHECK_THROWS_AS((void)cache.apply_damped_inverse(-1.0, Mat<double>::Ones(3, 1), out),
                  kfopt::InvalidInputError);
  try {
    (void)cache.apply_damped_inverse(0.1, Mat<double>::Ones(4, 1), out);
    FAIL("expected ShapeError");
  } catch (const kfopt::ShapeError& e) {
    CHECK(std::string(e.what()).find("4x1") != std::string::npos);
    CHECK(std::string(e.what()).find("3x3") != std::string::npos);
  }
}

TEMPLATE_TEST_CASE("damped Cholesky: inverse and solve equal the dense inverse",
                   "[kron][cholesky]", float, double) {
  Rng rng(16);
  for (int n = 1; n <= 7; ++n) {
    const Mat<TestType> A = rng.spd<TestType>(n, 0.5, 4.0);
    kfopt::DampedCholeskyInverse<TestType> chol(n);
    for (double lambda : {0.0, 0.1, 3.0}) {
      REQUIRE(chol.compute(A, static_cast<TestType>(lambda)).info() == kfopt::Status::Success);
      const Mat<TestType> expected = dense_inverse<TestType>(damped(A, lambda));
      CHECK(relative_error(chol.inverse(), expected) <= Tolerance<TestType>::dense);
      CHECK((chol.inverse() - chol.inverse().transpose()).norm() == 0);
      const Mat<TestType> X = rng.normal<TestType>(n, 4);
      Mat<TestType> out;
      chol.solve(X, out);
      CHECK(relative_error(out, Mat<TestType>(expected * X)) <= Tolerance<TestType>::dense);
    }
  }
}

TEST_CASE("damped Cholesky: an indefinite matrix reports and keeps the previous factorization",
          "[kron][cholesky][errors]") {
  Rng rng(17);
  const Mat<double> A = rng.spd<double>(4);
  kfopt::DampedCholeskyInverse<double> chol;
  CHECK_THROWS_AS(chol.inverse(), kfopt::NumericalError);
  chol.compute(A, 0.5);
  const Mat<double> inv = chol.inverse();
  Vec<double> d(4);
  d << -1.0, 1.0, 2.0, 3.0;
  const Mat<double> indefinite = with_spectrum(rng, d);
  CHECK(chol.compute(indefinite, 0.0).info() == kfopt::Status::NumericalIssue);
  CHECK(chol.inverse() == inv);
  CHECK(chol.damping() == 0.5);
  CHECK_THROWS_AS(chol.compute(A, -0.1), kfopt::InvalidInputError);
  CHECK_THROWS_AS(chol.compute(Mat<double>::Ones(2, 3), 0.1), kfopt::ShapeError);
  Mat<double> out;
  CHECK_THROWS_AS(chol.solve(Mat<double>::Ones(3, 1), out), kfopt::ShapeError);
}

TEST_CASE("invertibility is relative to the spectrum: a uniformly tiny factor is invertible",
          "[kron][eigen][damping]") {
  // The G factor of a saturated gate can be ~1e-8 everywhere. (cA)⁻¹ = A⁻¹/c, so scaling a
  // well-conditioned factor down must not make it "singular", in float as in double.
  Rng rng(31);
  Vec<double> d(4);
  d << 1e-9, 2e-9, 5e-9, 1e-8;
  const Mat<double> A = with_spectrum(rng, d);
  kfopt::SymmetricEigenCache<float> cache;
  cache.compute(A.cast<float>());
  REQUIRE(cache.info() == kfopt::Status::Success);
  CHECK(cache.is_invertible(0.0f));
  const Mat<double> dense = (A + 1e-9 * Mat<double>::Identity(4, 4)).inverse();
  const Mat<double> got = cache.damped_inverse(1e-9f).cast<double>();
  CHECK((got - dense).norm() <= 1e-3 * dense.norm());

  // Still singular: a zero eigenvalue, or a condition number beyond 1/singular_tolerance.
  Vec<double> z(3);
  z << 0.0, 1e-9, 2e-9;
  kfopt::SymmetricEigenCache<float> singular;
  singular.compute(with_spectrum(rng, z).cast<float>());
  CHECK_FALSE(singular.is_invertible(0.0f));
  CHECK(kfopt::ScalarTraits<float>::invertible_spectrum(1e-9f, 1e-8f));
  CHECK_FALSE(kfopt::ScalarTraits<float>::invertible_spectrum(1e-12f, 1e-3f));
  CHECK_FALSE(kfopt::ScalarTraits<double>::invertible_spectrum(0.0, 1.0));
  CHECK_FALSE(kfopt::ScalarTraits<double>::invertible_spectrum(std::nan(""), 1.0));
}
