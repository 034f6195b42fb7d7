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
#include <cstdint>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"

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

/// `out = scale · Xᵀ X` for X k×n (rows are samples), by a symmetric rank-k update of the
/// lower triangle, mirrored to the upper one. `out` is n×n, resized if needed.
template <typename Scalar, typename DerivedX>
void scaled_gram(const Eigen::MatrixBase<DerivedX>& X, Scalar scale,
                 Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out) {
  out.setZero(X.cols(), X.cols());
  out.template selfadjointView<Eigen::Lower>().rankUpdate(X.transpose(), scale);
  symmetrize_from_lower(out);
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

/// Bias-corrected moving average of `A = E[a aᵀ]` (or `G = E[g gᵀ]`) over batches.
template <typename Scalar>
class FactorMovingAverage {
 public:
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
    batch_.setZero(dimension(), value_cols());
  }

  /// Takes one batch, rows are samples (k × input_dim). Returns Status::NonFiniteInput and
  /// leaves the state unchanged (counting the skip) when the batch holds NaN or Inf.
  /// Throws ShapeError for a wrong column count or an empty batch.
  Status update(const Eigen::Ref<const Matrix>& batch) {
    constexpr const char* op = "kfopt::FactorMovingAverage::update";
    if (batch.cols() != input_dim_) {
      throw ShapeError(std::string(op) + ": batch is " + detail::shape_of(batch) +
                       " but the factor needs rows of length " + std::to_string(input_dim_));
    }
    if (batch.rows() == 0) {
      throw ShapeError(std::string(op) + ": batch is empty (" + detail::shape_of(batch) + ")");
    }
    if (!batch.allFinite()) {
      ++state_.skipped_nonfinite;
      return Status::NonFiniteInput;
    }
    const Scalar inv_k = Scalar(1) / static_cast<Scalar>(batch.rows());
    const Eigen::Index n = input_dim_;
    batch_.resize(dimension(), value_cols());
    if (options_.diagonal) {
      // E[a_i²] per coordinate: one pass, no n×n work.
      batch_.col(0).head(n) = batch.colwise().squaredNorm().transpose() * inv_k;
      if (options_.homogeneous) batch_(n, 0) = Scalar(1);
    } else if (!options_.homogeneous) {
      detail::scaled_gram(batch, inv_k, batch_);
    } else {
      // [[XᵀX, Xᵀ1], [1ᵀX, k]] / k without copying X.
      batch_.topLeftCorner(n, n).setZero();
      batch_.topLeftCorner(n, n).template selfadjointView<Eigen::Lower>().rankUpdate(
          batch.transpose(), inv_k);
      auto top_left = batch_.topLeftCorner(n, n);
      top_left.template triangularView<Eigen::StrictlyUpper>() = top_left.transpose();
      batch_.row(n).head(n) = batch.colwise().sum() * inv_k;
      batch_.col(n).head(n) = batch_.row(n).head(n).transpose();
      batch_(n, n) = Scalar(1);
    }
    detail::blend_into(state_.average, batch_, state_.weight.next_blend(options_.decay));
    state_.weight.advance(options_.decay);
    ++state_.updates;
    return Status::Success;
  }

  /// The bias-corrected average (zero before the first batch): dimension × dimension, or
  /// dimension × 1 (the diagonal) with `options.diagonal`.
  const Matrix& value() const noexcept { return state_.average; }
  bool diagonal() const noexcept { return options_.diagonal; }
  /// The factor's size: input_dim, plus 1 when homogeneous.
  Eigen::Index dimension() const noexcept { return input_dim_ + (options_.homogeneous ? 1 : 0); }
  Eigen::Index input_dimension() const noexcept { return input_dim_; }
  const FactorAverageOptions& options() const noexcept { return options_; }
  const State& state() const noexcept { return state_; }
  /// Replaces the state (e.g. from a checkpoint); shapes must match.
  void set_state(const State& state) {
    detail::require_shape("kfopt::FactorMovingAverage::set_state", "average", state.average,
                          dimension(), value_cols());
    state_ = state;
  }
  /// Forgets every batch.
  void reset() {
    state_ = State{};
    state_.average.setZero(dimension(), value_cols());
  }

 private:
  Eigen::Index value_cols() const noexcept { return options_.diagonal ? 1 : dimension(); }

  FactorAverageOptions options_;
  Eigen::Index input_dim_;
  State state_;
  Matrix batch_;  // the batch estimate, reused
};

/// Bias-corrected moving averages of `A0 = E[a_t a_tᵀ]` and `A1 = E[a_{t+1} a_tᵀ]` over
/// batches of sequences (RNN K-FAC §3.5.4), with one normalizer `1/(m E[T])` for both.
///
/// Layout of a batch of m sequences padded to T_max steps: a time-major matrix of
/// (T_max·m) rows and input_dim columns, row `t·m + i` holding `a_t` of sequence i. Which
/// steps are real is given either by per-sequence lengths (steps t < T_i) or by a
/// T_max × m mask (true = real step; `A1` pairs only steps t, t+1 that are both real).
/// Padded rows are never read as numbers: they may hold anything, NaN included.
template <typename Scalar>
class TemporalFactorMovingAverage {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Mask = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic>;

  struct State {
    Matrix average0;                    ///< bias-corrected average of A0
    Matrix average1;                    ///< bias-corrected average of A1 (not symmetric)
    detail::AverageWeight weight;       ///< shared by both averages
    std::int64_t updates = 0;
    std::int64_t skipped_nonfinite = 0;
    double last_mean_length = 0.0;      ///< E[T] of the last batch taken
  };

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
  /// one step must be real. Returns NonFiniteInput (state unchanged, skip counted) when a
  /// real step holds NaN or Inf; throws ShapeError / InvalidInputError for inconsistent
  /// shapes or lengths.
  Status update(const Eigen::Ref<const Matrix>& sequences,
                const Eigen::Ref<const Eigen::VectorXi>& lengths) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update";
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
    return take(op, sequences, m, t_max,
                [&](Eigen::Index t, Eigen::Index i) { return t < lengths(i); });
  }

  /// Takes m sequences with a T_max × m mask of real steps (any pattern).
  Status update(const Eigen::Ref<const Matrix>& sequences, const Eigen::Ref<const Mask>& mask) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update";
    const Eigen::Index m = mask.cols();
    check_layout(op, sequences, m);
    if (mask.rows() * m != sequences.rows()) {
      throw ShapeError(std::string(op) + ": mask is " + detail::shape_of(mask) +
                       " but the sequences (" + detail::shape_of(sequences) + ") need " +
                       detail::shape_string(sequences.rows() / m, m));
    }
    return take(op, sequences, m, mask.rows(),
                [&](Eigen::Index t, Eigen::Index i) { return mask(t, i); });
  }

  /// Takes m sequences that all have T_max = rows / m real steps.
  Status update_full(const Eigen::Ref<const Matrix>& sequences, Eigen::Index num_sequences) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::update_full";
    check_layout(op, sequences, num_sequences);
    return take(op, sequences, num_sequences, sequences.rows() / num_sequences,
                [](Eigen::Index, Eigen::Index) { return true; });
  }

  const Matrix& a0() const noexcept { return state_.average0; }
  const Matrix& a1() const noexcept { return state_.average1; }
  Eigen::Index dimension() const noexcept { return input_dim_ + (options_.homogeneous ? 1 : 0); }
  const FactorAverageOptions& options() const noexcept { return options_; }
  const State& state() const noexcept { return state_; }
  void set_state(const State& state) {
    constexpr const char* op = "kfopt::TemporalFactorMovingAverage::set_state";
    detail::require_shape(op, "average0", state.average0, dimension(), dimension());
    detail::require_shape(op, "average1", state.average1, dimension(), dimension());
    state_ = state;
  }
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

  template <typename Valid>
  Status take(const char* op, const Eigen::Ref<const Matrix>& X, Eigen::Index m,
              Eigen::Index t_max, Valid valid) {
    const Eigen::Index n = input_dim_;
    const Eigen::Index d = dimension();
    Eigen::Index real_steps = 0;
    bool all_real = true;
    bool finite = true;
    for (Eigen::Index t = 0; t < t_max; ++t) {
      for (Eigen::Index i = 0; i < m; ++i) {
        if (valid(t, i)) {
          ++real_steps;
          if (finite && !X.row(t * m + i).allFinite()) finite = false;
        } else {
          all_real = false;
        }
      }
    }
    if (real_steps == 0) {
      throw InvalidInputError(std::string(op) + ": every step of the " + std::to_string(m) +
                              " sequences is masked (no data)");
    }
    if (!finite) {
      ++state_.skipped_nonfinite;
      return Status::NonFiniteInput;
    }
    const Scalar inv_count = Scalar(1) / static_cast<Scalar>(real_steps);
    const Eigen::Index pairs_rows = (t_max - 1) * m;
    if (all_real && !options_.homogeneous) {
      // Read the caller's matrix directly: no copy.
      detail::scaled_gram(X, inv_count, batch0_);
      batch1_.resize(d, d);
      if (pairs_rows > 0) {
        batch1_.noalias() =
            inv_count * (X.bottomRows(pairs_rows).transpose() * X.topRows(pairs_rows));
      } else {
        batch1_.setZero();
      }
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
      detail::scaled_gram(scratch_, inv_count, batch0_);
      batch1_.resize(d, d);
      if (pairs_rows > 0) {
        batch1_.noalias() = inv_count * (scratch_.bottomRows(pairs_rows).transpose() *
                                         scratch_.topRows(pairs_rows));
      } else {
        batch1_.setZero();
      }
    }
    const double blend = state_.weight.next_blend(options_.decay);
    detail::blend_into(state_.average0, batch0_, blend);
    detail::blend_into(state_.average1, batch1_, blend);
    state_.weight.advance(options_.decay);
    ++state_.updates;
    state_.last_mean_length = static_cast<double>(real_steps) / static_cast<double>(m);
    return Status::Success;
  }

  FactorAverageOptions options_;
  Eigen::Index input_dim_;
  State state_;
  Matrix batch0_, batch1_, scratch_;
};

}  // namespace kfopt
