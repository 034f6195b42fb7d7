#pragma once
/// \file training_loop.hpp
/// \brief The examples' timed training loop: the bookkeeping every example shares (timing
/// that excludes evaluation, the training loss as the mean of the mini-batch losses since
/// the previous logged row, stopping at a non-finite loss, progress on stderr), with what
/// differs (the update, the evaluation, the CSV row) passed in as callables.

#include <chrono>
#include <cmath>
#include <string>
#include <utility>

#include "progress.hpp"

namespace kfopt_examples {

/// Where a training loop starts: step 1 of a new run, or the step after a checkpoint with
/// the time and the logging window the checkpoint recorded.
struct TrainingLoopStart {
  long first_step = 1;       ///< the first step to take (t0 + 1 after a checkpoint at t0)
  double seconds = 0.0;      ///< training time already spent
  double window_sum = 0.0;   ///< sum of the mini-batch losses since the last logged row
  long window_count = 0;     ///< how many losses that sum holds
};

/// How a training loop ended.
struct TrainingLoopOutcome {
  long steps = 0;         ///< updates taken (the diverged one included)
  double seconds = 0.0;   ///< time inside `update` and `after_log`, evaluation excluded
  bool diverged = false;  ///< the loop stopped at a non-finite mini-batch loss
};

/// Runs steps t = 1..`steps`:
/// - `update(t)` (timed) loads the batch of step t, updates, and returns the mini-batch loss
///   measured before the update;
/// - a non-finite loss calls `on_diverged(t, seconds, loss)` and ends the loop;
/// - at every `log_every`-th step and at the last, `on_log(t, seconds, mean_loss)`
///   (untimed: it evaluates) gets the mean of the losses since the previous log point;
/// - `after_log(t)` (timed) runs after that check on every step (e.g. a filter's prediction
///   step; pass `[](long) {}` for none);
/// - `progress` shows `status(mean)` with `mean` the mean of the mini-batch losses since the
///   previous log point (this step's included): the quantity the next CSV row records, so
///   the last progress line shows exactly the final train_loss of the summary table.
///
/// The overload with a TrainingLoopStart resumes a run at `start.first_step`, and calls
/// `at_step_end(t, seconds, window_sum, window_count)` (untimed) after every step, where a
/// run saves its checkpoints: resuming from what it saved continues the run exactly.
template <typename Update, typename OnLog, typename AfterLog, typename OnDiverged, typename Status,
          typename AtStepEnd>
TrainingLoopOutcome run_training_loop(const TrainingLoopStart& start_at, long steps,
                                      long log_every, ProgressBar& progress, Update&& update,
                                      OnLog&& on_log, AfterLog&& after_log,
                                      OnDiverged&& on_diverged, Status&& status,
                                      AtStepEnd&& at_step_end) {
  using Clock = std::chrono::steady_clock;
  const auto elapsed = [](Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  TrainingLoopOutcome outcome;
  outcome.seconds = start_at.seconds;
  outcome.steps = start_at.first_step - 1;
  double window_sum = start_at.window_sum;
  long window_count = start_at.window_count;
  for (long t = start_at.first_step; t <= steps; ++t) {
    auto start = Clock::now();
    const double loss = static_cast<double>(update(t));
    outcome.seconds += elapsed(start);
    outcome.steps = t;
    if (!std::isfinite(loss)) {
      outcome.diverged = true;
      on_diverged(t, outcome.seconds, loss);
      break;
    }
    window_sum += loss;
    ++window_count;
    const double window_mean = window_sum / static_cast<double>(window_count);
    // A checkpoint records the window of a regular log schedule: a row forced by the last
    // step of a shorter run does not close the window of the run it will be resumed into.
    const double open_sum = window_sum;
    const long open_count = window_count;
    if (t % log_every == 0 || t == steps) {
      on_log(t, outcome.seconds, window_mean);
      window_sum = 0.0;
      window_count = 0;
    }
    const bool regular = t % log_every == 0;
    start = Clock::now();
    after_log(t);
    outcome.seconds += elapsed(start);
    progress.update(t, std::string(status(window_mean)));
    at_step_end(t, outcome.seconds, regular ? window_sum : open_sum,
                regular ? window_count : open_count);
  }
  progress.finish();
  return outcome;
}

/// A new run from step 1, without checkpoints.
template <typename Update, typename OnLog, typename AfterLog, typename OnDiverged, typename Status>
TrainingLoopOutcome run_training_loop(long steps, long log_every, ProgressBar& progress,
                                      Update&& update, OnLog&& on_log, AfterLog&& after_log,
                                      OnDiverged&& on_diverged, Status&& status) {
  return run_training_loop(TrainingLoopStart{}, steps, log_every, progress,
                           std::forward<Update>(update), std::forward<OnLog>(on_log),
                           std::forward<AfterLog>(after_log), std::forward<OnDiverged>(on_diverged),
                           std::forward<Status>(status), [](long, double, double, long) {});
}

}  // namespace kfopt_examples
