// Factored Tikhonov (π) damping and the damped inverses of A ⊗ G from cached
// eigendecompositions, against explicit Kronecker products and explicit inverses.
#include <catch2/catch.hpp>
#include <kfopt/kron/factored_damping.hpp>
#include <kfopt/kron/factor_moments.hpp>
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
    kfopt::FactorSpectrum<TestType> ca(in), cg(out_dim);
    REQUIRE(ca.compute(A) == kfopt::Status::Success);
    REQUIRE(cg.compute(G) == kfopt::Status::Success);
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
  kfopt::FactorSpectrum<double> ca, cg;
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

TEMPLATE_TEST_CASE("Kronecker inverses and products with diagonal factors (one-hot inputs, wide outputs)",
                   "[kron][inverse][diagonal]", float, double) {
  Rng rng(24);
  const int in = 5, out_dim = 3;
  const Mat<TestType> A = rng.spd<TestType>(in), G = rng.spd<TestType>(out_dim, 0.2, 2.0);
  Vec<TestType> a_diag(in), g_diag(out_dim);
  for (int i = 0; i < in; ++i) a_diag(i) = static_cast<TestType>(rng.uniform(0.1, 2.0));
  for (int i = 0; i < out_dim; ++i) g_diag(i) = static_cast<TestType>(rng.uniform(0.1, 2.0));
  const Mat<TestType> Ad = a_diag.asDiagonal(), Gd = g_diag.asDiagonal();
  const Mat<TestType> Z = rng.normal<TestType>(out_dim, in);
  // Every combination of dense and diagonal factors.
  for (int combo = 0; combo < 4; ++combo) {
    const bool a_is_diag = combo & 1, g_is_diag = combo & 2;
    kfopt::FactorSpectrum<TestType> sa(in, a_is_diag ? kfopt::FactorStructure::Diagonal
                                                      : kfopt::FactorStructure::Dense);
    kfopt::FactorSpectrum<TestType> sg(out_dim, g_is_diag ? kfopt::FactorStructure::Diagonal
                                                           : kfopt::FactorStructure::Dense);
    const Mat<TestType> a_arg = a_is_diag ? Mat<TestType>(a_diag) : A;
    const Mat<TestType> g_arg = g_is_diag ? Mat<TestType>(g_diag) : G;
    REQUIRE(sa.compute(a_arg) == kfopt::Status::Success);
    REQUIRE(sg.compute(g_arg) == kfopt::Status::Success);
    const Mat<TestType> Afull = a_is_diag ? Ad : A, Gfull = g_is_diag ? Gd : G;
    Mat<TestType> out, work;
    const TestType lambda = static_cast<TestType>(0.07);
    REQUIRE(kfopt::kronecker_damped_inverse(sa, sg, lambda, Z, out, work) == kfopt::Status::Success);
    Mat<TestType> F = dense_kron(Afull, Gfull);
    F.diagonal().array() += lambda;
    CHECK(relative_error(dense_vec(out), Vec<TestType>(dense_inverse<TestType>(F) * dense_vec(Z))) <=
          Tolerance<TestType>::dense);
    REQUIRE(kfopt::kronecker_factored_inverse(sa, TestType(0.1), sg, TestType(0.2), Z, out, work) ==
            kfopt::Status::Success);
    Mat<TestType> As = Afull, Gs = Gfull;
    As.diagonal().array() += TestType(0.1);
    Gs.diagonal().array() += TestType(0.2);
    CHECK(relative_error(dense_vec(out),
                         Vec<TestType>(dense_inverse<TestType>(dense_kron(As, Gs)) * dense_vec(Z))) <=
          Tolerance<TestType>::dense);
    kfopt::kronecker_factor_multiply(a_arg, g_arg, Z, out, work);
    CHECK(relative_error(dense_vec(out), Vec<TestType>(dense_kron(Afull, Gfull) * dense_vec(Z))) <=
          Tolerance<TestType>::dense);
    CHECK(sa.trace() == Approx(Afull.trace()).epsilon(1e-5));
  }
  kfopt::FactorSpectrum<double> diag(3, kfopt::FactorStructure::Diagonal);
  CHECK_THROWS_AS(diag.compute(Mat<double>::Identity(3, 3)), kfopt::ShapeError);
  Vec<double> neg(3);
  neg << -1e-9, 1.0, 2.0;
  REQUIRE(diag.compute(neg) == kfopt::Status::Success);
  CHECK(diag.eigenvalues()(0) == 0.0);  // clipped like a dense factor's eigenvalues
  CHECK_THROWS_AS(diag.eigenvectors(), kfopt::InvalidInputError);
}

TEST_CASE("factor moving average: the diagonal mode keeps E[a_i^2] (exact for one-hot inputs)",
          "[kron][moments][diagonal]") {
  Rng rng(25);
  Mat<double> onehot = Mat<double>::Zero(6, 4);
  const int hot[6] = {0, 2, 2, 3, 1, 2};
  for (int r = 0; r < 6; ++r) onehot(r, hot[r]) = 1.0;
  kfopt::FactorMovingAverage<double> dense(4, {0.9, true, false});
  kfopt::FactorMovingAverage<double> diag(4, {0.9, true, true});
  REQUIRE(dense.update(onehot) == kfopt::Status::Success);
  REQUIRE(diag.update(onehot) == kfopt::Status::Success);
  CHECK(diag.value().cols() == 1);
  CHECK(diag.value().rows() == 5);
  CHECK(diag.value().col(0) == dense.value().diagonal());
  // Without the homogeneous coordinate, one-hot inputs give an exactly diagonal A.
  kfopt::FactorMovingAverage<double> no_bias(4);
  no_bias.update(onehot);
  Mat<double> off = no_bias.value();
  off.diagonal().setZero();
  CHECK(off.norm() == 0.0);
  CHECK_THROWS_AS((kfopt::TemporalFactorMovingAverage<double>(3, {0.9, false, true})),
                  kfopt::HyperparameterError);
}
