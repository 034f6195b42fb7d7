/// \file bench_kronecker_filter.cpp
/// \brief A full training step of the Fashion-MNIST classifier with the Kronecker-factored
/// filter (Aitchison 2018, §2.1.3), K-FAC and Adam side by side (the performance target: a
/// Kronecker filter step ≤ 1.5× a K-FAC step with statistics every step, same network and
/// batch).
///
/// The network is the bayesian_filters example's classifier 784-256-128-10 (relu hidden
/// layers, softmax cross-entropy on 10 logits), built with the examples' MLP toolkit
/// (examples/common/mlp.hpp). Inputs are uniform random "images" and labels with a fixed
/// seed: the cost of a step does not depend on the values.
///
/// One benchmark iteration is 20 training steps (K-FAC's default inverse period, and two of
/// the filter's trace periods), each a forward pass, a backward pass and an optimizer step.
/// K-FAC and the Kronecker filter add a second backward pass with targets sampled from the
/// model and record the per-example statistics every step; K-FAC refreshes its
/// eigendecompositions on one step of the 20 (its defaults: statistics every step, inverse
/// period 20, eigendecomposition), the filter its drift traces on two (trace period 10, as in
/// the example). The filter's settings are the example's: η = 1e-3, σ² = 1, S = 1000,
/// Σ_prior(1) = (0.1/S) I ⊗ I. The counter `s_per_step` is the CPU time per training step;
/// ratios are read off one run. Argument: batch size m. Eigen runs on one thread.
///
///     bench_kronecker_filter --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <random>
#include <vector>

#include <kfopt/core/parameter_block.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include "../examples/common/losses.hpp"
#include "../examples/common/mlp.hpp"

namespace {

namespace ex = kfopt_examples;
constexpr int kStepsPerIteration = 20;

template <typename Scalar>
struct Problem {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  ex::Mlp<Scalar> net;
  Matrix x, output_grad;
  std::vector<int> labels;

  explicit Problem(Eigen::Index m)
      : net({784, 256, 128, 10}, {ex::Activation::Relu, ex::Activation::Relu, ex::Activation::Identity}) {
    std::mt19937 rng(1);
    net.initialize(rng);
    std::mt19937 data_rng(2);
    std::uniform_real_distribution<double> pixel(0.0, 1.0);
    std::uniform_int_distribution<int> label(0, 9);
    x.resize(m, 784);
    for (Eigen::Index j = 0; j < x.cols(); ++j)
      for (Eigen::Index i = 0; i < m; ++i) x(i, j) = static_cast<Scalar>(pixel(data_rng));
    labels.resize(static_cast<std::size_t>(m));
    for (auto& y : labels) y = label(data_rng);
  }

  void loss_and_gradient() {
    benchmark::DoNotOptimize(ex::softmax_cross_entropy<Scalar>(net.forward(x), labels, &output_grad));
    net.backward(output_grad);
  }

  template <typename Rng>
  void fisher_pass(Rng& rng) {
    ex::sample_softmax_gradient(net.layers().back().h, rng, output_grad);
    net.backward(output_grad, ex::Mlp<Scalar>::ParameterGradients::Skip);
  }
};

void set_counters(benchmark::State& state) {
  // iterations × 20 steps per second, inverted: seconds per training step (CPU time).
  state.counters["s_per_step"] = benchmark::Counter(
      kStepsPerIteration,
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

template <typename Scalar>
void BM_AdamStep(benchmark::State& state) {
  Eigen::setNbThreads(1);
  Problem<Scalar> p(state.range(0));
  kfopt::ParameterSet<Scalar> params;
  for (std::size_t l = 0; l < p.net.depth(); ++l) {
    params.add("W" + std::to_string(l), p.net.layer(l).W, p.net.layer(l).dW);
    params.add("b" + std::to_string(l), p.net.layer(l).b, p.net.layer(l).db);
  }
  kfopt::AdamOptions options;
  options.learning_rate = 1e-3;
  kfopt::Adam<Scalar> adam(params, options);
  auto step = [&] {
    p.loss_and_gradient();
    adam.step();
  };
  for (int i = 0; i < kStepsPerIteration; ++i) step();  // warm-up: allocations, moments
  for (auto _ : state) {
    for (int i = 0; i < kStepsPerIteration; ++i) step();
  }
  set_counters(state);
}

template <typename Scalar>
void BM_KfacStep(benchmark::State& state) {
  Eigen::setNbThreads(1);
  Problem<Scalar> p(state.range(0));
  kfopt::KfacOptions options;  // statistics every step, eigendecompositions every 20 steps
  kfopt::Kfac<Scalar> kfac(options);
  std::vector<std::size_t> ids;
  for (std::size_t l = 0; l < p.net.depth(); ++l) {
    auto& layer = p.net.layer(l);
    ids.push_back(kfac.add_dense_layer("layer" + std::to_string(l), layer.W, layer.dW, layer.b, layer.db));
  }
  std::mt19937_64 fisher_rng(3);
  auto step = [&] {
    p.loss_and_gradient();
    if (kfac.wants_statistics()) {
      p.fisher_pass(fisher_rng);
      for (std::size_t l = 0; l < p.net.depth(); ++l) {
        kfac.record_statistics(ids[l], p.net.layer(l).a, p.net.layer(l).g);
      }
    }
    if (kfac.step() != kfopt::Status::Success) state.SkipWithError("K-FAC step failed");
  };
  for (int i = 0; i < kStepsPerIteration; ++i) step();  // warm-up: first factors and inverses
  for (auto _ : state) {
    for (int i = 0; i < kStepsPerIteration; ++i) step();
  }
  set_counters(state);
}

template <typename Scalar>
void BM_KroneckerFilterStep(benchmark::State& state) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::setNbThreads(1);
  const Eigen::Index m = state.range(0);
  Problem<Scalar> p(m);
  const double scale = 1000.0;  // S, the example's likelihood scale
  kfopt::KroneckerFilterOptions options = kfopt::KroneckerFilterOptions::whitening(1e-3, 1.0);
  options.initial_variance = 0.1 / scale;
  options.trace_period = 10;
  options.loss_reduction = kfopt::LossReduction::Mean;
  kfopt::KroneckerFilter<Scalar> filter(options);
  std::vector<std::size_t> ids;
  for (std::size_t l = 0; l < p.net.depth(); ++l) {
    auto& layer = p.net.layer(l);
    ids.push_back(filter.add_dense_layer("layer" + std::to_string(l), layer.W, layer.dW, layer.b, layer.db));
  }
  std::mt19937_64 fisher_rng(3);
  const Scalar ratio = static_cast<Scalar>(scale / static_cast<double>(m));
  Matrix delta;
  auto step = [&] {
    p.loss_and_gradient();
    p.fisher_pass(fisher_rng);
    for (std::size_t l = 0; l < p.net.depth(); ++l) {
      auto& layer = p.net.layer(l);
      delta = ratio * layer.g;
      filter.record_statistics(ids[l], layer.a, delta);
      layer.dW *= ratio;
      layer.db *= ratio;
    }
    if (filter.step() != kfopt::Status::Success) state.SkipWithError("Kronecker filter step failed");
  };
  for (int i = 0; i < kStepsPerIteration; ++i) step();  // warm-up: buffers, first traces
  for (auto _ : state) {
    for (int i = 0; i < kStepsPerIteration; ++i) step();
  }
  set_counters(state);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_KroneckerFilterStep, double)->ArgName("batch")->Arg(128)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_KfacStep, double)->ArgName("batch")->Arg(128)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_AdamStep, double)->ArgName("batch")->Arg(128)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_KroneckerFilterStep, float)->ArgName("batch")->Arg(128)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_KfacStep, float)->ArgName("batch")->Arg(128)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_TEMPLATE(BM_AdamStep, float)->ArgName("batch")->Arg(128)->Unit(benchmark::kMillisecond)->MinTime(2.0);

BENCHMARK_MAIN();
