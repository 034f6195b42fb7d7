#pragma once
/// \file truncated_bptt.hpp
/// \brief Truncated backpropagation through time for any kfopt RecurrentModel (the concept
/// of kfopt/models/tanh_rnn_cell.hpp): the gradient of a squared-error loss over a window of
/// the last L time steps, started from a stored hidden state treated as a constant.
///
/// For a window with inputs u_1..u_L, targets y_1..y_L and start state s_0:
///
///     s_i = f(s_{i−1}, θ, u_i),   z_i = h(s_i, θ, u_i),
///     E(θ) = (1/|C|) Σ_{i ∈ C} ½ ‖z_i − y_i‖²,     C = {first_counted + 1, …, L}
///
/// and the backward pass runs through the model's own Jacobians (the ones RTRL uses):
///
///     δz_i = (z_i − y_i)/|C| (i ∈ C, else 0),   g_i = (∂h/∂s)_iᵀ δz_i + (∂f/∂s)_{i+1}ᵀ g_{i+1}
///     ∇E = Σ_i (∂h/∂θ)_iᵀ δz_i + (∂f/∂θ)_iᵀ g_i
///
/// The truncation drops ∂s_0/∂θ: with the full history instead of a window, this is the
/// gradient RTRL carries forward (Ollivier 2018, recurrent case, A_t = ∂s_t/∂θ), and the
/// tests check both against each other and against finite differences. Cost per window
/// O(L n d) with the dense Jacobians of the concept (n state size, d parameters), memory
/// O(L n d); no allocation once the first window of the largest L has been seen.

#include <Eigen/Core>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfopt_examples {

/// Gradient of the windowed squared-error loss of a `RecurrentModel`; see the file comment.
template <typename RecurrentModel>
class TruncatedBptt {
 public:
  using Scalar = typename RecurrentModel::Scalar;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  explicit TruncatedBptt(RecurrentModel model) : model_(std::move(model)) {
    const Eigen::Index n = model_.state_dim(), k = model_.output_dim(), d = model_.param_dim();
    z_.resize(k);
    dz_.resize(k);
    Hs_.resize(k, n);
    Htheta_.resize(k, d);
    g_.resize(n);
    carry_.resize(n);
  }

  /// Fills `grad` (d) with ∇E at θ and returns E.
  /// \param s_start        s_0 (n), a constant of the window
  /// \param inputs         u_1..u_L as the columns of an m×L matrix
  /// \param targets        y_1..y_L as the columns of a k×L matrix
  /// \param first_counted  steps 1..first_counted are run but not scored (0 ≤ it < L)
  /// Throws std::invalid_argument on shapes that disagree.
  Scalar gradient(const Eigen::Ref<const Vector>& theta, const Eigen::Ref<const Vector>& s_start,
                  const Eigen::Ref<const Matrix>& inputs, const Eigen::Ref<const Matrix>& targets,
                  Eigen::Index first_counted, Eigen::Ref<Vector> grad) {
    const Eigen::Index n = model_.state_dim(), k = model_.output_dim(), d = model_.param_dim();
    const Eigen::Index L = inputs.cols();
    if (theta.size() != d || s_start.size() != n || inputs.rows() != model_.input_dim() ||
        targets.rows() != k || targets.cols() != L || grad.size() != d || L < 1 ||
        first_counted < 0 || first_counted >= L) {
      throw std::invalid_argument("TruncatedBptt::gradient: shapes disagree (theta " +
                                  std::to_string(theta.size()) + ", window " + std::to_string(L) +
                                  ", first_counted " + std::to_string(first_counted) + ")");
    }
    reserve(L);
    const Scalar weight = Scalar(1) / Scalar(L - first_counted);

    // Forward: states and the transition Jacobians of every step.
    Scalar loss = Scalar(0);
    for (Eigen::Index i = 0; i < L; ++i) {
      const auto& prev = i == 0 ? s_start : Eigen::Ref<const Vector>(states_[i - 1]);
      model_.transition(prev, theta, inputs.col(i), states_[i], Fs_[i], Ftheta_[i]);
    }
    // Backward, newest step first.
    grad.setZero();
    carry_.setZero();  // (∂f/∂s)_{i+1}ᵀ g_{i+1}
    for (Eigen::Index i = L - 1; i >= 0; --i) {
      g_ = carry_;
      if (i >= first_counted) {
        model_.observe(states_[i], theta, inputs.col(i), z_, Hs_, Htheta_);
        dz_ = z_ - targets.col(i);
        loss += Scalar(0.5) * weight * dz_.squaredNorm();
        dz_ *= weight;
        grad.noalias() += Htheta_.transpose() * dz_;
        g_.noalias() += Hs_.transpose() * dz_;
      }
      grad.noalias() += Ftheta_[i].transpose() * g_;
      carry_.noalias() = Fs_[i].transpose() * g_;
    }
    return loss;
  }

  /// Output z (k) of the model at state s, input u (no Jacobian needed by the caller).
  void output(const Eigen::Ref<const Vector>& s, const Eigen::Ref<const Vector>& theta,
              const Eigen::Ref<const Vector>& u, Eigen::Ref<Vector> z) {
    model_.observe(s, theta, u, z, Hs_, Htheta_);
  }

  /// Next state s' = f(s, θ, u) (the forward pass of the online run).
  void advance(const Eigen::Ref<const Vector>& s, const Eigen::Ref<const Vector>& theta,
               const Eigen::Ref<const Vector>& u, Eigen::Ref<Vector> next) {
    reserve(1);
    model_.transition(s, theta, u, next, Fs_[0], Ftheta_[0]);
  }

  const RecurrentModel& model() const noexcept { return model_; }

 private:
  void reserve(Eigen::Index L) {
    const Eigen::Index n = model_.state_dim(), d = model_.param_dim();
    while (static_cast<Eigen::Index>(states_.size()) < L) {
      states_.emplace_back(n);
      Fs_.emplace_back(n, n);
      Ftheta_.emplace_back(n, d);
    }
  }

  RecurrentModel model_;
  std::vector<Vector> states_;
  std::vector<Matrix> Fs_, Ftheta_;
  Vector z_, dz_, g_, carry_;
  Matrix Hs_, Htheta_;
};

}  // namespace kfopt_examples
