#pragma once
/// \file step_guard.hpp
/// \brief The transactional step every optimizer shares: per-block buffers shaped like the
/// parameters, the input guard, the guarded in-place update with its finiteness check and
/// rollback, the commit, the step counters, and the guard against use of a moved-from
/// optimizer.
///
/// **Contract of a guarded step** (what makes "a refused step leaves parameters and state
/// bit-for-bit unchanged" hold):
///
/// 1. Every block's storage still has its registered shape (`require_storage`, run by
///    `GuardedUpdate::run` before anything is read: ShapeError naming the operation and the
///    block).
/// 2. The optimizer computes its new state into scratch buffers of its own (`next` buffers,
///    allocated once and reused: no allocation per step) and its new parameters through
///    `GuardedUpdate`, tile by tile, in place in the caller's storage. For each tile, one
///    pass (`TileGuard::checked`, core/checked_store.hpp) saves the old values into a
///    rollback copy, checks the gradient and the old values, stores the new state and the
///    new values and checks them.
/// 3. The first tile with a non-finite input or result stops the step: `GuardedUpdate` puts
///    back every parameter tile already written (from the rollback copy) and returns
///    Status::NonFiniteInput if any gradient or current parameter anywhere is NaN/Inf (a
///    parameter already NaN/Inf in the caller's storage is refused, not stepped), else
///    Status::Overflow; the step returns `refuse(counters, status)`. The state buffers were
///    not touched: nothing was changed.
/// 4. Only when every tile passed, the state buffers are swapped with their scratch
///    (`swap_buffers`, O(1) per block): the commit.
///
/// Cost against an unguarded in-place update (bench/bench_step_guard.cpp, same run, one
/// thread): one pass over the data either way; the guard adds one write stream (the rollback
/// copy of the parameters), writes the new state to other memory than it reads the old
/// state from, and one multiply and one OR per value checked. Measured (bench/README.md,
/// one thread, float and double, two runs): at 10⁶ parameters Adam and RmsProp take
/// 1.1–1.3× the unguarded step in double and 1.2–1.9× in float, Sgd with momentum 1.3–1.6×;
/// at 10⁴ (data in cache) Adam and RmsProp 1.4–2.2×, Sgd 2.1–2.3× (its update is two
/// multiply-adds per element, less than the copy and the checks); FilterAdam (its update and
/// prediction in one vectorized pass, against the same pass unguarded) 1.3–1.4× at 10⁴,
/// 1.8–1.9× at 10⁶ — and 0.2–0.5× the time of its step before the guard, which was scalar.
/// The check ORs `x · 0` (±0 for a finite x, NaN otherwise), so it must not be compiled
/// with -ffinite-math-only (or -ffast-math), which kfopt never uses.
///
/// **Adopting the guard** in another optimizer (K-FAC's step and record_statistics, for
/// instance) takes a few lines:
///
///     const Status in = detail::begin_step("kfopt::Kfac::step", params_, state_.counters);
///     if (in != Status::Success) return in;
///     ... compute the new factors / momentum into next_* buffers ...
///     if (!detail::all_finite(next_a, next_g))
///       return detail::refuse(state_.counters, Status::Overflow);
///     detail::swap_buffers(state_.m, next_m);   // or A.swap(next_A)
///
/// or, for an element-wise update of the parameters, all in one guarded pass:
///
///     const Status s = guarded_.run(op, params_, [&](std::size_t i, Eigen::Index o,
///         Eigen::Index n, const auto& grad, const auto& p, auto& pn, auto& guard) {
///       const auto m = mu * detail::tile(state_.m[i], o, n) + grad;
///       return guard.checked(detail::store(detail::tile(next_m[i], o, n), m),
///                            detail::store(pn, p - lr * m));
///     });
///     if (s != Status::Success) return detail::refuse(state_.counters, s);
///     detail::swap_buffers(state_.m, next_m);
///
/// and a statistics update (a factor `A ← ε A + (1−ε) aᵀa/k`) is guarded the same way: form
/// the new factor in scratch, `all_finite(next_A)`, then swap — so a batch with one entry at
/// 1e300 (whose aᵀa overflows) is refused whole and leaves A unchanged.

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kfopt/core/checked_store.hpp"
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

/// Whether every entry of every tile is finite, in one vectorized pass over all of them (the
/// sum of `x · 0` over the tiles: ±0 when every x is finite, NaN otherwise). The tiles must
/// have the same length (a guarded step's tiles do).
template <typename... Derived>
bool all_finite_tiles(const Eigen::ArrayBase<Derived>&... xs) {
  using Scalar = typename std::common_type<typename Derived::Scalar...>::type;
  return ((xs.derived() * Scalar(0)) + ...).sum() == Scalar(0);
}

/// Throws ShapeError (naming `operation` and the block) unless every block's storage still
/// has its registered shape.
template <typename Scalar>
void require_storage(const char* operation, const ParameterSet<Scalar>& params) {
  for (const auto& block : params) block.check_storage(operation);
}

/// Which inputs a guarded pass checks for finiteness besides its results.
enum class GuardedInputs {
  GradientsAndValues,  ///< the gradients and the current parameter values (a step)
  Values,              ///< the current parameter values only (a filter's prediction)
};

/// What a guarded pass's kernel gets for one tile besides its inputs: the way to save the
/// tile's current parameter values (the rollback copy) and check the inputs, fused with the
/// kernel's own stores.
template <typename Scalar>
class TileGuard {
 public:
  /// The tile [offset, offset + n) of `value` (the caller's storage) and of its rollback copy
  /// `saved`; `gradient` is checked when not null.
  TileGuard(Scalar* saved, const Scalar* value, const Scalar* gradient, Eigen::Index n)
      : saved_(saved, n), current_(value, n), gradient_(gradient), n_(n) {}

  /// In one pass, element by element: saves the current values, then evaluates the kernel's
  /// `store(...)` / `check(...)` terms (checked_store.hpp). Returns whether the inputs and every value stored are
  /// finite. The kernel must write the new values (and its state) through these terms.
  template <typename... Terms>
  bool checked(const Terms&... terms) {
    saved_done_ = true;
    if (gradient_ != nullptr) {
      return store_checked<Scalar>(n_, store(saved_, current_),
                                   check(ConstTile<Scalar>(gradient_, n_)), terms...);
    }
    return store_checked<Scalar>(n_, store(saved_, current_), terms...);
  }
  /// Saves and checks the inputs alone (kernels written as element loops call it first,
  /// then check their results with all_finite_tiles). Returns whether the inputs are finite.
  bool save() { return checked(); }
  /// Whether the values were saved (GuardedUpdate verifies it after the kernel).
  bool saved() const noexcept { return saved_done_; }

 private:
  Tile<Scalar> saved_;
  ConstTile<Scalar> current_;
  const Scalar* gradient_;
  Eigen::Index n_;
  bool saved_done_ = false;
};

/// The guarded pass of a step (steps 1–4 of the file comment): reads the inputs, writes the
/// new parameter values into the caller's storage tile by tile, all or nothing.
///
/// `run(operation, params, kernel, inputs)` calls, for every block i and every tile
/// [offset, offset + n) of it, `kernel(i, offset, n, gradient, old_values, new_values,
/// guard)` (ConstTile, ConstTile, Tile, TileGuard&). `old_values` and `new_values` are the
/// same tile of the caller's storage: element k is read before element k is written (the
/// last term writes the new values; an element loop reads p[k] before it writes pn[k]), and
/// a kernel never reads back a value it stored (it uses the expression again: a load of a
/// just-stored SIMD packet can miss store forwarding). `guard` fills the rollback copy. The
/// kernel either stores
/// everything (new values and its new state, into its own scratch) through
/// `guard.checked(store(...), ...)` — one pass over the tile that also saves and checks the
/// inputs — and returns its result, or (element loops) calls `guard.save()` first, writes,
/// and returns whether the new values and state are finite. On the first failure every tile
/// already written is restored from the copy, so the parameters are bit-for-bit what they
/// were, and run returns Status::NonFiniteInput when any input (gradient or current value,
/// or value only with GuardedInputs::Values) anywhere is not finite, Status::Overflow
/// otherwise (the caller counts it with `refuse`). Throws ShapeError before anything is read
/// if a block's storage changed shape. Allocates only when the shapes change.
template <typename Scalar>
class GuardedUpdate {
 public:
  /// Tile length: 2048 elements. A fused kernel reads its data once per tile, so the tile
  /// only amortizes the per-tile setup (with 512, Adam and RmsProp were 25–50% slower at 10⁴
  /// parameters); an element-loop kernel's check then reads a tile that is in L1 or L2.
  static constexpr Eigen::Index kTile = 2048;

  /// `gradient_scale` (gradient clipping, core/gradient_clipping.hpp) multiplies every
  /// gradient the kernel reads: when it is not 1, each tile's gradients are scaled into a
  /// tile of scratch (in cache) and the kernel reads that; the caller's storage is not written
  /// and the finiteness check reads the gradients as they are.
  template <typename Kernel>
  Status run(const char* operation, ParameterSet<Scalar>& params, Kernel&& kernel,
             GuardedInputs inputs = GuardedInputs::GradientsAndValues,
             Scalar gradient_scale = Scalar(1)) {
    require_storage(operation, params);
    shape_buffers_like(backup_, params);
    const bool gradients = inputs == GuardedInputs::GradientsAndValues;
    const bool scaled = gradients && gradient_scale != Scalar(1);
    if (scaled && scaled_gradient_.size() != kTile) scaled_gradient_.resize(kTile);
    for (std::size_t i = 0; i < params.size(); ++i) {
      Scalar* value = params[i].value().data();
      const Scalar* gradient = params[i].gradient().data();
      Scalar* saved = backup_[i].data();
      const Eigen::Index size = params[i].size();
      for (Eigen::Index offset = 0; offset < size; offset += kTile) {
        const Eigen::Index n = std::min(kTile, size - offset);
        TileGuard<Scalar> guard(saved + offset, value + offset,
                                gradients ? gradient + offset : nullptr, n);
        Tile<Scalar> out(value + offset, n);
        const Scalar* read = gradient + offset;
        if (scaled) {
          scaled_gradient_.head(n) = gradient_scale * ConstTile<Scalar>(read, n);
          read = scaled_gradient_.data();
        }
        const bool ok = kernel(i, offset, n, ConstTile<Scalar>(read, n),
                               ConstTile<Scalar>(value + offset, n), out, guard);
        assert(guard.saved() && "a guarded kernel must save the old values (TileGuard)");
        if (!ok) {
          rollback(params, i, offset + n);
          return inputs_finite(params, gradients) ? Status::Overflow : Status::NonFiniteInput;
        }
      }
    }
    return Status::Success;
  }

 private:
  // Restores blocks 0..block−1 whole and the first `end` elements of `block`.
  void rollback(ParameterSet<Scalar>& params, std::size_t block, Eigen::Index end) {
    for (std::size_t j = 0; j <= block && j < params.size(); ++j) {
      const Eigen::Index n = j < block ? params[j].size() : end;
      if (n > 0) Tile<Scalar>(params[j].value().data(), n) = tile(backup_[j], 0, n);
    }
  }
  static bool inputs_finite(const ParameterSet<Scalar>& params, bool gradients) {
    for (const auto& block : params) {
      if (!all_finite(block.value()) || (gradients && !all_finite(block.gradient()))) return false;
    }
    return true;
  }

  BlockBuffers<Scalar> backup_;
  Eigen::Array<Scalar, Eigen::Dynamic, 1> scaled_gradient_;  // one tile of clipped gradients
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

/// The input guard of a step that does not go through GuardedUpdate (whose pass checks its
/// inputs itself): storage shapes (ShapeError naming `operation`), then finiteness of every
/// gradient and every current parameter value, in a pass of their own. Returns
/// Status::NonFiniteInput (counted) when any is NaN or Inf; nothing is written.
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

}  // namespace detail
}  // namespace kfopt
