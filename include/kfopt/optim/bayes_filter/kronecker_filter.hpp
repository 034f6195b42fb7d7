#pragma once
/// \file kronecker_filter.hpp
/// \brief The Kronecker-factored Bayesian filter over dense layers — Aitchison 2018, §2.1.3
/// (eq. 22–28) and SI §4.3: natural gradient without drift (η = 0), a whitening,
/// Kronecker-factored analogue of RMSProp/Adam with drift (η > 0).
///
/// Each registered layer `s = W a + b` (W out×in) is one latent `z = vec([W b])` with the
/// Kronecker-factored covariance `Σ = Σx ⊗ Σδ` (Σx over the N = in (+1) inputs with the bias
/// folded in as a homogeneous coordinate, Σδ over the M = out outputs), kept by
/// filter/kronecker_factored_covariance.hpp. One step, with ∇ = [∇W ∇b] in storage:
///
///     update:   for each recorded example (x_b, δ_b):  Σ ← KL-proj(Σ⁻¹ + e eᵀ)⁻¹,
///               e = x_b ⊗ δ_b                        (eq. 23, projected by eq. 32 / SI §4.3.1)
///               [W b] ← [W b] + Σδ G Σx,   G = −c ∇   (eq. 6 with Σ_post; c below)
///     predict:  [W b] ← (1 − η²/(2σ²)) [W b]            (eq. 26, decoupled weight decay)
///               Σ ← KL-proj((1 − η²/(2σ²))² Σ + η² I ⊗ I)  (eq. 27–28 / SI §4.3.2)
///
/// **Minibatches.** The paper's update is for one example, `e = x ⊗ δ` (rank 1). A minibatch
/// of k examples is k observations: `Λ_like = Σ_b e_b e_bᵀ`, applied as k successive
/// projected rank-1 updates, and the log-likelihood gradient of the batch is
/// `g = Σ_b x_b ⊗ δ^g_b = vec(G)`, so the mean moves by `Σ_post g = vec(Σδ G Σx) =
/// Σ_b (Σx x_b) ⊗ (Σδ δ^g_b)` — the paper's `(Σx_post x) ⊗ (Σδ_post δ)` summed over the
/// batch. The δ_b passed to record_statistics are per-example gradients of each example's
/// own loss (not divided by k; model-sampled targets for the Fisher, as for K-FAC); G is the
/// gradient of the summed negative log-likelihood: with LossReduction::Mean (∇ is the
/// gradient of the batch-mean loss, as in examples/common/mlp.hpp) c = k, the number of
/// examples recorded for the layer in this step; with LossReduction::Sum, c = 1. (c is this
/// filter's likelihood scale S of filter/elementwise_filter.hpp, per batch. A mean-loss
/// gradient declared LossReduction::Sum moves the mean k times too slowly; statistics g
/// divided by k show in State::posterior_contraction.)
///
/// **Limits.** η = 0: the posterior precision accumulates `Σ_b e_b e_bᵀ`, so Σx, Σδ approach
/// scaled `E[xxᵀ]⁻¹`, `E[δδᵀ]⁻¹` (natural gradient with a 1/t learning rate). η > 0: the
/// steady state is `Σx ⊗ Σδ ≈ η (k E[xxᵀ] ⊗ E[δδᵀ])^{-1/2}` (for independent x and δ), i.e.
/// `Σx ∝ E[xxᵀ]^{−1/2}`, `Σδ ∝ E[δδᵀ]^{−1/2}`: the step whitens the gradient — the Kronecker
/// analogue of RMSProp's `η/sqrt⟨e²⟩` (end of §2.1.3).
///
/// **Nesterov-style phases** as for FilterRmsProp: the parameters start as μ_prior(1);
/// `update()` makes them μ_post, `predict()` moves them to μ_prior(t+1) where the next
/// gradient belongs; `step()` = update() then predict().
///
/// **Cost per step and layer** (FirstOrder): k rank-1 projections, applied in chunks of up to
/// 64 examples as matrix products (KroneckerFactoredCovariance::observe_batch), about
/// 3k(N² + M²) flops; the mean step 2MN(M + N); the drift's inverse traces, one Cholesky factorization and a
/// triangular solve per factor, about (N³ + M³)/2 flops every `trace_period` steps. Exact:
/// about 3.7(N³ + M³) flops per example and per drift. Statistics are copied into per-layer
/// buffers (k × (in + out)); no heap allocation once the batch size has been seen (apart
/// from Eigen's blocking buffers of large products, on the stack below 128 KB).

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <string>

#include "kfopt/core/gradient_clipping.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/schedule.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/filter/elementwise_filter.hpp"
#include "kfopt/filter/kronecker_factored_covariance.hpp"

namespace kfopt {

/// How the gradient in storage relates to the per-example statistics.
enum class LossReduction {
  /// ∇ is the gradient of the batch-mean loss; the batch log-likelihood gradient is −k ∇.
  Mean,
  /// ∇ is the gradient of the summed loss; the batch log-likelihood gradient is −∇.
  Sum,
};

/// Hyperparameters of KroneckerFilter (Aitchison 2018, eq. 25).
struct KroneckerFilterOptions {
  /// η ≥ 0: drift of each weight per step (Q = η² I ⊗ I, eq. 25). η > 0 is the whitening
  /// variant (steady state ≈ η (k E[xxᵀ] ⊗ E[δδᵀ])^{-1/2}); η = 0 is natural gradient.
  /// Must satisfy η² < 2σ². Default 1e-3.
  double learning_rate = 1e-3;
  /// σ² > 0 (finite): stationary prior variance of a weight; decay η²/(2σ²) per step.
  /// Default 0.05.
  double prior_variance = 0.05;
  /// Σ_prior(1) = σ²_init I ⊗ I; 0 means σ². Default 0.
  double initial_variance = 0.0;
  /// The KL projection of the updates. Default FirstOrder (eq. 32 / eq. 24, 28).
  KroneckerProjectionMethod projection = KroneckerProjectionMethod::FirstOrder;
  /// How ∇ relates to the recorded examples. Default Mean.
  LossReduction loss_reduction = LossReduction::Mean;
  /// T ≥ 1: the traces Tr(Σx⁻¹), Tr(Σδ⁻¹) of the drift (eq. 28) are recomputed every T
  /// predictions (O(N³ + M³)) and reused in between. Default 1.
  int trace_period = 1;

  /// Factor of η per step (core/schedule.hpp): the step with index t (from 0) uses
  /// η · learning_rate_schedule(t) in its prediction, checked against the range above.
  /// Default: constant.
  Schedule learning_rate_schedule = Schedule();
  /// Global gradient-norm clipping (core/gradient_clipping.hpp): when the norm of all
  /// registered gradients together exceeds c = max_gradient_norm ≥ 0, the update uses them
  /// scaled by c / ‖∇‖. Default 0: off.
  double max_gradient_norm = 0.0;

  /// The whitening variant (η > 0; the Kronecker analogue of RMSProp/Adam).
  static KroneckerFilterOptions whitening(double learning_rate = 1e-3, double prior_variance = 0.05) {
    KroneckerFilterOptions o;
    o.learning_rate = learning_rate;
    o.prior_variance = prior_variance;
    return o;
  }
  /// The natural-gradient variant (η = 0: no drift).
  static KroneckerFilterOptions natural_gradient(double prior_variance = 0.05) {
    KroneckerFilterOptions o;
    o.learning_rate = 0.0;
    o.prior_variance = prior_variance;
    return o;
  }

  /// Throws HyperparameterError naming the field when a value is out of range.
  void validate() const {
    constexpr const char* a = "kfopt::KroneckerFilterOptions";
    detail::require_hyperparameter(prior_variance > 0.0 && std::isfinite(prior_variance), a,
                                   "prior_variance", prior_variance, "(0, inf)");
    require_learning_rate(a, learning_rate);
    detail::require_hyperparameter(max_gradient_norm >= 0.0 && std::isfinite(max_gradient_norm), a,
                                   "max_gradient_norm", max_gradient_norm, "[0, inf), finite (0: off)");
    detail::require_hyperparameter(initial_variance >= 0.0 && std::isfinite(initial_variance), a,
                                   "initial_variance", initial_variance, "[0, inf) (0: prior_variance)");
    detail::require_hyperparameter(trace_period >= 1, a, "trace_period", trace_period, "[1, inf)");
  }
  /// The range of η (also checked for each step's scheduled η).
  void require_learning_rate(const char* a, double eta) const {
    detail::require_hyperparameter(eta >= 0.0 && std::isfinite(eta), a, "learning_rate", eta,
                                   "[0, inf)");
    detail::require_hyperparameter(eta * eta < 2.0 * prior_variance, a, "learning_rate", eta,
                                   "[0, sqrt(2 prior_variance)) (decay eta^2/(2 sigma^2) < 1)");
  }
};

/// The Kronecker-factored filter over registered dense layers (see kronecker_filter.hpp).
template <typename Scalar>
class KroneckerFilter {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// A weight or bias in caller storage of any kind (core/parameter_block.hpp).
  using Parameter = ParameterBlock<Scalar>;

  /// Everything KroneckerFilter carries between steps, besides the layers' own state.
  struct State {
    StepCounters counters;                 ///< updates taken / refused for NaN/Inf gradients
    /// Whether the parameters hold the prior or the posterior mean.
    FilterPhase phase = FilterPhase::Prior;
    std::int64_t predictions = 0;          ///< predict() calls (schedules the trace refresh)
    std::int64_t skipped_statistics = 0;   ///< statistics batches refused for NaN/Inf
    std::int64_t numerical_failures = 0;   ///< updates refused because a result overflowed
    std::int64_t clamped_variances = 0;    ///< factor coefficients/eigenvalues clamped (all layers)
    std::int64_t projection_fallbacks = 0; ///< exact projections replaced by eq. 32 (all layers)
    /// Diagnostic after the last update: 1 − Σ_layers tr Σ_post / (P σ²) over the P entries
    /// of the layers' [W b] (tr(X ⊗ D) = tr X · tr D), the fraction of the prior's variance
    /// σ² the data have removed. The covariance learns from the recorded statistics: below
    /// kfopt::weak_likelihood_contraction they have not informed it yet, e.g. in the first
    /// steps when their g are divided by the batch size (record_statistics wants one
    /// example's gradient), until the factors catch up (filter/elementwise_filter.hpp). The
    /// scale of the gradient in storage (loss_reduction) moves the mean only and does not
    /// show here. NaN before the first update; not stored in checkpoints.
    double posterior_contraction = std::numeric_limits<double>::quiet_NaN();
  };

  /// A filter with no layers yet; throws HyperparameterError for bad options.
  explicit KroneckerFilter(KroneckerFilterOptions options = {}) : options_(options) {
    options_.validate();
  }

  /// Registers a dense layer `s = W a + b` (W out×in, b out, gradients of the same shapes,
  /// all in caller storage) with Σ_prior = σ²_init I ⊗ I. Returns the id for
  /// record_statistics. Throws ShapeError / InvalidInputError (duplicate name).
  std::size_t add_dense_layer(const std::string& name, Matrix& W, const Matrix& dW, Vector& b,
                              const Vector& db) {
    return add_dense_layer(name, Parameter(name + ".weight", W, dW), Parameter(name + ".bias", b, db));
  }

  /// Registers a dense layer without bias `s = W a`.
  std::size_t add_dense_layer(const std::string& name, Matrix& W, const Matrix& dW) {
    return add_dense_layer(name, Parameter(name + ".weight", W, dW));
  }

  /// Registers a dense layer from storage of any kind (core/parameter_block.hpp: raw column-
  /// or row-major buffers, Eigen maps): W (out×in) and b (out×1) as ParameterBlocks, renamed
  /// "<name>.weight" and "<name>.bias".
  std::size_t add_dense_layer(const std::string& name, Parameter W, Parameter b) {
    return add_layer(name, std::move(W), &b);
  }
  /// As above, without bias.
  std::size_t add_dense_layer(const std::string& name, Parameter W) {
    return add_layer(name, std::move(W), nullptr);
  }

  /// Number of registered layers.
  std::size_t num_layers() const noexcept { return layers_.size(); }
  /// The covariance Σx ⊗ Σδ of a layer (prior or posterior, see phase()).
  const KroneckerFactoredCovariance<Scalar>& covariance(std::size_t id) const {
    return layers_.at(id).cov;
  }

  /// Records one batch of a layer's inputs `a` (k × in) and per-example output gradients
  /// `g` (k × out), consumed by the next update(). Row i of g is the gradient of example i's
  /// own loss, not divided by the batch size (State::posterior_contraction shows a g that
  /// is). Several calls accumulate. NaN/Inf →
  /// NonFiniteInput, counted, nothing recorded. Shape mismatch → ShapeError.
  Status record_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                           const Eigen::Ref<const Matrix>& g) {
    Layer& l = layer_at("kfopt::KroneckerFilter::record_statistics", id);
    if (a.cols() != l.in || g.cols() != l.out || a.rows() != g.rows() || a.rows() == 0) {
      throw ShapeError("kfopt::KroneckerFilter::record_statistics (layer '" + l.name + "'): a is " +
                       detail::shape_of(a) + " and g is " + detail::shape_of(g) +
                       " but the layer needs k×" + std::to_string(l.in) + " and k×" +
                       std::to_string(l.out) + " with the same k > 0");
    }
    if (!a.allFinite() || !g.allFinite()) {
      ++state_.skipped_statistics;
      return Status::NonFiniteInput;
    }
    const Eigen::Index k = a.rows();
    if (l.recorded + k > l.a_stats.rows()) {
      const Eigen::Index cap = std::max(l.recorded + k, 2 * l.a_stats.rows());
      l.a_stats.conservativeResize(cap, l.in);
      l.g_stats.conservativeResize(cap, l.out);
    }
    l.a_stats.middleRows(l.recorded, k) = a;
    l.g_stats.middleRows(l.recorded, k) = g;
    l.recorded += k;
    return Status::Success;
  }

  /// Drops statistics recorded since the last update (e.g. after a skipped update).
  void clear_statistics() {
    for (auto& l : layers_) l.recorded = 0;
  }

  /// Data update (eq. 23–24 projected, and eq. 6) from the recorded statistics and the
  /// gradients in storage (evaluated at μ_prior). Parameters become μ_post. All or nothing:
  /// a non-finite gradient or parameter (NonFiniteInput) or an overflowing result (new
  /// factors or parameters not finite, e.g. one activation at 1e300: NumericalIssue) leaves
  /// every parameter and factor unchanged. After NonFiniteInput the recorded statistics stay
  /// queued (retry with a finite gradient); after NumericalIssue they are dropped, so the
  /// batch that overflowed does not block every later step. Throws
  /// InvalidInputError in the Posterior phase, with no layer, or (LossReduction::Mean) for a
  /// layer that has never received statistics.
  Status update() {
    constexpr const char* op = "kfopt::KroneckerFilter::update";
    detail::require_filter_phase(op, state_.phase, FilterPhase::Prior);
    if (layers_.empty()) throw InvalidInputError(std::string(op) + ": no layer registered");
    if (options_.loss_reduction == LossReduction::Mean) {
      for (const auto& l : layers_) {
        if (l.recorded == 0 && l.last_batch == 0) {
          throw InvalidInputError(std::string(op) + ": layer '" + l.name +
                                  "' has no statistics yet (LossReduction::Mean needs the batch "
                                  "size); call record_statistics first");
        }
      }
    }
    // A non-finite gradient or parameter: the recorded statistics are fine and stay queued
    // for a retry with a finite gradient.
    const Status guard = detail::begin_step(op, params_, state_.counters);
    if (guard != Status::Success) return guard;
    const Scalar clip = detail::gradient_clip_factor(params_, options_.max_gradient_norm);

    for (auto& l : layers_) {
      l.backup_x = l.cov.input_factor();
      l.backup_d = l.cov.output_factor();
    }
    bool ok = true;
    for (auto& l : layers_) {
      if (l.recorded > 0) {
        ok = l.cov.observe_batch(l.a_stats.topRows(l.recorded), l.g_stats.topRows(l.recorded),
                                 l.bias_index >= 0) == Status::Success;
      }
      if (!ok) break;
      const Eigen::Index k = l.recorded > 0 ? l.recorded : l.last_batch;
      const Scalar c = options_.loss_reduction == LossReduction::Mean ? Scalar(k) : Scalar(1);
      gather(l, -c * clip);
      l.cov.multiply(l.gradient, l.direction);
      // The new [W b] (scratch; committed below only if every layer's is finite).
      params_[l.weight_index].matrices(
          [&](const auto& W, const auto&) { l.direction.leftCols(l.in) += W; });
      if (l.bias_index >= 0) {
        l.direction.col(l.in) += params_[static_cast<std::size_t>(l.bias_index)].value().col(0);
      }
      ok = detail::all_finite(l.direction, l.cov.input_factor(), l.cov.output_factor());
      if (!ok) break;
    }
    if (!ok) {
      for (auto& l : layers_) l.cov.set_factors(l.backup_x, l.backup_d);
      ++state_.numerical_failures;
      collect_counters();
      clear_statistics();  // the batch that overflowed is not kept for the next step
      return Status::NumericalIssue;
    }
    double prior_total = 0.0, posterior_trace = 0.0;  // P σ² and tr Σ_post over the layers
    for (const auto& l : layers_) {
      prior_total += static_cast<double>(l.cov.input_factor().rows()) *
                     static_cast<double>(l.cov.output_factor().rows()) *
                     options_.prior_variance;
      posterior_trace += static_cast<double>(l.cov.input_factor().trace()) *
                         static_cast<double>(l.cov.output_factor().trace());
    }
    state_.posterior_contraction = kfopt::posterior_contraction(prior_total, posterior_trace);
    for (auto& l : layers_) {
      scatter(l);
      if (l.recorded > 0) l.last_batch = l.recorded;
      l.recorded = 0;
      l.cov.balance();
    }
    collect_counters();
    ++state_.counters.steps;
    state_.phase = FilterPhase::Posterior;
    return Status::Success;
  }

  /// Prediction (eq. 26–28): parameters decay to μ_prior(t+1), each Σ drifts and is
  /// projected. Throws InvalidInputError in the Prior phase. Never fails numerically (an
  /// exact projection that fails falls back to eq. 32, counted).
  Status predict() {
    constexpr const char* op = "kfopt::KroneckerFilter::predict";
    detail::require_filter_phase(op, state_.phase, FilterPhase::Posterior);
    // η of the step whose update came before (scheduled; a bad value throws here, with
    // nothing changed).
    return predict_impl(op, step_learning_rate(op, state_.counters.steps > 0 ? state_.counters.steps - 1 : 0));
  }

  /// `update()` then `predict()`: the parameters end at μ_prior(t+1). A scheduled η is
  /// checked before either.
  Status step() {
    const double eta = step_learning_rate("kfopt::KroneckerFilter::step", state_.counters.steps);
    const Status s = update();
    return s == Status::Success ? predict_impl("kfopt::KroneckerFilter::predict", eta) : s;
  }

 private:
  // η of the step with index t (scheduled, checked: HyperparameterError).
  double step_learning_rate(const char* op, std::int64_t t) const {
    const double eta =
        options_.learning_rate_schedule.scaled(op, "learning_rate", options_.learning_rate, t);
    if (!options_.learning_rate_schedule.is_constant()) options_.require_learning_rate(op, eta);
    return eta;
  }
  Status predict_impl(const char* op, double eta_t) {
    for (const auto& block : params_) block.check_storage(op);
    const Scalar keep = static_cast<Scalar>(1.0 - eta_t * eta_t / (2.0 * options_.prior_variance));
    const Scalar eta = static_cast<Scalar>(eta_t);
    const bool refresh = state_.predictions % options_.trace_period == 0;
    for (auto& l : layers_) {
      l.cov.drift(keep, eta, refresh);
      l.cov.balance();
    }
    for (auto& block : params_) block.value() *= keep;
    collect_counters();
    ++state_.predictions;
    state_.phase = FilterPhase::Prior;
    return Status::Success;
  }

 public:
  /// Whether the parameters hold the prior or the posterior mean.
  FilterPhase phase() const noexcept { return state_.phase; }
  /// The hyperparameters in use.
  const KroneckerFilterOptions& options() const noexcept { return options_; }
  /// The filter state (phase and counters).
  const State& state() const noexcept { return state_; }
  /// Changes η (drift and decay); validated like the options.
  void set_learning_rate(double eta) {
    KroneckerFilterOptions o = options_;
    o.learning_rate = eta;
    o.validate();
    options_ = o;
  }
  /// Restores a layer's factors (checkpoints), all or nothing. Throws ShapeError for wrong
  /// shapes and InvalidInputError for a factor that is not finite, not symmetric or not
  /// positive definite (a singular factor, e.g. zero, would make every later step
  /// non-finite), naming the layer and the factor.
  void set_covariance(std::size_t id, const Eigen::Ref<const Matrix>& input_factor,
                      const Eigen::Ref<const Matrix>& output_factor) {
    constexpr const char* op = "kfopt::KroneckerFilter::set_covariance";
    Layer& l = layer_at(op, id);
    require_positive_definite(op, l.name, "input factor", input_factor, l.cov.input_factor().rows());
    require_positive_definite(op, l.name, "output factor", output_factor, l.cov.output_factor().rows());
    l.cov.set_factors(input_factor, output_factor);
  }


  /// One layer's part of the state dict: the factors, their cache and counters, the size of
  /// the last batch, and statistics recorded for an update not yet taken.
  struct LayerState {
    /// The input and output covariance factors.
    Matrix input_factor, output_factor;
    /// The covariance's cached traces and counters.
    typename KroneckerFactoredCovariance<Scalar>::Cache cache;
    /// Size of the last batch.
    std::int64_t last_batch = 0;
    /// Inputs and gradients recorded for an update not yet taken.
    Matrix recorded_inputs, recorded_gradients;
    /// \var output_factor
    /// See input_factor.
    /// \var recorded_gradients
    /// See recorded_inputs.
  };
  /// The complete state as a StateDict (core/state_dict.hpp), type "kfopt::KroneckerFilter":
  /// per layer "<layer>/input_factor" (Σx), "<layer>/output_factor" (Σδ),
  /// "<layer>/trace_inv_input", "<layer>/trace_inv_output", "<layer>/has_traces",
  /// "<layer>/clamped", "<layer>/fallbacks", "<layer>/last_batch", "<layer>/recorded_inputs"
  /// and "<layer>/recorded_gradients" (k×in and k×out, k = examples recorded since the last
  /// update); the counters "steps", "skipped_nonfinite", "phase", "predictions",
  /// "skipped_statistics", "numerical_failures", "clamped_variances",
  /// "projection_fallbacks". Hyperparameters: KroneckerFilterOptions's fields; the learning
  /// rate is restored on load, the others must match. The weights are the model's.
  StateDict state_dict() const {
    return detail::write_state_dict<Scalar>(*this, "kfopt::KroneckerFilter", state_, options_,
                                            layer_states());
  }
  /// Restores a state_dict() of a filter with the same layers and options; all-or-nothing.
  void load_state_dict(const StateDict& dict, const LoadOptions& load = {}) {
    constexpr const char* op = "kfopt::KroneckerFilter::load_state_dict";
    State s = state_;
    KroneckerFilterOptions o = options_;
    std::vector<LayerState> ls = layer_states();
    detail::read_state_dict<Scalar>(*this, op, dict, load, s, o, ls);
    o.validate();
    for (std::size_t i = 0; i < ls.size(); ++i) {
      if (ls[i].recorded_inputs.rows() != ls[i].recorded_gradients.rows()) {
        throw ShapeError(std::string(op) + ": layer '" + layers_[i].name + "' has " +
                         std::to_string(ls[i].recorded_inputs.rows()) + " recorded inputs but " +
                         std::to_string(ls[i].recorded_gradients.rows()) + " recorded gradients");
      }
    }
    for (std::size_t i = 0; i < ls.size(); ++i) {  // checked above: cannot throw
      Layer& l = layers_[i];
      l.cov.set_factors(ls[i].input_factor, ls[i].output_factor);
      l.cov.set_cache(ls[i].cache);
      l.last_batch = static_cast<Eigen::Index>(ls[i].last_batch);
      l.recorded = ls[i].recorded_inputs.rows();
      l.a_stats = std::move(ls[i].recorded_inputs);
      l.g_stats = std::move(ls[i].recorded_gradients);
    }
    state_ = s;
    options_ = o;
  }
  /// The layers' part of the state, as state_dict() stores it.
  std::vector<LayerState> layer_states() const {
    std::vector<LayerState> out;
    for (const auto& l : layers_) {
      out.push_back(LayerState{l.cov.input_factor(), l.cov.output_factor(), l.cov.cache(),
                               static_cast<std::int64_t>(l.last_batch), l.a_stats.topRows(l.recorded),
                               l.g_stats.topRows(l.recorded)});
    }
    return out;
  }
  /// The one list of fields state_dict() writes and load_state_dict() reads.
  template <typename Io>
  void state_fields(Io& io, State& s, KroneckerFilterOptions& o, std::vector<LayerState>& ls) const {
    constexpr HyperparameterKind kC = HyperparameterKind::Continuous;
    std::int64_t trace_period = o.trace_period;
    io.hyperparameter("learning_rate", o.learning_rate, HyperparameterKind::Restored);
    io.hyperparameter("prior_variance", o.prior_variance, kC);
    io.hyperparameter("initial_variance", o.initial_variance, kC);
    io.hyperparameter("projection", o.projection);
    io.hyperparameter("loss_reduction", o.loss_reduction);
    io.hyperparameter("trace_period", trace_period, kC);
    io.hyperparameter("max_gradient_norm", o.max_gradient_norm, kC);
    io.counters(s.counters);
    io.enumeration("phase", s.phase, 2);
    io.integer("predictions", s.predictions);
    io.integer("skipped_statistics", s.skipped_statistics);
    io.integer("numerical_failures", s.numerical_failures);
    io.integer("clamped_variances", s.clamped_variances);
    io.integer("projection_fallbacks", s.projection_fallbacks);
    for (std::size_t i = 0; i < ls.size(); ++i) {
      LayerState& l = ls[i];
      io.enter(layers_[i].name);
      io.array("input_factor", l.input_factor, EntryConstraint::SymmetricPsd);
      io.array("output_factor", l.output_factor, EntryConstraint::SymmetricPsd);
      io.real("trace_inv_input", l.cache.trace_inv_x);
      io.real("trace_inv_output", l.cache.trace_inv_d);
      io.boolean("has_traces", l.cache.has_traces);
      io.integer("clamped", l.cache.clamped);
      io.integer("fallbacks", l.cache.fallbacks);
      io.integer("last_batch", l.last_batch);
      io.array("recorded_inputs", l.recorded_inputs, EntryConstraint::Finite, true);
      io.array("recorded_gradients", l.recorded_gradients, EntryConstraint::Finite, true);
      io.leave();
    }
  }

 private:
  struct Layer {
    std::string name;
    KroneckerFactoredCovariance<Scalar> cov;
    std::size_t weight_index;     // into params_
    std::ptrdiff_t bias_index;    // into params_, or −1
    Eigen::Index in, out;
    Matrix a_stats, g_stats;      // recorded examples (first `recorded` rows)
    Eigen::Index recorded = 0;
    Eigen::Index last_batch = 0;  // examples of the last update that had statistics
    Vector x, delta;              // one example, x with the homogeneous 1
    Matrix gradient, direction;   // G = −c [∇W ∇b], Σδ G Σx
    Matrix backup_x, backup_d;    // factors before the update (rollback)
  };

  std::size_t add_layer(const std::string& name, Parameter W, const Parameter* b) {
    for (const auto& l : layers_) {
      if (l.name == name) {
        throw InvalidInputError("kfopt::KroneckerFilter::add_dense_layer: a layer named '" + name +
                                "' is already registered");
      }
    }
    if (b != nullptr && (b->rows() != W.rows() || b->cols() != 1)) {
      throw ShapeError("kfopt::KroneckerFilter::add_dense_layer (layer '" + name + "'): W is " +
                       detail::shape_string(W.rows(), W.cols()) + " but b is " +
                       detail::shape_string(b->rows(), b->cols()) + " (need " +
                       detail::shape_string(W.rows(), 1) + ")");
    }
    const std::size_t wi = params_.size();
    params_.add(W.renamed(name + ".weight"));
    std::ptrdiff_t bi = -1;
    if (b != nullptr) {
      bi = static_cast<std::ptrdiff_t>(params_.size());
      params_.add(b->renamed(name + ".bias"));
    }
    const Eigen::Index in = W.cols(), out = W.rows();
    const Eigen::Index n = in + (b != nullptr ? 1 : 0);
    const double v0 = options_.initial_variance > 0.0 ? options_.initial_variance : options_.prior_variance;
    layers_.push_back(Layer{name, KroneckerFactoredCovariance<Scalar>(n, out, static_cast<Scalar>(v0), options_.projection),
                            wi, bi, in, out, Matrix(0, in), Matrix(0, out), 0, 0,
                            Vector::Zero(n), Vector::Zero(out), Matrix::Zero(out, n),
                            Matrix::Zero(out, n), Matrix(n, n), Matrix(out, out)});
    Layer& l = layers_.back();
    if (b != nullptr) l.x(in) = Scalar(1);  // homogeneous coordinate
    return layers_.size() - 1;
  }

  static void require_positive_definite(const char* op, const std::string& layer,
                                        const char* which, const Eigen::Ref<const Matrix>& f,
                                        Eigen::Index n) {
    const std::string where = std::string(op) + " (layer '" + layer + "')";
    detail::require_shape(where.c_str(), which, f, n, n);
    detail::require_symmetric(where.c_str(), which, f);
    Eigen::LLT<Matrix> llt(f);
    const auto d = llt.matrixLLT().diagonal();
    if (llt.info() != Eigen::Success || !(d.minCoeff() > Scalar(0)) ||
        !ScalarTraits<Scalar>::invertible_spectrum(d.minCoeff() * d.minCoeff(),
                                                   d.maxCoeff() * d.maxCoeff())) {
      throw InvalidInputError(where + ": " + which + " (" + detail::shape_of(f) +
                              ") is not positive definite (singular or indefinite)");
    }
  }

  Layer& layer_at(const char* op, std::size_t id) {
    if (id >= layers_.size()) {
      throw InvalidInputError(std::string(op) + ": no layer with id " + std::to_string(id) +
                              " (" + std::to_string(layers_.size()) + " registered)");
    }
    return layers_[id];
  }

  // G = scale · [∇W ∇b].
  void gather(Layer& l, Scalar scale) {
    params_[l.weight_index].matrices(
        [&](const auto&, const auto& dW) { l.gradient.leftCols(l.in) = scale * dW; });
    if (l.bias_index >= 0) {
      l.gradient.col(l.in) = scale * params_[static_cast<std::size_t>(l.bias_index)].gradient().col(0);
    }
  }

  // [W b] ← the new values computed in `direction` ([W b] + Σδ G Σx).
  void scatter(Layer& l) {
    params_[l.weight_index].matrices([&](auto W, const auto&) { W = l.direction.leftCols(l.in); });
    if (l.bias_index >= 0) {
      params_[static_cast<std::size_t>(l.bias_index)].value().col(0) = l.direction.col(l.in);
    }
  }

  void collect_counters() {
    std::int64_t clamped = 0, fallbacks = 0;
    for (const auto& l : layers_) {
      clamped += l.cov.clamped();
      fallbacks += l.cov.fallbacks();
    }
    state_.clamped_variances = clamped;
    state_.projection_fallbacks = fallbacks;
  }

  KroneckerFilterOptions options_;
  State state_;
  ParameterSet<Scalar> params_;
  std::deque<Layer> layers_;
};

}  // namespace kfopt
