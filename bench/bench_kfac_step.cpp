/// \file bench_kfac_step.cpp
/// \brief A full training step of the deep autoencoder, K-FAC against Adam, in float and
/// double, on 1 and 2 threads, with K-FAC's inverses refreshed at the step they are due
/// (synchronous) or on a background thread (delayed refresh).
///
/// The network is the Fashion-MNIST example's autoencoder 784-1000-500-250-30-250-500-1000-784
/// (tanh hidden layers, linear code layer, Bernoulli loss on 784 logits), built with the
/// examples' MLP toolkit (examples/common/mlp.hpp). Inputs are uniform random "images" with a
/// fixed seed: the cost of a step does not depend on the pixel values.
///
/// One benchmark iteration is one inverse period: 20 training steps, each a forward pass, a
/// backward pass and an optimizer step. K-FAC's steps add, on statistics steps, a second
/// backward pass with targets sampled from the model (true Fisher) and the factor updates;
/// once per period the refresh of every layer's damped inverses — Cholesky inverses
/// (`inverse:0`, the cheaper refresh) or eigendecompositions (`inverse:1`) — at the step it
/// is due (`async:0`), or, with `async:1`, on a background thread from that step's factors
/// and swapped in 5 steps later (KfacOptions::refresh_delay = 5, refresh_in_background).
///
/// Threads (`threads:T`): kfopt::set_threads(T) for kfopt's kernels and, when the benchmark
/// is built with OpenMP (the default when the compiler has it), Eigen::setNbThreads(T) for
/// the network's products and the preconditioning products, which are Eigen's: the same T for
/// Adam's row and K-FAC's. The counter `ms_per_step` is the wall-clock time per training step
/// (the rows use real time; with a background thread, CPU time would count both threads),
/// `optimizer_ms_per_step` the part of it spent in the optimizer's calls (K-FAC's
/// record_statistics and step, Adam's step): the part kfopt's threads act on, the rest being
/// the network's forward and backward passes (the example's code: Eigen's products, with
/// its element-wise functions on one thread).
/// `eigen_threads` shows what Eigen was told (1 without OpenMP). bench/kfac_step_report.py
/// turns a JSON run into the K-FAC/Adam ratios and the 2-over-1-thread speed-ups.
///
/// Arguments: batch size m, K-FAC's statistics period T_stats, inverse (0: Cholesky,
/// 1: eigendecomposition), async (0/1), threads. MinTime 5 s: one iteration is 20 steps of
/// 0.1–1 s. A full run takes about 15 minutes on 2 cores.
///
///     bench_kfac_step --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <chrono>
#include <random>
#include <vector>

#include <kfopt/core/parameter_block.hpp>
#include <kfopt/linalg/threads.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include "../examples/common/losses.hpp"
#include "../examples/common/mlp.hpp"

namespace {

namespace ex = kfopt_examples;
template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
constexpr int kInversePeriod = 20;
constexpr int kRefreshDelay = 5;

template <typename S>
ex::Mlp<S> autoencoder() {
  using A = ex::Activation;
  ex::Mlp<S> net({784, 1000, 500, 250, 30, 250, 500, 1000, 784},
                 {A::Tanh, A::Tanh, A::Tanh, A::Identity, A::Tanh, A::Tanh, A::Tanh,
                  A::Identity});
  std::mt19937 rng(1);
  net.initialize(rng);
  return net;
}

template <typename S>
Mat<S> random_images(Eigen::Index m) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<double> pixel(0.0, 1.0);
  Mat<S> x(m, 784);
  for (Eigen::Index j = 0; j < x.cols(); ++j)
    for (Eigen::Index i = 0; i < m; ++i) x(i, j) = static_cast<S>(pixel(rng));
  return x;
}

// Wall-clock seconds spent in the optimizer's own calls (statistics and step).
class OptimizerClock {
 public:
  template <typename F>
  auto operator()(F&& f) {
    const auto start = std::chrono::steady_clock::now();
    auto result = f();
    if (counting_) seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  }
  void start_counting() { counting_ = true; }
  double seconds() const { return seconds_; }

 private:
  bool counting_ = false;
  double seconds_ = 0.0;
};

// Runs `step` for one inverse period per iteration after two warm-up periods (allocations,
// the first inverses, and with a delayed refresh the first start and swap, which allocate
// the block copies later refreshes reuse), and reports the wall-clock time per step: the
// whole training step, and the optimizer's part of it.
template <typename Step>
void run_periods(benchmark::State& state, OptimizerClock& clock, Step&& step) {
  for (int i = 0; i < 2 * kInversePeriod; ++i) step();
  clock.start_counting();
  double seconds = 0.0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kInversePeriod; ++i) step();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const double steps = static_cast<double>(state.iterations()) * kInversePeriod;
  state.counters["ms_per_step"] = 1e3 * seconds / steps;
  state.counters["optimizer_ms_per_step"] = 1e3 * clock.seconds() / steps;
}

// Arguments: batch, threads.
template <typename S>
void BM_AdamStep(benchmark::State& state) {
  kfopt::set_threads(static_cast<int>(state.range(1)));
  Eigen::setNbThreads(static_cast<int>(state.range(1)));
  state.counters["eigen_threads"] = Eigen::nbThreads();
  const Eigen::Index m = state.range(0);
  auto net = autoencoder<S>();
  const Mat<S> x = random_images<S>(m);
  Mat<S> output_grad;
  kfopt::ParameterSet<S> params;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    params.add("W" + std::to_string(l), net.layer(l).W, net.layer(l).dW);
    params.add("b" + std::to_string(l), net.layer(l).b, net.layer(l).db);
  }
  kfopt::AdamOptions options;
  options.learning_rate = 1e-4;
  kfopt::Adam<S> adam(params, options);
  OptimizerClock clock;
  run_periods(state, clock, [&] {
    benchmark::DoNotOptimize(ex::bernoulli_cross_entropy<S>(net.forward(x), x, &output_grad));
    net.backward(output_grad);
    clock([&] { return adam.step(); });
  });
  kfopt::set_threads(0);
  Eigen::setNbThreads(0);
}

// Arguments: batch, T_stats, inverse, async, threads.
template <typename S>
void BM_KfacStep(benchmark::State& state) {
  kfopt::set_threads(static_cast<int>(state.range(4)));
  Eigen::setNbThreads(static_cast<int>(state.range(4)));
  state.counters["eigen_threads"] = Eigen::nbThreads();
  const Eigen::Index m = state.range(0);
  auto net = autoencoder<S>();
  const Mat<S> x = random_images<S>(m);
  Mat<S> output_grad;
  kfopt::KfacOptions options;
  options.learning_rate = 0.1;
  options.damping = 1e-2;
  options.momentum = 0.9;
  options.decay = 0.95;
  options.kl_clip = 1e-2;
  options.statistics_period = static_cast<int>(state.range(1));
  options.inverse_period = kInversePeriod;
  options.inverse_method = state.range(2) == 0 ? kfopt::InverseMethod::Cholesky
                                                : kfopt::InverseMethod::Eigendecomposition;
  options.refresh_delay = state.range(3) != 0 ? kRefreshDelay : 0;
  kfopt::Kfac<S> kfac(options);
  std::vector<std::size_t> ids;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    ids.push_back(kfac.add_dense_layer("layer" + std::to_string(l), layer.W, layer.dW, layer.b,
                                       layer.db));
  }
  std::mt19937_64 fisher_rng(3);
  OptimizerClock clock;
  run_periods(state, clock, [&] {
    benchmark::DoNotOptimize(ex::bernoulli_cross_entropy<S>(net.forward(x), x, &output_grad));
    net.backward(output_grad);
    if (kfac.wants_statistics()) {
      ex::sample_bernoulli_gradient(net.layers().back().h, fisher_rng, output_grad);
      net.backward(output_grad, ex::Mlp<S>::ParameterGradients::Skip);
      clock([&] {
        for (std::size_t l = 0; l < net.depth(); ++l) {
          kfac.record_statistics(ids[l], net.layer(l).a, net.layer(l).g);
        }
        return 0;
      });
    }
    if (clock([&] { return kfac.step(); }) != kfopt::Status::Success) {
      state.SkipWithError("K-FAC step failed");
    }
  });
  kfopt::set_threads(0);
  Eigen::setNbThreads(0);
}

// Batch 1000 on 1 and 2 threads; batches 256 and 2000 on one.
void adam_rows(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads"});
  for (int batch : {256, 1000, 2000}) b->Args({batch, 1});
  b->Args({1000, 2});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
}

// Batch 1000: both refreshes, synchronous and in the background, on 1 and 2 threads, and
// statistics every 5 steps; batches 256 and 2000: the Cholesky refresh at its step, one thread.
void kfac_rows(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "T_stats", "inverse", "async", "threads"});
  for (int inverse : {0, 1})
    for (int async : {0, 1})
      for (int threads : {1, 2}) b->Args({1000, 1, inverse, async, threads});
  for (int threads : {1, 2}) b->Args({1000, 5, 0, 0, threads});
  for (int batch : {256, 2000})
    for (int t_stats : {1, 5}) b->Args({batch, t_stats, 0, 0, 1});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_AdamStep, float)->Apply(adam_rows);
BENCHMARK_TEMPLATE(BM_KfacStep, float)->Apply(kfac_rows);
BENCHMARK_TEMPLATE(BM_AdamStep, double)->Apply(adam_rows);
BENCHMARK_TEMPLATE(BM_KfacStep, double)->Apply(kfac_rows);

BENCHMARK_MAIN();
