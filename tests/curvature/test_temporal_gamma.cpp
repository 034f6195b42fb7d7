// The kron-layer pieces of RNN K-FAC that the recurrent block builds on, against
// independent references: η_T(x) and γ(x) of Option 1 (eq. 8, C.3) against the defining sum
// Σ_{d=−T}^{T} (T − |d|) x^{|d|} in 113-bit quad precision (only + and ×, no libquadmath),
// including x near ±1 and huge T; the moving length histogram against its formula; the
// Stein solver (I − P_A ⊗ P_G)⁻¹ against a dense LU inverse.
#include <catch2/catch.hpp>
#include <kfopt/kron/kronecker_stein_inverse.hpp>
#include <kfopt/kron/sequence_lengths.hpp>
#include <kfopt/kron/temporal_gamma.hpp>

#include <cmath>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

__extension__ typedef __float128 quad;

// η_T(x) = T + 2 Σ_{d=1}^{T−1} (T − d) x^d in quad precision: the definition, nothing else.
double eta_by_sum(double x, long T) {
  if (T == 0) return 0.0;
  quad power = 1, sum = 0;
  const quad qx = x;
  for (long d = 1; d < T; ++d) {
    power *= qx;
    sum += static_cast<quad>(T - d) * power;
  }
  return static_cast<double>(static_cast<quad>(T) + 2 * sum);
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

}  // namespace

TEST_CASE("temporal eta: equals the defining sum for x in [-1, 1], near 1 and near -1",
          "[curvature][rnn][gamma]") {
  const std::vector<double> xs = {-1.0,          -1.0 + 1e-12, -1.0 + 1e-9, -1.0 + 1e-6,
                                  -0.999,        -0.5,         -1e-3,       0.0,
                                  1e-3,          0.25,         0.5,         0.9,
                                  0.99,          1.0 - 1e-4,   1.0 - 1e-7,  1.0 - 1e-10,
                                  1.0 - 1e-13,   1.0 - 1e-16,  1.0};
  const std::vector<long> Ts = {1, 2, 3, 4, 5, 10, 37, 100, 1000, 4096, 20001};
  double worst = 0.0;
  for (long T : Ts) {
    for (double x : xs) {
      const double got = kfopt::temporal_eta<double>(x, static_cast<double>(T));
      const double want = eta_by_sum(x, T);
      if (want == 0.0) {
        CHECK(got == 0.0);  // x = −1, even T: perfectly anti-correlated steps cancel
        continue;
      }
      const double err = relative(got, want);
      worst = std::max(worst, err);
      INFO("T = " << T << ", x = " << x << ": got " << got << ", want " << want);
      CHECK(err <= 1e-13);
    }
  }
  WARN("temporal_eta: worst relative error vs quad-precision sum = " << worst);
  // Exact values: η_T(1) = T², η_T(0) = T, η_T(−1) = T mod 2.
  for (long T : Ts) {
    CHECK(kfopt::temporal_eta<double>(1.0, T) == static_cast<double>(T) * T);
    CHECK(kfopt::temporal_eta<double>(0.0, T) == static_cast<double>(T));
    CHECK(kfopt::temporal_eta<double>(-1.0, T) == static_cast<double>(T % 2));
  }
}

TEST_CASE("temporal eta: huge T neither overflows nor underflows", "[curvature][rnn][gamma]") {
  const double T = 2147483647.0;  // the longest length an int can hold
  // |x| < 1 away from 1: x^T underflows to 0 and η = (T(1 − x²) − 2x) / (1 − x)².
  for (double x : {-0.999999, -0.5, 0.5, 0.999}) {
    const long double lx = x;
    const long double want = (static_cast<long double>(T) * (1 - lx * lx) - 2 * lx) / ((1 - lx) * (1 - lx));
    const double got = kfopt::temporal_eta<double>(x, T);
    CHECK(std::isfinite(got));
    CHECK(relative(got, static_cast<double>(want)) <= 1e-13);
  }
  // Near 1 with T·u ∈ [0.1, 1] (the series branch): against the closed form in long double,
  // where the cancellation costs only a factor 1/(T u) ≤ 10 of long double's precision.
  for (double tu : {0.1, 0.3, 0.7, 1.0}) {
    const double u = tu / T;
    const double x = 1.0 - u;
    const long double lu = 1.0L - static_cast<long double>(x);  // the u that x represents
    const long double lT = T;
    const long double power = std::expm1(lT * std::log1p(-lu));  // x^T − 1
    const long double want = (lT * lu * (2 - lu) + 2 * (1 - lu) * power) / (lu * lu);
    const double got = kfopt::temporal_eta<double>(x, T);
    INFO("T u = " << tu);
    CHECK(relative(got, static_cast<double>(want)) <= 1e-12);
  }
  CHECK(kfopt::temporal_eta<double>(1.0, T) == T * T);
  CHECK(std::isfinite(kfopt::temporal_eta<float>(0.9999f, 2147483647.0f)));
}

TEST_CASE("temporal gamma: 1 / E_T[eta_T], limit 1/E_T[T^2] at x = 1, float agrees",
          "[curvature][rnn][gamma]") {
  const kfopt::SequenceLengths lengths{{3, 10, 40}, {0.2, 0.5, 0.3}};
  lengths.validate("test");
  CHECK(lengths.mean() == Approx(0.6 + 5 + 12));
  CHECK(lengths.second_moment() == Approx(531.8));
  CHECK(kfopt::temporal_gamma<double>(1.0, lengths) == Approx(1.0 / 531.8).epsilon(1e-15));
  for (double x : {-0.9, -0.3, 0.0, 0.4, 0.95, 1.0 - 1e-9}) {
    const double want = 1.0 / (0.2 * eta_by_sum(x, 3) + 0.5 * eta_by_sum(x, 10) + 0.3 * eta_by_sum(x, 40));
    CHECK(relative(kfopt::temporal_gamma<double>(x, lengths), want) <= 1e-13);
    CHECK(relative(static_cast<double>(kfopt::temporal_gamma<float>(static_cast<float>(x), lengths)),
                   1.0 / (0.2 * eta_by_sum(static_cast<float>(x), 3) +
                          0.5 * eta_by_sum(static_cast<float>(x), 10) +
                          0.3 * eta_by_sum(static_cast<float>(x), 40))) <= 1e-6);
  }
  // Continuity at 1: the closed form would give 0/0 here.
  CHECK(relative(kfopt::temporal_gamma<double>(1.0 - 1e-15, lengths), 1.0 / 531.8) <= 1e-12);
  // γ(x) for a single length T = 1 is 1 for every x (no temporal sum): K-FAC's case.
  for (double x : {-1.0, -0.7, 0.0, 0.3, 1.0}) {
    CHECK(kfopt::temporal_gamma<double>(x, kfopt::SequenceLengths::constant(1)) == 1.0);
  }
  // Only even lengths and x = −1: E[η] = 0, γ = +∞ (documented).
  CHECK(std::isinf(kfopt::temporal_gamma<double>(-1.0, kfopt::SequenceLengths{{2, 4}, {0.5, 0.5}})));
  // Out of range.
  CHECK_THROWS_AS(kfopt::temporal_eta<double>(1.0 + 1e-12, 5), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::temporal_eta<double>(std::nan(""), 5), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::temporal_eta<double>(0.5, -1), kfopt::InvalidInputError);
  CHECK_THROWS_AS(kfopt::temporal_eta<double>(0.5, 2.5), kfopt::InvalidInputError);
  CHECK_THROWS_AS((kfopt::SequenceLengths{{1, 1}, {0.5, 0.5}}.validate("test")),
                  kfopt::InvalidInputError);
  CHECK_THROWS_AS((kfopt::SequenceLengths{{1, 2}, {0.5, 0.6}}.validate("test")),
                  kfopt::InvalidInputError);
}

TEST_CASE("sequence length average: bias-corrected moving histogram", "[curvature][rnn][lengths]") {
  const double beta = 0.5;
  kfopt::SequenceLengthAverage avg(beta);
  CHECK_FALSE(avg.has_data());
  CHECK(avg.mean() == 0.0);
  Eigen::VectorXi b1(4), b2(2), b3(3);
  b1 << 3, 3, 5, 0;
  b2 << 7, 3;
  b3 << 1, 1, 1;
  avg.update(b1);
  avg.update(b2);
  avg.update(b3);
  // ω = Σ_b β^{3−b} h_b / Σ_b β^{3−b} with weights 1/4, 1/2, 1 for b = 1, 2, 3.
  const double w1 = 0.25, w2 = 0.5, w3 = 1.0, W = w1 + w2 + w3;
  std::vector<double> want(8, 0.0);
  want[3] += w1 * 0.5;
  want[5] += w1 * 0.25;
  want[0] += w1 * 0.25;
  want[7] += w2 * 0.5;
  want[3] += w2 * 0.5;
  want[1] += w3 * 1.0;
  const kfopt::SequenceLengths d = avg.distribution();
  REQUIRE(d.size() == 5);  // lengths 0, 1, 3, 5, 7
  double mean = 0.0;
  for (std::size_t k = 0; k < d.size(); ++k) {
    const auto T = static_cast<std::size_t>(d.lengths[k]);
    CHECK(d.weights[k] == Approx(want[T] / W).epsilon(1e-14));
    mean += static_cast<double>(T) * want[T] / W;
  }
  CHECK(avg.mean() == Approx(mean).epsilon(1e-14));
  // A cutoff drops the lightest lengths and renormalizes.
  const kfopt::SequenceLengths cut = avg.distribution(0.2);
  CHECK(cut.size() < d.size());
  double total = 0.0;
  for (double w : cut.weights) total += w;
  CHECK(total == Approx(1.0).epsilon(1e-15));
  // Bad input changes nothing.
  const auto before = avg.state().histogram;
  Eigen::VectorXi bad(2);
  bad << 2, -1;
  CHECK_THROWS_AS(avg.update(bad), kfopt::InvalidInputError);
  CHECK_THROWS_AS(avg.update(Eigen::VectorXi()), kfopt::InvalidInputError);
  CHECK(avg.state().histogram == before);
  CHECK_THROWS_AS(kfopt::SequenceLengthAverage(0.0), kfopt::HyperparameterError);
  auto s = avg.state();
  s.histogram[1] = -0.1;
  CHECK_THROWS_AS(avg.set_state(s), kfopt::InvalidInputError);
}

TEST_CASE("Stein solver: (I - P_A (x) P_G)^-1 for general P, both sides, against dense LU",
          "[curvature][rnn][stein]") {
  Rng rng(811);
  const int n = 4, p = 3;
  // Non-symmetric, with complex eigenvalues (a rotation block), spectral radius < 1.
  Mat<double> PA = rng.normal<double>(n, n);
  PA *= 0.8 / Eigen::JacobiSVD<Mat<double>>(PA).singularValues()(0);
  Mat<double> PG(p, p);
  PG << 0.0, -0.7, 0.1, 0.7, 0.0, 0.2, 0.0, 0.0, 0.5;
  kfopt::KroneckerSteinInverse<double> stein;
  CHECK(stein.info() == kfopt::Status::NotComputed);
  REQUIRE(stein.compute(PA, PG).info() == kfopt::Status::Success);
  const Mat<double> I = Mat<double>::Identity(n * p, n * p);
  const Mat<double> plain = dense_inverse<double>(Mat<double>(I - dense_kron(PA, PG)));
  const Mat<double> transposed =
      dense_inverse<double>(Mat<double>(I - dense_kron<double>(PA.transpose(), PG.transpose())));
  const Mat<double> Z = rng.normal<double>(p, n);
  Mat<double> out;
  stein.apply(Z, out, kfopt::SteinSide::Plain);
  CHECK(relative_error(dense_vec(out), Vec<double>(plain * dense_vec(Z))) <= 1e-12);
  stein.apply(Z, out, kfopt::SteinSide::Transposed);
  CHECK(relative_error(dense_vec(out), Vec<double>(transposed * dense_vec(Z))) <= 1e-12);
  stein.apply_sum(Z, out);
  CHECK(relative_error(dense_vec(out), Vec<double>((plain + transposed) * dense_vec(Z))) <= 1e-12);
  // Aliasing the output with the input is allowed.
  Mat<double> Y = Z;
  stein.apply(Y, Y);
  CHECK(relative_error(dense_vec(Y), Vec<double>(plain * dense_vec(Z))) <= 1e-12);
  // An eigenvalue product of 1 makes I − P_A ⊗ P_G singular: refused, previous kept.
  const Mat<double> Ia = Mat<double>::Identity(n, n), Ig = Mat<double>::Identity(p, p);
  CHECK(stein.compute(Ia, Ig).info() == kfopt::Status::NumericalIssue);
  CHECK_THROWS_AS(stein.apply(rng.normal<double>(p + 1, n), out), kfopt::ShapeError);
  stein.apply(Z, out);
  CHECK(relative_error(dense_vec(out), Vec<double>(plain * dense_vec(Z))) <= 1e-12);
  kfopt::KroneckerSteinInverse<double> empty;
  CHECK_THROWS_AS(empty.apply(Z, out), kfopt::NumericalError);
  CHECK_THROWS_AS(empty.compute(rng.normal<double>(2, 3), Ig), kfopt::ShapeError);
}
