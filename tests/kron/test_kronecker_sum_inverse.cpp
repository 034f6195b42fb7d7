// (A ⊗ B + C ⊗ D)⁻¹ vec(Z) and (I − M_A ⊗ M_G)⁻¹ vec(Z) (RNN K-FAC eq. 9, appendix C.2),
// checked against the explicit Kronecker sums built entry by entry and inverted densely in
// double (tests/support/dense_reference.hpp), for float and double, square and
// rectangular Z.
#include <catch2/catch.hpp>
#include <kfopt/kron/kronecker_sum_inverse.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

/// Symmetric matrix `Q diag(values) Qᵀ` with a random orthogonal Q (built in double).
template <typename T>
Mat<T> with_spectrum(Rng& rng, const std::vector<double>& values) {
  const Eigen::Index n = static_cast<Eigen::Index>(values.size());
  const Mat<double> Q =
      Eigen::HouseholderQR<Mat<double>>(rng.normal<double>(n, n)).householderQ();
  const Vec<double> d = Eigen::Map<const Vec<double>>(values.data(), n);
  const Mat<double> S = Q * d.asDiagonal() * Q.transpose();
  return (0.5 * (S + S.transpose())).template cast<T>();
}

/// Symmetric C with prescribed generalized eigenvalues relative to SPD A:
/// `C = L W Lᵀ` with `A = L Lᵀ`, `W = Q diag(values) Qᵀ`: `C x = μ A x` has μ = values.
template <typename T>
Mat<T> with_generalized_spectrum(Rng& rng, const Mat<T>& A, const std::vector<double>& values) {
  const Mat<double> L = Eigen::LLT<Mat<double>>(A.template cast<double>()).matrixL();
  const Mat<double> W = with_spectrum<double>(rng, values);
  const Mat<double> C = L * W * L.transpose();
  return (0.5 * (C + C.transpose())).template cast<T>();
}

/// `count` values uniform in [lo, hi] in magnitude with alternating signs, starting negative
/// (so any matrix with two or more of them is indefinite).
std::vector<double> alternating(Rng& rng, int count, double lo, double hi) {
  std::vector<double> v(static_cast<std::size_t>(count));
  for (int k = 0; k < count; ++k) {
    v[static_cast<std::size_t>(k)] = (k % 2 ? 1.0 : -1.0) * rng.uniform(lo, hi);
  }
  return v;
}

template <typename T>
Mat<double> to_double(const Mat<T>& M) {
  return M.template cast<double>();
}

/// Reference `(A ⊗ B + C ⊗ D)⁻¹ vec(Z)` in double, from the explicit Kronecker products.
template <typename T>
Vec<double> reference_sum_inverse(const Mat<T>& A, const Mat<T>& B, const Mat<T>& C,
                                  const Mat<T>& D, const Mat<T>& Z) {
  const Mat<double> K =
      dense_kron(to_double(A), to_double(B)) + dense_kron(to_double(C), to_double(D));
  return dense_inverse(K) * dense_vec(to_double(Z));
}

/// Reference `(I − M_A ⊗ M_G)⁻¹ vec(Z)` in double.
template <typename T>
Vec<double> reference_resolvent(const Mat<T>& MA, const Mat<T>& MG, const Mat<T>& Z) {
  const Mat<double> K = Mat<double>::Identity(MA.rows() * MG.rows(), MA.rows() * MG.rows()) -
                        dense_kron(to_double(MA), to_double(MG));
  return dense_inverse(K) * dense_vec(to_double(Z));
}

template <typename T>
double error_against(const Mat<T>& out, const Vec<double>& expected) {
  return relative_error(dense_vec(to_double(out)), expected);
}

/// The message of the exception of type Ex that `f` throws ("" and a failure otherwise).
template <typename Ex, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Ex& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("unexpected exception type: " << e.what());
  }
  FAIL("no exception thrown");
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// KroneckerSumInverse
// ---------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("KroneckerSumInverse agrees with the dense inverse of A⊗B + C⊗D, C and D "
                   "indefinite",
                   "[kron][kronecker_sum_inverse]", float, double) {
  Rng rng(11);
  kfopt::KroneckerSumInverse<TestType> inverse;
  for (int n = 1; n <= 6; ++n) {
    for (int p = 1; p <= 6; ++p) {
      CAPTURE(n, p);
      const Mat<TestType> A = rng.spd<TestType>(n);
      const Mat<TestType> B = rng.spd<TestType>(p);
      // Spectral norms <= 0.35 against λ_min(A), λ_min(B) >= 0.5: the sum stays >= 0.12 I.
      const Mat<TestType> C = with_spectrum<TestType>(rng, alternating(rng, n, 0.1, 0.35));
      const Mat<TestType> D = with_spectrum<TestType>(rng, alternating(rng, p, 0.1, 0.35));
      const Mat<TestType> Z = rng.normal<TestType>(p, n);

      REQUIRE(inverse.compute(A, B, C, D).info() == kfopt::Status::Success);
      CHECK(inverse.n() == n);
      CHECK(inverse.p() == p);
      Mat<TestType> out;
      inverse.apply(Z, out);
      CHECK(out.rows() == p);
      CHECK(out.cols() == n);
      CHECK(error_against(out, reference_sum_inverse(A, B, C, D, Z)) <=
            Tolerance<TestType>::dense);

      // The generalized eigenbases: Xᵀ A X = I, Xᵀ C X = diag(μ), and likewise Y, B, D.
      const Mat<TestType>& X = inverse.X();
      const Mat<TestType>& Y = inverse.Y();
      CHECK(relative_error(to_double(Mat<TestType>(X.transpose() * A * X)),
                           Mat<double>::Identity(n, n)) <= Tolerance<TestType>::dense);
      CHECK(relative_error(to_double(Mat<TestType>(Y.transpose() * B * Y)),
                           Mat<double>::Identity(p, p)) <= Tolerance<TestType>::dense);
      const Mat<double> XCX = to_double(Mat<TestType>(X.transpose() * C * X));
      const Mat<double> mu = to_double(Mat<TestType>(inverse.mu().asDiagonal()));
      CHECK((XCX - mu).norm() <= Tolerance<TestType>::dense * std::max(1.0, mu.norm()));
      const Mat<double> YDY = to_double(Mat<TestType>(Y.transpose() * D * Y));
      const Mat<double> nu = to_double(Mat<TestType>(inverse.nu().asDiagonal()));
      CHECK((YDY - nu).norm() <= Tolerance<TestType>::dense * std::max(1.0, nu.norm()));
    }
  }
}

TEMPLATE_TEST_CASE("KroneckerSumInverse: large indefinite C with small D, prescribed "
                   "generalized eigenvalues",
                   "[kron][kronecker_sum_inverse]", float, double) {
  // μ in ±[1, 3], ν in ±[0.05, 0.3]: every 1 + μν >= 0.1, so the sum is positive definite
  // although C ⊗ D is as large as A ⊗ B. A, B have condition <= 2 so that the whole problem
  // (condition <= 4 · 1.9 / 0.1 = 76) is honest in float.
  Rng rng(12);
  const int shapes[][2] = {{4, 3}, {2, 6}, {5, 5}, {1, 4}, {6, 1}};
  for (const auto& s : shapes) {
    const int n = s[0], p = s[1];
    CAPTURE(n, p);
    const Mat<TestType> A = rng.spd<TestType>(n, 1.0, 2.0);
    const Mat<TestType> B = rng.spd<TestType>(p, 1.0, 2.0);
    std::vector<double> mu = alternating(rng, n, 1.0, 3.0);
    std::vector<double> nu = alternating(rng, p, 0.05, 0.3);
    const Mat<TestType> C = with_generalized_spectrum(rng, A, mu);
    const Mat<TestType> D = with_generalized_spectrum(rng, B, nu);
    const Mat<TestType> Z = rng.normal<TestType>(p, n);

    kfopt::KroneckerSumInverse<TestType> inverse(n, p);
    REQUIRE(inverse.compute(A, B, C, D).info() == kfopt::Status::Success);
    CHECK(error_against(inverse.apply(Z), reference_sum_inverse(A, B, C, D, Z)) <=
          Tolerance<TestType>::dense);

    std::sort(mu.begin(), mu.end());
    std::sort(nu.begin(), nu.end());
    const Vec<double> mu_expected = Eigen::Map<const Vec<double>>(mu.data(), n);
    const Vec<double> nu_expected = Eigen::Map<const Vec<double>>(nu.data(), p);
    CHECK(relative_error(Vec<double>(inverse.mu().template cast<double>()), mu_expected) <=
          Tolerance<TestType>::dense);
    CHECK(relative_error(Vec<double>(inverse.nu().template cast<double>()), nu_expected) <=
          Tolerance<TestType>::dense);
    CHECK(inverse.min_divisor_ratio() > TestType(0.04));
  }
}

TEMPLATE_TEST_CASE("KroneckerSumInverse: positive definite C and D of large norm",
                   "[kron][kronecker_sum_inverse]", float, double) {
  Rng rng(13);
  const Mat<TestType> A = rng.spd<TestType>(4);
  const Mat<TestType> B = rng.spd<TestType>(3);
  const Mat<TestType> C = TestType(3) * rng.spd<TestType>(4);
  const Mat<TestType> D = TestType(2) * rng.spd<TestType>(3);
  const Mat<TestType> Z = rng.normal<TestType>(3, 4);
  kfopt::KroneckerSumInverse<TestType> inverse;
  REQUIRE(inverse.compute(A, B, C, D).info() == kfopt::Status::Success);
  CHECK(error_against(inverse.apply(Z), reference_sum_inverse(A, B, C, D, Z)) <=
        Tolerance<TestType>::dense);
  CHECK(inverse.mu().minCoeff() > TestType(0));
  CHECK(inverse.nu().minCoeff() > TestType(0));
}

TEMPLATE_TEST_CASE("KroneckerSumInverse with C = 0 is A⁻¹ ⊗ B⁻¹",
                   "[kron][kronecker_sum_inverse]", float, double) {
  Rng rng(14);
  const int shapes[][2] = {{3, 5}, {5, 3}, {1, 1}, {6, 2}};
  for (const auto& s : shapes) {
    const int n = s[0], p = s[1];
    CAPTURE(n, p);
    const Mat<TestType> A = rng.spd<TestType>(n);
    const Mat<TestType> B = rng.spd<TestType>(p);
    const Mat<TestType> C = Mat<TestType>::Zero(n, n);
    const Mat<TestType> D = with_spectrum<TestType>(rng, alternating(rng, p, 0.5, 2.0));
    const Mat<TestType> Z = rng.normal<TestType>(p, n);
    kfopt::KroneckerSumInverse<TestType> inverse;
    REQUIRE(inverse.compute(A, B, C, D).info() == kfopt::Status::Success);
    const Vec<double> expected =
        dense_kron(dense_inverse(to_double(A)), dense_inverse(to_double(B))) *
        dense_vec(to_double(Z));
    CHECK(error_against(inverse.apply(Z), expected) <= Tolerance<TestType>::dense);
    CHECK(inverse.mu().cwiseAbs().maxCoeff() <= Tolerance<TestType>::dense);
  }
}

TEMPLATE_TEST_CASE("KroneckerSumInverse with C = -A/2, D = B is 2 A⁻¹ ⊗ B⁻¹",
                   "[kron][kronecker_sum_inverse]", float, double) {
  Rng rng(15);
  const Mat<TestType> A = rng.spd<TestType>(4);
  const Mat<TestType> B = rng.spd<TestType>(2);
  const Mat<TestType> C = TestType(-0.5) * A;
  const Mat<TestType> Z = rng.normal<TestType>(2, 4);
  kfopt::KroneckerSumInverse<TestType> inverse;
  REQUIRE(inverse.compute(A, B, C, B).info() == kfopt::Status::Success);
  const Vec<double> expected =
      2.0 * dense_kron(dense_inverse(to_double(A)), dense_inverse(to_double(B))) *
      dense_vec(to_double(Z));
  CHECK(error_against(inverse.apply(Z), expected) <= Tolerance<TestType>::dense);
}

TEMPLATE_TEST_CASE("KroneckerSumInverse reuses its decomposition, resizes, and applies into "
                   "plain, aliased, mapped and block destinations",
                   "[kron][kronecker_sum_inverse]", float, double) {
  Rng rng(16);
  kfopt::KroneckerSumInverse<TestType> inverse(3, 4);
  CHECK(inverse.info() == kfopt::Status::NotComputed);
  CHECK(inverse.n() == 3);
  CHECK(inverse.p() == 4);

  const Mat<TestType> A = rng.spd<TestType>(3), B = rng.spd<TestType>(4);
  const Mat<TestType> C = with_spectrum<TestType>(rng, alternating(rng, 3, 0.1, 0.3));
  const Mat<TestType> D = with_spectrum<TestType>(rng, alternating(rng, 4, 0.1, 0.3));
  REQUIRE(&inverse.compute(A, B, C, D) == &inverse);
  REQUIRE(inverse.info() == kfopt::Status::Success);

  for (int k = 0; k < 3; ++k) {
    const Mat<TestType> Z = rng.normal<TestType>(4, 3);
    const Vec<double> expected = reference_sum_inverse(A, B, C, D, Z);
    Mat<TestType> out(7, 1);  // wrong size: resized
    inverse.apply(Z, out);
    CHECK(error_against(out, expected) <= Tolerance<TestType>::dense);

    Mat<TestType> in_place = Z;  // out aliases Z
    inverse.apply(in_place, in_place);
    CHECK(in_place == out);

    std::vector<TestType> storage(12, TestType(0));  // user storage
    Eigen::Map<Mat<TestType>> mapped(storage.data(), 4, 3);
    inverse.apply(Z, mapped);
    CHECK(Mat<TestType>(mapped) == out);

    Mat<TestType> big = Mat<TestType>::Zero(6, 5);
    inverse.apply(Z, big.block(1, 2, 4, 3));
    CHECK(Mat<TestType>(big.block(1, 2, 4, 3)) == out);
    CHECK(big.col(0).isZero(0));
    CHECK(big.row(5).isZero(0));
  }

  // A copy carries the decomposition; the original and the copy apply independently.
  kfopt::KroneckerSumInverse<TestType> copy = inverse;
  const Mat<TestType> Z1 = rng.normal<TestType>(4, 3);
  CHECK(copy.apply(Z1) == inverse.apply(Z1));

  // Recompute with other sizes on the same object.
  const Mat<TestType> A2 = rng.spd<TestType>(2), B2 = rng.spd<TestType>(5);
  const Mat<TestType> C2 = rng.spd<TestType>(2);
  const Mat<TestType> D2 = with_spectrum<TestType>(rng, alternating(rng, 5, 0.1, 0.3));
  REQUIRE(inverse.compute(A2, B2, C2, D2).info() == kfopt::Status::Success);
  CHECK(inverse.n() == 2);
  CHECK(inverse.p() == 5);
  const Mat<TestType> Z2 = rng.normal<TestType>(5, 2);
  CHECK(error_against(inverse.apply(Z2), reference_sum_inverse(A2, B2, C2, D2, Z2)) <=
        Tolerance<TestType>::dense);
}

TEMPLATE_TEST_CASE("KroneckerSumInverse guards a singular or indefinite sum",
                   "[kron][kronecker_sum_inverse][guard]", float, double) {
  Rng rng(17);
  const Mat<TestType> A = rng.spd<TestType>(3);
  const Mat<TestType> B = rng.spd<TestType>(4);
  const Mat<TestType> Z = rng.normal<TestType>(4, 3);
  kfopt::KroneckerSumInverse<TestType> inverse;

  SECTION("C = -A, D = B: the sum is zero") {
    const Mat<TestType> C = -A;
    CHECK(inverse.compute(A, B, C, B).info() == kfopt::Status::NumericalIssue);
  }
  SECTION("C = -2A, D = B: the sum is -A ⊗ B, nonsingular but not positive definite") {
    const Mat<TestType> C = TestType(-2) * A;
    CHECK(inverse.compute(A, B, C, B).info() == kfopt::Status::NumericalIssue);
    CHECK(inverse.min_divisor_ratio() < TestType(0));
  }
  SECTION("one generalized eigenpair cancels: 1 + μν = 0 for μ = -2, ν = 0.5") {
    const Mat<TestType> C = with_generalized_spectrum(rng, A, {-2.0, 0.3, 0.7});
    const Mat<TestType> D = with_generalized_spectrum(rng, B, {0.5, 0.1, -0.2, 0.2});
    CHECK(inverse.compute(A, B, C, D).info() == kfopt::Status::NumericalIssue);
  }
  CHECK_THROWS_AS(inverse.apply(Z), kfopt::NumericalError);
  Mat<TestType> out = Mat<TestType>::Constant(4, 3, TestType(7));
  CHECK_THROWS_AS(inverse.apply(Z, out), kfopt::NumericalError);
  CHECK((out.array() == TestType(7)).all());
  CHECK_THROWS_AS(inverse.mu(), kfopt::NumericalError);
  CHECK_THROWS_AS(inverse.X(), kfopt::NumericalError);
  CHECK(contains(message_of<kfopt::NumericalError>([&] { inverse.apply(Z); }),
                 "kfopt::KroneckerSumInverse::apply"));
}

TEMPLATE_TEST_CASE("KroneckerSumInverse reports a non-positive-definite A or B",
                   "[kron][kronecker_sum_inverse][guard]", float, double) {
  Rng rng(18);
  const Mat<TestType> A = rng.spd<TestType>(3);
  const Mat<TestType> B = rng.spd<TestType>(2);
  const Mat<TestType> C = rng.spd<TestType>(3);
  const Mat<TestType> D = rng.spd<TestType>(2);
  const Mat<TestType> indefinite3 = with_spectrum<TestType>(rng, {1.0, -0.5, 2.0});
  const Mat<TestType> negative2 = -rng.spd<TestType>(2);
  kfopt::KroneckerSumInverse<TestType> inverse;
  CHECK(inverse.compute(indefinite3, B, C, D).info() == kfopt::Status::NumericalIssue);
  CHECK_THROWS_AS(inverse.apply(rng.normal<TestType>(2, 3)), kfopt::NumericalError);
  CHECK(inverse.compute(A, negative2, C, D).info() == kfopt::Status::NumericalIssue);
  // A good compute afterwards recovers.
  CHECK(inverse.compute(A, B, C, D).info() == kfopt::Status::Success);
}

TEST_CASE("KroneckerSumInverse rejects wrong use with messages naming the operation and "
          "the shapes, and keeps its previous result",
          "[kron][kronecker_sum_inverse][errors]") {
  using T = double;
  Rng rng(19);
  const Mat<T> A = rng.spd<T>(4), B = rng.spd<T>(3);
  const Mat<T> C = with_spectrum<T>(rng, alternating(rng, 4, 0.1, 0.3));
  const Mat<T> D = with_spectrum<T>(rng, alternating(rng, 3, 0.1, 0.3));
  const Mat<T> Z = rng.normal<T>(3, 4);
  kfopt::KroneckerSumInverse<T> inverse;

  // Before any compute (also for a copy of a fresh object).
  CHECK(contains(message_of<kfopt::NumericalError>([&] { inverse.apply(Z); }),
                 "not computed"));
  kfopt::KroneckerSumInverse<T> fresh_copy = inverse;
  CHECK(fresh_copy.info() == kfopt::Status::NotComputed);
  kfopt::KroneckerSumInverse<T> preallocated(4, 3);
  kfopt::KroneckerSumInverse<T> preallocated_copy = preallocated;
  CHECK(preallocated_copy.info() == kfopt::Status::NotComputed);
  CHECK(preallocated_copy.n() == 4);

  REQUIRE(inverse.compute(A, B, C, D).info() == kfopt::Status::Success);
  const Mat<T> before = inverse.apply(Z);
  const Mat<T> X_before = inverse.X();

  const std::string op = "kfopt::KroneckerSumInverse::compute";
  std::string msg = message_of<kfopt::ShapeError>(
      [&] { inverse.compute(rng.normal<T>(3, 4), B, C, D); });
  CHECK(contains(msg, op));
  CHECK(contains(msg, "A"));
  CHECK(contains(msg, "3x4"));

  msg = message_of<kfopt::ShapeError>([&] { inverse.compute(A, B, rng.spd<T>(3), D); });
  CHECK(contains(msg, op));
  CHECK(contains(msg, "C"));
  CHECK(contains(msg, "3x3"));
  CHECK(contains(msg, "4x4"));

  msg = message_of<kfopt::ShapeError>([&] { inverse.compute(A, B, C, rng.spd<T>(5)); });
  CHECK(contains(msg, "D"));
  CHECK(contains(msg, "5x5"));
  CHECK(contains(msg, "3x3"));

  msg = message_of<kfopt::ShapeError>(
      [&] { inverse.compute(Mat<T>(0, 0), B, Mat<T>(0, 0), D); });
  CHECK(contains(msg, "empty"));

  Mat<T> nonsymmetric = A;
  nonsymmetric(0, 1) += 0.5;
  msg = message_of<kfopt::InvalidInputError>([&] { inverse.compute(nonsymmetric, B, C, D); });
  CHECK(contains(msg, op));
  CHECK(contains(msg, "symmetric"));
  CHECK(contains(msg, "4x4"));

  Mat<T> with_nan = D;
  with_nan(1, 1) = std::numeric_limits<T>::quiet_NaN();
  msg = message_of<kfopt::InvalidInputError>([&] { inverse.compute(A, B, C, with_nan); });
  CHECK(contains(msg, "D"));
  CHECK(contains(msg, "NaN"));

  // A larger, valid-shaped but non-symmetric problem also leaves the sizes alone.
  Mat<T> big_nonsymmetric = rng.normal<T>(6, 6);
  CHECK_THROWS_AS(
      inverse.compute(rng.spd<T>(6), big_nonsymmetric, rng.spd<T>(6), big_nonsymmetric),
      kfopt::InvalidInputError);

  // apply: wrong Z, non-finite Z, wrong fixed-size destination.
  const std::string apply_op = "kfopt::KroneckerSumInverse::apply";
  msg = message_of<kfopt::ShapeError>([&] { inverse.apply(rng.normal<T>(4, 3)); });
  CHECK(contains(msg, apply_op));
  CHECK(contains(msg, "4x3"));
  CHECK(contains(msg, "3x4"));
  Mat<T> Z_inf = Z;
  Z_inf(2, 0) = std::numeric_limits<T>::infinity();
  msg = message_of<kfopt::InvalidInputError>([&] { inverse.apply(Z_inf); });
  CHECK(contains(msg, "Z"));
  Mat<T> wrong_out = Mat<T>::Constant(3, 5, 1.0);
  msg = message_of<kfopt::ShapeError>([&] { inverse.apply(Z, wrong_out.block(0, 0, 3, 5)); });
  CHECK(contains(msg, "out"));
  CHECK(contains(msg, "3x5"));
  CHECK((wrong_out.array() == 1.0).all());

  // Every failed call left the decomposition untouched.
  CHECK(inverse.info() == kfopt::Status::Success);
  CHECK(inverse.n() == 4);
  CHECK(inverse.p() == 3);
  CHECK(inverse.X() == X_before);
  CHECK(inverse.apply(Z) == before);

  // Bad options at construction.
  kfopt::KroneckerSumInverseOptions<T> bad;
  bad.min_relative_divisor = -1e-3;
  msg = message_of<kfopt::HyperparameterError>([&] { kfopt::KroneckerSumInverse<T> x(bad); });
  CHECK(contains(msg, "min_relative_divisor"));
  bad.min_relative_divisor = 1.0;
  CHECK_THROWS_AS(kfopt::KroneckerSumInverse<T>(3, 3, bad), kfopt::HyperparameterError);
  CHECK_THROWS_AS(kfopt::KroneckerSumInverse<T>(-1, 3), kfopt::ShapeError);
}

// ---------------------------------------------------------------------------------------
// IdentityMinusKroneckerInverse
// ---------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("IdentityMinusKroneckerInverse agrees with the dense inverse of "
                   "I − M_A⊗M_G for spectra in (−1, 1)",
                   "[kron][identity_minus_kronecker_inverse]", float, double) {
  Rng rng(21);
  kfopt::IdentityMinusKroneckerInverse<TestType> inverse;
  for (int n = 1; n <= 6; ++n) {
    for (int p = 1; p <= 6; ++p) {
      CAPTURE(n, p);
      // Mixed signs, |eigenvalue| <= 0.9: divisors >= 0.19, condition <= 10.
      const Mat<TestType> MA = with_spectrum<TestType>(rng, alternating(rng, n, 0.0, 0.9));
      const Mat<TestType> MG = with_spectrum<TestType>(rng, alternating(rng, p, 0.0, 0.9));
      const Mat<TestType> Z = rng.normal<TestType>(p, n);
      REQUIRE(inverse.compute(MA, MG).info() == kfopt::Status::Success);
      CHECK(inverse.clipped_count() == 0);
      CHECK(inverse.n() == n);
      CHECK(inverse.p() == p);
      CHECK(error_against(inverse.apply(Z), reference_resolvent(MA, MG, Z)) <=
            Tolerance<TestType>::dense);
      CHECK(inverse.min_divisor() >= TestType(0.19) - TestType(1e-5));
    }
  }
}

TEMPLATE_TEST_CASE("IdentityMinusKroneckerInverse with spectra near 1 and negative",
                   "[kron][identity_minus_kronecker_inverse]", float, double) {
  // The smallest divisor is 1 − near², the condition of I − M_A⊗M_G about 2 / (1 − near²):
  // 1e4 in double, 100 in float (where rounding of the eigenvalues, ~1e-7, would otherwise
  // dominate a smaller divisor).
  const double near = std::is_same<TestType, double>::value ? 1.0 - 5e-5 : 1.0 - 1e-2;
  Rng rng(22);
  const int shapes[][2] = {{3, 3}, {2, 5}, {5, 2}, {1, 4}, {6, 6}};
  for (const auto& s : shapes) {
    const int n = s[0], p = s[1];
    CAPTURE(n, p);
    std::vector<double> a = alternating(rng, n, 0.0, 0.95), g = alternating(rng, p, 0.0, 0.95);
    a[0] = near;  // a_0 g_0 = near²: the divisor closest to 0
    g[0] = near;
    if (n > 1) a[1] = -near;  // a product near −1: divisor near 2
    if (p > 2) g[2] = -0.999 * near;
    const Mat<TestType> MA = with_spectrum<TestType>(rng, a);
    const Mat<TestType> MG = with_spectrum<TestType>(rng, g);
    const Mat<TestType> Z = rng.normal<TestType>(p, n);
    kfopt::IdentityMinusKroneckerInverse<TestType> inverse(n, p);
    REQUIRE(inverse.compute(MA, MG).info() == kfopt::Status::Success);
    CHECK(inverse.clipped_count() == 0);
    CHECK(error_against(inverse.apply(Z), reference_resolvent(MA, MG, Z)) <=
          Tolerance<TestType>::dense);
    CHECK(std::abs(static_cast<double>(inverse.min_divisor()) - (1.0 - near * near)) <=
          1e-3 * (1.0 - near * near));
  }
}

TEMPLATE_TEST_CASE("IdentityMinusKroneckerInverse clips eigenvalues beyond ±ρ and counts them",
                   "[kron][identity_minus_kronecker_inverse][guard]", float, double) {
  Rng rng(23);
  kfopt::IdentityMinusKroneckerOptions<TestType> options;
  options.max_abs_eigenvalue = TestType(0.9);
  options.min_divisor = TestType(0.05);
  kfopt::IdentityMinusKroneckerInverse<TestType> inverse(options);

  // Eigenvalue 1 (a constant component), 1.2 and −1.3 (estimation noise) are clipped.
  const std::vector<double> a = {1.0, 0.5, 1.2, -0.3};
  const std::vector<double> g = {-1.3, 0.2, 0.6};
  Rng basis_rng(99);
  const Mat<TestType> MA = with_spectrum<TestType>(basis_rng, a);
  const Mat<TestType> MG = with_spectrum<TestType>(basis_rng, g);
  // The same bases with the clipped spectra.
  Rng basis_rng_again(99);
  const Mat<TestType> MA_clipped = with_spectrum<TestType>(basis_rng_again, {0.9, 0.5, 0.9, -0.3});
  const Mat<TestType> MG_clipped = with_spectrum<TestType>(basis_rng_again, {-0.9, 0.2, 0.6});
  const Mat<TestType> Z = rng.normal<TestType>(3, 4);

  REQUIRE(inverse.compute(MA, MG).info() == kfopt::Status::Success);
  CHECK(inverse.clipped_count() == 3);
  CHECK(inverse.eigenvalues_A().maxCoeff() == TestType(0.9));
  CHECK(inverse.eigenvalues_G().minCoeff() == TestType(-0.9));
  CHECK(error_against(inverse.apply(Z), reference_resolvent(MA_clipped, MG_clipped, Z)) <=
        Tolerance<TestType>::dense);

  // With the default ρ = 1 − sqrt(eps), an eigenvalue of exactly 1 on both sides is still
  // clipped and the result is finite.
  kfopt::IdentityMinusKroneckerInverse<TestType> defaults;
  const Mat<TestType> MA1 = with_spectrum<TestType>(rng, {1.0, 0.3});
  const Mat<TestType> MG1 = with_spectrum<TestType>(rng, {0.1, 1.0, -0.4});
  REQUIRE(defaults.compute(MA1, MG1).info() == kfopt::Status::Success);
  CHECK(defaults.clipped_count() == 2);
  CHECK(defaults.eigenvalues_A().maxCoeff() <= defaults.options().max_abs_eigenvalue);
  CHECK(defaults.min_divisor() >= defaults.options().min_divisor);
  CHECK(defaults.apply(rng.normal<TestType>(3, 2)).allFinite());
}

TEMPLATE_TEST_CASE("IdentityMinusKroneckerInverse without clipping: spectra beyond 1 are "
                   "accepted while I − M_A⊗M_G stays positive definite, refused otherwise",
                   "[kron][identity_minus_kronecker_inverse][guard]", float, double) {
  Rng rng(24);
  kfopt::IdentityMinusKroneckerOptions<TestType> options;
  options.clip_eigenvalues = false;
  kfopt::IdentityMinusKroneckerInverse<TestType> inverse(options);
  const Mat<TestType> Z = rng.normal<TestType>(2, 3);

  // a = 1.5 against g in {−0.5, 0.3}: divisors 1.75, 0.55 (and the others positive).
  const Mat<TestType> MA = with_spectrum<TestType>(rng, {1.5, 0.2, -0.4});
  const Mat<TestType> MG = with_spectrum<TestType>(rng, {-0.5, 0.3});
  REQUIRE(inverse.compute(MA, MG).info() == kfopt::Status::Success);
  CHECK(inverse.clipped_count() == 0);
  CHECK(error_against(inverse.apply(Z), reference_resolvent(MA, MG, Z)) <=
        Tolerance<TestType>::dense);

  SECTION("a product of exactly 1: singular") {
    const Mat<TestType> MA1 = with_spectrum<TestType>(rng, {1.0, 0.2, -0.4});
    const Mat<TestType> MG1 = with_spectrum<TestType>(rng, {1.0, 0.3});
    CHECK(inverse.compute(MA1, MG1).info() == kfopt::Status::NumericalIssue);
    CHECK(inverse.min_divisor() < options.min_divisor);
  }
  SECTION("a product above 1: indefinite") {
    const Mat<TestType> MA1 = with_spectrum<TestType>(rng, {1.5, 0.2, -0.4});
    const Mat<TestType> MG1 = with_spectrum<TestType>(rng, {0.9, 0.3});
    CHECK(inverse.compute(MA1, MG1).info() == kfopt::Status::NumericalIssue);
  }
  CHECK_THROWS_AS(inverse.apply(Z), kfopt::NumericalError);
  CHECK_THROWS_AS(inverse.eigenvalues_A(), kfopt::NumericalError);
}

TEST_CASE("IdentityMinusKroneckerInverse rejects wrong use and bad options",
          "[kron][identity_minus_kronecker_inverse][errors]") {
  using T = double;
  Rng rng(25);
  const Mat<T> MA = with_spectrum<T>(rng, {0.5, -0.2, 0.1});
  const Mat<T> MG = with_spectrum<T>(rng, {0.7, 0.3});
  const Mat<T> Z = rng.normal<T>(2, 3);
  kfopt::IdentityMinusKroneckerInverse<T> inverse;
  CHECK_THROWS_AS(inverse.apply(Z), kfopt::NumericalError);
  REQUIRE(inverse.compute(MA, MG).info() == kfopt::Status::Success);
  const Mat<T> before = inverse.apply(Z);

  const std::string op = "kfopt::IdentityMinusKroneckerInverse::compute";
  std::string msg =
      message_of<kfopt::ShapeError>([&] { inverse.compute(rng.normal<T>(2, 3), MG); });
  CHECK(contains(msg, op));
  CHECK(contains(msg, "M_A"));
  CHECK(contains(msg, "2x3"));
  Mat<T> nonsymmetric = MG;
  nonsymmetric(1, 0) += 0.1;
  msg = message_of<kfopt::InvalidInputError>([&] { inverse.compute(MA, nonsymmetric); });
  CHECK(contains(msg, op));
  CHECK(contains(msg, "M_G"));
  CHECK(contains(msg, "2x2"));
  Mat<T> with_inf = MA;
  with_inf(0, 0) = -std::numeric_limits<T>::infinity();
  CHECK_THROWS_AS(inverse.compute(with_inf, MG), kfopt::InvalidInputError);

  msg = message_of<kfopt::ShapeError>([&] { inverse.apply(rng.normal<T>(3, 2)); });
  CHECK(contains(msg, "kfopt::IdentityMinusKroneckerInverse::apply"));
  CHECK(contains(msg, "3x2"));
  CHECK(contains(msg, "2x3"));

  CHECK(inverse.info() == kfopt::Status::Success);
  CHECK(inverse.apply(Z) == before);
  kfopt::IdentityMinusKroneckerInverse<T> copy = inverse;
  CHECK(copy.apply(Z) == before);
  kfopt::IdentityMinusKroneckerInverse<T> preallocated(3, 2);
  kfopt::IdentityMinusKroneckerInverse<T> preallocated_copy = preallocated;
  CHECK(preallocated_copy.info() == kfopt::Status::NotComputed);

  kfopt::IdentityMinusKroneckerOptions<T> bad;
  bad.max_abs_eigenvalue = 1.0;
  msg = message_of<kfopt::HyperparameterError>(
      [&] { kfopt::IdentityMinusKroneckerInverse<T> x(bad); });
  CHECK(contains(msg, "max_abs_eigenvalue"));
  bad = {};
  bad.min_divisor = 0.0;
  CHECK_THROWS_AS(kfopt::IdentityMinusKroneckerInverse<T>(bad), kfopt::HyperparameterError);
  bad = {};
  bad.max_abs_eigenvalue = 0.9;
  bad.min_divisor = 0.1;  // above (1 − 0.81) / 2: clipped spectra could be refused
  msg = message_of<kfopt::HyperparameterError>(
      [&] { kfopt::IdentityMinusKroneckerInverse<T> x(bad); });
  CHECK(contains(msg, "min_divisor"));
  bad.clip_eigenvalues = false;  // without clipping the floor is free
  CHECK_NOTHROW(kfopt::IdentityMinusKroneckerInverse<T>(bad));
  CHECK_NOTHROW(kfopt::IdentityMinusKroneckerOptions<T>().validate());
  CHECK_NOTHROW(kfopt::IdentityMinusKroneckerOptions<float>().validate());
}
