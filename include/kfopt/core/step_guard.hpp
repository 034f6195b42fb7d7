#pragma once
/// \file step_guard.hpp
/// \brief The pieces every optimizer's `step()` shares: per-block buffers shaped like the
/// parameters, the all-or-nothing finiteness guard, and the step counters.
///
/// The guard is what makes "a skipped step leaves parameters and state unchanged" hold:
/// every gradient of every block is checked before anything is written, so a NaN in the
/// last block cannot leave the first blocks updated.

#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/parameter_block.hpp"

namespace kfopt {

/// Counters every optimizer keeps in its State.
struct StepCounters {
  std::int64_t steps = 0;              ///< steps taken (the t of bias corrections)
  std::int64_t skipped_nonfinite = 0;  ///< steps refused for NaN/Inf in a gradient or statistic
};

/// One buffer per parameter block, of the block's shape (e.g. Adam's first moments).
template <typename Scalar>
using BlockBuffers = std::vector<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;

namespace detail {

/// Zero buffers shaped like the blocks of `params`.
template <typename Scalar>
BlockBuffers<Scalar> zero_buffers_like(const ParameterSet<Scalar>& params) {
  BlockBuffers<Scalar> buffers;
  buffers.reserve(params.size());
  for (const auto& block : params) buffers.emplace_back(block.rows(), block.cols());
  for (auto& b : buffers) b.setZero();
  return buffers;
}

/// Throws ShapeError unless `buffers` match the blocks' shapes (e.g. a State restored from a
/// checkpoint of another model).
template <typename Scalar>
void require_buffers_like(const char* operation, const char* what,
                          const BlockBuffers<Scalar>& buffers,
                          const ParameterSet<Scalar>& params) {
  if (buffers.size() != params.size()) {
    throw ShapeError(std::string(operation) + ": " + what + " has " +
                     std::to_string(buffers.size()) + " blocks but the model has " +
                     std::to_string(params.size()));
  }
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    if (buffers[i].rows() != params[i].rows() || buffers[i].cols() != params[i].cols()) {
      throw ShapeError(std::string(operation) + ": " + what + " of block '" + params[i].name() +
                       "' is " + shape_of(buffers[i]) + " but the parameter is " +
                       shape_string(params[i].rows(), params[i].cols()));
    }
  }
}

/// Checks storage and gradients of every block before anything is written. Returns
/// Status::NonFiniteInput (and counts the skip) when any gradient entry is NaN or Inf.
template <typename Scalar>
Status guard_gradients(const ParameterSet<Scalar>& params, StepCounters& counters) {
  for (const auto& block : params) block.check_storage();
  if (!params.gradients_finite()) {
    ++counters.skipped_nonfinite;
    return Status::NonFiniteInput;
  }
  return Status::Success;
}

}  // namespace detail
}  // namespace kfopt
