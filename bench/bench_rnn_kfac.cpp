// RNN K-FAC preprocessing cost: RecurrentKroneckerBlock (curvature/recurrent_kronecker_block.hpp)
// with the Independent (eq. 6), Option 1 (eq. 8) and Option 2 (eq. 9) approximations of
// Martens, Ba & Johnson 2018, at the same factor sizes, so that the ratio Option / Independent
// (target: ≤ 3×, the paper's "only several times more expensive") reads off one run.
//
// A layer `s_t = W a_t + b` with in = out = n: A0, A1 are (n+1)×(n+1) (homogeneous
// coordinate), G0, G1 n×n — "129×128", "257×256", "513×512" for n = 128, 256, 512.
// Statistics: one batch of m = 8 sequences of T = n/4 (≥ 16) steps from stationary AR(1)
// processes (lag-one correlation 0.7, correlated coordinates), so A1, G1 are genuine
// cross-moments with ρ(A0⁻¹A1) < 1 (appendix B.2).
//
// What "preprocessing" means (the amortized work every T_inv steps):
//   refresh   — eigendecompositions of A0 and G0 and the snapshots (identical for all three);
//   prepare   — the damping-dependent part of appendix C.3 for one λ (factored damping):
//               Independent: two damped inverses from the spectra (2 products);
//               Option 1: inverse roots, Ψ̂_A, Ψ̂_G = V0^{-1/2} sym(V1) V0^{-1/2}, their
//               eigendecompositions, bases and n·p values of γ;
//               Option 2: inverse roots, Ψ̂, Ψ̂ᵀΨ̂, its eigendecompositions, four bases.
// Rows:
//   rnn_preprocess/<approximation>/<n>   refresh + prepare (the figure to compare)
//   rnn_refresh/<n>                      refresh alone (shared by all three)
//   rnn_prepare/<approximation>/<n>      prepare alone (forced by a new refresh version,
//                                        timed without the refresh)
//   rnn_ratio/<n>                        all three in each iteration, CPU time of each
//                                        measured separately; counters opt1/indep, opt2/indep
// Times are CPU time (this machine is shared). Scalar: double.
//
// Build (one translation unit):
//   g++ -std=c++17 -O2 -DNDEBUG -I include -isystem /usr/include/eigen3
//       bench/bench_rnn_kfac.cpp -lbenchmark -lpthread -o bench_rnn_kfac   (one line)
// Environment: KFOPT_BENCH_SIZES (default 128,256,512).
#include <benchmark/benchmark.h>
#include <time.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <kfopt/curvature/recurrent_kronecker_block.hpp>

namespace {

using Scalar = double;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
using kfopt::RecurrentApproximation;

const char* short_name(RecurrentApproximation a) {
  switch (a) {
    case RecurrentApproximation::Independent: return "independent";
    case RecurrentApproximation::Option1: return "option1";
    case RecurrentApproximation::Option2: return "option2";
  }
  return "?";
}

// m sequences of T steps, time-major (row t·m + i), AR(1) in time with correlated
// coordinates.
Matrix sequences(Eigen::Index steps, Eigen::Index m, Eigen::Index n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Matrix mix(n, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < n; ++i) mix(i, j) = normal(rng) / std::sqrt(static_cast<double>(n));
  Matrix x(steps * m, n);
  for (Eigen::Index r = 0; r < x.rows(); ++r)
    for (Eigen::Index j = 0; j < n; ++j) x(r, j) = normal(rng);
  x += x * mix;
  for (Eigen::Index t = 1; t < steps; ++t) x.middleRows(t * m, m) += 0.7 * x.middleRows((t - 1) * m, m);
  return x;
}

kfopt::RecurrentKroneckerBlock<Scalar> make_block(Eigen::Index n, RecurrentApproximation approximation) {
  kfopt::RecurrentKroneckerBlockOptions<Scalar> options;
  options.approximation = approximation;
  options.bias = true;
  kfopt::RecurrentKroneckerBlock<Scalar> block("bench", n, n, options);
  const Eigen::Index m = 8, steps = std::max<Eigen::Index>(16, n / 4);
  const Matrix a = sequences(steps, m, n, 11);
  const Matrix g = sequences(steps, m, n, 12);
  if (block.update_statistics_full(a, g, m) != kfopt::Status::Success) std::abort();
  return block;
}

kfopt::BlockDamping<Scalar> damping() {
  kfopt::BlockDamping<Scalar> d;
  d.style = kfopt::DampingStyle::Factored;
  d.lambda = Scalar(1e-2);
  return d;
}

double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void check(benchmark::State& state, kfopt::Status s) {
  if (s != kfopt::Status::Success) state.SkipWithError(kfopt::to_string(s));
}

void preprocess(benchmark::State& state, RecurrentApproximation approximation) {
  auto block = make_block(state.range(0), approximation);
  const auto d = damping();
  kfopt::Status s = kfopt::Status::Success;
  for (auto _ : state) {
    s = block.refresh();
    if (s == kfopt::Status::Success) s = block.prepare(d);
    benchmark::DoNotOptimize(s);
  }
  check(state, s);
}

void refresh_only(benchmark::State& state) {
  auto block = make_block(state.range(0), RecurrentApproximation::Independent);
  kfopt::Status s = kfopt::Status::Success;
  for (auto _ : state) {
    s = block.refresh();
    benchmark::DoNotOptimize(s);
  }
  check(state, s);
}

void prepare_only(benchmark::State& state, RecurrentApproximation approximation) {
  auto block = make_block(state.range(0), approximation);
  const auto d = damping();
  kfopt::Status s = kfopt::Status::Success;
  for (auto _ : state) {
    state.PauseTiming();
    s = block.refresh();  // a new version: the next prepare recomputes
    state.ResumeTiming();
    if (s == kfopt::Status::Success) s = block.prepare(d);
    benchmark::DoNotOptimize(s);
  }
  check(state, s);
}

// All three per iteration; each one's CPU time accumulated separately.
void ratio(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const RecurrentApproximation kinds[3] = {RecurrentApproximation::Independent,
                                           RecurrentApproximation::Option1,
                                           RecurrentApproximation::Option2};
  std::vector<kfopt::RecurrentKroneckerBlock<Scalar>> blocks;
  for (auto k : kinds) blocks.push_back(make_block(n, k));
  const auto d = damping();
  double seconds[3] = {0, 0, 0};
  kfopt::Status s = kfopt::Status::Success;
  for (auto _ : state) {
    for (int k = 0; k < 3; ++k) {
      const double t0 = thread_seconds();
      s = blocks[static_cast<std::size_t>(k)].refresh();
      if (s == kfopt::Status::Success) s = blocks[static_cast<std::size_t>(k)].prepare(d);
      seconds[k] += thread_seconds() - t0;
      if (s != kfopt::Status::Success) break;
    }
  }
  check(state, s);
  const double it = static_cast<double>(state.iterations());
  state.counters["indep_ms"] = 1e3 * seconds[0] / it;
  state.counters["opt1_ms"] = 1e3 * seconds[1] / it;
  state.counters["opt2_ms"] = 1e3 * seconds[2] / it;
  state.counters["opt1/indep"] = seconds[1] / seconds[0];
  state.counters["opt2/indep"] = seconds[2] / seconds[0];
}

std::vector<long> sizes() {
  std::vector<long> out;
  const char* env = std::getenv("KFOPT_BENCH_SIZES");
  std::stringstream ss(env != nullptr ? env : "128,256,512");
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::stol(item));
  }
  return out;
}

void register_all() {
  const auto ns = sizes();
  for (auto kind : {RecurrentApproximation::Independent, RecurrentApproximation::Option1,
                    RecurrentApproximation::Option2}) {
    for (long n : ns) {
      benchmark::RegisterBenchmark(
          ("rnn_preprocess/" + std::string(short_name(kind))).c_str(),
          [kind](benchmark::State& st) { preprocess(st, kind); })
          ->Arg(n)
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (long n : ns) {
    benchmark::RegisterBenchmark("rnn_refresh", refresh_only)
        ->Arg(n)
        ->Unit(benchmark::kMillisecond);
  }
  for (auto kind : {RecurrentApproximation::Independent, RecurrentApproximation::Option1,
                    RecurrentApproximation::Option2}) {
    for (long n : ns) {
      benchmark::RegisterBenchmark(
          ("rnn_prepare/" + std::string(short_name(kind))).c_str(),
          [kind](benchmark::State& st) { prepare_only(st, kind); })
          ->Arg(n)
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (long n : ns) {
    benchmark::RegisterBenchmark("rnn_ratio", ratio)
        ->Arg(n)
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
