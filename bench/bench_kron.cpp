// Kronecker-factor algebra layer: factor statistics, decompositions and preconditioner
// application. Run: build/release/bench/bench_kron [--benchmark_format=json]
// (issue 7 extends this suite with LAPACK reference rows and ratios).
#include <benchmark/benchmark.h>

#include <kfopt/kron/damped_cholesky_inverse.hpp>
#include <kfopt/kron/factor_moments.hpp>
#include <kfopt/kron/kronecker_inverse.hpp>
#include <kfopt/kron/symmetric_eigen_cache.hpp>

#include <Eigen/Dense>

namespace {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

template <typename Scalar>
Mat<Scalar> spd(Eigen::Index n) {
  Mat<Scalar> X = Mat<Scalar>::Random(2 * n, n);
  Mat<Scalar> A = X.transpose() * X / Scalar(2 * n);
  A.diagonal().array() += Scalar(0.1);
  return A;
}

// Statistics accumulation: one batch of 256 × n into a moving average (symmetric rank-k).
template <typename Scalar>
void BM_FactorStatistics(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(256, n);
  kfopt::FactorMovingAverage<Scalar> avg(n);
  for (auto _ : state) {
    benchmark::DoNotOptimize(avg.update(batch));
    benchmark::ClobberMemory();
  }
  // Flops of the rank-k update (lower triangle): n²·k.
  state.counters["GFLOP/s"] = benchmark::Counter(
      static_cast<double>(n) * n * 256, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
}

// Plain GEMM of the same shape (Xᵀ X, full), the practical peak for comparison.
template <typename Scalar>
void BM_GemmReference(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> batch = Mat<Scalar>::Random(256, n);
  Mat<Scalar> out(n, n);
  for (auto _ : state) {
    out.noalias() = batch.transpose() * batch;
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * n * n * 256, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
}

template <typename Scalar>
void BM_EigenCacheCompute(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = spd<Scalar>(n);
  kfopt::SymmetricEigenCache<Scalar> cache(n);
  for (auto _ : state) {
    cache.compute(A);
    benchmark::DoNotOptimize(cache.eigenvalues().data());
  }
}

template <typename Scalar>
void BM_DampedCholeskyInverse(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Mat<Scalar> A = spd<Scalar>(n);
  kfopt::DampedCholeskyInverse<Scalar> chol(n);
  for (auto _ : state) {
    chol.compute(A, Scalar(0.01));
    benchmark::DoNotOptimize(chol.inverse().data());
  }
}

// Preconditioner application for a square layer n×n: (G + δI)⁻¹ Z (A + δI)⁻¹.
template <typename Scalar>
void BM_KroneckerFactoredInverse(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  kfopt::FactorSpectrum<Scalar> ca(n), cg(n);
  ca.compute(spd<Scalar>(n));
  cg.compute(spd<Scalar>(n));
  const Mat<Scalar> Z = Mat<Scalar>::Random(n, n);
  Mat<Scalar> out, work;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        kfopt::kronecker_factored_inverse(ca, Scalar(0.1), cg, Scalar(0.1), Z, out, work));
    benchmark::ClobberMemory();
  }
}

}  // namespace

#define KFOPT_SIZES ->RangeMultiplier(2)->Range(64, 512)->Unit(benchmark::kMillisecond)
BENCHMARK_TEMPLATE(BM_FactorStatistics, double) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_GemmReference, double) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_FactorStatistics, float) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_GemmReference, float) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_EigenCacheCompute, double) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_EigenCacheCompute, float) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_DampedCholeskyInverse, double) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_DampedCholeskyInverse, float) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_KroneckerFactoredInverse, double) KFOPT_SIZES;
BENCHMARK_TEMPLATE(BM_KroneckerFactoredInverse, float) KFOPT_SIZES;

BENCHMARK_MAIN();
