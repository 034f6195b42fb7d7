#pragma once
/// \file sequence_lengths.hpp
/// \brief The distribution of sequence lengths `(T_i, ω_i)` of RNN K-FAC (Martens, Ba &
/// Johnson 2018, end of §3.4): `ω_i ≥ 0`, `Σ_i ω_i = 1`, the proportion of training
/// sequences of length `T_i`; `E_T[T] = Σ_i ω_i T_i` normalizes every recurrent Fisher
/// approximation (eqs. 6, 8, 9).
///
/// kfopt estimates it the way it estimates the Kronecker factors (factor_moments.hpp): each
/// batch of m sequences gives its empirical histogram `h_b(T) = #{i : T_i = T} / m`, and the
/// estimate is the *bias-corrected* exponential moving average of these histograms,
///
///     ω(T) = Σ_b β^{t−b} h_b(T) / Σ_b β^{t−b},
///
/// with the same decay β and the same batch weights as the factor averages, so that the
/// lengths describe the same (recent) data as A0, A1, G0, G1. Every batch counts equally,
/// whatever its m (as for the factors, whose batch estimates are normalized per batch).
/// β = 1 gives the plain mean of the batch histograms. A sequence of length 0 (all its
/// steps masked) is counted at T = 0: it contributes nothing to the Fisher but is one of
/// the m cases averaged over, exactly as in the factors' normalizer `1/(m E[T])`.
///
/// Storage: one weight per length 0..T_max seen (dense, O(T_max) memory); an update costs
/// O(m + T_max) and allocates only when a new longest sequence appears.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/kron/factor_moments.hpp"

namespace kfopt {

/// A discrete distribution of sequence lengths: the support `lengths` (distinct, ascending,
/// each ≥ 0) and positive `weights` summing to 1 (RNN K-FAC §3.4, `(T_i, ω_i)`).
struct SequenceLengths {
  std::vector<double> lengths;  ///< T_i (integer-valued, ascending)
  std::vector<double> weights;  ///< ω_i > 0, Σ ω_i = 1

  /// Whether the distribution has no length.
  bool empty() const noexcept { return lengths.empty(); }
  /// Number of distinct lengths T_i.
  std::size_t size() const noexcept { return lengths.size(); }

  /// `E_T[T] = Σ_i ω_i T_i`.
  double mean() const noexcept {
    double s = 0.0;
    for (std::size_t i = 0; i < lengths.size(); ++i) s += weights[i] * lengths[i];
    return s;
  }
  /// `E_T[T²] = Σ_i ω_i T_i²` (the limit `1/γ(1)` of Option 1, see temporal_gamma.hpp).
  double second_moment() const noexcept {
    double s = 0.0;
    for (std::size_t i = 0; i < lengths.size(); ++i) s += weights[i] * lengths[i] * lengths[i];
    return s;
  }

  /// A single length T (every sequence has T steps). Throws InvalidInputError for T < 0.
  static SequenceLengths constant(double length) {
    if (!(length >= 0.0) || !std::isfinite(length) || length != std::floor(length)) {
      throw InvalidInputError("kfopt::SequenceLengths::constant: length must be a finite "
                              "integer >= 0, got " + std::to_string(length));
    }
    return SequenceLengths{{length}, {1.0}};
  }

  /// Throws InvalidInputError unless the support is non-empty, lengths are finite
  /// non-negative integers in ascending order, weights are positive and finite and sum to
  /// 1 within 1e-9. `operation` names the caller in the message.
  void validate(const char* operation) const {
    const std::string op(operation);
    if (lengths.empty() || lengths.size() != weights.size()) {
      throw InvalidInputError(op + ": a length distribution needs as many weights as lengths "
                              "and at least one (got " + std::to_string(lengths.size()) +
                              " lengths, " + std::to_string(weights.size()) + " weights)");
    }
    double total = 0.0;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      const double t = lengths[i], w = weights[i];
      if (!(t >= 0.0) || !std::isfinite(t) || t != std::floor(t) ||
          (i > 0 && !(t > lengths[i - 1]))) {
        throw InvalidInputError(op + ": lengths must be distinct non-negative integers in "
                                "ascending order (entry " + std::to_string(i) + " is " +
                                std::to_string(t) + ")");
      }
      if (!(w > 0.0) || !std::isfinite(w)) {
        throw InvalidInputError(op + ": weights must be positive and finite (entry " +
                                std::to_string(i) + " is " + std::to_string(w) + ")");
      }
      total += w;
    }
    if (std::abs(total - 1.0) > 1e-9) {
      throw InvalidInputError(op + ": weights must sum to 1, they sum to " +
                              std::to_string(total));
    }
  }
};

/// Bias-corrected moving histogram of sequence lengths (see sequence_lengths.hpp).
class SequenceLengthAverage {
 public:
  /// Everything carried between batches (inspect, reset or checkpoint it).
  struct State {
    std::vector<double> histogram;  ///< ω(T) for T = 0 .. size−1 (sums to 1 once updated)
    detail::AverageWeight weight;   ///< Σ_b β^{t−b}, shared in spirit with the factors
    std::int64_t updates = 0;       ///< batches taken
  };

  /// `decay` is β ∈ (0, 1] (HyperparameterError otherwise).
  explicit SequenceLengthAverage(double decay = 0.95) : decay_(decay) {
    detail::require_hyperparameter(decay > 0.0 && decay <= 1.0, "kfopt::SequenceLengthAverage",
                                   "decay", decay, "(0, 1]");
  }

  /// Takes the lengths of one batch (m ≥ 1 entries, each ≥ 0; InvalidInputError otherwise,
  /// nothing changes). Cost O(m + T_max).
  void update(const Eigen::Ref<const Eigen::VectorXi>& lengths) {
    constexpr const char* op = "kfopt::SequenceLengthAverage::update";
    const Eigen::Index m = lengths.size();
    if (m == 0) throw InvalidInputError(std::string(op) + ": the batch has no sequences");
    int longest = 0;
    for (Eigen::Index i = 0; i < m; ++i) {
      if (lengths(i) < 0) {
        throw InvalidInputError(std::string(op) + ": length of sequence " + std::to_string(i) +
                                " is negative (" + std::to_string(lengths(i)) + ")");
      }
      longest = std::max(longest, lengths(i));
    }
    if (state_.histogram.size() < static_cast<std::size_t>(longest) + 1) {
      state_.histogram.resize(static_cast<std::size_t>(longest) + 1, 0.0);
    }
    const double blend = state_.weight.next_blend(decay_);
    // ω ← ω + blend (h − ω), written as ω ← (1 − blend) ω + blend h.
    for (double& w : state_.histogram) w *= (1.0 - blend);
    const double unit = blend / static_cast<double>(m);
    for (Eigen::Index i = 0; i < m; ++i) state_.histogram[static_cast<std::size_t>(lengths(i))] += unit;
    state_.weight.advance(decay_);
    ++state_.updates;
  }

  /// Adds one batch's lengths to `counts` (counts(T) = number of sequences of length T, a
  /// contribution that sums over batches like the factors' FactorContribution). Returns the
  /// number of sequences longer than counts.size() − 1, which are not counted (a caller that
  /// sizes `counts` to an agreed maximum reports them). Throws InvalidInputError for a
  /// negative length.
  template <typename Counts>
  static Eigen::Index add_counts(const Eigen::Ref<const Eigen::VectorXi>& lengths, Counts& counts) {
    Eigen::Index exceeded = 0;
    for (Eigen::Index i = 0; i < lengths.size(); ++i) {
      if (lengths(i) < 0) {
        throw InvalidInputError("kfopt::SequenceLengthAverage::add_counts: length of sequence " +
                                std::to_string(i) + " is negative (" + std::to_string(lengths(i)) + ")");
      }
      if (lengths(i) >= counts.size()) {
        ++exceeded;
      } else {
        counts(lengths(i)) += 1;
      }
    }
    return exceeded;
  }

  /// Takes one batch given by its length counts (counts(T) ≥ 0 sequences of length T, e.g.
  /// summed over ranks): the same histogram as update() of a batch with those lengths, to
  /// rounding. Throws InvalidInputError (nothing changes) for a negative or non-finite count
  /// or no sequence at all. Cost O(T_max).
  template <typename Counts>
  void update_counts(const Counts& counts) {
    constexpr const char* op = "kfopt::SequenceLengthAverage::update_counts";
    double m = 0.0;
    Eigen::Index longest = -1;
    for (Eigen::Index t = 0; t < counts.size(); ++t) {
      const double c = static_cast<double>(counts(t));
      if (!(c >= 0.0) || !std::isfinite(c)) {
        throw InvalidInputError(std::string(op) + ": count of length " + std::to_string(t) +
                                " is " + std::to_string(c) + " (must be finite and >= 0)");
      }
      if (c > 0.0) longest = t;
      m += c;
    }
    if (!(m > 0.0)) throw InvalidInputError(std::string(op) + ": the batch has no sequences");
    if (state_.histogram.size() < static_cast<std::size_t>(longest) + 1) {
      state_.histogram.resize(static_cast<std::size_t>(longest) + 1, 0.0);
    }
    const double blend = state_.weight.next_blend(decay_);
    for (double& w : state_.histogram) w *= (1.0 - blend);
    const double unit = blend / m;
    for (Eigen::Index t = 0; t <= longest; ++t) {
      state_.histogram[static_cast<std::size_t>(t)] += unit * static_cast<double>(counts(t));
    }
    state_.weight.advance(decay_);
    ++state_.updates;
  }

  /// Whether at least one batch of lengths was recorded.
  bool has_data() const noexcept { return state_.updates > 0; }
  /// The moving-average decay β of the length histogram.
  double decay() const noexcept { return decay_; }

  /// The current distribution: every length with a positive weight, weights renormalized
  /// to sum to 1 (removing rounding drift). Lengths whose weight is below
  /// `relative_cutoff · max weight` are dropped (0 keeps all; a cutoff bounds the support,
  /// and so the cost of γ, when many lengths have decayed to negligible weights). Empty
  /// before the first update.
  SequenceLengths distribution(double relative_cutoff = 0.0) const {
    SequenceLengths d;
    double top = 0.0;
    for (double w : state_.histogram) top = std::max(top, w);
    double total = 0.0;
    for (std::size_t t = 0; t < state_.histogram.size(); ++t) {
      const double w = state_.histogram[t];
      if (w > 0.0 && w >= relative_cutoff * top) {
        d.lengths.push_back(static_cast<double>(t));
        d.weights.push_back(w);
        total += w;
      }
    }
    for (double& w : d.weights) w /= total;
    return d;
  }

  /// `E_T[T]` of the current distribution (0 before the first update).
  double mean() const { return has_data() ? distribution().mean() : 0.0; }

  /// The histogram state, for inspection and checkpoints.
  const State& state() const noexcept { return state_; }

  /// Replaces the state (e.g. from a checkpoint). Throws InvalidInputError unless every
  /// weight is finite and ≥ 0 and, once updated, they sum to 1 within 1e-9.
  void set_state(const State& state) {
    check_state("kfopt::SequenceLengthAverage::set_state", state);
    state_ = state;
  }

  /// Throws InvalidInputError unless `state` is a valid state (see set_state).
  static void check_state(const char* operation, const State& state) {
    double total = 0.0;
    for (double w : state.histogram) {
      if (!(w >= 0.0) || !std::isfinite(w)) {
        throw InvalidInputError(std::string(operation) +
                                ": length histogram holds a negative or non-finite weight");
      }
      total += w;
    }
    if (state.updates < 0 || (state.updates > 0 && std::abs(total - 1.0) > 1e-9) ||
        (state.updates == 0 && total != 0.0)) {
      throw InvalidInputError(std::string(operation) + ": length histogram sums to " +
                              std::to_string(total) + " after " +
                              std::to_string(state.updates) + " updates (need 1, or 0 and 0)");
    }
  }

  /// Forgets every recorded length.
  void reset() { state_ = State{}; }

 private:
  double decay_;
  State state_;
};

}  // namespace kfopt
