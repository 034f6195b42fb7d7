// Factored Tikhonov (π) damping and the damped inverses of A ⊗ G from cached
// eigendecompositions, against explicit Kronecker products and explicit inverses.
#include <catch2/catch.hpp>
#include <kfopt/kron/factored_damping.hpp>
#include <kfopt/kron/kronecker_inverse.hpp>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

TEST_CASE("pi-damping: pi balances the factors' mean eigenvalues", "[kron][damping]") {
  // tr A / dim A = 12/3 = 4, tr G / dim G = 2/2 = 1 → π = 2.
  Mat<double> A = Mat<double>::Zero(3, 3), G = Mat<double>::Zero(2, 2);
  A.diagonal() << 2.0, 4.0, 6.0;
  G.diagonal() << 0.5, 1.5;
  const auto d = kfopt::factored_tikhonov_damping(A, G, 0.09);
  CHECK(d.pi == Approx(2.0).epsilon(1e-15));
  CHECK(d.a_shift == Approx(0.6).epsilon(1e-15));   // π √λ = 2 · 0.3
  CHECK(d.g_shift == Approx(0.15).epsilon(1e-15));  // √λ / π = 0.3 / 2
}

TEST_CASE("pi-damping: pi = 1 when a trace is zero; shifts never below the floor",
          "[kron][damping]") {
  const Mat<double> A = Mat<double>::Zero(3, 3);
  const Mat<double> G = Mat<double>::Identity(2, 2);
  auto d = kfopt::factored_tikhonov_damping(A, G, 0.04);
  CHECK(d.pi == 1.0);
  CHECK(d.a_shift == Approx(0.2));
  CHECK(d.g_shift == Approx(0.2));
  d = kfopt::factored_tikhonov_damping(G, A.topLeftCorner(2, 2), 0.04);
  CHECK(d.pi == 1.0);
  // Overflowing ratio → π = 1 rather than inf.
  d = kfopt::factored_tikhonov_damping(1e300, 1, 1e-300, 1, 1.0);
  CHECK(d.pi == 1.0);
  // Floor.
  d = kfopt::factored_tikhonov_damping(1e6, 1, 1.0, 1, 1e-4, 1e-3);
  CHECK(d.pi == Approx(1e3));
  CHECK(d.a_shift == Approx(10.0));
  CHECK(d.g_shift == 1e-3);  // √λ/π = 1e-5 is lifted to the floor
  CHECK_THROWS_AS(kfopt::factored_tikhonov_damping(A, G, -1.0), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::factored_tikhonov_damping(A, G, std::nan("")), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::factored_tikhonov_damping(Mat<double>::Ones(2, 3), G, 1.0),
                  kfopt::ShapeError);
}

TEST_CASE("pi-damping: the damped Kronecker product expands as the paper states",
          "[kron][damping]") {
  // (A + π√λ I) ⊗ (G + √λ/π I) = A ⊗ G + λ I + π√λ I ⊗ G + (√λ/π) A ⊗ I.
  Rng rng(21);
  const Mat<double> A = rng.spd<double>(3), G = rng.spd<double>(4, 0.01, 0.2);
  const double lambda = 0.3;
  const auto d = kfopt::factored_tikhonov_damping(A, G, lambda);
  const Mat<double> IA = Mat<double>::Identity(3, 3), IG = Mat<double>::Identity(4, 4);
  const Mat<double> lhs = dense_kron<double>(A + d.a_shift * IA, G + d.g_shift * IG);
  const Mat<double> rhs = dense_kron(A, G) + lambda * Mat<double>::Identity(12, 12) +
                          d.pi * std::sqrt(lambda) * dense_kron(IA, G) +
                          std::sqrt(lambda) / d.pi * dense_kron(A, IG);
  CHECK(relative_error(lhs, rhs) <= 1e-12);
  // The two cross terms have equal mean eigenvalue (that is what π balances).
  CHECK(d.pi * (G.trace() / 4) == Approx(A.trace() / 3 / d.pi).epsilon(1e-12));
}

TEMPLATE_TEST_CASE("Kronecker inverses: exact Tikhonov and factored damping vs dense",
                   "[kron][inverse]", float, double) {
  Rng rng(22);
  const int shapes[][2] = {{1, 1}, {3, 2}, {2, 5}, {4, 4}, {6, 3}};  // {in, out}
  for (const auto& s : shapes) {
    const int in = s[0], out_dim = s[1];
    const Mat<TestType> A = rng.spd<TestType>(in), G = rng.spd<TestType>(out_dim, 0.2, 2.0);
    kfopt::SymmetricEigenCache<TestType> ca, cg;
    ca.compute(A);
    cg.compute(G);
    const Mat<TestType> Z = rng.normal<TestType>(out_dim, in);
    Mat<TestType> out, work;
    for (double lambda : {0.0, 0.05, 1.0}) {
      const TestType l = static_cast<TestType>(lambda);
      // Exact: (A ⊗ G + λ I)⁻¹ vec(Z).
      REQUIRE(kfopt::kronecker_damped_inverse(ca, cg, l, Z, out, work) == kfopt::Status::Success);
      Mat<TestType> F = dense_kron(A, G);
      F.diagonal().array() += l;
      const Vec<TestType> expected = dense_inverse<TestType>(F) * dense_vec(Z);
      CHECK(relative_error(dense_vec(out), expected) <= Tolerance<TestType>::dense);
      // Factored: ((A + δ_A I) ⊗ (G + δ_G I))⁻¹ vec(Z).
      const auto d = kfopt::factored_tikhonov_damping(A, G, l);
      REQUIRE(kfopt::kronecker_factored_inverse(ca, d.a_shift, cg, d.g_shift, Z, out, work) ==
              kfopt::Status::Success);
      Mat<TestType> Ad = A, Gd = G;
      Ad.diagonal().array() += d.a_shift;
      Gd.diagonal().array() += d.g_shift;
      const Vec<TestType> expected_f = dense_inverse<TestType>(dense_kron(Ad, Gd)) * dense_vec(Z);
      CHECK(relative_error(dense_vec(out), expected_f) <= Tolerance<TestType>::dense);
    }
  }
}

TEST_CASE("Kronecker inverses: singular without damping, shape errors name the shapes",
          "[kron][inverse][errors]") {
  Rng rng(23);
  Mat<double> A = rng.normal<double>(3, 2);
  A = A * A.transpose();  // rank 2 of 3: singular
  const Mat<double> G = rng.spd<double>(2);
  kfopt::SymmetricEigenCache<double> ca, cg;
  ca.compute(A);
  cg.compute(G);
  const Mat<double> Z = rng.normal<double>(2, 3);
  Mat<double> out = Mat<double>::Constant(2, 3, 5.0), work;
  const Mat<double> before = out;
  CHECK(kfopt::kronecker_damped_inverse(ca, cg, 0.0, Z, out, work) == kfopt::Status::NumericalIssue);
  CHECK(kfopt::kronecker_factored_inverse(ca, 0.0, cg, 0.1, Z, out, work) ==
        kfopt::Status::NumericalIssue);
  CHECK(out == before);
  CHECK(kfopt::kronecker_damped_inverse(ca, cg, 1e-3, Z, out, work) == kfopt::Status::Success);
  CHECK(out.allFinite());
  try {
    (void)kfopt::kronecker_damped_inverse(ca, cg, 0.1, Mat<double>(3, 2), out, work);
    FAIL("expected ShapeError");
  } catch (const kfopt::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("kronecker_damped_inverse") != std::string::npos);
    CHECK(msg.find("3x2") != std::string::npos);
    CHECK(msg.find("2x3") != std::string::npos);
  }
}
