#pragma once
/// \file factor_moments.hpp
/// \brief Bias-corrected moving averages of Kronecker factors: `A0 = E[a aᵀ]` from a batch,
/// and `A0`, `A1 = E[a_{t+1} a_tᵀ]` from time-major sequences of variable lengths.
///
/// K-FAC's factors are second moments of a layer's inputs `a` (and of the pre-activation
/// gradients `g`), estimated per mini-batch and averaged over batches with an exponential
/// decay β (Martens & Grosse 2015, §5; RNN K-FAC, Martens, Ba & Johnson 2018, §3.5.4 and §4).
/// kfopt keeps the *bias-corrected* average, i.e. the β-weighted mean of the batch
/// estimates seen so far,
///
///     Â_t = Σ_s β^{t−s} M_s / Σ_s β^{t−s},
///
/// which equals Adam-style `S_t / (1 − β^t)` with `S_t = β S_{t−1} + (1 − β) M_t`, and is
/// updated as `w_t = β w_{t−1} + 1`, `Â_t = Â_{t−1} + (M_t − Â_{t−1}) / w_t`. The first batch
/// is taken as it is (no zero-initialization bias); β = 1 gives the plain mean of all batches.
///
/// Recurrent layers (RNN K-FAC §3.5.4): for m sequences with lengths T_i, the batch
/// estimates are
///
///     M0 = (1/(m E[T])) Σ_i Σ_{t<T_i}   a_{t,i} a_{t,i}ᵀ,
///     M1 = (1/(m E[T])) Σ_i Σ_{t<T_i−1} a_{t+1,i} a_{t,i}ᵀ,     m E[T] = Σ_i T_i,
///
/// both with the same normalizer, so that `[[A0, A1], [A1ᵀ, A0]] ⪰ 0` and the spectral
/// radius of `A1 A0⁻¹` is at most 1 (appendix B.2, Lemma 1); both averages share one weight
/// sequence, so the bound survives averaging.
///
/// Homogeneous coordinate: with `homogeneous = true`, a coordinate 1 is appended to every
/// (valid) `a` so that a bias folds into the weight matrix (the factor is (n+1)×(n+1)),
/// computed without copying the batch when no mask is involved.
///
/// Cost per update: a symmetric rank-k update (n²k flops for k valid rows) for A0, one
/// n×n×k product (2n²k flops) for A1, and O(n²) for the blend. No heap allocation once the
/// batch shape repeats.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/lapack_backend.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"

namespace kfopt {

/// Hyperparameters of a factor moving average.
struct FactorAverageOptions {
  /// Decay β of the moving average: the weight of the previous average relative to a new
  /// batch estimate. Range (0, 1]; β = 1 averages all batches equally. Default 0.95
  /// (Martens & Grosse 2015 use min(1 − 1/k, 0.95); the bias correction makes the
  /// 1 − 1/k warm-up unnecessary).
  double decay = 0.95;
  /// Append the homogeneous coordinate 1 to each input vector (bias folding). Default off.
  bool homogeneous = false;
  /// Keep only the diagonal `E[a_i²]` (FactorMovingAverage only): exact for one-hot inputs
  /// (an embedding layer's A), an approximation for a very wide layer's G (RNN K-FAC §4.1).
  /// The value is then a dimension×1 column. Default off.
  bool diagonal = false;

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    detail::require_hyperparameter(decay > 0.0 && decay <= 1.0, "kfopt::FactorAverageOptions",
                                   "decay", decay, "(0, 1]");
  }
};

namespace detail {

/// Lower triangle of `C ← keep·C + scale·XᵀX` for n×n C and X k×n (rows are samples); the
/// strict upper triangle is not written (it goes stale).
/// With `keep = 0` the old C is not read (it may hold anything); `keep = 1` costs no pass
/// over C. The moving-average blend and the batch's Gram matrix with no n×n temporary: the
/// Eigen path scales the lower triangle (unless keep is 0 or 1) and accumulates into it
/// (accumulate_lower_gram); with the LAPACK backend (KFOPT_USE_LAPACK, float or double) it
/// is one BLAS `syrk` call. n²k flops.
template <typename Scalar, DecompositionBackend Backend, typename DerivedX>
void blend_gram_lower(Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C,
                      const Eigen::MatrixBase<DerivedX>& X, Scalar keep, Scalar scale) {
  const Eigen::Index n = C.rows();
  if (n == 0) return;
  if (keep == Scalar(0)) C.setZero();  // the old value is not read, not even as 0·NaN
  require_backend_supported<Scalar, Backend>();
  bool done = false;
  if constexpr (Backend == DecompositionBackend::Lapack) {
#ifdef KFOPT_USE_LAPACK
    // syrk reads X through a leading dimension: it needs unit inner stride (column-major).
    if (X.derived().innerStride() == 1 && X.rows() > 0) {
      constexpr const char* op = "kfopt::FactorMovingAverage (BLAS syrk)";
      lapack::syrk_lower_t(lapack::to_int(n, op), lapack::to_int(X.rows(), op), scale,
                           X.derived().data(), lapack::to_int(X.derived().outerStride(), op),
                           keep, C.data(), lapack::to_int(C.outerStride(), op));
      done = true;
    }
#endif
  }
  if (!done) {
    if (keep != Scalar(0) && keep != Scalar(1)) {
      for (Eigen::Index j = 0; j < n; ++j) C.col(j).tail(n - j) *= keep;
    }
    accumulate_lower_gram<Scalar>(C, X, 0, scale);
  }
}

/// `C ← keep·C + scale·XᵀX` with both triangles written (blend_gram_lower, then the lower
/// triangle mirrored: the result is exactly symmetric).
template <typename Scalar, DecompositionBackend Backend, typename DerivedX>
void blend_gram(Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C,
                const Eigen::MatrixBase<DerivedX>& X, Scalar keep, Scalar scale) {
  blend_gram_lower<Scalar, Backend>(C, X, keep, scale);
  mirror_lower_to_upper(C);
}

/// Whether every entry of X is finite, in one vectorized reduction: `Σ 0·x_ij` is 0 exactly
/// when no entry is NaN or ±Inf (0·x is NaN for those, and NaN propagates through the sum).
/// About 3–5× faster than Eigen's allFinite() on a 256×n batch (measured, AVX-512).
template <typename Derived>
bool all_finite(const Eigen::MatrixBase<Derived>& X) {
  using Scalar = typename Derived::Scalar;
  return (X.array() * Scalar(0)).sum() == Scalar(0);
}

/// Admission of a contribution whose new average is bounded entry-wise by
/// `keep · max_diagonal + scale · largest_new` (see admit_gram_update): Overflow when that
/// bound exceeds half of Scalar's largest value, Success otherwise.
template <typename Scalar>
Status admit_bound(double keep, double max_diagonal, double scale, double largest_new) {
  const double bound = keep * max_diagonal + scale * largest_new;
  return bound <= 0.5 * static_cast<double>(std::numeric_limits<Scalar>::max()) ? Status::Success
                                                                                : Status::Overflow;
}

/// Largest diagonal entry of a square matrix, or largest entry of a column (a diagonal
/// factor); 0 when empty.
template <typename Scalar>
double largest_diagonal(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& m) {
  double largest = 0.0;
  if (m.cols() == 1 && m.rows() != 1) {
    for (Eigen::Index i = 0; i < m.rows(); ++i) largest = std::max(largest, static_cast<double>(m(i, 0)));
    return largest;
  }
  for (Eigen::Index i = 0; i < m.rows(); ++i) largest = std::max(largest, static_cast<double>(m(i, i)));
  return largest;
}

/// Admission of a batch into a moving average `C ← keep·C + scale·XᵀX` (both triangles of a
/// symmetric C, plus, for `homogeneous`, the border `scale·Xᵀ1` and the corner `scale·k`),
/// from the columns' squared norms `sq_i = Σ_r x_ri²` (one pass over X, computed by the
/// caller in Scalar). NonFiniteInput when X holds NaN/Inf (`sq` is then not finite and
/// `X` fails all_finite); Overflow when the new average could leave the range of Scalar:
/// since C and XᵀX are positive semi-definite, every entry is bounded by the largest
/// diagonal entry (|c_ij| ≤ √(c_ii c_jj)), so
///
///     max |C'_ij| ≤ keep · max_i c_ii + scale · max(max_i sq_i, homogeneous ? k : 0)
///
/// and the batch is admitted only when this bound is at most half of Scalar's largest value
/// (the half absorbs the rounding of the product kernel's sums). A batch whose contribution
/// would overflow is thereby refused whole, before anything is written (a single entry of
/// 1e300 in double or 1e30 in float). O(n) given sq.
template <typename Scalar, typename DerivedSq, typename DerivedX>
Status admit_gram_update(const Eigen::MatrixBase<DerivedSq>& sq, const Eigen::MatrixBase<DerivedX>& X,
                         double keep, double max_diagonal, double scale, double homogeneous_rows) {
  if (sq.size() == 0) return Status::Success;
  if ((sq.array() - sq.array()).sum() != Scalar(0)) {
    return all_finite(X) ? Status::Overflow : Status::NonFiniteInput;
  }
  const double largest = std::max(static_cast<double>(sq.maxCoeff()), homogeneous_rows);
  return admit_bound<Scalar>(keep, max_diagonal, scale, largest);
}

/// The shared weight sequence of a bias-corrected moving average: `w ← β w + 1`, and the
/// blend factor `1 / w` for the newest estimate.
struct AverageWeight {
  double weight = 0.0;
  double next_blend(double decay) const { return 1.0 / (decay * weight + 1.0); }
  void advance(double decay) { weight = decay * weight + 1.0; }
};

/// `average += blend · (estimate − average)`.
template <typename Scalar>
void blend_into(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& average,
                const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& estimate,
                double blend) {
  average += static_cast<Scalar>(blend) * (estimate - average);
}

}  // namespace detail

/// One batch's contribution to a FactorMovingAverage as sums over its rows, before the
/// normalization by the row count: `sum = Σ_rows x̃ x̃ᵀ` (x̃ = x with the homogeneous 1
/// appended when the average is homogeneous; the lower triangle of `sum` is what counts, it
/// is kept mirrored) or, for a diagonal average, the column `Σ_rows x̃²`; `rows` = k; and
/// `nonfinite`, the number of batches left out of the sums because they held NaN or Inf.
///
/// Contributions add: the entry-wise sum of the contributions of several batches is the
/// contribution of their union. That is how data-parallel ranks that each hold part of a
/// global batch reproduce one process that saw all of it (kfopt::mpi::DistributedKfac sums
/// them over the ranks): `FactorMovingAverage::update(contribution)` of the summed
/// contribution takes the same value as `update(global batch)`, to rounding (the sums are
/// formed in another order). Every field is visited by `visit(v)` (`v.symmetric(M)` for a
/// symmetric matrix whose lower triangle is summed, `v.general(M)` for one summed entry by
/// entry, `v.count(x)` for a count), so that a transport can pack and sum it without knowing it.
template <typename Scalar>
struct FactorContribution {
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Matrix sum;              ///< Σ x̃ x̃ᵀ (dimension², symmetric) or Σ x̃² (dimension × 1)
  double rows = 0.0;       ///< examples k in the sums
  double nonfinite = 0.0;  ///< batches left out because they held NaN or Inf

  /// Visits every field (see the struct comment).
  template <typename Visitor>
  void visit(Visitor& v) {
    if (sum.cols() == 1 && sum.rows() != 1) {
      v.general(sum);
    } else {
      v.symmetric(sum);
    }
    v.count(rows);
    v.count(nonfinite);
  }
  /// Back to the empty contribution (zero sums and counts), keeping the shape.
  void clear() {
    sum.setZero();
    rows = 0.0;
    nonfinite = 0.0;
  }
};

/// Bias-corrected moving average of `A = E[a aᵀ]` (or `G = E[g gᵀ]`) over batches.
///
/// `Backend` (lapack_backend.hpp) chooses who computes the batch's Gram matrix: Eigen's
/// matrix-product kernel (detail::accumulate_lower_gram) by default, BLAS `syrk` when the
/// build defines KFOPT_USE_LAPACK. Results agree to rounding.
///
/// Lazy scale (dense factors): between reads the average is held as `s · R` with only R's
/// lower triangle current. A batch then changes s by the decay (`s ← keep·s`, a scalar) and
/// adds its Gram matrix to R scaled by `1/s` — one rank-k update, no pass over the n×n
/// average for the decay and none for the upper triangle. When s falls below 1/4096 (every
/// ⌈ln 4096 / ln(1/β)⌉ batches or so, e.g. 163 for β = 0.95) the update folds s back into R
/// (the decay pass of the direct formula, once). `value()` and `state()` finish the pending
/// work in place the first time they are called after an update (R scaled by s, lower
/// triangle mirrored: O(n²), once per batch at most), and return the same numbers (to
/// rounding) as the direct blend `Â ← (1 − 1/w)·Â + (1/w)·M`. Because of that in-place
/// finish, do not call value() or state() concurrently on one object.
template <typename Scalar, DecompositionBackend Backend = kDefaultDecompositionBackend<Scalar>>
class FactorMovingAverage {
  static_assert((detail::require_backend_supported<Scalar, Backend>(), true), "");

 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// Everything the average carries between batches (inspect, reset or checkpoint it).
  struct State {
    Matrix average;                     ///< the bias-corrected average (dimension × dimension)
    detail::AverageWeight weight;       ///< Σ_s β^{t−s} over the batches taken
    std::int64_t updates = 0;           ///< batches taken into the average
    std::int64_t skipped_nonfinite = 0; ///< batches refused because they held NaN or Inf
  };

  /// `input_dim` is the length of each input vector; the factor is input_dim (+1 when
  /// homogeneous) square. Throws HyperparameterError for invalid options.
  FactorMovingAverage(Eigen::Index input_dim, FactorAverageOptions options = {})
      : options_(options), input_dim_(input_dim) {
    options_.validate();
    if (input_dim <= 0) {
      throw ShapeError("kfopt::FactorMovingAverage: input dimension must be positive, got " +
                       std::to_string(input_dim));
    }
    state_.average.setZero(dimension(), value_cols());
    if (options_.diagonal) batch_.setZero(dimension(), 1);
  }

  /// Takes one batch, rows are samples (k × input_dim). Returns Status::NonFiniteInput when
  /// the batch holds NaN or Inf and Status::Overflow when its contribution would make the
  /// average overflow (see admit()); either way the state is unchanged and the skip counted.
  /// Throws ShapeError for a wrong column count or an empty batch.
  Status update(const Eigen::Ref<const Matrix>& batch);

  /// What update() would return for `batch`, without changing anything: Success,
  /// NonFiniteInput or Overflow (detail::admit_gram_update); throws ShapeError as update().
  /// One pass over the batch (its columns' squared norms). A caller that must take two
  /// batches or none (a layer's A and G) admits both before updating either.
  Status admit(const Eigen::Ref<const Matrix>& batch) const;

  /// The empty contribution of this average's shape (FactorContribution).
  FactorContribution<Scalar> empty_contribution() const {
    FactorContribution<Scalar> c;
    c.sum.setZero(dimension(), value_cols());
    return c;
  }
  /// Adds `batch`'s sums (k × input_dim, k ≥ 0: an empty batch adds nothing) to `c`
  /// (shaped by empty_contribution(); ShapeError otherwise). A batch holding NaN or Inf adds
  /// only `c.nonfinite += 1` and returns NonFiniteInput. Changes nothing in the average.
  /// Cost: the batch's Gram matrix (n²k flops, lower triangle) and an O(n²) mirror.
  Status add_contribution(const Eigen::Ref<const Matrix>& batch,
                          FactorContribution<Scalar>& c) const;
  /// What update(c) would return, without changing anything: NonFiniteInput when
  /// `c.nonfinite > 0`, NotComputed when it holds no rows, Overflow when its sums are not
  /// finite or the new average could overflow (the bound of admit()), else Success.
  Status admit(const FactorContribution<Scalar>& c) const;
  /// Takes a (possibly summed) contribution as ONE batch of `c.rows` examples: the same
  /// average as update() of the batch those rows form, to rounding. Refused (and counted
  /// in skipped_nonfinite, except NotComputed, which just changes nothing) as admit(c).
  Status update(const FactorContribution<Scalar>& c);

  /// Batches taken so far (does not finish the lazy blend, unlike state()).
  std::int64_t updates() const noexcept { return state_.updates; }

  /// The bias-corrected average (zero before the first batch): dimension × dimension, or
  /// dimension × 1 (the diagonal) with `options.diagonal`. The first call after an update
  /// finishes the lazy blend in place (O(n²), see the class comment).
  const Matrix& value() const noexcept {
    finish();
    return state_.average;
  }
  /// Whether only the diagonal of the factor is kept.
  bool diagonal() const noexcept { return options_.diagonal; }
  /// The factor's size: input_dim, plus 1 when homogeneous.
  Eigen::Index dimension() const noexcept { return input_dim_ + (options_.homogeneous ? 1 : 0); }
  /// Size of the inputs (without the homogeneous coordinate).
  Eigen::Index input_dimension() const noexcept { return input_dim_; }
  /// The options in use.
  const FactorAverageOptions& options() const noexcept { return options_; }
  /// Everything the average carries (the average finished as in value()).
  const State& state() const noexcept {
    finish();
    return state_;
  }
  /// Replaces the state (e.g. from a checkpoint); shapes must match (ShapeError) and the
  /// average must be finite (InvalidInputError); the current state is kept otherwise.
  void set_state(const State& state) {
    constexpr const char* op = "kfopt::FactorMovingAverage::set_state";
    detail::require_shape(op, "average", state.average, dimension(), value_cols());
    if (!state.average.allFinite()) {
      throw InvalidInputError(std::string(op) + ": average (" + detail::shape_of(state.average) +
                              ") has NaN or Inf entries");
    }
    state_ = state;
    scale_ = 1.0;
    pending_ = false;
  }
  /// Forgets every batch.
  void reset() {
    state_ = State{};
    state_.average.setZero(dimension(), value_cols());
    scale_ = 1.0;
    pending_ = false;
  }

  /// The average as it is held between reads (see the class comment): the factor is
  /// `scale · average`, where `scale ∈ [1/4096, 1]` is the decay not yet folded in (1 when
  /// nothing is pending, and always for a diagonal factor).
  struct RawState {
    Matrix average;                     ///< R: dimension × dimension (symmetric), or × 1
    double scale = 1.0;                 ///< the lazy scale s: the factor is s · R
    detail::AverageWeight weight;       ///< Σ_s β^{t−s} over the batches taken
    std::int64_t updates = 0;           ///< batches taken into the average
    std::int64_t skipped_nonfinite = 0; ///< batches refused because they held NaN or Inf
  };
  /// The state without finishing the pending blend (a checkpoint must not perturb the run:
  /// value() would round s · R into the average in place). R's lower triangle is mirrored in
  /// the copy. O(n²).
  RawState raw_state() const {
    RawState r{state_.average, pending_ ? scale_ : 1.0, state_.weight, state_.updates,
               state_.skipped_nonfinite};
    if (pending_) detail::mirror_lower_to_upper(r.average);
    return r;
  }
  /// Throws (naming `op`) unless `raw` fits this average: ShapeError for a wrong shape,
  /// InvalidInputError for a non-finite or non-symmetric R, a scale outside [1/4096, 1] (1
  /// for a diagonal factor), a negative or non-finite weight or negative counters.
  void check_raw_state(const std::string& op, const RawState& raw) const {
    detail::require_shape(op.c_str(), "average", raw.average, dimension(), value_cols());
    if (!raw.average.allFinite()) {
      throw InvalidInputError(op + ": average (" + detail::shape_of(raw.average) +
                              ") has NaN or Inf entries");
    }
    if (!options_.diagonal) detail::require_symmetric(op.c_str(), "average", raw.average);
    const bool scale_ok = options_.diagonal ? raw.scale == 1.0
                                            : (raw.scale >= kMinScale && raw.scale <= 1.0);
    if (!scale_ok) {
      throw InvalidInputError(op + ": lazy scale " + std::to_string(raw.scale) + " is outside " +
                              (options_.diagonal ? "{1} (a diagonal factor has none)"
                                                 : "[1/4096, 1]"));
    }
    if (!(raw.weight.weight >= 0.0) || !std::isfinite(raw.weight.weight) || raw.updates < 0 ||
        raw.skipped_nonfinite < 0) {
      throw InvalidInputError(op + ": weight " + std::to_string(raw.weight.weight) +
                              ", updates " + std::to_string(raw.updates) + " and skips " +
                              std::to_string(raw.skipped_nonfinite) + " must be finite and >= 0");
    }
  }
  /// Restores a raw_state() exactly (the next value() and update() give the same bits as
  /// they would have given on the saved object). All-or-nothing: check_raw_state first.
  void set_raw_state(const RawState& raw) {
    check_raw_state("kfopt::FactorMovingAverage::set_raw_state", raw);
    state_.average = raw.average;
    state_.weight = raw.weight;
    state_.updates = raw.updates;
    state_.skipped_nonfinite = raw.skipped_nonfinite;
    scale_ = raw.scale;
    pending_ = raw.scale != 1.0;  // with s = 1 the mirrored R is already the finished value
  }

 private:
  /// Below this lazy scale s the next update folds s back into the average (keeps R within
  /// a factor 4096 of the average: no overflow, and the float rounding of the direct blend).
  static constexpr double kMinScale = 1.0 / 4096.0;

  Eigen::Index value_cols() const noexcept { return options_.diagonal ? 1 : dimension(); }

  // How the next batch enters the lazily scaled average (see update()).
  struct Blend {
    double blend;       // 1 / w of the new estimate
    double next_scale;  // s' = keep · s
    bool lazy;          // R keeps its scale (s' ≥ kMinScale)
    double keep_raw;    // multiplier of R
    double weight_raw;  // multiplier of the batch's mean outer product
  };
  Blend next_blend() const noexcept {
    Blend b{};
    b.blend = state_.weight.next_blend(options_.decay);
    b.next_scale = scale_ * (1.0 - b.blend);
    b.lazy = b.next_scale >= kMinScale;
    b.keep_raw = b.lazy ? 1.0 : b.next_scale;
    b.weight_raw = b.lazy ? b.blend / b.next_scale : b.blend;
    return b;
  }
  void require_batch(const Eigen::Ref<const Matrix>& batch) const;
  Status admit_norms(const Eigen::Ref<const Matrix>& batch, Blend b) const;

  /// `average ← s · lower(R)`, mirrored; s = 1. Once per update at most.
  void finish() const noexcept {
    if (!pending_) return;
    Matrix& M = state_.average;
    const Eigen::Index d = M.rows();
    if (scale_ != 1.0) {
      const auto s = static_cast<Scalar>(scale_);
      for (Eigen::Index j = 0; j < d; ++j) M.col(j).tail(d - j) *= s;
    }
    detail::mirror_lower_to_upper(M);
    scale_ = 1.0;
    pending_ = false;
  }

  FactorAverageOptions options_;
  Eigen::Index input_dim_;
  // The average is scale_ · (lower triangle of state_.average) while pending_ (see finish()).
  mutable State state_;
  mutable double scale_ = 1.0;
  mutable bool pending_ = false;
  Matrix batch_;  // the diagonal batch estimate (options.diagonal), reused
};

/// One batch of sequences' contribution to a TemporalFactorMovingAverage, as sums before
/// the normalization `1/(m E[T])`: `sum0 = Σ_real ã_t ã_tᵀ` (symmetric), `sum1 =
/// Σ_pairs ã_{t+1} ã_tᵀ` (consecutive real steps; not symmetric), `steps` = Σ_i T_i real
/// steps, `sequences` = m, and `nonfinite` = batches left out for NaN/Inf in a real step.
/// Contributions add (see FactorContribution): the sum over ranks of their batches'
/// contributions, taken by `update(contribution)`, gives the averages of one process on the
/// union of the batches, to rounding.
template <typename Scalar>
struct TemporalFactorContribution {
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Matrix sum0;             ///< Σ ã_t ã_tᵀ over real steps (dimension², symmetric)
  Matrix sum1;             ///< Σ ã_{t+1} ã_tᵀ over pairs of consecutive real steps
  double steps = 0.0;      ///< real steps Σ_i T_i
  double sequences = 0.0;  ///< sequences m
  double nonfinite = 0.0;  ///< batches left out because a real step held NaN or Inf

  /// Visits every field (see FactorContribution::visit).
  template <typename Visitor>
  void visit(Visitor& v) {
    v.symmetric(sum0);
    v.general(sum1);
    v.count(steps);
    v.count(sequences);
    v.count(nonfinite);
  }
  /// Back to the empty contribution, keeping the shapes.
  void clear() {
    sum0.setZero();
    sum1.setZero();
    steps = sequences = nonfinite = 0.0;
  }
};

/// Bias-corrected moving averages of `A0 = E[a_t a_tᵀ]` and `A1 = E[a_{t+1} a_tᵀ]` over
/// batches of sequences (RNN K-FAC §3.5.4), with one normalizer `1/(m E[T])` for both.
///
/// Layout of a batch of m sequences padded to T_max steps: a time-major matrix of
/// (T_max·m) rows and input_dim columns, row `t·m + i` holding `a_t` of sequence i. Which
/// steps are real is given either by per-sequence lengths (steps t < T_i) or by a
/// T_max × m mask (true = real step; `A1` pairs only steps t, t+1 that are both real).
/// Padded rows are never read as numbers: they may hold anything, NaN included.
/// `Backend`: as for FactorMovingAverage (A0's Gram matrix; A1 is one Eigen product).
template <typename Scalar, DecompositionBackend Backend = kDefaultDecompositionBackend<Scalar>>
class TemporalFactorMovingAverage {
  static_assert((detail::require_backend_supported<Scalar, Backend>(), true), "");

 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size boolean matrix.
  using Mask = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic>;

  /// Everything the two averages carry between batches (inspect, reset or checkpoint it).
  struct State {
    Matrix average0;                    ///< bias-corrected average of A0
    Matrix average1;                    ///< bias-corrected average of A1 (not symmetric)
    detail::AverageWeight weight;       ///< shared by both averages
    /// Batches taken.
    std::int64_t updates = 0;
    /// Batches refused because they held NaN or Inf.
    std::int64_t skipped_nonfinite = 0;
    double last_mean_length = 0.0;      ///< E[T] of the last batch taken
  };

  /// Averages for inputs of size `input_dim`; throws HyperparameterError for bad options.
  TemporalFactorMovingAverage(Eigen::Index input_dim, FactorAverageOptions options = {})
      : options_(options), input_dim_(input_dim) {
    options_.validate();
    detail::require_hyperparameter(!options_.diagonal, "kfopt::TemporalFactorMovingAverage",
                                   "diagonal", options_.diagonal,
                                   "{false} (temporal moments are always dense)");
    if (input_dim <= 0) {
      throw ShapeError(
          "kfopt::TemporalFactorMovingAverage: input dimension must be positive, got " +
          std::to_string(input_dim));
    }
    reset();
  }

  /// Takes m sequences with lengths `lengths(i)` ∈ [0, T_max], T_max = rows / m; at least
  /// one step must be real. Returns NonFiniteInput when a real step holds NaN or Inf and
  /// Overflow when the batch's contribution would make an average overflow (see admit());
  /// either way the state is unchanged and the skip counted. Throws ShapeError /
  /// InvalidInputError for inconsistent shapes or lengths.
  Status update(const Eigen::Ref<const Matrix>& sequences,
                const Eigen::Ref<const Eigen::VectorXi>& lengths) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update";
    const Eigen::Index t_max = check_lengths(op, sequences, lengths);
    return take(op, sequences, lengths.size(), t_max,
                [&](Eigen::Index t, Eigen::Index i) { return t < lengths(i); });
  }

  /// Takes m sequences with a T_max × m mask of real steps (any pattern).
  Status update(const Eigen::Ref<const Matrix>& sequences, const Eigen::Ref<const Mask>& mask) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update";
    check_mask(op, sequences, mask);
    return take(op, sequences, mask.cols(), mask.rows(),
                [&](Eigen::Index t, Eigen::Index i) { return mask(t, i); });
  }

  /// Takes m sequences that all have T_max = rows / m real steps.
  Status update_full(const Eigen::Ref<const Matrix>& sequences, Eigen::Index num_sequences) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update_full";
    check_layout(op, sequences, num_sequences);
    return take(op, sequences, num_sequences, sequences.rows() / num_sequences,
                [](Eigen::Index, Eigen::Index) { return true; });
  }

  /// What update(sequences, lengths) would return, without changing anything: Success,
  /// NonFiniteInput or Overflow (the bound of detail::admit_gram_update on A0, which bounds
  /// A1's entries too, |A1_ij| ≤ √(A0_ii A0_jj)); throws as update(). One pass over the real
  /// steps. A caller that must take two batches or none (a recurrent layer's A and G) admits
  /// both before updating either.
  Status admit(const Eigen::Ref<const Matrix>& sequences,
               const Eigen::Ref<const Eigen::VectorXi>& lengths) const {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update";
    const Eigen::Index t_max = check_lengths(op, sequences, lengths);
    Eigen::Index real = 0;
    return check(op, sequences, lengths.size(), t_max,
                 [&](Eigen::Index t, Eigen::Index i) { return t < lengths(i); }, real);
  }
  /// As above for a mask of real steps.
  Status admit(const Eigen::Ref<const Matrix>& sequences, const Eigen::Ref<const Mask>& mask) const {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update";
    check_mask(op, sequences, mask);
    Eigen::Index real = 0;
    return check(op, sequences, mask.cols(), mask.rows(),
                 [&](Eigen::Index t, Eigen::Index i) { return mask(t, i); }, real);
  }
  /// As above for sequences that are all real.
  Status admit_full(const Eigen::Ref<const Matrix>& sequences, Eigen::Index num_sequences) const {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update_full";
    check_layout(op, sequences, num_sequences);
    Eigen::Index real = 0;
    return check(op, sequences, num_sequences, sequences.rows() / num_sequences,
                 [](Eigen::Index, Eigen::Index) { return true; }, real);
  }

  /// The empty contribution of this average's shape (TemporalFactorContribution).
  TemporalFactorContribution<Scalar> empty_contribution() const {
    TemporalFactorContribution<Scalar> c;
    c.sum0.setZero(dimension(), dimension());
    c.sum1.setZero(dimension(), dimension());
    return c;
  }
  /// Adds the sums of m = lengths.size() sequences (layout and lengths as update(); m = 0
  /// adds nothing) to `c`. NaN/Inf in a real step adds only `c.nonfinite += 1` and returns
  /// NonFiniteInput. Changes nothing in the averages. Cost as update().
  Status add_contribution(const Eigen::Ref<const Matrix>& sequences,
                          const Eigen::Ref<const Eigen::VectorXi>& lengths,
                          TemporalFactorContribution<Scalar>& c) const {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::add_contribution";
    detail::require_shape(op, "contribution sum0", c.sum0, dimension(), dimension());
    detail::require_shape(op, "contribution sum1", c.sum1, dimension(), dimension());
    if (lengths.size() == 0) return Status::Success;
    const Eigen::Index t_max = check_lengths(op, sequences, lengths);
    const Eigen::Index m = lengths.size();
    const Eigen::Index n = input_dim_;
    Eigen::Index real = 0;
    for (Eigen::Index t = 0; t < t_max; ++t) {
      for (Eigen::Index i = 0; i < m; ++i) {
        if (t < lengths(i)) {
          ++real;
          if (!detail::all_finite(sequences.row(t * m + i))) {
            c.nonfinite += 1.0;
            return Status::NonFiniteInput;
          }
        }
      }
    }
    // Zero-filled copy of the real steps (with the homogeneous coordinate), as update().
    Matrix y = Matrix::Zero(t_max * m, dimension());
    for (Eigen::Index t = 0; t < t_max; ++t) {
      for (Eigen::Index i = 0; i < m; ++i) {
        if (t < lengths(i)) {
          y.row(t * m + i).head(n) = sequences.row(t * m + i);
          if (options_.homogeneous) y(t * m + i, n) = Scalar(1);
        }
      }
    }
    detail::accumulate_lower_gram<Scalar>(c.sum0, y, 0, Scalar(1));
    detail::mirror_lower_to_upper(c.sum0);
    const Eigen::Index pairs_rows = (t_max - 1) * m;
    if (pairs_rows > 0) c.sum1.noalias() += y.bottomRows(pairs_rows).transpose() * y.topRows(pairs_rows);
    c.steps += static_cast<double>(real);
    c.sequences += static_cast<double>(m);
    return Status::Success;
  }
  /// What update(c) would return, without changing anything: NonFiniteInput when
  /// `c.nonfinite > 0`, NotComputed when it holds no real step, Overflow when its sums are
  /// not finite or A0's new entries could overflow (the bound of admit()), else Success.
  Status admit(const TemporalFactorContribution<Scalar>& c) const {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::admit";
    detail::require_shape(op, "contribution sum0", c.sum0, dimension(), dimension());
    detail::require_shape(op, "contribution sum1", c.sum1, dimension(), dimension());
    if (c.nonfinite > 0.0) return Status::NonFiniteInput;
    if (!(c.steps > 0.0)) return Status::NotComputed;
    if (!std::isfinite(c.steps) || !(c.sequences > 0.0) || !std::isfinite(c.sequences) ||
        !detail::all_finite(c.sum0) || !detail::all_finite(c.sum1)) {
      return Status::Overflow;
    }
    const double blend = state_.weight.next_blend(options_.decay);
    return detail::admit_bound<Scalar>(1.0 - blend, detail::largest_diagonal<Scalar>(state_.average0),
                                       blend / c.steps, detail::largest_diagonal<Scalar>(c.sum0));
  }
  /// Takes a (possibly summed) contribution as ONE batch of `c.sequences` sequences: the
  /// averages of update() on the batch those sequences form, to rounding. Refused (counted
  /// in skipped_nonfinite, except NotComputed, which changes nothing) as admit(c).
  Status update(const TemporalFactorContribution<Scalar>& c) {
    const Status admitted = admit(c);
    if (admitted == Status::NotComputed) return admitted;
    if (admitted != Status::Success) {
      ++state_.skipped_nonfinite;
      return admitted;
    }
    const double blend = state_.weight.next_blend(options_.decay);
    const Scalar keep = static_cast<Scalar>(1.0 - blend);
    const Scalar scale = static_cast<Scalar>(blend / c.steps);
    if (keep == Scalar(0)) {
      state_.average0 = scale * c.sum0;
      state_.average1 = scale * c.sum1;
    } else {
      state_.average0 = keep * state_.average0 + scale * c.sum0;
      state_.average1 = keep * state_.average1 + scale * c.sum1;
    }
    state_.weight.advance(options_.decay);
    ++state_.updates;
    state_.last_mean_length = c.steps / c.sequences;
    return Status::Success;
  }

  /// Current bias-corrected average A0 (dimension() square).
  const Matrix& a0() const noexcept { return state_.average0; }
  /// Current bias-corrected average A1 (dimension() square, not symmetric).
  const Matrix& a1() const noexcept { return state_.average1; }
  /// The factor's size: input_dim, plus 1 when homogeneous.
  Eigen::Index dimension() const noexcept { return input_dim_ + (options_.homogeneous ? 1 : 0); }
  /// The options in use.
  const FactorAverageOptions& options() const noexcept { return options_; }
  /// The averages and counters.
  const State& state() const noexcept { return state_; }
  /// Restores a state; throws ShapeError or InvalidInputError if it does not fit.
  void set_state(const State& state) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::set_state";
    detail::require_shape(op, "average0", state.average0, dimension(), dimension());
    detail::require_shape(op, "average1", state.average1, dimension(), dimension());
    if (!state.average0.allFinite() || !state.average1.allFinite()) {
      throw InvalidInputError(std::string(op) + ": the averages (" +
                              detail::shape_of(state.average0) + ") have NaN or Inf entries");
    }
    state_ = state;
  }
  /// Forgets all statistics (zero averages, no updates).
  void reset() {
    state_ = State{};
    state_.average0.setZero(dimension(), dimension());
    state_.average1.setZero(dimension(), dimension());
  }

 private:
  void check_layout(const char* op, const Eigen::Ref<const Matrix>& sequences,
                    Eigen::Index m) const {
    if (m <= 0) {
      throw ShapeError(std::string(op) + ": the batch has no sequences (m = " +
                       std::to_string(m) + ")");
    }
    if (sequences.cols() != input_dim_) {
      throw ShapeError(std::string(op) + ": sequences are " + detail::shape_of(sequences) +
                       " but the factor needs rows of length " + std::to_string(input_dim_));
    }
    if (sequences.rows() == 0 || sequences.rows() % m != 0) {
      throw ShapeError(std::string(op) + ": sequences have " + std::to_string(sequences.rows()) +
                       " rows, not a positive multiple of the " + std::to_string(m) +
                       " sequences (time-major layout: row t·m + i)");
    }
  }

  Eigen::Index check_lengths(const char* op, const Eigen::Ref<const Matrix>& sequences,
                             const Eigen::Ref<const Eigen::VectorXi>& lengths) const {
    const Eigen::Index m = lengths.size();
    check_layout(op, sequences, m);
    const Eigen::Index t_max = sequences.rows() / m;
    for (Eigen::Index i = 0; i < m; ++i) {
      if (lengths(i) < 0 || lengths(i) > t_max) {
        throw InvalidInputError(std::string(op) + ": length of sequence " + std::to_string(i) +
                                " is " + std::to_string(lengths(i)) + " but the batch (" +
                                detail::shape_of(sequences) + " for " + std::to_string(m) +
                                " sequences) holds " + std::to_string(t_max) + " steps");
      }
    }
    return t_max;
  }

  void check_mask(const char* op, const Eigen::Ref<const Matrix>& sequences,
                  const Eigen::Ref<const Mask>& mask) const {
    const Eigen::Index m = mask.cols();
    check_layout(op, sequences, m);
    if (mask.rows() * m != sequences.rows()) {
      throw ShapeError(std::string(op) + ": mask is " + detail::shape_of(mask) +
                       " but the sequences (" + detail::shape_of(sequences) + ") need " +
                       detail::shape_string(sequences.rows() / m, m));
    }
  }

  // Counts the real steps (InvalidInputError if none) and admits the batch: the columns'
  // squared norms over the real steps bound both averages' new entries.
  template <typename Valid>
  Status check(const char* op, const Eigen::Ref<const Matrix>& X, Eigen::Index m,
               Eigen::Index t_max, Valid valid, Eigen::Index& real_steps) const {
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> sq = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>::Zero(X.cols());
    real_steps = 0;
    for (Eigen::Index t = 0; t < t_max; ++t) {
      for (Eigen::Index i = 0; i < m; ++i) {
        if (valid(t, i)) {
          ++real_steps;
          sq += X.row(t * m + i).cwiseAbs2();
        }
      }
    }
    if (real_steps == 0) {
      throw InvalidInputError(std::string(op) + ": every step of the " + std::to_string(m) +
                              " sequences is masked (no data)");
    }
    if ((sq.array() - sq.array()).sum() != Scalar(0)) {
      // NaN or Inf in a real step, or squares that overflow: tell the two apart.
      for (Eigen::Index t = 0; t < t_max; ++t) {
        for (Eigen::Index i = 0; i < m; ++i) {
          if (valid(t, i) && !detail::all_finite(X.row(t * m + i))) return Status::NonFiniteInput;
        }
      }
      return Status::Overflow;
    }
    const double blend = state_.weight.next_blend(options_.decay);
    double largest = 0.0;
    for (Eigen::Index i = 0; i < dimension(); ++i) {
      largest = std::max(largest, static_cast<double>(state_.average0(i, i)));
    }
    const double rows = static_cast<double>(real_steps);
    return detail::admit_gram_update<Scalar>(sq, X, 1.0 - blend, largest, blend / rows,
                                             options_.homogeneous ? rows : 0.0);
  }

  template <typename Valid>
  Status take(const char* op, const Eigen::Ref<const Matrix>& X, Eigen::Index m,
              Eigen::Index t_max, Valid valid) {
    const Eigen::Index n = input_dim_;
    const Eigen::Index d = dimension();
    Eigen::Index real_steps = 0;
    const Status admitted = check(op, X, m, t_max, valid, real_steps);
    if (admitted != Status::Success) {
      ++state_.skipped_nonfinite;
      return admitted;
    }
    const bool all_real = real_steps == t_max * m;
    const Scalar inv_count = Scalar(1) / static_cast<Scalar>(real_steps);
    const Eigen::Index pairs_rows = (t_max - 1) * m;
    // Both averages blended in place: average ← keep·average + blend·(batch estimate).
    const double blend = state_.weight.next_blend(options_.decay);
    const Scalar keep = static_cast<Scalar>(1.0 - blend);
    const Scalar scale = static_cast<Scalar>(blend) * inv_count;
    auto blend_lag_one = [&](const auto& Y) {  // A1 += scale · Y_{t+1}ᵀ Y_t (one GEMM)
      if (keep == Scalar(0)) {
        state_.average1.setZero();
      } else {
        state_.average1 *= keep;
      }
      if (pairs_rows > 0) {
        state_.average1.noalias() +=
            scale * (Y.bottomRows(pairs_rows).transpose() * Y.topRows(pairs_rows));
      }
    };
    if (all_real && !options_.homogeneous) {
      // Read the caller's matrix directly: no copy.
      detail::blend_gram<Scalar, Backend>(state_.average0, X, keep, scale);
      blend_lag_one(X);
    } else {
      // Zero-filled copy of the real steps (with the homogeneous coordinate): padded rows
      // contribute nothing to either moment, whatever they hold.
      scratch_.resize(t_max * m, d);
      for (Eigen::Index t = 0; t < t_max; ++t) {
        for (Eigen::Index i = 0; i < m; ++i) {
          const Eigen::Index r = t * m + i;
          if (valid(t, i)) {
            scratch_.row(r).head(n) = X.row(r);
            if (options_.homogeneous) scratch_(r, n) = Scalar(1);
          } else {
            scratch_.row(r).setZero();
          }
        }
      }
      detail::blend_gram<Scalar, Backend>(state_.average0, scratch_, keep, scale);
      blend_lag_one(scratch_);
    }
    state_.weight.advance(options_.decay);
    ++state_.updates;
    state_.last_mean_length = static_cast<double>(real_steps) / static_cast<double>(m);
    return Status::Success;
  }

  FactorAverageOptions options_;
  Eigen::Index input_dim_;
  State state_;
  Matrix scratch_;  // zero-filled copy of the real steps (masked or homogeneous input)
};

template <typename Scalar, DecompositionBackend Backend>
void FactorMovingAverage<Scalar, Backend>::require_batch(const Eigen::Ref<const Matrix>& batch) const {
  constexpr const char* op = "kfopt::FactorMovingAverage::update";
  if (batch.cols() != input_dim_) {
    throw ShapeError(std::string(op) + ": batch is " + detail::shape_of(batch) +
                     " but the factor needs rows of length " + std::to_string(input_dim_));
  }
  if (batch.rows() == 0) {
    throw ShapeError(std::string(op) + ": batch is empty (" + detail::shape_of(batch) + ")");
  }
}

template <typename Scalar, DecompositionBackend Backend>
Status FactorMovingAverage<Scalar, Backend>::admit_norms(const Eigen::Ref<const Matrix>& batch,
                                                         Blend b) const {
  const double k = static_cast<double>(batch.rows());
  const Eigen::Matrix<Scalar, 1, Eigen::Dynamic> sq = batch.colwise().squaredNorm();
  if (options_.diagonal) {
    // average' = (1 − blend)·average + blend·sq/k: a convex blend, bounded by max(average, sq/k).
    const double largest = state_.average.size() ? static_cast<double>(state_.average.maxCoeff()) : 0.0;
    return detail::admit_gram_update<Scalar>(sq, batch, 1.0, largest, 1.0 / k, 0.0);
  }
  // R' = keep_raw·R + (weight_raw/k)·[[XᵀX, Xᵀ1], [1ᵀX, k]]; R's diagonal is current.
  double largest = 0.0;
  for (Eigen::Index i = 0; i < dimension(); ++i) {
    largest = std::max(largest, static_cast<double>(state_.average(i, i)));
  }
  return detail::admit_gram_update<Scalar>(sq, batch, b.keep_raw, largest, b.weight_raw / k,
                                           options_.homogeneous ? k : 0.0);
}

template <typename Scalar, DecompositionBackend Backend>
Status FactorMovingAverage<Scalar, Backend>::admit(const Eigen::Ref<const Matrix>& batch) const {
  require_batch(batch);
  return admit_norms(batch, next_blend());
}

template <typename Scalar, DecompositionBackend Backend>
Status FactorMovingAverage<Scalar, Backend>::update(const Eigen::Ref<const Matrix>& batch) {
  require_batch(batch);
  const Blend plan = next_blend();
  const Status admitted = admit_norms(batch, plan);
  if (admitted != Status::Success) {
    ++state_.skipped_nonfinite;
    return admitted;
  }
  const double inv_k_d = 1.0 / static_cast<double>(batch.rows());
  const Scalar inv_k = static_cast<Scalar>(inv_k_d);
  const Eigen::Index n = input_dim_;
  // average ← keep·average + blend·(batch estimate), keep = 1 − blend.
  const double blend = plan.blend;
  if (options_.diagonal) {
    // E[a_i²] per coordinate: one pass, no n×n work.
    batch_.resize(dimension(), 1);
    batch_.col(0).head(n) = batch.colwise().squaredNorm().transpose() * inv_k;
    if (options_.homogeneous) batch_(n, 0) = Scalar(1);
    detail::blend_into(state_.average, batch_, blend);
  } else {
    // The average is s·R (lower triangles; see the class comment). New value:
    // keep·s·R + (blend/k)·XᵀX = s'·(R + (blend/(k s'))·XᵀX) with s' = keep·s, or, once s'
    // is small (or on the first batch, keep = 0), R ← s'·R + (blend/k)·XᵀX with s = 1.
    const double next_scale = plan.next_scale;
    const bool lazy = plan.lazy;
    const Scalar keep_raw = static_cast<Scalar>(plan.keep_raw);
    const double weight_raw = plan.weight_raw;
    const Scalar gram_scale = static_cast<Scalar>(weight_raw * inv_k_d);
    // The Gram block blended in place (no n×n temporary, see detail::blend_gram_lower).
    detail::blend_gram_lower<Scalar, Backend>(state_.average.topLeftCorner(n, n), batch,
                                              keep_raw, gram_scale);
    if (options_.homogeneous) {
      // [[XᵀX, Xᵀ1], [1ᵀX, k]] / k without copying X: the border (row n, in the lower
      // triangle) is the batch mean.
      auto border = state_.average.row(n).head(n);
      if (keep_raw == Scalar(0)) border.setZero();
      if (keep_raw != Scalar(1)) border *= keep_raw;
      border += gram_scale * batch.colwise().sum();
      Scalar& corner = state_.average(n, n);
      corner = (keep_raw == Scalar(0) ? Scalar(0) : keep_raw * corner) +
               static_cast<Scalar>(weight_raw);
    }
    scale_ = lazy ? next_scale : 1.0;
    pending_ = true;
  }
  state_.weight.advance(options_.decay);
  ++state_.updates;
  return Status::Success;
}

template <typename Scalar, DecompositionBackend Backend>
Status FactorMovingAverage<Scalar, Backend>::add_contribution(
    const Eigen::Ref<const Matrix>& batch, FactorContribution<Scalar>& c) const {
  constexpr const char* op = "kfopt::FactorMovingAverage::add_contribution";
  if (batch.cols() != input_dim_) {
    throw ShapeError(std::string(op) + ": batch is " + detail::shape_of(batch) +
                     " but the factor needs rows of length " + std::to_string(input_dim_));
  }
  detail::require_shape(op, "contribution sum", c.sum, dimension(), value_cols());
  if (batch.rows() == 0) return Status::Success;
  if (!detail::all_finite(batch)) {
    c.nonfinite += 1.0;
    return Status::NonFiniteInput;
  }
  const Eigen::Index n = input_dim_;
  const Scalar k = static_cast<Scalar>(batch.rows());
  if (options_.diagonal) {
    c.sum.col(0).head(n) += batch.colwise().squaredNorm().transpose();
    if (options_.homogeneous) c.sum(n, 0) += k;
  } else {
    detail::accumulate_lower_gram<Scalar>(c.sum.topLeftCorner(n, n), batch, 0, Scalar(1));
    if (options_.homogeneous) {
      c.sum.row(n).head(n) += batch.colwise().sum();
      c.sum(n, n) += k;
    }
    detail::mirror_lower_to_upper(c.sum);
  }
  c.rows += static_cast<double>(batch.rows());
  return Status::Success;
}

template <typename Scalar, DecompositionBackend Backend>
Status FactorMovingAverage<Scalar, Backend>::admit(const FactorContribution<Scalar>& c) const {
  detail::require_shape("kfopt::FactorMovingAverage::admit", "contribution sum", c.sum,
                        dimension(), value_cols());
  if (c.nonfinite > 0.0) return Status::NonFiniteInput;
  if (!(c.rows > 0.0)) return Status::NotComputed;
  if (!std::isfinite(c.rows) || !detail::all_finite(c.sum)) return Status::Overflow;
  // The new entries are bounded by the diagonal of the sums (both positive semi-definite).
  const double largest_new = detail::largest_diagonal<Scalar>(c.sum);
  if (options_.diagonal) {
    const double largest =
        state_.average.size() ? static_cast<double>(state_.average.maxCoeff()) : 0.0;
    return detail::admit_bound<Scalar>(1.0, largest, 1.0 / c.rows, largest_new);
  }
  const Blend b = next_blend();
  return detail::admit_bound<Scalar>(b.keep_raw, detail::largest_diagonal<Scalar>(state_.average),
                                     b.weight_raw / c.rows, largest_new);
}

template <typename Scalar, DecompositionBackend Backend>
Status FactorMovingAverage<Scalar, Backend>::update(const FactorContribution<Scalar>& c) {
  const Status admitted = admit(c);
  if (admitted == Status::NotComputed) return admitted;
  if (admitted != Status::Success) {
    ++state_.skipped_nonfinite;
    return admitted;
  }
  const Blend plan = next_blend();
  if (options_.diagonal) {
    batch_ = c.sum * static_cast<Scalar>(1.0 / c.rows);
    detail::blend_into(state_.average, batch_, plan.blend);
  } else {
    // As update(batch): R ← keep_raw·R + (weight_raw/k)·Σx̃x̃ᵀ on the lower triangle.
    const Scalar keep_raw = static_cast<Scalar>(plan.keep_raw);
    const Scalar gram_scale = static_cast<Scalar>(plan.weight_raw / c.rows);
    const Eigen::Index d = dimension();
    for (Eigen::Index j = 0; j < d; ++j) {
      auto r = state_.average.col(j).tail(d - j);
      const auto add = c.sum.col(j).tail(d - j);
      if (keep_raw == Scalar(0)) {
        r = gram_scale * add;
      } else if (keep_raw == Scalar(1)) {
        r += gram_scale * add;
      } else {
        r = keep_raw * r + gram_scale * add;
      }
    }
    scale_ = plan.lazy ? plan.next_scale : 1.0;
    pending_ = true;
  }
  state_.weight.advance(options_.decay);
  ++state_.updates;
  return Status::Success;
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class FactorMovingAverage<float>;
extern template class FactorMovingAverage<double>;
extern template class TemporalFactorMovingAverage<float>;
extern template class TemporalFactorMovingAverage<double>;
#endif

}  // namespace kfopt
