#pragma once
/// \file filter_diagnostics.hpp
/// \brief What the Bayesian-filter example (bayesian_filters.cpp) needs besides the MLP
/// toolkit: the per-parameter Fisher sample `e` of a mini-batch from per-example gradients,
/// a running estimate of ⟨e²⟩, and the steady-state quantities of Aitchison (2018) that tell
/// in which regime a filter runs.
///
/// **The mini-batch Fisher sample.** A dense layer `s = W a + b` sees, for example b of a
/// mini-batch, the per-example gradient `∂ℓ_b/∂W_ji = g_bj a_bi`. Treating the examples as
/// separate observations, the diagonal of the batch's likelihood precision is
///
///     Λ_ji = Σ_b (g_bj a_bi)² = ((g∘g)ᵀ (a∘a))_ji,        Λ_j(bias) = Σ_b g_bj²,
///
/// one product of the size of the gradient's own (2·m·in·out flops). The filters take it as
/// `e = sqrt(Λ)` (FisherEstimate::Supplied): `e²` is the diagonal of `Σ_b e_b e_bᵀ`, the
/// likelihood precision the Kronecker-factored filter uses in full. With targets sampled from
/// the model (Mlp's Fisher pass) it is an unbiased estimate of the diagonal of the batch's
/// Fisher information (§2.1 and §2.2.8 of the paper); with the data's targets it is the
/// empirical Fisher.
///
/// **Regimes** (paper §2.1.1–2.1.2; kfopt/optim/bayes_filter/filter_rmsprop.hpp, filter_adam.hpp):
/// - filter RMSProp relaxes to `σ²_post = η/sqrt⟨e²⟩` over about `1/(2η sqrt⟨e²⟩)` steps;
/// - filter Adam's weight moves by `y · η⟨g⟩/sqrt⟨e²⟩` per step, where `y` solves
///   `1 = 2y(1 + sqrt(2xy))/x + y²` with `x = η sqrt⟨e²⟩/η_p`: `y → 1` (Adam) only for
///   `x ≫ 1`, `y ≈ x/2` for `x ≪ 1`.
///
/// This is example code, not part of the kfopt library.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfopt_examples {

/// Square root of the per-example squared gradients of a dense layer, summed over the
/// mini-batch and multiplied by `scale`:
///
///     e_W = scale · sqrt((g∘g)ᵀ (a∘a))      (out×in)
///     e_b = scale · sqrt(Σ_rows g∘g)         (out)
///
/// `a` (m×in) is the layer's input and `g` (m×out) the per-example gradients of the loss with
/// respect to its pre-activation (Mlp's DenseLayer::a and ::g). `square_a`, `square_g` are
/// scratch matrices (resized as needed). Throws std::invalid_argument on mismatched rows.
template <typename Scalar>
void per_example_fisher_root(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& a,
                             const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& g,
                             Scalar scale,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& e_weight,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& e_bias,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& square_a,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& square_g) {
  if (a.rows() != g.rows()) {
    throw std::invalid_argument("per_example_fisher_root: a has " + std::to_string(a.rows()) +
                                " rows but g has " + std::to_string(g.rows()));
  }
  square_a = a.cwiseAbs2();
  square_g = g.cwiseAbs2();
  e_weight.noalias() = square_g.transpose() * square_a;
  e_weight = scale * e_weight.cwiseSqrt();
  e_bias = scale * square_g.colwise().sum().transpose().cwiseSqrt();
}

/// Bias-corrected exponential average of e² per parameter (one buffer per parameter block),
/// for reporting the ⟨e²⟩ that a filter's steady state depends on.
template <typename Scalar>
class SquareAverage {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// `decay` β ∈ [0, 1): v ← β v + (1 − β) e².
  explicit SquareAverage(double decay = 0.99) : decay_(decay) {
    if (!(decay >= 0.0 && decay < 1.0)) {
      throw std::invalid_argument("SquareAverage: decay must be in [0, 1), got " +
                                  std::to_string(decay));
    }
  }

  /// Adds one sample e of block `i` (blocks are created on first use, shapes must then stay).
  void add(std::size_t i, const Eigen::Ref<const Matrix>& e) {
    if (i >= average_.size()) average_.resize(i + 1);
    Matrix& v = average_[i];
    if (v.size() == 0) v = Matrix::Zero(e.rows(), e.cols());
    if (v.rows() != e.rows() || v.cols() != e.cols()) {
      throw std::invalid_argument("SquareAverage::add: block " + std::to_string(i) +
                                  " changed shape");
    }
    const Scalar b = static_cast<Scalar>(decay_);
    v = b * v + (Scalar(1) - b) * e.cwiseAbs2();
  }

  /// Call once per step, after the step's add() calls (drives the bias correction).
  void next_step() {
    weight_ = decay_ * weight_ + (1.0 - decay_);
  }

  /// The median over all parameters of sqrt(⟨e²⟩) (bias-corrected); parameters whose
  /// average is exactly 0 (never-active inputs such as constant border pixels) are left out.
  /// Returns NaN when nothing was recorded.
  double median_root() const {
    std::vector<double> values;
    for (const auto& v : average_) {
      for (Eigen::Index k = 0; k < v.size(); ++k) {
        const double x = static_cast<double>(v.data()[k]);
        if (x > 0.0) values.push_back(std::sqrt(x / weight_));
      }
    }
    if (values.empty() || weight_ <= 0.0) return std::nan("");
    const std::size_t mid = values.size() / 2;
    std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid),
                     values.end());
    return values[mid];
  }

 private:
  double decay_;
  double weight_ = 0.0;
  std::vector<Matrix> average_;
};

/// Filter RMSProp's steady-state posterior variance η/sqrt⟨e²⟩ (paper §2.1.1) with the
/// prior's weight decay kept (SI §4.1): 2σ²/(1 + sqrt(1 + 4σ⁴⟨e²⟩/η²)); it tends to
/// η/sqrt⟨e²⟩ for σ² → ∞ and to σ² (SGD with step σ²) when σ² sqrt⟨e²⟩ ≪ η.
inline double filter_steady_variance(double eta, double sigma2, double root_mean_square) {
  const double r = 2.0 * sigma2 * root_mean_square / eta;
  return 2.0 * sigma2 / (1.0 + std::hypot(1.0, r));
}

/// The number of steps over which filter RMSProp averages e² on its way to the steady state:
/// 1/(2η sqrt⟨e²⟩) (filter_rmsprop.hpp). Infinite for η = 0 (natural gradient: the filter
/// never forgets).
inline double filter_averaging_steps(double eta, double root_mean_square) {
  return 1.0 / (2.0 * eta * root_mean_square);
}

/// x = η sqrt⟨e²⟩/η_p, the strength of the data relative to the momentum's prior in filter
/// Adam (§2.1.2): Adam is recovered for x ≫ 1.
inline double filter_adam_data_strength(double eta, double momentum_rate, double root_mean_square) {
  return eta * root_mean_square / momentum_rate;
}

/// The fraction y ∈ (0, 1) of Adam's step η⟨g⟩/sqrt⟨e²⟩ that filter Adam takes in its steady
/// state (σ² → ∞, η_w = 0): the root of 1 = 2y(1 + sqrt(2xy))/x + y², found by bisection
/// (the right side increases with y). y ≈ 1 − O(sqrt(2/x)) for x ≫ 1, y ≈ x/2 for x ≪ 1.
/// Throws std::invalid_argument for x ≤ 0 or non-finite x.
inline double filter_adam_step_fraction(double x) {
  if (!(x > 0.0) || !std::isfinite(x)) {
    throw std::invalid_argument("filter_adam_step_fraction: x must be positive and finite");
  }
  auto residual = [x](double y) { return 2.0 * y * (1.0 + std::sqrt(2.0 * x * y)) / x + y * y - 1.0; };
  double lo = 0.0, hi = 1.0;  // residual(0) = −1 < 0 < residual(1)
  for (int i = 0; i < 200 && hi - lo > 1e-15 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (residual(mid) < 0.0 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

}  // namespace kfopt_examples
