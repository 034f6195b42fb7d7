#pragma once
/// \file kalman_update.hpp
/// \brief The Kalman update (measurement step) in covariance, Joseph and information form.
///
/// Every observation is handed to the update in *square-root information* form:
///
///     a factor Gᵀ (d×r) whose outer product Gᵀ G is the information the observation adds,
///     a score g (d) = Hᵀ R⁻¹ (T(y) − ŷ) = −∇ℓ, the direction the mean moves along.
///
/// so that the update reads (Ollivier 2018, arXiv:1703.00209, "information form" of the
/// static EKF):
///
///     P̃  = c P + Q                      (folded predict: fading c = 1/(1−λ), noise Q)
///     P⁺ = (P̃⁻¹ + Gᵀ G)⁻¹
///     m⁺ = m + P⁺ g.
///
/// For a mean-form observation (H = ∂ŷ/∂θ, noise R = C Cᵀ) the factor is G = C⁻¹ H and
/// g = Gᵀ C⁻¹ e, and P⁺ g equals the textbook K e with K = P̃ Hᵀ (H P̃ Hᵀ + R)⁻¹
/// (`update_linear` does this whitening). For a canonical-link observation (natural
/// parameter z, J = ∂z/∂θ, Fisher of z = Bᵀ B) the factor is G = B J and no R⁻¹ appears,
/// which is how a saturated Bernoulli or the singular softmax covariance is handled without
/// dividing by a vanishing variance (see observation_model.hpp).
///
/// The three forms (`KalmanForm`, chosen by the belief's storage):
///  - Covariance: U = P̃ Gᵀ, S = I + G U, W = U chol(S)⁻ᵀ, P⁺ = P̃ − W Wᵀ (Sherman–Morrison
///    when r = 1, Woodbury otherwise); ~2d² + O(r d²) multiply-adds, O(d²) memory traffic.
///  - Joseph: K = U S⁻¹, P⁺ = (I − K G) P̃ (I − K G)ᵀ + K Kᵀ, evaluated as three rank-r
///    products (never forming I − K G): ~3 r d² + d², plus a d×d workspace.
///  - Information: L̃ = L/√c, then r rank-1 Cholesky updates L⁺ L⁺ᵀ = L̃ L̃ᵀ + Gᵀ G, and
///    two triangular solves for P⁺ g: ~(2r + 1) d² plus a d² copy. Process noise Q is not
///    available here (it would need an O(d³) refactorization; see kalman_add_process_noise).
///
/// All forms: O(r d²) per update with r observation rows — O(d²) for a scalar observation,
/// O(k d²) for a k-dimensional one; no d×d factorization, ever. Covariances are kept exactly
/// symmetric. Every update is all-or-nothing: inputs are checked, the new covariance and
/// the mean increment are computed and checked, and only then is anything written. A
/// failed update returns a Status and leaves the belief bit-for-bit unchanged.
///
/// Workspaces are sized on first use; later updates of the same sizes do not allocate: the
/// rank-r products are evaluated in tiles (tiled_product.hpp) so that Eigen's packing
/// buffers stay on the stack, for any d and up to r = 128 observation rows (beyond that,
/// Eigen's triangular solve with r right-hand sides may use a heap buffer).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string>

#include "kfopt/linalg/eigen_decompositions.hpp"
#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/filter/gaussian_belief.hpp"
#include "kfopt/linalg/tiled_product.hpp"

namespace kfopt {

/// Performs Kalman updates on a `BeliefCovariance` and owns their workspaces.
///
/// Decomposition-style: construct once (optionally with the sizes), call `update*` each
/// step, read `increment()` (the mean shift P⁺ g of the last successful update) and `info()`.
template <typename Scalar>
class KalmanUpdater {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  KalmanUpdater() = default;
  /// Preallocates the workspaces for dimension d and up to r observation rows.
  KalmanUpdater(Eigen::Index d, Eigen::Index r) { reserve(d, r); }

  /// Sizes the workspaces for dimension d and r observation rows.
  void reserve(Eigen::Index d, Eigen::Index r) {
    resize_vector(delta_, d);
    resize_vector(pg_, d);
    resize_vector(u_, d);
    resize_matrix(U_, d, r);
    resize_matrix(W_, d, r);
    resize_matrix(S_, r, r);
  }

  /// Updates the covariance with an observation in square-root information form and
  /// leaves the mean increment P⁺ g in `increment()`; the mean itself is not touched.
  ///
  /// \param cov        the belief's covariance, updated in place on success.
  /// \param Gt         Gᵀ, d×r: the observation adds Gᵀ G to the precision.
  /// \param g          the score (d): the mean moves by P⁺ g.
  /// \param inflation  c ≥ 1 typically (fading memory c = 1/(1−λ)); must be finite, > 0.
  /// \return Success; NonFiniteInput (NaN/Inf in Gt, g or Q); NumericalIssue (the updated
  ///         covariance would not be finite or would have a clearly negative variance).
  ///         Shape errors throw ShapeError; a non-positive inflation throws
  ///         InvalidInputError. On any non-Success status nothing was written.
  Status update_covariance(BeliefCovariance<Scalar>& cov, const Eigen::Ref<const Matrix>& Gt,
                           const Eigen::Ref<const Vector>& g, Scalar inflation = Scalar(1)) {
    return run("kfopt::KalmanUpdater::update_covariance", cov, Gt, g, inflation, nullptr);
  }

  /// As above with additive process noise: P̃ = c P + Q (Q d×d symmetric positive
  /// semi-definite). Covariance and Joseph forms only (InvalidInputError otherwise).
  Status update_covariance(BeliefCovariance<Scalar>& cov, const Eigen::Ref<const Matrix>& Gt,
                           const Eigen::Ref<const Vector>& g, Scalar inflation,
                           const Eigen::Ref<const Matrix>& Q) {
    return run("kfopt::KalmanUpdater::update_covariance", cov, Gt, g, inflation, &Q);
  }

  /// As `update_covariance`, for a caller that will add `increment()` to its own mean
  /// (an optimizer's θ in user storage): the update is also refused (Status::Overflow,
  /// nothing written) when `mean + P⁺ g` would not be finite, so that covariance and mean
  /// commit together or not at all. `Q` may be null (no process noise).
  Status update_covariance_for(const Eigen::Ref<const Vector>& mean,
                               BeliefCovariance<Scalar>& cov, const Eigen::Ref<const Matrix>& Gt,
                               const Eigen::Ref<const Vector>& g, Scalar inflation,
                               const Eigen::Ref<const Matrix>* Q = nullptr) {
    const char* op = "kfopt::KalmanUpdater::update_covariance";
    detail::require_shape(op, "mean", mean, cov.dim(), 1);
    if (!detail::all_finite(mean)) return info_ = Status::NonFiniteInput;
    return run(op, cov, Gt, g, inflation, Q, &mean);
  }

  /// Full update of a belief: covariance as in `update_covariance`, then mean += P⁺ g.
  Status update(Eigen::Ref<Vector> mean, BeliefCovariance<Scalar>& cov,
                const Eigen::Ref<const Matrix>& Gt, const Eigen::Ref<const Vector>& g,
                Scalar inflation = Scalar(1)) {
    const char* op = "kfopt::KalmanUpdater::update";
    detail::require_shape(op, "mean", mean, cov.dim(), 1);
    if (!mean.allFinite()) return info_ = Status::NonFiniteInput;
    const Eigen::Ref<const Vector> current(mean);
    const Status status = run(op, cov, Gt, g, inflation, nullptr, &current);
    if (status == Status::Success) mean += delta_;
    return status;
  }

  /// Full update of a `GaussianBelief`.
  Status update(GaussianBelief<Scalar>& belief, const Eigen::Ref<const Matrix>& Gt,
                const Eigen::Ref<const Vector>& g, Scalar inflation = Scalar(1)) {
    return update(belief.mean, belief.covariance, Gt, g, inflation);
  }

  /// Textbook (mean-form) update: innovation e = T(y) − ŷ (k), H = ∂ŷ/∂θ (k×d), noise
  /// covariance R (k×k, symmetric positive definite):
  ///
  ///     S = H P Hᵀ + R,  K = P Hᵀ S⁻¹,  P⁺ = (I − K H) P,  m⁺ = m + K e
  ///
  /// computed by whitening with R = C Cᵀ (G = C⁻¹ H, g = Gᵀ C⁻¹ e) and then the belief's
  /// form. Cost O(k³ + k² d) for the whitening plus the update. Throws InvalidInputError if
  /// R is not symmetric positive definite; NonFiniteInput for NaN/Inf inputs.
  Status update_linear(Eigen::Ref<Vector> mean, BeliefCovariance<Scalar>& cov,
                       const Eigen::Ref<const Matrix>& H, const Eigen::Ref<const Matrix>& R,
                       const Eigen::Ref<const Vector>& innovation) {
    const char* op = "kfopt::KalmanUpdater::update_linear";
    const Eigen::Index d = cov.dim();
    const Eigen::Index k = H.rows();
    detail::require_shape(op, "mean", mean, d, 1);
    detail::require_shape(op, "H", H, k, d);
    detail::require_shape(op, "R", R, k, k);
    detail::require_shape(op, "innovation", innovation, k, 1);
    if (!mean.allFinite() || !H.allFinite() || !R.allFinite() || !innovation.allFinite()) {
      return info_ = Status::NonFiniteInput;
    }
    detail::require_symmetric(op, "R", R);
    r_llt_.compute(R);
    if (r_llt_.info() != Eigen::Success) {
      throw InvalidInputError(std::string(op) + ": R (" + detail::shape_of(R) +
                              ") is not positive definite");
    }
    resize_matrix(whitened_, k, d);
    whitened_ = H;
    for (Eigen::Index j0 = 0; j0 < d; j0 += detail::kProductTile) {  // C⁻¹ H, in column panels
      const Eigen::Index nj = std::min(detail::kProductTile, d - j0);
      r_llt_.matrixL().solveInPlace(whitened_.middleCols(j0, nj));
    }
    resize_matrix(gt_, d, k);
    gt_ = whitened_.transpose();
    resize_vector(ew_, k);
    ew_ = innovation;
    r_llt_.matrixL().solveInPlace(ew_);  // C⁻¹ e
    resize_vector(g_, d);
    g_.noalias() = gt_ * ew_;
    const Eigen::Ref<const Vector> current(mean);
    const Status status = run(op, cov, gt_, g_, Scalar(1), nullptr, &current);
    if (status == Status::Success) mean += delta_;
    return status;
  }

  /// Mean increment P⁺ g of the last successful update (d).
  const Vector& increment() const noexcept { return delta_; }
  /// Status of the last update.
  Status info() const noexcept { return info_; }

 private:
  static void resize_vector(Vector& v, Eigen::Index n) {
    if (v.size() != n) v.resize(n);
  }
  static void resize_matrix(Matrix& m, Eigen::Index rows, Eigen::Index cols) {
    if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
  }

  /// Variance floor test: a new variance may undershoot zero by rounding only.
  static bool variance_ok(Scalar value, Scalar scale) {
    const Scalar tol = ScalarTraits<Scalar>::symmetry_tolerance();
    return std::isfinite(static_cast<double>(value)) && value >= -tol * scale;
  }

  /// Whether the caller's mean (if any) stays finite after adding delta_ (checked before
  /// every commit).
  bool mean_stays_finite() const {
    return mean_ == nullptr || detail::all_finite(*mean_ + delta_);
  }

  Status run(const char* op, BeliefCovariance<Scalar>& cov, const Eigen::Ref<const Matrix>& Gt,
             const Eigen::Ref<const Vector>& g, Scalar c, const Eigen::Ref<const Matrix>* Q,
             const Eigen::Ref<const Vector>* mean = nullptr) {
    mean_ = mean;
    const Status status = run_forms(op, cov, Gt, g, c, Q);
    mean_ = nullptr;
    return status;
  }

  Status run_forms(const char* op, BeliefCovariance<Scalar>& cov,
                   const Eigen::Ref<const Matrix>& Gt, const Eigen::Ref<const Vector>& g,
                   Scalar c, const Eigen::Ref<const Matrix>* Q) {
    const Eigen::Index d = cov.dim();
    const Eigen::Index r = Gt.cols();
    detail::require_shape(op, "G transposed", Gt, d, r);
    detail::require_shape(op, "score", g, d, 1);
    if (!(c > Scalar(0)) || !std::isfinite(static_cast<double>(c))) {
      throw InvalidInputError(std::string(op) + ": inflation must be finite and > 0");
    }
    if (Q != nullptr) {
      detail::require_shape(op, "process noise Q", *Q, d, d);
      if (!cov.stores_covariance()) {
        throw InvalidInputError(std::string(op) +
                                ": process noise needs the covariance or Joseph form (in the "
                                "information form use kalman_add_process_noise, O(d³))");
      }
    }
    if (!Gt.allFinite() || !g.allFinite() || (Q != nullptr && !Q->allFinite())) {
      return info_ = Status::NonFiniteInput;
    }
    if (Q != nullptr) detail::require_symmetric(op, "process noise Q", *Q);
    reserve(d, r);
    switch (cov.form()) {
      case KalmanForm::Covariance: info_ = covariance_form(cov.storage(), Gt, g, c, Q); break;
      case KalmanForm::Joseph: info_ = joseph_form(cov.storage(), Gt, g, c, Q); break;
      case KalmanForm::Information: info_ = information_form(cov.storage(), Gt, g, c); break;
    }
    return info_;
  }

  /// U = c P Gt (+ Q Gt), S = I + Gtᵀ U, chol(S). False if S is not positive definite.
  bool gain_terms(const Matrix& P, const Eigen::Ref<const Matrix>& Gt, Scalar c,
                  const Eigen::Ref<const Matrix>* Q) {
    U_.setZero();
    detail::tiled_multiply_add(U_, P, Gt, c);
    if (Q != nullptr) detail::tiled_multiply_add(U_, *Q, Gt, Scalar(1));
    S_.setIdentity();
    detail::tiled_multiply_add(S_, Gt.transpose(), U_, Scalar(1));
    detail::symmetrize(S_);
    s_llt_.compute(S_);
    return s_llt_.info() == Eigen::Success;
  }

  /// X ← X chol(S)⁻ᵀ (upper = true) or X ← X chol(S)⁻¹, in panels of rows (no heap).
  void solve_right(Matrix& X, bool upper) const {
    for (Eigen::Index i0 = 0; i0 < X.rows(); i0 += detail::kProductTile) {
      const Eigen::Index mi = std::min(detail::kProductTile, X.rows() - i0);
      if (upper) {
        s_llt_.matrixU().template solveInPlace<Eigen::OnTheRight>(X.middleRows(i0, mi));
      } else {
        s_llt_.matrixL().template solveInPlace<Eigen::OnTheRight>(X.middleRows(i0, mi));
      }
    }
  }

  /// pg_ = P̃ g = c P g (+ Q g).
  void predicted_times_score(const Matrix& P, const Eigen::Ref<const Vector>& g, Scalar c,
                             const Eigen::Ref<const Matrix>* Q) {
    pg_.noalias() = P * g;
    if (c != Scalar(1)) pg_ *= c;
    if (Q != nullptr) pg_.noalias() += *Q * g;
  }

  Status covariance_form(Matrix& P, const Eigen::Ref<const Matrix>& Gt,
                         const Eigen::Ref<const Vector>& g, Scalar c,
                         const Eigen::Ref<const Matrix>* Q) {
    const Eigen::Index d = P.rows();
    const Eigen::Index r = Gt.cols();
    if (r == 0) {
      predicted_times_score(P, g, c, Q);
      delta_ = pg_;
    } else if (r == 1) {
      // Sherman–Morrison: s = 1 + gᵀ P̃ g (≥ 1 for P̃ ⪰ 0), w = P̃ Gt / √s.
      if (c != Scalar(1)) {
        u_.noalias() = P * Gt.col(0);
        u_ *= c;
      } else {
        u_.noalias() = P * Gt.col(0);
      }
      if (Q != nullptr) u_.noalias() += *Q * Gt.col(0);
      const Scalar s = Scalar(1) + Gt.col(0).dot(u_);
      if (!(s > Scalar(0)) || !std::isfinite(static_cast<double>(s))) {
        return Status::NumericalIssue;
      }
      u_ /= std::sqrt(s);
      predicted_times_score(P, g, c, Q);
      delta_ = pg_ - u_ * u_.dot(g);
      for (Eigen::Index i = 0; i < d; ++i) {
        const Scalar prior = c * P(i, i) + (Q != nullptr ? (*Q)(i, i) : Scalar(0));
        if (!variance_ok(prior - u_(i) * u_(i), std::abs(prior))) return Status::NumericalIssue;
      }
    } else {
      // Woodbury: W = U chol(S)⁻ᵀ, P⁺ = P̃ − W Wᵀ.
      if (!gain_terms(P, Gt, c, Q)) return Status::NumericalIssue;
      W_ = U_;
      solve_right(W_, true);
      predicted_times_score(P, g, c, Q);
      resize_vector(wr_, r);
      wr_.noalias() = W_.transpose() * g;
      delta_ = pg_;
      delta_.noalias() -= W_ * wr_;
      for (Eigen::Index i = 0; i < d; ++i) {
        const Scalar prior = c * P(i, i) + (Q != nullptr ? (*Q)(i, i) : Scalar(0));
        if (!variance_ok(prior - W_.row(i).squaredNorm(), std::abs(prior))) {
          return Status::NumericalIssue;
        }
      }
    }
    if (!delta_.allFinite()) return Status::NumericalIssue;
    if (!mean_stays_finite()) return Status::Overflow;
    // Commit.
    if (c != Scalar(1)) P *= c;
    if (Q != nullptr) P += *Q;
    if (r == 1) {
      P.template selfadjointView<Eigen::Lower>().rankUpdate(u_, Scalar(-1));
    } else if (r > 1) {
      detail::tiled_lower_outer_add(P, W_, W_, Scalar(-1));
    }
    detail::symmetrize_from_lower(P);
    return Status::Success;
  }

  Status joseph_form(Matrix& P, const Eigen::Ref<const Matrix>& Gt,
                     const Eigen::Ref<const Vector>& g, Scalar c,
                     const Eigen::Ref<const Matrix>* Q) {
    const Eigen::Index d = P.rows();
    const Eigen::Index r = Gt.cols();
    resize_matrix(M_, d, d);
    M_ = c * P;
    if (Q != nullptr) M_ += *Q;
    if (r > 0) {
      if (!gain_terms(P, Gt, c, Q)) return Status::NumericalIssue;
      // K = U S⁻¹ = U L⁻ᵀ L⁻¹.
      resize_matrix(K_, d, r);
      K_ = U_;
      solve_right(K_, true);
      solve_right(K_, false);
      // M = (I − K G) P̃ = P̃ − K Uᵀ; P⁺ = M (I − K G)ᵀ + K Kᵀ = M − (M Gᵀ) Kᵀ + K Kᵀ.
      detail::tiled_multiply_add(M_, K_, U_.transpose(), Scalar(-1));
      resize_matrix(MG_, d, r);
      MG_.setZero();
      detail::tiled_multiply_add(MG_, M_, Gt, Scalar(1));
      detail::tiled_multiply_add(M_, MG_, K_.transpose(), Scalar(-1));
      detail::tiled_multiply_add(M_, K_, K_.transpose(), Scalar(1));
    }
    detail::symmetrize(M_);
    delta_.noalias() = M_ * g;
    if (!delta_.allFinite()) return Status::NumericalIssue;
    for (Eigen::Index i = 0; i < d; ++i) {
      const Scalar prior = c * P(i, i) + (Q != nullptr ? (*Q)(i, i) : Scalar(0));
      if (!variance_ok(M_(i, i), std::abs(prior))) return Status::NumericalIssue;
    }
    if (!M_.allFinite()) return Status::NumericalIssue;
    if (!mean_stays_finite()) return Status::Overflow;
    P.swap(M_);
    return Status::Success;
  }

  Status information_form(Matrix& L, const Eigen::Ref<const Matrix>& Gt,
                          const Eigen::Ref<const Vector>& g, Scalar c) {
    const Eigen::Index d = L.rows();
    if (Lw_.rows() != d || Lw_.cols() != d) Lw_.setZero(d, d);  // strict upper stays zero
    if (c != Scalar(1)) {
      Lw_.template triangularView<Eigen::Lower>() = L * (Scalar(1) / std::sqrt(c));
    } else {
      Lw_.template triangularView<Eigen::Lower>() = L;
    }
    for (Eigen::Index j = 0; j < Gt.cols(); ++j) {
      u_ = Gt.col(j);
      detail::cholesky_rank1_update<Scalar>(Lw_, u_);
    }
    const auto diag = Lw_.diagonal();
    if (!diag.allFinite() || !(diag.minCoeff() > Scalar(0))) return Status::NumericalIssue;
    delta_ = g;
    Lw_.template triangularView<Eigen::Lower>().solveInPlace(delta_);
    Lw_.template triangularView<Eigen::Lower>().transpose().solveInPlace(delta_);
    if (!delta_.allFinite()) return Status::NumericalIssue;
    if (!mean_stays_finite()) return Status::Overflow;
    L.swap(Lw_);
    return Status::Success;
  }

  Status info_ = Status::NotComputed;
  const Eigen::Ref<const Vector>* mean_ = nullptr;  // checked before a commit, during run()
  Vector delta_, pg_, u_, wr_, ew_, g_;
  Matrix U_, W_, S_, K_, M_, MG_, Lw_, whitened_, gt_;
  detail::InitializedLlt<Matrix> s_llt_, r_llt_;
};

}  // namespace kfopt
