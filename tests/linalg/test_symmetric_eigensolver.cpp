// SymmetricEigensolver (the Eigen-only backend of SymmetricEigenCache) against independent
// checks: the residual ‖AU − UΛ‖/‖A‖ and ‖UᵀU − I‖ computed in double, eigenvalues against
// Eigen's SelfAdjointEigenSolver run in double, on random, structured and badly scaled
// matrices around the panel size, and its failure channel.
#include <catch2/catch.hpp>
#include <kfopt/linalg/symmetric_eigen_cache.hpp>
#include <kfopt/linalg/symmetric_eigensolver.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// Checks a successful decomposition of the symmetric A in double precision (the solver is
// given `input`, A by default, of which it may read only the lower triangle).
// Tolerances: c·n·ε relative to ‖A‖ (Frobenius), c = 4.
template <typename Scalar, int Panel>
void check_decomposition(const Mat<Scalar>& A, kfopt::SymmetricEigensolver<Scalar, Panel>& solver,
                         const Mat<Scalar>* input = nullptr) {
  const Eigen::Index n = A.rows();
  REQUIRE(solver.compute(input != nullptr ? *input : A).info() == kfopt::Status::Success);
  const Mat<double> Ad = A.template cast<double>();
  const Mat<double> U = solver.eigenvectors().template cast<double>();
  const Vec<double> lambda = solver.eigenvalues().template cast<double>();
  REQUIRE(U.rows() == n);
  REQUIRE(U.cols() == n);
  REQUIRE(lambda.size() == n);
  const double eps = static_cast<double>(std::numeric_limits<Scalar>::epsilon());
  const double tol = 4.0 * static_cast<double>(std::max<Eigen::Index>(n, 1)) * eps;
  const double anorm = Ad.stableNorm();
  bool ascending = true;
  for (Eigen::Index i = 0; i + 1 < n; ++i) ascending = ascending && lambda(i) <= lambda(i + 1);
  CHECK(ascending);
  const double orth = (U.transpose() * U - Mat<double>::Identity(n, n)).norm();
  CHECK(orth <= tol);
  if (anorm > 0) {
    const double residual = (Ad * U - U * lambda.asDiagonal()).stableNorm() / anorm;
    CHECK(residual <= tol);
    // Eigenvalues against Eigen's solver run in double.
    Eigen::SelfAdjointEigenSolver<Mat<double>> reference(Ad, Eigen::EigenvaluesOnly);
    const double gap = (reference.eigenvalues() - lambda).cwiseAbs().maxCoeff() / anorm;
    CHECK(gap <= tol);
  } else {
    CHECK(lambda.cwiseAbs().maxCoeff() == 0.0);
  }
}

template <typename Scalar>
Mat<Scalar> random_symmetric(Rng& rng, Eigen::Index n) {
  const Mat<double> X = rng.normal<double>(n, n);
  return (0.5 * (X + X.transpose())).template cast<Scalar>();
}

// Q diag(d) Qᵀ for a random orthogonal Q, built in double.
template <typename Scalar>
Mat<Scalar> with_spectrum(Rng& rng, const Vec<double>& d) {
  const Eigen::Index n = d.size();
  const Mat<double> Q =
      Eigen::HouseholderQR<Mat<double>>(rng.normal<double>(n, n)).householderQ();
  const Mat<double> S = Q * d.asDiagonal() * Q.transpose();
  return (0.5 * (S + S.transpose())).template cast<Scalar>();
}

// Sizes below, at and above the panel size (32), not multiples of it. The blocked reduction
// starts at n = 3·panel = 96; it is covered at small n with small panels below, to keep this
// file fast under the sanitizers at -O0.
const std::vector<Eigen::Index> kSizes = {1, 2, 3, 7, 31, 32, 33};

}  // namespace

TEMPLATE_TEST_CASE("eigensolver: random symmetric indefinite matrices", "[kron][eigensolver]",
                   float, double) {
  Rng rng(101);
  kfopt::SymmetricEigensolver<TestType> solver;
  for (Eigen::Index n : kSizes) {
    INFO("n = " << n);
    check_decomposition<TestType>(random_symmetric<TestType>(rng, n), solver);
  }
}

TEMPLATE_TEST_CASE("eigensolver: random PSD low-rank matrices", "[kron][eigensolver]", float,
                   double) {
  Rng rng(102);
  for (Eigen::Index n : {5, 30}) {
    for (Eigen::Index rank : {Eigen::Index(1), n / 3 + 1}) {
      INFO("n = " << n << ", rank = " << rank);
      const Mat<double> X = rng.normal<double>(n, rank);
      const Mat<TestType> A = (X * X.transpose()).template cast<TestType>();
      kfopt::SymmetricEigensolver<TestType> solver(n);
      check_decomposition<TestType>(A, solver);
    }
  }
}

TEMPLATE_TEST_CASE("eigensolver: diagonal, tridiagonal, identity multiple and zero",
                   "[kron][eigensolver]", float, double) {
  Rng rng(103);
  for (Eigen::Index n : {1, 2, 3, 20}) {
    INFO("n = " << n);
    kfopt::SymmetricEigensolver<TestType> solver(n);
    Mat<TestType> D = Mat<TestType>::Zero(n, n);
    for (Eigen::Index i = 0; i < n; ++i) D(i, i) = static_cast<TestType>(rng.uniform(-3, 3));
    check_decomposition<TestType>(D, solver);

    Mat<TestType> T = D;
    for (Eigen::Index i = 0; i + 1 < n; ++i) {
      T(i + 1, i) = T(i, i + 1) = static_cast<TestType>(rng.uniform(-1, 1));
    }
    check_decomposition<TestType>(T, solver);

    const Mat<TestType> I3 = TestType(3) * Mat<TestType>::Identity(n, n);
    check_decomposition<TestType>(I3, solver);
    for (Eigen::Index i = 0; i < n; ++i) CHECK(solver.eigenvalues()(i) == TestType(3));

    check_decomposition<TestType>(Mat<TestType>::Zero(n, n), solver);
    CHECK(solver.eigenvectors().isIdentity());
  }
}

TEMPLATE_TEST_CASE("eigensolver: repeated and clustered eigenvalues", "[kron][eigensolver]",
                   float, double) {
  Rng rng(104);
  for (Eigen::Index n : {6, 33}) {
    INFO("n = " << n);
    Vec<double> repeated(n);
    for (Eigen::Index i = 0; i < n; ++i) repeated(i) = i < n / 2 ? 1.0 : 2.0;
    kfopt::SymmetricEigensolver<TestType> solver(n);
    check_decomposition<TestType>(with_spectrum<TestType>(rng, repeated), solver);
    Vec<double> clustered(n);
    for (Eigen::Index i = 0; i < n; ++i) clustered(i) = 1.0 + 1e-9 * static_cast<double>(i % 4);
    check_decomposition<TestType>(with_spectrum<TestType>(rng, clustered), solver);
    // Wilkinson's W⁺-like tridiagonal: pairs of nearly equal eigenvalues.
    Mat<TestType> W = Mat<TestType>::Zero(n, n);
    for (Eigen::Index i = 0; i < n; ++i) {
      W(i, i) = static_cast<TestType>(std::abs(static_cast<double>(i) - (n - 1) / 2.0));
      if (i + 1 < n) W(i + 1, i) = W(i, i + 1) = TestType(1);
    }
    check_decomposition<TestType>(W, solver);
  }
}

TEST_CASE("eigensolver: badly scaled matrices (entries near 1e±150)", "[kron][eigensolver]") {
  Rng rng(105);
  for (double scale : {1e150, 1e-150, 1e300, 1e-300}) {
    for (Eigen::Index n : {3, 20}) {
      INFO("scale = " << scale << ", n = " << n);
      const Mat<double> A = scale * random_symmetric<double>(rng, n);
      kfopt::SymmetricEigensolver<double> solver(n);
      check_decomposition<double>(A, solver);
    }
  }
  // Graded: entries spanning 1e-150 .. 1e150 along the diagonal.
  const Eigen::Index n = 30;
  Mat<double> G = random_symmetric<double>(rng, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index j = 0; j < n; ++j) {
      G(i, j) *= std::pow(10.0, 150.0 - 300.0 * static_cast<double>(std::max(i, j)) / (n - 1));
    }
  }
  kfopt::SymmetricEigensolver<double> solver;
  check_decomposition<double>(G, solver);
}

TEMPLATE_TEST_CASE("eigensolver: float scaling extremes", "[kron][eigensolver]", float) {
  Rng rng(106);
  for (double scale : {1e30, 1e-30}) {
    const Mat<TestType> A = (scale * random_symmetric<double>(rng, 30)).template cast<TestType>();
    kfopt::SymmetricEigensolver<TestType> solver;
    check_decomposition<TestType>(A, solver);
  }
}

TEMPLATE_TEST_CASE("eigensolver: blocked reduction and WY blocks, lower triangle only",
                   "[kron][eigensolver]", float, double) {
  Rng rng(107);
  // Panels of 4 (blocked from n = 12) and 5 (from 15): one panel, several panels, sizes that
  // are and are not multiples of the panel. The strictly upper triangle holds garbage that
  // must not be read.
  kfopt::SymmetricEigensolver<TestType, 4> four;
  kfopt::SymmetricEigensolver<TestType, 5> five;
  for (Eigen::Index n : {Eigen::Index(12), Eigen::Index(13), Eigen::Index(23),
                         Eigen::Index(41)}) {
    INFO("n = " << n);
    const Mat<TestType> A = n % 2 == 0 ? random_symmetric<TestType>(rng, n)
                                       : rng.spd<TestType>(n, 1e-3, 10.0);
    Mat<TestType> lower_only = A;
    lower_only.template triangularView<Eigen::StrictlyUpper>().setConstant(TestType(1e6));
    check_decomposition<TestType>(A, four, &lower_only);
    check_decomposition<TestType>(A, five, &lower_only);
  }
  // The default panel (32) at n = 97: one panel, then the unblocked rest.
  const Eigen::Index n = 97;
  const Mat<TestType> A = random_symmetric<TestType>(rng, n);
  kfopt::SymmetricEigensolver<TestType> solver(n);
  REQUIRE(solver.compute(A).info() == kfopt::Status::Success);
  const Mat<TestType>& U = solver.eigenvectors();
  const double residual = static_cast<double>(
      (A * U - U * solver.eigenvalues().asDiagonal()).norm() / A.norm());
  CHECK(residual <= 4.0 * n * static_cast<double>(std::numeric_limits<TestType>::epsilon()));
}

TEMPLATE_TEST_CASE("eigensolver: non-finite input reports failure", "[kron][eigensolver]", float,
                   double) {
  Rng rng(108);
  for (Eigen::Index n : {1, 5, 20}) {
    for (TestType bad : {std::numeric_limits<TestType>::quiet_NaN(),
                         std::numeric_limits<TestType>::infinity()}) {
      Mat<TestType> A = random_symmetric<TestType>(rng, n);
      A(n - 1, n / 2) = bad;
      A(n / 2, n - 1) = bad;
      kfopt::SymmetricEigensolver<TestType> solver(n);
      CHECK(solver.compute(A).info() == kfopt::Status::NonFiniteInput);
      // The solver recovers on the next finite input.
      check_decomposition<TestType>(random_symmetric<TestType>(rng, n), solver);
    }
  }
  // Finite entries whose norm overflows are handled by the scaling.
  Mat<TestType> big = Mat<TestType>::Constant(4, 4, std::numeric_limits<TestType>::max() / 2);
  kfopt::SymmetricEigensolver<TestType> solver;
  // Its largest eigenvalue 4·max/2 = 2·max is not representable: reported, not returned.
  CHECK(solver.compute(big).info() == kfopt::Status::NumericalIssue);
  big /= TestType(4);
  check_decomposition<TestType>(big, solver);
}

TEMPLATE_TEST_CASE("eigensolver: repeated compute at one size, then other sizes",
                   "[kron][eigensolver]", float, double) {
  Rng rng(109);
  const Eigen::Index n = 30;
  kfopt::SymmetricEigensolver<TestType> solver(n);
  const Mat<TestType> A = random_symmetric<TestType>(rng, n);
  REQUIRE(solver.compute(A).info() == kfopt::Status::Success);
  const Vec<TestType> first = solver.eigenvalues();
  const Mat<TestType> first_vectors = solver.eigenvectors();
  const TestType* storage = solver.eigenvectors().data();
  for (int round = 0; round < 2; ++round) {
    check_decomposition<TestType>(random_symmetric<TestType>(rng, n), solver);
    CHECK(solver.eigenvectors().data() == storage);  // no reallocation at the same size
  }
  REQUIRE(solver.compute(A).info() == kfopt::Status::Success);
  CHECK(solver.eigenvalues() == first);  // deterministic
  CHECK(solver.eigenvectors() == first_vectors);
  for (Eigen::Index m : {Eigen::Index(7), Eigen::Index(20), Eigen::Index(0)}) {
    if (m == 0) {
      REQUIRE(solver.compute(Mat<TestType>(0, 0)).info() == kfopt::Status::Success);
      CHECK(solver.size() == 0);
    } else {
      check_decomposition<TestType>(random_symmetric<TestType>(rng, m), solver);
    }
  }
  CHECK_THROWS_AS(solver.compute(Mat<TestType>(3, 4)), kfopt::ShapeError);
}

TEMPLATE_TEST_CASE("eigensolver: SymmetricEigenCache with the Eigen backend agrees with it",
                   "[kron][eigensolver]", float, double) {
  // The cache's Eigen backend switches to SymmetricEigensolver at n = 256 (too large for this
  // file under the sanitizers); below, it uses Eigen's solver, which must agree.
  using Kernel = kfopt::detail::SymmetricEigenKernel<TestType, kfopt::DecompositionBackend::Eigen>;
  STATIC_REQUIRE(Kernel::kBlockedFrom == 256);
  Rng rng(110);
  const Eigen::Index n = 50;
  const Mat<TestType> A = rng.spd<TestType>(n, 0.5, 4.0);
  kfopt::SymmetricEigenCache<TestType, kfopt::DecompositionBackend::Eigen> cache(n);
  kfopt::SymmetricEigensolver<TestType> solver(n);
  const double tol = 4.0 * n * static_cast<double>(std::numeric_limits<TestType>::epsilon());
  for (int round = 0; round < 2; ++round) {
    REQUIRE(cache.compute(A).info() == kfopt::Status::Success);
    REQUIRE(solver.compute(A).info() == kfopt::Status::Success);
    CHECK(relative_error(cache.eigenvalues(), solver.eigenvalues()) <= tol);
    // Eigenvectors of well separated eigenvalues agree up to sign: compare U diag(λ) Uᵀ.
    const Mat<TestType> a = cache.eigenvectors() * cache.eigenvalues().asDiagonal() *
                            cache.eigenvectors().transpose();
    const Mat<TestType> b = solver.eigenvectors() * solver.eigenvalues().asDiagonal() *
                            solver.eigenvectors().transpose();
    CHECK(relative_error(a, b) <= tol);
  }
}
