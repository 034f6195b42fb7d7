// Factor inversion costs of kfopt's Kronecker-factor algebra layer, with LAPACK and Eigen
// reference rows measured in the same run.
//
// Run:  build/bench/bench_kron [--benchmark_format=json] [--benchmark_filter=REGEX]
//       bench/run_benchmarks.sh (the whole suite, a markdown table and a plot)
//
// Every benchmark is named  <operation>/<implementation>/<scalar>/<n>:
//   implementation  kfopt_eigen   kfopt with the Eigen backend (header-only default)
//                   kfopt_lapack  kfopt with the LAPACK backend (KFOPT_USE_LAPACK)
//                   kfopt         kfopt code that has no backend choice (Eigen only)
//                   lapack, blas  LAPACKE / CBLAS called directly (OpenBLAS on Debian)
//                   eigen         Eigen's own solvers called directly
// Times are the process's CPU time (robust to time slicing on a shared machine) unless
// KFOPT_BENCH_REAL_TIME=1 asks for wall-clock time (needed to see multi-threaded speed-ups).
//
// Environment:
//   KFOPT_BENCH_SIZES   comma-separated sizes (default 64,128,256,512,1024,2048)
//   KFOPT_BENCH_MAX_COMPOSITE  largest n for the composite RNN / Kronecker-sum / KL rows
//                       (default 2048)
// Threads: OPENBLAS_NUM_THREADS for OpenBLAS; OMP_NUM_THREADS for Eigen in the OpenMP build
// (bench_kron_omp). The run_benchmarks.sh script pins both to 1 for the main table.
#include <benchmark/benchmark.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <utility>
#include <string>
#include <vector>

#include <kfopt/curvature/recurrent_kronecker_block.hpp>
#include <kfopt/linalg/damped_cholesky_inverse.hpp>
#include <kfopt/kron/factor_moments.hpp>
#include <kfopt/kron/kronecker_inverse.hpp>
#include <kfopt/kron/kronecker_projection.hpp>
#include <kfopt/kron/kronecker_sum_inverse.hpp>
#include <kfopt/linalg/matrix_product_kernel.hpp>
#include <kfopt/linalg/symmetric_eigen_cache.hpp>
#include <kfopt/linalg/threads.hpp>
#include <kfopt/linalg/warm_started_inverse.hpp>

#ifdef KFOPT_USE_LAPACK
#include <cblas.h>
#include <lapacke.h>
#endif

namespace {

using kfopt::DecompositionBackend;

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <typename Scalar>
const char* scalar_name() {
  return sizeof(Scalar) == sizeof(double) ? "double" : "float";
}

// Samples of a stationary AR(1) process x_{t+1} = 0.7 x_t + noise with correlated
// coordinates: rows are time steps. Gives K-FAC-like second moments (spectra over a few
// decades) and, for the RNN rows, a lag-one cross moment A1 whose generalized eigenvalues
// w.r.t. A0 lie in (−1, 1) (RNN K-FAC appendix B.2), as real statistics do.
inline Mat<double> samples(Eigen::Index rows, Eigen::Index n, unsigned seed) {
  std::srand(seed);
  const Mat<double> mix = Mat<double>::Random(n, n) / std::sqrt(static_cast<double>(n));
  Mat<double> noise = Mat<double>::Random(rows, n);
  noise = noise + noise * mix;  // correlated columns
  for (Eigen::Index t = 1; t < rows; ++t) noise.row(t) += 0.7 * noise.row(t - 1);
  return noise;
}

// A0 = XᵀX / T plus a small ridge, from T = 2n samples.
template <typename Scalar>
Mat<Scalar> factor(Eigen::Index n, unsigned seed) {
  const Mat<double> X = samples(2 * n, n, seed);
  Mat<double> A = X.transpose() * X / static_cast<double>(X.rows());
  A = (0.5 * (A + A.transpose())).eval();
  A.diagonal().array() += 1e-3;
  return A.cast<Scalar>();
}

// The pair (A0, A1) of one recurrent factor: A1 = sym(Σ_t x_{t+1} x_tᵀ) / T, same normalizer.
template <typename Scalar>
std::pair<Mat<Scalar>, Mat<Scalar>> temporal_factors(Eigen::Index n, unsigned seed) {
  const Mat<double> X = samples(2 * n, n, seed);
  const double T = static_cast<double>(X.rows());
  Mat<double> A0 = X.transpose() * X / T;
  A0 = (0.5 * (A0 + A0.transpose())).eval();
  A0.diagonal().array() += 1e-3;
  Mat<double> A1 = X.bottomRows(X.rows() - 1).transpose() * X.topRows(X.rows() - 1) / T;
  A1 = (0.5 * (A1 + A1.transpose())).eval();
  return {A0.cast<Scalar>(), A1.cast<Scalar>()};
}

template <typename Scalar>
constexpr Scalar damping() {
  return Scalar(1e-2);
}

// ---------------------------------------------------------------------------------------
// Factor statistics: one batch of 256 × n into a moving average, against GEMM.
// ---------------------------------------------------------------------------------------
constexpr Eigen::Index kBatch = 256;

void set_flops(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
}

// Runs `op` once untimed (first touch of preallocated pages, warm caches, lazily sized
// workspaces: what every step after the first sees in training), then times it.
template <typename Op>
void run(benchmark::State& state, Op&& op) {
  op();
  for (auto _ : state) {
    op();
    benchmark::ClobberMemory();
  }
}

// FactorMovingAverage::update: finiteness check, the batch's Gram matrix blended into the
// average in place (Eigen backend: kfopt's recursive product kernel; LAPACK backend: BLAS
// syrk), mirror.
template <typename Scalar, DecompositionBackend Backend>
void stats_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(kBatch, n);
  kfopt::FactorMovingAverage<Scalar, Backend> avg(n);
  run(state, [&] {
    benchmark::DoNotOptimize(avg.update(batch));
  });
  set_flops(state, static_cast<double>(n) * n * kBatch);  // symmetric rank-k: n²k
}

// Eigen's own symmetric rank-k update (what FactorMovingAverage used before): the scaled
// Gram matrix of the batch into the lower triangle. Eigen 3.4's SYRK kernel collapses to
// ~10% of its GEMM rate for a depth of exactly 256 in double with AVX-512 on this machine.
template <typename Scalar>
void stats_eigen_syrk(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(kBatch, n);
  Mat<Scalar> estimate(n, n);
  const Scalar scale = Scalar(1) / Scalar(kBatch);
  run(state, [&] {
    estimate.setZero();
    estimate.template selfadjointView<Eigen::Lower>().rankUpdate(batch.transpose(), scale);
  });
  set_flops(state, static_cast<double>(n) * n * kBatch);
}

template <typename Scalar>
void stats_gemm_eigen(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(kBatch, n);
  Mat<Scalar> out(n, n);
  run(state, [&] {
    out.noalias() = batch.transpose() * batch;
  });
  set_flops(state, 2.0 * n * n * kBatch);
}

// The same Gram product by kfopt's own product kernel (linalg/matrix_product_kernel.hpp), full
// square (2n²k flops): the third candidate for "the machine's practical peak".
template <typename Scalar>
void stats_gemm_kfopt_kernel(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(kBatch, n);
  Mat<Scalar> out(n, n);
  run(state, [&] {
    out.setZero();
    kfopt::detail::product_accumulate<Scalar>(out, Scalar(1), batch.transpose(), batch);
  });
  set_flops(state, 2.0 * n * n * kBatch);
}

#ifdef KFOPT_USE_LAPACK
inline void gemm_tn(int m, int n, int k, const double* a, const double* b, double* c) {
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0, a, k, b, k, 0.0, c, m);
}
inline void gemm_tn(int m, int n, int k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, m);
}
inline void syrk_t(int n, int k, const double* a, double* c) {
  cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, n, k, 1.0, a, k, 0.0, c, n);
}
inline void syrk_t(int n, int k, const float* a, float* c) {
  cblas_ssyrk(CblasColMajor, CblasLower, CblasTrans, n, k, 1.0f, a, k, 0.0f, c, n);
}
inline void gemm_nn(int n, const double* a, const double* b, double* c) {
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, a, n, b, n, 0.0, c, n);
}
inline void gemm_nn(int n, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
}

template <typename Scalar>
void stats_gemm_blas(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(kBatch, n);
  Mat<Scalar> out(n, n);
  run(state, [&] {
    gemm_tn(static_cast<int>(n), static_cast<int>(n), static_cast<int>(kBatch), batch.data(),
            batch.data(), out.data());
  });
  set_flops(state, 2.0 * n * n * kBatch);
}

template <typename Scalar>
void stats_syrk_blas(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(kBatch, n);
  Mat<Scalar> out(n, n);
  run(state, [&] {
    syrk_t(static_cast<int>(n), static_cast<int>(kBatch), batch.data(), out.data());
  });
  set_flops(state, static_cast<double>(n) * n * kBatch);
}
#endif

// ---------------------------------------------------------------------------------------
// Square matrix product (the n³ scale of the plot).
// ---------------------------------------------------------------------------------------
template <typename Scalar>
void gemm_eigen(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = Mat<Scalar>::Random(n, n), B = Mat<Scalar>::Random(n, n);
  Mat<Scalar> C(n, n);
  run(state, [&] {
    C.noalias() = A * B;
  });
  set_flops(state, 2.0 * n * n * n);
}

// kfopt's product kernel (C = 0, then C += A·B).
template <typename Scalar>
void gemm_kfopt_kernel(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = Mat<Scalar>::Random(n, n), B = Mat<Scalar>::Random(n, n);
  Mat<Scalar> C(n, n);
  run(state, [&] {
    C.setZero();
    kfopt::detail::product_accumulate<Scalar>(C, Scalar(1), A, B);
  });
  set_flops(state, 2.0 * n * n * n);
}

#ifdef KFOPT_USE_LAPACK
template <typename Scalar>
void gemm_blas(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = Mat<Scalar>::Random(n, n), B = Mat<Scalar>::Random(n, n);
  Mat<Scalar> C(n, n);
  run(state, [&] {
    gemm_nn(static_cast<int>(n), A.data(), B.data(), C.data());
  });
  set_flops(state, 2.0 * n * n * n);
}
#endif

// ---------------------------------------------------------------------------------------
// Damped inverse by Cholesky: (A + λI)⁻¹ as an explicit matrix.
// ---------------------------------------------------------------------------------------
template <typename Scalar, DecompositionBackend Backend>
void chol_inverse_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 1);
  kfopt::DampedCholeskyInverse<Scalar, Backend> chol(n);
  run(state, [&] {
    chol.compute(A, damping<Scalar>());
    benchmark::DoNotOptimize(chol.inverse().data());
  });
  if (chol.info() != kfopt::Status::Success) state.SkipWithError("factorization failed");
  set_flops(state, static_cast<double>(n) * n * n);  // potrf n³/3 + potri 2n³/3
}

// What the issue calls today's baseline: Eigen's LLT solved against the identity.
template <typename Scalar>
void chol_inverse_eigen_llt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 1);
  Mat<Scalar> shifted(n, n), inverse(n, n);
  Eigen::LLT<Mat<Scalar>> llt(n);
  run(state, [&] {
    shifted = A;
    shifted.diagonal().array() += damping<Scalar>();
    llt.compute(shifted);
    inverse.setIdentity();
    llt.solveInPlace(inverse);
  });
  set_flops(state, static_cast<double>(n) * n * n);
}

#ifdef KFOPT_USE_LAPACK
template <typename Scalar>
void chol_inverse_lapack(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 1);
  Mat<Scalar> T(n, n);
  const auto ni = static_cast<lapack_int>(n);
  run(state, [&] {
    T = A;
    T.diagonal().array() += damping<Scalar>();
    if (kfopt::detail::lapack::potrf(ni, T.data(), ni) != 0 ||
        kfopt::detail::lapack::potri(ni, T.data(), ni) != 0) {
      state.SkipWithError("potrf/potri failed");
      return;
    }
  });
  set_flops(state, static_cast<double>(n) * n * n);
}
#endif

// ---------------------------------------------------------------------------------------
// Symmetric eigendecomposition (any-λ damping, inverse roots).
// ---------------------------------------------------------------------------------------
template <typename Scalar, DecompositionBackend Backend>
void eig_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 2);
  kfopt::SymmetricEigenCache<Scalar, Backend> cache(n);
  run(state, [&] {
    cache.compute(A);
    benchmark::DoNotOptimize(cache.eigenvalues().data());
  });
  if (cache.info() != kfopt::Status::Success) state.SkipWithError("eigensolver failed");
}

template <typename Scalar>
void eig_eigen(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 2);
  Eigen::SelfAdjointEigenSolver<Mat<Scalar>> solver(n);
  run(state, [&] {
    solver.compute(A, Eigen::ComputeEigenvectors);
    benchmark::DoNotOptimize(solver.eigenvalues().data());
  });
}

#ifdef KFOPT_USE_LAPACK
template <typename Scalar>
void eig_lapack(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 2);
  kfopt::detail::lapack::SymmetricEigenSolver<Scalar> solver(n);  // copy + syevd
  run(state, [&] {
    if (!solver.compute(A)) {
      state.SkipWithError("syevd failed");
      return;
    }
    benchmark::DoNotOptimize(solver.values.data());
  });
}
#endif

// Eigendecomposition plus the dense (A + λI)^{-1/2}.
template <typename Scalar, DecompositionBackend Backend>
void inv_sqrt_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = factor<Scalar>(n, 3);
  kfopt::SymmetricEigenCache<Scalar, Backend> cache(n);
  run(state, [&] {
    cache.compute(A);
    const Mat<Scalar> root = cache.inverse_sqrt(damping<Scalar>());
    benchmark::DoNotOptimize(root.data());
  });
}

// ---------------------------------------------------------------------------------------
// RNN K-FAC preprocessing for one recurrent layer with A and G both n×n (both factors),
// composed from kron primitives so that both backends can be compared (the kfopt_block
// rows below run the real RecurrentKroneckerBlock).
// Option 1: per factor, S = (F0 + λI)^{-1/2}, Ψ = S sym(F1) S, and the eigenbasis of Ψ.
// Option 2: per factor, S and Ψ̂ = S F1 S, M = Ψ̂ᵀΨ̂; then (I − M_A ⊗ M_G)⁻¹'s
// decomposition (IdentityMinusKroneckerInverse).
// ---------------------------------------------------------------------------------------
template <typename Scalar, DecompositionBackend Backend>
void rnn_option1_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const auto [A0, A1] = temporal_factors<Scalar>(n, 4);
  const auto [G0, G1] = temporal_factors<Scalar>(n, 5);
  kfopt::SymmetricEigenCache<Scalar, Backend> c0(n), c1(n);
  Mat<Scalar> S(n, n), T(n, n), Psi(n, n);
  run(state, [&] {
    for (int side = 0; side < 2; ++side) {
      const Mat<Scalar>& F0 = side == 0 ? A0 : G0;
      const Mat<Scalar>& F1 = side == 0 ? A1 : G1;
      c0.compute(F0);
      S = c0.inverse_sqrt(damping<Scalar>());
      T.noalias() = S * F1.template selfadjointView<Eigen::Lower>();
      Psi.noalias() = T * S;
      kfopt::detail::symmetrize(Psi);
      c1.compute(Psi);
      benchmark::DoNotOptimize(c1.eigenvalues().data());
    }
  });
}

template <typename Scalar, DecompositionBackend Backend>
void rnn_option2_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const auto [A0, A1] = temporal_factors<Scalar>(n, 4);
  const auto [G0, G1] = temporal_factors<Scalar>(n, 5);
  kfopt::SymmetricEigenCache<Scalar, Backend> c0(n);
  kfopt::IdentityMinusKroneckerInverse<Scalar> middle(n, n);
  Mat<Scalar> S(n, n), T(n, n), Psi(n, n), MA(n, n), MG(n, n);
  run(state, [&] {
    for (int side = 0; side < 2; ++side) {
      c0.compute(side == 0 ? A0 : G0);
      S = c0.inverse_sqrt(damping<Scalar>());
      T.noalias() = S * (side == 0 ? A1 : G1);
      Psi.noalias() = T * S;
      Mat<Scalar>& M = side == 0 ? MA : MG;
      M.setZero();
      M.template selfadjointView<Eigen::Lower>().rankUpdate(Psi.transpose());
      kfopt::detail::symmetrize_from_lower(M);
    }
    middle.compute(MA, MG);
    benchmark::DoNotOptimize(middle.info());
  });
}

// The same preprocessing through kfopt's RecurrentKroneckerBlock (curvature layer): one
// refresh (eigendecompositions of A0, G0, snapshots) plus the damping-dependent preparation
// of RNN K-FAC appendix C.3, for a layer with in = out = n (no bias), statistics from one
// sequence of 2n steps. Uses the default backend of the build.
template <typename Scalar>
void rnn_block_kfopt(benchmark::State& state, kfopt::RecurrentApproximation approximation) {
  const Eigen::Index n = state.range(0);
  kfopt::RecurrentKroneckerBlockOptions<Scalar> options;
  options.approximation = approximation;
  options.bias = false;
  kfopt::RecurrentKroneckerBlock<Scalar> block("rnn", n, n, options);
  const Mat<Scalar> a = samples(2 * n, n, 4).cast<Scalar>();
  const Mat<Scalar> g = samples(2 * n, n, 5).cast<Scalar>();
  if (block.update_statistics_full(a, g, 1) != kfopt::Status::Success) {
    state.SkipWithError("statistics refused");
    return;
  }
  kfopt::BlockDamping<Scalar> block_damping;
  block_damping.lambda = damping<Scalar>();
  kfopt::Status status = kfopt::Status::Success;
  run(state, [&] {
    status = block.refresh();
    if (status == kfopt::Status::Success) status = block.prepare(block_damping);
  });
  if (status != kfopt::Status::Success) state.SkipWithError(kfopt::to_string(status));
}

// (A ⊗ B + C ⊗ D)⁻¹'s decomposition, all four n×n (two generalized eigenproblems).
template <typename Scalar>
void kron_sum_inverse_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const auto [A, C] = temporal_factors<Scalar>(n, 8);
  const auto [B, D] = temporal_factors<Scalar>(n, 9);
  kfopt::KroneckerSumInverse<Scalar> inv(n, n);
  run(state, [&] {
    inv.compute(A, B, C, D);
    benchmark::DoNotOptimize(inv.info());
  });
  if (inv.info() != kfopt::Status::Success) state.SkipWithError("decomposition failed");
}

// KL projection of X1 ⊗ Y1 + X2 ⊗ Y2 onto A ⊗ B, all n×n.
template <typename Scalar>
void kl_projection_kfopt(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> X1 = factor<Scalar>(n, 12), Y1 = factor<Scalar>(n, 13);
  const Mat<Scalar> X2 = factor<Scalar>(n, 14), Y2 = factor<Scalar>(n, 15);
  kfopt::KroneckerKlProjection<Scalar> projection(n, n);
  run(state, [&] {
    projection.compute(X1, Y1, X2, Y2);
    benchmark::DoNotOptimize(projection.info());
  });
}

// ---------------------------------------------------------------------------------------
// Applying the preconditioner to a gradient Z (out × in = n × n).
// ---------------------------------------------------------------------------------------
template <typename Scalar>
void precondition_eigenbasis(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  kfopt::FactorSpectrum<Scalar> ca(n), cg(n);
  ca.compute(factor<Scalar>(n, 16));
  cg.compute(factor<Scalar>(n, 17));
  const Mat<Scalar> Z = Mat<Scalar>::Random(n, n);
  Mat<Scalar> out, work;
  run(state, [&] {
    benchmark::DoNotOptimize(kfopt::kronecker_factored_inverse(ca, damping<Scalar>(), cg,
                                                               damping<Scalar>(), Z, out, work));
  });
  set_flops(state, 8.0 * n * n * n);  // four n×n×n products
}

template <typename Scalar>
void precondition_explicit(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  kfopt::DampedCholeskyInverse<Scalar> ia(n), ig(n);
  ia.compute(factor<Scalar>(n, 16), damping<Scalar>());
  ig.compute(factor<Scalar>(n, 17), damping<Scalar>());
  const Mat<Scalar>& Ainv = ia.inverse();
  const Mat<Scalar>& Ginv = ig.inverse();
  const Mat<Scalar> Z = Mat<Scalar>::Random(n, n);
  Mat<Scalar> out(n, n), work(n, n);
  run(state, [&] {
    work.noalias() = Ginv * Z;
    out.noalias() = work * Ainv;
  });
  set_flops(state, 4.0 * n * n * n);  // two n×n×n products
}

// ---------------------------------------------------------------------------------------
// Warm-started damped inverse (screen; reuse, Newton–Schulz from the previous inverse, or
// the exact Cholesky fall-back) after the factor moved by one moving-average step with decay β: A_new = β A + (1 − β) S, S the second
// moment of one batch of 256 samples. The benchmark times the refresh only (the previous
// inverse is restored before each iteration) and reports the iterations, whether it fell
// back, and the relative error of the preconditioned gradient (A_new + λI)⁻¹ Z.
// ---------------------------------------------------------------------------------------
template <typename Scalar>
struct WarmStartCase {
  Mat<Scalar> previous;  // the factor at the last refresh
  Mat<Scalar> current;   // after the moving-average steps
};

template <typename Scalar>
WarmStartCase<Scalar> warm_start_case(Eigen::Index n, double step_weight) {
  WarmStartCase<Scalar> c;
  c.previous = factor<Scalar>(n, 20);
  const Mat<double> X = samples(kBatch, n, 21);
  Mat<double> S = X.transpose() * X / static_cast<double>(kBatch);
  S = (0.5 * (S + S.transpose())).eval();
  c.current = ((1.0 - step_weight) * c.previous.template cast<double>() + step_weight * S)
                  .template cast<Scalar>();
  return c;
}

// One warm-started refresh of an n×n factor after a moving-average step of weight
// `step_weight` (1 − β); `iterate` forces Newton–Schulz where it can succeed.
template <typename Scalar>
void warm_inverse_run(benchmark::State& state, Eigen::Index n, double step_weight, bool iterate) {
  const auto c = warm_start_case<Scalar>(n, step_weight);
  const Scalar lambda = damping<Scalar>() * c.current.trace() / static_cast<Scalar>(n);
  kfopt::WarmStartOptions<Scalar> options;  // default cost model (reuse or exact on a CPU)
  if (iterate) options.iteration_cost = Scalar(0);  // iterate when it can succeed
  kfopt::WarmStartedDampedInverse<Scalar> warm(n, options);
  warm.compute(c.previous, lambda);  // the previous refresh (exact)
  const auto saved = warm.state();
  warm.compute(c.current, lambda);  // untimed warm-up, as in run()
  for (auto _ : state) {
    state.PauseTiming();
    warm.set_state(saved);
    state.ResumeTiming();
    warm.compute(c.current, lambda);
    benchmark::DoNotOptimize(warm.inverse().data());
    benchmark::ClobberMemory();
  }
  // Accuracy on a preconditioned gradient, against the exact (Cholesky) inverse in double.
  Mat<double> shifted = c.current.template cast<double>();
  shifted.diagonal().array() += static_cast<double>(lambda);
  const Mat<double> Z = Mat<double>::Random(n, 64);
  const Mat<double> exact = Eigen::LLT<Mat<double>>(shifted).solve(Z);
  const Mat<double> approx = warm.inverse().template cast<double>() * Z;
  state.counters["rel_err"] = (approx - exact).norm() / exact.norm();
  state.counters["iterations"] = static_cast<double>(warm.last_iterations());
  state.counters["fell_back"] = warm.last_fell_back() ? 1.0 : 0.0;
  state.counters["reused"] = warm.state().reused > saved.reused ? 1.0 : 0.0;
  state.counters["residual"] = static_cast<double>(warm.last_residual());
}

// Arguments: n, 1 − β in units of 1e-6, whether to force the iteration.
template <typename Scalar>
void warm_inverse_kfopt(benchmark::State& state) {
  warm_inverse_run<Scalar>(state, state.range(0), static_cast<double>(state.range(1)) * 1e-6,
                           state.range(2) != 0);
}

// Newton–Schulz alone: the smallest step (1 − β = 1e-6) with the iteration forced.
template <typename Scalar>
void newton_schulz_kfopt(benchmark::State& state) {
  warm_inverse_run<Scalar>(state, state.range(0), 1e-6, true);
}

// ---------------------------------------------------------------------------------------
// Registration.
// ---------------------------------------------------------------------------------------
std::vector<long> sizes_from_env() {
  std::vector<long> sizes;
  const char* env = std::getenv("KFOPT_BENCH_SIZES");
  std::stringstream in(env != nullptr ? env : "64,128,256,512,1024,2048");
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) sizes.push_back(std::stol(item));
  }
  return sizes;
}

long max_composite_from_env() {
  const char* env = std::getenv("KFOPT_BENCH_MAX_COMPOSITE");
  return env != nullptr ? std::stol(env) : 2048;
}

// Enough repetitions for small sizes; one run is already long enough for the large ones.
double min_time(long n) { return n >= 2048 ? 0.05 : n >= 1024 ? 0.3 : 0.2; }

// CPU time of the process by default: single-threaded rows on a shared machine are then
// less sensitive to time slicing. KFOPT_BENCH_REAL_TIME=1 measures wall-clock time, which
// multi-threaded runs need.
bool real_time_from_env() {
  const char* env = std::getenv("KFOPT_BENCH_REAL_TIME");
  return env != nullptr && std::string(env) == "1";
}

template <typename Fn>
void add(const std::string& op, const std::string& impl, const char* scalar, Fn fn,
         const std::vector<long>& sizes, long max_n = 1L << 30) {
  for (long n : sizes) {
    if (n > max_n) continue;
    auto* b = benchmark::RegisterBenchmark((op + "/" + impl + "/" + scalar).c_str(), fn)
                  ->Arg(n)
                  ->Unit(benchmark::kMillisecond)
                  ->MinTime(min_time(n));
    if (real_time_from_env()) b->UseRealTime();
  }
}

// Sets the thread count of kfopt's kernels (kfopt::set_threads) and of OpenBLAS for one
// benchmark, and restores both afterwards.
class ThreadCount {
 public:
  explicit ThreadCount(long threads) {
    kfopt::set_threads(static_cast<int>(threads));
#ifdef KFOPT_USE_LAPACK
    openblas_set_num_threads(static_cast<int>(threads));
#endif
  }
  ~ThreadCount() {
    kfopt::set_threads(0);
#ifdef KFOPT_USE_LAPACK
    openblas_set_num_threads(openblas_default_threads_);
#endif
  }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
#ifdef KFOPT_USE_LAPACK
  int openblas_default_threads_ = openblas_get_num_threads();
#endif
};

// The threaded rows "threads/<op>/<impl>/<scalar>/n:<n>/threads:<t>" for t = 1 and 2: the
// operation of the row without the prefix, with kfopt and OpenBLAS on t threads, timed by
// the wall clock (CPU time would add up the threads).
template <typename Fn>
void add_threaded(const std::string& op, const std::string& impl, const char* scalar, Fn fn,
                  const std::vector<long>& sizes) {
  for (long n : sizes) {
    for (long threads : {1L, 2L}) {
      benchmark::RegisterBenchmark(("threads/" + op + "/" + impl + "/" + scalar).c_str(),
                                   [fn](benchmark::State& state) {
                                     const ThreadCount use(state.range(1));
                                     fn(state);
                                   })
          ->Args({n, threads})
          ->ArgNames({"n", "threads"})
          ->Unit(benchmark::kMillisecond)
          ->MinTime(min_time(n))
          ->UseRealTime();
    }
  }
}

template <typename Scalar>
void register_all(const std::vector<long>& sizes, long max_composite) {
  const char* s = scalar_name<Scalar>();
  constexpr auto E = DecompositionBackend::Eigen;
  add("stats", "kfopt_eigen", s, stats_kfopt<Scalar, E>, sizes);
  add("stats", "gemm_eigen", s, stats_gemm_eigen<Scalar>, sizes);
  add("stats", "eigen_syrk", s, stats_eigen_syrk<Scalar>, sizes);
  add("stats", "gemm_kfopt_kernel", s, stats_gemm_kfopt_kernel<Scalar>, sizes);
  add("gemm", "eigen", s, gemm_eigen<Scalar>, sizes);
  add("gemm", "kfopt_kernel", s, gemm_kfopt_kernel<Scalar>, sizes);
  add("chol_inverse", "kfopt_eigen", s, chol_inverse_kfopt<Scalar, E>, sizes);
  add("chol_inverse", "eigen_llt", s, chol_inverse_eigen_llt<Scalar>, sizes);
  add("eig", "kfopt_eigen", s, eig_kfopt<Scalar, E>, sizes);
  add("eig", "eigen", s, eig_eigen<Scalar>, sizes);
  add("inv_sqrt", "kfopt_eigen", s, inv_sqrt_kfopt<Scalar, E>, sizes);
  add("rnn_option1", "kfopt_eigen", s, rnn_option1_kfopt<Scalar, E>, sizes, max_composite);
  add("rnn_option2", "kfopt_eigen", s, rnn_option2_kfopt<Scalar, E>, sizes, max_composite);
  add("rnn_option1", "kfopt_block", s,
      [](benchmark::State& st) { rnn_block_kfopt<Scalar>(st, kfopt::RecurrentApproximation::Option1); },
      sizes, max_composite);
  add("rnn_option2", "kfopt_block", s,
      [](benchmark::State& st) { rnn_block_kfopt<Scalar>(st, kfopt::RecurrentApproximation::Option2); },
      sizes, max_composite);
  add("kron_sum_inverse", "kfopt", s, kron_sum_inverse_kfopt<Scalar>, sizes, max_composite);
  add("kl_projection", "kfopt", s, kl_projection_kfopt<Scalar>, sizes, max_composite);
  add("precondition", "eigenbasis", s, precondition_eigenbasis<Scalar>, sizes);
  add("precondition", "explicit", s, precondition_explicit<Scalar>, sizes);
  add_threaded("gemm", "kfopt_kernel", s, gemm_kfopt_kernel<Scalar>, sizes);
  add_threaded("stats", "kfopt_eigen", s, stats_kfopt<Scalar, E>, sizes);
  add_threaded("chol_inverse", "kfopt_eigen", s, chol_inverse_kfopt<Scalar, E>, sizes);
  add_threaded("eig", "kfopt_eigen", s, eig_kfopt<Scalar, E>, sizes);
  add_threaded("precondition", "eigenbasis", s, precondition_eigenbasis<Scalar>, sizes);
#ifdef KFOPT_USE_LAPACK
  add_threaded("eig", "lapack", s, eig_lapack<Scalar>, sizes);
  add_threaded("gemm", "blas", s, gemm_blas<Scalar>, sizes);
  add_threaded("stats", "syrk_blas", s, stats_syrk_blas<Scalar>, sizes);
  add_threaded("chol_inverse", "lapack", s, chol_inverse_lapack<Scalar>, sizes);
  constexpr auto L = DecompositionBackend::Lapack;
  add("stats", "kfopt_lapack", s, stats_kfopt<Scalar, L>, sizes);
  add("stats", "gemm_blas", s, stats_gemm_blas<Scalar>, sizes);
  add("stats", "syrk_blas", s, stats_syrk_blas<Scalar>, sizes);
  add("gemm", "blas", s, gemm_blas<Scalar>, sizes);
  add("chol_inverse", "kfopt_lapack", s, chol_inverse_kfopt<Scalar, L>, sizes);
  add("chol_inverse", "lapack", s, chol_inverse_lapack<Scalar>, sizes);
  add("eig", "kfopt_lapack", s, eig_kfopt<Scalar, L>, sizes);
  add("eig", "lapack", s, eig_lapack<Scalar>, sizes);
  add("inv_sqrt", "kfopt_lapack", s, inv_sqrt_kfopt<Scalar, L>, sizes);
  add("rnn_option1", "kfopt_lapack", s, rnn_option1_kfopt<Scalar, L>, sizes, max_composite);
  add("rnn_option2", "kfopt_lapack", s, rnn_option2_kfopt<Scalar, L>, sizes, max_composite);
#endif
}

// Warm-started refreshes: one moving-average step of weight 1 − β ∈ {0.05, 0.01, 0.001,
// 1e-6} (arguments in units of 1e-6), double only (the accuracy target is a double one).
// 0.05 is K-FAC's usual β = 0.95; 1e-6 a factor that has practically stopped moving.
std::string step_label(long weight) {
  std::ostringstream out;
  out << static_cast<double>(weight) * 1e-6;
  return out.str();
}

void register_warm_start(const std::vector<long>& sizes) {
  add_threaded("newton_schulz", "kfopt", "double", newton_schulz_kfopt<double>, sizes);
  for (long n : sizes) {
    // Default options, then (for the smallest step, where Newton–Schulz can succeed in
    // few steps) the iteration forced by iteration_cost = 0, to show what it costs.
    for (long weight : {50000L, 10000L, 1000L, 1L, -1L}) {
      const bool iterate = weight < 0;
      const long w = iterate ? 1L : weight;
      auto* b = benchmark::RegisterBenchmark(
                    ("warm_inverse/kfopt_" + std::string(iterate ? "iterate_" : "") + "step" +
                     step_label(w) + "/double").c_str(),
                    warm_inverse_kfopt<double>)
                    ->Args({n, w, iterate ? 1L : 0L})
                    ->Unit(benchmark::kMillisecond)
                    ->MinTime(min_time(n));
      if (real_time_from_env()) b->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<long> sizes = sizes_from_env();
  const long max_composite = max_composite_from_env();
  register_all<double>(sizes, max_composite);
  register_all<float>(sizes, max_composite);
  register_warm_start(sizes);
  benchmark::AddCustomContext("kfopt_lapack_rows", kfopt::kLapackBackendAvailable ? "yes" : "no");
  benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("time", real_time_from_env() ? "wall-clock" : "process CPU");
  if (const char* label = std::getenv("KFOPT_BENCH_LABEL")) {
    benchmark::AddCustomContext("threads_label", label);
  }
#ifdef KFOPT_USE_LAPACK
  benchmark::AddCustomContext("openblas_threads", std::to_string(openblas_get_num_threads()));
  benchmark::AddCustomContext("openblas_config", openblas_get_config());
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
#endif
#ifdef __AVX512F__
  benchmark::AddCustomContext("eigen_simd", "AVX-512");
#elif defined(__AVX2__)
  benchmark::AddCustomContext("eigen_simd", "AVX2");
#else
  benchmark::AddCustomContext("eigen_simd", "SSE2");
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
