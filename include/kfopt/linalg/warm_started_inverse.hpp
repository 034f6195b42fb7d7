#pragma once
/// \file warm_started_inverse.hpp
/// \brief `(A + λI)⁻¹` for a slowly changing factor, refreshed from the previous refresh's
/// inverse when that is cheaper than recomputing it, with error checks and an exact
/// Cholesky fall-back; optional iterative refinement of each preconditioned gradient.
///
/// K-FAC-style factors change slowly: between two inverse refreshes the factor moves by a
/// few moving-average steps, `A ← βA + (1 − β)S`. With `M = A + λI` and the previous inverse
/// X₀, the starting residual is `E₀ = I − M X₀`. A refresh does, in order:
///
/// 1. **Screen** (O(n²k) with k = 8 probes, memory-bound: two to four reads of an n×n
///    matrix): `E₀Ω` for random Ω (and one power step, `E₀ᵀE₀Ω`, unless the previous inverse
///    is reused) gives a rigorous *lower* bound s of ‖E₀‖₂ and a (Hutchinson)
///    estimate f of ‖E₀‖_F ≥ ‖E₀‖₂. If `2f ≤ tolerance` the previous inverse is kept
///    (**reused**, no O(n³) work). If s already shows that the iteration cannot succeed
///    (s above `max_initial_residual`, or `2·s^(2^m)` above the tolerance for the m =
///    `max_iterations` squarings), or that the k steps it needs at the least cost more
///    than the fall-back (`k · iteration_cost ≥ 1`), go straight to the fall-back.
/// 2. **Newton–Schulz** (Hotelling–Bodewig) from X₀, `X_{k+1} = X_k (2I − M X_k)`, which
///    squares the residual each step (`R_{k+1} = R_k²`; Higham, "Functions of Matrices",
///    2008, §7.3), accepted when the residual estimate (block power iteration times a safety
///    factor 2) is within the tolerance.
/// 3. **Fall-back**: the exact inverse by DampedCholeskyInverse (relative error about κ·ε).
///
/// **Accuracy (the stated contract).** A reused or iterated result has (estimated) residual
/// `‖I − M X‖₂ ≤ tolerance`; since `X g − M⁻¹ g = −(I − XM) M⁻¹ g` and `‖I − XM‖₂ = ‖I − MX‖₂`
/// for symmetric X and M, every preconditioned gradient then has relative error at most
/// `tolerance`. `apply(G, out, r)` adds r steps of iterative refinement,
/// `x ← x + X (G − M x)`, each multiplying the error by ‖I − XM‖₂: relative error at most
/// `tolerance^(1+r)` (1e-4 and r = 1 give 1e-8). The residual estimates are power
/// iterations (from below) times 2; with a block of 4 vectors and 8 steps an underestimate
/// by more than 2 has a negligible probability (Kuczyński & Woźniakowski 1992). The screen's
/// reuse test uses the Frobenius estimate, which is at least the spectral norm up to the
/// estimator's noise (8 probes), also covered by the factor 2.
///
/// **Cost, and when this pays.** Screen: two thin products. One Newton–Schulz step: a GEMM
/// `M X` (2n³ flops) plus a product with symmetric result (n³), both on kfopt's product
/// kernel and so on kfopt::threads() threads, bit-identical for any count. Fall-back: Cholesky
/// factorization and inversion, n³ flops (≈ LAPACK potrf + potri). So on a CPU an iteration
/// step costs about three fall-backs: with a fixed λ the refresh pays off when the previous
/// inverse can be **reused** (a factor that barely moved, or a loose tolerance plus
/// refinement at apply time), and otherwise the fall-back is the fast exact path (about 5×
/// faster than an eigendecomposition by syevd at n = 1024). The screen weighs this with
/// `iteration_cost` (default 3, the CPU flop ratio), so by default a refresh is reuse or
/// exact; lower it to let the iteration run on hardware where GEMM is much faster than a
/// Cholesky factorization (many cores, GPUs); set `max_iterations = 0` to always
/// recompute. Measurements: bench/results/bench_kron.md (`warm_inverse` rows).
///
/// Decomposition-style: preallocating constructor, `compute(A, λ)` returning `*this`,
/// `info()`. A non-finite A (`Status::NonFiniteInput`) or a failed fall-back (A + λI not
/// numerically positive definite: `Status::NumericalIssue`) keeps the previous inverse.
/// The State (the inverse and counters) can be read and restored for checkpoints.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/linalg/damped_cholesky_inverse.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"

namespace kfopt {

/// Options of WarmStartedDampedInverse (held by value, checked at construction).
template <typename Scalar>
struct WarmStartOptions {
  /// Accepted residual `‖I − (A + λI) X‖₂` of an iterated refresh, which bounds the relative
  /// error of every preconditioned vector (see the file comment). Range (0, 1). Default
  /// 1e-8 for double, 1e-3 for float (rounding in float leaves residuals of about n·ε·κ).
  Scalar tolerance = std::is_same<Scalar, float>::value ? Scalar(1e-3) : Scalar(1e-8);
  /// Newton–Schulz steps allowed before falling back to the exact inverse. Each costs about
  /// three times the fall-back's flops, so small values are sensible. Range [0, 20]
  /// (0 always recomputes exactly: no screen, no reuse). Default 3.
  int max_iterations = 3;
  /// Fall back at once when the starting residual `‖I − M X₀‖₂` (estimated) exceeds this:
  /// the iteration converges only below 1 and needs many steps near it. Range (0, 1).
  /// Default 0.5.
  Scalar max_initial_residual = Scalar(0.5);
  /// Steps of the block power iteration that estimates a residual norm. Range [1, 100].
  /// Default 8.
  int norm_iterations = 8;
  /// What one Newton–Schulz step costs relative to the exact fall-back (a Cholesky
  /// inverse). The screen predicts the k ≥ 1 steps the iteration needs at the least (from
  /// its lower bound of the starting residual) and iterates only if `k · iteration_cost <
  /// 1`, i.e. only when even that optimistic prediction is cheaper than recomputing.
  /// Default 3: on a CPU a step is a GEMM plus a triangular-result product (3n³ flops)
  /// against the n³ flops of potrf + potri at about the same rate, so the iteration never
  /// pays and a refresh is reuse-or-exact (measured: bench_kron `warm_inverse` rows). Set
  /// it lower where GEMM is much faster than a factorization (many cores, accelerators);
  /// 0 iterates whenever the screen says the tolerance is reachable. Range [0, inf).
  Scalar iteration_cost = Scalar(3);

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    constexpr const char* name = "kfopt::WarmStartOptions";
    detail::require_hyperparameter(tolerance > Scalar(0) && tolerance < Scalar(1), name,
                                   "tolerance", tolerance, "(0, 1)");
    detail::require_hyperparameter(max_iterations >= 0 && max_iterations <= 20, name,
                                   "max_iterations", max_iterations, "[0, 20]");
    detail::require_hyperparameter(
        max_initial_residual > Scalar(0) && max_initial_residual < Scalar(1), name,
        "max_initial_residual", max_initial_residual, "(0, 1)");
    detail::require_hyperparameter(norm_iterations >= 1 && norm_iterations <= 100, name,
                                   "norm_iterations", norm_iterations, "[1, 100]");
    detail::require_hyperparameter(iteration_cost >= Scalar(0) && std::isfinite(iteration_cost),
                                   name, "iteration_cost", iteration_cost, "[0, inf)");
  }
};

/// `(A + λI)⁻¹` for a slowly changing symmetric positive semi-definite factor A: the previous
/// inverse reused or refreshed by a warm-started Newton–Schulz iteration when that meets the
/// tolerance, an exact Cholesky inverse otherwise. See the file comment for the method,
/// accuracy and cost.
template <typename Scalar>
class WarmStartedDampedInverse {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// The hyperparameter struct of this class.
  using Options = WarmStartOptions<Scalar>;

  /// Everything carried between refreshes (inspect, restore or checkpoint it).
  struct State {
    Matrix inverse;                    ///< (A + λI)⁻¹ of the last successful refresh
    Scalar damping = Scalar(0);        ///< λ of that refresh
    bool has_inverse = false;          ///< whether `inverse` holds a result
    std::int64_t refreshes = 0;        ///< successful computes
    std::int64_t iterated = 0;         ///< ... of which accepted from the iteration
    std::int64_t reused = 0;           ///< ... of which the previous inverse, still accurate
    std::int64_t fallbacks = 0;        ///< ... of which by the exact Cholesky inverse
    std::int64_t failed = 0;           ///< computes refused (non-finite, not PD)
  };

  /// Throws HyperparameterError for invalid options.
  explicit WarmStartedDampedInverse(const Options& options = Options()) : options_(options) {
    options_.validate();
  }

  /// Preallocates for n×n factors.
  explicit WarmStartedDampedInverse(Eigen::Index n, const Options& options = Options())
      : WarmStartedDampedInverse(options) {
    reserve(n);
  }

  /// Refreshes `(A + damping·I)⁻¹`. Throws ShapeError / InvalidInputError for a non-square,
  /// non-symmetric A, a negative damping, or an A whose size differs from the previous one
  /// (call reset() first to change sizes).
  WarmStartedDampedInverse& compute(const Eigen::Ref<const Matrix>& A, Scalar damping) {
    constexpr const char* op = "kfopt::WarmStartedDampedInverse::compute";
    detail::require_nonnegative(op, "damping", damping);
    const Status input = detail::check_symmetric_factor_tiled(op, "A", A);
    if (input != Status::Success) {
      ++state_.failed;
      last_status_ = input;
      return *this;
    }
    const Eigen::Index n = A.rows();
    if (state_.has_inverse && state_.inverse.rows() != n) {
      throw ShapeError(std::string(op) + ": A is " + detail::shape_of(A) +
                       " but the previous inverse is " + detail::shape_string(
                           state_.inverse.rows(), state_.inverse.rows()) +
                       " (reset() to change the size)");
    }
    if (shifted_.rows() != n) reserve(n);
    last_iterations_ = 0;
    last_residual_ = std::numeric_limits<Scalar>::quiet_NaN();
    last_fell_back_ = false;

    shifted_ = A;  // M = A + λI: the iteration's operand and apply()'s refinement factor
    shifted_.diagonal().array() += damping;
    if (state_.has_inverse && options_.max_iterations > 0 && n > 0) {
      switch (screen()) {
        case Screen::Reuse:
          commit(damping, Outcome::Reused);
          return *this;
        case Screen::Iterate:
          x_ = state_.inverse;
          if (iterate()) {
            state_.inverse.swap(x_);
            commit(damping, Outcome::Iterated);
            return *this;
          }
          break;
        case Screen::FallBack:
          break;
      }
    }
    // The fall-back: an exact inverse by Cholesky.
    last_fell_back_ = true;
    if (chol_.compute(A, damping).info() != Status::Success) {
      ++state_.failed;
      last_status_ = chol_.info();
      return *this;
    }
    state_.inverse = chol_.inverse();
    commit(damping, Outcome::Exact);
    return *this;
  }

  /// Status of the last compute(): Success (by either path), NonFiniteInput or
  /// NumericalIssue (the previous inverse is kept).
  Status info() const noexcept { return last_status_; }
  /// Whether an inverse is available.
  bool has_result() const noexcept { return state_.has_inverse; }

  /// The inverse of the last successful refresh. Throws NumericalError if there is none.
  const Matrix& inverse() const {
    if (!state_.has_inverse) {
      throw NumericalError("kfopt::WarmStartedDampedInverse: no inverse (compute() has not "
                           "succeeded)");
    }
    return state_.inverse;
  }
  /// The damping of the last successful refresh.
  Scalar damping() const noexcept { return state_.damping; }

  /// `out = X G` for the cached inverse X and G n×k (a preconditioned gradient), followed by
  /// `refinement_steps` steps of iterative refinement against the factor of the last refresh
  /// `M = A + λI`: `out ← out + X (G − M out)`. With `ε = ‖I − X M‖₂` (at most `tolerance`
  /// for a reused or iterated refresh, about κ·ε_mach for an exact one) the relative error of
  /// the result is at most `ε^(1 + refinement_steps)` (ε times the error before each step):
  /// an inverse accepted at tolerance 1e-4 gives 1e-8 gradients after one step. Each step
  /// costs two n×n×k products (4n²k flops); a refresh with a looser tolerance is more often
  /// reused (no O(n³) work), so the refinement trades per-application products for refresh
  /// work. Throws NumericalError without a refresh (or, for refinement_steps > 0, after
  /// set_state until the next compute(), since the factor is not part of the State),
  /// ShapeError for a wrong G and InvalidInputError for negative refinement_steps. G is not
  /// scanned for NaN/Inf (this is a per-step product; nothing is stored): a non-finite G
  /// gives a non-finite `out`, as for every other `apply` of the algebra layer.
  template <typename DerivedG>
  void apply(const Eigen::MatrixBase<DerivedG>& G, Matrix& out, int refinement_steps = 0) const {
    constexpr const char* op = "kfopt::WarmStartedDampedInverse::apply";
    const Matrix& X = inverse();
    if (G.rows() != X.rows()) {
      throw ShapeError(std::string(op) + ": G is " + detail::shape_of(G) +
                       " but the inverse is " + detail::shape_string(X.rows(), X.rows()));
    }
    if (refinement_steps < 0) {
      throw InvalidInputError(std::string(op) + ": refinement_steps must be >= 0, got " +
                              std::to_string(refinement_steps));
    }
    if (refinement_steps > 0 && !has_factor_) {
      throw NumericalError(std::string(op) + ": no factor for the refinement (compute() after "
                           "set_state())");
    }
    out.noalias() = X * G;
    for (int step = 0; step < refinement_steps; ++step) {
      apply_residual_ = G;
      apply_residual_.noalias() -= factor_ * out;
      apply_correction_.noalias() = X * apply_residual_;
      out += apply_correction_;
    }
  }

  /// Newton–Schulz updates done by the last compute() (also when it then fell back; an
/// iteration is abandoned as soon as `max_iterations` squarings of the current residual
/// cannot reach the tolerance).
  int last_iterations() const noexcept { return last_iterations_; }
  /// Whether the last compute() used the exact fall-back.
  bool last_fell_back() const noexcept { return last_fell_back_; }
  /// The last estimated residual `‖I − M X‖₂` (with the safety factor), NaN if none was
  /// estimated. For an accepted iteration it is at most `tolerance`.
  Scalar last_residual() const noexcept { return last_residual_; }

  /// The options in use.
  const Options& options() const noexcept { return options_; }
  /// The inverse, its damping and counters.
  const State& state() const noexcept { return state_; }
  /// Replaces the state (e.g. from a checkpoint). Throws ShapeError for a non-square inverse
  /// and InvalidInputError for a non-finite inverse or a negative or non-finite damping; the
  /// current state is then kept.
  void set_state(const State& state) {
    constexpr const char* op = "kfopt::WarmStartedDampedInverse::set_state";
    if (state.has_inverse) {
      detail::require_square(op, "inverse", state.inverse);
      if (!state.inverse.allFinite()) {
        throw InvalidInputError(std::string(op) + ": the inverse (" +
                                detail::shape_of(state.inverse) + ") has NaN or Inf entries");
      }
      if (!(std::isfinite(state.damping) && state.damping >= Scalar(0))) {
        throw InvalidInputError(std::string(op) + ": damping must be finite and >= 0, got " +
                                std::to_string(static_cast<double>(state.damping)));
      }
      if (shifted_.rows() != state.inverse.rows()) reserve(state.inverse.rows());
    }
    state_ = state;
    has_factor_ = false;  // the factor is not part of the State: compute() again to refine
  }
  /// Forgets the inverse and the counters (the next compute() falls back).
  void reset() {
    state_ = State{};
    has_factor_ = false;
  }

 private:
  static constexpr Eigen::Index kProbes = 4;  // block size of the power iteration
  static constexpr Eigen::Index kScreenProbes = 8;  // random vectors of the a-priori screen
  static constexpr Scalar kSafety = Scalar(2);

  void reserve(Eigen::Index n) {
    shifted_.resize(n, n);
    factor_.resize(n, n);
    x_.resize(n, n);
    next_.resize(n, n);
    residual_.resize(n, n);
    probe_.resize(n, kProbes);
    image_.resize(n, kProbes);
    image2_.resize(n, kProbes);
    screen_probe_.resize(n, kScreenProbes);
    screen_image_.resize(n, kScreenProbes);
    screen_residual_.resize(n, kScreenProbes);
  }

  enum class Outcome { Reused, Iterated, Exact };
  void commit(Scalar damping, Outcome outcome) {
    factor_.swap(shifted_);  // M of this refresh, for apply()'s refinement
    has_factor_ = true;
    state_.damping = damping;
    state_.has_inverse = true;
    ++state_.refreshes;
    ++(outcome == Outcome::Reused     ? state_.reused
       : outcome == Outcome::Iterated ? state_.iterated
                                      : state_.fallbacks);
    last_status_ = Status::Success;
  }

  enum class Screen { Reuse, Iterate, FallBack };

  /// The a-priori screen, before any O(n³) work: the starting residual `E₀ = I − M X₀` (X₀
  /// the previous inverse; M the new shifted factor) applied to kScreenProbes random
  /// vectors Ω by two thin products (`E₀Ω = Ω − M (X₀ Ω)`, 4n²p flops, memory-bound: about
  /// two reads of an n×n matrix), and one power step (two more). From the images:
  /// - `s = max_j ‖E₀ω_j‖/‖ω_j‖` (and the same after the power step) is a *lower bound* of
  ///   ‖E₀‖₂. When even s rules the
  ///   iteration out (s above max_initial_residual, or `2·s^(2^m)` above the tolerance for the
  ///   m = max_iterations squarings), fall back at once: the residual GEMM of the iteration
  ///   (2n³ flops, as much as the whole Cholesky inverse) is saved.
  /// - `f = (n · mean_j ‖E₀ω_j‖²/‖ω_j‖²)^{1/2}` estimates ‖E₀‖_F ≥ ‖E₀‖₂ (Hutchinson). When
  ///   `2f` (the same safety factor as the iteration's check) is within the tolerance, the
  ///   previous inverse is still accurate: reuse it, no O(n³) work at all.
  /// - Otherwise iterate (with its own explicit residual checks).
  Screen screen() {
    const Eigen::Index n = shifted_.rows();
    random_probe(screen_probe_);
    screen_image_.noalias() = state_.inverse * screen_probe_;
    screen_residual_ = screen_probe_;
    screen_residual_.noalias() -= shifted_ * screen_image_;
    Scalar lower = Scalar(0);
    double mean_square = 0.0;
    for (Eigen::Index j = 0; j < screen_probe_.cols(); ++j) {
      const Scalar ratio = screen_residual_.col(j).norm() / screen_probe_.col(j).norm();
      if (!std::isfinite(ratio)) return Screen::FallBack;
      lower = std::max(lower, ratio);
      mean_square += static_cast<double>(ratio) * static_cast<double>(ratio);
    }
    mean_square /= static_cast<double>(screen_probe_.cols());
    const Scalar frobenius = static_cast<Scalar>(std::sqrt(static_cast<double>(n) * mean_square));
    if (kSafety * frobenius <= options_.tolerance) {
      last_residual_ = kSafety * frobenius;
      return Screen::Reuse;
    }
    // One power step sharpens the lower bound (two more thin products): with R = E₀Ω,
    // ‖E₀ᵀ r_j‖/‖r_j‖ ≤ ‖E₀‖₂ too, and E₀ᵀ r = r − X₀ (M r) for symmetric M and X₀.
    screen_image_.noalias() = shifted_ * screen_residual_;
    screen_probe_ = screen_residual_;
    screen_probe_.noalias() -= state_.inverse * screen_image_;
    for (Eigen::Index j = 0; j < screen_probe_.cols(); ++j) {
      const Scalar denominator = screen_residual_.col(j).norm();
      if (denominator > Scalar(0)) {
        const Scalar ratio = screen_probe_.col(j).norm() / denominator;
        if (!std::isfinite(ratio)) return Screen::FallBack;
        lower = std::max(lower, ratio);
      }
    }
    last_residual_ = lower;
    if (lower > options_.max_initial_residual) return Screen::FallBack;
    // The fewest squarings k that could bring 2·lower^(2^k) within the tolerance: none
    // within max_iterations → fall back; k steps dearer than one exact inverse → fall back.
    for (int k = 1; k <= options_.max_iterations; ++k) {
      const double reach = static_cast<double>(kSafety) *
                           std::pow(static_cast<double>(lower), std::ldexp(1.0, k));
      if (reach <= static_cast<double>(options_.tolerance)) {
        return static_cast<double>(k) * static_cast<double>(options_.iteration_cost) < 1.0
                   ? Screen::Iterate
                   : Screen::FallBack;
      }
    }
    return Screen::FallBack;
  }

  /// Newton–Schulz from the previous inverse (already in x_); on success the result is in x_.
  bool iterate() {
    for (int k = 0;; ++k) {
      // R = I − M X (one GEMM), and its spectral norm.
      residual_.setIdentity();
      detail::product_accumulate<Scalar>(residual_, Scalar(-1), shifted_, x_);
      const Scalar r = kSafety * explicit_norm_estimate(residual_);
      last_residual_ = r;
      if (!std::isfinite(r)) return false;
      if (r <= options_.tolerance) return true;
      if (k >= options_.max_iterations) return false;
      if (r > (k == 0 ? options_.max_initial_residual : Scalar(1))) return false;
      // The remaining m steps bring the residual to about ρ^(2^m), ρ the raw estimate (r
      // without the safety factor): give up now rather than iterate in vain when even that
      // optimistic prediction misses the tolerance.
      const int remaining = options_.max_iterations - k;
      const double raw = static_cast<double>(r / kSafety);
      if (static_cast<double>(kSafety) * std::pow(raw, std::ldexp(1.0, remaining)) >
          static_cast<double>(options_.tolerance)) {
        return false;
      }
      // X ← X + X R (symmetric: the lower triangle by a triangular-result product).
      next_ = x_;
      detail::lower_product_accumulate<Scalar>(next_, Scalar(1), x_, residual_);
      detail::symmetrize_from_lower(next_);
      x_.swap(next_);
      last_iterations_ = k + 1;
      // R_{k+1} = R_k², so ‖R_{k+1}‖ ≤ r²: when that is well inside the tolerance, check the
      // new residual without forming it (matrix-vector products only).
      if (r * r <= options_.tolerance / Scalar(4)) {
        const Scalar r_new = kSafety * implicit_norm_estimate();
        last_residual_ = r_new;
        if (r_new <= options_.tolerance) return true;
      }
    }
  }

  /// A fixed pseudo-random start (deterministic runs); only its components along the
  /// dominant singular vectors matter, which a generic start has.
  static void random_probe(Matrix& probe) {
    std::uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (Eigen::Index j = 0; j < probe.cols(); ++j) {
      for (Eigen::Index i = 0; i < probe.rows(); ++i) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        probe(i, j) = static_cast<Scalar>(static_cast<double>(seed >> 11) * 0x1.0p-53 - 0.5);
      }
    }
  }

  /// Largest singular value of an explicit R, by power iteration on RᵀR with a block of
  /// probes (the largest column ratio of the last step).
  Scalar explicit_norm_estimate(const Matrix& R) {
    random_probe(probe_);
    Scalar estimate = Scalar(0);
    for (int step = 0; step < options_.norm_iterations; ++step) {
      normalize_columns(probe_);
      image_.noalias() = R * probe_;
      estimate = image_.colwise().norm().maxCoeff();
      probe_.noalias() = R.transpose() * image_;
    }
    return estimate;
  }

  /// The same for `E = I − M X` given only M and X (E v = v − M(Xv), Eᵀ w = w − X(Mw)).
  Scalar implicit_norm_estimate() {
    random_probe(probe_);
    Scalar estimate = Scalar(0);
    for (int step = 0; step < options_.norm_iterations; ++step) {
      normalize_columns(probe_);
      image2_.noalias() = x_ * probe_;
      image_ = probe_;
      image_.noalias() -= shifted_ * image2_;
      estimate = image_.colwise().norm().maxCoeff();
      image2_.noalias() = shifted_ * image_;
      probe_ = image_;
      probe_.noalias() -= x_ * image2_;
    }
    return estimate;
  }

  static void normalize_columns(Matrix& V) {
    for (Eigen::Index j = 0; j < V.cols(); ++j) {
      const Scalar norm = V.col(j).norm();
      if (norm > Scalar(0)) V.col(j) /= norm;
    }
  }

  Options options_;
  State state_;
  DampedCholeskyInverse<Scalar> chol_;
  Matrix shifted_, x_, next_, residual_, probe_, image_, image2_;
  Matrix factor_;  // M = A + λI of the last successful refresh (apply()'s refinement)
  mutable Matrix apply_residual_, apply_correction_;
  bool has_factor_ = false;
  Matrix screen_probe_, screen_image_, screen_residual_;
  Status last_status_ = Status::NotComputed;
  int last_iterations_ = 0;
  bool last_fell_back_ = false;
  Scalar last_residual_ = std::numeric_limits<Scalar>::quiet_NaN();
};

}  // namespace kfopt
