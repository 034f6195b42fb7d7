#pragma once
/// \file step_guard.hpp
/// \brief The transactional step every optimizer shares: per-block buffers shaped like the
/// parameters, the input guard, the one-pass finiteness check of the results, the commit,
/// the step counters, and the guard against use of a moved-from optimizer.
///
/// **Contract of a guarded step** (what makes "a refused step leaves parameters and state
/// bit-for-bit unchanged" hold):
///
/// 1. `begin_step(op, params, counters)`: every block's storage still has its registered
///    shape (ShapeError naming `op` and the block), every gradient and every current
///    parameter value is finite (else Status::NonFiniteInput, counted). A parameter that is
///    already NaN/Inf in the caller's storage is refused, not stepped.
/// 2. The optimizer computes its new state into scratch buffers of its own (`next` buffers,
///    allocated once and reused: no allocation per step) and its new parameters through
///    `GuardedUpdate`, tile by tile (a few KB, so the check reads L1-resident data).
/// 3. Each tile's results are checked by `all_finite` (one vectorized pass); the first
///    non-finite one stops the step, `GuardedUpdate` puts back the parameter tiles already
///    written (from its backup) and the step returns `refuse(counters, Status::Overflow)`:
///    nothing was changed.
/// 4. Only when every tile passed, the state buffers are swapped with their scratch
///    (`swap_buffers`, O(1) per block): the commit.
///
/// Cost against an unguarded in-place update: one extra write stream (the backup of the old
/// parameters); the state is swapped, not copied, and the check reads cached data. The check
/// sums `x − x` (0 for a finite x, NaN otherwise) with Eigen's vectorized reduction, so it
/// must not be compiled with -ffinite-math-only (or -ffast-math), which kfopt never uses.
///
/// **Adopting the guard** in another optimizer (K-FAC's step and record_statistics, for
/// instance) takes a few lines:
///
///     const Status in = detail::begin_step("kfopt::Kfac::step", params_, state_.counters);
///     if (in != Status::Success) return in;
///     ... compute the new factors / momentum into next_* buffers, or the new parameters
///         tile by tile with guarded_.run(params_, kernel) ...
///     if (!ok || !detail::all_finite(next_a, next_g))
///       return detail::refuse(state_.counters, Status::Overflow);
///     detail::swap_buffers(state_.m, next_m);   // or A.swap(next_A)
///
/// and a statistics update (a factor `A ← ε A + (1−ε) aᵀa/k`) is guarded the same way: form
/// the new factor in scratch, `all_finite(next_A)`, then swap — so a batch with one entry at
/// 1e300 (whose aᵀa overflows) is refused whole and leaves A unchanged.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/parameter_block.hpp"

namespace kfopt {

/// Counters every optimizer keeps in its State.
struct StepCounters {
  std::int64_t steps = 0;  ///< steps taken (the t of bias corrections)
  /// Steps refused because an input (gradient, statistic, current parameter) or a result
  /// (new parameters or state: Status::Overflow) was not finite.
  std::int64_t skipped_nonfinite = 0;
};

/// One buffer per parameter block, of the block's shape (e.g. Adam's first moments).
template <typename Scalar>
using BlockBuffers = std::vector<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;

namespace detail {

/// Marks an object that was moved from. Held as a member, it makes the enclosing class's
/// implicit move constructor and move assignment leave the source "moved from"; every public
/// operation then calls `require(op)` first and gets a clear InvalidInputError instead of
/// reading moved-out buffers. Copies stay usable. Costs one bool.
class MoveSentinel {
 public:
  MoveSentinel() = default;
  MoveSentinel(const MoveSentinel&) = default;
  MoveSentinel& operator=(const MoveSentinel&) = default;
  MoveSentinel(MoveSentinel&& other) noexcept : usable_(other.usable_) { other.usable_ = false; }
  MoveSentinel& operator=(MoveSentinel&& other) noexcept {
    usable_ = other.usable_;
    other.usable_ = false;
    return *this;
  }
  bool usable() const noexcept { return usable_; }
  /// Throws InvalidInputError naming `operation` if the object was moved from.
  void require(const char* operation) const {
    if (!usable_) {
      throw InvalidInputError(std::string(operation) +
                              ": this optimizer was moved from; use the object it was moved "
                              "into (or assign a new optimizer to this one)");
    }
  }

 private:
  bool usable_ = true;
};

/// Whether every entry of `x` is finite, in one vectorized pass (a sum of `x − x`).
template <typename Derived>
bool all_finite_one(const Eigen::DenseBase<Derived>& x) {
  using Scalar = typename Derived::Scalar;
  if (x.size() == 0) return true;
  const auto& a = x.derived().array();
  return (a - a).sum() == Scalar(0);
}

/// Whether every entry of every argument is finite (one pass over each).
template <typename... Derived>
bool all_finite(const Eigen::DenseBase<Derived>&... xs) {
  bool ok = true;
  using expand = int[];
  (void)expand{0, (ok = ok && all_finite_one(xs), 0)...};
  return ok;
}

/// Whether every entry of every buffer is finite.
template <typename Scalar>
bool all_finite(const BlockBuffers<Scalar>& buffers) {
  for (const auto& b : buffers) {
    if (!all_finite_one(b)) return false;
  }
  return true;
}

/// A refused step: counts it and returns `status`. Nothing else changes.
inline Status refuse(StepCounters& counters, Status status) {
  ++counters.skipped_nonfinite;
  return status;
}

/// Zero buffers shaped like the blocks of `params`.
template <typename Scalar>
BlockBuffers<Scalar> zero_buffers_like(const ParameterSet<Scalar>& params) {
  BlockBuffers<Scalar> buffers;
  buffers.reserve(params.size());
  for (const auto& block : params) buffers.emplace_back(block.rows(), block.cols());
  for (auto& b : buffers) b.setZero();
  return buffers;
}

/// Makes `buffers` (scratch) shaped like the blocks, allocating only when they are not.
template <typename Scalar>
void shape_buffers_like(BlockBuffers<Scalar>& buffers, const ParameterSet<Scalar>& params) {
  if (buffers.size() != params.size()) buffers.resize(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (buffers[i].rows() != params[i].rows() || buffers[i].cols() != params[i].cols()) {
      buffers[i].resize(params[i].rows(), params[i].cols());
    }
  }
}

/// Swaps state buffers with their scratch (the commit of a state, O(1) per block).
template <typename Scalar>
void swap_buffers(BlockBuffers<Scalar>& state, BlockBuffers<Scalar>& next) {
  for (std::size_t i = 0; i < state.size(); ++i) state[i].swap(next[i]);
}

/// Copies the new parameter values into the caller's storage (the commit of the parameters).
template <typename Scalar>
void commit_parameters(ParameterSet<Scalar>& params, const BlockBuffers<Scalar>& next) {
  for (std::size_t i = 0; i < params.size(); ++i) params[i].value() = next[i];
}

/// A contiguous tile of a buffer, as an array (element-wise kernels of guarded steps).
template <typename Scalar>
using Tile = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <typename Scalar>
using ConstTile = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

/// Elements [offset, offset + n) of a buffer (column-major order).
template <typename Scalar>
Tile<Scalar> tile(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& m, Eigen::Index offset,
                  Eigen::Index n) {
  return Tile<Scalar>(m.data() + offset, n);
}
template <typename Scalar>
ConstTile<Scalar> tile(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& m,
                       Eigen::Index offset, Eigen::Index n) {
  return ConstTile<Scalar>(m.data() + offset, n);
}

/// Writes new parameter values into the caller's storage tile by tile, all or nothing (step
/// 2–3 of the guarded step above).
///
/// `run(params, kernel)` calls, for every block i and every tile [offset, offset + n) of it,
/// `kernel(i, offset, n, gradient, old_values, new_values)` (ConstTile, ConstTile, Tile):
/// the kernel writes the tile's new parameters into `new_values` and its new state into its
/// own scratch, and returns whether that state is finite. The new values are checked too;
/// if both pass, the old values are saved and the new ones written. On the first failure
/// every tile already written is restored and run returns false: the parameters are
/// bit-for-bit what they were. Storage is assumed checked (begin_step). Allocates only when
/// the shapes change.
template <typename Scalar>
class GuardedUpdate {
 public:
  /// Tile length: 512 elements (2 KB in float, 4 KB in double) keep a tile's inputs and
  /// outputs in L1 between the kernel and the check.
  static constexpr Eigen::Index kTile = 512;

  template <typename Kernel>
  bool run(ParameterSet<Scalar>& params, Kernel&& kernel) {
    shape_buffers_like(backup_, params);
    if (new_values_.size() != kTile) new_values_.resize(kTile);
    for (std::size_t i = 0; i < params.size(); ++i) {
      Scalar* value = params[i].value().data();
      const Scalar* gradient = params[i].gradient().data();
      Scalar* saved = backup_[i].data();
      const Eigen::Index size = params[i].size();
      for (Eigen::Index offset = 0; offset < size; offset += kTile) {
        const Eigen::Index n = std::min(kTile, size - offset);
        const ConstTile<Scalar> old_values(value + offset, n);
        Tile<Scalar> out(new_values_.data(), n);
        const bool ok = kernel(i, offset, n, ConstTile<Scalar>(gradient + offset, n), old_values, out);
        if (!ok || !all_finite_one(out)) {
          rollback(params, i, offset);
          return false;
        }
        Tile<Scalar>(saved + offset, n) = old_values;
        Tile<Scalar>(value + offset, n) = out;
      }
    }
    return true;
  }

 private:
  void rollback(ParameterSet<Scalar>& params, std::size_t block, Eigen::Index offset) {
    for (std::size_t j = 0; j <= block && j < params.size(); ++j) {
      const Eigen::Index n = j < block ? params[j].size() : offset;
      if (n > 0) Tile<Scalar>(params[j].value().data(), n) = tile(backup_[j], 0, n);
    }
  }

  BlockBuffers<Scalar> backup_;
  Eigen::Array<Scalar, Eigen::Dynamic, 1> new_values_;
};

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

/// What a restored buffer must satisfy besides its shape.
enum class BufferRange {
  Finite,       ///< every entry finite
  NonNegative,  ///< every entry finite and >= 0 (second moments, variances)
};

/// Throws (ShapeError / InvalidInputError naming the operation, the entry, the block, the
/// element and its value) unless `buffers` are shaped like the blocks and in `range`.
template <typename Scalar>
void require_state_buffers(const char* operation, const char* what,
                           const BlockBuffers<Scalar>& buffers,
                           const ParameterSet<Scalar>& params, BufferRange range) {
  require_buffers_like(operation, what, buffers, params);
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const auto& b = buffers[i];
    if (all_finite_one(b) && (range == BufferRange::Finite || b.size() == 0 ||
                              b.minCoeff() >= Scalar(0))) {
      continue;
    }
    for (Eigen::Index k = 0; k < b.size(); ++k) {
      const Scalar v = b.data()[k];
      const bool finite = v - v == Scalar(0);
      if (!finite || (range == BufferRange::NonNegative && !(v >= Scalar(0)))) {
        std::ostringstream os;
        os << operation << ": " << what << " of block '" << params[i].name() << "' entry "
           << k << " is " << v << " but must be finite"
           << (range == BufferRange::NonNegative ? " and >= 0" : "");
        throw InvalidInputError(os.str());
      }
    }
  }
}

/// Throws InvalidInputError naming the operation and the counter unless `value >= 0`.
inline void require_counter(const char* operation, const char* what, std::int64_t value) {
  if (value < 0) {
    throw InvalidInputError(std::string(operation) + ": " + what + " is " +
                            std::to_string(value) + " but must be >= 0");
  }
}

/// Throws InvalidInputError unless both step counters are >= 0.
inline void require_counters(const char* operation, const StepCounters& counters) {
  require_counter(operation, "counters.steps", counters.steps);
  require_counter(operation, "counters.skipped_nonfinite", counters.skipped_nonfinite);
}

/// Step 1 of a guarded step (see the file comment): storage shapes (ShapeError naming
/// `operation`), then finiteness of every gradient and every current parameter value.
/// Returns Status::NonFiniteInput (counted) when any is NaN or Inf; nothing is written.
template <typename Scalar>
Status begin_step(const char* operation, const ParameterSet<Scalar>& params,
                  StepCounters& counters) {
  for (const auto& block : params) block.check_storage(operation);
  for (const auto& block : params) {
    if (!all_finite(block.gradient(), block.value())) {
      return refuse(counters, Status::NonFiniteInput);
    }
  }
  return Status::Success;
}

/// Checks storage and gradients (not the parameter values) of every block before anything
/// is written. Returns Status::NonFiniteInput (and counts the skip) when any gradient entry
/// is NaN or Inf. Prefer begin_step, which also refuses non-finite parameters.
template <typename Scalar>
Status guard_gradients(const ParameterSet<Scalar>& params, StepCounters& counters,
                       const char* operation = "kfopt::ParameterSet") {
  for (const auto& block : params) block.check_storage(operation);
  if (!params.gradients_finite()) {
    ++counters.skipped_nonfinite;
    return Status::NonFiniteInput;
  }
  return Status::Success;
}

}  // namespace detail
}  // namespace kfopt
