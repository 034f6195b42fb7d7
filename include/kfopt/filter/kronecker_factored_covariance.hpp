#pragma once
/// \file kronecker_factored_covariance.hpp
/// \brief A Gaussian belief's covariance kept as one Kronecker product `Σ = Σx ⊗ Σδ` over a
/// weight matrix, with the filter's two updates projected back onto that form by KL
/// projection — Aitchison 2018, §2.1.3 (eq. 22–28) and SI §4.3 (eq. 31–32, §4.3.1–4.3.2).
///
/// The latent variable is `z = vec(W)` for an M×N weight matrix W (column-stacking vec, so
/// the gradient `δ xᵀ` is `x ⊗ δ`); Σx is N×N (inputs), Σδ is M×M (outputs), and
/// `(Σx ⊗ Σδ) vec(G) = vec(Σδ G Σx)`.
///
/// **Data update (eq. 23, SI §4.3.1).** One observation `Λ_like = e eᵀ`, `e = x ⊗ δ`, turns
/// Σ into `Σx ⊗ Σδ − (u uᵀ) ⊗ (v vᵀ)/(1 + XΔ)` with `u = Σx x`, `v = Σδ δ`, `X = xᵀΣx x`,
/// `Δ = δᵀΣδ δ`: a sum of two Kronecker products with X1 = Σx, Y1 = Σδ, X2 = u uᵀ/s,
/// Y2 = −v vᵀ/s, s = sqrt(1 + XΔ). The KL projection eq. 32 of that sum, with the traces
/// in closed form (τx = X/s, τy = −Δ/s), is
///
///     Σx ← (1 + XΔ/(2NM(1+XΔ))) Σx − Δ/(M(1+XΔ)) u uᵀ
///     Σδ ← (1 + XΔ/(2NM(1+XΔ))) Σδ − X/(N(1+XΔ)) v vᵀ
///
/// This is the printed eq. 24 when its Δ and X are read normalized (Δ/M and X/N) and with
/// X, not Δ, in front of `Σδ δδᵀ Σδ` in eq. 24b (the printed 24b has Δ there, a typo: eq. 32
/// gives X). It costs two matrix–vector products and two rank-1 updates, O(N² + M²), and
/// keeps both factors positive definite in exact arithmetic (relative to Σx, the direction
/// Σx^{1/2} x is scaled by `1 − (1 − 1/(2N)) XΔ/(M(1 + XΔ)) > 1/(2N)`, and likewise for Σδ).
/// The result differs from the exact KL
/// projection by a relative O(ε²), ε = XΔ/(1 + XΔ) ≤ 1 (see kron/kronecker_projection.hpp).
///
/// **Drift (eq. 25–28, SI §4.3.2).** The prior `z(t+1) = keep·z(t) + N(0, η² I ⊗ I)` turns
/// Σ into `keep² Σx ⊗ Σδ + η² I ⊗ I`: X1 = keep Σx, Y1 = keep Σδ, X2 = Y2 = η I. Eq. 32
/// with τx = η Tr(Σx⁻¹)/keep, τy = η Tr(Σδ⁻¹)/keep:
///
///     Σx ← (1 − τxτy/(2NM)) keep Σx + η (τy/M) I,
///     Σδ ← (1 − τxτy/(2NM)) keep Σδ + η (τx/N) I,
///
/// eq. 28 to leading order. The traces of the inverses cost one Cholesky factorization and
/// one triangular inversion per factor, about (N³ + M³)/2 flops (refreshable every T steps).
/// If `1 − τxτy/(2NM)` would be negative (η far outside the first-order regime) it is
/// clamped at 0 and counted; a factor that lost definiteness to rounding is repaired by
/// clipping its eigenvalues (counted).
///
/// **Exact projection.** With KroneckerProjectionMethod::Exact both updates use the kron
/// layer's exact minimizer (KroneckerKlProjection) instead of eq. 32: about 3.7(N³ + M³)
/// flops per observation and per drift. If it fails numerically, the first-order update is
/// used instead and the fallback is counted.
///
/// The product is all that matters (Σx → cΣx, Σδ → Σδ/c leaves it unchanged); `balance()`
/// fixes the free scale by `tr(Σx)/N = tr(Σδ)/M`.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "kfopt/linalg/eigen_decompositions.hpp"
#include "kfopt/linalg/tiled_product.hpp"
#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/kron/kronecker_projection.hpp"

namespace kfopt {

/// How a sum of two Kronecker products is projected back onto one.
enum class KroneckerProjectionMethod {
  /// The closed form eq. 32 (SI §4.3), with the traces specialized to each update:
  /// O(N² + M²) per observation, O(N³ + M³) per drift.
  FirstOrder,
  /// The exact KL minimizer (kron/kronecker_projection.hpp, KroneckerKlProjection):
  /// about 3.7(N³ + M³) flops per observation and per drift.
  Exact,
};

namespace detail {

/// Eq. 32 in coefficient form: for traces τx = Tr(X1⁻¹X2), τy = Tr(Y1⁻¹Y2) and sizes N, M,
/// `A = common X1 + alpha2 X2`, `B = common Y1 + beta2 Y2` with common = 1 − τxτy/(2NM),
/// alpha2 = τy/M, beta2 = τx/N.
struct FirstOrderProjectionCoefficients {
  double common;
  double alpha2;
  double beta2;
};

inline FirstOrderProjectionCoefficients first_order_projection_coefficients(double tau_x,
                                                                            double tau_y,
                                                                            double n, double m) {
  return {1.0 - tau_x * tau_y / (2.0 * n * m), tau_y / m, tau_x / n};
}

}  // namespace detail

/// `Σ = Σx ⊗ Σδ` with the filter's data and drift updates (see the file documentation).
template <typename Scalar>
class KroneckerFactoredCovariance {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  KroneckerFactoredCovariance() = default;

  /// `Σ = variance · I_N ⊗ I_M`, stored as Σx = sqrt(variance) I_N, Σδ = sqrt(variance) I_M.
  /// Allocates every workspace of the updates. Throws InvalidInputError for non-positive
  /// sizes or variance.
  KroneckerFactoredCovariance(Eigen::Index n, Eigen::Index m, Scalar variance,
                              KroneckerProjectionMethod method = KroneckerProjectionMethod::FirstOrder)
      : method_(method) {
    if (n <= 0 || m <= 0 || !(variance > Scalar(0)) ||
        !std::isfinite(static_cast<double>(variance))) {
      throw InvalidInputError("kfopt::KroneckerFactoredCovariance: needs sizes > 0 and a finite "
                              "variance > 0, got " + detail::shape_string(n, m));
    }
    const Scalar root = std::sqrt(variance);
    sx_ = root * Matrix::Identity(n, n);
    sd_ = root * Matrix::Identity(m, m);
    u_.resize(n);
    v_.resize(m);
    inv_col_x_.resize(n);
    inv_col_d_.resize(m);
    if (method_ == KroneckerProjectionMethod::Exact) {
      solvers_.projector = std::make_unique<KroneckerKlProjection<Scalar>>(n, m);
      x1_.resize(n, n);
      x2_.resize(n, n);
      y1_.resize(m, m);
      y2_.resize(m, m);
    }
  }

  Eigen::Index input_size() const noexcept { return sx_.rows(); }   ///< N
  Eigen::Index output_size() const noexcept { return sd_.rows(); }  ///< M
  /// The projection method in use.
  KroneckerProjectionMethod method() const noexcept { return method_; }
  const Matrix& input_factor() const noexcept { return sx_; }   ///< Σx (N×N, SPD)
  const Matrix& output_factor() const noexcept { return sd_; }  ///< Σδ (M×M, SPD)

  /// Replaces both factors (checkpoints, rollback). Throws ShapeError / InvalidInputError
  /// unless they are N×N and M×M, finite and symmetric. No allocation.
  void set_factors(const Eigen::Ref<const Matrix>& input, const Eigen::Ref<const Matrix>& output) {
    constexpr const char* op = "kfopt::KroneckerFactoredCovariance::set_factors";
    detail::require_shape(op, "input factor", input, sx_.rows(), sx_.cols());
    detail::require_shape(op, "output factor", output, sd_.rows(), sd_.cols());
    detail::require_symmetric(op, "input factor", input);
    detail::require_symmetric(op, "output factor", output);
    sx_ = input;
    sd_ = output;
  }

  /// The dense NM×NM covariance Σx ⊗ Σδ (tests and small problems; O(N²M²)).
  Matrix to_dense() const {
    const Eigen::Index n = sx_.rows(), m = sd_.rows();
    Matrix out(n * m, n * m);
    for (Eigen::Index j = 0; j < n; ++j)
      for (Eigen::Index i = 0; i < n; ++i) out.block(i * m, j * m, m, m) = sx_(i, j) * sd_;
    return out;
  }

  /// Data update with one observation `Λ_like = (x ⊗ δ)(x ⊗ δ)ᵀ` (eq. 23 projected by eq. 32,
  /// SI §4.3.1). x has N entries, δ has M. A zero x or δ is no observation. Returns Success,
  /// or NumericalIssue (factors unchanged) if XΔ overflows. Cost O(N² + M²) (FirstOrder).
  Status observe(const Eigen::Ref<const Vector>& x, const Eigen::Ref<const Vector>& delta) {
    constexpr const char* op = "kfopt::KroneckerFactoredCovariance::observe";
    detail::require_shape(op, "x", x, sx_.rows(), 1);
    detail::require_shape(op, "delta", delta, sd_.rows(), 1);
    u_.noalias() = sx_ * x;
    v_.noalias() = sd_ * delta;
    const double X = static_cast<double>(x.dot(u_));      // xᵀ Σx x
    const double D = static_cast<double>(delta.dot(v_));  // δᵀ Σδ δ
    if (!(X > 0.0) || !(D > 0.0)) return Status::Success;  // e = 0: nothing observed
    const double r = X * D;
    if (!std::isfinite(r)) return Status::NumericalIssue;
    const double s = std::sqrt(1.0 + r);
    if (method_ == KroneckerProjectionMethod::Exact && exact_observe(s)) return Status::Success;
    const double n = static_cast<double>(sx_.rows()), m = static_cast<double>(sd_.rows());
    // X2 = u uᵀ/s (τx = X/s), Y2 = −v vᵀ/s (τy = −Δ/s).
    const auto c = detail::first_order_projection_coefficients(X / s, -D / s, n, m);
    sx_ *= static_cast<Scalar>(c.common);
    sd_ *= static_cast<Scalar>(c.common);
    sx_.template selfadjointView<Eigen::Lower>().rankUpdate(u_, static_cast<Scalar>(c.alpha2 / s));
    sd_.template selfadjointView<Eigen::Lower>().rankUpdate(v_, static_cast<Scalar>(-c.beta2 / s));
    detail::symmetrize_from_lower(sx_);
    detail::symmetrize_from_lower(sd_);
    return Status::Success;
  }

  /// Data update with k observations `e_b = x_b ⊗ δ_b` taken in order (row b of `inputs`
  /// and of `deltas`): the same as k successive observe() calls, to rounding. With
  /// `append_one` the rows of `inputs` have N − 1 entries and x_b ends with a 1 (a bias
  /// folded in as a homogeneous coordinate). Returns Success, or NumericalIssue if some XΔ
  /// overflows (the observations of earlier chunks, below, stay applied).
  ///
  /// FirstOrder: within a chunk of c ≤ 64 observations every factor stays of the form
  /// `Σx = g (Σx0 + Pᵀ W P)` with the rows of `P = X Σx0` the vectors `(Σx0 x_b)ᵀ`: the
  /// b-th update's `u = Σx x_b = g Pᵀ r_b`, `r_b = e_b + W K e_b`, `xᵀΣx x = g K_bᵀ r_b`,
  /// with the Gram matrix `K = X Σx0 Xᵀ` (c×c), and eq. 32 scales g and adds a rank-1 term to
  /// W (c×c). The c recurrence steps cost O(c³) in at least double precision; the factor is
  /// touched by two matrix products per chunk, `P = X Σx0` (2N²c flops) and the lower half
  /// of `Pᵀ (W P)` (N²c flops), instead of c matrix–vector products and c rank-1 updates
  /// (memory-bound: each streams the N×N factor). Likewise for Σδ. No heap allocation once
  /// a batch of this size has been seen. Exact: k observe() calls.
  /// Throws ShapeError for mismatched shapes.
  Status observe_batch(const Eigen::Ref<const Matrix>& inputs, const Eigen::Ref<const Matrix>& deltas,
                       bool append_one = false) {
    constexpr const char* op = "kfopt::KroneckerFactoredCovariance::observe_batch";
    const Eigen::Index n = sx_.rows(), m = sd_.rows(), k = inputs.rows();
    const Eigen::Index in = append_one ? n - 1 : n;
    detail::require_shape(op, "inputs", inputs, k, in);
    detail::require_shape(op, "deltas", deltas, k, m);
    if (k == 0) return Status::Success;
    if (method_ == KroneckerProjectionMethod::Exact) {
      row_x_.resize(n);
      row_d_.resize(m);
      if (append_one) row_x_(n - 1) = Scalar(1);
      for (Eigen::Index b = 0; b < k; ++b) {
        row_x_.head(in) = inputs.row(b).transpose();
        row_d_ = deltas.row(b).transpose();
        const Status s = observe(row_x_, row_d_);
        if (s != Status::Success) return s;
      }
      return Status::Success;
    }
    const Eigen::Index cap = std::min(k, kObserveChunk);
    if (batch_x_.rows() < cap || batch_x_.cols() != n) {
      batch_x_.resize(cap, n);
      batch_px_.resize(cap, n);
      batch_pd_.resize(cap, m);
      batch_td_.resize(cap, m);
      gram_.resize(cap, cap);
      weights_.resize(cap, cap);
      kx_.resize(cap, cap);
      kd_.resize(cap, cap);
      wx_.resize(cap, cap);
      wd_.resize(cap, cap);
      rx_.resize(cap);
      rd_.resize(cap);
    }
    for (Eigen::Index start = 0; start < k; start += kObserveChunk) {
      const Eigen::Index c = std::min(kObserveChunk, k - start);
      const Status s = observe_chunk(inputs.middleRows(start, c), deltas.middleRows(start, c), append_one);
      if (s != Status::Success) return s;
    }
    return Status::Success;
  }

  /// Drift `Σ ← projection of keep² Σx ⊗ Σδ + η² I ⊗ I` (eq. 27 projected by eq. 32, SI
  /// §4.3.2). keep ∈ (0, 1], η ≥ 0. With `refresh_traces` false (FirstOrder), the traces
  /// Tr(Σx⁻¹), Tr(Σδ⁻¹) of the last refresh are reused. Returns Success (failures of the
  /// exact projection fall back to eq. 32 and are counted). Cost: O(N² + M²) plus, on a
  /// refresh, about (N³ + M³)/2 flops; Exact: about 3.7(N³ + M³).
  Status drift(Scalar keep, Scalar eta, bool refresh_traces = true) {
    if (!(keep > Scalar(0)) || !(eta >= Scalar(0))) {
      throw InvalidInputError("kfopt::KroneckerFactoredCovariance::drift: needs keep > 0 and eta >= 0");
    }
    if (eta == Scalar(0)) {  // X2 = Y2 = 0: the projection is exact and trivial
      sx_ *= keep;
      sd_ *= keep;
      return Status::Success;
    }
    if (method_ == KroneckerProjectionMethod::Exact && exact_drift(keep, eta)) return Status::Success;
    if (refresh_traces || !has_traces_) {
      trace_inv_x_ = inverse_trace(sx_, solvers_.llt_x, inv_col_x_);
      trace_inv_d_ = inverse_trace(sd_, solvers_.llt_d, inv_col_d_);
      has_traces_ = true;
    }
    const double k = static_cast<double>(keep), e = static_cast<double>(eta);
    const double n = static_cast<double>(sx_.rows()), m = static_cast<double>(sd_.rows());
    auto c = detail::first_order_projection_coefficients(e * trace_inv_x_ / k, e * trace_inv_d_ / k, n, m);
    if (c.common < 0.0) {
      c.common = 0.0;
      ++clamped_;
    }
    sx_ *= static_cast<Scalar>(c.common * k);
    sd_ *= static_cast<Scalar>(c.common * k);
    sx_.diagonal().array() += static_cast<Scalar>(c.alpha2 * e);
    sd_.diagonal().array() += static_cast<Scalar>(c.beta2 * e);
    return Status::Success;
  }

  /// `out = Σδ G Σx`, i.e. `vec(out) = (Σx ⊗ Σδ) vec(G)`, for G M×N (`out` must not alias G).
  /// Cost 2MN(M + N) flops; no allocation once `out` has the right size.
  void multiply(const Eigen::Ref<const Matrix>& G, Matrix& out) {
    detail::require_shape("kfopt::KroneckerFactoredCovariance::multiply", "G", G, sd_.rows(), sx_.rows());
    if (product_.rows() != G.rows() || product_.cols() != G.cols()) product_.resize(G.rows(), G.cols());
    if (out.rows() != G.rows() || out.cols() != G.cols()) out.resize(G.rows(), G.cols());
    product_.noalias() = G * sx_;
    out.noalias() = sd_ * product_;
  }

  /// Rescales the factors so that tr(Σx)/N = tr(Σδ)/M (the product is unchanged). O(N + M).
  void balance() {
    const double tx = static_cast<double>(sx_.trace()) / static_cast<double>(sx_.rows());
    const double td = static_cast<double>(sd_.trace()) / static_cast<double>(sd_.rows());
    if (!(tx > 0.0) || !(td > 0.0) || !std::isfinite(tx) || !std::isfinite(td)) return;
    const double c = std::sqrt(td / tx);
    sx_ *= static_cast<Scalar>(c);
    sd_ *= static_cast<Scalar>(1.0 / c);
    if (has_traces_) {  // Tr((cΣx)⁻¹) = Tr(Σx⁻¹)/c
      trace_inv_x_ /= c;
      trace_inv_d_ *= c;
    }
  }

  /// Coefficients or eigenvalues clamped to keep the factors positive definite.
  std::int64_t clamped() const noexcept { return clamped_; }
  /// Exact projections that failed and were replaced by the first-order update.
  std::int64_t fallbacks() const noexcept { return fallbacks_; }

  /// What a later drift() or balance() reads besides the factors (the cached traces of the
  /// inverses, used by a drift that does not refresh them) and the counters: with the
  /// factors, the complete state (for checkpoints).
  struct Cache {
    /// Cached trace of the inverse input factor.
    double trace_inv_x = 0.0;
    /// Cached trace of the inverse output factor.
    double trace_inv_d = 0.0;
    /// Whether the cached traces are valid.
    bool has_traces = false;
    /// Count reported by clamped().
    std::int64_t clamped = 0;
    /// Count reported by fallbacks().
    std::int64_t fallbacks = 0;
  };
  /// The cached traces and counters (for checkpoints).
  Cache cache() const noexcept {
    return {trace_inv_x_, trace_inv_d_, has_traces_, clamped_, fallbacks_};
  }
  /// Restores what cache() returned.
  void set_cache(const Cache& c) noexcept {
    trace_inv_x_ = c.trace_inv_x;
    trace_inv_d_ = c.trace_inv_d;
    has_traces_ = c.has_traces;
    clamped_ = c.clamped;
    fallbacks_ = c.fallbacks;
  }

 private:
  // Tr(S⁻¹) = Σ_i ‖L⁻¹ e_i‖² with S = L Lᵀ; L⁻¹ e_i vanishes above row i, so only the
  // trailing block is solved: N³/6 flops after the N³/3 of the factorization, no heap.
  // A factor that is not numerically positive definite is repaired first (counted).
  double inverse_trace(Matrix& S, Eigen::LLT<Matrix>& llt, Vector& col) {
    llt.compute(S);
    if (llt.info() != Eigen::Success) {
      repair(S);
      llt.compute(S);
    }
    const Eigen::Index n = S.rows();
    double total = 0.0;
    const auto& L = llt.matrixLLT();
    for (Eigen::Index i = 0; i < n; ++i) {
      auto w = col.tail(n - i);
      w.setZero();
      w(0) = Scalar(1);
      L.bottomRightCorner(n - i, n - i).template triangularView<Eigen::Lower>().solveInPlace(w);
      total += static_cast<double>(w.squaredNorm());
    }
    return total;
  }

  using Real = detail::ProjectionReal<Scalar>;
  using RealMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic>;
  using RealVector = Eigen::Matrix<Real, Eigen::Dynamic, 1>;

  /// Observations per chunk of observe_batch: the O(c³) recurrence stays small against the
  /// O(N²c) products, which stay matrix-shaped.
  static constexpr Eigen::Index kObserveChunk = 64;

  // One chunk of observe_batch (FirstOrder), c = inputs.rows() ≤ kObserveChunk. With
  // Σx = gx (Σx0 + Pᵀ Wx P), P = X Σx0 (rows p_b = Σx0 x_b), K = X Σx0 Xᵀ:
  //   u_b = Σx x_b = gx Pᵀ r_b,   r_b = e_b + Wx K e_b,   xᵀ Σx x = gx K_bᵀ r_b,
  // and eq. 32's `Σx ← common Σx + a u uᵀ` becomes gx ← common gx, Wx += (a gx / common) r rᵀ
  // (before gx changes). r_b vanishes below entry b and Wx outside its leading b×b block.
  Status observe_chunk(const Eigen::Ref<const Matrix>& inputs, const Eigen::Ref<const Matrix>& deltas,
                       bool append_one) {
    const Eigen::Index n = sx_.rows(), m = sd_.rows(), c = inputs.rows();
    auto X = batch_x_.topRows(c);
    auto Px = batch_px_.topRows(c);
    auto Pd = batch_pd_.topRows(c);
    if (append_one) {
      X.leftCols(n - 1) = inputs;
      X.col(n - 1).setOnes();
    } else {
      X = inputs;
    }
    Px.setZero();
    detail::tiled_multiply_add(Px, X, sx_, Scalar(1));        // P = X Σx0 (Σx0 symmetric)
    Pd.setZero();
    detail::tiled_multiply_add(Pd, deltas, sd_, Scalar(1));
    auto gram = gram_.topLeftCorner(c, c);
    gram.setZero();
    detail::tiled_multiply_add(gram, Px, X.transpose(), Scalar(1));
    kx_.topLeftCorner(c, c) = gram.template cast<Real>();
    gram.setZero();
    detail::tiled_multiply_add(gram, Pd, deltas.transpose(), Scalar(1));
    kd_.topLeftCorner(c, c) = gram.template cast<Real>();
    wx_.topLeftCorner(c, c).setZero();
    wd_.topLeftCorner(c, c).setZero();
    Real gx = 1, gd = 1;
    bool observed = false;
    const double nd = static_cast<double>(n), md = static_cast<double>(m);
    for (Eigen::Index b = 0; b < c; ++b) {
      rx_.head(b).noalias() = wx_.topLeftCorner(b, b) * kx_.col(b).head(b);
      rd_.head(b).noalias() = wd_.topLeftCorner(b, b) * kd_.col(b).head(b);
      rx_(b) = Real(1);
      rd_(b) = Real(1);
      const double X_b = static_cast<double>(gx * kx_.col(b).head(b + 1).dot(rx_.head(b + 1)));
      const double D_b = static_cast<double>(gd * kd_.col(b).head(b + 1).dot(rd_.head(b + 1)));
      if (!(X_b > 0.0) || !(D_b > 0.0)) continue;  // e = 0: nothing observed
      const double r = X_b * D_b;
      if (!std::isfinite(r)) {
        if (observed) apply_chunk(Px, Pd, c, gx, gd);
        return Status::NumericalIssue;
      }
      const double s = std::sqrt(1.0 + r);
      const auto co = detail::first_order_projection_coefficients(X_b / s, -D_b / s, nd, md);
      const Real ax = static_cast<Real>(co.alpha2 / s / co.common) * gx;
      const Real ad = static_cast<Real>(-co.beta2 / s / co.common) * gd;
      wx_.topLeftCorner(b + 1, b + 1).noalias() += ax * rx_.head(b + 1) * rx_.head(b + 1).transpose();
      wd_.topLeftCorner(b + 1, b + 1).noalias() += ad * rd_.head(b + 1) * rd_.head(b + 1).transpose();
      gx *= static_cast<Real>(co.common);
      gd *= static_cast<Real>(co.common);
      observed = true;
    }
    if (observed) apply_chunk(Px, Pd, c, gx, gd);
    return Status::Success;
  }

  // Σx ← gx (Σx0 + Pxᵀ Wx Px), Σδ ← gd (Σδ0 + Pdᵀ Wd Pd): the lower halves by tiles, then
  // mirrored (as observe()).
  template <typename BlockX, typename BlockD>
  void apply_chunk(const BlockX& Px, const BlockD& Pd, Eigen::Index c, Real gx, Real gd) {
    auto weights = weights_.topLeftCorner(c, c);
    auto Tx = batch_x_.topRows(c);  // X is no longer needed
    auto Td = batch_td_.topRows(c);
    weights = wx_.topLeftCorner(c, c).template cast<Scalar>();
    Tx.setZero();
    detail::tiled_multiply_add(Tx, weights, Px, Scalar(1));
    weights = wd_.topLeftCorner(c, c).template cast<Scalar>();
    Td.setZero();
    detail::tiled_multiply_add(Td, weights, Pd, Scalar(1));
    detail::tiled_lower_outer_add(sx_, Px.transpose(), Tx.transpose(), Scalar(1));
    detail::tiled_lower_outer_add(sd_, Pd.transpose(), Td.transpose(), Scalar(1));
    sx_ *= static_cast<Scalar>(gx);
    sd_ *= static_cast<Scalar>(gd);
    detail::symmetrize_from_lower(sx_);
    detail::symmetrize_from_lower(sd_);
  }

  // Clips the eigenvalues of S at a small positive floor (rare path; allocates).
  void repair(Matrix& S) {
    Eigen::SelfAdjointEigenSolver<Matrix> eig(S);
    Vector values = eig.eigenvalues();
    const Scalar top = std::max(values.cwiseAbs().maxCoeff(), std::numeric_limits<Scalar>::min());
    const Scalar floor = top * Scalar(S.rows()) * ScalarTraits<Scalar>::epsilon();
    values = values.cwiseMax(floor);
    S = eig.eigenvectors() * values.asDiagonal() * eig.eigenvectors().transpose();
    detail::symmetrize(S);
    ++clamped_;
  }

  // Exact projection of Σx ⊗ Σδ − (u uᵀ) ⊗ (v vᵀ)/s². False (and counted) on failure.
  bool exact_observe(double s) {
    const Scalar inv_s = static_cast<Scalar>(1.0 / s);
    x2_.noalias() = (inv_s * u_) * u_.transpose();
    y2_.noalias() = (-inv_s * v_) * v_.transpose();
    detail::symmetrize(x2_);
    detail::symmetrize(y2_);
    return take_projection(sx_, sd_);
  }

  // Exact projection of keep² Σx ⊗ Σδ + η² I ⊗ I. False (and counted) on failure.
  bool exact_drift(Scalar keep, Scalar eta) {
    x1_ = keep * sx_;
    y1_ = keep * sd_;
    x2_.setIdentity();
    x2_ *= eta;
    y2_.setIdentity();
    y2_ *= eta;
    return take_projection(x1_, y1_);
  }

  bool take_projection(const Matrix& X1, const Matrix& Y1) {
    if (!solvers_.projector) solvers_.projector = std::make_unique<KroneckerKlProjection<Scalar>>();
    KroneckerKlProjection<Scalar>& projector = *solvers_.projector;
    projector.compute(X1, Y1, x2_, y2_);
    if (!projector.has_result()) {
      ++fallbacks_;
      return false;
    }
    sx_ = projector.A();
    sd_ = projector.B();
    has_traces_ = false;
    return true;
  }

  // The decompositions used as workspaces. They are not part of the value: a copy starts
  // with fresh ones (and Eigen decompositions that were never computed are never copied,
  // which would read their uninitialized status).
  struct Solvers {
    detail::InitializedLlt<Matrix> llt_x, llt_d;
    std::unique_ptr<KroneckerKlProjection<Scalar>> projector;  // Exact only
    Solvers() = default;
    Solvers(const Solvers&) {}
    Solvers(Solvers&& other) noexcept : projector(std::move(other.projector)) {}
    Solvers& operator=(const Solvers&) { return *this; }
    Solvers& operator=(Solvers&& other) noexcept {
      projector = std::move(other.projector);
      return *this;
    }
  };

  KroneckerProjectionMethod method_ = KroneckerProjectionMethod::FirstOrder;
  Matrix sx_, sd_;            // Σx, Σδ
  Vector u_, v_;              // Σx x, Σδ δ
  Vector inv_col_x_, inv_col_d_;
  Matrix product_;            // G Σx
  Vector row_x_, row_d_;      // one observation of observe_batch (Exact)
  Matrix batch_x_, batch_px_, batch_pd_, batch_td_, gram_, weights_;  // observe_batch chunks
  RealMatrix kx_, kd_, wx_, wd_;                                      // Gram matrices, W
  RealVector rx_, rd_;
  Matrix x1_, x2_, y1_, y2_;  // exact projection operands
  Solvers solvers_;
  double trace_inv_x_ = 0.0, trace_inv_d_ = 0.0;
  bool has_traces_ = false;
  std::int64_t clamped_ = 0;
  std::int64_t fallbacks_ = 0;
};

}  // namespace kfopt
