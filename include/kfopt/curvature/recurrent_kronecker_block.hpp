#pragma once
/// \file recurrent_kronecker_block.hpp
/// \brief The Kronecker-factored Fisher block of a weight shared across time steps,
/// `s_t = W a_t (+ b)` for t = 1..T (Martens, Ba & Johnson 2018, "Kronecker-factored
/// curvature approximations for recurrent neural networks", §3 and appendix C), with the
/// three approximations of the paper selectable per block:
///
/// - **Independent** (eq. 6): the `w_t = vec(g_t a_tᵀ)` are uncorrelated across time,
///   `F̂ = E_T[T] V0`, `V0 = A0 ⊗ G0`.
/// - **Option 1** (eq. 8): the w_t follow a stationary linear-Gaussian chain
///   `w_t = Ψ w_{t−1} + ε_t` with `Ψ = V1 V0⁻¹`, `V1 = A1 ⊗ G1`, and V1 is taken symmetric
///   (`A1 ← (A1 + A1ᵀ)/2`, `G1 ← (G1 + G1ᵀ)/2`, C.3). Then exactly
///   `F̂ = E_T[F_T] = E_T[Σ_{d=−T}^{T} (T − |d|) V_d]` with `V_d = Ψ^d V0`, `V_{−d} = V_dᵀ`,
///   and `F̂⁻¹ = V0^{-1/2} U diag(γ(ψ̂)) Uᵀ V0^{-1/2}` for `Ψ̂ = V0^{-1/2} V1 V0^{-1/2} =
///   U diag(ψ̂) Uᵀ` (γ: temporal_gamma.hpp).
/// - **Option 2** (eq. 9): the same chain, sequences treated as infinitely long,
///   `F̂⁻¹ = E_T[T]⁻¹ V0^{-1/2} (I − Ψ̂)(I − Ψ̂ᵀΨ̂)⁻¹(I − Ψ̂ᵀ) V0^{-1/2}` (V1 need not be
///   symmetric).
///
/// Everything is computed as in appendix C.3, on the factors only, never forming a
/// Kronecker product: `Ψ̂ = Ψ̂_A ⊗ Ψ̂_G` with `Ψ̂_A = A0^{-1/2} A1 A0^{-1/2}`,
/// `Ψ̂_G = G0^{-1/2} G1 G0^{-1/2}`.
///
/// ## Statistics
/// Time-major sequences (row `t·m + i` = step t of sequence i): layer inputs `a`
/// ((T_max·m) × in) and per-example, per-step pre-activation gradients `g` ((T_max·m) ×
/// out; from targets *sampled from the model* for the true Fisher, see kronecker_block.hpp),
/// with per-sequence lengths or a T_max × m mask. `A0, A1, G0, G1` are the bias-corrected
/// moving averages of TemporalFactorMovingAverage (§3.5.4: `Σ_t a_t a_tᵀ / (m E[T])` and
/// `Σ_t a_{t+1} a_tᵀ / (m E[T])` per batch, one normalizer, so `ρ(A1 A0⁻¹) ≤ 1` by
/// appendix B.2); the length distribution `(T_i, ω_i)` of §3.4 is the bias-corrected moving
/// histogram of SequenceLengthAverage (same decay and batch weights as the factors; a
/// masked sequence's length is its number of real steps). A batch is taken whole or not at
/// all: a NaN/Inf in a real step of `a` or `g` returns NonFiniteInput and nothing changes.
///
/// ## Damping: what λ means
/// `BlockDamping::lambda` = λ is the Tikhonov damping **of the whole block**, the same λ as
/// for the dense KroneckerBlock. Following the paper (§4: factored Tikhonov damping
/// applied to V0 only) and its authors' code (damping divided by the number of uses),
/// V0 is damped by **λ / E_T[T]**, split by π as in Martens & Grosse 2015 §6.3:
///
///     A0 ← A0 + δ_A I,  G0 ← G0 + δ_G I,   δ_A = max(π √(λ/E_T[T]), floor),
///     δ_G = max(√(λ/E_T[T]) / π, floor),   π = sqrt((tr A0 / dim A0) / (tr G0 / dim G0)),
///
/// and A1, G1 are left alone; then the chosen approximation is built from the damped V0
/// (which also shrinks Ψ̂ away from spectral radius 1, §3.5.4). Hence for Independent,
/// `F̂_λ = E_T[T] (A0 + δ_A I) ⊗ (G0 + δ_G I) = E_T[T] V0 + λ I + cross terms`, and for
/// sequences of length 1 all three approximations are exactly the dense block with
/// factored damping λ. `floor` is applied to the shifts as they are (not divided by
/// E_T[T]). DampingStyle::Exact (`E_T[T] V0 + λ I`) exists for Independent only: for
/// Options 1 and 2 a non-Kronecker V0 would destroy the structure of Ψ̂ (InvalidInputError).
///
/// ## Guards
/// - |ψ̂| < 1 strictly: Option 1 clips the eigenvalues of the symmetric Ψ̂_A, Ψ̂_G into
///   `[−ρ, ρ]`; Option 2 clips their singular values to ≤ ρ (so `Ψ̂ᵀΨ̂` has eigenvalues
///   ≤ ρ⁴ and the divisor `1 − μ_G μ_A` of `(I − Ψ̂ᵀΨ̂)⁻¹` is ≥ 1 − ρ⁴), consistently in
///   every factor of eq. 9: F̂ is then exactly the Option-2 Fisher of the clipped chain.
///   ρ = `max_abs_psi`; clips are counted. (In exact arithmetic B.2 guarantees ‖Ψ̂_A‖ ≤ 1,
///   < 1 with damping; clipping catches rounding and undamped degenerate factors.)
/// - γ is evaluated by a series near ψ̂ = 1 (limit `1/E_T[T²]`), see temporal_gamma.hpp.
/// - A singular damped V0 (λ = 0 with a zero eigenvalue) → Status::NumericalIssue.
///
/// ## Costs (A0 n×n with n = in (+1), G0 p×p with p = out)
/// - statistics: 2n²k + 2p²k flops for k real steps (TemporalFactorMovingAverage);
/// - `refresh()`: two symmetric eigendecompositions (A0, G0), ≈ 9(n³ + p³) flops;
/// - preparation for a damping λ (lazily in apply_inverse, or `prepare`), redone only after
///   a refresh or when λ changes: Independent 2 products (≈ 2(n³ + p³)); Option 1 the
///   whitened Ψ̂ factors in the eigenbases of the damped V0 factors (no dense roots), their
///   eigendecompositions and bases (≈ 9(n³+p³) + 6(n³+p³)) plus n·p·K evaluations of γ for
///   K distinct lengths; Option 2 the Ψ̂ factors, PᵀP, its eigendecompositions
///   (IdentityMinusKroneckerInverse) and four bases (≈ 9(n³+p³) + 11(n³+p³)). Measured:
///   2.0–2.6× the independent refresh + preparation at n = 128–512 (README). Under adaptive
///   damping that changes λ every step this is paid every step.
/// - the refresh and the preparation also come as parts, one per factor side, that separate
///   processes compute and install (refresh_part_count, preparation_part_count): the
///   eigendecompositions and everything of C.3 that depends on one factor alone; what joins
///   the two sides (the γ or divisor scale of every pair, O(np·K)) runs at the install.
/// - `apply_inverse`: Independent 2 products (p·n·(p+n) flops), Option 1 four
///   (2pn(p+n)), Option 2 eight (4pn(p+n)); no allocation after the first call.
/// - `multiply` (undamped F̂, for the quadratic model of adaptive damping): as apply for
///   Independent and Option 1; Option 2 needs `(I − Ψ̂)⁻¹`, two complex Schur forms once
///   per refresh and two Stein solves per call (KroneckerSteinInverse, ≈ 5× apply).
///
/// Not thread-safe per object (workspaces and caches are members).

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/curvature/kronecker_block.hpp"
#include "kfopt/kron/factor_moments.hpp"
#include "kfopt/kron/factored_damping.hpp"
#include "kfopt/kron/kronecker_stein_inverse.hpp"
#include "kfopt/kron/kronecker_sum_inverse.hpp"
#include "kfopt/kron/scaled_congruence.hpp"
#include "kfopt/kron/sequence_lengths.hpp"
#include "kfopt/linalg/symmetric_eigen_cache.hpp"
#include "kfopt/kron/temporal_gamma.hpp"

namespace kfopt {

/// Which Fisher approximation a RecurrentKroneckerBlock uses (RNN K-FAC §3.4–3.5).
enum class RecurrentApproximation {
  Independent,  ///< eq. 6: `F̂ = E_T[T] V0`
  Option1,      ///< eq. 8: symmetric V1, exact `E_T[F_T]` of the chain
  Option2,      ///< eq. 9: the chain's limit of infinitely long sequences
};

/// Human-readable name of an approximation.
inline const char* to_string(RecurrentApproximation a) noexcept {
  switch (a) {
    case RecurrentApproximation::Independent: return "independent";
    case RecurrentApproximation::Option1: return "option 1";
    case RecurrentApproximation::Option2: return "option 2";
  }
  return "unknown approximation";
}

/// Structure and guards of a recurrent block (held by value; `validate()` at construction).
template <typename Scalar>
struct RecurrentKroneckerBlockOptions {
  /// The approximation (changeable later with set_approximation). Default Option2, the
  /// authors' default (it does not assume a symmetric V1).
  RecurrentApproximation approximation = RecurrentApproximation::Option2;
  /// Fold a bias through the homogeneous coordinate (a gets a trailing 1). Default true.
  bool bias = true;
  /// Decay β ∈ (0, 1] of the factor and length moving averages. Default 0.95.
  double decay = 0.95;
  /// ρ ∈ (0, 1): the largest |eigenvalue| (Option 1) or singular value (Option 2) kept in
  /// the whitened transition factors Ψ̂_A, Ψ̂_G, so that |ψ̂| ≤ ρ² < 1. Default
  /// 1 − sqrt(ε) (1 − 1.5e-8 for double, 1 − 3.5e-4 for float): it only catches rounding
  /// and degenerate statistics, never a genuine correlation.
  Scalar max_abs_psi = Scalar(1) - std::sqrt(std::numeric_limits<Scalar>::epsilon());
  /// Lengths whose weight is below `length_cutoff · (largest weight)` are dropped from the
  /// distribution at refresh (bounds the n·p·K cost of γ when many lengths have decayed
  /// to negligible weight). Range [0, 1). Default 0 (keep every length seen).
  double length_cutoff = 0.0;

  /// Throws HyperparameterError naming the field unless every field is in range.
  void validate() const {
    constexpr const char* name = "kfopt::RecurrentKroneckerBlockOptions";
    detail::require_hyperparameter(decay > 0.0 && decay <= 1.0, name, "decay", decay, "(0, 1]");
    const Scalar rho4 = max_abs_psi * max_abs_psi * max_abs_psi * max_abs_psi;
    detail::require_hyperparameter(
        max_abs_psi > Scalar(0) && max_abs_psi < Scalar(1) && Scalar(1) - rho4 > Scalar(0),
        name, "max_abs_psi", max_abs_psi, "(0, 1) with max_abs_psi^4 < 1 in the scalar type");
    detail::require_hyperparameter(length_cutoff >= 0.0 && length_cutoff < 1.0, name,
                                   "length_cutoff", length_cutoff, "[0, 1)");
  }
};

/// Kronecker-factored Fisher block of a weight shared across time (see the file comment).
/// Its interface follows KroneckerBlock: update statistics, `refresh()` (the amortized
/// eigendecompositions), `apply_inverse(Z, damping, out)`, `multiply(Z, out)`,
/// `to_dense()`.
template <typename Scalar>
class RecurrentKroneckerBlock {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size boolean matrix.
  using Mask = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic>;
  /// The hyperparameter struct of this class.
  using Options = RecurrentKroneckerBlockOptions<Scalar>;
  /// The temporal moving average used for both factors.
  using FactorAverage = TemporalFactorMovingAverage<Scalar>;

  /// Everything the statistics carry between batches (inspect, reset or checkpoint it).
  struct State {
    typename FactorAverage::State a;    ///< A0 (average0), A1 (average1)
    typename FactorAverage::State g;    ///< G0, G1
    SequenceLengthAverage::State lengths;  ///< moving histogram of lengths
    std::int64_t skipped_statistics = 0;   ///< batches refused for NaN/Inf
  };

  /// A block for `s_t = W a_t (+ b)` with W out×in. Throws ShapeError for non-positive
  /// sizes and HyperparameterError for invalid options.
  RecurrentKroneckerBlock(std::string name, Eigen::Index in, Eigen::Index out,
                          Options options = {})
      : name_(std::move(name)),
        options_(validated(options)),
        in_(in),
        out_(out),
        a_(in, {options.decay, options.bias, false}),
        g_(out, {options.decay, false, false}),
        lengths_(options.decay) {}

  /// The layer's name (used in error messages).
  const std::string& name() const noexcept { return name_; }
  /// Number of layer inputs (without the bias).
  Eigen::Index input_size() const noexcept { return in_; }
  /// Number of layer outputs.
  Eigen::Index output_size() const noexcept { return out_; }
  /// Whether the layer has a bias (an extra input column).
  bool has_bias() const noexcept { return options_.bias; }
  /// Columns of the gradient matrix `[∇W ∇b]` the block acts on: in (+1 with a bias).
  Eigen::Index cols() const noexcept { return a_.dimension(); }
  /// Rows of the gradient matrix the block acts on: out.
  Eigen::Index rows() const noexcept { return out_; }
  /// The options in use.
  const Options& options() const noexcept { return options_; }
  /// The temporal approximation in use.
  RecurrentApproximation approximation() const noexcept { return options_.approximation; }
  /// Switches the approximation; the next apply prepares again from the current refresh.
  void set_approximation(RecurrentApproximation a) noexcept { options_.approximation = a; }
  /// Whether `style` can damp this block's approximation (Exact: Independent only).
  bool supports(DampingStyle style) const noexcept {
    return style == DampingStyle::Factored ||
           options_.approximation == RecurrentApproximation::Independent;
  }

  // ---------------------------------------------------------------------------------------
  // Statistics
  // ---------------------------------------------------------------------------------------

  /// Takes m = lengths.size() sequences: `a` is (T_max·m) × in, `g` (T_max·m) × out, both
  /// time-major (row t·m + i), `lengths(i) ∈ [0, T_max]` real steps from the start (padded
  /// rows may hold anything, NaN included). Throws ShapeError (shapes, m = 0, an empty
  /// batch) or InvalidInputError (a length outside [0, T_max], every step masked) before
  /// anything changes; returns NonFiniteInput (counted, nothing changes) for NaN/Inf in a
  /// real step of a or g, and Overflow (counted, nothing changes) for a batch whose
  /// contribution would overflow A or G (TemporalFactorMovingAverage::admit).
  Status update_statistics(const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g,
                           const Eigen::Ref<const Eigen::VectorXi>& lengths);

  /// Takes m = mask.cols() sequences with a T_max × m mask of real steps (true = real).
  /// A sequence's length (for the length distribution) is its number of real steps; A1,
  /// G1 pair only consecutive real steps. Errors as the lengths overload.
  Status update_statistics(const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g,
                           const Eigen::Ref<const Mask>& mask);

  /// Takes `num_sequences` sequences that all have T_max = rows / num_sequences steps.
  Status update_statistics_full(const Eigen::Ref<const Matrix>& a,
                                const Eigen::Ref<const Matrix>& g, Eigen::Index num_sequences);

  /// A batch of sequences' statistics as sums before normalization: A's and G's
  /// TemporalFactorContribution and the counts of sequences per length T = 0 …
  /// length_counts.rows() − 1 (sequences longer than that are counted in `exceeded`, not
  /// in the counts). Contributions add over batches (and over data-parallel ranks);
  /// update_statistics(contribution) takes a summed one as one batch.
  struct Contribution {
    TemporalFactorContribution<Scalar> a;  ///< Σ A0, A1 terms (with the bias coordinate)
    TemporalFactorContribution<Scalar> g;  ///< Σ G0, G1 terms
    Matrix length_counts;                  ///< (T_cap + 1) × 1: sequences of each length
    double exceeded = 0.0;                 ///< sequences longer than T_cap
    /// Visits every field (TemporalFactorContribution::visit), A's, G's, the counts.
    template <typename Visitor>
    void visit(Visitor& v) {
      a.visit(v);
      g.visit(v);
      v.general(length_counts);
      v.count(exceeded);
    }
    /// Back to the empty contribution.
    void clear() {
      a.clear();
      g.clear();
      length_counts.setZero();
      exceeded = 0.0;
    }
  };
  /// The empty contribution of this block's shape, counting lengths up to `max_length`
  /// (≥ 1; ShapeError otherwise).
  Contribution empty_contribution(Eigen::Index max_length) const {
    if (max_length < 1) {
      throw ShapeError(operation("empty_contribution") + ": max_length is " +
                       std::to_string(max_length) + " (must be >= 1)");
    }
    return Contribution{a_.empty_contribution(), g_.empty_contribution(),
                        Matrix::Zero(max_length + 1, 1), 0.0};
  }
  /// Adds m = lengths.size() sequences (layout as update_statistics; m = 0 adds nothing)
  /// to `c`, both factors or neither: NaN/Inf in a real step of a or g adds only the
  /// non-finite counts and returns NonFiniteInput. Throws as update_statistics for shapes
  /// and lengths. Changes nothing in the block.
  Status add_contribution(const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g,
                          const Eigen::Ref<const Eigen::VectorXi>& lengths, Contribution& c) const {
    const std::string op = operation("add_contribution");
    const Eigen::Index m = lengths.size();
    if (m == 0) return Status::Success;
    const Eigen::Index t_max = check_batch(op, a, g, m);
    for (Eigen::Index i = 0; i < m; ++i) {
      if (lengths(i) < 0 || lengths(i) > t_max) {
        throw InvalidInputError(op + ": length of sequence " + std::to_string(i) + " is " +
                                std::to_string(lengths(i)) + " but the batch holds " +
                                std::to_string(t_max) + " steps");
      }
    }
    for (Eigen::Index t = 0; t < t_max; ++t) {
      for (Eigen::Index i = 0; i < m; ++i) {
        if (t < lengths(i) && (!detail::all_finite(a.row(t * m + i)) ||
                               !detail::all_finite(g.row(t * m + i)))) {
          c.a.nonfinite += 1.0;
          c.g.nonfinite += 1.0;
          return Status::NonFiniteInput;
        }
      }
    }
    (void)a_.add_contribution(a, lengths, c.a);  // finite: cannot be refused
    (void)g_.add_contribution(g, lengths, c.g);
    auto counts = c.length_counts.col(0);
    c.exceeded += static_cast<double>(SequenceLengthAverage::add_counts(lengths, counts));
    return Status::Success;
  }
  /// What update_statistics(c) would return, without changing anything (NotComputed for
  /// a contribution without real steps). Throws InvalidInputError when `c.exceeded > 0`
  /// (a sequence longer than the counts hold).
  Status admit(const Contribution& c) const {
    if (c.exceeded > 0.0) {
      throw InvalidInputError(operation("admit") + ": " + std::to_string(c.exceeded) +
                              " sequence(s) longer than the " +
                              std::to_string(c.length_counts.rows() - 1) +
                              " steps the length counts hold");
    }
    const Status sa = a_.admit(c.a);
    if (sa != Status::Success) return sa;
    return g_.admit(c.g);
  }
  /// Takes a (possibly summed) contribution as one batch: the statistics of
  /// update_statistics(a, g, lengths) on the batch it sums, to rounding. Refused as
  /// admit(c) (counted in skipped_statistics, except NotComputed, which changes nothing).
  Status update_statistics(const Contribution& c) {
    const Status admitted = admit(c);
    if (admitted == Status::NotComputed) return admitted;
    if (admitted != Status::Success) {
      ++skipped_statistics_;
      return admitted;
    }
    a_.update(c.a);
    g_.update(c.g);
    lengths_.update_counts(c.length_counts.col(0));
    return Status::Success;
  }

  /// Whether any statistics have been taken.
  bool has_statistics() const noexcept { return a_.state().updates > 0; }
  /// Batches refused because a real step held NaN or Inf.
  std::int64_t skipped_statistics() const noexcept { return skipped_statistics_; }

  /// Current averages: A0, A1 (cols() square; A1 = E[a_{t+1} a_tᵀ], not symmetric), G0, G1.
  const Matrix& a0() const noexcept { return a_.a0(); }
  /// See a0().
  const Matrix& a1() const noexcept { return a_.a1(); }
  /// See a0().
  const Matrix& g0() const noexcept { return g_.a0(); }
  /// See a0().
  const Matrix& g1() const noexcept { return g_.a1(); }
  /// Current length distribution `(T_i, ω_i)` (with the options' cutoff) and `E_T[T]`.
  SequenceLengths length_distribution() const {
    return lengths_.distribution(options_.length_cutoff);
  }
  /// See length_distribution() (0 before any statistics).
  double mean_length() const { return has_statistics() ? length_distribution().mean() : 0.0; }

  /// A copy of the statistics' state.
  State state() const {
    return State{a_.state(), g_.state(), lengths_.state(), skipped_statistics_};
  }

  /// Replaces the statistics (a checkpoint, or factors computed elsewhere). Throws
  /// ShapeError for wrong shapes, InvalidInputError for non-finite or non-symmetric A0/G0
  /// averages, an invalid length histogram, or update counts that disagree on whether any
  /// data was taken; nothing changes then. The refreshed inverse stays as it was until the
  /// next refresh().
  void set_state(const State& state);
  /// Throws as set_state() would (naming `op`), changing nothing.
  void check_state(const std::string& op, const State& state) const;

  /// What the last refresh left for the next steps (for checkpoints): the snapshots of A0,
  /// A1, G0, G1, the length distribution `(T_i, ω_i)` with its `E_T[T]`, and the number of
  /// refreshes. The eigendecompositions of A0 and G0 and the damping-dependent preparations
  /// are not part of it: a restore (stage_refresh_state, commit_refresh_state) recomputes
  /// them from it, with the same results bit for bit as the refresh that made it (the same
  /// computation on the same numbers).
  struct RefreshState {
    Matrix a0;  ///< A0 at the refresh (cols() square; zero before the first refresh)
    Matrix a1;  ///< A1 at the refresh
    Matrix g0;  ///< G0 at the refresh (rows() square)
    Matrix g1;  ///< G1 at the refresh
    SequenceLengths lengths;          ///< the length distribution at the refresh
    Scalar mean_length = Scalar(0);   ///< its E_T[T], as the inverse uses it
    std::int64_t refreshes = 0;       ///< refreshes that had succeeded
  };
  /// A copy of what the last refresh left (zero snapshots before the first one).
  RefreshState refresh_state() const {
    RefreshState r;
    if (version_ > 0) {
      r = RefreshState{snap_a0_, snap_a1_, snap_g0_, snap_g1_, snap_lengths_, snap_mean_, version_};
    } else {
      r.a0.setZero(cols(), cols());
      r.a1.setZero(cols(), cols());
      r.g0.setZero(rows(), rows());
      r.g1.setZero(rows(), rows());
    }
    return r;
  }
  /// First half of restoring a refresh_state(): checks it (ShapeError, InvalidInputError
  /// naming `op`: shapes, finite and symmetric A0 and G0, a valid length distribution with
  /// E_T[T] > 0, refreshes ≥ 0; zero snapshots and an empty distribution with 0 refreshes)
  /// and decomposes its A0 and G0 into staging storage, with no visible change. Returns the
  /// decomposition's status; commit_refresh_state() after Success only.
  Status stage_refresh_state(const std::string& op, const RefreshState& r);
  /// Second half: installs the staged decompositions and the snapshot; the next apply
  /// prepares again for its damping. Only a memory allocation can fail here.
  void commit_refresh_state(const RefreshState& r);

  /// Forgets all statistics (the refreshed inverse stays until the next refresh()).
  void reset() {
    a_.reset();
    g_.reset();
    lengths_.reset();
    skipped_statistics_ = 0;
  }

  // ---------------------------------------------------------------------------------------
  // Refresh, preparation, inverse, product
  // ---------------------------------------------------------------------------------------

  /// The amortized preprocessing: eigendecomposes the current A0 and G0 and snapshots A1,
  /// G1 and the length distribution (`E_T[T]`), all at once or not at all (on failure the
  /// previous snapshot stays in use). Returns NotComputed without statistics. The
  /// damping-dependent part of C.3 runs at the first apply_inverse (or prepare) after it.
  Status refresh();

  /// Takes the refresh of `refreshed` — a copy of this block made at some step, refreshed
  /// (and possibly prepared) since, on another thread perhaps — while keeping this block's
  /// own statistics: afterwards the block holds the copy's spectra, snapshot and prepared
  /// operators and the statistics recorded here in the meantime. Kfac's delayed refresh
  /// (KfacOptions::refresh_delay). Throws InvalidInputError for a copy of another layer.
  void adopt_refresh(RecurrentKroneckerBlock&& refreshed) {
    if (refreshed.name_ != name_ || refreshed.in_ != in_ || refreshed.out_ != out_) {
      throw InvalidInputError(operation("adopt_refresh") + ": the refreshed block is layer '" +
                              refreshed.name_ + "'");
    }
    refreshed.a_ = std::move(a_);
    refreshed.g_ = std::move(g_);
    refreshed.lengths_ = std::move(lengths_);
    refreshed.batch_lengths_ = std::move(batch_lengths_);
    refreshed.skipped_statistics_ = skipped_statistics_;
    *this = std::move(refreshed);
  }

  /// Whether a refresh has succeeded (apply_inverse and multiply can run).
  bool has_inverse() const noexcept { return version_ > 0; }
  /// How many refreshes have succeeded.
  std::int64_t refreshes() const noexcept { return version_; }
  /// The length distribution and `E_T[T]` of the last refresh (what the inverse uses).
  const SequenceLengths& refreshed_lengths() const noexcept { return snap_lengths_; }
  /// See refreshed_lengths().
  Scalar refreshed_mean_length() const noexcept { return snap_mean_; }

  /// Runs the damping-dependent preprocessing of C.3 for `damping` now (apply_inverse
  /// does it lazily; it is cached until the next refresh or a different damping). Returns
  /// NotComputed before a refresh, NumericalIssue for a singular damped V0 or a refused
  /// divisor (the previous preparation stays). Throws InvalidInputError for negative or
  /// non-finite λ or floor, or Exact damping with Option 1/2.
  Status prepare(const BlockDamping<Scalar>& damping);

  // --- the refresh and the preparation as parts, for data-parallel processes that split
  // them among themselves (kfopt::mpi::DistributedKfac): each part depends on one factor
  // side only, so one process computes it and the others install its result. Installing
  // the results leaves the block bit for bit as refresh() and prepare() would. -----------

  /// Parts of the refresh: part 0 eigendecomposes A0, part 1 G0.
  int refresh_part_count() const noexcept { return 2; }
  /// Flops of refresh part k: ≈ 9n³ (n = cols() for A0, rows() for G0).
  double refresh_part_cost(int k) const {
    const double n = static_cast<double>(k == 0 ? cols() : rows());
    return 9.0 * n * n * n;
  }
  /// Called on every process before the refresh parts: what refresh() checks first
  /// (NotComputed without statistics, NumericalIssue unless E_T[T] > 0), remembered for
  /// compute_refresh_part and install_refresh. O(T_max).
  Status begin_refresh_parts();
  /// Refresh part k (0: A0, 1: G0) of the current statistics into `result`, n × (n + 1):
  /// the eigenvalues in column 0, the eigenvectors after them (as refresh() computes them),
  /// changing nothing. Returns begin_refresh_parts' status if that failed, or the
  /// decomposition's. Cost refresh_part_cost(k).
  Status compute_refresh_part(int k, Matrix& result) const;
  /// Installs both refresh parts' results (computed here or in another process from the
  /// same statistics) as the refresh: the spectra, the snapshot of A0, A1, G0, G1 and the
  /// length distribution; the next apply prepares again. Throws ShapeError or
  /// InvalidInputError (nothing changes) unless begin_refresh_parts succeeded and both are
  /// orthonormal eigendecompositions of the right size (an n³ check each).
  void install_refresh(const Matrix& a_result, const Matrix& g_result);

  /// Parts of the preparation for `damping` (the step's): 2 (the A side and the G side of
  /// C.3) when apply_inverse with this damping would prepare now — a refresh has succeeded
  /// and the prepared inverse is for another refresh, damping or approximation — and the
  /// damping is factored; 0 otherwise (nothing to prepare, or DampingStyle::Exact, whose
  /// preparation is O(np) on the refreshed spectra). Throws as prepare() for bad damping.
  int preparation_part_count(const BlockDamping<Scalar>& damping) const;
  /// Flops of preparation part k (side of size n): Independent ≈ 2n³ (the damped inverse),
  /// Option 1 ≈ 15n³ (whitened transition, its eigendecomposition, the basis), Option 2
  /// ≈ 20n³ (whitened transition, PᵀP, its eigendecomposition, two bases).
  double preparation_part_cost(int k) const;
  /// Preparation part k (0: the A side, 1: the G side) for `damping` into `result`, changing
  /// nothing: n × (2 + b·n) with the side's spectrum (Option 1: ψ clipped to ρ; Option 2:
  /// the eigenvalues of PᵀP; zeros for Independent) in column 0, the clip count in (0, 1)
  /// and the side's b bases after them (b = 2 for Option 2, else 1). Returns NotComputed
  /// before a refresh, NumericalIssue for a singular damped factor, or the status of a
  /// failed eigendecomposition. Cost preparation_part_cost(k).
  Status compute_preparation_part(int k, const BlockDamping<Scalar>& damping,
                                  Matrix& result) const;
  /// Installs both preparation parts' results for `damping` as the prepared inverse: the
  /// sides are combined (Option 1: γ for every pair of ψ; Option 2: the divisor guard and
  /// 1/(E[T](1 − m_G m_A)); O(np·K)) exactly as prepare() combines them. Returns the
  /// combination's status (NumericalIssue for a refused divisor or γ: nothing changes, and
  /// the next apply_inverse refuses the same way); throws ShapeError or InvalidInputError
  /// (nothing changes) for results of the wrong shape, non-finite results, or a damping
  /// that has no parts.
  Status install_preparation(const Matrix& a_result, const Matrix& g_result,
                             const BlockDamping<Scalar>& damping);

  /// `out = F̂_λ⁻¹ Z` for Z rows() × cols() (`[∇W ∇b]`), F̂_λ the chosen approximation with
  /// V0 damped as described in the file comment. Returns NotComputed before a refresh,
  /// NonFiniteInput for a non-finite Z, NumericalIssue for a singular damped block (out
  /// untouched in all three cases). Throws ShapeError for a wrong Z and as prepare() for
  /// bad damping. `out` must not alias Z.
  template <typename DerivedZ>
  [[nodiscard]] Status apply_inverse(const Eigen::MatrixBase<DerivedZ>& Z,
                                     const BlockDamping<Scalar>& damping, Matrix& out);

  /// `out = F̂ Z` with the *undamped* approximate Fisher of the last refresh (for the
  /// quadratic model of adaptive damping, which adds its own λ‖δ‖²). A singular V0 is
  /// handled by its pseudo-inverse inside Ψ̂ (the λ → 0 limit; null directions of A0 are
  /// null directions of A1 by B.2), so this never fails for want of damping. Returns
  /// NotComputed before a refresh, NonFiniteInput for a non-finite Z, NumericalIssue or
  /// NoConvergence if the (once per refresh) preparation fails. `out` must not alias Z.
  /// Unlike KroneckerBlock::multiply (current averages) this uses the refreshed snapshot,
  /// the only statistics the Option 1/2 preprocessing exists for.
  template <typename DerivedZ>
  [[nodiscard]] Status multiply(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out);

  /// The dense undamped F̂ of the last refresh (what multiply applies), cols()·rows()
  /// square in `vec([∇W ∇b])` order. For tests and small problems; throws NumericalError
  /// before a refresh or if the preparation fails.
  Matrix to_dense() const {
    return to_dense(BlockDamping<Scalar>{DampingStyle::Factored, Scalar(0), Scalar(0)});
  }

  /// The dense damped F̂_λ whose inverse apply_inverse applies.
  Matrix to_dense(const BlockDamping<Scalar>& damping) const;

  /// Eigenvalues (Option 1) or singular values (Option 2) of Ψ̂_A, Ψ̂_G clipped to ρ by
  /// the last preparation of apply_inverse (0 for Independent).
  Eigen::Index clipped_psi_count() const noexcept { return inverse_.clipped; }
  /// Damping-dependent preparations run so far (one per refresh at a fixed λ).
  std::int64_t preparations() const noexcept { return preparations_; }
  /// The shifts δ_A, δ_G of the last preparation (see the damping convention).
  Scalar input_shift() const noexcept { return inverse_.a_shift; }
  /// See input_shift().
  Scalar gradient_shift() const noexcept { return inverse_.g_shift; }

 private:
  enum class Mode { Inverse, Forward };

  /// The damping-dependent products of C.3 for one approximation and one damping.
  /// Inverse mode: `F̂_λ⁻¹ Z`; Forward mode: `F̂_λ Z`. Meaning of the matrices:
  ///  - Independent/Factored: left·Z·right (explicit damped inverses, or damped factors);
  ///  - Independent/Exact: inverse: left·(scale ∘ (leftᵀ Z right))·rightᵀ with the
  ///    eigenbases; forward: left·Z·right + exact_lambda·Z;
  ///  - Option 1: left·(scale ∘ (leftᵀ Z right))·rightᵀ (bases `V0^{∓1/2} U`);
  ///  - Option 2 inverse: B diag(scale) Bᵀ with `B = (right ⊗ left) − (right2 ⊗ left2)`;
  ///    forward: `E[T]·left (X1 + X2 − Y) right`, `Y = left Z right`, X by `stein`.
  struct Prepared {
    bool valid = false;
    std::int64_t version = -1;
    Mode mode = Mode::Inverse;
    RecurrentApproximation approximation = RecurrentApproximation::Independent;
    DampingStyle style = DampingStyle::Factored;
    Scalar lambda = Scalar(-1), floor = Scalar(-1);
    Scalar a_shift = Scalar(0), g_shift = Scalar(0), exact_lambda = Scalar(0);
    Scalar mean_length = Scalar(1);
    Matrix left, right, left2, right2, scale;
    KroneckerSteinInverse<Scalar> stein;
    Eigen::Index clipped = 0;
  };

  struct Workspace {
    Matrix a, b, c;
  };

  /// One factor side of the Option 1/2 preparation (whitened_transition).
  struct Side {
    Matrix transition;
    Matrix basis;
  };

  /// One factor side's share of a preparation (see compute_preparation_part): everything
  /// of C.3 that depends on that factor alone.
  ///  - Independent: `basis` = the damped inverse (G's divided by E_T[T]);
  ///  - Option 1: `basis` = V0^{∓1/2} U E, `values` = ψ clipped to [−ρ, ρ];
  ///  - Option 2 (Inverse mode): `basis` = U D E, `basis2` = U D W (W = P E with its
  ///    singular values clipped to ρ), `values` = the eigenvalues of PᵀP, not yet clipped.
  struct SidePreparation {
    Matrix basis, basis2;
    Vector values;
    Eigen::Index clipped = 0;
  };

  /// The preparation's intermediates, kept between preparations so that a refresh every
  /// T_inv steps does not allocate (and first-touch) a dozen n×n matrices, eigensolver
  /// workspaces included: with glibc's default allocator, freeing them returned the memory
  /// to the system and page faults made up about a third of Option 2's preprocessing at
  /// n = 512.
  struct PrepareWorkspace {
    Side a, g;
    Matrix rotated, symmetric, ma, mg, wa, wg, vectors;
    Vector root, basis_scale;
    SidePreparation side_a, side_g;                      // the sides build() combines
    detail::DefaultSymmetricEigenKernel<Scalar> kernel;  // Option 1's transition spectra
    IdentityMinusKroneckerInverse<Scalar> middle;        // Option 2's (I − M_A ⊗ M_G)⁻¹
  };

  static const Options& validated(const Options& options) {
    options.validate();
    return options;
  }

  std::string operation(const char* what) const {
    return std::string("kfopt::RecurrentKroneckerBlock::") + what + " (layer '" + name_ + "')";
  }

  template <typename DerivedZ>
  void require_operand(const std::string& op, const Eigen::MatrixBase<DerivedZ>& Z) const {
    if (Z.rows() != rows() || Z.cols() != cols()) {
      throw ShapeError(op + ": gradient is " + detail::shape_of(Z) + " but the block is " +
                       detail::shape_string(rows(), cols()) +
                       (options_.bias ? " ([∇W ∇b] with the bias column)" : ""));
    }
  }

  void check_damping(const std::string& op, const BlockDamping<Scalar>& d) const {
    detail::require_nonnegative(op.c_str(), "damping.lambda", d.lambda);
    detail::require_nonnegative(op.c_str(), "damping.floor", d.floor);
    if (!supports(d.style)) {
      throw InvalidInputError(op + ": exact Tikhonov damping (E[T] V0 + λI) exists only for the "
                              "independent approximation; " +
                              std::string(to_string(options_.approximation)) +
                              " damps V0 by factored shifts (DampingStyle::Factored)");
    }
  }

  static double lengths_distribution_mean(const SequenceLengthAverage::State& s) {
    double mean = 0.0;
    for (std::size_t t = 0; t < s.histogram.size(); ++t) mean += static_cast<double>(t) * s.histogram[t];
    return mean;
  }

  /// Checks shapes of a batch; returns T_max. Throws before anything changes.
  Eigen::Index check_batch(const std::string& op, const Eigen::Ref<const Matrix>& a,
                           const Eigen::Ref<const Matrix>& g, Eigen::Index m) const {
    if (m <= 0) {
      throw ShapeError(op + ": the batch has no sequences (m = " + std::to_string(m) + ")");
    }
    if (a.cols() != in_ || g.cols() != out_ || a.rows() != g.rows()) {
      throw ShapeError(op + ": a is " + detail::shape_of(a) + " and g is " + detail::shape_of(g) +
                       " but the layer needs (T_max·m)×" + std::to_string(in_) + " and (T_max·m)×" +
                       std::to_string(out_) + " with the same rows");
    }
    if (a.rows() == 0 || a.rows() % m != 0) {
      throw ShapeError(op + ": a and g have " + std::to_string(a.rows()) +
                       " rows, not a positive multiple of the " + std::to_string(m) +
                       " sequences (time-major layout: row t·m + i)");
    }
    return a.rows() / m;
  }

  /// Counts real steps, admits the batch into both averages (NaN/Inf in a real step of a or
  /// g, or a contribution that would overflow A or G: refused whole, nothing changes), then
  /// commits.
  template <typename Valid, typename Admit, typename Commit>
  Status take(const std::string& op, Eigen::Index m, Eigen::Index t_max, Valid valid,
              Admit admit, Commit commit) {
    Eigen::Index real = 0;
    for (Eigen::Index t = 0; t < t_max; ++t) {
      for (Eigen::Index i = 0; i < m; ++i) real += valid(t, i) ? 1 : 0;
    }
    if (real == 0) {
      throw InvalidInputError(op + ": every step of the " + std::to_string(m) +
                              " sequences is masked (no data)");
    }
    const Status admitted = admit();
    if (admitted != Status::Success) {
      ++skipped_statistics_;
      return admitted;
    }
    commit();  // shapes, lengths and both admissions are checked: neither update can fail now
    lengths_.update(batch_lengths_);
    return Status::Success;
  }

  /// The status of the first of two admissions that fails (Success if both pass).
  template <typename Second>
  static Status both(Status first, Second second) {
    return first != Status::Success ? first : second();
  }

  bool matches(const Prepared& p, Mode mode, const BlockDamping<Scalar>& d) const {
    return p.valid && p.version == version_ && p.mode == mode &&
           p.approximation == options_.approximation && p.style == d.style &&
           p.lambda == d.lambda && p.floor == d.floor;
  }

  /// One side of the Option 1/2 preparation in the eigenbasis of its damped V0 factor
  /// F0 + shift I = U Λ Uᵀ (see build): `transition` = P = D (Uᵀ F1 U) D and `basis` = U D
  /// for inverse mode (D = Λ^{-1/2}), U Λ^{1/2} for forward mode, where P is whitened by
  /// the pseudo-inverse root (directions with λ ≤ singular_tolerance · largest left out).
  /// Option 1 passes the symmetrized F1. Two n×n×n products.
  void whitened_transition(const SymmetricEigenCache<Scalar>& f, const Matrix& f1, Scalar shift,
                           Mode mode, Side& side) const {
    const Matrix& U = f.eigenvectors();
    const Vector& lambda = f.eigenvalues();
    const Eigen::Index n = lambda.size();
    Vector& d = prep_.root;
    Vector& b = prep_.basis_scale;
    d.resize(n);
    b.resize(n);
    const Scalar top = lambda.maxCoeff() + shift;
    const Scalar tol = ScalarTraits<Scalar>::singular_tolerance() * top;
    for (Eigen::Index i = 0; i < n; ++i) {
      const Scalar v = lambda(i) + shift;
      if (mode == Mode::Inverse) {
        d(i) = Scalar(1) / std::sqrt(v);
        b(i) = d(i);
      } else {
        d(i) = v > tol && v > Scalar(0) ? Scalar(1) / std::sqrt(v) : Scalar(0);
        b(i) = std::sqrt(v);
      }
    }
    if (options_.approximation == RecurrentApproximation::Option1) {
      prep_.symmetric = Scalar(0.5) * (f1 + f1.transpose());
      prep_.rotated.noalias() = prep_.symmetric * U;
    } else {
      prep_.rotated.noalias() = f1 * U;
    }
    side.transition.noalias() = U.transpose() * prep_.rotated;
    side.transition = d.asDiagonal() * side.transition * d.asDiagonal();
    side.basis = U * b.asDiagonal();
  }

  /// `out = Pᵀ P`, exactly symmetric (Option 2's M in the eigenbasis): the lower triangle
  /// by the algebra layer's Gram kernel (n³ flops, half a full product), then mirrored.
  static void transposed_gram(const Matrix& P, Matrix& out) {
    out.setZero(P.cols(), P.cols());
    detail::accumulate_lower_gram<Scalar>(out, P, 0, Scalar(1));
    detail::mirror_lower_to_upper(out);
  }

  // Eigen-decomposes symmetric P (in place: P becomes its eigenvectors) and clips its
  // eigenvalues into [−ρ, ρ]; returns the status, adds the clip count.
  Status symmetric_transition_eigen(Matrix& P, Vector& psi, Eigen::Index& clipped) const {
    detail::symmetrize(P);
    // The default backend's solver (divide and conquer with LAPACK), as for the factors' spectra: with
    // Eigen's SelfAdjointEigenSolver here, Option 1 preprocessing measured 2.5× and Option 2
    // 4.1× the independent one at n = 256 with the LAPACK backend.
    const Status solved = detail::symmetric_eigen(prep_.kernel, P, psi, prep_.vectors);
    if (solved != Status::Success) return solved;
    P.swap(prep_.vectors);
    clipped += IdentityMinusKroneckerInverse<Scalar>::clip_eigenvalues(psi, options_.max_abs_psi);
    return Status::Success;
  }

  // Scales the columns of Q = P E (E the eigenvectors of PᵀP) so that every singular
  // value of P is at most ρ: column i has norm² = m_i, the i-th eigenvalue of PᵀP; after
  // the scaling `Q E ᵀ` is P with its singular values clipped (P = U S Eᵀ, Q = U S).
  void clip_singular_values(Matrix& Q, Eigen::Index& clipped) const {
    const Scalar rho2 = options_.max_abs_psi * options_.max_abs_psi;
    for (Eigen::Index i = 0; i < Q.cols(); ++i) {
      const Scalar m = Q.col(i).squaredNorm();
      if (m > rho2) {
        Q.col(i) *= std::sqrt(rho2 / m);
        ++clipped;
      }
    }
  }

  /// Bases a side's preparation holds for the current approximation.
  int side_bases() const noexcept {
    return options_.approximation == RecurrentApproximation::Option2 ? 2 : 1;
  }

  /// The shifts of factored damping for `d` on the refreshed spectra (see the file comment).
  FactoredDamping<Scalar> factored_shifts(const BlockDamping<Scalar>& d) const {
    return factored_tikhonov_damping(a0_spectrum_.trace(), cols(), g0_spectrum_.trace(),
                                     rows(), d.lambda / snap_mean_, d.floor);
  }

  /// The options of Option 2's `(I − M_A ⊗ M_G)⁻¹`: eigenvalues of M clipped to ρ², and a
  /// divisor floor that the clipped spectra always reach.
  IdentityMinusKroneckerOptions<Scalar> option2_middle_options() const {
    IdentityMinusKroneckerOptions<Scalar> o;
    const Scalar rho2 = options_.max_abs_psi * options_.max_abs_psi;
    o.max_abs_eigenvalue = rho2;
    o.min_divisor = std::min(o.min_divisor, (Scalar(1) - rho2 * rho2) / Scalar(4));
    return o;
  }

  /// Side k (0: A, 1: G) of the preparation for `mode` with the factored shifts `fd`, into
  /// `out`. Independent and Option 2 in Inverse mode only; Option 1 in both modes.
  Status prepare_side(int k, Mode mode, const FactoredDamping<Scalar>& fd,
                      SidePreparation& out) const {
    const SymmetricEigenCache<Scalar>& f0 = k == 0 ? a0_spectrum_ : g0_spectrum_;
    const Scalar shift = k == 0 ? fd.a_shift : fd.g_shift;
    out.clipped = 0;
    if (options_.approximation == RecurrentApproximation::Independent) {
      out.basis = f0.damped_inverse(shift);
      if (k == 1) out.basis /= snap_mean_;
      out.values.setZero(f0.eigenvalues().size());
      out.basis2.resize(0, 0);
      return Status::Success;
    }
    Side& side = k == 0 ? prep_.a : prep_.g;
    whitened_transition(f0, k == 0 ? snap_a1_ : snap_g1_, shift, mode, side);
    if (options_.approximation == RecurrentApproximation::Option1) {
      // Ψ̂ = V0^{-1/2} ((F1 + F1ᵀ)/2) V0^{-1/2} = (U E) diag(ψ) (U E)ᵀ, E the eigenvectors
      // of the symmetrized P; the basis is V0^{∓1/2} U E.
      const Status s = symmetric_transition_eigen(side.transition, out.values, out.clipped);
      if (s != Status::Success) return s;
      out.basis.noalias() = side.basis * side.transition;
      out.basis2.resize(0, 0);
      return Status::Success;
    }
    // Option 2: M = Ψ̂ᵀ Ψ̂ = U (PᵀP) Uᵀ has the eigenvectors U E, E those of PᵀP;
    // Q = Ψ̂ (U E) = U (P E) has its singular values clipped to ρ in W = P E (U is
    // orthogonal, so W has Q's column norms).
    transposed_gram(side.transition, prep_.ma);
    const Status s = detail::symmetric_eigen(prep_.kernel, prep_.ma, out.values, prep_.vectors);
    if (s != Status::Success) return s;
    prep_.wa.noalias() = side.transition * prep_.vectors;
    clip_singular_values(prep_.wa, out.clipped);
    out.basis.noalias() = side.basis * prep_.vectors;
    out.basis2.noalias() = side.basis * prep_.wa;
    return Status::Success;
  }

  /// Combines both sides into `p` (whose header build() or install_preparation filled):
  /// the bases, and the scale of every (i, j) pair. Consumes the sides' storage.
  Status combine_sides(Mode mode, SidePreparation& a, SidePreparation& g, Prepared& p) const {
    const Eigen::Index n = cols(), q = rows();
    p.clipped = a.clipped + g.clipped;
    p.right.swap(a.basis);
    p.left.swap(g.basis);
    if (options_.approximation == RecurrentApproximation::Independent) return Status::Success;
    if (options_.approximation == RecurrentApproximation::Option1) {
      // F̂^{∓1} = (B_A ⊗ B_G) diag(γ^{±1}) (B_A ⊗ B_G)ᵀ.
      p.scale.resize(q, n);
      using Work = typename std::conditional<(sizeof(Scalar) < sizeof(double)), double, Scalar>::type;
      for (Eigen::Index j = 0; j < n; ++j) {
        for (Eigen::Index i = 0; i < q; ++i) {
          const Work x = static_cast<Work>(g.values(i)) * static_cast<Work>(a.values(j));
          const Work eta = temporal_eta_mean<Work>(x, snap_lengths_);
          if (!(eta > Work(0)) || !std::isfinite(static_cast<double>(eta))) {
            return Status::NumericalIssue;
          }
          p.scale(i, j) = static_cast<Scalar>(mode == Mode::Inverse ? Work(1) / eta : eta);
        }
      }
      return Status::Success;
    }
    // Option 2, F̂⁻¹ = E[T]⁻¹ V0^{-1/2}(I − Ψ̂)(E_A ⊗ E_G) diag(1/(1 − m_G m_Aᵀ)) (…)ᵀ V0^{-1/2}
    // with V0^{-1/2}(I − Ψ̂)(U_A E_A ⊗ U_G E_G) = (U_A D_A E_A) ⊗ (U_G D_G E_G) −
    // (U_A D_A W_A) ⊗ (U_G D_G W_G).
    using Middle = IdentityMinusKroneckerInverse<Scalar>;
    const IdentityMinusKroneckerOptions<Scalar> mo = option2_middle_options();
    (void)Middle::clip_eigenvalues(a.values, mo.max_abs_eigenvalue);
    (void)Middle::clip_eigenvalues(g.values, mo.max_abs_eigenvalue);
    Scalar smallest = Scalar(0);
    const Status admitted = Middle::check_divisors(g.values, a.values, mo.min_divisor, smallest);
    if (admitted != Status::Success) return admitted;
    p.right2.swap(a.basis2);
    p.left2.swap(g.basis2);
    const Scalar mean = p.mean_length;
    p.scale.resize(q, n);
    for (Eigen::Index j = 0; j < n; ++j)
      for (Eigen::Index i = 0; i < q; ++i)
        p.scale(i, j) = Scalar(1) / (mean * (Scalar(1) - g.values(i) * a.values(j)));
    return Status::Success;
  }

  /// The end of a refresh: the staged spectra become current, with the snapshot of the
  /// current statistics and the length distribution `lengths` (mean `mean`).
  void commit_refresh(SequenceLengths lengths, Scalar mean) {
    std::swap(a0_spectrum_, a0_stage_);
    std::swap(g0_spectrum_, g0_stage_);
    snap_a0_ = a_.a0();
    snap_a1_ = a_.a1();
    snap_g0_ = g_.a0();
    snap_g1_ = g_.a1();
    snap_lengths_ = std::move(lengths);
    snap_mean_ = mean;
    ++version_;
  }

  /// Fills the header of `p` (what matches() compares) for a preparation of `mode`, `d`.
  void begin_prepared(Prepared& p, Mode mode, const BlockDamping<Scalar>& d) const {
    p.valid = false;
    p.version = version_;
    p.mode = mode;
    p.approximation = options_.approximation;
    p.style = d.style;
    p.lambda = d.lambda;
    p.floor = d.floor;
    p.clipped = 0;
    p.exact_lambda = Scalar(0);
    p.mean_length = snap_mean_;
  }

  /// The damping-dependent preprocessing (appendix C.3) into `p`.
  Status build(Prepared& p, Mode mode, const BlockDamping<Scalar>& d) const {
    begin_prepared(p, mode, d);
    const Scalar mean = snap_mean_;
    const Eigen::Index n = cols(), q = rows();

    if (d.style == DampingStyle::Exact) {  // Independent only (check_damping)
      p.a_shift = p.g_shift = Scalar(0);
      if (mode == Mode::Forward) {
        p.left = mean * snap_g0_;
        p.right = snap_a0_;
        p.exact_lambda = d.lambda;
      } else {
        const Vector& la = a0_spectrum_.eigenvalues();
        const Vector& lg = g0_spectrum_.eigenvalues();
        const Scalar lo = mean * la.minCoeff() * lg.minCoeff() + d.lambda;
        const Scalar hi = mean * la.maxCoeff() * lg.maxCoeff() + d.lambda;
        if (!ScalarTraits<Scalar>::invertible_spectrum(lo, hi)) {
          return Status::NumericalIssue;
        }
        p.left = g0_spectrum_.eigenvectors();
        p.right = a0_spectrum_.eigenvectors();
        p.scale.resize(q, n);
        for (Eigen::Index j = 0; j < n; ++j)
          for (Eigen::Index i = 0; i < q; ++i) p.scale(i, j) = Scalar(1) / (mean * lg(i) * la(j) + d.lambda);
      }
      p.valid = true;
      return Status::Success;
    }

    // Factored Tikhonov damping of V0 by λ / E_T[T] (see the file comment).
    const FactoredDamping<Scalar> fd = factored_shifts(d);
    p.a_shift = fd.a_shift;
    p.g_shift = fd.g_shift;
    if (mode == Mode::Inverse &&
        (!a0_spectrum_.is_invertible(fd.a_shift) || !g0_spectrum_.is_invertible(fd.g_shift))) {
      return Status::NumericalIssue;
    }

    // Everything below works in the eigenbases of the damped V0 factors, F0 + δI = U Λ Uᵀ:
    // with D = f(Λ) (f the whitening root of `mode`), the whitened transition factor is
    // Ψ̂ = (U D Uᵀ) F1 (U D Uᵀ) = U P Uᵀ, P = D (Uᵀ F1 U) D. Its spectra are P's, and every
    // basis the preparation needs is U D (or U Λ^{1/2}) times an n×n matrix, so no dense
    // root is formed: Option 1 costs 3 n×n×n products per side and Option 2 (inverse mode)
    // 5.5, against 4 and 7 with the dense roots (bench_rnn_kfac's rnn_preprocess rows).
    const bool by_sides = options_.approximation == RecurrentApproximation::Option1 ||
                          mode == Mode::Inverse;
    if (by_sides) {
      Status s = prepare_side(0, mode, fd, prep_.side_a);
      if (s == Status::Success) s = prepare_side(1, mode, fd, prep_.side_g);
      if (s == Status::Success) s = combine_sides(mode, prep_.side_a, prep_.side_g, p);
      if (s != Status::Success) return s;
      p.valid = true;
      return Status::Success;
    }

    if (options_.approximation == RecurrentApproximation::Independent) {  // Forward
      p.left = mean * snap_g0_;
      p.left.diagonal().array() += mean * fd.g_shift;
      p.right = snap_a0_;
      p.right.diagonal().array() += fd.a_shift;
      p.valid = true;
      return Status::Success;
    }

    // Option 2, Forward: F̂ = E[T] V0^{1/2} ((I − Ψ̂)⁻¹ + (I − Ψ̂ᵀ)⁻¹ − I) V0^{1/2} with the
    // clipped Ψ̂ = U (W Eᵀ) Uᵀ (the Stein inverse is basis-independent only up to that
    // rotation, so Ψ̂ is formed in the original coordinates).
    Side& a_side = prep_.a;
    Side& g_side = prep_.g;
    whitened_transition(a0_spectrum_, snap_a1_, fd.a_shift, mode, a_side);
    whitened_transition(g0_spectrum_, snap_g1_, fd.g_shift, mode, g_side);
    transposed_gram(a_side.transition, prep_.ma);
    transposed_gram(g_side.transition, prep_.mg);
    const IdentityMinusKroneckerOptions<Scalar> imk_options = option2_middle_options();
    IdentityMinusKroneckerInverse<Scalar>& middle = prep_.middle;
    if (middle.options().max_abs_eigenvalue != imk_options.max_abs_eigenvalue ||
        middle.options().min_divisor != imk_options.min_divisor) {
      middle = IdentityMinusKroneckerInverse<Scalar>(imk_options);
    }
    middle.compute(prep_.ma, prep_.mg);
    if (middle.info() != Status::Success) return middle.info();
    const Matrix& ea = middle.eigenvectors_A();
    const Matrix& eg = middle.eigenvectors_G();
    Matrix& wa = prep_.wa;
    Matrix& wg = prep_.wg;
    wa.noalias() = a_side.transition * ea;
    wg.noalias() = g_side.transition * eg;
    clip_singular_values(wa, p.clipped);
    clip_singular_values(wg, p.clipped);
    const Matrix pa = a0_spectrum_.eigenvectors() * (wa * ea.transpose()) *
                      a0_spectrum_.eigenvectors().transpose();
    const Matrix pg = g0_spectrum_.eigenvectors() * (wg * eg.transpose()) *
                      g0_spectrum_.eigenvectors().transpose();
    p.stein.compute(pa, pg);
    if (p.stein.info() != Status::Success) return p.stein.info();
    p.right = a0_spectrum_.sqrt(fd.a_shift);
    p.left = g0_spectrum_.sqrt(fd.g_shift);
    p.valid = true;
    return Status::Success;
  }

  /// Applies a preparation to Z (see Prepared).
  template <typename DerivedZ>
  static void run(Prepared& p, const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out, Workspace& w) {
    const auto scale_of = [&p](Eigen::Index i, Eigen::Index j) { return p.scale(i, j); };
    switch (p.approximation) {
      case RecurrentApproximation::Independent:
        if (p.style == DampingStyle::Exact && p.mode == Mode::Inverse) {
          scaled_congruence<Scalar>(p.left, p.right, Z, scale_of, out, w.a);
          return;
        }
        w.a.noalias() = p.left * Z;
        out.noalias() = w.a * p.right;
        if (p.exact_lambda != Scalar(0)) out += p.exact_lambda * Z;
        return;
      case RecurrentApproximation::Option1:
        scaled_congruence<Scalar>(p.left, p.right, Z, scale_of, out, w.a);
        return;
      case RecurrentApproximation::Option2:
        if (p.mode == Mode::Inverse) {
          // W = Bᵀ z = L1ᵀ Z R1 − L2ᵀ Z R2;  W ∘= S;  out = L1 W R1ᵀ − L2 W R2ᵀ.
          w.a.noalias() = Z * p.right;
          w.b.noalias() = p.left.transpose() * w.a;
          w.a.noalias() = Z * p.right2;
          w.b.noalias() -= p.left2.transpose() * w.a;
          w.b.array() *= p.scale.array();
          w.a.noalias() = p.left * w.b;
          out.noalias() = w.a * p.right.transpose();
          w.a.noalias() = p.left2 * w.b;
          out.noalias() -= w.a * p.right2.transpose();
        } else {
          w.a.noalias() = p.left * Z;
          w.b.noalias() = w.a * p.right;  // Y = V0^{1/2} z
          p.stein.apply_sum(w.b, w.c);    // ((I − Ψ̂)⁻¹ + (I − Ψ̂ᵀ)⁻¹) Y
          w.c -= w.b;
          w.a.noalias() = p.left * w.c;
          out.noalias() = w.a * p.right;
          out *= p.mean_length;
        }
        return;
    }
  }

  std::string name_;
  Options options_;
  Eigen::Index in_, out_;
  FactorAverage a_, g_;
  SequenceLengthAverage lengths_;
  Eigen::VectorXi batch_lengths_;
  std::int64_t skipped_statistics_ = 0;

  // Snapshot of the last refresh (default-constructed caches: safe to move before use).
  SymmetricEigenCache<Scalar> a0_spectrum_, g0_spectrum_, a0_stage_, g0_stage_;
  Matrix snap_a0_, snap_a1_, snap_g0_, snap_g1_;
  SequenceLengths snap_lengths_;
  Scalar snap_mean_ = Scalar(0);
  std::int64_t version_ = 0;
  // A refresh split into parts (begin_refresh_parts … install_refresh): its status and the
  // length distribution it will install.
  Status parts_status_ = Status::NotComputed;
  SequenceLengths parts_lengths_;
  Scalar parts_mean_ = Scalar(0);

  Prepared inverse_, forward_, stage_;
  std::int64_t preparations_ = 0;
  Workspace work_;
  mutable PrepareWorkspace prep_;  // build's intermediates (not shared between threads)
};

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::update_statistics(const Eigen::Ref<const Matrix>& a,
                                                    const Eigen::Ref<const Matrix>& g,
                                                    const Eigen::Ref<const Eigen::VectorXi>& lengths) {
  const std::string op = operation("update_statistics");
  const Eigen::Index m = lengths.size();
  const Eigen::Index t_max = check_batch(op, a, g, m);
  for (Eigen::Index i = 0; i < m; ++i) {
    if (lengths(i) < 0 || lengths(i) > t_max) {
      throw InvalidInputError(op + ": length of sequence " + std::to_string(i) + " is " +
                              std::to_string(lengths(i)) + " but the batch (" +
                              detail::shape_of(a) + " for " + std::to_string(m) +
                              " sequences) holds " + std::to_string(t_max) + " steps");
    }
  }
  batch_lengths_ = lengths;
  return take(op, m, t_max, [&](Eigen::Index t, Eigen::Index i) { return t < lengths(i); },
              [&] { return both(a_.admit(a, lengths), [&] { return g_.admit(g, lengths); }); },
              [&] {
                a_.update(a, lengths);
                g_.update(g, lengths);
              });
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::update_statistics(const Eigen::Ref<const Matrix>& a,
                                                    const Eigen::Ref<const Matrix>& g,
                                                    const Eigen::Ref<const Mask>& mask) {
  const std::string op = operation("update_statistics");
  const Eigen::Index m = mask.cols();
  const Eigen::Index t_max = check_batch(op, a, g, m);
  if (mask.rows() != t_max) {
    throw ShapeError(op + ": mask is " + detail::shape_of(mask) + " but the sequences (" +
                     detail::shape_of(a) + ") need " + detail::shape_string(t_max, m));
  }
  batch_lengths_.resize(m);
  for (Eigen::Index i = 0; i < m; ++i) {
    batch_lengths_(i) = static_cast<int>(mask.col(i).count());
  }
  return take(op, m, t_max, [&](Eigen::Index t, Eigen::Index i) { return mask(t, i); },
              [&] { return both(a_.admit(a, mask), [&] { return g_.admit(g, mask); }); },
              [&] {
                a_.update(a, mask);
                g_.update(g, mask);
              });
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::update_statistics_full(const Eigen::Ref<const Matrix>& a,
                                                         const Eigen::Ref<const Matrix>& g,
                                                         Eigen::Index num_sequences) {
  const std::string op = operation("update_statistics_full");
  const Eigen::Index t_max = check_batch(op, a, g, num_sequences);
  batch_lengths_.setConstant(num_sequences, static_cast<int>(t_max));
  return take(op, num_sequences, t_max, [](Eigen::Index, Eigen::Index) { return true; },
              [&] {
                return both(a_.admit_full(a, num_sequences),
                            [&] { return g_.admit_full(g, num_sequences); });
              },
              [&] {
                a_.update_full(a, num_sequences);
                g_.update_full(g, num_sequences);
              });
}

template <typename Scalar>
void RecurrentKroneckerBlock<Scalar>::set_state(const State& state) {
  const std::string op = operation("set_state");
  check_state(op, state);
  a_.set_state(state.a);
  g_.set_state(state.g);
  lengths_.set_state(state.lengths);
  skipped_statistics_ = state.skipped_statistics;
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::refresh() {
  if (!has_statistics()) return Status::NotComputed;
  SequenceLengths lengths = lengths_.distribution(options_.length_cutoff);
  const double mean = lengths.mean();
  if (!(mean > 0.0) || !std::isfinite(mean)) return Status::NumericalIssue;
  Status s = a0_stage_.compute(a_.a0()).info();
  if (s != Status::Success) return s;
  s = g0_stage_.compute(g_.a0()).info();
  if (s != Status::Success) return s;
  commit_refresh(std::move(lengths), static_cast<Scalar>(mean));
  return Status::Success;
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::prepare(const BlockDamping<Scalar>& damping) {
  check_damping(operation("prepare"), damping);
  if (!has_inverse()) return Status::NotComputed;
  if (matches(inverse_, Mode::Inverse, damping)) return Status::Success;
  const Status s = build(stage_, Mode::Inverse, damping);
  if (s != Status::Success) return s;
  std::swap(inverse_, stage_);
  ++preparations_;
  return Status::Success;
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::begin_refresh_parts() {
  parts_status_ = Status::NotComputed;
  if (!has_statistics()) return parts_status_;
  SequenceLengths lengths = lengths_.distribution(options_.length_cutoff);
  const double mean = lengths.mean();
  if (!(mean > 0.0) || !std::isfinite(mean)) {
    parts_status_ = Status::NumericalIssue;
    return parts_status_;
  }
  parts_lengths_ = std::move(lengths);
  parts_mean_ = static_cast<Scalar>(mean);
  parts_status_ = Status::Success;
  return parts_status_;
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::compute_refresh_part(int k, Matrix& result) const {
  if (k != 0 && k != 1) {
    throw InvalidInputError(operation("compute_refresh_part") + ": part " + std::to_string(k) +
                            " does not exist (0: A0, 1: G0)");
  }
  if (parts_status_ != Status::Success) return parts_status_;
  SymmetricEigenCache<Scalar> f;
  const Status s = f.compute(k == 0 ? a_.a0() : g_.a0()).info();  // as refresh() computes it
  if (s != Status::Success) return s;
  const Eigen::Index n = f.eigenvalues().size();
  result.resize(n, n + 1);
  result.col(0) = f.eigenvalues();
  result.rightCols(n) = f.eigenvectors();
  return Status::Success;
}

template <typename Scalar>
void RecurrentKroneckerBlock<Scalar>::install_refresh(const Matrix& a_result, const Matrix& g_result) {
  const std::string op = operation("install_refresh");
  if (parts_status_ != Status::Success) {
    throw InvalidInputError(op + ": no refresh to install (begin_refresh_parts returned " +
                            to_string(parts_status_) + ")");
  }
  auto check = [&](const Matrix& r, Eigen::Index n, const char* what) {
    detail::require_shape(op.c_str(), what, r, n, n + 1);
    SymmetricEigenCache<Scalar>::check_decomposition(op + " (" + what + ")", r.col(0),
                                                     r.rightCols(n), n);
  };
  check(a_result, cols(), "A0's eigendecomposition");
  check(g_result, rows(), "G0's eigendecomposition");
  a0_stage_.set_decomposition(a_result.col(0), a_result.rightCols(cols()));
  g0_stage_.set_decomposition(g_result.col(0), g_result.rightCols(rows()));
  commit_refresh(parts_lengths_, parts_mean_);
  parts_status_ = Status::NotComputed;  // installed once
}

template <typename Scalar>
int RecurrentKroneckerBlock<Scalar>::preparation_part_count(const BlockDamping<Scalar>& damping) const {
  check_damping(operation("preparation_part_count"), damping);
  if (!has_inverse() || damping.style == DampingStyle::Exact) return 0;
  return matches(inverse_, Mode::Inverse, damping) ? 0 : 2;
}

template <typename Scalar>
double RecurrentKroneckerBlock<Scalar>::preparation_part_cost(int k) const {
  const double n = static_cast<double>(k == 0 ? cols() : rows());
  switch (options_.approximation) {
    case RecurrentApproximation::Independent: return 2.0 * n * n * n;
    case RecurrentApproximation::Option1: return 15.0 * n * n * n;
    case RecurrentApproximation::Option2: return 20.0 * n * n * n;
  }
  return 0.0;
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::compute_preparation_part(int k, const BlockDamping<Scalar>& damping,
                                                                 Matrix& result) const {
  const std::string op = operation("compute_preparation_part");
  check_damping(op, damping);
  if (k != 0 && k != 1) {
    throw InvalidInputError(op + ": part " + std::to_string(k) +
                            " does not exist (0: the A side, 1: the G side)");
  }
  if (damping.style == DampingStyle::Exact) {
    throw InvalidInputError(op + ": exact damping's preparation has no parts");
  }
  if (!has_inverse()) return Status::NotComputed;
  const FactoredDamping<Scalar> fd = factored_shifts(damping);
  const SymmetricEigenCache<Scalar>& f0 = k == 0 ? a0_spectrum_ : g0_spectrum_;
  if (!f0.is_invertible(k == 0 ? fd.a_shift : fd.g_shift)) return Status::NumericalIssue;
  SidePreparation side;
  const Status s = prepare_side(k, Mode::Inverse, fd, side);
  if (s != Status::Success) return s;
  const Eigen::Index n = side.basis.rows();
  const int b = side_bases();
  result.setZero(n, 2 + b * n);
  result.col(0) = side.values;
  result(0, 1) = static_cast<Scalar>(side.clipped);
  result.middleCols(2, n) = side.basis;
  if (b == 2) result.rightCols(n) = side.basis2;
  return Status::Success;
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::install_preparation(const Matrix& a_result,
                                                            const Matrix& g_result,
                                                            const BlockDamping<Scalar>& damping) {
  const std::string op = operation("install_preparation");
  if (preparation_part_count(damping) == 0) {
    throw InvalidInputError(op + ": nothing to prepare for this damping (no refresh, exact "
                            "damping, or already prepared)");
  }
  const int b = side_bases();
  auto unpack = [&](const Matrix& r, Eigen::Index n, const char* what, SidePreparation& side) {
    detail::require_shape(op.c_str(), what, r, n, 2 + b * n);
    detail::require_finite(op.c_str(), what, r);
    const Scalar clipped = r(0, 1);
    if (!(clipped >= Scalar(0)) || clipped > static_cast<Scalar>(n)) {
      throw InvalidInputError(op + ": " + what + " holds a clip count of " +
                              std::to_string(static_cast<double>(clipped)));
    }
    side.values = r.col(0);
    side.clipped = static_cast<Eigen::Index>(clipped);
    side.basis = r.middleCols(2, n);
    if (b == 2) {
      side.basis2 = r.rightCols(n);
    } else {
      side.basis2.resize(0, 0);
    }
  };
  unpack(a_result, cols(), "the A side", prep_.side_a);
  unpack(g_result, rows(), "the G side", prep_.side_g);
  const FactoredDamping<Scalar> fd = factored_shifts(damping);
  begin_prepared(stage_, Mode::Inverse, damping);
  stage_.a_shift = fd.a_shift;
  stage_.g_shift = fd.g_shift;
  const Status s = combine_sides(Mode::Inverse, prep_.side_a, prep_.side_g, stage_);
  if (s != Status::Success) return s;
  stage_.valid = true;
  std::swap(inverse_, stage_);
  ++preparations_;
  return Status::Success;
}

template <typename Scalar>
template <typename DerivedZ>
Status RecurrentKroneckerBlock<Scalar>::apply_inverse(const Eigen::MatrixBase<DerivedZ>& Z,
                                                const BlockDamping<Scalar>& damping, Matrix& out) {
  const std::string op = operation("apply_inverse");
  require_operand(op, Z);
  check_damping(op, damping);
  if (!has_inverse()) return Status::NotComputed;
  if (!Z.allFinite()) return Status::NonFiniteInput;
  const Status s = prepare(damping);
  if (s != Status::Success) return s;
  run(inverse_, Z, out, work_);
  return Status::Success;
}

template <typename Scalar>
template <typename DerivedZ>
Status RecurrentKroneckerBlock<Scalar>::multiply(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out) {
  require_operand(operation("multiply"), Z);
  if (!has_inverse()) return Status::NotComputed;
  if (!Z.allFinite()) return Status::NonFiniteInput;
  const BlockDamping<Scalar> none{DampingStyle::Factored, Scalar(0), Scalar(0)};
  if (!matches(forward_, Mode::Forward, none)) {
    const Status s = build(stage_, Mode::Forward, none);
    if (s != Status::Success) return s;
    std::swap(forward_, stage_);
  }
  run(forward_, Z, out, work_);
  return Status::Success;
}

template <typename Scalar>
typename RecurrentKroneckerBlock<Scalar>::Matrix RecurrentKroneckerBlock<Scalar>::to_dense(const BlockDamping<Scalar>& damping) const {
  const std::string op = operation("to_dense");
  check_damping(op, damping);
  if (!has_inverse()) throw NumericalError(op + ": refresh() has not succeeded");
  Prepared p;
  const Status s = build(p, Mode::Forward, damping);
  if (s != Status::Success) {
    throw NumericalError(op + ": preparation failed (" + std::string(to_string(s)) + ")");
  }
  const Eigen::Index r = rows(), c = cols(), n = r * c;
  Matrix dense(n, n), unit = Matrix::Zero(r, c), column;
  Workspace w;
  for (Eigen::Index k = 0; k < n; ++k) {
    unit(k % r, k / r) = Scalar(1);
    run(p, unit, column, w);
    dense.col(k) = Eigen::Map<const Vector>(column.data(), n);
    unit(k % r, k / r) = Scalar(0);
  }
  return dense;
}

template <typename Scalar>
void RecurrentKroneckerBlock<Scalar>::check_state(const std::string& op, const State& state) const {
  const Eigen::Index n = cols(), p = rows();
  detail::require_shape(op.c_str(), "a.average0", state.a.average0, n, n);
  detail::require_shape(op.c_str(), "a.average1", state.a.average1, n, n);
  detail::require_shape(op.c_str(), "g.average0", state.g.average0, p, p);
  detail::require_shape(op.c_str(), "g.average1", state.g.average1, p, p);
  detail::require_symmetric(op.c_str(), "a.average0", state.a.average0);
  detail::require_finite(op.c_str(), "a.average1", state.a.average1);
  detail::require_symmetric(op.c_str(), "g.average0", state.g.average0);
  detail::require_finite(op.c_str(), "g.average1", state.g.average1);
  SequenceLengthAverage::check_state(op.c_str(), state.lengths);
  const bool a_data = state.a.updates > 0, g_data = state.g.updates > 0,
             l_data = state.lengths.updates > 0;
  if (a_data != g_data || a_data != l_data) {
    throw InvalidInputError(op + ": update counts disagree (a " +
                            std::to_string(state.a.updates) + ", g " +
                            std::to_string(state.g.updates) + ", lengths " +
                            std::to_string(state.lengths.updates) + ")");
  }
  if (l_data && !(lengths_distribution_mean(state.lengths) > 0.0)) {
    throw InvalidInputError(op + ": the length histogram has no sequence of length >= 1");
  }
  if (state.a.updates < 0 || state.g.updates < 0 || state.a.skipped_nonfinite < 0 ||
      state.g.skipped_nonfinite < 0 || state.skipped_statistics < 0 ||
      !(state.a.weight.weight >= 0.0) || !std::isfinite(state.a.weight.weight) ||
      !(state.g.weight.weight >= 0.0) || !std::isfinite(state.g.weight.weight) ||
      !(state.lengths.weight.weight >= 0.0) || !std::isfinite(state.lengths.weight.weight)) {
    throw InvalidInputError(op + ": negative counters or a negative or non-finite weight");
  }
}

template <typename Scalar>
Status RecurrentKroneckerBlock<Scalar>::stage_refresh_state(const std::string& op,
                                                             const RefreshState& r) {
  const Eigen::Index n = cols(), p = rows();
  detail::require_shape(op.c_str(), "refresh/A0", r.a0, n, n);
  detail::require_shape(op.c_str(), "refresh/A1", r.a1, n, n);
  detail::require_shape(op.c_str(), "refresh/G0", r.g0, p, p);
  detail::require_shape(op.c_str(), "refresh/G1", r.g1, p, p);
  detail::require_symmetric(op.c_str(), "refresh/A0", r.a0);
  detail::require_finite(op.c_str(), "refresh/A1", r.a1);
  detail::require_symmetric(op.c_str(), "refresh/G0", r.g0);
  detail::require_finite(op.c_str(), "refresh/G1", r.g1);
  if (r.refreshes < 0) {
    throw InvalidInputError(op + ": refreshes is " + std::to_string(r.refreshes) + " (< 0)");
  }
  if (r.refreshes == 0) {
    if (!r.lengths.empty() || r.mean_length != Scalar(0) || !r.a0.isZero(0) ||
        !r.a1.isZero(0) || !r.g0.isZero(0) || !r.g1.isZero(0)) {
      throw InvalidInputError(op + ": a snapshot without a refresh (refreshes = 0) must be empty");
    }
    return Status::Success;
  }
  r.lengths.validate(op.c_str());
  if (!(r.mean_length > Scalar(0)) || !std::isfinite(r.mean_length)) {
    throw InvalidInputError(op + ": the refresh's mean length " +
                            std::to_string(static_cast<double>(r.mean_length)) + " must be > 0");
  }
  // The same decompositions as refresh() made of the same matrices.
  Status s = a0_stage_.compute(r.a0).info();
  if (s != Status::Success) return s;
  return g0_stage_.compute(r.g0).info();
}

template <typename Scalar>
void RecurrentKroneckerBlock<Scalar>::commit_refresh_state(const RefreshState& r) {
  if (r.refreshes > 0) {
    std::swap(a0_spectrum_, a0_stage_);
    std::swap(g0_spectrum_, g0_stage_);
    snap_a0_ = r.a0;
    snap_a1_ = r.a1;
    snap_g0_ = r.g0;
    snap_g1_ = r.g1;
    snap_lengths_ = r.lengths;
    snap_mean_ = r.mean_length;
  } else {
    snap_a0_.resize(0, 0);
    snap_a1_.resize(0, 0);
    snap_g0_.resize(0, 0);
    snap_g1_.resize(0, 0);
    snap_lengths_ = SequenceLengths{};
    snap_mean_ = Scalar(0);
  }
  version_ = r.refreshes;
  inverse_.valid = false;  // prepared again, from the restored spectra, at the next apply
  forward_.valid = false;
  stage_.valid = false;
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class RecurrentKroneckerBlock<float>;
extern template Status RecurrentKroneckerBlock<float>::apply_inverse<Eigen::MatrixXf>(
    const Eigen::MatrixBase<Eigen::MatrixXf>&, const BlockDamping<float>&, Eigen::MatrixXf&);
extern template Status RecurrentKroneckerBlock<float>::multiply<Eigen::MatrixXf>(const Eigen::MatrixBase<Eigen::MatrixXf>&, Eigen::MatrixXf&);
extern template class RecurrentKroneckerBlock<double>;
extern template Status RecurrentKroneckerBlock<double>::apply_inverse<Eigen::MatrixXd>(
    const Eigen::MatrixBase<Eigen::MatrixXd>&, const BlockDamping<double>&, Eigen::MatrixXd&);
extern template Status RecurrentKroneckerBlock<double>::multiply<Eigen::MatrixXd>(const Eigen::MatrixBase<Eigen::MatrixXd>&, Eigen::MatrixXd&);
#endif

}  // namespace kfopt
