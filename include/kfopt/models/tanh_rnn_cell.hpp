#pragma once
/// \file tanh_rnn_cell.hpp
/// \brief A tanh recurrent cell as a state-space model s_t = f(s_{t−1}, θ, u_t),
/// z_t = h(s_t, θ, u_t), with the Jacobians RTRL and the joint EKF need.
///
///     s_t = tanh(W s_{t−1} + U u_t + b),      z_t = V s_t + c
///
/// θ = [vec(W); vec(U); b; vec(V); c] (column-major vec), d = n² + n m + n + k n + k for
/// state size n, input size m and output size k. z_t is the output handed to an
/// observation model (a Gaussian mean, logits, a log-rate, …).
///
/// ## The RecurrentModel concept (what Rtrl, NaturalGradientRtrl and
/// JointExtendedKalmanFilter require)
/// ```
/// using Scalar; using Vector; using Matrix;
/// Eigen::Index state_dim() const, input_dim() const, output_dim() const, param_dim() const;
/// void transition(const Eigen::Ref<const Vector>& s_prev, const Eigen::Ref<const Vector>& theta,
///                 const Eigen::Ref<const Vector>& u, Eigen::Ref<Vector> s,
///                 Eigen::Ref<Matrix> ds_prev /* n×n */, Eigen::Ref<Matrix> dtheta /* n×d */) const;
/// void observe(const Eigen::Ref<const Vector>& s, const Eigen::Ref<const Vector>& theta,
///              const Eigen::Ref<const Vector>& u, Eigen::Ref<Vector> z,
///              Eigen::Ref<Matrix> ds /* k×n */, Eigen::Ref<Matrix> dtheta /* k×d */) const;
/// ```
/// Outputs are written into preallocated storage; no allocation per call.
/// Cost: O(n² + n m) for the values, O(n d) to write the dense Jacobians.

#include <Eigen/Core>
#include <cmath>
#include <sstream>

#include "kfopt/core/error.hpp"

namespace kfopt {

/// tanh RNN cell with a linear read-out; see the file comment.
template <typename Scalar_>
class TanhRnnCell {
 public:
  /// The scalar type (float or double).
  using Scalar = Scalar_;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Read-only view of a column-major block of θ as a matrix.
  using ConstMatrixMap = Eigen::Map<const Matrix>;

  /// State size n ≥ 1, input size m ≥ 0, output size k ≥ 1.
  TanhRnnCell(Eigen::Index state_dim, Eigen::Index input_dim, Eigen::Index output_dim)
      : n_(state_dim), m_(input_dim), k_(output_dim) {
    if (n_ < 1 || m_ < 0 || k_ < 1) {
      std::ostringstream os;
      os << "kfopt::TanhRnnCell: needs state_dim >= 1, input_dim >= 0, output_dim >= 1, got "
         << n_ << ", " << m_ << ", " << k_;
      throw InvalidInputError(os.str());
    }
  }

  /// State size n.
  Eigen::Index state_dim() const noexcept { return n_; }
  /// Input size m.
  Eigen::Index input_dim() const noexcept { return m_; }
  /// Output size k.
  Eigen::Index output_dim() const noexcept { return k_; }
  /// Size of θ = (W, U, b, V, c): n² + nm + n + kn + k.
  Eigen::Index param_dim() const noexcept { return n_ * n_ + n_ * m_ + n_ + k_ * n_ + k_; }

  /// Offsets of the blocks in θ.
  Eigen::Index offset_W() const noexcept { return 0; }
  /// Offset of U (n×m) in θ.
  Eigen::Index offset_U() const noexcept { return n_ * n_; }
  /// Offset of b (n) in θ.
  Eigen::Index offset_b() const noexcept { return n_ * n_ + n_ * m_; }
  /// Offset of V (k×n) in θ.
  Eigen::Index offset_V() const noexcept { return offset_b() + n_; }
  /// Offset of c (k) in θ.
  Eigen::Index offset_c() const noexcept { return offset_V() + k_ * n_; }

  /// Read-only views of the blocks of θ (no copy).
  ConstMatrixMap W(const Eigen::Ref<const Vector>& theta) const {
    return ConstMatrixMap(theta.data() + offset_W(), n_, n_);
  }
  /// Read-only view of U (n×m) in θ.
  ConstMatrixMap U(const Eigen::Ref<const Vector>& theta) const {
    return ConstMatrixMap(theta.data() + offset_U(), n_, m_);
  }
  /// Read-only view of V (k×n) in θ.
  ConstMatrixMap V(const Eigen::Ref<const Vector>& theta) const {
    return ConstMatrixMap(theta.data() + offset_V(), k_, n_);
  }

  /// s = tanh(W s_prev + U u + b), ds_prev = diag(1 − s²) W, dtheta = ∂s/∂θ (n×d).
  void transition(const Eigen::Ref<const Vector>& s_prev, const Eigen::Ref<const Vector>& theta,
                  const Eigen::Ref<const Vector>& u, Eigen::Ref<Vector> s,
                  Eigen::Ref<Matrix> ds_prev, Eigen::Ref<Matrix> dtheta) const {
    const auto Wm = W(theta);
    s.noalias() = Wm * s_prev;
    if (m_ > 0) s.noalias() += U(theta) * u;
    s += theta.segment(offset_b(), n_);
    for (Eigen::Index i = 0; i < n_; ++i) s(i) = std::tanh(s(i));
    for (Eigen::Index j = 0; j < n_; ++j) {
      for (Eigen::Index i = 0; i < n_; ++i) ds_prev(i, j) = (Scalar(1) - s(i) * s(i)) * Wm(i, j);
    }
    dtheta.setZero();
    for (Eigen::Index i = 0; i < n_; ++i) {
      const Scalar slope = Scalar(1) - s(i) * s(i);
      for (Eigen::Index j = 0; j < n_; ++j) dtheta(i, offset_W() + j * n_ + i) = slope * s_prev(j);
      for (Eigen::Index j = 0; j < m_; ++j) dtheta(i, offset_U() + j * n_ + i) = slope * u(j);
      dtheta(i, offset_b() + i) = slope;
    }
  }

  /// z = V s + c, ds = V, dtheta = ∂z/∂θ (k×d).
  void observe(const Eigen::Ref<const Vector>& s, const Eigen::Ref<const Vector>& theta,
               const Eigen::Ref<const Vector>& /*u*/, Eigen::Ref<Vector> z, Eigen::Ref<Matrix> ds,
               Eigen::Ref<Matrix> dtheta) const {
    const auto Vm = V(theta);
    z.noalias() = Vm * s;
    z += theta.segment(offset_c(), k_);
    ds = Vm;
    dtheta.setZero();
    for (Eigen::Index i = 0; i < k_; ++i) {
      for (Eigen::Index j = 0; j < n_; ++j) dtheta(i, offset_V() + j * k_ + i) = s(j);
      dtheta(i, offset_c() + i) = Scalar(1);
    }
  }

 private:
  Eigen::Index n_, m_, k_;
};

}  // namespace kfopt
