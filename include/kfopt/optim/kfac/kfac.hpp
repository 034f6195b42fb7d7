#pragma once
/// \file kfac.hpp
/// \brief K-FAC for networks of dense layers (Martens & Grosse 2015), with the practical
/// additions of Ba, Grosse & Martens 2017 (KL clipping) and adaptive Levenberg–Marquardt
/// damping (Martens & Grosse 2015, §6.5).
///
/// Each registered layer `s = W a + b` has a Kronecker-factored Fisher block `A ⊗ G`
/// (curvature/kronecker_block.hpp). One step, for the gradient `∇ = [∇W ∇b]` of the mean
/// loss of a mini-batch:
///
///     Z_l  = ∇_l + wd · [W_l b_l]                         (L2 weight decay, optional)
///     Δ_l  = F̂_l⁻¹ Z_l                                     (damped block inverse, eq. 6 of
///                                                            the RNN K-FAC paper with T = 1)
///     ν    = min(1, sqrt(κ / (η² Σ_l ⟨Δ_l, Z_l⟩)))          (KL clipping, Ba et al. 2017 §5)
///     m_l ← μ m_l + ν Δ_l ;   [W_l b_l] ← [W_l b_l] − η m_l  (momentum)
///
/// Statistics (A, G) are taken every `statistics_period` steps (the caller asks
/// `wants_statistics()`), the spectra are refreshed every `inverse_period` steps and are
/// stale in between, as in the papers' experiments. Any damping λ applies to the cached
/// spectra without a new factorization, so adaptive damping costs nothing extra: after a
/// step the caller may report the loss before and after it, and λ follows the
/// Levenberg–Marquardt rule on the reduction ratio ρ = (h(θ+δ) − h(θ)) / (M(δ) − M(0)) of
/// the quadratic model `M(δ) − M(0) = ⟨∇, δ⟩ + ½ δᵀ (F̂ + λI) δ` (F̂δ by the factors,
/// no inverse): ρ > 3/4 → λ ← ω λ; ρ < 1/4 → λ ← λ / ω, applied every T₁-th report.
///
/// **Statistics must come from the model's own predictions** for `A ⊗ G` to approximate the
/// Fisher: compute the `g` passed to record_statistics by back-propagating a target sampled
/// from the model's predictive distribution. Passing the training targets' `g` gives the
/// empirical Fisher (an explicit, documented choice of the caller; usually worse).
///
/// Cost per step: per layer, four products (2·out·in·(out+in) flops) for the inverse, plus
/// a rank-k statistics update when asked, plus one eigendecomposition per dense factor every
/// `inverse_period` steps. No allocation after the first step.
///
/// Compile cost: the layers' blocks sit behind a virtual per-layer interface
/// (kfac_layer_block.hpp), so a program that registers only dense layers does not compile
/// the recurrent block; the member functions that instantiate the blocks are defined out of
/// the class, so that with the compiled library (CMake target kfopt::kfopt_compiled, which
/// defines KFOPT_COMPILED) Kfac<float> and Kfac<double> are not instantiated in the user's
/// translation unit at all (bench/compile_cost.sh).
///
/// **Delayed and background refresh** (`KfacOptions::refresh_delay` d > 0, as in the RNN
/// K-FAC paper's experiments and Ba, Grosse & Martens 2017, which compute the inverses
/// asynchronously). The refresh due at step k (k a multiple of `inverse_period`) is computed
/// from the factors as they are when step k begins — the statistics recorded before it —
/// and is first used by step k + d: steps k … k + d − 1 keep the previous spectra (and their
/// damped inverses), step k + d and the following ones until the next swap use the new
/// ones. "Step k" counts successful steps (State::counters.steps): a refused step moves
/// nothing. With `refresh_in_background` (the default) the refresh of step k — a copy of
/// each layer's block, refreshed and prepared for the damping step k + d will use — runs on
/// one thread of its own while steps k … k + d − 1 run; step k + d waits for it if it is not
/// done. Otherwise it is computed at step k on the caller's thread. Both give the same
/// parameters bit for bit whatever the timing or the thread count, since the schedule fixes
/// which statistics each refresh sees and which step first uses it. A layer that has no
/// spectra yet (the first refresh, a layer registered later) is refreshed at once, as with
/// d = 0. The background thread's own products run on it alone (kfopt::set_threads counts
/// the step's threads), so with `set_threads(1)` a step uses two cores while a refresh is
/// under way. Memory: one more copy of every layer's block (its factors, spectra or
/// snapshots and inverses), kept between refreshes so that starting one allocates nothing.

#include <algorithm>
#include <cmath>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kfopt/core/gradient_clipping.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/schedule.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/curvature/kronecker_block.hpp"
#include "kfopt/curvature/recurrent_kronecker_block.hpp"
#include "kfopt/linalg/threads.hpp"
#include "kfopt/optim/kfac/kfac_layer_block.hpp"
#include "kfopt/optim/kfac/kfac_recurrent_layer_block.hpp"

namespace kfopt {

/// Hyperparameters of Kfac. The defaults of η, λ and κ are the one setting that trains all
/// three tasks of the examples (a Fashion-MNIST classifier and deep autoencoder, a
/// character-level LSTM) to within about 10% of the best loss of each, measured by
/// examples/sweep_kfac_defaults.sh (examples/README.md, "K-FAC's defaults").
struct KfacOptions {
  /// Learning rate η > 0 (the step before KL clipping). Default 0.05.
  double learning_rate = 0.05;
  /// Momentum μ ∈ [0, 1) on the (clipped) preconditioned gradient. Default 0.9.
  double momentum = 0.9;
  /// Initial Tikhonov damping λ > 0. Default 0.1.
  double damping = 0.1;
  /// How λ enters each block's inverse. Default Factored (π-damping).
  DampingStyle damping_style = DampingStyle::Factored;
  /// How the inverses are prepared at each refresh: Eigendecomposition (any λ for free,
  /// both damping styles) or Cholesky (factored damping only; several times cheaper per
  /// refresh, refactorized when λ changes). Default Eigendecomposition.
  InverseMethod inverse_method = InverseMethod::Eigendecomposition;
  /// Lower bound of λ under adaptive damping, and the smallest factored shift. Range
  /// [0, damping]. Default 1e-8.
  double min_damping = 1e-8;
  /// Upper bound of λ under adaptive damping, ≥ damping. Default 1e4.
  double max_damping = 1e4;
  /// L2 weight decay wd ≥ 0, added to the gradient before preconditioning. Default 0.
  double weight_decay = 0.0;
  /// Decay β ∈ (0, 1] of the factors' moving averages. Default 0.95.
  double decay = 0.95;
  /// Statistics every T_stats ≥ 1 steps. Default 1.
  int statistics_period = 1;
  /// Spectra ("inverses") refreshed every T_inv ≥ 1 steps. Default 20.
  int inverse_period = 20;
  /// KL-clipping bound κ ≥ 0 on η² Σ⟨Δ, ∇⟩ (0 disables clipping). Default 1e-2.
  double kl_clip = 1e-2;
  /// Adapt λ from report_loss() by the Levenberg–Marquardt rule. Default off.
  bool adaptive_damping = false;
  /// ω ∈ (0, 1): λ ← ωλ on a good step (ρ > 3/4), λ/ω on a bad one (ρ < 1/4). Martens &
  /// Grosse use (19/20)^5 applied every 5 steps; applied every step, 0.95 is comparable.
  double damping_adaptation = 0.95;
  /// T₁ ≥ 1: λ is adapted on every T₁-th report_loss (Martens & Grosse 2015 §6.5 use 5), so
  /// that λ — and with it any cached damped inverse — changes at most every T₁ steps.
  /// Default 5.
  int damping_adaptation_period = 5;
  /// Factor of the learning rate per step (core/schedule.hpp): step t (from 0) uses
  /// η · learning_rate_schedule(t), before KL clipping. Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Factor of the damping per step: step t preconditions with λ · damping_schedule(t), λ
  /// being State::damping (set_damping changes it). Not with adaptive_damping, which sets λ
  /// itself. A schedule that changes λ every step costs a damped inverse per step with
  /// InverseMethod::Cholesky, and the Option 1/2 preparation of every recurrent layer per
  /// step; with eigendecompositions a dense layer's new λ is free. A piecewise-constant
  /// schedule (Schedule::step_decay) pays only where it changes. Default: constant.
  Schedule damping_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp) of the raw gradients [∇W ∇b]
  /// of all layers, before weight decay and preconditioning: when their norm exceeds
  /// c = max_gradient_norm ≥ 0 they are scaled by c / ‖∇‖. Default 0: off.
  double max_gradient_norm = 0.0;
  /// Steps d between the start of a refresh and its first use, 0 ≤ d ≤ inverse_period: the
  /// refresh due at step k is computed from the factors at step k and swapped in at step
  /// k + d (see kfac.hpp, "Delayed and background refresh"). Not with the caller-supplied
  /// refreshes of step_with_installed_refresh and step_with_preconditioner. Default 0: step
  /// k uses the refresh it starts.
  int refresh_delay = 0;
  /// With refresh_delay > 0, whether the delayed refresh runs on a background thread (true)
  /// or at step k on the caller's thread (false); the parameters are the same bit for bit.
  /// Default true.
  bool refresh_in_background = true;

  /// Throws HyperparameterError if a field is out of its range.
  void validate() const {
    constexpr const char* a = "kfopt::KfacOptions";
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(!adaptive_damping || damping_schedule.is_constant(), a,
                                   "damping_schedule", damping_schedule.description(),
                                   "constant when adaptive_damping is on (it sets the damping)");
    detail::require_hyperparameter(learning_rate > 0.0 && std::isfinite(learning_rate), a,
                                   "learning_rate", learning_rate, "(0, inf)");
    detail::require_hyperparameter(momentum >= 0.0 && momentum < 1.0, a, "momentum", momentum, "[0, 1)");
    detail::require_hyperparameter(damping > 0.0 && std::isfinite(damping), a, "damping", damping, "(0, inf)");
    detail::require_hyperparameter(min_damping >= 0.0 && min_damping <= damping, a, "min_damping",
                                   min_damping, "[0, damping]");
    detail::require_hyperparameter(max_damping >= damping && std::isfinite(max_damping), a,
                                   "max_damping", max_damping, "[damping, inf)");
    detail::require_hyperparameter(weight_decay >= 0.0 && std::isfinite(weight_decay), a,
                                   "weight_decay", weight_decay, "[0, inf)");
    detail::require_hyperparameter(decay > 0.0 && decay <= 1.0, a, "decay", decay, "(0, 1]");
    detail::require_hyperparameter(statistics_period >= 1, a, "statistics_period", statistics_period, "[1, inf)");
    detail::require_hyperparameter(inverse_period >= 1, a, "inverse_period", inverse_period, "[1, inf)");
    detail::require_hyperparameter(refresh_delay >= 0 && refresh_delay <= inverse_period, a,
                                   "refresh_delay", refresh_delay, "[0, inverse_period]");
    detail::require_hyperparameter(kl_clip >= 0.0 && std::isfinite(kl_clip), a, "kl_clip",
                                   kl_clip, "[0, inf)");
    detail::require_hyperparameter(damping_adaptation > 0.0 && damping_adaptation < 1.0, a,
                                   "damping_adaptation", damping_adaptation, "(0, 1)");
    detail::require_hyperparameter(damping_adaptation_period >= 1, a, "damping_adaptation_period",
                                   damping_adaptation_period, "[1, inf)");
    detail::require_hyperparameter(
        !(damping_style == DampingStyle::Exact && inverse_method == InverseMethod::Cholesky), a,
        "inverse_method", "Cholesky", "{Eigendecomposition} when damping_style is Exact");
  }
};

/// Per-layer choices when registering a dense layer.
struct DenseLayerOptions {
  /// Diagonal A: exact for one-hot inputs (an embedding layer), RNN K-FAC §4.1.
  FactorStructure input_factor = FactorStructure::Dense;
  /// Diagonal G: an approximation for a very wide output layer (RNN K-FAC §4.1).
  FactorStructure gradient_factor = FactorStructure::Dense;
};

/// Per-layer choices when registering a weight shared across time steps (RNN K-FAC,
/// Martens, Ba & Johnson 2018): which approximation of the Fisher of `Σ_t w_t`.
struct RecurrentLayerOptions {
  /// Independent (eq. 6), Option1 (eq. 8) or Option2 (eq. 9). Default Option2. With
  /// exact damping only Independent is defined (the options damp V0 only).
  RecurrentApproximation approximation = RecurrentApproximation::Option2;
};

/// K-FAC over registered dense and recurrent layers (see kfac.hpp for the algorithm). A
/// model may mix both; an LSTM's four gate matrices are four recurrent layers.
template <typename Scalar>
class Kfac {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// A weight or bias in caller storage of any kind (core/parameter_block.hpp).
  using Parameter = ParameterBlock<Scalar>;

  /// What the optimizer carries between steps besides the layers' factors.
  struct State {
    StepCounters counters;                ///< steps taken and steps skipped for NaN/Inf
    double damping = 0.0;                 ///< current λ
    std::int64_t inverse_refreshes = 0;   ///< times the spectra were recomputed
    std::int64_t singular_skips = 0;      ///< steps skipped because a damped block was singular
    std::int64_t skipped_statistics = 0;  ///< statistics batches refused for NaN/Inf or overflow
    double last_clip_scale = 1.0;         ///< ν of the last step
    double last_reduction_ratio = std::numeric_limits<double>::quiet_NaN();  ///< ρ of the last report
    double pending_model_change = 0.0;    ///< M(δ) − M(0) of the last step (for report_loss)
    std::int64_t loss_reports = 0;        ///< report_loss calls that formed a ratio
    /// The step that swaps in the delayed refresh under way (KfacOptions::refresh_delay),
    /// or −1 when none is.
    std::int64_t refresh_swap_step = -1;
  };

  /// An optimizer with no layers yet; throws HyperparameterError for bad options.
  explicit Kfac(KfacOptions options = {}) : options_(options) {
    options_.validate();
    state_.damping = options_.damping;
  }

  /// Copies the layers' blocks (the registered storage is shared, as before: the copy
  /// updates the same parameters).
  Kfac(const Kfac& other);
  /// As above, by assignment.
  Kfac& operator=(const Kfac& other);
  /// Moves the layers and state (a refresh under way in the background moves with them).
  Kfac(Kfac&&) = default;
  /// As above, by assignment (after waiting for this optimizer's own background refresh).
  Kfac& operator=(Kfac&&) = default;
  /// Waits for a refresh under way in the background.
  ~Kfac() = default;

  /// Registers a dense layer `s = W a + b`: W out×in, b out, and their gradients of the same
  /// shapes, all in caller storage (Eigen objects, kept by object address: see
  /// core/parameter_block.hpp). Returns the layer id for record_statistics.
  std::size_t add_dense_layer(const std::string& name, Matrix& W, const Matrix& dW, Vector& b,
                              const Vector& db, DenseLayerOptions layer = {}) {
    return add_dense_layer(name, Parameter(name + ".weight", W, dW), Parameter(name + ".bias", b, db),
                           layer);
  }
  /// Registers a dense layer without bias `s = W a`.
  std::size_t add_dense_layer(const std::string& name, Matrix& W, const Matrix& dW,
                              DenseLayerOptions layer = {}) {
    return add_dense_layer(name, Parameter(name + ".weight", W, dW), layer);
  }
  /// Registers a dense layer from storage of any kind (core/parameter_block.hpp): W (out×in)
  /// and b (out×1) as ParameterBlocks over raw column- or row-major buffers, Eigen maps or
  /// Eigen objects, e.g. `ParameterBlock<float>::row_major("fc.weight", w, dw, out, in)` for
  /// a C-ordered buffer. The blocks are renamed "<name>.weight" and "<name>.bias".
  std::size_t add_dense_layer(const std::string& name, Parameter W, Parameter b,
                              DenseLayerOptions layer = {}) {
    return add_layer(name, std::move(W), &b, layer);
  }
  /// As above, without bias.
  std::size_t add_dense_layer(const std::string& name, Parameter W, DenseLayerOptions layer = {}) {
    return add_layer(name, std::move(W), nullptr, layer);
  }

  /// Registers a weight shared across the time steps of a sequence, `s_t = W a_t + b`
  /// (RNN K-FAC). Its statistics come from record_sequence_statistics.
  std::size_t add_recurrent_layer(const std::string& name, Matrix& W, const Matrix& dW, Vector& b,
                                  const Vector& db, RecurrentLayerOptions layer = {}) {
    return add_recurrent_layer(name, Parameter(name + ".weight", W, dW),
                               Parameter(name + ".bias", b, db), layer);
  }
  /// Registers a shared weight without bias, `s_t = W a_t`.
  std::size_t add_recurrent_layer(const std::string& name, Matrix& W, const Matrix& dW,
                                  RecurrentLayerOptions layer = {}) {
    return add_recurrent_layer(name, Parameter(name + ".weight", W, dW), layer);
  }
  /// Registers a shared weight from storage of any kind, as add_dense_layer.
  std::size_t add_recurrent_layer(const std::string& name, Parameter W, Parameter b,
                                  RecurrentLayerOptions layer = {}) {
    return add_recurrent(name, std::move(W), &b, layer);
  }
  /// As above, without bias.
  std::size_t add_recurrent_layer(const std::string& name, Parameter W,
                                  RecurrentLayerOptions layer = {}) {
    return add_recurrent(name, std::move(W), nullptr, layer);
  }

  /// Number of registered layers.
  std::size_t num_layers() const noexcept { return layers_.size(); }
  /// The Fisher block of a dense layer (InvalidInputError for a recurrent one).
  const KroneckerBlock<Scalar>& block(std::size_t id) const {
    const KroneckerBlock<Scalar>* b = layers_.at(id).block->dense();
    if (b == nullptr) throw InvalidInputError("kfopt::Kfac::block: layer " + std::to_string(id) + " is recurrent");
    return *b;
  }
  /// The Fisher block of a recurrent layer (InvalidInputError for a dense one).
  const RecurrentKroneckerBlock<Scalar>& recurrent_block(std::size_t id) const {
    const RecurrentKroneckerBlock<Scalar>* b = layers_.at(id).block->recurrent();
    if (b == nullptr) throw InvalidInputError("kfopt::Kfac::recurrent_block: layer " + std::to_string(id) + " is dense");
    return *b;
  }

  /// What check_statistics_scale() found.
  struct StatisticsScaleCheck {
    /// ρ minimizing ‖[dW db] − ρ M‖ (Frobenius), M = [gᵀa gᵀ1] / k: 1 when g has the scale
    /// record_statistics expects, k when g was divided by the batch size.
    double ratio = 0.0;
    /// ⟨[dW db], M⟩ / (‖[dW db]‖ ‖M‖): 1 when g are the training targets' per-example
    /// gradients of the loss whose gradient is registered; lower for other targets or losses.
    double cosine = 0.0;
    /// Whether ρ is within a factor 2 of 1 (with a cosine near 1, g then has the right scale).
    bool scale_matches = false;
  };
  /// Checks the scale of a batch's g (see record_statistics) against the gradient registered
  /// for dense layer `id`: pass the batch's inputs `a` (k × in) and g for the *training*
  /// targets, after the storage holds that batch's mean-loss gradient dW (and db). Changes
  /// nothing. Cost: one out × k × in product (about the layer's own weight gradient): a check
  /// for the first steps of a new training loop, not for every step. Throws
  /// InvalidInputError for a recurrent layer or an unknown id, ShapeError for shapes that do
  /// not match the layer.
  StatisticsScaleCheck check_statistics_scale(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                              const Eigen::Ref<const Matrix>& g) const {
    constexpr const char* op = "kfopt::Kfac::check_statistics_scale";
    const Layer& layer = const_layer_at(op, id);
    if (layer.block->dense() == nullptr) {
      throw InvalidInputError(std::string(op) + ": layer '" + layer.name +
                              "' is recurrent (the check covers dense layers)");
    }
    const auto& wb = params_[layer.weight_index];
    const Eigen::Index in = wb.cols(), out = wb.rows();
    if (a.cols() != in || g.cols() != out || a.rows() != g.rows() || a.rows() == 0) {
      throw ShapeError(std::string(op) + " (layer '" + layer.name + "'): W is " +
                       detail::shape_string(out, in) + " but a is " + detail::shape_of(a) +
                       " and g is " + detail::shape_of(g) + " (need k × " + std::to_string(in) +
                       " and k × " + std::to_string(out) + ", k > 0)");
    }
    const double k = static_cast<double>(a.rows());
    const Eigen::MatrixXd gd = g.template cast<double>();
    Eigen::MatrixXd M(out, in + (layer.bias_index >= 0 ? 1 : 0)), D(M.rows(), M.cols());
    M.leftCols(in) = gd.transpose() * a.template cast<double>() / k;
    wb.matrices([&](const auto&, const auto& dW) { D.leftCols(in) = dW.template cast<double>(); });
    if (layer.bias_index >= 0) {
      M.col(in) = gd.colwise().sum().transpose() / k;
      D.col(in) = params_[static_cast<std::size_t>(layer.bias_index)].gradient().col(0).template cast<double>();
    }
    StatisticsScaleCheck check;
    const double mm = M.squaredNorm(), dd = D.squaredNorm(), dm = (D.array() * M.array()).sum();
    check.ratio = mm > 0.0 ? dm / mm : std::numeric_limits<double>::quiet_NaN();
    check.cosine = mm > 0.0 && dd > 0.0 ? dm / std::sqrt(mm * dd) : std::numeric_limits<double>::quiet_NaN();
    check.scale_matches = check.ratio > 0.5 && check.ratio < 2.0;
    return check;
  }

  /// Whether this step should record statistics (every statistics_period steps).
  bool wants_statistics() const noexcept {
    return state_.counters.steps % options_.statistics_period == 0;
  }

  /// Records one batch of a layer's inputs `a` (k × in) and per-example pre-activation
  /// gradients `g` (k × out; model-sampled targets for the true Fisher). **Scale of g:** row i
  /// is the gradient of example i's own loss w.r.t. the layer's outputs, *not* divided by the
  /// batch size k (with the training targets, the mean-loss gradient is `dW = gᵀa / k`); a g
  /// divided by k makes A ⊗ G k² times too small, which the damping then dominates.
  /// check_statistics_scale() tells the two apart. NaN/Inf → the
  /// batch is refused (NonFiniteInput); a finite batch whose outer products would overflow a
  /// factor (one entry of 1e300 in double, 1e30 in float) → refused (Overflow); either way
  /// counted in State::skipped_statistics, both factors unchanged.
  Status record_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                           const Eigen::Ref<const Matrix>& g);

  /// One dense layer's batch for record_statistics(batches): its id and its `a` and `g`, as
  /// record_statistics(layer, a, g) takes them. The matrices must outlive the call.
  struct StatisticsBatch {
    std::size_t layer;           ///< the dense layer's id
    Eigen::Ref<const Matrix> a;  ///< k × in inputs
    Eigen::Ref<const Matrix> g;  ///< k × out per-example pre-activation gradients
  };

  /// Records one batch for each of several dense layers at once, e.g. after a backward pass:
  /// the result is that of record_statistics(b.layer, b.a, b.g) for every b in order, bit
  /// for bit (each batch is taken or refused on its own, and the statuses come back in the
  /// order of `batches`), but the layers' updates run side by side on kfopt's threads
  /// (linalg/threads.hpp), largest first by their cost k·(in′² + out²), when there are
  /// several and none holds more than half of the work; otherwise one after another, each
  /// with all the threads for its own products. Every argument is checked before any layer
  /// changes: an unknown id, a recurrent layer, a layer named twice or a shape mismatch
  /// throws (InvalidInputError, ShapeError naming the layer and the shapes) and no factor
  /// changes. Costs no more than the calls one by one on one thread.
  std::vector<Status> record_statistics(const std::vector<StatisticsBatch>& batches);

  /// Records a batch of m sequences for a recurrent layer, time-major (row t·m + i is step t
  /// of sequence i): inputs `a` (T_max·m × in), per-step pre-activation gradients `g`
  /// (T_max·m × out; model-sampled targets for the true Fisher), real steps t < lengths(i).
  Status record_sequence_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                    const Eigen::Ref<const Matrix>& g,
                                    const Eigen::Ref<const Eigen::VectorXi>& lengths);

  /// As above with a T_max × m mask of real steps.
  Status record_sequence_statistics(
      std::size_t id, const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g,
      const Eigen::Ref<const Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic>>& mask);

  // --- statistics as contributions (data-parallel K-FAC, kfopt::mpi::DistributedKfac) ----

  /// The empty statistics contribution of layer `id` (KfacStatisticsContribution): a
  /// batch's statistics as sums over its examples, which add over batches, so that
  /// processes holding parts of a global batch can sum theirs and each take the sum as one
  /// batch (record_statistics(id, contribution)) with the factors one process would have
  /// formed from the global batch, to rounding. `max_length` (≥ 1): the longest sequence a
  /// recurrent layer's length counts hold (ignored for a dense layer).
  std::unique_ptr<KfacStatisticsContribution<Scalar>> empty_contribution(
      std::size_t id, Eigen::Index max_length = 1) const {
    return const_layer_at("kfopt::Kfac::empty_contribution", id).block->empty_contribution(max_length);
  }
  /// Adds a dense layer's batch (as record_statistics; k ≥ 0 rows) to `c`, a contribution
  /// of that layer. NaN/Inf → NonFiniteInput (only the non-finite count is added). Changes
  /// nothing in the optimizer.
  Status add_statistics_contribution(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                     const Eigen::Ref<const Matrix>& g,
                                     KfacStatisticsContribution<Scalar>& c) const {
    constexpr const char* op = "kfopt::Kfac::add_statistics_contribution";
    const KroneckerBlock<Scalar>* block = const_layer_at(op, id).block->dense();
    if (block == nullptr) {
      throw InvalidInputError(std::string(op) + ": layer " + std::to_string(id) +
                              " is recurrent; use add_sequence_statistics_contribution");
    }
    return block->add_contribution(
        a, g, detail::contribution_of<typename KroneckerBlock<Scalar>::Contribution>(op, c));
  }
  /// Adds a recurrent layer's batch of sequences (as record_sequence_statistics with
  /// lengths; m ≥ 0 sequences) to `c`, a contribution of that layer.
  Status add_sequence_statistics_contribution(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                              const Eigen::Ref<const Matrix>& g,
                                              const Eigen::Ref<const Eigen::VectorXi>& lengths,
                                              KfacStatisticsContribution<Scalar>& c) const {
    constexpr const char* op = "kfopt::Kfac::add_sequence_statistics_contribution";
    const RecurrentKroneckerBlock<Scalar>* block = const_layer_at(op, id).block->recurrent();
    if (block == nullptr) {
      throw InvalidInputError(std::string(op) + ": layer " + std::to_string(id) +
                              " is dense; use add_statistics_contribution");
    }
    return block->add_contribution(
        a, g, lengths,
        detail::contribution_of<typename RecurrentKroneckerBlock<Scalar>::Contribution>(op, c));
  }
  /// What record_statistics(id, c) would return, without changing anything: Success,
  /// NotComputed (an empty contribution: nothing to take), NonFiniteInput or Overflow.
  Status admit_statistics(std::size_t id, const KfacStatisticsContribution<Scalar>& c) const {
    return const_layer_at("kfopt::Kfac::admit_statistics", id).block->admit(c);
  }
  /// Takes a (possibly summed over processes) contribution as one batch of layer `id`'s
  /// statistics. Refused as record_statistics (NonFiniteInput, Overflow; counted in
  /// State::skipped_statistics, nothing changes); NotComputed for an empty contribution.
  Status record_statistics(std::size_t id, const KfacStatisticsContribution<Scalar>& c) {
    return counted(layer_at("kfopt::Kfac::record_statistics", id).block->update_statistics(c));
  }
  // --- the refresh as parts (data-parallel K-FAC splits them among processes) -----------

  /// Whether the next step refreshes layer `id` (on schedule, every inverse_period steps, or
  /// because it has never been refreshed).
  bool refresh_pending(std::size_t id) const {
    return state_.counters.steps % options_.inverse_period == 0 ||
           !const_layer_at("kfopt::Kfac::refresh_pending", id).block->has_inverse();
  }
  /// Number of independent parts of layer `id`'s refresh (0: not split; the step refreshes
  /// it itself), their costs in flops, and their computation into `result` without changing
  /// anything (KroneckerBlock::compute_refresh_part).
  int refresh_part_count(std::size_t id) const {
    return const_layer_at("kfopt::Kfac::refresh_part_count", id).block->refresh_part_count();
  }
  /// See refresh_part_count.
  double refresh_part_cost(std::size_t id, int k) const {
    return const_layer_at("kfopt::Kfac::refresh_part_cost", id).block->refresh_part_cost(k);
  }
  /// To be called by every process that shares layer `id`'s refresh parts, before them: it
  /// brings the layer's statistics into the form the parts read (finishing lazy updates, or
  /// with InverseMethod::Cholesky taking the O(n²) snapshot), so that every process's state
  /// stays bit for bit the same whichever computed which part.
  void begin_refresh_parts(std::size_t id) {
    layer_at("kfopt::Kfac::begin_refresh_parts", id).block->begin_refresh_parts();
  }
  /// See refresh_part_count. A Cholesky part is the damped inverse for the current damping
  /// (State::damping), which the next step uses.
  Status compute_refresh_part(std::size_t id, int k, Matrix& result) const {
    return const_layer_at("kfopt::Kfac::compute_refresh_part", id)
        .block->compute_refresh_part(k, current_damping(), result);
  }
  /// Installs the results of all of layer `id`'s refresh parts (computed here or by another
  /// process from the same statistics and damping) as its refresh.
  void install_refresh(std::size_t id, const std::vector<Matrix>& results) {
    layer_at("kfopt::Kfac::install_refresh", id).block->install_refresh(results, current_damping());
  }
  /// Number of independent parts of the damping-dependent preparation that layer `id`'s
  /// next apply would run for the current damping (State::damping), after the refresh (0:
  /// nothing to prepare, or a layer that does not split it; a recurrent layer with Option 1
  /// or 2 or factored damping has 2: RecurrentKroneckerBlock::preparation_part_count),
  /// their costs in flops, and their computation into `result` without changing anything.
  /// Ask after installing a refresh: the parts depend on the refreshed spectra.
  int preparation_part_count(std::size_t id) const {
    return const_layer_at("kfopt::Kfac::preparation_part_count", id)
        .block->preparation_part_count(current_damping());
  }
  /// See preparation_part_count.
  double preparation_part_cost(std::size_t id, int k) const {
    return const_layer_at("kfopt::Kfac::preparation_part_cost", id).block->preparation_part_cost(k);
  }
  /// See preparation_part_count.
  Status compute_preparation_part(std::size_t id, int k, Matrix& result) const {
    return const_layer_at("kfopt::Kfac::compute_preparation_part", id)
        .block->compute_preparation_part(k, current_damping(), result);
  }
  /// Installs the results of all of layer `id`'s preparation parts (computed here or by
  /// another process from the same refresh and damping) as its prepared inverse; the next
  /// step then does not prepare it again. Returns the combination's status (on failure
  /// nothing changes and the step prepares, and refuses, as it would have).
  Status install_preparation(std::size_t id, const std::vector<Matrix>& results) {
    return layer_at("kfopt::Kfac::install_preparation", id)
        .block->install_preparation(results, current_damping());
  }
  /// step() for a caller that has already refreshed, by install_refresh, every pending layer
  /// whose refresh has parts: those layers are not refreshed again (one that still has no
  /// inverse makes the step return NumericalIssue); the others are refreshed as in step().
  Status step_with_installed_refresh() { return step_impl(true, nullptr); }

  // --- the preconditioning supplied by the caller (data-parallel K-FAC that broadcasts
  // preconditioned gradients computes each layer's on one process) ---------------------

  /// `precondition(id, Z, direction)`: writes `F̂⁻¹ Z` of layer `id` into `direction` (Z is
  /// `[∇W ∇b]` with the weight decay added, rows × cols of the layer) and returns Success,
  /// or the status that refuses the step.
  using Preconditioner = std::function<Status(std::size_t id, const Matrix& gradient, Matrix& direction)>;
  /// step() with every layer's preconditioned gradient supplied by `precondition`, called
  /// once per layer in registration order, instead of computed by the layer's block. No
  /// layer is refreshed (the caller refreshes the layers it preconditions itself, with
  /// refresh_layer); everything else is step()'s: the finiteness guards, the weight decay
  /// in Z, KL clipping, momentum, the all-or-nothing commit, the counters (a status other
  /// than Success from `precondition` refuses the step as a singular block does, counted in
  /// State::singular_skips). With adaptive damping, the quadratic model uses the blocks'
  /// own products (Kfac::multiply's), as step() does.
  Status step_with_preconditioner(const Preconditioner& precondition) {
    return step_impl(false, &precondition);
  }
  /// Refreshes layer `id` now, as a step does when it is due (refresh_pending): on failure
  /// the previous refresh stays in use and the status is returned.
  Status refresh_layer(std::size_t id) {
    return layer_at("kfopt::Kfac::refresh_layer", id).block->refresh();
  }
  /// `direction = F̂⁻¹ Z` for layer `id` with its current refresh and the current damping
  /// (the block's apply_inverse): Success, NotComputed before a refresh, NonFiniteInput,
  /// or NumericalIssue for a singular damped block (direction untouched). Throws ShapeError
  /// for a Z of the wrong shape.
  Status precondition(std::size_t id, const Matrix& gradient, Matrix& direction) {
    return layer_at("kfopt::Kfac::precondition", id)
        .block->apply_inverse(gradient, current_damping(), direction);
  }
  /// Whether layer `id` is recurrent (add_recurrent_layer).
  bool is_recurrent(std::size_t id) const {
    return const_layer_at("kfopt::Kfac::is_recurrent", id).block->recurrent() != nullptr;
  }
  /// Whether layer `id` has been refreshed at least once (its preconditioner exists).
  bool has_inverse(std::size_t id) const {
    return const_layer_at("kfopt::Kfac::has_inverse", id).block->has_inverse();
  }

  /// The registered parameters and gradients (the caller's storage).
  const ParameterSet<Scalar>& parameters() const noexcept { return params_; }

  /// One K-FAC step from the gradients in the registered storage. All or nothing: a
  /// non-finite gradient or parameter value (NonFiniteInput), a step whose preconditioned
  /// gradient, momentum or new parameters would not be finite (Overflow) or a singular
  /// damped block (NumericalIssue) leaves every parameter, the momentum and the factors
  /// unchanged (a refusal for non-finite input is a bit-for-bit no-op; a later refusal keeps
  /// the spectra refreshed on schedule, which depend only on the factors). Refusals for
  /// non-finite input or overflow are counted in State::counters.skipped_nonfinite. KL
  /// clipping holds even when Σ⟨Δ, Z⟩ overflows (it is then formed with a common scale).
  /// Throws InvalidInputError if a layer has never received statistics.
  Status step() { return step_impl(false, nullptr); }

  /// K-FAC as a preconditioner in front of another optimizer (as kfac-pytorch puts its
  /// preconditioner in front of torch.optim.SGD): everything step() does up to the clipped
  /// natural-gradient direction — the refresh on schedule, `Δ = F̂⁻¹ Z` per layer with Z the
  /// gradient (+ weight decay · parameters when options.weight_decay > 0), KL clipping
  /// `ν Δ` with the learning rate of the options — and then writes `ν Δ` back into the
  /// registered gradient storage (dW, db) instead of updating momentum and parameters. The
  /// parameters and Kfac's momentum are left alone; the step counter advances (it drives the
  /// refresh and statistics schedules). A first-order optimizer stepping on those gradients
  /// then takes the K-FAC step: Sgd with momentum μ and learning rate η gives Kfac::step()
  /// with momentum μ and learning rate η. The registered gradients must be writable objects
  /// (they are declared const because step() only reads them). All or nothing as step():
  /// NonFiniteInput, Overflow or NumericalIssue leave the gradients, factors and counters
  /// unchanged (refusals counted as by step()). Throws InvalidInputError with adaptive
  /// damping (its quadratic model needs the update, which the other optimizer makes).
  Status precondition_gradients() {
    if (options_.adaptive_damping) {
      throw InvalidInputError("kfopt::Kfac::precondition_gradients: adaptive damping needs the "
                              "step's update for its quadratic model; turn it off to use K-FAC "
                              "as a preconditioner");
    }
    return step_impl(false, nullptr, true);
  }

  /// Reports the mini-batch loss before and after the last step (same batch) for adaptive
  /// damping; returns the reduction ratio ρ (NaN if it could not be formed). A no-op unless
  /// options.adaptive_damping.
  double report_loss(double loss_before, double loss_after) {
    if (!options_.adaptive_damping) return std::numeric_limits<double>::quiet_NaN();
    const double predicted = state_.pending_model_change;
    state_.pending_model_change = 0.0;
    if (!(predicted < 0.0) || !std::isfinite(loss_before) || !std::isfinite(loss_after)) {
      return std::numeric_limits<double>::quiet_NaN();
    }
    const double rho = (loss_after - loss_before) / predicted;
    state_.last_reduction_ratio = rho;
    if (++state_.loss_reports % options_.damping_adaptation_period != 0) return rho;
    if (rho > 0.75) state_.damping *= options_.damping_adaptation;
    if (rho < 0.25) state_.damping /= options_.damping_adaptation;
    state_.damping = std::min(options_.max_damping, std::max(options_.min_damping, state_.damping));
    return rho;
  }

  /// The hyperparameters in use.
  const KfacOptions& options() const noexcept { return options_; }
  /// The optimizer state (damping, counters and diagnostics of the last step).
  const State& state() const noexcept { return state_; }
  /// The current damping λ (the base of KfacOptions::damping_schedule: step t uses
  /// λ · damping_schedule(t)).
  double damping() const noexcept { return state_.damping; }
  /// Sets λ directly; must be within [min_damping, max_damping].
  void set_damping(double lambda) {
    detail::require_hyperparameter(lambda >= options_.min_damping && lambda <= options_.max_damping &&
                                       lambda > 0.0,
                                   "kfopt::Kfac::set_damping", "damping", lambda,
                                   "[min_damping, max_damping], > 0");
    state_.damping = lambda;
  }
  /// Sets the learning rate; throws HyperparameterError if it is out of range.
  void set_learning_rate(double lr) {
    KfacOptions o = options_;
    o.learning_rate = lr;
    o.validate();
    options_ = o;
  }

  /// One layer's part of the state: its momentum and its block's state (statistics and
  /// what the last refresh left; see KfacDenseBlockState and KfacRecurrentBlockState).
  struct LayerState {
    std::unique_ptr<detail::KfacBlockState<Scalar>> block;  ///< the Fisher block's state
    Matrix momentum;                                         ///< m (rows × cols of [W b])
    /// With refresh_delay > 0: whether a delayed refresh of this layer is under way, and the
    /// refreshed copy's state (the layer's own when none is).
    bool has_pending_refresh = false;
    std::unique_ptr<detail::KfacBlockState<Scalar>> pending_refresh;  ///< see above
  };

  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::Kfac": the
  /// counters "steps", "skipped_nonfinite", "inverse_refreshes", "singular_skips",
  /// "skipped_statistics", "loss_reports", the current λ "damping", "last_clip_scale",
  /// "last_reduction_ratio" and "pending_model_change" (what report_loss reads); per layer,
  /// named after it, "<layer>/momentum" and the block's state: for a dense layer the factors
  /// "<layer>/A", "<layer>/G" as they are held — the factor is `A_scale · A`, `A_scale ∈
  /// [1/4096, 1]` being the decay not yet folded in — with their weights and update counts,
  /// and the spectra (or, with InverseMethod::Cholesky, the factor snapshots) the next steps
  /// read; for a recurrent layer A0, A1, G0, G1, the length histogram and the last
  /// refresh's snapshot (KfacRecurrentBlockState). Hyperparameters: KfacOptions's fields
  /// (learning_rate restored on load; damping_style, inverse_method, adaptive_damping
  /// structural; the others continuous) and each layer's structure ("<layer>.kind", ...).
  /// The explicit damped inverses and prepared operators are not stored: a load rebuilds
  /// them, so that N steps, save, load into a Kfac with the same layers and M more steps
  /// equal N + M uninterrupted steps bit for bit. With refresh_delay > 0 (structural) the
  /// refresh under way is part of the state: "refresh_swap_step" and, per layer,
  /// "<layer>/has_pending_refresh" and the refreshed copy's block state under
  /// "<layer>/pending_refresh/" (the layer's own block state when none is pending), so that
  /// a save between a refresh's start and its swap resumes bit for bit too; taking the state
  /// then waits for a background refresh to finish. Taking the state changes nothing.
  /// The weights are the model's (parameters_state_dict).
  StateDict state_dict() const;
  /// Restores a state_dict() of a Kfac with the same layers (names, kinds, shapes) and
  /// options; all-or-nothing: everything is checked (entries, factors symmetric positive
  /// semi-definite, spectra, counters; the refresh snapshots decomposed) before anything is
  /// written, and errors name "kfopt::Kfac::load_state_dict", the layer and the entry.
  void load_state_dict(const StateDict& dict, const LoadOptions& options = {});
  /// The layers' part of the state, as state_dict() stores it.
  std::vector<LayerState> layer_states() const {
    if (pending_) pending_->wait();
    std::vector<LayerState> out;
    for (std::size_t id = 0; id < layers_.size(); ++id) {
      const Layer& l = layers_[id];
      out.push_back(LayerState{l.block->save_state(), l.momentum, false, nullptr});
      if (options_.refresh_delay == 0) continue;
      const Block* refreshed = pending_ ? pending_->block_of(id) : nullptr;
      out.back().has_pending_refresh = refreshed != nullptr;
      out.back().pending_refresh = (refreshed != nullptr ? refreshed : l.block.get())->save_state();
    }
    return out;
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, KfacOptions& o, std::vector<LayerState>& ls) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    std::int64_t statistics_period = o.statistics_period, inverse_period = o.inverse_period,
                 adaptation_period = o.damping_adaptation_period, refresh_delay = o.refresh_delay;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("momentum", o.momentum, kC);
    io.hyperparameter("damping", o.damping, kC);
    io.hyperparameter("damping_style", o.damping_style);
    io.hyperparameter("inverse_method", o.inverse_method);
    io.hyperparameter("min_damping", o.min_damping, kC);
    io.hyperparameter("max_damping", o.max_damping, kC);
    io.hyperparameter("weight_decay", o.weight_decay, kC);
    io.hyperparameter("decay", o.decay, kC);
    io.hyperparameter("statistics_period", statistics_period, kC);
    io.hyperparameter("inverse_period", inverse_period, kC);
    io.hyperparameter("kl_clip", o.kl_clip, kC);
    io.hyperparameter("adaptive_damping", o.adaptive_damping);
    io.hyperparameter("damping_adaptation", o.damping_adaptation, kC);
    io.hyperparameter("damping_adaptation_period", adaptation_period, kC);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    if (o.refresh_delay > 0) io.hyperparameter("refresh_delay", refresh_delay);  // d = 0: as before
    io.counters(s.counters);
    io.real("damping", s.damping, EntryConstraint::Nonnegative);
    io.integer("inverse_refreshes", s.inverse_refreshes);
    io.integer("singular_skips", s.singular_skips);
    io.integer("skipped_statistics", s.skipped_statistics);
    io.real("last_clip_scale", s.last_clip_scale);
    io.real("last_reduction_ratio", s.last_reduction_ratio, EntryConstraint::Unchecked);
    io.real("pending_model_change", s.pending_model_change);
    io.integer("loss_reports", s.loss_reports);
    if (o.refresh_delay > 0) io.integer("refresh_swap_step", s.refresh_swap_step, -1);
    for (std::size_t i = 0; i < ls.size(); ++i) {
      io.enter(layers_[i].name);
      io.array("momentum", ls[i].momentum);
      ls[i].block->fields(io);
      if (o.refresh_delay > 0) {
        io.boolean("has_pending_refresh", ls[i].has_pending_refresh);
        io.enter("pending_refresh");
        ls[i].pending_refresh->fields(io);
        io.leave();
      }
      io.leave();
    }
  }

 private:
  /// The damping every block's inverse uses at the next step: λ · damping_schedule(t).
  BlockDamping<Scalar> current_damping() const {
    const double lambda = options_.damping_schedule.scaled("kfopt::Kfac::step", "damping",
                                                           state_.damping, state_.counters.steps);
    return BlockDamping<Scalar>{options_.damping_style, static_cast<Scalar>(lambda),
                                static_cast<Scalar>(options_.min_damping)};
  }

  using Block = detail::KfacLayerBlock<Scalar>;

  struct Layer {
    std::string name;
    std::unique_ptr<Block> block;
    std::size_t weight_index;          // into params_
    std::ptrdiff_t bias_index;         // into params_, or −1
    Matrix gradient;                   // Z = [∇W ∇b] (+ weight decay)
    Matrix direction;                  // Δ = F̂⁻¹ Z, then δ
    Matrix momentum;                   // m
    Matrix curvature_product;          // F̂ δ
    // With refresh_delay > 0: the block copy the next delayed refresh is computed in (its
    // storage kept from the last one).
    std::unique_ptr<Block> refresh_copy;
  };

  // F̂ δ into curvature_product (the recurrent block reports a Status; a failure there
  // only weakens the damping model, so it counts as a zero curvature term).
  static void multiply(Layer& layer) {
    if (layer.block->multiply(layer.direction, layer.curvature_product) != Status::Success) {
      layer.curvature_product.setZero(layer.direction.rows(), layer.direction.cols());
    }
  }

  Status counted(Status s) {
    if (s == Status::NonFiniteInput || s == Status::Overflow) ++state_.skipped_statistics;
    return s;
  }

  RecurrentKroneckerBlock<Scalar>& recurrent_at(const char* op, std::size_t id) {
    RecurrentKroneckerBlock<Scalar>* block = layer_at(op, id).block->recurrent();
    if (block == nullptr) {
      throw InvalidInputError(std::string(op) + ": layer " + std::to_string(id) +
                              " is dense; use record_statistics");
    }
    return *block;
  }

  std::size_t add_layer(const std::string& name, Parameter W, const Parameter* b,
                        DenseLayerOptions layer_options);
  std::size_t add_recurrent(const std::string& name, Parameter W, const Parameter* b,
                            RecurrentLayerOptions layer_options);
  std::size_t register_layer(const char* op, const std::string& name, Parameter W,
                             const Parameter* b, std::unique_ptr<Block> block);

  // Runs f(k) for every k of `ids` (layer ids): on kfopt's threads, largest layer first, when
  // there are several and no layer holds more than half of their work (rows³ + cols³ of its
  // block, a refresh's cost); otherwise in order on this thread, so that one dominant layer's
  // own products can use the threads (linalg/threads.hpp). Each f(k) must touch only layer
  // ids[k]; the results do not depend on the choice (every kernel is bit-identical for any
  // thread count).
  template <typename F>
  void layers_in_parallel(const std::vector<std::size_t>& ids, F&& f) {
    std::vector<double> work(ids.size());
    for (std::size_t k = 0; k < ids.size(); ++k) {
      const double r = static_cast<double>(layers_[ids[k]].block->rows());
      const double c = static_cast<double>(layers_[ids[k]].block->cols());
      work[k] = r * r * r + c * c * c;
    }
    jobs_in_parallel(work, std::forward<F>(f));
  }

  // Runs f(k) for k < work.size() as layers_in_parallel does, `work[k]` being job k's cost.
  template <typename F>
  static void jobs_in_parallel(const std::vector<double>& work, F&& f) {
    double total = 0.0, largest = 0.0;
    for (double w : work) {
      total += w;
      largest = std::max(largest, w);
    }
    if (work.size() < 2 || kfopt::threads() < 2 || largest > 0.5 * total) {
      for (std::size_t k = 0; k < work.size(); ++k) f(k);
      return;
    }
    std::vector<std::size_t> order(work.size());
    for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t x, std::size_t y) { return work[x] > work[y]; });
    detail::ThreadPool::instance().run(static_cast<std::ptrdiff_t>(order.size()), kfopt::threads(),
                                       [&](std::ptrdiff_t k) { f(order[static_cast<std::size_t>(k)]); });
  }

  const Layer& const_layer_at(const char* op, std::size_t id) const {
    return const_cast<Kfac*>(this)->layer_at(op, id);
  }
  Layer& layer_at(const char* op, std::size_t id) {
    if (id >= layers_.size()) {
      throw InvalidInputError(std::string(op) + ": no layer with id " + std::to_string(id) +
                              " (" + std::to_string(layers_.size()) + " registered)");
    }
    return layers_[id];
  }

  Status step_impl(bool installed_refresh, const Preconditioner* precondition,
                   bool only_precondition = false);
  void write_gradient(const Layer& layer);
  void gather(Layer& layer, Scalar wd, Scalar clip);
  void scatter(Layer& layer, Scalar lr);
  bool updated_parameters_finite(const Layer& layer, Scalar lr) const;

  // ν = min(1, √(κ / (η² Σ⟨Δ, Z⟩))) (1 without clipping). When the sum overflows (finite
  // but huge gradients), it is formed as c² Σ⟨Δ/c, Z/c⟩ with c the largest |entry|, so the
  // clip still applies instead of being skipped.
  double clip_scale(double inner, double lr) const {
    if (options_.kl_clip <= 0.0) return 1.0;
    if (std::isfinite(inner)) {
      return inner > 0.0 ? std::min(1.0, std::sqrt(options_.kl_clip / (lr * lr * inner))) : 1.0;
    }
    double c = 0.0;
    for (const auto& layer : layers_) {
      c = std::max({c, static_cast<double>(layer.direction.cwiseAbs().maxCoeff()),
                    static_cast<double>(layer.gradient.cwiseAbs().maxCoeff())});
    }
    double scaled = 0.0;  // Σ⟨Δ/c, Z/c⟩, at most the number of entries
    for (const auto& layer : layers_) {
      scaled += (layer.direction.template cast<double>() / c)
                    .cwiseProduct(layer.gradient.template cast<double>() / c)
                    .sum();
    }
    if (!(scaled > 0.0)) return 1.0;
    return std::min(1.0, std::sqrt(options_.kl_clip) / (lr * c * std::sqrt(scaled)));
  }

  // A delayed refresh under way (KfacOptions::refresh_delay): copies of the layers' blocks,
  // refreshed and prepared on a thread of their own (or already, on the caller's). The job
  // touches nothing but the copies.
  struct PendingRefresh {
    std::int64_t started = 0;                    // the step whose factors it uses
    std::vector<std::size_t> ids;                // the layers it refreshes
    std::vector<std::unique_ptr<Block>> blocks;  // their refreshed copies, in ids' order
    std::future<void> job;                       // valid while the background job may run
    std::exception_ptr error;                    // what the job threw

    PendingRefresh() = default;
    PendingRefresh(const PendingRefresh&) = delete;
    PendingRefresh& operator=(const PendingRefresh&) = delete;
    ~PendingRefresh() {
      if (job.valid()) job.wait();
    }
    // Waits for the job; rethrows what it threw (out of memory: the copies are then not a
    // refresh, and the step that would swap them in throws instead).
    void wait() {
      if (job.valid()) {
        try {
          job.get();
        } catch (...) {
          error = std::current_exception();
        }
      }
      if (error) std::rethrow_exception(error);
    }
    const Block* block_of(std::size_t id) const {
      for (std::size_t k = 0; k < ids.size(); ++k) {
        if (ids[k] == id) return blocks[k].get();
      }
      return nullptr;
    }
  };

  void start_delayed_refresh(const std::vector<std::size_t>& ids);
  void swap_in_delayed_refresh();

  KfacOptions options_;
  State state_;
  ParameterSet<Scalar> params_;
  std::deque<Layer> layers_;
  std::unique_ptr<PendingRefresh> pending_;
};

// ---------------------------------------------------------------------------------------
// Out-of-class members: the ones that instantiate the blocks (with KFOPT_COMPILED they are
// compiled once into kfopt_compiled for float and double, see the end of the file).
// ---------------------------------------------------------------------------------------

template <typename Scalar>
Kfac<Scalar>::Kfac(const Kfac& other)
    : options_(other.options_), state_(other.state_), params_(other.params_) {
  for (const Layer& l : other.layers_) {
    layers_.push_back(Layer{l.name, l.block->clone(), l.weight_index, l.bias_index, l.gradient,
                            l.direction, l.momentum, l.curvature_product, nullptr});
  }
  if (other.pending_) {
    other.pending_->wait();
    pending_ = std::make_unique<PendingRefresh>();
    pending_->started = other.pending_->started;
    pending_->ids = other.pending_->ids;
    for (const auto& b : other.pending_->blocks) pending_->blocks.push_back(b->clone());
  }
}

template <typename Scalar>
Kfac<Scalar>& Kfac<Scalar>::operator=(const Kfac& other) {
  if (this != &other) {
    Kfac copy(other);
    *this = std::move(copy);
  }
  return *this;
}

template <typename Scalar>
StateDict Kfac<Scalar>::state_dict() const {
  return detail::write_state_dict<Scalar>(*this, "kfopt::Kfac", state_, options_, layer_states());
}

template <typename Scalar>
void Kfac<Scalar>::load_state_dict(const StateDict& dict, const LoadOptions& options) {
  constexpr const char* op = "kfopt::Kfac::load_state_dict";
  State s = state_;
  KfacOptions o = options_;
  std::vector<LayerState> ls = layer_states();
  detail::read_state_dict<Scalar>(*this, op, dict, options, s, o, ls);
  o.validate();  // the restored learning rate
  if (!(s.damping > 0.0) || !std::isfinite(s.damping)) {
    throw InvalidInputError(std::string(op) + ": entry 'damping' is " + std::to_string(s.damping) +
                            " (the damping must be > 0)");
  }
  // A delayed refresh under way: its copies are staged on clones of the layers' blocks.
  std::unique_ptr<PendingRefresh> pending;
  bool any_pending = false;
  for (const LayerState& l : ls) any_pending = any_pending || l.has_pending_refresh;
  if (any_pending != (s.refresh_swap_step >= 0) ||
      (any_pending && (s.refresh_swap_step < s.counters.steps ||
                       s.refresh_swap_step > s.counters.steps + o.refresh_delay))) {
    throw InvalidInputError(std::string(op) + ": entry 'refresh_swap_step' is " +
                            std::to_string(s.refresh_swap_step) + " with " +
                            (any_pending ? "" : "no ") + "layer's refresh pending at step " +
                            std::to_string(s.counters.steps) + " (need −1 without one, else in [" +
                            std::to_string(s.counters.steps) + ", " +
                            std::to_string(s.counters.steps + o.refresh_delay) + "])");
  }
  if (any_pending) {
    pending = std::make_unique<PendingRefresh>();
    pending->started = s.refresh_swap_step - o.refresh_delay;
  }
  // Every layer is checked (and its derived state staged) before any is written.
  for (std::size_t i = 0; i < ls.size(); ++i) {
    const std::string where = std::string(op) + " (layer '" + layers_[i].name + "')";
    layers_[i].block->stage_state(where, *ls[i].block);
    if (ls[i].has_pending_refresh) {
      pending->ids.push_back(i);
      pending->blocks.push_back(layers_[i].block->clone());
      pending->blocks.back()->stage_state(where + " (its pending refresh)", *ls[i].pending_refresh);
    }
  }
  pending_.reset();  // waits for a refresh under way
  for (std::size_t i = 0; i < ls.size(); ++i) {
    layers_[i].block->commit_state(*ls[i].block);
    layers_[i].momentum = std::move(ls[i].momentum);
  }
  if (pending) {
    for (std::size_t k = 0; k < pending->ids.size(); ++k) {
      pending->blocks[k]->commit_state(*ls[pending->ids[k]].pending_refresh);
    }
  }
  pending_ = std::move(pending);
  state_ = s;
  options_ = o;
}

template <typename Scalar>
void Kfac<Scalar>::start_delayed_refresh(const std::vector<std::size_t>& ids) {
  auto pending = std::make_unique<PendingRefresh>();
  pending->started = state_.counters.steps;
  pending->ids = ids;
  for (std::size_t id : ids) {
    const Block& live = *layers_[id].block;
    live.finish_statistics();  // as a refresh here would
    // The copy reuses the storage the last swap left (no allocation, no page faults).
    std::unique_ptr<Block>& spare = layers_[id].refresh_copy;
    if (spare) {
      live.copy_into(*spare);
      pending->blocks.push_back(std::move(spare));
    } else {
      pending->blocks.push_back(live.clone());
    }
  }
  // The damping the swap step will use, if the schedule can tell (adaptive damping may
  // change it before then: that step then prepares again, with the same result).
  const std::int64_t swap = state_.counters.steps + options_.refresh_delay;
  BlockDamping<Scalar> damping = current_damping();
  bool prepare = true;
  try {
    const double lambda =
        options_.damping_schedule.scaled("kfopt::Kfac::step", "damping", state_.damping, swap);
    damping.lambda = static_cast<Scalar>(lambda);
  } catch (const std::exception&) {
    prepare = false;  // that step will throw itself
  }
  auto job = [blocks = &pending->blocks, damping, prepare] {
    for (auto& block : *blocks) {
      // A failed refresh keeps the copy's previous spectra, as it would here.
      if (block->refresh() == Status::Success && prepare) (void)block->prepare(damping);
    }
  };
  if (options_.refresh_in_background) {
    pending->job = std::async(std::launch::async, [job] {
      detail::ThreadPool::SerialScope alone;
      job();
    });
  } else {
    job();
  }
  pending_ = std::move(pending);
  state_.refresh_swap_step = swap;
}

template <typename Scalar>
void Kfac<Scalar>::swap_in_delayed_refresh() {
  if (!pending_ || state_.counters.steps < state_.refresh_swap_step) return;
  std::unique_ptr<PendingRefresh> pending = std::move(pending_);
  state_.refresh_swap_step = -1;
  pending->wait();  // rethrows what the background job threw: the layers keep their refresh
  for (std::size_t k = 0; k < pending->ids.size(); ++k) {
    Layer& layer = layers_[pending->ids[k]];
    layer.block->adopt_refresh(*pending->blocks[k]);
    layer.refresh_copy = std::move(pending->blocks[k]);  // storage for the next refresh
  }
}

template <typename Scalar>
Status Kfac<Scalar>::record_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                       const Eigen::Ref<const Matrix>& g) {
  KroneckerBlock<Scalar>* block = layer_at("kfopt::Kfac::record_statistics", id).block->dense();
  if (block == nullptr) {
    throw InvalidInputError("kfopt::Kfac::record_statistics: layer " + std::to_string(id) +
                            " is recurrent; use record_sequence_statistics");
  }
  return counted(block->update_statistics(a, g));
}

template <typename Scalar>
std::vector<Status> Kfac<Scalar>::record_statistics(const std::vector<StatisticsBatch>& batches) {
  constexpr const char* op = "kfopt::Kfac::record_statistics";
  std::vector<KroneckerBlock<Scalar>*> blocks(batches.size());
  std::vector<double> work(batches.size());
  std::vector<char> named(layers_.size(), 0);
  for (std::size_t k = 0; k < batches.size(); ++k) {
    const StatisticsBatch& b = batches[k];
    Layer& layer = layer_at(op, b.layer);
    blocks[k] = layer.block->dense();
    if (blocks[k] == nullptr) {
      throw InvalidInputError(std::string(op) + ": layer '" + layer.name + "' (id " +
                              std::to_string(b.layer) +
                              ") is recurrent; use record_sequence_statistics");
    }
    if (named[b.layer]) {
      throw InvalidInputError(std::string(op) + ": layer '" + layer.name + "' (id " +
                              std::to_string(b.layer) + ") has two batches in one call");
    }
    named[b.layer] = 1;
    blocks[k]->require_statistics_shapes(op, b.a, b.g);
    const double in = static_cast<double>(blocks[k]->cols());
    const double out = static_cast<double>(blocks[k]->rows());
    work[k] = static_cast<double>(b.a.rows()) * (in * in + out * out);
  }
  std::vector<Status> statuses(batches.size(), Status::NotComputed);
  jobs_in_parallel(work, [&](std::size_t k) {
    statuses[k] = blocks[k]->update_statistics(batches[k].a, batches[k].g);
  });
  for (Status& s : statuses) s = counted(s);
  return statuses;
}

template <typename Scalar>
Status Kfac<Scalar>::record_sequence_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                                const Eigen::Ref<const Matrix>& g,
                                                const Eigen::Ref<const Eigen::VectorXi>& lengths) {
  return counted(recurrent_at("kfopt::Kfac::record_sequence_statistics", id).update_statistics(a, g, lengths));
}

template <typename Scalar>
Status Kfac<Scalar>::record_sequence_statistics(
    std::size_t id, const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g,
    const Eigen::Ref<const Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic>>& mask) {
  return counted(recurrent_at("kfopt::Kfac::record_sequence_statistics", id).update_statistics(a, g, mask));
}

template <typename Scalar>
Status Kfac<Scalar>::step_impl(bool installed_refresh, const Preconditioner* precondition,
                               bool only_precondition) {
  if (layers_.empty()) throw InvalidInputError("kfopt::Kfac::step: no layer registered");
  if (options_.refresh_delay > 0 && (installed_refresh || precondition != nullptr)) {
    throw InvalidInputError(std::string("kfopt::Kfac::") +
                            (installed_refresh ? "step_with_installed_refresh" : "step_with_preconditioner") +
                            ": the caller refreshes the layers here, which a delayed refresh "
                            "(refresh_delay = " + std::to_string(options_.refresh_delay) +
                            ") cannot follow; use refresh_delay = 0");
  }
  for (const auto& layer : layers_) {
    if (!layer.block->has_statistics()) {
      throw InvalidInputError("kfopt::Kfac::step: layer '" + layer.name +
                              "' has no statistics yet; call record_statistics before the first step");
    }
  }
  // The step's learning rate and damping first: a schedule's bad value throws before anything
  // changes.
  const double lr = options_.learning_rate_schedule.scaled(
      "kfopt::Kfac::step", "learning_rate", options_.learning_rate, state_.counters.steps);
  const BlockDamping<Scalar> damping = current_damping();
  const Status guard = detail::begin_step("kfopt::Kfac::step", params_, state_.counters);
  if (guard != Status::Success) return guard;
  const Scalar clip = detail::gradient_clip_factor(params_, options_.max_gradient_norm);

  // Refresh the spectra on schedule (and for any layer that never had one): the layers'
  // refreshes are independent and run on kfopt's threads (layers_in_parallel); a layer whose
  // refresh failed keeps its stale spectra, and the first layer that has none fails the step.
  // With a refresh delay, the refresh due at this step is started on copies of the layers
  // that have spectra (start_delayed_refresh), after the one started d steps ago is swapped
  // in; layers without spectra are refreshed here.
  const bool due = state_.counters.steps % options_.inverse_period == 0;
  if (precondition == nullptr) {  // otherwise the caller refreshes what it preconditions
    swap_in_delayed_refresh();
    const bool delayed = options_.refresh_delay > 0;
    std::vector<std::size_t> refreshing, later;
    for (std::size_t id = 0; id < layers_.size(); ++id) {
      const Layer& layer = layers_[id];
      if (!due && layer.block->has_inverse()) continue;
      if (installed_refresh && layer.block->refresh_part_count() > 0) {
        if (!layer.block->has_inverse()) return Status::NumericalIssue;
        continue;  // refreshed by the caller (install_refresh)
      }
      (delayed && layer.block->has_inverse() ? later : refreshing).push_back(id);
    }
    // A step retried after a refusal does not start its refresh twice.
    if (!later.empty() && !(pending_ && pending_->started == state_.counters.steps)) {
      start_delayed_refresh(later);
    }
    std::vector<Status> refreshed(refreshing.size(), Status::Success);
    layers_in_parallel(refreshing, [&](std::size_t k) {
      refreshed[k] = layers_[refreshing[k]].block->refresh();
    });
    for (std::size_t k = 0; k < refreshing.size(); ++k) {
      if (refreshed[k] != Status::Success && !layers_[refreshing[k]].block->has_inverse()) {
        return refreshed[k];
      }
    }
  }
  if (due) ++state_.inverse_refreshes;

  // Preconditioned gradients into per-layer buffers; nothing is written before all succeed.
  const Scalar wd = static_cast<Scalar>(options_.weight_decay);
  double inner = 0.0;  // Σ ⟨Δ, Z⟩, summed in layer order below
  std::vector<Status> applied(layers_.size(), Status::Success);
  if (precondition == nullptr) {  // the layers' own inverses, on kfopt's threads
    std::vector<std::size_t> all(layers_.size());
    for (std::size_t id = 0; id < all.size(); ++id) all[id] = id;
    layers_in_parallel(all, [&](std::size_t id) {
      Layer& layer = layers_[id];
      gather(layer, wd, clip);
      applied[id] = layer.block->apply_inverse(layer.gradient, damping, layer.direction);
    });
  } else {  // a caller's preconditioner (e.g. one that communicates) is called in order
    for (std::size_t id = 0; id < layers_.size(); ++id) {
      Layer& layer = layers_[id];
      gather(layer, wd, clip);
      applied[id] = (*precondition)(id, layer.gradient, layer.direction);
      if (applied[id] != Status::Success) break;
    }
  }
  for (std::size_t id = 0; id < layers_.size(); ++id) {
    Layer& layer = layers_[id];
    const Status s = applied[id];
    if (s != Status::Success) {
      ++state_.singular_skips;
      return s;
    }
    if (layer.direction.rows() != layer.gradient.rows() ||
        layer.direction.cols() != layer.gradient.cols()) {  // only a supplied one can be
      throw ShapeError("kfopt::Kfac::step_with_preconditioner (layer '" + layer.name +
                       "'): the preconditioned gradient is " + detail::shape_of(layer.direction) +
                       " but the layer's gradient is " + detail::shape_of(layer.gradient));
    }
    if (!detail::all_finite(layer.gradient, layer.direction)) {
      return detail::refuse(state_.counters, Status::Overflow);
    }
    inner += static_cast<double>(layer.direction.cwiseProduct(layer.gradient).sum());
  }
  const double nu = clip_scale(inner, lr);

  if (only_precondition) {  // ν Δ into the gradient storage, checked first
    for (auto& layer : layers_) {
      layer.direction *= static_cast<Scalar>(nu);
      if (!detail::all_finite(layer.direction)) return detail::refuse(state_.counters, Status::Overflow);
    }
    for (const auto& layer : layers_) write_gradient(layer);
    state_.pending_model_change = 0.0;
    state_.last_clip_scale = nu;
    ++state_.counters.steps;
    return Status::Success;
  }

  // The new momentum (into `direction`) and parameters, checked finite before anything is
  // written: the commit below cannot fail.
  const Scalar mu = static_cast<Scalar>(options_.momentum);
  const Scalar lr_s = static_cast<Scalar>(lr);
  for (auto& layer : layers_) {
    layer.direction = mu * layer.momentum + static_cast<Scalar>(nu) * layer.direction;
    if (!detail::all_finite(layer.direction) || !updated_parameters_finite(layer, lr_s)) {
      return detail::refuse(state_.counters, Status::Overflow);
    }
  }

  // Commit: momentum, the quadratic model of the step (adaptive damping), and the update.
  double model_change = 0.0;
  for (auto& layer : layers_) {
    layer.momentum.swap(layer.direction);
    if (options_.adaptive_damping) {
      // δ = −η m; M(δ) − M(0) = ⟨Z, δ⟩ + ½ ⟨δ, F̂δ⟩ + ½ λ ‖δ‖².
      layer.direction = static_cast<Scalar>(-lr) * layer.momentum;
      multiply(layer);
      model_change += static_cast<double>(layer.gradient.cwiseProduct(layer.direction).sum()) +
                      0.5 * static_cast<double>(
                                layer.direction.cwiseProduct(layer.curvature_product).sum()) +
                      0.5 * state_.damping * static_cast<double>(layer.direction.squaredNorm());
    }
    scatter(layer, static_cast<Scalar>(lr));
  }
  state_.pending_model_change = model_change;
  state_.last_clip_scale = nu;
  ++state_.counters.steps;
  return Status::Success;
}

template <typename Scalar>
std::size_t Kfac<Scalar>::add_layer(const std::string& name, Parameter W, const Parameter* b,
                                    DenseLayerOptions layer_options) {
  KroneckerBlockOptions bo;
  bo.bias = b != nullptr;
  bo.input_factor = layer_options.input_factor;
  bo.gradient_factor = layer_options.gradient_factor;
  bo.decay = options_.decay;
  bo.inverse_method = options_.inverse_method;
  const Eigen::Index in = W.cols(), out = W.rows();
  return register_layer("kfopt::Kfac::add_dense_layer", name, std::move(W), b,
                        std::make_unique<detail::KfacDenseLayerBlock<Scalar>>(
                            KroneckerBlock<Scalar>(name, in, out, bo)));
}

template <typename Scalar>
std::size_t Kfac<Scalar>::add_recurrent(const std::string& name, Parameter W, const Parameter* b,
                                        RecurrentLayerOptions layer_options) {
  RecurrentKroneckerBlockOptions<Scalar> ro;
  ro.approximation = layer_options.approximation;
  ro.bias = b != nullptr;
  ro.decay = options_.decay;
  RecurrentKroneckerBlock<Scalar> block(name, W.cols(), W.rows(), ro);
  if (!block.supports(options_.damping_style)) {
    throw InvalidInputError("kfopt::Kfac::add_recurrent_layer (layer '" + name +
                            "'): exact damping is defined only for the Independent approximation");
  }
  return register_layer("kfopt::Kfac::add_recurrent_layer", name, std::move(W), b,
                        std::make_unique<detail::KfacRecurrentLayerBlock<Scalar>>(std::move(block)));
}

template <typename Scalar>
std::size_t Kfac<Scalar>::register_layer(const char* op, const std::string& name, Parameter W,
                                         const Parameter* b, std::unique_ptr<Block> block) {
  for (const auto& l : layers_) {
    if (l.name == name) {
      throw InvalidInputError(std::string(op) + ": a layer named '" + name +
                              "' is already registered");
    }
  }
  if (b != nullptr && (b->rows() != W.rows() || b->cols() != 1)) {
    throw ShapeError(std::string(op) + " (layer '" + name + "'): W is " +
                     detail::shape_string(W.rows(), W.cols()) + " but b is " +
                     detail::shape_string(b->rows(), b->cols()) + " (need " +
                     detail::shape_string(W.rows(), 1) + ")");
  }
  // Register the storage first, then the block.
  const std::size_t wi = params_.size();
  params_.add(W.renamed(name + ".weight"));
  std::ptrdiff_t bi = -1;
  if (b != nullptr) {
    bi = static_cast<std::ptrdiff_t>(params_.size());
    params_.add(b->renamed(name + ".bias"));
  }
  const Eigen::Index rows = block->rows();
  const Eigen::Index cols = block->cols();
  layers_.push_back(Layer{name, std::move(block), wi, bi, Matrix(), Matrix(), Matrix(), Matrix(), nullptr});
  Layer& l = layers_.back();
  l.gradient.setZero(rows, cols);
  l.direction.setZero(rows, cols);
  l.momentum.setZero(rows, cols);
  l.curvature_product.setZero(rows, cols);
  return layers_.size() - 1;
}

// Z = clip [∇W ∇b] + wd [W b] (the unclipped expression when clip = 1, so that clipping
// off changes no bit).
template <typename Scalar>
void Kfac<Scalar>::gather(Layer& layer, Scalar wd, Scalar clip) {
  const auto& wb = params_[layer.weight_index];
  const Eigen::Index in = wb.cols();
  const auto* bb = layer.bias_index >= 0 ? &params_[static_cast<std::size_t>(layer.bias_index)]
                                         : nullptr;
  if (clip == Scalar(1)) {
    wb.matrices([&](const auto& W, const auto& dW) { layer.gradient.leftCols(in) = dW + wd * W; });
    if (bb != nullptr) layer.gradient.col(in) = bb->gradient().col(0) + wd * bb->value().col(0);
  } else {
    wb.matrices([&](const auto& W, const auto& dW) {
      layer.gradient.leftCols(in) = clip * dW + wd * W;
    });
    if (bb != nullptr) {
      layer.gradient.col(in) = clip * bb->gradient().col(0) + wd * bb->value().col(0);
    }
  }
}

// [∇W ∇b] ← layer.direction, in the caller's gradient storage.
template <typename Scalar>
void Kfac<Scalar>::write_gradient(const Layer& layer) {
  const auto& wb = params_[layer.weight_index];
  const Eigen::Index in = wb.cols();
  wb.matrices([&](const auto&, const auto& dW) {
    using Writable = Eigen::Map<typename std::decay_t<decltype(dW)>::PlainObject>;
    Writable(const_cast<Scalar*>(dW.data()), dW.rows(), dW.cols()) = layer.direction.leftCols(in);
  });
  if (layer.bias_index >= 0) {
    const auto& bb = params_[static_cast<std::size_t>(layer.bias_index)];
    Eigen::Map<Vector>(const_cast<Scalar*>(bb.gradient().data()), bb.rows()) = layer.direction.col(in);
  }
}

// Whether [W b] − η m' is finite, m' the new momentum (in layer.direction).
template <typename Scalar>
bool Kfac<Scalar>::updated_parameters_finite(const Layer& layer, Scalar lr) const {
  const auto& wb = params_[layer.weight_index];
  const Eigen::Index in = wb.cols();
  const bool finite = wb.matrices([&](const auto& W, const auto&) {
    return detail::all_finite_one(W - lr * layer.direction.leftCols(in));
  });
  if (!finite) return false;
  if (layer.bias_index >= 0) {
    const auto& bb = params_[static_cast<std::size_t>(layer.bias_index)];
    if (!detail::all_finite_one(bb.value().col(0) - lr * layer.direction.col(in))) return false;
  }
  return true;
}

// [W b] ← [W b] − η m.
template <typename Scalar>
void Kfac<Scalar>::scatter(Layer& layer, Scalar lr) {
  auto& wb = params_[layer.weight_index];
  const Eigen::Index in = wb.cols();
  wb.matrices([&](auto W, const auto&) { W -= lr * layer.momentum.leftCols(in); });
  if (layer.bias_index >= 0) {
    params_[static_cast<std::size_t>(layer.bias_index)].value().col(0) -= lr * layer.momentum.col(in);
  }
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/); users of kfopt::kfopt_compiled do not instantiate them.
extern template class Kfac<float>;
extern template class Kfac<double>;
#endif

}  // namespace kfopt
