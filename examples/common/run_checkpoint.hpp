#pragma once
/// \file run_checkpoint.hpp
/// \brief Saving and resuming an example's training run in a kfopt checkpoint file
/// (`kfopt::Checkpoint`, HDF5): the model's weights, the optimizer's state dict and the run's
/// own bookkeeping, so that `--resume` continues a run exactly where the checkpoint left it.
///
/// A checkpoint file holds three state dicts:
///   - `model`: the weights (kfopt::parameters_state_dict of the model's ParameterSet);
///   - `optimizer`: the optimizer's state_dict();
///   - `run` (type "kfopt_examples::Run"): the step reached, the training time, the open
///     logging window (sum and count of the losses since the last CSV row), the mini-batch
///     sampler's permutation and position (BatchSampler) and the run's random engines (the
///     sampler's, K-FAC's sampled-Fisher targets), with the run's identity (example, task, optimizer and
///     every setting that shapes the trajectory) as hyperparameters: a checkpoint resumes
///     only the run that wrote it.

#include <kfopt/io/checkpoint.hpp>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "batches.hpp"
#include "training_loop.hpp"

namespace kfopt_examples {

/// What a run's checkpoint records besides model and optimizer.
struct RunProgress {
  long step = 0;              ///< steps taken
  double seconds = 0.0;       ///< training time so far
  double window_sum = 0.0;    ///< losses since the last CSV row: sum …
  long window_count = 0;      ///< … and count
};

/// The identity of a run: a checkpoint records it and resuming requires the same.
struct RunIdentity {
  std::string example, task, optimizer;
  std::string settings;  ///< every setting that shapes the trajectory, as text
};

/// The checkpoint of the run: its three state dicts. `sampler` may be null (a run whose
/// batches come from `engines` alone).
template <typename Scalar>
kfopt::Checkpoint run_checkpoint(const RunIdentity& id, const RunProgress& progress,
                                 const kfopt::ParameterSet<Scalar>& model,
                                 kfopt::StateDict optimizer, const BatchSampler* sampler,
                                 const std::vector<std::mt19937_64*>& engines) {
  kfopt::StateDict run("kfopt_examples::Run", kfopt::ScalarType::Float64);
  run.set_hyperparameter("example", id.example);
  run.set_hyperparameter("task", id.task);
  run.set_hyperparameter("optimizer", id.optimizer);
  run.set_hyperparameter("settings", id.settings);
  run.set_scalar<std::int64_t>("step", progress.step);
  run.set_scalar<double>("seconds", progress.seconds);
  run.set_scalar<double>("window_sum", progress.window_sum);
  run.set_scalar<std::int64_t>("window_count", progress.window_count);
  if (sampler != nullptr) {
    const BatchSampler::State s = sampler->state();
    std::vector<std::int64_t> order(s.order.begin(), s.order.end());
    run.set_array("sampler/order",
                  Eigen::Map<const Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>>(
                      order.data(), static_cast<Eigen::Index>(order.size())),
                  1);
    run.set_scalar<std::int64_t>("sampler/position", static_cast<std::int64_t>(s.position));
    run.set_random_engine("sampler/engine", s.engine);
  }
  for (std::size_t i = 0; i < engines.size(); ++i) {
    run.set_random_engine("engines/" + std::to_string(i), *engines[i]);
  }
  kfopt::Checkpoint ck;
  ck.set("run", std::move(run));
  ck.set("model", kfopt::parameters_state_dict(model));
  ck.set("optimizer", std::move(optimizer));
  return ck;
}

/// Writes the run's checkpoint (run_checkpoint) to `path` (temporary file + rename: an
/// interrupted save keeps the previous checkpoint).
template <typename Scalar>
void save_run(const std::string& path, const RunIdentity& id, const RunProgress& progress,
              const kfopt::ParameterSet<Scalar>& model, kfopt::StateDict optimizer,
              const BatchSampler* sampler, const std::vector<std::mt19937_64*>& engines) {
  kfopt::save_checkpoint(path, run_checkpoint(id, progress, model, std::move(optimizer),
                                              sampler, engines));
}

/// Reads the run's part of a checkpoint written by save_run for the run `id`: restores the
/// sampler and the engines and returns the progress. The model and the optimizer are
/// restored by the caller from `ck` ("model", "optimizer"), after this succeeded. Throws
/// std::runtime_error naming the file when the checkpoint belongs to another run.
/// Throws std::runtime_error naming the file unless `ck` is a checkpoint of the run `id`;
/// returns the step it reached.
inline long require_same_run(const std::string& path, const kfopt::Checkpoint& ck,
                             const RunIdentity& id) {
  const kfopt::StateDict& run = ck.get("run");
  if (run.type() != "kfopt_examples::Run") {
    throw std::runtime_error(path + ": not a checkpoint of an example run");
  }
  auto expect = [&](const char* name, const std::string& want) {
    const auto& got = std::get<std::string>(run.hyperparameter(name).value);
    if (got != want) {
      throw std::runtime_error(path + ": the checkpoint's " + name + " is \"" + got +
                               "\" but this run's is \"" + want + "\"");
    }
  };
  expect("example", id.example);
  expect("task", id.task);
  expect("optimizer", id.optimizer);
  expect("settings", id.settings);
  return static_cast<long>(run.scalar<std::int64_t>("step"));
}

inline RunProgress load_run(const std::string& path, const kfopt::Checkpoint& ck,
                            const RunIdentity& id, BatchSampler* sampler,
                            const std::vector<std::mt19937_64*>& engines) {
  require_same_run(path, ck, id);
  const kfopt::StateDict& run = ck.get("run");
  std::vector<std::mt19937_64> restored(engines.size());
  for (std::size_t i = 0; i < engines.size(); ++i) {
    run.random_engine("engines/" + std::to_string(i), restored[i]);
  }
  if (sampler != nullptr) {
    BatchSampler::State s = sampler->state();
    const auto order = run.array<std::int64_t>("sampler/order");
    s.order.assign(order.data(), order.data() + order.size());
    s.position = static_cast<std::size_t>(run.scalar<std::int64_t>("sampler/position"));
    run.random_engine("sampler/engine", s.engine);
    sampler->set_state(s);
  }
  for (std::size_t i = 0; i < engines.size(); ++i) *engines[i] = restored[i];
  RunProgress p;
  p.step = static_cast<long>(run.scalar<std::int64_t>("step"));
  p.seconds = run.scalar<double>("seconds");
  p.window_sum = run.scalar<double>("window_sum");
  p.window_count = static_cast<long>(run.scalar<std::int64_t>("window_count"));
  return p;
}

}  // namespace kfopt_examples
