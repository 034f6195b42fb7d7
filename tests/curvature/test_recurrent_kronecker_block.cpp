// RecurrentKroneckerBlock against dense brute force (RNN K-FAC, Martens, Ba & Johnson 2018):
// the factors are rebuilt from the sequences by explicit loops, V0 = A0 ⊗ G0 and
// V1 = A1 ⊗ G1 are formed entry by entry, Ψ = V1 V0⁻¹, V_d = Ψ^d V0 (V_{−d} = V_dᵀ) and
// F_T = Σ_{d=−T}^{T} (T − |d|) V_d are summed densely, and every approximation's inverse is
// compared with the dense inverse of its defining matrix: Independent = (E_T[T] V0)⁻¹,
// Option 1 = E_T[F_T]⁻¹ (symmetrized V1, exact for every length mix), Option 2 = eq. 9 (and
// its approach to F_T⁻¹ as T grows). Plus: T = 1 equals dense K-FAC, multiply/to_dense,
// clipping at ψ = 1, an end-to-end linear Gaussian chain where Option 1/2 approximate the
// true Fisher of Σ_t w_t better than Independent, bad input, float.
#include <catch2/catch.hpp>
#include <kfopt/curvature/recurrent_kronecker_block.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <cmath>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;
using kfopt::RecurrentApproximation;
using kfopt::Status;

namespace {

using Block = kfopt::RecurrentKroneckerBlock<double>;
using Damping = kfopt::BlockDamping<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const RecurrentApproximation kAll[] = {RecurrentApproximation::Independent,
                                       RecurrentApproximation::Option1,
                                       RecurrentApproximation::Option2};

Damping factored(double lambda) { return Damping{kfopt::DampingStyle::Factored, lambda, 0.0}; }

Block::Options block_options(RecurrentApproximation approx, bool bias) {
  Block::Options o;
  o.approximation = approx;
  o.bias = bias;
  o.decay = 1.0;  // plain mean of batches: easy to reproduce densely
  return o;
}

Mat<double> scaled_to_norm(Mat<double> M, double norm) {
  return M * (norm / Eigen::JacobiSVD<Mat<double>>(M).singularValues()(0));
}

// Time-major AR(1) sequences x_t = Φ x_{t−1} + ε_t, padded rows (t ≥ T_i) set to `pad`.
Mat<double> ar_sequences(Rng& rng, const Eigen::VectorXi& lengths, int t_max, const Mat<double>& Phi,
                         double pad = kNaN) {
  const Eigen::Index m = lengths.size(), d = Phi.rows();
  Mat<double> X(t_max * m, d);
  for (Eigen::Index i = 0; i < m; ++i) {
    Vec<double> x = rng.normal<double>(d, 1);
    for (int t = 0; t < t_max; ++t) {
      if (t > 0) x = Phi * x + rng.normal<double>(d, 1);
      if (t < lengths(i)) {
        X.row(t * m + i) = x.transpose();
      } else {
        X.row(t * m + i).setConstant(pad);
      }
    }
  }
  return X;
}

struct Factors {
  Mat<double> A0, A1, G0, G1;
};

// One batch: Σ_i Σ_{t<T_i} x xᵀ / Σ T_i and Σ_i Σ_{t<T_i−1} x_{t+1} x_tᵀ / Σ T_i by explicit
// outer products (homogeneous 1 appended for A with a bias); `real(t, i)` marks real steps.
template <typename Real>
std::pair<Mat<double>, Mat<double>> moments(const Mat<double>& X, Eigen::Index m, Real real,
                                            bool homogeneous) {
  const Eigen::Index t_max = X.rows() / m, n = X.cols() + (homogeneous ? 1 : 0);
  auto at = [&](Eigen::Index t, Eigen::Index i) {
    Vec<double> x(n);
    x.head(X.cols()) = X.row(t * m + i).transpose();
    if (homogeneous) x(n - 1) = 1.0;
    return x;
  };
  Mat<double> M0 = Mat<double>::Zero(n, n), M1 = Mat<double>::Zero(n, n);
  double count = 0;
  for (Eigen::Index i = 0; i < m; ++i) {
    for (Eigen::Index t = 0; t < t_max; ++t) {
      if (!real(t, i)) continue;
      count += 1;
      M0 += at(t, i) * at(t, i).transpose();
      if (t + 1 < t_max && real(t + 1, i)) M1 += at(t + 1, i) * at(t, i).transpose();
    }
  }
  return {M0 / count, M1 / count};
}

Factors reference_factors(const Mat<double>& a, const Mat<double>& g, const Eigen::VectorXi& lengths,
                          bool bias) {
  const auto real = [&](Eigen::Index t, Eigen::Index i) { return t < lengths(i); };
  auto ma = moments(a, lengths.size(), real, bias);
  auto mg = moments(g, lengths.size(), real, false);
  return {ma.first, ma.second, mg.first, mg.second};
}

Mat<double> sym(const Mat<double>& M) { return 0.5 * (M + M.transpose()); }
Mat<double> eye(Eigen::Index n) { return Mat<double>::Identity(n, n); }

// F_T = Σ_{d=−T}^{T} (T − |d|) V_d, V_d = Ψ^d V0 for d ≥ 0, V_{−d} = V_dᵀ, Ψ = V1 V0⁻¹.
Mat<double> dense_F_T(const Mat<double>& V0, const Mat<double>& V1, int T) {
  const Mat<double> Psi = V1 * dense_inverse<double>(V0);
  Mat<double> F = T * V0, Vd = V0;
  for (int d = 1; d < T; ++d) {
    Vd = Psi * Vd;
    F += (T - d) * (Vd + Vd.transpose());
  }
  return F;
}

// E_T[F_T] over a length distribution.
Mat<double> dense_expected_F(const Mat<double>& V0, const Mat<double>& V1,
                             const std::vector<int>& lengths, const std::vector<double>& weights) {
  Mat<double> F = Mat<double>::Zero(V0.rows(), V0.cols());
  for (std::size_t k = 0; k < lengths.size(); ++k) F += weights[k] * dense_F_T(V0, V1, lengths[k]);
  return F;
}

// Empirical length distribution of one batch.
void length_distribution(const Eigen::VectorXi& lengths, std::vector<int>& Ts, std::vector<double>& ws) {
  Ts.clear();
  ws.clear();
  for (int T = 0; T <= lengths.maxCoeff(); ++T) {
    const double c = static_cast<double>((lengths.array() == T).count());
    if (c > 0) {
      Ts.push_back(T);
      ws.push_back(c / static_cast<double>(lengths.size()));
    }
  }
}

// Factored damping of V0 by λ/E written out: π = sqrt((tr A0/n)/(tr G0/p)).
std::pair<Mat<double>, Mat<double>> damped_factors(const Factors& f, double lambda_over_E) {
  const double pi = std::sqrt((f.A0.trace() / f.A0.rows()) / (f.G0.trace() / f.G0.rows()));
  const double r = std::sqrt(lambda_over_E);
  return {f.A0 + pi * r * eye(f.A0.rows()), f.G0 + r / pi * eye(f.G0.rows())};
}

// Symmetric V^{-1/2} of a dense SPD matrix (test-side eigendecomposition of the big matrix).
Mat<double> dense_inv_sqrt(const Mat<double>& V) {
  Eigen::SelfAdjointEigenSolver<Mat<double>> es(V);
  return es.eigenvectors() * es.eigenvalues().cwiseSqrt().cwiseInverse().asDiagonal() *
         es.eigenvectors().transpose();
}

// Eq. 9: F̂⁻¹ = E⁻¹ V0^{-1/2} (I − Ψ̂)(I − Ψ̂ᵀΨ̂)⁻¹(I − Ψ̂ᵀ) V0^{-1/2}, Ψ̂ = V0^{-1/2} V1 V0^{-1/2}.
Mat<double> dense_option2_inverse(const Mat<double>& V0, const Mat<double>& V1, double E) {
  const Mat<double> R = dense_inv_sqrt(V0);
  const Mat<double> P = R * V1 * R;
  const Mat<double> I = eye(V0.rows());
  return (R * (I - P) * dense_inverse<double>(Mat<double>(I - P.transpose() * P)) *
          (I - P.transpose()) * R) /
         E;
}

Vec<double> apply(Block& b, const Mat<double>& Z, const Damping& d) {
  Mat<double> out;
  const Status s = b.apply_inverse(Z, d, out);
  REQUIRE(s == Status::Success);
  return dense_vec(out);
}

Vec<double> times(Block& b, const Mat<double>& Z) {
  Mat<double> out;
  REQUIRE(b.multiply(Z, out) == Status::Success);
  return dense_vec(out);
}

// A block state that holds the given factors and a single length T (for controlled Ψ).
Block::State injected_state(const Factors& f, int T) {
  Block::State s;
  s.a.average0 = f.A0;
  s.a.average1 = f.A1;
  s.a.updates = 1;
  s.a.weight.weight = 1.0;
  s.g.average0 = f.G0;
  s.g.average1 = f.G1;
  s.g.updates = 1;
  s.g.weight.weight = 1.0;
  s.lengths.histogram.assign(static_cast<std::size_t>(T) + 1, 0.0);
  s.lengths.histogram[static_cast<std::size_t>(T)] = 1.0;
  s.lengths.updates = 1;
  s.lengths.weight.weight = 1.0;
  return s;
}

// Stationary second moment of x_t = Ψ x_{t−1} + ε_t, ε ~ N(0, Σ): Σ_k Ψ^k Σ Ψ^kᵀ.
Mat<double> stationary(const Mat<double>& Psi, const Mat<double>& Sigma) {
  Mat<double> S = Sigma, term = Sigma;
  for (int k = 0; k < 2000 && term.norm() > 1e-18 * S.norm(); ++k) {
    term = Psi * term * Psi.transpose();
    S += term;
  }
  return sym(S);
}

// Controlled factors: A0 the stationary moment of a chain with transition Ψ_A (so that
// [[A0, A1], [A1ᵀ, A0]] is a covariance, B.2), A1 = Ψ_A A0, same for G.
Factors chain_factors(Rng& rng, int n, int p, double norm_a, double norm_g) {
  const Mat<double> PsiA = scaled_to_norm(rng.normal<double>(n, n), norm_a);
  const Mat<double> PsiG = scaled_to_norm(rng.normal<double>(p, p), norm_g);
  const Mat<double> A0 = stationary(PsiA, rng.spd<double>(n, 0.5, 2.0));
  const Mat<double> G0 = stationary(PsiG, rng.spd<double>(p, 0.5, 2.0));
  return {A0, PsiA * A0, G0, PsiG * G0};
}

}  // namespace

TEST_CASE("recurrent block, independent: (E_T[T] V0 + damping)^-1 z for mixed lengths",
          "[curvature][rnn]") {
  Rng rng(901);
  const int in = 3, out = 2, t_max = 7;
  Eigen::VectorXi lengths(5);
  lengths << 7, 3, 5, 1, 6;
  const Mat<double> a = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(in, in), 0.7));
  const Mat<double> g = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(out, out), 0.6));
  Block b("rnn", in, out, block_options(RecurrentApproximation::Independent, true));
  REQUIRE(b.update_statistics(a, g, lengths) == Status::Success);
  REQUIRE(b.refresh() == Status::Success);
  const Factors f = reference_factors(a, g, lengths, true);
  CHECK(relative_error(b.a0(), f.A0) <= 1e-13);
  CHECK(relative_error(b.a1(), f.A1) <= 1e-13);
  CHECK(relative_error(b.g1(), f.G1) <= 1e-13);
  const double E = 22.0 / 5.0;
  CHECK(b.refreshed_mean_length() == Approx(E).epsilon(1e-15));
  const Mat<double> Z = rng.normal<double>(out, in + 1);
  const Eigen::Index N = out * (in + 1);
  for (double lambda : {0.0, 0.03}) {
    const auto damped = damped_factors(f, lambda / E);
    const Mat<double> F = E * dense_kron(damped.first, damped.second);
    const double err = relative_error(apply(b, Z, factored(lambda)), Vec<double>(dense_inverse(F) * dense_vec(Z)));
    INFO("lambda = " << lambda);
    CHECK(err <= 1e-10);
  }
  // Exact Tikhonov damping is available for the independent approximation only.
  const Damping exact{kfopt::DampingStyle::Exact, 0.03, 0.0};
  const Mat<double> F = E * dense_kron(f.A0, f.G0) + 0.03 * eye(N);
  CHECK(relative_error(apply(b, Z, exact), Vec<double>(dense_inverse(F) * dense_vec(Z))) <= 1e-10);
  Mat<double> out_m;
  b.set_approximation(RecurrentApproximation::Option1);
  CHECK_FALSE(b.supports(kfopt::DampingStyle::Exact));
  CHECK_THROWS_AS((void)b.apply_inverse(Z, exact, out_m), kfopt::InvalidInputError);
}

TEST_CASE("recurrent block, option 1: equals E_T[F_T]^-1 z with symmetrized V1, exactly",
          "[curvature][rnn]") {
  Rng rng(902);
  const int in = 3, out = 2, t_max = 8, m = 6;
  const Mat<double> Phi_a = scaled_to_norm(rng.normal<double>(in, in), 0.8);
  const Mat<double> Phi_g = scaled_to_norm(rng.normal<double>(out, out), 0.7);
  Eigen::VectorXi single = Eigen::VectorXi::Constant(m, 6), mixed(m);
  mixed << 8, 2, 5, 8, 3, 7;
  for (const Eigen::VectorXi& lengths : {single, mixed}) {
    const Mat<double> a = ar_sequences(rng, lengths, t_max, Phi_a);
    const Mat<double> g = ar_sequences(rng, lengths, t_max, Phi_g);
    Block b("rnn", in, out, block_options(RecurrentApproximation::Option1, true));
    REQUIRE(b.update_statistics(a, g, lengths) == Status::Success);
    REQUIRE(b.refresh() == Status::Success);
    // The same batch through a mask gives the same block.
    Block::Mask mask(t_max, m);
    for (int t = 0; t < t_max; ++t)
      for (int i = 0; i < m; ++i) mask(t, i) = t < lengths(i);
    Block bm("rnn", in, out, block_options(RecurrentApproximation::Option1, true));
    REQUIRE(bm.update_statistics(a, g, mask) == Status::Success);
    REQUIRE(bm.refresh() == Status::Success);

    const Factors f = reference_factors(a, g, lengths, true);
    std::vector<int> Ts;
    std::vector<double> ws;
    length_distribution(lengths, Ts, ws);
    const double E = lengths.cast<double>().mean();
    const Mat<double> V1 = dense_kron<double>(sym(f.A1), sym(f.G1));
    const Mat<double> Z = rng.normal<double>(out, in + 1);
    for (double lambda : {0.0, 0.05}) {
      const auto damped = damped_factors(f, lambda / E);
      const Mat<double> V0 = dense_kron(damped.first, damped.second);
      const Mat<double> F = dense_expected_F(V0, V1, Ts, ws);
      const Vec<double> want = dense_inverse(F) * dense_vec(Z);
      const double err = relative_error(apply(b, Z, factored(lambda)), want);
      INFO("lengths " << lengths.transpose() << ", lambda = " << lambda);
      CHECK(err <= 1e-9);
      CHECK(relative_error(apply(bm, Z, factored(lambda)), want) <= 1e-9);
      if (lambda == 0.0) {
        // multiply is the undamped F̂ = E_T[F_T] itself.
        CHECK(relative_error(times(b, Z), Vec<double>(F * dense_vec(Z))) <= 1e-10);
      }
      WARN("option 1 vs dense E_T[F_T]^-1 z (" << (lengths == single ? "single" : "mixed")
                                               << " lengths, lambda " << lambda << "): " << err);
    }
  }
}

TEST_CASE("recurrent block, option 2: equals the dense limiting formula (eq. 9)", "[curvature][rnn]") {
  Rng rng(903);
  const int in = 2, out = 3, t_max = 9, m = 5;
  Eigen::VectorXi lengths(m);
  lengths << 9, 4, 9, 6, 2;
  const Mat<double> a = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(in, in), 0.8));
  const Mat<double> g = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(out, out), 0.7));
  Block b("rnn", in, out, block_options(RecurrentApproximation::Option2, true));
  REQUIRE(b.update_statistics(a, g, lengths) == Status::Success);
  REQUIRE(b.refresh() == Status::Success);
  const Factors f = reference_factors(a, g, lengths, true);
  const double E = lengths.cast<double>().mean();
  const Mat<double> V1 = dense_kron(f.A1, f.G1);  // not symmetric
  CHECK((V1 - V1.transpose()).norm() > 1e-3 * V1.norm());
  const Mat<double> Z = rng.normal<double>(out, in + 1);
  for (double lambda : {0.0, 0.05}) {
    const auto damped = damped_factors(f, lambda / E);
    const Mat<double> V0 = dense_kron(damped.first, damped.second);
    const Mat<double> Finv = dense_option2_inverse(V0, V1, E);
    const double err = relative_error(apply(b, Z, factored(lambda)), Vec<double>(Finv * dense_vec(Z)));
    INFO("lambda = " << lambda);
    CHECK(err <= 1e-9);
    WARN("option 2 vs dense eq. 9 (lambda " << lambda << "): " << err);
    if (lambda == 0.0) {
      CHECK(relative_error(times(b, Z), Vec<double>(dense_inverse(Finv) * dense_vec(Z))) <= 1e-9);
    }
  }
  CHECK(b.clipped_psi_count() == 0);
}

TEST_CASE("recurrent block, option 2 approaches F_T^-1 z as T grows; option 1 exact at every T",
          "[curvature][rnn]") {
  Rng rng(904);
  const int n = 3, p = 2;
  const Factors f = chain_factors(rng, n, p, 0.7, 0.6);
  const Mat<double> V0 = dense_kron(f.A0, f.G0);
  const Mat<double> V1 = dense_kron(f.A1, f.G1);
  const Mat<double> V1s = dense_kron<double>(sym(f.A1), sym(f.G1));
  const Mat<double> Z = rng.normal<double>(p, n);
  Block b("rnn", n, p, block_options(RecurrentApproximation::Option2, false));
  double previous = std::numeric_limits<double>::infinity(), first = 0.0, last = 0.0;
  for (int T : {4, 16, 64, 256}) {
    b.set_state(injected_state(f, T));
    REQUIRE(b.refresh() == Status::Success);
    b.set_approximation(RecurrentApproximation::Option2);
    const double err = relative_error(apply(b, Z, factored(0.0)),
                                      Vec<double>(dense_inverse<double>(dense_F_T(V0, V1, T)) * dense_vec(Z)));
    WARN("option 2 vs exact F_T^-1 z, T = " << T << ": " << err);
    CHECK(err < previous);
    if (T == 4) first = err;
    last = err;
    previous = err;
    b.set_approximation(RecurrentApproximation::Option1);
    CHECK(relative_error(apply(b, Z, factored(0.0)),
                         Vec<double>(dense_inverse<double>(dense_F_T(V0, V1s, T)) * dense_vec(Z))) <= 1e-9);
  }
  CHECK(last < first / 30.0);  // O(1/T): 64× longer, well over 30× closer
}

TEST_CASE("recurrent block: with T = 1 all three approximations equal dense K-FAC",
          "[curvature][rnn]") {
  Rng rng(905);
  const int in = 4, out = 3, k = 9;
  const Mat<double> a = rng.normal<double>(k, in), g = rng.normal<double>(k, out);
  kfopt::KroneckerBlockOptions dopt;
  dopt.decay = 1.0;
  kfopt::KroneckerBlock<double> dense("fc", in, out, dopt);
  REQUIRE(dense.update_statistics(a, g) == Status::Success);
  REQUIRE(dense.refresh() == Status::Success);
  const Mat<double> Z = rng.normal<double>(out, in + 1);
  for (double lambda : {0.0, 0.02}) {
    Mat<double> want;
    REQUIRE(dense.apply_inverse(Z, factored(lambda), want) == Status::Success);
    for (auto approx : kAll) {
      Block b("rnn", in, out, block_options(approx, true));
      REQUIRE(b.update_statistics(a, g, Eigen::VectorXi::Ones(k)) == Status::Success);
      CHECK(b.a1().norm() == 0.0);  // length-1 sequences: no A1 term
      CHECK(b.g1().norm() == 0.0);
      REQUIRE(b.refresh() == Status::Success);
      CHECK(b.refreshed_mean_length() == 1.0);
      INFO(kfopt::to_string(approx) << ", lambda = " << lambda);
      CHECK(relative_error(apply(b, Z, factored(lambda)), dense_vec(want)) <= 1e-12);
    }
  }
}

TEST_CASE("recurrent block: multiply, to_dense and apply_inverse are consistent",
          "[curvature][rnn]") {
  Rng rng(906);
  const int in = 2, out = 2, t_max = 6;
  Eigen::VectorXi lengths(4);
  lengths << 6, 2, 4, 5;
  const Mat<double> a = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(in, in), 0.9));
  const Mat<double> g = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(out, out), 0.8));
  const Factors f = reference_factors(a, g, lengths, true);
  const double E = lengths.cast<double>().mean();
  std::vector<int> Ts;
  std::vector<double> ws;
  length_distribution(lengths, Ts, ws);
  const Mat<double> V0 = dense_kron(f.A0, f.G0);
  const Mat<double> Z = rng.normal<double>(out, in + 1);
  for (auto approx : kAll) {
    INFO(kfopt::to_string(approx));
    Block b("rnn", in, out, block_options(approx, true));
    REQUIRE(b.update_statistics(a, g, lengths) == Status::Success);
    REQUIRE(b.refresh() == Status::Success);
    Mat<double> F_ref;
    if (approx == RecurrentApproximation::Independent) F_ref = E * V0;
    if (approx == RecurrentApproximation::Option1)
      F_ref = dense_expected_F(V0, dense_kron<double>(sym(f.A1), sym(f.G1)), Ts, ws);
    if (approx == RecurrentApproximation::Option2)
      F_ref = dense_inverse<double>(dense_option2_inverse(V0, dense_kron(f.A1, f.G1), E));
    CHECK(relative_error(b.to_dense(), F_ref) <= 1e-9);
    // multiply ∘ apply_inverse = identity (λ = 0), and the damped to_dense inverts apply.
    Mat<double> x, back;
    REQUIRE(b.apply_inverse(Z, factored(0.0), x) == Status::Success);
    REQUIRE(b.multiply(x, back) == Status::Success);
    CHECK(relative_error(back, Z) <= 1e-10);
    const Mat<double> Fd = b.to_dense(factored(0.1));
    CHECK(relative_error(Vec<double>(Fd * apply(b, Z, factored(0.1))), dense_vec(Z)) <= 1e-10);
    CHECK(b.preparations() == 2);  // one per damping value used
    CHECK(relative_error(Fd, Mat<double>(Fd.transpose())) <= 1e-12);
    CHECK(Eigen::SelfAdjointEigenSolver<Mat<double>>(sym(Fd)).eigenvalues().minCoeff() > 0.0);
  }
}

TEST_CASE("recurrent block: eigenvalues of the whitened transition are clipped below 1",
          "[curvature][rnn]") {
  // A1 = A0, G1 = G0: a perfectly persistent chain, ψ̂ = 1 exactly (the boundary of B.2).
  Rng rng(907);
  const int n = 3, p = 2;
  const Mat<double> A0 = rng.spd<double>(n), G0 = rng.spd<double>(p);
  const Factors f{A0, A0, G0, G0};
  const Mat<double> Z = rng.normal<double>(p, n);
  for (auto approx : {RecurrentApproximation::Option1, RecurrentApproximation::Option2}) {
    INFO(kfopt::to_string(approx));
    Block b("rnn", n, p, block_options(approx, false));
    b.set_state(injected_state(f, 5));
    REQUIRE(b.refresh() == Status::Success);
    Mat<double> x, back;
    REQUIRE(b.apply_inverse(Z, factored(0.0), x) == Status::Success);
    CHECK(x.allFinite());
    CHECK(b.clipped_psi_count() == n + p);
    REQUIRE(b.multiply(x, back) == Status::Success);  // same clipped chain both ways
    CHECK(relative_error(back, Z) <= 1e-6);
    if (approx == RecurrentApproximation::Option1) {
      // ψ̂ = ρ² ≈ 1: F̂ ≈ E_T[T²] V0 = 25 V0 (the finite limit of γ).
      const Vec<double> want = dense_inverse<double>(Mat<double>(25.0 * dense_kron(A0, G0))) * dense_vec(Z);
      CHECK(relative_error(dense_vec(x), want) <= 1e-6);
    }
    // Damping pulls ψ̂ inside the unit disc: no clip needed.
    REQUIRE(b.apply_inverse(Z, factored(0.1), x) == Status::Success);
    CHECK(b.clipped_psi_count() == 0);
  }
}

struct ChainErrors {
  double frob[3], direction[3], kl[3];
};

// w_t = a_t ⊗ g_t with independent stationary chains a_t = Ψ_A a_{t−1} + ε, g_t likewise:
// then E[w_t w_sᵀ] = (Ψ_A^{t−s} A0) ⊗ (Ψ_G^{t−s} G0) = Ψ^{t−s} V0 with Ψ = Ψ_A ⊗ Ψ_G, the
// LGGM's second moments, and the true Fisher of Σ_t w_t is E_T[F_T] exactly. The blocks see
// only samples (4 batches of 300 sequences of lengths 6..20); their undamped F̂ is compared
// with the true F.
ChainErrors chain_errors(Rng& rng, const Mat<double>& PsiA, const Mat<double>& PsiG,
                         const Mat<double>& SigmaA, const Mat<double>& SigmaG) {
  const Eigen::Index n = PsiA.rows(), p = PsiG.rows();
  const int t_max = 20, m = 300, batches = 4;
  const Mat<double> A0 = stationary(PsiA, SigmaA), G0 = stationary(PsiG, SigmaG);
  const Mat<double> LA0 = Eigen::LLT<Mat<double>>(A0).matrixL(), LG0 = Eigen::LLT<Mat<double>>(G0).matrixL();
  const Mat<double> LSA = Eigen::LLT<Mat<double>>(SigmaA).matrixL(), LSG = Eigen::LLT<Mat<double>>(SigmaG).matrixL();

  std::vector<Block> blocks;  // (moved on growth: the block must be safely movable)
  for (auto approx : kAll) blocks.emplace_back("chain", n, p, block_options(approx, false));
  std::vector<double> count(t_max + 1, 0.0);
  for (int b = 0; b < batches; ++b) {
    Eigen::VectorXi lengths(m);
    for (int i = 0; i < m; ++i) lengths(i) = rng.integer(6, t_max);
    Mat<double> a = Mat<double>::Zero(t_max * m, n), g = Mat<double>::Zero(t_max * m, p);
    for (int i = 0; i < m; ++i) {
      Vec<double> x = LA0 * rng.normal<double>(n, 1), y = LG0 * rng.normal<double>(p, 1);
      for (int t = 0; t < lengths(i); ++t) {
        if (t > 0) {
          x = PsiA * x + LSA * rng.normal<double>(n, 1);
          y = PsiG * y + LSG * rng.normal<double>(p, 1);
        }
        a.row(t * m + i) = x.transpose();
        g.row(t * m + i) = y.transpose();
      }
      count[static_cast<std::size_t>(lengths(i))] += 1.0;
    }
    for (auto& block : blocks) REQUIRE(block.update_statistics(a, g, lengths) == Status::Success);
  }
  std::vector<int> Ts;
  std::vector<double> ws;
  for (int T = 0; T <= t_max; ++T) {
    if (count[T] > 0) {
      Ts.push_back(T);
      ws.push_back(count[T] / (m * batches));
    }
  }
  const Mat<double> F = dense_expected_F(dense_kron(A0, G0), dense_kron<double>(PsiA * A0, PsiG * G0), Ts, ws);
  const Mat<double> Finv = dense_inverse(F);
  const Eigen::Index N = n * p;
  const Mat<double> Zs = rng.normal<double>(N, 20);

  ChainErrors e{};
  for (int k = 0; k < 3; ++k) {
    Block& b = blocks[static_cast<std::size_t>(k)];
    REQUIRE(b.refresh() == Status::Success);
    const Mat<double> Fh = b.to_dense();
    e.frob[k] = relative_error(Fh, F);
    for (Eigen::Index c = 0; c < Zs.cols(); ++c) {
      const Mat<double> Z = dense_unvec<double>(Zs.col(c), p, n);
      e.direction[k] += relative_error(apply(b, Z, factored(0.0)), Vec<double>(Finv * Zs.col(c))) / Zs.cols();
    }
    // KL(N(0, F⁻¹) ‖ N(0, F̂⁻¹)) = ½ (tr(F̂ F⁻¹) − N − log det(F̂ F⁻¹)).
    const Mat<double> M = Fh * Finv;
    e.kl[k] = 0.5 * (M.trace() - static_cast<double>(N) -
                     std::log(Eigen::FullPivLU<Mat<double>>(M).determinant()));
  }
  WARN("relative Frobenius error of F-hat: independent " << e.frob[0] << ", option 1 " << e.frob[1]
                                                        << ", option 2 " << e.frob[2]);
  WARN("mean relative error of F-hat^-1 z: independent " << e.direction[0] << ", option 1 "
                                                         << e.direction[1] << ", option 2 " << e.direction[2]);
  WARN("KL(N(0,F^-1) || N(0,F-hat^-1)): independent " << e.kl[0] << ", option 1 " << e.kl[1]
                                                       << ", option 2 " << e.kl[2]);
  return e;
}

TEST_CASE("recurrent block end to end: decaying chain (symmetric V1), options 1 and 2 beat "
          "independent by far",
          "[curvature][rnn]") {
  // Symmetric transitions with isotropic noise: A0 = (I − Ψ_A²)⁻¹ commutes with Ψ_A, so
  // V1 = Ψ V0 is symmetric and Option 1's assumption holds (up to sampling).
  Rng rng(918);
  const int n = 3, p = 2;
  const Mat<double> QA = Eigen::HouseholderQR<Mat<double>>(rng.normal<double>(n, n)).householderQ();
  const Mat<double> QG = Eigen::HouseholderQR<Mat<double>>(rng.normal<double>(p, p)).householderQ();
  const Mat<double> PsiA = QA * Vec<double>((Vec<double>(n) << 0.9, 0.7, 0.4).finished()).asDiagonal() * QA.transpose();
  const Mat<double> PsiG = QG * Vec<double>((Vec<double>(p) << 0.8, 0.5).finished()).asDiagonal() * QG.transpose();
  const ChainErrors e = chain_errors(rng, sym(PsiA), sym(PsiG), eye(n), eye(p));
  for (int k : {1, 2}) {
    CHECK(e.frob[k] < 0.5 * e.frob[0]);
    CHECK(e.direction[k] < 0.5 * e.direction[0]);
    CHECK(e.kl[k] < 0.5 * e.kl[0]);
  }
}

TEST_CASE("recurrent block end to end: rotating chain (non-symmetric V1), both options beat "
          "independent, option 2 by far",
          "[curvature][rnn]") {
  // Generic transitions (Ψ_G has complex eigenvalues 0.65 ± 0.24i): Option 1's symmetrized
  // V1 loses the rotation, Option 2 keeps it.
  Rng rng(908);
  const int n = 3, p = 2;
  const Mat<double> PsiA = scaled_to_norm(rng.normal<double>(n, n), 0.85);
  Mat<double> PsiG(p, p);
  PsiG << 0.6, 0.3, -0.2, 0.7;
  const Mat<double> SigmaA = rng.spd<double>(n, 0.5, 1.5);
  const Mat<double> SigmaG = rng.spd<double>(p, 0.5, 1.5);
  const ChainErrors e = chain_errors(rng, PsiA, PsiG, SigmaA, SigmaG);
  for (int k : {1, 2}) {
    CHECK(e.frob[k] < e.frob[0]);
    CHECK(e.direction[k] < e.direction[0]);
    CHECK(e.kl[k] < e.kl[0]);
  }
  CHECK(e.frob[2] < 0.5 * e.frob[0]);
  CHECK(e.direction[2] < 0.5 * e.direction[0]);
  CHECK(e.kl[2] < 0.5 * e.kl[0]);
}

TEST_CASE("recurrent block: bad input is refused with the state unchanged", "[curvature][rnn]") {
  Rng rng(909);
  const int in = 3, out = 2, t_max = 4, m = 3;
  Eigen::VectorXi lengths(m);
  lengths << 4, 2, 3;
  const Mat<double> a = ar_sequences(rng, lengths, t_max, 0.5 * eye(in));
  const Mat<double> g = ar_sequences(rng, lengths, t_max, 0.5 * eye(out));
  Block b("rnn", in, out, block_options(RecurrentApproximation::Option2, true));
  const Mat<double> Z = rng.normal<double>(out, in + 1);
  Mat<double> out_m = Mat<double>::Constant(out, in + 1, 7.0);

  // Nothing to apply yet.
  CHECK(b.refresh() == Status::NotComputed);
  CHECK(b.apply_inverse(Z, factored(0.1), out_m) == Status::NotComputed);
  CHECK(b.multiply(Z, out_m) == Status::NotComputed);
  CHECK_THROWS_AS(b.to_dense(), kfopt::NumericalError);
  CHECK(out_m == Mat<double>::Constant(out, in + 1, 7.0));

  // Padded rows hold NaN here: they are never read.
  REQUIRE(b.update_statistics(a, g, lengths) == Status::Success);
  const Block::State before = b.state();
  auto unchanged = [&] {
    const Block::State now = b.state();
    CHECK(now.a.average0 == before.a.average0);
    CHECK(now.a.average1 == before.a.average1);
    CHECK(now.g.average0 == before.g.average0);
    CHECK(now.g.average1 == before.g.average1);
    CHECK(now.a.updates == before.a.updates);
    CHECK(now.g.updates == before.g.updates);
    CHECK(now.lengths.histogram == before.lengths.histogram);
    CHECK(now.lengths.updates == before.lengths.updates);
  };

  // Non-finite statistic in a real step of g (or a): skipped, counted, nothing changes.
  Mat<double> g_bad = g;
  g_bad(1 * m + 1, 0) = kNaN;  // step 1 of sequence 1 (length 2): real
  CHECK(b.update_statistics(a, g_bad, lengths) == Status::NonFiniteInput);
  Mat<double> a_bad = a;
  a_bad(2 * m + 2, 1) = std::numeric_limits<double>::infinity();  // step 2 of sequence 2: real
  CHECK(b.update_statistics(a_bad, g, lengths) == Status::NonFiniteInput);
  CHECK(b.skipped_statistics() == 2);
  unchanged();

  // Shapes and lengths that disagree with the data: exceptions, nothing changes.
  CHECK_THROWS_AS(b.update_statistics(Mat<double>(0, in), Mat<double>(0, out), Eigen::VectorXi::Ones(1)),
                  kfopt::ShapeError);  // empty batch
  CHECK_THROWS_AS(b.update_statistics(a, g, Eigen::VectorXi()), kfopt::ShapeError);  // no sequences
  CHECK_THROWS_AS(b.update_statistics(a, g, Eigen::VectorXi::Zero(m)), kfopt::InvalidInputError);  // all masked
  CHECK_THROWS_AS(b.update_statistics(a, g, Block::Mask::Constant(t_max, m, false)), kfopt::InvalidInputError);
  CHECK_THROWS_AS(b.update_statistics(a, g, Block::Mask::Constant(t_max + 1, m, true)), kfopt::ShapeError);
  Eigen::VectorXi too_long = lengths;
  too_long(0) = t_max + 1;
  CHECK_THROWS_AS(b.update_statistics(a, g, too_long), kfopt::InvalidInputError);
  Eigen::VectorXi negative = lengths;
  negative(2) = -1;
  CHECK_THROWS_AS(b.update_statistics(a, g, negative), kfopt::InvalidInputError);
  CHECK_THROWS_AS(b.update_statistics(a, g, Eigen::VectorXi::Ones(5)), kfopt::ShapeError);  // 12 rows, 5 seqs
  CHECK_THROWS_AS(b.update_statistics(a, g.topRows(9), lengths), kfopt::ShapeError);
  CHECK_THROWS_AS(b.update_statistics(a.leftCols(2), g, lengths), kfopt::ShapeError);
  CHECK_THROWS_AS(b.update_statistics_full(a, g, 0), kfopt::ShapeError);
  unchanged();

  // Sequences of length 1 only: a valid batch without any A1 pair.
  REQUIRE(b.update_statistics(a, g, Eigen::VectorXi::Ones(m)) == Status::Success);
  REQUIRE(b.refresh() == Status::Success);

  // Operand and damping errors; a non-finite gradient is a status, out untouched.
  out_m.setConstant(7.0);
  Mat<double> Z_bad = Z;
  Z_bad(0, 0) = kNaN;
  CHECK(b.apply_inverse(Z_bad, factored(0.1), out_m) == Status::NonFiniteInput);
  CHECK(b.multiply(Z_bad, out_m) == Status::NonFiniteInput);
  CHECK(out_m == Mat<double>::Constant(out, in + 1, 7.0));
  CHECK_THROWS_AS((void)b.apply_inverse(rng.normal<double>(out, in), factored(0.1), out_m), kfopt::ShapeError);
  CHECK_THROWS_AS((void)b.apply_inverse(Z, factored(-1.0), out_m), kfopt::InvalidInputError);
  CHECK_THROWS_AS((void)b.apply_inverse(Z, factored(kNaN), out_m), kfopt::InvalidInputError);

  // A singular V0 without damping: NumericalIssue for the inverse; multiply still works
  // (pseudo-inverse whitening), and damping makes the inverse exist.
  Block s("singular", in, out, block_options(RecurrentApproximation::Option1, false));
  Mat<double> a_rank = a;
  a_rank.col(2) = a_rank.col(0);  // A0 has a null vector
  REQUIRE(s.update_statistics_full(a_rank.topRows(m), g.topRows(m), m) == Status::Success);
  REQUIRE(s.update_statistics(a_rank, g, lengths) == Status::Success);
  REQUIRE(s.refresh() == Status::Success);
  Mat<double> Zs = rng.normal<double>(out, in);
  CHECK(s.apply_inverse(Zs, factored(0.0), out_m) == Status::NumericalIssue);
  REQUIRE(s.multiply(Zs, out_m) == Status::Success);
  CHECK(out_m.allFinite());
  CHECK(s.apply_inverse(Zs, factored(1e-3), out_m) == Status::Success);

  // set_state: wrong shapes, non-finite or inconsistent states are refused.
  Block::State st = b.state();
  Block::State wrong = st;
  wrong.a.average0 = eye(2);
  CHECK_THROWS_AS(b.set_state(wrong), kfopt::ShapeError);
  wrong = st;
  wrong.g.average1(0, 0) = kNaN;
  CHECK_THROWS_AS(b.set_state(wrong), kfopt::InvalidInputError);
  wrong = st;
  wrong.lengths = kfopt::SequenceLengthAverage::State{};
  CHECK_THROWS_AS(b.set_state(wrong), kfopt::InvalidInputError);
  const Block::State again = b.state();
  CHECK(again.a.average0 == st.a.average0);
  CHECK(again.lengths.histogram == st.lengths.histogram);

  // Options out of range.
  Block::Options o;
  o.max_abs_psi = 1.0;
  CHECK_THROWS_AS(Block("x", 2, 2, o), kfopt::HyperparameterError);
  o = Block::Options();
  o.decay = 0.0;
  CHECK_THROWS_AS(Block("x", 2, 2, o), kfopt::HyperparameterError);
  CHECK_THROWS_AS(Block("x", 0, 2), kfopt::ShapeError);
}

TEST_CASE("recurrent block: float agrees with double", "[curvature][rnn]") {
  Rng rng(910);
  const int in = 3, out = 2, t_max = 6;
  Eigen::VectorXi lengths(5);
  lengths << 6, 4, 6, 3, 5;
  const Mat<double> a = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(in, in), 0.7), 0.0);
  const Mat<double> g = ar_sequences(rng, lengths, t_max, scaled_to_norm(rng.normal<double>(out, out), 0.6), 0.0);
  const Mat<double> Z = rng.normal<double>(out, in + 1);
  for (auto approx : kAll) {
    Block bd("rnn", in, out, block_options(approx, true));
    kfopt::RecurrentKroneckerBlockOptions<float> of;
    of.approximation = approx;
    of.decay = 1.0;
    kfopt::RecurrentKroneckerBlock<float> bf("rnn", in, out, of);
    REQUIRE(bd.update_statistics(a, g, lengths) == Status::Success);
    REQUIRE(bf.update_statistics(a.cast<float>(), g.cast<float>(), lengths) == Status::Success);
    REQUIRE(bd.refresh() == Status::Success);
    REQUIRE(bf.refresh() == Status::Success);
    Mat<float> xf, yf;
    REQUIRE(bf.apply_inverse(Z.cast<float>(), kfopt::BlockDamping<float>{kfopt::DampingStyle::Factored, 0.01f, 0.0f}, xf) ==
            Status::Success);
    REQUIRE(bf.multiply(Z.cast<float>(), yf) == Status::Success);
    Mat<double> y;
    REQUIRE(bd.multiply(Z, y) == Status::Success);
    INFO(kfopt::to_string(approx));
    CHECK(relative_error(dense_vec<double>(xf.cast<double>()), apply(bd, Z, factored(0.01))) <= 1e-4);
    CHECK(relative_error(yf.cast<double>(), y) <= 1e-4);
  }
}
