#pragma once
/// \file warm_started_inverse.hpp
/// \brief `(A + λI)⁻¹` refreshed by a Newton–Schulz iteration started from the previous
/// refresh's inverse, with an a-posteriori error check and a fall-back to a full Cholesky
/// inverse.
///
/// K-FAC-style factors change slowly: between two inverse refreshes the factor moves by a
/// few moving-average steps, `A ← βA + (1 − β)S`. With `M = A + λI` and the previous inverse
/// X₀ (of the old M), the Newton–Schulz (Hotelling–Bodewig) iteration
///
///     R_k = I − M X_k,      X_{k+1} = X_k + X_k R_k = X_k (2I − M X_k)
///
/// squares the residual at every step (`R_{k+1} = R_k²`), so it converges quadratically
/// whenever the spectral radius of `R₀ = (M_old − M) M_old⁻¹` is below 1 (Higham, "Functions
/// of Matrices", 2008, §7.3; Pan & Schreiber 1991). The X_k stay symmetric: `X R = X − X M X`.
///
/// **Accuracy (the stated contract).** A refresh by iteration is accepted only when the
/// residual `‖I − M X‖₂` is at most `tolerance`; since `X g − M⁻¹ g = −(I − XM) M⁻¹ g` and
/// `‖I − XM‖₂ = ‖I − MX‖₂` for symmetric X and M, every preconditioned gradient then has
/// relative error at most `tolerance`: `‖X g − M⁻¹g‖ ≤ tolerance · ‖M⁻¹g‖`. The residual norm
/// is estimated by a block power iteration (random start, `norm_iterations` steps) times a
/// safety factor of 2; a power iteration estimates from below, and with a block of 4
/// vectors and 8 steps an underestimate by more than 2 has a negligible probability
/// (Kuczyński & Woźniakowski 1992). Otherwise — no previous inverse, an initial residual
/// above `max_initial_residual`, a residual that m more squarings (the steps left) cannot
/// bring below the tolerance, or `max_iterations` reached — the inverse is recomputed exactly by
/// DampedCholeskyInverse (the fall-back; relative error about κ·ε).
///
/// **Cost.** One iteration is a GEMM `M X` (2n³ flops) and a product with a symmetric result
/// `X R` (n³ flops, lower triangle only): 3n³. The residual check is O(n²) per power step.
/// The fall-back costs a Cholesky factorization and inversion, n³ flops. So on a CPU the
/// iteration pays off only against an eigendecomposition (syevd, about 4 GEMMs of time at
/// n = 1024) and only when one or two iterations suffice, i.e. when `‖R₀‖ ≲ 1e-2` for a
/// 1e-8 tolerance; with a fixed damping a fresh Cholesky inverse is cheaper than even one
/// iteration. What the iteration offers beyond that is its shape: matrix products only, no
/// pivoting or sequential sweeps, so it parallelizes and vectorizes as GEMM does (the
/// measured numbers are in bench/README.md).
///
/// Decomposition-style: preallocating constructor, `compute(A, λ)` returning `*this`,
/// `info()`. A non-finite A (`Status::NonFiniteInput`) or a failed fall-back (A + λI not
/// numerically positive definite: `Status::NumericalIssue`) keeps the previous inverse.
/// The State (the inverse and counters) can be read and restored for checkpoints.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/kron/damped_cholesky_inverse.hpp"

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
  /// (0 always falls back). Default 3.
  int max_iterations = 3;
  /// Fall back at once when the starting residual `‖I − M X₀‖₂` (estimated) exceeds this:
  /// the iteration converges only below 1 and needs many steps near it. Range (0, 1).
  /// Default 0.5.
  Scalar max_initial_residual = Scalar(0.5);
  /// Steps of the block power iteration that estimates a residual norm. Range [1, 100].
  /// Default 8.
  int norm_iterations = 8;

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
  }
};

/// `(A + λI)⁻¹` for a slowly changing symmetric positive semi-definite factor A, refreshed
/// by a warm-started Newton–Schulz iteration when that meets the tolerance and by an exact
/// Cholesky inverse otherwise. See the file comment for the method, accuracy and cost.
template <typename Scalar>
class WarmStartedDampedInverse {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Options = WarmStartOptions<Scalar>;

  /// Everything carried between refreshes (inspect, restore or checkpoint it).
  struct State {
    Matrix inverse;                    ///< (A + λI)⁻¹ of the last successful refresh
    Scalar damping = Scalar(0);        ///< λ of that refresh
    bool has_inverse = false;          ///< whether `inverse` holds a result
    std::int64_t refreshes = 0;        ///< successful computes
    std::int64_t iterated = 0;         ///< ... of which accepted from the iteration
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
    const Status input = detail::check_symmetric_factor(op, "A", A);
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

    if (state_.has_inverse && options_.max_iterations > 0 && n > 0) {
      shifted_ = A;
      shifted_.diagonal().array() += damping;
      if (iterate()) {
        state_.inverse.swap(x_);
        commit(damping, /*iterated=*/true);
        return *this;
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
    commit(damping, /*iterated=*/false);
    return *this;
  }

  /// Status of the last compute(): Success (by either path), NonFiniteInput or
  /// NumericalIssue (the previous inverse is kept).
  Status info() const noexcept { return last_status_; }
  bool has_result() const noexcept { return state_.has_inverse; }

  /// The inverse of the last successful refresh. Throws NumericalError if there is none.
  const Matrix& inverse() const {
    if (!state_.has_inverse) {
      throw NumericalError("kfopt::WarmStartedDampedInverse: no inverse (compute() has not "
                           "succeeded)");
    }
    return state_.inverse;
  }
  Scalar damping() const noexcept { return state_.damping; }

  /// Newton–Schulz updates done by the last compute() (also when it then fell back; an
/// iteration is abandoned as soon as `max_iterations` squarings of the current residual
/// cannot reach the tolerance).
  int last_iterations() const noexcept { return last_iterations_; }
  /// Whether the last compute() used the exact fall-back.
  bool last_fell_back() const noexcept { return last_fell_back_; }
  /// The last estimated residual `‖I − M X‖₂` (with the safety factor), NaN if none was
  /// estimated. For an accepted iteration it is at most `tolerance`.
  Scalar last_residual() const noexcept { return last_residual_; }

  const Options& options() const noexcept { return options_; }
  const State& state() const noexcept { return state_; }
  /// Replaces the state (e.g. from a checkpoint). Throws ShapeError for a non-square inverse.
  void set_state(const State& state) {
    if (state.has_inverse) {
      detail::require_square("kfopt::WarmStartedDampedInverse::set_state", "inverse",
                             state.inverse);
      if (shifted_.rows() != state.inverse.rows()) reserve(state.inverse.rows());
    }
    state_ = state;
  }
  /// Forgets the inverse and the counters (the next compute() falls back).
  void reset() { state_ = State{}; }

 private:
  static constexpr Eigen::Index kProbes = 4;  // block size of the power iteration
  static constexpr Scalar kSafety = Scalar(2);

  void reserve(Eigen::Index n) {
    shifted_.resize(n, n);
    x_.resize(n, n);
    next_.resize(n, n);
    residual_.resize(n, n);
    probe_.resize(n, kProbes);
    image_.resize(n, kProbes);
    image2_.resize(n, kProbes);
  }

  void commit(Scalar damping, bool iterated) {
    state_.damping = damping;
    state_.has_inverse = true;
    ++state_.refreshes;
    ++(iterated ? state_.iterated : state_.fallbacks);
    last_status_ = Status::Success;
  }

  /// Newton–Schulz from the stored inverse; on success the result is in x_.
  bool iterate() {
    x_ = state_.inverse;
    for (int k = 0;; ++k) {
      // R = I − M X (one GEMM), and its spectral norm.
      residual_.setIdentity();
      residual_.noalias() -= shifted_ * x_;
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
      next_.template triangularView<Eigen::Lower>() += x_ * residual_;
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

  void random_probe() {
    // A fixed pseudo-random start (deterministic runs); only its components along the
    // dominant singular vectors matter, which a generic start has.
    std::uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (Eigen::Index j = 0; j < probe_.cols(); ++j) {
      for (Eigen::Index i = 0; i < probe_.rows(); ++i) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        probe_(i, j) = static_cast<Scalar>(static_cast<double>(seed >> 11) * 0x1.0p-53 - 0.5);
      }
    }
  }

  /// Largest singular value of an explicit R, by power iteration on RᵀR with a block of
  /// probes (the largest column ratio of the last step).
  Scalar explicit_norm_estimate(const Matrix& R) {
    random_probe();
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
    random_probe();
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
  Status last_status_ = Status::NotComputed;
  int last_iterations_ = 0;
  bool last_fell_back_ = false;
  Scalar last_residual_ = std::numeric_limits<Scalar>::quiet_NaN();
};

}  // namespace kfopt
