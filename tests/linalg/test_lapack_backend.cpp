// The decomposition backends of SymmetricEigenCache and DampedCholeskyInverse.
//
// Always: the Eigen backend's recursive blocked triangular kernels (Cholesky inverse) against
// a dense inverse at sizes that exercise the recursion. With KFOPT_USE_LAPACK (CMake option
// KFOPT_WITH_LAPACK=ON, which defines it on kfopt::kfopt): the LAPACK backend (syevd,
// potrf + potri) against the Eigen backend in the same binary — same results to 1e-10 in
// double — and the same public behaviour (clipping, status, previous result kept).
#include <catch2/catch.hpp>
#include <kfopt/linalg/damped_cholesky_inverse.hpp>
#include <kfopt/linalg/lapack_backend.hpp>
#include <kfopt/linalg/symmetric_eigen_cache.hpp>

#include <cmath>
#include <limits>
#include <type_traits>

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

// The one-pass symmetry scan behind every decomposition's input check: the same decisions
// as core's check_symmetric_factor (finite / symmetric to tolerance) at sizes that are and
// are not multiples of its tile, a NaN or Inf anywhere found, huge finite entries not
// mistaken for Inf, and the fused copy of the lower triangle exact (strict upper untouched).
TEMPLATE_TEST_CASE("symmetry scan: decisions of check_symmetric_factor, fused lower copy",
                   "[kron][backend][validate]", float, double) {
  using kfopt::detail::check_symmetric_factor_tiled;
  Rng rng(79);
  const char* op = "test";
  for (Eigen::Index n : {1, 2, 15, 16, 17, 33, 50, 130}) {
    const Mat<TestType> A = rng.spd<TestType>(n, 0.5, 4.0);
    Mat<TestType> copy = Mat<TestType>::Constant(n, n, TestType(7));
    REQUIRE(check_symmetric_factor_tiled(op, "A", A, &copy) == kfopt::Status::Success);
    CHECK(Mat<TestType>(copy.template triangularView<Eigen::Lower>()) ==
          Mat<TestType>(A.template triangularView<Eigen::Lower>()));
    CHECK(Mat<TestType>(copy.template triangularView<Eigen::StrictlyUpper>()) ==
          Mat<TestType>(Mat<TestType>::Constant(n, n, TestType(7))
                            .template triangularView<Eigen::StrictlyUpper>()));
    // Non-finite entries in the lower, upper, diagonal and last positions.
    const Eigen::Index positions[4][2] = {{n - 1, 0}, {0, n - 1}, {n / 2, n / 2}, {n - 1, n - 1}};
    for (const auto& pos : positions) {
      for (TestType bad : {std::numeric_limits<TestType>::quiet_NaN(),
                           std::numeric_limits<TestType>::infinity(),
                           -std::numeric_limits<TestType>::infinity()}) {
        Mat<TestType> B = A;
        B(pos[0], pos[1]) = bad;
        CHECK(check_symmetric_factor_tiled(op, "A", B) == kfopt::Status::NonFiniteInput);
        CHECK(kfopt::detail::check_symmetric_factor(op, "A", B) ==
              kfopt::Status::NonFiniteInput);
      }
    }
    // Huge but finite entries are finite (and symmetric).
    const Mat<TestType> H = A * (std::numeric_limits<TestType>::max() / TestType(8));
    CHECK(check_symmetric_factor_tiled(op, "A", H) == kfopt::Status::Success);
    if (n < 2) continue;
    // Asymmetry: just inside the tolerance passes, well outside throws — as the core check.
    const TestType tol = kfopt::ScalarTraits<TestType>::symmetry_tolerance() *
                         std::max(TestType(1), A.cwiseAbs().maxCoeff());
    Mat<TestType> near = A;
    near(n - 1, 0) += TestType(0.5) * tol;
    CHECK(check_symmetric_factor_tiled(op, "A", near) == kfopt::Status::Success);
    CHECK(kfopt::detail::check_symmetric_factor(op, "A", near) == kfopt::Status::Success);
    Mat<TestType> far = A;
    far(n - 1, 0) += TestType(4) * tol;
    CHECK_THROWS_AS(check_symmetric_factor_tiled(op, "A", far), kfopt::InvalidInputError);
    CHECK_THROWS_AS(kfopt::detail::check_symmetric_factor(op, "A", far),
                    kfopt::InvalidInputError);
  }
  CHECK_THROWS_AS(check_symmetric_factor_tiled(op, "A", Mat<TestType>::Ones(2, 3)),
                  kfopt::ShapeError);
  // The mirror copies the strict lower triangle onto the upper one, nothing else.
  for (Eigen::Index n : {1, 15, 17, 50}) {
    const Mat<TestType> R = rng.normal<TestType>(n, n);
    Mat<TestType> M = R;
    kfopt::detail::mirror_lower_to_upper(M);
    const Mat<TestType> lower = R.template triangularView<Eigen::Lower>();
    const Mat<TestType> strict = R.template triangularView<Eigen::StrictlyLower>();
    CHECK(M == Mat<TestType>(lower + strict.transpose()));
  }
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

// The LAPACK backend inverts the potrf factor with kfopt's recursive kernels whose products
// are BLAS trmm / syrk: checked on a block inside a larger matrix (leading dimension ≠ n) at
// sizes that recurse, against explicit products, with everything outside the block's lower
// triangle untouched.
TEMPLATE_TEST_CASE("LAPACK backend: BLAS-product triangular kernels on a strided block",
                   "[kron][cholesky][backend][lapack]", float, double) {
  Rng rng(80);
  for (Eigen::Index n : {49, 130, 300}) {
    Mat<TestType> L = rng.normal<TestType>(n, n) / std::sqrt(static_cast<TestType>(n));
    L.diagonal().array() = L.diagonal().array().abs() + TestType(1);
    const Mat<TestType> big0 = rng.normal<TestType>(n + 5, n + 3);
    Mat<TestType> big = big0;
    big.block(3, 2, n, n) = L;
    Mat<TestType> work;
    kfopt::detail::invert_lower_triangular_inplace<Mat<TestType>, DecompositionBackend::Lapack>(
        big.block(3, 2, n, n), work);
    const Mat<TestType> lower_L = L.template triangularView<Eigen::Lower>();
    const Mat<TestType> X = big.block(3, 2, n, n).template triangularView<Eigen::Lower>();
    const double tol = sizeof(TestType) == 4 ? 1e-4 : 1e-12;
    CHECK(max_relative(Mat<TestType>(X * lower_L), Mat<TestType>::Identity(n, n)) <= tol);
    kfopt::detail::lower_gram_inplace<Mat<TestType>, DecompositionBackend::Lapack>(
        big.block(3, 2, n, n), work);
    const Mat<TestType> expected = X.transpose() * X;
    CHECK(max_relative(Mat<TestType>(big.block(3, 2, n, n).template triangularView<Eigen::Lower>()),
                       Mat<TestType>(expected.template triangularView<Eigen::Lower>())) <= tol);
    // Untouched: the strict upper triangle of the block and everything around it.
    Mat<TestType> outside = big, outside0 = big0;
    outside0.block(3, 2, n, n) = L;
    outside.block(3, 2, n, n).template triangularView<Eigen::Lower>().setZero();
    outside0.block(3, 2, n, n).template triangularView<Eigen::Lower>().setZero();
    CHECK(outside == outside0);
  }
}

// The LAPACK backend's explicit inverse against a dense inverse in float and double at sizes
// that straddle the kernels' leaf and recurse unevenly, solve() before and after it.
TEMPLATE_TEST_CASE("LAPACK backend: Cholesky inverse equals the dense inverse",
                   "[kron][cholesky][backend][lapack]", float, double) {
  Rng rng(81);
  for (int n : {1, 47, 48, 49, 97, 260, 300}) {
    const Mat<TestType> A = rng.spd<TestType>(n, 0.5, 4.0);
    kfopt::DampedCholeskyInverse<TestType, DecompositionBackend::Lapack> chol(n);
    REQUIRE(chol.compute(A, TestType(0.1)).info() == kfopt::Status::Success);
    const Mat<TestType> expected = dense_inverse<TestType>(damped(A, 0.1));
    const Mat<TestType> X = rng.normal<TestType>(n, 2);
    Mat<TestType> out;
    chol.solve(X, out);
    CHECK(relative_error(out, Mat<TestType>(expected * X)) <= 10 * Tolerance<TestType>::dense);
    CHECK(relative_error(chol.inverse(), expected) <= 10 * Tolerance<TestType>::dense);
    CHECK((chol.inverse() - chol.inverse().transpose()).norm() == 0);
    chol.solve(X, out);
    CHECK(relative_error(out, Mat<TestType>(expected * X)) <= 10 * Tolerance<TestType>::dense);
  }
}

// The backend's eigensolver (sytrd + stedc + kfopt's blocked back-transformation) against
// syevd itself, in float and double, at sizes around the 64-reflector block: the same
// eigenvalues, eigenvectors equal up to sign (distinct eigenvalues), residual and
// orthogonality at rounding level; the strictly upper triangle (NaN here) is never read.
TEMPLATE_TEST_CASE("LAPACK backend: split eigensolver against syevd",
                   "[kron][eigen][backend][lapack]", float, double) {
  using S = TestType;
  Rng rng(97);
  const double tol = std::is_same_v<S, double> ? 1e-12 : 2e-5;
  for (int n : {1, 2, 3, 63, 64, 65, 66, 129, 300}) {
    CAPTURE(n);
    // Eigenvalues in [−20, 30] (indefinite, as the RNN transitions), separated by ≥ 50/(2n).
    Vec<double> d(n);
    for (int i = 0; i < n; ++i) d(i) = -20.0 + 50.0 * (i + 0.5 + 0.4 * rng.uniform(-1, 1)) / n;
    const Mat<S> A = with_spectrum(rng, d).cast<S>();
    Mat<S> A_lower_only = A;
    for (int j = 1; j < n; ++j) {
      A_lower_only.col(j).head(j).setConstant(std::numeric_limits<S>::quiet_NaN());
    }
    kfopt::detail::lapack::SplitSymmetricEigenSolver<S> split(n);
    kfopt::detail::lapack::SymmetricEigenSolver<S> syevd(n);
    REQUIRE(split.compute(A_lower_only));
    REQUIRE(syevd.compute(A));
    const double scale = static_cast<double>(A.cwiseAbs().maxCoeff());
    CHECK(max_relative(split.values, syevd.values) <= tol * std::max(1.0, scale));
    CHECK(max_relative(split.values.template cast<double>(), d) <= 100 * tol * std::max(1.0, scale));
    const Mat<S>& V = split.vectors;
    CHECK(static_cast<double>((A * V - V * split.values.asDiagonal()).cwiseAbs().maxCoeff()) <=
          10 * n * tol * scale);
    CHECK(static_cast<double>((V.transpose() * V - Mat<S>::Identity(n, n)).cwiseAbs().maxCoeff()) <=
          10 * n * tol);
    // Up to sign, column by column.
    double worst = 0;
    for (int j = 0; j < n; ++j) {
      const S sign = V.col(j).dot(syevd.vectors.col(j)) < 0 ? S(-1) : S(1);
      worst = std::max(worst, max_relative(sign * V.col(j), syevd.vectors.col(j)));
    }
    CHECK(worst <= 1000 * tol);
  }
}

#endif  // KFOPT_USE_LAPACK
