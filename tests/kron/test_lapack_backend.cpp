// The decomposition backends of SymmetricEigenCache and DampedCholeskyInverse.
//
// Always: the Eigen backend's recursive blocked triangular kernels (Cholesky inverse) against
// a dense inverse at sizes that exercise the recursion. With KFOPT_USE_LAPACK (CMake option
// KFOPT_WITH_LAPACK=ON, which defines it on kfopt::kfopt): the LAPACK backend (syevd,
// potrf + potri) against the Eigen backend in the same binary — same results to 1e-10 in
// double — and the same public behaviour (clipping, status, previous result kept).
#include <catch2/catch.hpp>
#include <kfopt/kron/damped_cholesky_inverse.hpp>
#include <kfopt/kron/lapack_backend.hpp>
#include <kfopt/kron/symmetric_eigen_cache.hpp>

#include <cmath>
#include <limits>

#include "support/dense_reference.hpp"

using namespace kfopt_test;
using kfopt::DecompositionBackend;

namespace {

template <typename Scalar>
Mat<Scalar> damped(const Mat<Scalar>& A, double lambda) {
  Mat<Scalar> B = A;
  B.diagonal().array() += static_cast<Scalar>(lambda);
  return B;
}

#ifdef KFOPT_USE_LAPACK
// Q diag(d) Qᵀ in double for a random orthogonal Q.
Mat<double> with_spectrum(Rng& rng, const Vec<double>& d) {
  const Mat<double> Q =
      Eigen::HouseholderQR<Mat<double>>(rng.normal<double>(d.size(), d.size())).householderQ();
  const Mat<double> S = Q * d.asDiagonal() * Q.transpose();
  return 0.5 * (S + S.transpose());
}
#endif

// ‖a − b‖_max / max(1, ‖b‖_max): the entry-wise agreement the backends promise.
template <typename A, typename B>
double max_relative(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const double scale = std::max(1.0, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

}  // namespace

TEMPLATE_TEST_CASE("Eigen backend: blocked Cholesky inverse equals the dense inverse",
                   "[kron][cholesky][backend]", float, double) {
  Rng rng(71);
  // 47..49 straddle the unblocked size, 97 and 300 recurse once and several times, 260
  // splits unevenly (multiples of 16).
  for (int n : {47, 48, 49, 97, 260, 300}) {
    const Mat<TestType> A = rng.spd<TestType>(n, 0.5, 4.0);
    kfopt::DampedCholeskyInverse<TestType, DecompositionBackend::Eigen> chol(n);
    REQUIRE(chol.compute(A, TestType(0.1)).info() == kfopt::Status::Success);
    const Mat<TestType> expected = dense_inverse<TestType>(damped(A, 0.1));
    // solve() by triangular solves before the explicit inverse exists, by one product after
    // (inverse() forms it in place of the factor).
    const Mat<TestType> X0 = rng.normal<TestType>(n, 2);
    Mat<TestType> out0;
    chol.solve(X0, out0);
    CHECK(relative_error(out0, Mat<TestType>(expected * X0)) <= 10 * Tolerance<TestType>::dense);
    CHECK(relative_error(chol.inverse(), expected) <= 10 * Tolerance<TestType>::dense);
    CHECK((chol.inverse() - chol.inverse().transpose()).norm() == 0);
    const Mat<TestType> X = rng.normal<TestType>(n, 3);
    Mat<TestType> out;
    chol.solve(X, out);
    CHECK(relative_error(out, Mat<TestType>(expected * X)) <= 10 * Tolerance<TestType>::dense);
  }
}

TEST_CASE("Eigen backend: a large indefinite matrix is refused, the previous result kept",
          "[kron][cholesky][backend][errors]") {
  Rng rng(78);
  const int n = 300;  // recursive factorization (blocks of ≤ 128 at the leaves)
  const Mat<double> A = rng.spd<double>(n, 0.5, 4.0);
  kfopt::DampedCholeskyInverse<double, DecompositionBackend::Eigen> chol(n);
  REQUIRE(chol.compute(A, 0.0).info() == kfopt::Status::Success);
  const Mat<double> inv = chol.inverse();
  // Indefinite only in the last coordinate: the failure appears in the last leaf block.
  Mat<double> B = A;
  B(n - 1, n - 1) = -100.0;
  CHECK(chol.compute(B, 0.0).info() == kfopt::Status::NumericalIssue);
  CHECK(chol.inverse() == inv);
  // And in the first leaf block.
  Mat<double> C = A;
  C(0, 0) = -1.0;
  CHECK(chol.compute(C, 0.0).info() == kfopt::Status::NumericalIssue);
  CHECK(chol.inverse() == inv);
}

TEST_CASE("Eigen backend: triangular kernels leave the strictly upper triangle alone",
          "[kron][cholesky][backend]") {
  Rng rng(72);
  const Eigen::Index n = 130;
  // Off-diagonal entries of size 1/√n keep the triangular factor well conditioned.
  Mat<double> L = rng.normal<double>(n, n) / std::sqrt(static_cast<double>(n));
  L.diagonal().array() = L.diagonal().array().abs() + 1.0;
  Mat<double> T = L;
  Mat<double> work;
  kfopt::detail::invert_lower_triangular_inplace<Mat<double>>(T, work);
  const Mat<double> lower_L = L.triangularView<Eigen::Lower>();
  const Mat<double> lower_T = T.triangularView<Eigen::Lower>();
  CHECK(max_relative(Mat<double>(lower_T * lower_L), Mat<double>::Identity(n, n)) <= 1e-12);
  CHECK(Mat<double>(T.triangularView<Eigen::StrictlyUpper>()) ==
        Mat<double>(L.triangularView<Eigen::StrictlyUpper>()));
  Mat<double> G = T;
  kfopt::detail::lower_gram_inplace<Mat<double>>(G, work);
  const Mat<double> expected = lower_T.transpose() * lower_T;
  CHECK(max_relative(Mat<double>(G.triangularView<Eigen::Lower>()),
                     Mat<double>(expected.triangularView<Eigen::Lower>())) <= 1e-12);
  CHECK(Mat<double>(G.triangularView<Eigen::StrictlyUpper>()) ==
        Mat<double>(L.triangularView<Eigen::StrictlyUpper>()));
}

#ifdef KFOPT_USE_LAPACK

TEST_CASE("LAPACK backend is the default for float and double when enabled",
          "[kron][backend][lapack]") {
  STATIC_REQUIRE(kfopt::kLapackBackendAvailable);
  STATIC_REQUIRE(kfopt::kDefaultDecompositionBackend<double> == DecompositionBackend::Lapack);
  STATIC_REQUIRE(kfopt::kDefaultDecompositionBackend<float> == DecompositionBackend::Lapack);
  STATIC_REQUIRE(kfopt::kDefaultDecompositionBackend<long double> ==
                 DecompositionBackend::Eigen);
  // long double still works through Eigen.
  kfopt::SymmetricEigenCache<long double> cache;
  REQUIRE(cache.compute(Mat<long double>::Identity(3, 3)).info() == kfopt::Status::Success);
}

TEST_CASE("LAPACK and Eigen eigen caches agree to 1e-10", "[kron][eigen][backend][lapack]") {
  Rng rng(73);
  for (int n : {1, 2, 7, 64, 200}) {
    // Well separated eigenvalues in [0.5, 50], so that eigenvectors are unique up to sign.
    Vec<double> d(n);
    for (int i = 0; i < n; ++i) d(i) = 0.5 + 49.5 * (i + 0.5 * rng.uniform(0, 1)) / n;
    const Mat<double> A = with_spectrum(rng, d);
    kfopt::SymmetricEigenCache<double, DecompositionBackend::Eigen> eigen(n);
    kfopt::SymmetricEigenCache<double, DecompositionBackend::Lapack> lapack(n);
    REQUIRE(eigen.compute(A).info() == kfopt::Status::Success);
    REQUIRE(lapack.compute(A).info() == kfopt::Status::Success);
    CHECK(max_relative(lapack.eigenvalues(), eigen.eigenvalues()) <= 1e-10);
    // Eigenvectors up to the sign of each column.
    Mat<double> U = lapack.eigenvectors();
    for (int j = 0; j < n; ++j) {
      if (U.col(j).dot(eigen.eigenvectors().col(j)) < 0) U.col(j) *= -1.0;
    }
    CHECK(max_relative(U, eigen.eigenvectors()) <= 1e-10);
    for (double lambda : {0.0, 1e-3, 2.0}) {
      CHECK(max_relative(lapack.damped_inverse(lambda), eigen.damped_inverse(lambda)) <= 1e-10);
      CHECK(max_relative(lapack.inverse_sqrt(lambda), eigen.inverse_sqrt(lambda)) <= 1e-10);
      CHECK(max_relative(lapack.damped_inverse(lambda),
                         dense_inverse<double>(damped(A, lambda))) <= 1e-10);
    }
    const Mat<double> X = rng.normal<double>(n, 5);
    Mat<double> out_l, out_e;
    REQUIRE(lapack.apply_damped_inverse(0.1, X, out_l) == kfopt::Status::Success);
    REQUIRE(eigen.apply_damped_inverse(0.1, X, out_e) == kfopt::Status::Success);
    CHECK(max_relative(out_l, out_e) <= 1e-10);
  }
}

TEST_CASE("LAPACK eigen cache: clipping, status and the previous result as with Eigen",
          "[kron][eigen][backend][lapack][errors]") {
  Rng rng(74);
  Vec<double> d(5);
  d << -1e-9, -1e-12, 0.5, 1.0, 3.0;  // rounding-sized negative eigenvalues
  const Mat<double> A = with_spectrum(rng, d);
  kfopt::SymmetricEigenCache<double, DecompositionBackend::Eigen> eigen;
  kfopt::SymmetricEigenCache<double, DecompositionBackend::Lapack> lapack;
  REQUIRE(eigen.compute(A).info() == kfopt::Status::Success);
  REQUIRE(lapack.compute(A).info() == kfopt::Status::Success);
  CHECK(lapack.clipped_count() == eigen.clipped_count());
  CHECK(lapack.clipped_count() == 2);
  CHECK(lapack.eigenvalues().minCoeff() == 0.0);
  CHECK(std::abs(lapack.min_eigenvalue_before_clipping() - eigen.min_eigenvalue_before_clipping()) <=
        1e-12);
  CHECK(std::abs(lapack.trace() - eigen.trace()) <= 1e-12);

  // A non-finite matrix keeps the previous decomposition; wrong use throws.
  const Mat<double> kept = lapack.eigenvectors();
  Mat<double> bad = A;
  bad(1, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK(lapack.compute(bad).info() == kfopt::Status::NonFiniteInput);
  CHECK(lapack.has_result());
  CHECK(lapack.eigenvectors() == kept);
  Mat<double> asym = A;
  asym(0, 1) += 1.0;
  CHECK_THROWS_AS(lapack.compute(asym), kfopt::InvalidInputError);
  CHECK_THROWS_AS(lapack.compute(Mat<double>::Ones(2, 3)), kfopt::ShapeError);
  CHECK(lapack.eigenvectors() == kept);

  // A cache without preallocation computes the same size repeatedly (its result storage is
  // swapped with the solver's, which must then be sized again).
  kfopt::SymmetricEigenCache<double, DecompositionBackend::Lapack> fresh;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(fresh.compute(A).info() == kfopt::Status::Success);
    CHECK(max_relative(fresh.eigenvalues(), eigen.eigenvalues()) <= 1e-10);
  }

  // Sizes may change between computes (the workspace is queried again).
  const Mat<double> small = rng.spd<double>(3);
  REQUIRE(lapack.compute(small).info() == kfopt::Status::Success);
  CHECK(lapack.size() == 3);
  REQUIRE(lapack.compute(A).info() == kfopt::Status::Success);
  CHECK(lapack.size() == 5);
}

TEST_CASE("LAPACK and Eigen Cholesky inverses agree to 1e-10",
          "[kron][cholesky][backend][lapack]") {
  Rng rng(75);
  for (int n : {1, 3, 49, 130, 300}) {
    const Mat<double> A = rng.spd<double>(n, 0.1, 10.0);
    kfopt::DampedCholeskyInverse<double, DecompositionBackend::Eigen> eigen(n);
    kfopt::DampedCholeskyInverse<double, DecompositionBackend::Lapack> lapack(n);
    for (double lambda : {0.0, 0.05, 3.0}) {
      REQUIRE(eigen.compute(A, lambda).info() == kfopt::Status::Success);
      REQUIRE(lapack.compute(A, lambda).info() == kfopt::Status::Success);
      CHECK(max_relative(lapack.inverse(), eigen.inverse()) <= 1e-10);
      CHECK((lapack.inverse() - lapack.inverse().transpose()).norm() == 0);
      CHECK(max_relative(lapack.inverse(), dense_inverse<double>(damped(A, lambda))) <= 1e-10);
      const Mat<double> X = rng.normal<double>(n, 4);
      Mat<double> out_l, out_e;
      lapack.solve(X, out_l);
      eigen.solve(X, out_e);
      CHECK(max_relative(out_l, out_e) <= 1e-10);
    }
  }
}

TEST_CASE("LAPACK Cholesky inverse: status and the previous factorization as with Eigen",
          "[kron][cholesky][backend][lapack][errors]") {
  Rng rng(76);
  const Mat<double> A = rng.spd<double>(4);
  kfopt::DampedCholeskyInverse<double, DecompositionBackend::Lapack> chol;
  CHECK_THROWS_AS(chol.inverse(), kfopt::NumericalError);
  REQUIRE(chol.compute(A, 0.5).info() == kfopt::Status::Success);
  const Mat<double> inv = chol.inverse();
  Vec<double> d(4);
  d << -1.0, 1.0, 2.0, 3.0;
  CHECK(chol.compute(with_spectrum(rng, d), 0.0).info() == kfopt::Status::NumericalIssue);
  CHECK(chol.inverse() == inv);
  CHECK(chol.damping() == 0.5);
  Mat<double> bad = A;
  bad(2, 2) = std::numeric_limits<double>::infinity();
  CHECK(chol.compute(bad, 0.1).info() == kfopt::Status::NonFiniteInput);
  CHECK(chol.inverse() == inv);
  CHECK_THROWS_AS(chol.compute(A, -0.1), kfopt::InvalidInputError);
  CHECK_THROWS_AS(chol.compute(Mat<double>::Ones(2, 3), 0.1), kfopt::ShapeError);
}

TEST_CASE("LAPACK backend in float agrees with Eigen to float precision",
          "[kron][backend][lapack]") {
  Rng rng(77);
  const int n = 60;
  const Mat<float> A = rng.spd<float>(n, 0.5, 4.0);
  kfopt::SymmetricEigenCache<float, DecompositionBackend::Eigen> eigen(n);
  kfopt::SymmetricEigenCache<float, DecompositionBackend::Lapack> lapack(n);
  REQUIRE(eigen.compute(A).info() == kfopt::Status::Success);
  REQUIRE(lapack.compute(A).info() == kfopt::Status::Success);
  CHECK(max_relative(lapack.eigenvalues(), eigen.eigenvalues()) <= 1e-5);
  CHECK(max_relative(lapack.damped_inverse(0.1f), eigen.damped_inverse(0.1f)) <= 1e-4);
  kfopt::DampedCholeskyInverse<float, DecompositionBackend::Eigen> ce(n);
  kfopt::DampedCholeskyInverse<float, DecompositionBackend::Lapack> cl(n);
  REQUIRE(ce.compute(A, 0.1f).info() == kfopt::Status::Success);
  REQUIRE(cl.compute(A, 0.1f).info() == kfopt::Status::Success);
  CHECK(max_relative(cl.inverse(), ce.inverse()) <= 1e-4);
}

#endif  // KFOPT_USE_LAPACK
