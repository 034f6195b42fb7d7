/// \file bench_kfac_step.cpp
/// \brief A full training step of the deep autoencoder, K-FAC against Adam (the
/// performance target: a K-FAC step ≤ 1.5× an Adam step on the same autoencoder and batch,
/// inverse period 20).
///
/// The network is the Fashion-MNIST example's autoencoder 784-1000-500-250-30-250-500-1000-784
/// (tanh hidden layers, linear code layer, Bernoulli loss on 784 logits), built with the
/// examples' MLP toolkit (examples/common/mlp.hpp). Inputs are uniform random "images" with a
/// fixed seed: the cost of a step does not depend on the pixel values.
///
/// One benchmark iteration is one inverse period: 20 training steps, each a forward pass, a
/// backward pass and an optimizer step. K-FAC's steps add, on statistics steps, a second
/// backward pass with targets sampled from the model (true Fisher) and the factor updates;
/// on one step of the 20 the Cholesky refresh of every layer's damped inverses. The counter
/// `s_per_step` is the CPU time per training step; the ratio K-FAC/Adam is read off one run.
///
/// Arguments: batch size m, K-FAC's statistics period T_stats.
///
///     bench_kfac_step --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <random>
#include <vector>

#include <kfopt/core/parameter_block.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include "../examples/common/losses.hpp"
#include "../examples/common/mlp.hpp"

namespace {

namespace ex = kfopt_examples;
using Matrix = Eigen::MatrixXd;
constexpr int kInversePeriod = 20;

ex::Mlp<double> autoencoder() {
  using A = ex::Activation;
  ex::Mlp<double> net({784, 1000, 500, 250, 30, 250, 500, 1000, 784},
                      {A::Tanh, A::Tanh, A::Tanh, A::Identity, A::Tanh, A::Tanh, A::Tanh,
                       A::Identity});
  std::mt19937 rng(1);
  net.initialize(rng);
  return net;
}

Matrix random_images(Eigen::Index m) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<double> pixel(0.0, 1.0);
  Matrix x(m, 784);
  for (Eigen::Index j = 0; j < x.cols(); ++j)
    for (Eigen::Index i = 0; i < m; ++i) x(i, j) = pixel(rng);
  return x;
}

void set_counters(benchmark::State& state) {
  // iterations × 20 steps per second, inverted: seconds per training step (CPU time).
  state.counters["s_per_step"] = benchmark::Counter(
      kInversePeriod,
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void BM_AdamStep(benchmark::State& state) {
  const Eigen::Index m = state.range(0);
  auto net = autoencoder();
  const Matrix x = random_images(m);
  Matrix output_grad;
  kfopt::ParameterSet<double> params;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    params.add("W" + std::to_string(l), net.layer(l).W, net.layer(l).dW);
    params.add("b" + std::to_string(l), net.layer(l).b, net.layer(l).db);
  }
  kfopt::AdamOptions options;
  options.learning_rate = 1e-4;
  kfopt::Adam<double> adam(params, options);
  auto step = [&] {
    benchmark::DoNotOptimize(ex::bernoulli_cross_entropy<double>(net.forward(x), x, &output_grad));
    net.backward(output_grad);
    adam.step();
  };
  for (int i = 0; i < kInversePeriod; ++i) step();  // warm-up: allocations, moments
  for (auto _ : state) {
    for (int i = 0; i < kInversePeriod; ++i) step();
  }
  set_counters(state);
}

void BM_KfacStep(benchmark::State& state) {
  const Eigen::Index m = state.range(0);
  auto net = autoencoder();
  const Matrix x = random_images(m);
  Matrix output_grad;
  kfopt::KfacOptions options;
  options.learning_rate = 0.1;
  options.damping = 1e-2;
  options.momentum = 0.9;
  options.decay = 0.95;
  options.kl_clip = 1e-2;
  options.statistics_period = static_cast<int>(state.range(1));
  options.inverse_period = kInversePeriod;
  options.inverse_method = kfopt::InverseMethod::Cholesky;
  kfopt::Kfac<double> kfac(options);
  std::vector<std::size_t> ids;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    ids.push_back(kfac.add_dense_layer("layer" + std::to_string(l), layer.W, layer.dW, layer.b,
                                       layer.db));
  }
  std::mt19937_64 fisher_rng(3);
  auto step = [&] {
    benchmark::DoNotOptimize(ex::bernoulli_cross_entropy<double>(net.forward(x), x, &output_grad));
    net.backward(output_grad);
    if (kfac.wants_statistics()) {
      ex::sample_bernoulli_gradient(net.layers().back().h, fisher_rng, output_grad);
      net.backward(output_grad, ex::Mlp<double>::ParameterGradients::Skip);
      for (std::size_t l = 0; l < net.depth(); ++l) {
        kfac.record_statistics(ids[l], net.layer(l).a, net.layer(l).g);
      }
    }
    if (kfac.step() != kfopt::Status::Success) state.SkipWithError("K-FAC step failed");
  };
  for (int i = 0; i < kInversePeriod; ++i) step();  // warm-up: first factors and inverses
  for (auto _ : state) {
    for (int i = 0; i < kInversePeriod; ++i) step();
  }
  set_counters(state);
}

}  // namespace

BENCHMARK(BM_AdamStep)
    ->ArgName("batch")
    ->Arg(256)
    ->Arg(1000)
    ->Arg(2000)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);
BENCHMARK(BM_KfacStep)
    ->ArgNames({"batch", "T_stats"})
    ->Args({256, 1})
    ->Args({256, 5})
    ->Args({1000, 1})
    ->Args({1000, 5})
    ->Args({2000, 1})
    ->Args({2000, 5})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

BENCHMARK_MAIN();
