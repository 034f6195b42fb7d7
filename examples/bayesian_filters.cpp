/// \file bayesian_filters.cpp
/// \brief The Bayesian-filtering optimizers of Aitchison (2018) against Adam, AdamW and
/// RMSProp on the Fashion-MNIST classifier of the reference example (fashion_mnist.cpp).
///
/// Model and data pipeline are those of fashion_mnist.cpp's classifier task, built from the
/// same toolkit (examples/common): an MLP 784-256-128-10 with relu hidden layers, softmax
/// cross-entropy, He-uniform initialization from the seed, mini-batches drawn by
/// BatchSampler(seed + 1), test accuracy on the first N test images. Every optimizer starts
/// from the same weights and sees the same mini-batches.
///
/// Optimizers (names as in the CSV):
///
/// | name                | kfopt class                                  | paper        |
/// |---------------------|----------------------------------------------|--------------|
/// | adam                | Adam                                         | baseline     |
/// | adamw               | Adam, AdamOptions::adamw                     | baseline     |
/// | rmsprop             | RmsProp                                      | baseline     |
/// | filter_rmsprop      | FilterRmsProp                                | §2.1.1       |
/// | filter_adam         | FilterAdam, FilterAdamForm::Adam (Σ_ww → 0)  | §2.1.2       |
/// | filter_adam_sww     | FilterAdam, FilterAdamForm::Combined (η_w>0) | §2.2.7       |
/// | filter_fixed_point  | FilterFixedPoint                             | §2.1.1, SI 4.1 |
/// | kronecker_filter    | KroneckerFilter (whitening, η > 0)           | §2.1.3       |
///
/// **What the filters observe.** A filter is a Bayesian filter over the weights; each
/// mini-batch is an observation whose log-likelihood is `S` times the mean mini-batch loss
/// (`--filter-scale S`; S = m, the batch size, would be the summed loss, every example counted
/// once; the default S = 60000 scales the mini-batch to the training set, as Bayesian neural
/// networks do, so that the filters reach their adaptive regimes within the run — see
/// "Default settings" below). The filters therefore receive the gradient `S ∇` of that loss, and a
/// Fisher sample `e` whose square is the diagonal of the likelihood precision:
/// `e = (S/m) sqrt(Σ_b e_b²)` from per-example gradients `e_b` of targets sampled from the
/// model (`--filter-fisher sampled`, the paper's recommendation, §2.1 and §2.2.8; one extra
/// backward pass), or of the data's targets (`empirical`), or the raw mini-batch gradient
/// (`gradient`, what Adam squares) or its centered form (`centered`). The Kronecker filter
/// gets the same per-example `(a_b, (S/m) δ_b)` through record_statistics, as K-FAC does.
/// Unlike Adam, the filters are not invariant to the scale of the loss: S moves them along
/// the paper's regimes (see common/filter_diagnostics.hpp and the notes the program prints).
///
/// **Default settings** (from short sweeps, 300 steps; numbers in the README section):
/// - filter RMSProp: η = 1e-3 (RMSProp's learning rate: σ²_post → η/sqrt⟨e²⟩, §2.1.1), σ² = 1
///   (negligible decay), S = 60000. The steady state is reached after ~1/(2η sqrt⟨e²⟩) steps:
///   ~16 steps at S = 60000 (measured sqrt⟨e²⟩ ≈ 31), ~3300 at S = m = 128, where the whole
///   run would be SGD with step σ²_prior(1)·S.
/// - initial variances 0.1/S for every filter: the first, prior-dominated steps are SGD steps
///   of 0.1 on the mean loss (larger ones stalled or diverged in the sweeps).
/// - filter Adam (and its Σ_ww form): η = 1e-3, η_p = 0.1 (β1 = 0.9), σ² = 1, S = 7e5, so that
///   x = η sqrt⟨e²⟩/η_p ≈ 10: Adam's regime needs x ≫ 1 (§2.1.2; at x ≈ 10 the filter takes
///   ≈ 0.64 of Adam's step), while the discrete filter needs Σ_ww e² ≈ η_p sqrt(2x) ≪ 1.
///   Σ_ww form: η_w = 3e-5 (1e-3 diverged in the sweep; 1e-4 blew up on seed 2 at step
///   ≈ 580 with the model-sampled e).
/// - fixed-point form: η = 1e-3, σ² = η/(2 wd) = 5e-3 with AdamW's wd = 0.1 (the same decay
///   per step), β = 0.9/0.999, S = 60000: 2σ² sqrt⟨e²⟩/η ≫ 1, the AdamW end.
/// - Kronecker filter: η = 1e-3, σ² = 1, S = 1000 (S = 60000 diverged at step 111), drift
///   traces refreshed every 10 steps.
/// - baselines: Adam 1e-3; AdamW 1e-3 with wd 0.1; RMSProp 1e-3, α = 0.99.
/// At the end of a run each diagonal filter prints its measured median sqrt⟨e²⟩ and the regime
/// it implies (common/filter_diagnostics.hpp).
///
/// **Nesterov placement (§2.2.4).** The filters with phases (filter RMSProp, filter Adam,
/// Kronecker filter) are driven explicitly: the parameters hold μ_prior(t) when the
/// mini-batch gradient (and the Fisher sample) are evaluated; update() moves them to
/// μ_post(t); the test accuracy of a logged step is measured there, at the posterior mean;
/// predict() then moves them to μ_prior(t+1), the look-ahead point of the next gradient.
/// train_loss is the mean of the mini-batch losses measured where the gradient is taken
/// (μ_prior for the filters, the current weights for the others), before each step.
///
/// Output contract (design.md): `--out DIR` writes DIR/classifier_filters.csv with the header
/// `optimizer,step,seconds,train_loss,test_metric` (test_metric = test accuracy), progress on
/// stderr, a summary table on stdout; examples/plot_results.sh DIR draws the PNG.

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>


#include <kfopt/core/parameter_block.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/bayes_filter/filter_fixed_point.hpp>
#include <kfopt/optim/bayes_filter/filter_rmsprop.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/first_order/rmsprop.hpp>

#include "common/batches.hpp"
#include "common/cli.hpp"
#include "common/csv_writer.hpp"
#include "common/example_main.hpp"
#include "common/filter_diagnostics.hpp"
#include "common/idx_reader.hpp"
#include "common/losses.hpp"
#include "common/mlp.hpp"
#include "common/progress.hpp"
#include "common/summary_table.hpp"
#include "common/training_loop.hpp"

namespace ex = kfopt_examples;

namespace {

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

enum class FilterFisher { Sampled, Empirical, Gradient, Centered };

const char* to_string(FilterFisher f) {
  switch (f) {
    case FilterFisher::Sampled: return "sampled";
    case FilterFisher::Empirical: return "empirical";
    case FilterFisher::Gradient: return "gradient";
    case FilterFisher::Centered: return "centered";
  }
  return "?";
}

const std::vector<std::string> all_optimizers{
    "adam",        "adamw",           "rmsprop",            "filter_rmsprop",
    "filter_adam", "filter_adam_sww", "filter_fixed_point", "kronecker_filter"};

struct Settings {
  bool quick = false;
  bool use_float = false;  ///< --float: train in single precision
  std::string out_dir = "out";
  std::string data_dir = ex::default_fashion_mnist_dir();
  std::vector<std::string> optimizers = all_optimizers;
  std::vector<unsigned> seeds{1};
  long steps = 2000;
  long batch = 128;
  long log_every = 0;
  long test_examples = 10000;

  // Baselines.
  double adam_lr = 1e-3;
  double adamw_lr = 1e-3;
  double adamw_wd = 0.1;
  double rmsprop_lr = 1e-3;
  double rmsprop_alpha = 0.99;

  // What the filters observe.
  double filter_scale = 60000.0;  ///< S: the filters' log-likelihood is S × the mean loss
  FilterFisher filter_fisher = FilterFisher::Sampled;

  // Filter RMSProp (§2.1.1).
  double frms_lr = 1e-3;
  double frms_sigma2 = 1.0;
  double frms_init = 0.0;  ///< 0: 0.1/S (the first steps are SGD with step 0.1 on the mean loss)

  // Filter Adam (§2.1.2) and the Σ_ww form (§2.2.7).
  double fadam_lr = 1e-3;
  double fadam_momentum = 0.1;
  double fadam_sigma2 = 1.0;
  double fadam_init = 0.0;  ///< 0: 0.1/S, as filter RMSProp
  double fadam_sww_lr = 1e-3;
  double fadam_weight_noise = 3e-5;

  // Fixed-point form.
  double ffp_lr = 1e-3;
  double ffp_sigma2 = 5e-3;  ///< η/(2 wd) with AdamW's wd = 0.1: the same decay per step
  double ffp_beta1 = 0.9;
  double ffp_beta2 = 0.999;

  // Kronecker-factored filter (§2.1.3).
  double kf_lr = 1e-3;
  double kf_sigma2 = 1.0;
  double kf_init = 0.0;  ///< 0: 0.1/S
  long kf_trace_period = 10;

  std::string label_suffix;  ///< "_s<seed>" when several seeds run (set per seed)

  // Per-filter overrides of S (0: --filter-scale). Filter Adam needs x = η sqrt⟨e²⟩/η_p ≫ 1
  // to act as Adam (§2.1.2), which at η = 1e-3, η_p = 0.1 takes a larger S (x ≈ 10 here).
  // The Kronecker filter diverged at S = 60000 in our sweeps (step 111) and runs at 1000.
  double frms_scale = 0.0, fadam_scale = 7e5, fadam_sww_scale = 7e5, ffp_scale = 0.0,
         kf_scale = 1000.0;

  /// S of a filter: its own override, else --filter-scale (default 60000, the training set).
  double scale(double own = 0.0) const { return own > 0.0 ? own : filter_scale; }

  /// The initial variance of a filter: its own setting, else 0.1/S, so that the first steps
  /// (where the prior dominates) are SGD steps of 0.1 on the mean loss.
  static double initial_variance(double own, double scale) { return own > 0.0 ? own : 0.1 / scale; }
};

const char* help_text =
    R"(bayesian_filters: Bayesian-filtering optimizers (Aitchison 2018) vs Adam, AdamW, RMSProp on
the Fashion-MNIST classifier 784-256-128-10 (relu, softmax cross-entropy) of fashion_mnist.
Every optimizer starts from the same weights and sees the same mini-batches. Writes
DIR/classifier_filters.csv (optimizer,step,seconds,train_loss,test_metric; test_metric = test
accuracy), progress on stderr, a summary table and regime notes on stdout.

Options:
  --quick               CI-sized run (< 2 min on 2 cores): 300 steps, 1000 test images
  --float               train in single precision (default double)
  --out DIR             where classifier_filters.csv goes (default out/)
  --data DIR            folder with the Fashion-MNIST IDX .gz files
                        (default /usr/share/datasets/fashion-mnist, package dataset-fashion-mnist)
  --optimizers LIST     comma-separated subset of
                        adam,adamw,rmsprop,filter_rmsprop,filter_adam,filter_adam_sww,
                        filter_fixed_point,kronecker_filter (default: all)
  --steps N             optimizer steps per run (default 2000; --quick 150)
  --batch N             mini-batch size m (default 128)
  --log-every N         steps between CSV rows (default steps/40; --quick steps/15)
  --test-examples N     test images for the accuracy (default 10000; --quick 1000)
  --seed N | --seeds LIST
                        seed(s) of initialization, batch order and Fisher sampling (default 1);
                        with several seeds every optimizer runs once per seed and the CSV names
                        carry a suffix "_s<seed>"

Baselines:
  --adam-lr X           Adam learning rate (default 1e-3)
  --adamw-lr X, --adamw-wd X
                        AdamW learning rate and decoupled weight decay (default 1e-3, 0.1)
  --rmsprop-lr X, --rmsprop-alpha X
                        RMSProp learning rate and smoothing (default 1e-3, 0.99)

What the filters observe:
  --filter-scale S      the filters' log-likelihood is S x (mean mini-batch loss); default
                        60000, the training set (S = m would count each example once)
  --frms-scale S, --fadam-scale S, --fadam-sww-scale S, --ffp-scale S, --kf-scale S
                        S of one filter (default: --filter-scale, except filter Adam and its
                        Sigma_ww form 7e5, so that x = eta sqrt<e^2>/eta_p >> 1, and the
                        Kronecker filter 1000)
  --filter-fisher F     the Fisher sample e: sampled (default; per-example gradients of targets
                        drawn from the model, e^2 = (S/m)^2 sum_b e_b^2), empirical (same with the
                        data's targets), gradient (e = S x the mini-batch gradient, what Adam
                        squares) or centered (gradient minus its running mean)

Filters (eta: drift per step; sigma2: the prior's stationary variance, decay eta^2/(2 sigma2)):
  --frms-lr X, --frms-sigma2 X, --frms-init X
                        filter RMSProp eta, sigma2, initial variance (default 1e-3, 1, 0.1/S:
                        the first steps, dominated by the prior, are SGD steps of 0.1)
  --fadam-lr X, --fadam-momentum X, --fadam-sigma2 X, --fadam-init X
                        filter Adam eta, eta_p (beta1 = 1 - eta_p), sigma2, initial Sigma_ww
                        (default 1e-3, 0.1, 1, 0.1/S)
  --fadam-sww-lr X, --fadam-weight-noise X
                        the Sigma_ww form (section 2.2.7): its eta and eta_w (default 1e-3,
                        3e-5); eta_p, sigma2 and the initial Sigma_ww as filter Adam
  --ffp-lr X, --ffp-sigma2 X, --ffp-beta1 X, --ffp-beta2 X
                        fixed-point form (default 1e-3, 5e-3, 0.9, 0.999; sigma2 = eta/(2 wd)
                        gives AdamW's decay lr*wd per step with wd = 0.1)
  --kf-lr X, --kf-sigma2 X, --kf-init X, --kf-trace-period N
                        Kronecker filter eta, sigma2, initial Sigma = init I (x) I, period of the
                        drift's trace refresh (default 1e-3, 1, 0.1/S, 10)
  --help                this text
)";

std::vector<unsigned> parse_seeds(const std::string& text) {
  std::vector<unsigned> seeds;
  for (const auto& item : ex::split_list(text)) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (end == item.c_str() || *end != '\0' || v < 0 || v > 4'000'000'000L) {
      throw ex::UsageError("--seeds: bad seed '" + item + "'");
    }
    seeds.push_back(static_cast<unsigned>(v));
  }
  if (seeds.empty()) throw ex::UsageError("--seeds: the list is empty");
  return seeds;
}

Settings parse_command_line(int argc, char** argv, bool& show_help) {
  ex::CommandLine cli(argc, argv);
  Settings s;
  show_help = cli.take_flag("--help") || cli.take_flag("-h");
  if (show_help) return s;
  s.quick = cli.take_flag("--quick");
  s.use_float = cli.take_flag("--float");
  if (s.quick) {
    s.steps = 150;
    s.test_examples = 1000;
  }
  s.out_dir = cli.take_string("--out", s.out_dir);
  s.data_dir = cli.take_string("--data", s.data_dir);
  const std::string list = cli.take_string("--optimizers", "");
  if (!list.empty()) {
    s.optimizers = ex::split_list(list);
    if (s.optimizers.empty()) throw ex::UsageError("--optimizers: the list is empty");
    for (const auto& name : s.optimizers) {
      if (std::find(all_optimizers.begin(), all_optimizers.end(), name) == all_optimizers.end()) {
        throw ex::UsageError("--optimizers: unknown optimizer '" + name + "' (see --help)");
      }
    }
  }
  const long max_steps = 10'000'000;
  s.steps = cli.take_long("--steps", s.steps, 1, max_steps);
  s.batch = cli.take_long("--batch", s.batch, 1, 60000);
  s.log_every = cli.take_long("--log-every", 0, 1, max_steps);
  if (s.log_every == 0) s.log_every = std::max(1L, s.steps / (s.quick ? 15 : 40));
  s.test_examples = cli.take_long("--test-examples", s.test_examples, 1, 10000);
  const std::string seed = cli.take_string("--seed", "");
  const std::string seeds = cli.take_string("--seeds", "");
  if (!seed.empty() && !seeds.empty()) throw ex::UsageError("give --seed or --seeds, not both");
  if (!seed.empty() || !seeds.empty()) s.seeds = parse_seeds(seed.empty() ? seeds : seed);
  if (!seed.empty() && s.seeds.size() != 1) throw ex::UsageError("--seed takes one seed");

  const double tiny = 1e-12;
  s.adam_lr = cli.take_double("--adam-lr", s.adam_lr, tiny, 10.0);
  s.adamw_lr = cli.take_double("--adamw-lr", s.adamw_lr, tiny, 10.0);
  s.adamw_wd = cli.take_double("--adamw-wd", s.adamw_wd, 0.0, 1e3);
  s.rmsprop_lr = cli.take_double("--rmsprop-lr", s.rmsprop_lr, tiny, 10.0);
  s.rmsprop_alpha = cli.take_double("--rmsprop-alpha", s.rmsprop_alpha, 0.0, 0.999999);

  s.filter_scale = cli.take_double("--filter-scale", s.filter_scale, tiny, 1e12);
  const std::string fisher = cli.take_string("--filter-fisher", "sampled");
  if (fisher == "sampled") {
    s.filter_fisher = FilterFisher::Sampled;
  } else if (fisher == "empirical") {
    s.filter_fisher = FilterFisher::Empirical;
  } else if (fisher == "gradient") {
    s.filter_fisher = FilterFisher::Gradient;
  } else if (fisher == "centered") {
    s.filter_fisher = FilterFisher::Centered;
  } else {
    throw ex::UsageError("--filter-fisher expects sampled, empirical, gradient or centered, got '" +
                         fisher + "'");
  }

  s.frms_lr = cli.take_double("--frms-lr", s.frms_lr, 0.0, 10.0);
  s.frms_sigma2 = cli.take_double("--frms-sigma2", s.frms_sigma2, tiny, 1e12);
  s.frms_init = cli.take_double("--frms-init", s.frms_init, 0.0, 1e12);
  s.fadam_lr = cli.take_double("--fadam-lr", s.fadam_lr, 0.0, 10.0);
  s.fadam_momentum = cli.take_double("--fadam-momentum", s.fadam_momentum, tiny, 1.0);
  s.fadam_sigma2 = cli.take_double("--fadam-sigma2", s.fadam_sigma2, tiny, 1e12);
  s.fadam_init = cli.take_double("--fadam-init", s.fadam_init, 0.0, 1e12);
  s.fadam_sww_lr = cli.take_double("--fadam-sww-lr", s.fadam_sww_lr, 0.0, 10.0);
  s.fadam_weight_noise = cli.take_double("--fadam-weight-noise", s.fadam_weight_noise, 0.0, 10.0);
  s.ffp_lr = cli.take_double("--ffp-lr", s.ffp_lr, tiny, 10.0);
  s.ffp_sigma2 = cli.take_double("--ffp-sigma2", s.ffp_sigma2, tiny, 1e12);
  s.ffp_beta1 = cli.take_double("--ffp-beta1", s.ffp_beta1, 0.0, 0.999999);
  s.ffp_beta2 = cli.take_double("--ffp-beta2", s.ffp_beta2, 0.0, 0.999999);
  s.kf_lr = cli.take_double("--kf-lr", s.kf_lr, 0.0, 10.0);
  s.kf_sigma2 = cli.take_double("--kf-sigma2", s.kf_sigma2, tiny, 1e12);
  s.kf_init = cli.take_double("--kf-init", s.kf_init, 0.0, 1e12);
  s.kf_trace_period = cli.take_long("--kf-trace-period", s.kf_trace_period, 1, 1'000'000);
  s.frms_scale = cli.take_double("--frms-scale", s.frms_scale, 0.0, 1e12);
  s.fadam_scale = cli.take_double("--fadam-scale", s.fadam_scale, 0.0, 1e12);
  s.fadam_sww_scale = cli.take_double("--fadam-sww-scale", s.fadam_sww_scale, 0.0, 1e12);
  s.ffp_scale = cli.take_double("--ffp-scale", s.ffp_scale, 0.0, 1e12);
  s.kf_scale = cli.take_double("--kf-scale", s.kf_scale, 0.0, 1e12);
  cli.finish();
  return s;
}

std::string fmt(double x) { return ex::cell("%g", x); }

/// Everything that depends on the precision (the network, the optimizers, the runs), compiled
/// for float (--float) and double.
template <typename Scalar>
struct Precision {
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
using Net = ex::Mlp<Scalar>;

// ---------------------------------------------------------------------------------------------
// The classifier of fashion_mnist.cpp: network, mini-batch loss and gradient, Fisher pass
// ---------------------------------------------------------------------------------------------

class Classifier {
 public:
  explicit Classifier(const ex::FashionMnist<Scalar>& data) : data_(&data) {}

  /// The classifier of fashion_mnist.cpp: 784-256-128-10, relu, relu, identity (logits),
  /// initialized from `seed` by the same Mlp::initialize.
  static Net make_network(unsigned seed) {
    using A = ex::Activation;
    Net net({784, 256, 128, 10}, {A::Relu, A::Relu, A::Identity});
    std::mt19937 rng(seed);
    net.initialize(rng);
    return net;
  }

  /// Layer names as in fashion_mnist.cpp.
  static std::string layer_name(const Net& net, std::size_t l) {
    return l + 1 == net.depth() ? "out" : "fc" + std::to_string(l + 1);
  }

  void load_batch(const std::vector<int>& index) {
    ex::gather_rows(data_->train.images, index, x_);
    ex::gather_labels(data_->train.labels, index, labels_);
  }

  /// Forward and backward pass on the loaded mini-batch: every layer's dW, db (gradient of
  /// the mean loss) and per-example g (of the data's targets). Returns the mean loss.
  Scalar loss_and_gradient(Net& net) {
    const Matrix& logits = net.forward(x_);
    const Scalar loss = ex::softmax_cross_entropy<Scalar>(logits, labels_, &output_grad_);
    net.backward(output_grad_);
    return loss;
  }

  /// Replaces every layer's g by the per-example gradients of targets drawn from the model's
  /// predictive distribution (dW, db untouched).
  template <typename Rng>
  void fisher_pass(Net& net, Rng& rng) {
    ex::sample_softmax_gradient(net.layers().back().h, rng, output_grad_);
    net.backward(output_grad_, Net::ParameterGradients::Skip);
  }

  /// Test accuracy on the first `count` test images, in chunks of 1000.
  double test_accuracy(Net& net, Eigen::Index count) {
    count = std::min(count, data_->test.size());
    double sum = 0.0;
    for (Eigen::Index start = 0; start < count; start += 1000) {
      const Eigen::Index rows = std::min<Eigen::Index>(1000, count - start);
      chunk_ = data_->test.images.middleRows(start, rows);
      const std::vector<int> labels(data_->test.labels.begin() + start,
                                    data_->test.labels.begin() + start + rows);
      sum += ex::accuracy<Scalar>(net.forward(chunk_), labels) * static_cast<double>(rows);
    }
    return sum / static_cast<double>(count);
  }

 private:
  const ex::FashionMnist<Scalar>* data_;
  Matrix x_;
  std::vector<int> labels_;
  Matrix output_grad_;
  Matrix chunk_;
};

// ---------------------------------------------------------------------------------------------
// Training loop
// ---------------------------------------------------------------------------------------------

struct RunResult {
  std::string optimizer;
  std::string settings;
  unsigned seed = 1;
  long steps = 0;
  double final_train_loss = std::numeric_limits<double>::quiet_NaN();
  double test_accuracy = std::numeric_limits<double>::quiet_NaN();
  double best_test_accuracy = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0.0;
  bool diverged = false;
  long skipped = 0;
  std::vector<std::string> notes;
};

/// One optimizer as the loop sees it. `update` computes the gradient on the loaded
/// mini-batch at the current parameters (μ_prior for a filter), updates the parameters
/// (μ_post for a filter) and returns the mini-batch loss; `predict` moves a filter to its
/// next prior mean (nothing for the others); `skipped` counts steps that did not succeed.
struct Stepper {
  std::function<double()> update;
  std::function<void()> predict = [] {};
  std::function<long()> skipped = [] { return 0L; };
};

static RunResult train(const std::string& name, unsigned seed, Classifier& problem, Net& net,
                const Settings& settings, ex::CsvWriter& csv, Stepper& stepper) {
  const std::string label = name + settings.label_suffix;
  RunResult result;
  result.optimizer = label;
  result.seed = seed;
  ex::BatchSampler sampler(60000, settings.batch, seed + 1);  // as fashion_mnist.cpp
  {
    ex::BatchSampler peek(60000, settings.batch, seed + 1);
    problem.load_batch(peek.next());
    const double loss0 = static_cast<double>(problem.loss_and_gradient(net));
    csv.row(label, 0, 0.0, loss0, problem.test_accuracy(net, settings.test_examples));
  }
  ex::ProgressBar progress("classifier/" + label, settings.steps);
  const auto outcome = ex::run_training_loop(
      settings.steps, settings.log_every, progress,
      [&](long) {
        problem.load_batch(sampler.next());
        return static_cast<double>(stepper.update());
      },
      [&](long t, double seconds, double train_loss) {
        // Measured at the parameters update() left: μ_post for the filters.
        const double accuracy = problem.test_accuracy(net, settings.test_examples);
        csv.row(label, t, seconds, train_loss, accuracy);
        result.final_train_loss = train_loss;
        result.test_accuracy = accuracy;
        if (!(accuracy <= result.best_test_accuracy)) result.best_test_accuracy = accuracy;
      },
      [&](long) { stepper.predict(); },
      [&](long t, double seconds, double loss) {
        csv.row(label, t, seconds, loss, std::numeric_limits<double>::quiet_NaN());
      },
      [](double mean_loss) { return ex::cell("train_loss %.4g (window mean)", mean_loss); });
  result.steps = outcome.steps;
  result.diverged = outcome.diverged;
  result.seconds = outcome.seconds;
  result.skipped = stepper.skipped();
  return result;
}

// ---------------------------------------------------------------------------------------------
// What the filters observe: scaled gradients and the Fisher sample e
// ---------------------------------------------------------------------------------------------

static kfopt::ParameterSet<Scalar> parameter_set(Net& net) {
  kfopt::ParameterSet<Scalar> params;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    const std::string name = Classifier::layer_name(net, l);
    params.add(name + ".W", layer.W, layer.dW);
    params.add(name + ".b", layer.b, layer.db);
  }
  return params;
}

/// For the diagonal filters: after the mini-batch's forward/backward pass, computes the
/// Fisher sample e per parameter block (W then b of every layer, the order of parameter_set),
/// scales the stored gradients by S, and keeps ⟨e²⟩ for the regime notes.
class FilterObservation {
 public:
  FilterObservation(Net& net, const Settings& settings, double scale, unsigned seed)
      : net_(&net), settings_(&settings), scale_(scale), rng_(seed + 2) {
    for (std::size_t l = 0; l < net.depth(); ++l) {
      e_.push_back(Matrix::Zero(net.layer(l).W.rows(), net.layer(l).W.cols()));
      e_.push_back(Matrix::Zero(net.layer(l).b.size(), 1));
    }
  }

  /// Whether the filters take e from here (FisherEstimate::Supplied) rather than computing it
  /// from the gradient themselves (Gradient, Centered).
  bool supplied() const {
    return settings_->filter_fisher == FilterFisher::Sampled ||
           settings_->filter_fisher == FilterFisher::Empirical;
  }

  kfopt::FisherEstimate estimate() const {
    switch (settings_->filter_fisher) {
      case FilterFisher::Gradient: return kfopt::FisherEstimate::Gradient;
      case FilterFisher::Centered: return kfopt::FisherEstimate::Centered;
      default: return kfopt::FisherEstimate::Supplied;
    }
  }

  /// Loss, gradient (scaled by S) and e on the loaded mini-batch.
  double evaluate(Classifier& problem) {
    const double loss = static_cast<double>(problem.loss_and_gradient(*net_));
    const double m = static_cast<double>(settings_->batch);
    const Scalar per_example = static_cast<Scalar>(scale_ / m);
    if (settings_->filter_fisher == FilterFisher::Sampled) problem.fisher_pass(*net_, rng_);
    const Scalar s = static_cast<Scalar>(scale_);
    for (std::size_t l = 0; l < net_->depth(); ++l) {
      auto& layer = net_->layer(l);
      if (supplied()) {
        ex::per_example_fisher_root<Scalar>(layer.a, layer.g, per_example, e_[2 * l], bias_,
                                            square_a_, square_g_);
        e_[2 * l + 1].col(0) = bias_;
      }
      layer.dW *= s;
      layer.db *= s;
      if (!supplied()) {  // the filter squares the (scaled) gradient itself
        e_[2 * l] = layer.dW;
        e_[2 * l + 1].col(0) = layer.db;
      }
      if (settings_->filter_fisher == FilterFisher::Centered) continue;  // filter's own ĝ
      square_average_.add(2 * l, e_[2 * l]);
      square_average_.add(2 * l + 1, e_[2 * l + 1]);
    }
    square_average_.next_step();
    return loss;
  }

  const kfopt::BlockBuffers<Scalar>& e() const { return e_; }
  double scale() const { return scale_; }
  /// Median over parameters of sqrt⟨e²⟩ (NaN for the centered estimate, kept by the filter).
  double median_root() const { return square_average_.median_root(); }

 private:
  Net* net_;
  const Settings* settings_;
  double scale_;
  std::mt19937_64 rng_;
  kfopt::BlockBuffers<Scalar> e_;
  Vector bias_;
  Matrix square_a_, square_g_;
  ex::SquareAverage<Scalar> square_average_{0.99};
};

static std::string observation_text(const Settings& s, double scale) {
  return "S=" + fmt(scale) + " e=" + to_string(s.filter_fisher);
}

// ---------------------------------------------------------------------------------------------
// The runs
// ---------------------------------------------------------------------------------------------

static RunResult run_adam_like(const std::string& name, unsigned seed, Classifier& problem,
                        const Settings& settings, ex::CsvWriter& csv) {
  Net net = Classifier::make_network(seed);
  auto params = parameter_set(net);
  kfopt::AdamOptions o;
  std::string text;
  if (name == "adam") {
    o.learning_rate = settings.adam_lr;
    text = "lr=" + fmt(o.learning_rate);
  } else {
    o = kfopt::AdamOptions::adamw(settings.adamw_lr, settings.adamw_wd);
    text = "lr=" + fmt(o.learning_rate) + " wd=" + fmt(o.weight_decay);
  }
  kfopt::Adam<Scalar> adam(params, o);
  Stepper stepper;
  long failed = 0;
  stepper.update = [&] {
    const double loss = static_cast<double>(problem.loss_and_gradient(net));
    if (adam.step() != kfopt::Status::Success) ++failed;
    return loss;
  };
  stepper.skipped = [&] { return failed; };
  RunResult r = train(name, seed, problem, net, settings, csv, stepper);
  r.settings = text;
  return r;
}

static RunResult run_rmsprop(unsigned seed, Classifier& problem, const Settings& settings,
                      ex::CsvWriter& csv) {
  Net net = Classifier::make_network(seed);
  auto params = parameter_set(net);
  kfopt::RmsPropOptions o;
  o.learning_rate = settings.rmsprop_lr;
  o.alpha = settings.rmsprop_alpha;
  kfopt::RmsProp<Scalar> rmsprop(params, o);
  Stepper stepper;
  long failed = 0;
  stepper.update = [&] {
    const double loss = static_cast<double>(problem.loss_and_gradient(net));
    if (rmsprop.step() != kfopt::Status::Success) ++failed;
    return loss;
  };
  stepper.skipped = [&] { return failed; };
  RunResult r = train("rmsprop", seed, problem, net, settings, csv, stepper);
  r.settings = "lr=" + fmt(o.learning_rate) + " alpha=" + fmt(o.alpha);
  return r;
}

static RunResult run_filter_rmsprop(unsigned seed, Classifier& problem, const Settings& settings,
                             ex::CsvWriter& csv) {
  Net net = Classifier::make_network(seed);
  auto params = parameter_set(net);
  FilterObservation observation(net, settings, settings.scale(settings.frms_scale), seed);
  kfopt::FilterRmsPropOptions o;
  o.learning_rate = settings.frms_lr;
  o.prior_variance = settings.frms_sigma2;
  o.initial_variance = Settings::initial_variance(settings.frms_init, observation.scale());
  o.fisher = observation.estimate();
  kfopt::FilterRmsProp<Scalar> filter(params, o);
  Stepper stepper;
  long failed = 0;
  stepper.update = [&] {
    const double loss = observation.evaluate(problem);  // at μ_prior
    const kfopt::Status s = observation.supplied() ? filter.update(observation.e()) : filter.update();
    if (s != kfopt::Status::Success) ++failed;
    return loss;
  };
  stepper.predict = [&] {
    if (filter.phase() == kfopt::FilterPhase::Posterior) filter.predict();
  };
  stepper.skipped = [&] { return failed; };
  RunResult r = train("filter_rmsprop", seed, problem, net, settings, csv, stepper);
  r.settings = "eta=" + fmt(o.learning_rate) + " sigma2=" + fmt(o.prior_variance) +
               " init=" + fmt(o.initial_variance) + " " + observation_text(settings, observation.scale());
  const double rms = observation.median_root();
  if (std::isfinite(rms)) {
    r.notes.push_back(
        "filter_rmsprop: median sqrt<e^2> = " + fmt(rms) + ": steady variance " +
        fmt(ex::filter_steady_variance(o.learning_rate, o.prior_variance, rms)) +
        " (eta/sqrt<e^2> = " + fmt(o.learning_rate / rms) + "), reached over ~" +
        fmt(ex::filter_averaging_steps(o.learning_rate, rms)) + " steps");
  }
  return r;
}

static RunResult run_filter_adam(bool with_sww, unsigned seed, Classifier& problem,
                          const Settings& settings, ex::CsvWriter& csv) {
  const std::string name = with_sww ? "filter_adam_sww" : "filter_adam";
  Net net = Classifier::make_network(seed);
  auto params = parameter_set(net);
  FilterObservation observation(
      net, settings, settings.scale(with_sww ? settings.fadam_sww_scale : settings.fadam_scale), seed);
  kfopt::FilterAdamOptions o;
  o.learning_rate = with_sww ? settings.fadam_sww_lr : settings.fadam_lr;
  o.momentum_rate = settings.fadam_momentum;
  o.prior_variance = settings.fadam_sigma2;
  o.initial_weight_variance = Settings::initial_variance(settings.fadam_init, observation.scale());
  o.fisher = observation.estimate();
  if (with_sww) {
    o.form = kfopt::FilterAdamForm::Combined;
    o.weight_noise = settings.fadam_weight_noise;
  }
  kfopt::FilterAdam<Scalar> filter(params, o);
  Stepper stepper;
  long failed = 0;
  // The Nesterov-like protocol of §2.2.4: the gradient is evaluated where the parameters
  // are, μ_prior(t) (momentum and decay already applied by the previous predict()).
  stepper.update = [&] {
    const double loss = observation.evaluate(problem);
    const kfopt::Status s = observation.supplied() ? filter.update(observation.e()) : filter.update();
    if (s != kfopt::Status::Success) ++failed;
    return loss;
  };
  stepper.predict = [&] {
    if (filter.phase() == kfopt::FilterPhase::Posterior) filter.predict();
  };
  stepper.skipped = [&] { return failed; };
  RunResult r = train(name, seed, problem, net, settings, csv, stepper);
  r.settings = "eta=" + fmt(o.learning_rate) + " eta_p=" + fmt(o.momentum_rate) +
               (with_sww ? " eta_w=" + fmt(o.weight_noise) : std::string()) +
               " sigma2=" + fmt(o.prior_variance) + " init=" + fmt(o.initial_weight_variance) +
               " " + observation_text(settings, observation.scale());
  const double rms = observation.median_root();
  if (std::isfinite(rms)) {
    const double x = ex::filter_adam_data_strength(o.learning_rate, o.momentum_rate, rms);
    r.notes.push_back(name + ": median sqrt<e^2> = " + fmt(rms) + ", x = eta sqrt<e^2>/eta_p = " +
                      fmt(x) + ": steady step = " + fmt(ex::filter_adam_step_fraction(x)) +
                      " x Adam's eta<g>/sqrt<e^2> (Adam regime needs x >> 1)");
  }
  return r;
}

static RunResult run_filter_fixed_point(unsigned seed, Classifier& problem, const Settings& settings,
                                 ex::CsvWriter& csv) {
  Net net = Classifier::make_network(seed);
  auto params = parameter_set(net);
  FilterObservation observation(net, settings, settings.scale(settings.ffp_scale), seed);
  kfopt::FilterFixedPointOptions o;
  o.learning_rate = settings.ffp_lr;
  o.prior_variance = settings.ffp_sigma2;
  o.beta1 = settings.ffp_beta1;
  o.beta2 = settings.ffp_beta2;
  o.fisher = observation.estimate();
  kfopt::FilterFixedPoint<Scalar> filter(params, o);
  Stepper stepper;
  long failed = 0;
  stepper.update = [&] {
    const double loss = observation.evaluate(problem);
    const kfopt::Status s = observation.supplied() ? filter.step(observation.e()) : filter.step();
    if (s != kfopt::Status::Success) ++failed;
    return loss;
  };
  stepper.skipped = [&] { return failed; };
  RunResult r = train("filter_fixed_point", seed, problem, net, settings, csv, stepper);
  r.settings = "eta=" + fmt(o.learning_rate) + " sigma2=" + fmt(o.prior_variance) +
               " b1=" + fmt(o.beta1) + " b2=" + fmt(o.beta2) + " " + observation_text(settings, observation.scale());
  const double rms = observation.median_root();
  if (std::isfinite(rms)) {
    r.notes.push_back(
        "filter_fixed_point: median sqrt<e^2> = " + fmt(rms) + ": sigma2_post = " +
        fmt(ex::filter_steady_variance(o.learning_rate, o.prior_variance, rms)) +
        " vs the Adam limit eta/sqrt<e^2> = " + fmt(o.learning_rate / rms) +
        " and the SGD limit sigma2 = " + fmt(o.prior_variance) + "; decay eta^2/(2 sigma2) = " +
        fmt(o.learning_rate * o.learning_rate / (2.0 * o.prior_variance)) + " per step");
  }
  return r;
}

/// The Kronecker-factored filter through its layer interface (as K-FAC): every dense layer
/// registered with W, dW, b, db; per step the layer inputs a and per-example output
/// gradients δ (of sampled targets, times S/m) are recorded, then update() / predict().
static RunResult run_kronecker_filter(unsigned seed, Classifier& problem, const Settings& settings,
                               ex::CsvWriter& csv) {
  Net net = Classifier::make_network(seed);
  kfopt::KroneckerFilterOptions o = kfopt::KroneckerFilterOptions::whitening(settings.kf_lr, settings.kf_sigma2);
  const double scale = settings.scale(settings.kf_scale);
  o.initial_variance = Settings::initial_variance(settings.kf_init, scale);
  o.trace_period = static_cast<int>(settings.kf_trace_period);
  o.loss_reduction = kfopt::LossReduction::Mean;  // dW of the mean loss, times S/m below
  kfopt::KroneckerFilter<Scalar> filter(o);
  std::vector<std::size_t> ids;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    ids.push_back(filter.add_dense_layer(Classifier::layer_name(net, l), layer.W, layer.dW,
                                         layer.b, layer.db));
  }
  std::mt19937_64 rng(seed + 2);
  const double m = static_cast<double>(settings.batch);
  const Scalar ratio = static_cast<Scalar>(scale / m);
  const bool empirical = settings.filter_fisher == FilterFisher::Empirical;
  Matrix delta;
  Stepper stepper;
  long failed = 0;
  stepper.update = [&] {
    const double loss = static_cast<double>(problem.loss_and_gradient(net));  // at μ_prior
    // LossReduction::Mean multiplies ∇ by the k examples recorded: the log-likelihood of the
    // batch is then (S/m)·Σ_b ℓ_b once dW, db and δ carry the factor S/m.
    if (!empirical) problem.fisher_pass(net, rng);
    for (std::size_t l = 0; l < net.depth(); ++l) {
      auto& layer = net.layer(l);
      delta = ratio * layer.g;
      filter.record_statistics(ids[l], layer.a, delta);
      layer.dW *= ratio;
      layer.db *= ratio;
    }
    if (filter.update() != kfopt::Status::Success) {
      ++failed;
      filter.clear_statistics();
    }
    return loss;
  };
  stepper.predict = [&] {
    if (filter.phase() == kfopt::FilterPhase::Posterior) filter.predict();
  };
  stepper.skipped = [&] { return failed; };
  RunResult r = train("kronecker_filter", seed, problem, net, settings, csv, stepper);
  r.settings = "eta=" + fmt(o.learning_rate) + " sigma2=" + fmt(o.prior_variance) +
               " init=" + fmt(o.initial_variance) + " S=" + fmt(scale) + " e=" +
               (empirical ? "empirical" : "sampled");
  const auto& st = filter.state();
  if (st.clamped_variances > 0 || st.projection_fallbacks > 0) {
    r.notes.push_back("kronecker_filter: " + std::to_string(st.clamped_variances) +
                      " factor coefficients clamped, " +
                      std::to_string(st.projection_fallbacks) + " projection fallbacks");
  }
  if (settings.filter_fisher == FilterFisher::Gradient ||
      settings.filter_fisher == FilterFisher::Centered) {
    r.notes.push_back("kronecker_filter: takes per-example statistics, so --filter-fisher " +
                      std::string(to_string(settings.filter_fisher)) +
                      " falls back to sampled targets");
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

static RunResult run_one(const std::string& name, unsigned seed, Classifier& problem,
                  const Settings& settings, ex::CsvWriter& csv) {
  if (name == "adam" || name == "adamw") return run_adam_like(name, seed, problem, settings, csv);
  if (name == "rmsprop") return run_rmsprop(seed, problem, settings, csv);
  if (name == "filter_rmsprop") return run_filter_rmsprop(seed, problem, settings, csv);
  if (name == "filter_adam") return run_filter_adam(false, seed, problem, settings, csv);
  if (name == "filter_adam_sww") return run_filter_adam(true, seed, problem, settings, csv);
  if (name == "filter_fixed_point") return run_filter_fixed_point(seed, problem, settings, csv);
  return run_kronecker_filter(seed, problem, settings, csv);
}

static int run(const Settings& settings) {
  const auto load_start = std::chrono::steady_clock::now();
  const auto data = ex::load_fashion_mnist<Scalar>(settings.data_dir);
  std::fprintf(stderr, "loaded Fashion-MNIST from %s in %.1f s\n", settings.data_dir.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());
  std::fprintf(stderr,
               "classifier %s in %s precision: %ld steps of batch %ld, test accuracy on %ld "
               "images; the filters observe S = %g x the mean loss, Fisher sample e: %s\n",
               Classifier::make_network(1).shape_string().c_str(),
               sizeof(Scalar) == 4 ? "single" : "double", settings.steps, settings.batch,
               settings.test_examples, settings.scale(), to_string(settings.filter_fisher));
  Classifier problem(data);
  ex::CsvWriter csv(settings.out_dir, "classifier_filters");
  const bool several = settings.seeds.size() > 1;
  std::vector<RunResult> results;
  for (unsigned seed : settings.seeds) {
    Settings per_seed = settings;
    per_seed.label_suffix = several ? "_s" + std::to_string(seed) : std::string();
    for (const auto& name : settings.optimizers) {
      results.push_back(run_one(name, seed, problem, per_seed, csv));
    }
  }

  ex::SummaryTable table({"optimizer", "settings", "steps", "train_loss", "test_acc",
                          "best_acc", "seconds", "ms/step", "skipped"},
                         2);
  std::vector<std::string> notes;
  for (const auto& r : results) {
    table.add_row({r.optimizer, r.settings, std::to_string(r.steps),
                   r.diverged ? "diverged" : ex::cell("%.4f", r.final_train_loss),
                   ex::cell("%.4f", r.test_accuracy), ex::cell("%.4f", r.best_test_accuracy),
                   ex::cell("%.1f", r.seconds),
                   ex::cell("%.1f", r.steps > 0 ? 1e3 * r.seconds / static_cast<double>(r.steps) : 0.0),
                   std::to_string(r.skipped)});
    for (const auto& n : r.notes) notes.push_back((several ? "seed " + std::to_string(r.seed) + ", " : std::string()) + n);
  }
  ex::print_summary(std::cout, table, notes);
  std::cout << "* train_loss: mean mini-batch softmax cross-entropy over the last logging window "
               "(measured where each gradient is taken, before the step); test_acc: at the end "
               "(filters: at the posterior mean), on the first "
            << settings.test_examples << " test images; best_acc: best logged; seconds: "
               "training time without evaluation; skipped: steps whose optimizer status was "
               "not Success.\n"
            << "* CSV: " << csv.path() << "; plot: examples/plot_results.sh " << settings.out_dir
            << "\n";
  return 0;
}
};

}  // namespace

int main(int argc, char** argv) {
  return ex::example_main("bayesian_filters", help_text, argc, argv, parse_command_line,
                          [](const Settings& settings) {
                            return settings.use_float ? Precision<float>::run(settings)
                                                      : Precision<double>::run(settings);
                          });
}
