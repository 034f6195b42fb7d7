/// \file fashion_mnist.cpp
/// \brief Reference example: K-FAC, Adam and SGD with momentum on Fashion-MNIST.
///
/// Two tasks, each trained from the same initial weights and the same mini-batch sequence
/// by every optimizer:
///
/// - **autoencoder**: the deep autoencoder 784-1000-500-250-30-250-500-1000-784 of
///   Hinton & Salakhutdinov (2006), the benchmark of the K-FAC paper (Martens & Grosse
///   2015). Hidden layers tanh (`--ae-activation`; Hinton & Salakhutdinov used logistic
///   units), a linear 30-unit code layer, logistic outputs with the Bernoulli
///   cross-entropy summed over the 784 pixels and averaged over images.
///   test_metric = squared reconstruction error Σ_p (σ(z_p) − x_p)² per test image (mean).
/// - **classifier**: an MLP 784-256-128-10 with relu hidden layers and softmax
///   cross-entropy. test_metric = test accuracy.
///
/// Output contract (design.md): `--out DIR/<task>.csv` with the header
/// `optimizer,step,seconds,train_loss,test_metric`, progress on stderr, a summary table on
/// stdout, and `examples/plot_results.sh DIR` turns the CSVs into PNGs.
///
/// train_loss in the CSV is the mean of the mini-batch losses (each measured before its
/// step) since the previous row; the row at step 0 is the loss of the first mini-batch at
/// the initial weights. seconds counts training only (evaluation is excluded).
///
/// K-FAC's G factor uses targets sampled from the model's predictive distribution (true
/// Fisher); `--fisher empirical` uses the data's targets instead (empirical Fisher).
///
/// `--distributed` (in a build with the kfopt::mpi target) trains data-parallel on the ranks of
/// an MPI job: `mpirun -np P fashion_mnist --distributed ...` splits every global mini-batch
/// of `--batch` examples over the P ranks (contiguous shares, common/cluster.hpp); Adam and
/// SGD average the gradients (kfopt::mpi::DataParallelGradients), K-FAC its gradients and
/// factor statistics and splits its refreshes (Cholesky inverses or eigendecompositions) over the ranks
/// (kfopt::mpi::DistributedKfac). Rank 0 prints the progress and the table and writes the CSV
/// and the checkpoints; the summary adds the optimizers' communication per step, measured
/// and as the cost model (kfopt/mpi/cost_model.hpp) predicts it. With `--fisher empirical`
/// a run on P ranks follows the one-process run up to rounding; with sampled targets each
/// rank draws its own (from the seed, the step and the rank), so the runs differ by the
/// sampling only.
///
/// Run `fashion_mnist --help` for the options. The data comes from the Debian package
/// dataset-fashion-mnist (see common/idx_reader.hpp).

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <kfopt/core/parameter_block.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/first_order/sgd.hpp>

#if __has_include(<kfopt/optim/kfac/kfac.hpp>)
#include <kfopt/optim/kfac/kfac.hpp>
#define KFOPT_EXAMPLE_HAS_KFAC 1
#else
#define KFOPT_EXAMPLE_HAS_KFAC 0
#endif

#if __has_include(<kfopt/io/checkpoint.hpp>) && defined(KFOPT_EXAMPLE_CHECKPOINTS)
#include "common/run_checkpoint.hpp"
#define KFOPT_EXAMPLE_HAS_CHECKPOINT 1
#else
#define KFOPT_EXAMPLE_HAS_CHECKPOINT 0
#endif

#if defined(KFOPT_EXAMPLE_MPI)
#include <kfopt/mpi/cost_model.hpp>
#include <kfopt/mpi/data_parallel_gradients.hpp>
#include <kfopt/mpi/distributed_kfac.hpp>
#endif

#include "common/batches.hpp"
#include "common/cli.hpp"
#include "common/cluster.hpp"
#include "common/csv_writer.hpp"
#include "common/example_main.hpp"
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

enum class Task { Autoencoder, Classifier };

const char* task_name(Task t) { return t == Task::Autoencoder ? "autoencoder" : "classifier"; }

enum class FisherTargets { Sampled, Empirical };

/// Per-task run length and optimizer hyperparameters.
struct TaskSettings {
  long steps = 0;
  long batch = 0;
  long log_every = 0;
  long test_examples = 0;  ///< test_metric is computed on the first N test images
  double adam_lr = 1e-3;
  double sgd_lr = 1e-2;
  double sgd_momentum = 0.9;
  double kfac_lr = 0.1;
  double kfac_damping = 1e-2;
  double kfac_kl_clip = 1e-2;
  long kfac_statistics_period = 1;
  long kfac_inverse_period = 20;
  bool kfac_cholesky = true;  ///< damped inverses by Cholesky (else by eigendecomposition)
};

struct Settings : ex::CheckpointOptions {
  bool quick = false;
  bool use_float = false;
  bool distributed = false;  ///< data-parallel on the ranks of an MPI job
  /// With --distributed: K-FAC's ranks broadcast each layer's preconditioned gradient from
  /// its owner every step, instead of the refreshes (DistributedKfacOptions).
  bool broadcast_preconditioned = false;
  std::string out_dir = "out";
  std::string data_dir = ex::default_fashion_mnist_dir();
  std::vector<Task> tasks{Task::Autoencoder, Task::Classifier};
  std::vector<std::string> optimizers{"kfac", "adam", "sgd"};
  unsigned seed = 1;
  FisherTargets fisher = FisherTargets::Sampled;
  std::vector<Eigen::Index> ae_encoder{1000, 500, 250, 30};  ///< encoder widths, code last
  ex::Activation ae_activation = ex::Activation::Tanh;
  TaskSettings autoencoder;
  TaskSettings classifier;
  TaskSettings& of(Task t) { return t == Task::Autoencoder ? autoencoder : classifier; }
  const TaskSettings& of(Task t) const { return t == Task::Autoencoder ? autoencoder : classifier; }

  /// Every setting that shapes a run's trajectory (not its length), as text: a checkpoint
  /// resumes only a run with the same.
  std::string trajectory_settings(Task t, bool single) const {
    const TaskSettings& ts = of(t);
    std::string layers;
    for (auto w : ae_encoder) layers += std::to_string(w) + " ";
    char text[512];
    std::snprintf(text, sizeof text,
                  "%s seed %u batch %ld log %ld test %ld adam %.17g sgd %.17g/%.17g kfac %.17g "
                  "%.17g %.17g %ld %ld %d fisher %d ae %s%d",
                  single ? "float" : "double", seed, ts.batch, ts.log_every, ts.test_examples,
                  ts.adam_lr, ts.sgd_lr, ts.sgd_momentum, ts.kfac_lr, ts.kfac_damping,
                  ts.kfac_kl_clip, ts.kfac_statistics_period, ts.kfac_inverse_period,
                  ts.kfac_cholesky ? 1 : 0, static_cast<int>(fisher), layers.c_str(),
                  static_cast<int>(ae_activation));
    return text;
  }
};

const char* help_text =
    R"(fashion_mnist: K-FAC vs Adam vs SGD with momentum on Fashion-MNIST (kfopt reference example)

Tasks: the deep autoencoder 784-1000-500-250-30-250-500-1000-784 (Bernoulli loss) and a
784-256-128-10 classifier (softmax cross-entropy). Each optimizer starts from the same weights
and sees the same mini-batches. Writes DIR/<task>.csv, prints a summary table.

Options:
  --quick               CI-sized run (< 2 min on 2 cores): fewer steps, test subset of 1000,
                        and a narrower autoencoder 784-250-125-60-30-60-125-250-784
  --out DIR             where <task>.csv goes (default out/)
  --data DIR            folder with the four Fashion-MNIST IDX .gz files
                        (default /usr/share/datasets/fashion-mnist, from the Debian package
                        dataset-fashion-mnist)
  --task T              autoencoder | classifier | all (default all)
  --optimizers LIST     comma-separated subset of kfac,adam,sgd (default all three)
  --steps N             optimizer steps per run (default: autoencoder 2000, classifier 3000;
                        --quick: 150 and 300)
  --batch N             mini-batch size (default: autoencoder 256, classifier 128;
                        --quick: 128 and 128)
  --log-every N         steps between CSV rows (default: steps/40; --quick: steps/30)
  --test-examples N     test images used for test_metric (default: autoencoder 2000,
                        classifier 10000; --quick: 1000)
  --seed N              seed of initialization, batch order and Fisher sampling (default 1)
  --float               train in single precision (default double)
  --fisher F            sampled (true Fisher, default) | empirical (data targets in K-FAC's G)
  --ae-layers LIST      encoder widths, code layer last (default 1000,500,250,30)
  --ae-activation A     hidden units of the autoencoder: tanh (default), sigmoid, relu
  --checkpoint PATH     save the run to PATH (HDF5: model, optimizer state, batch order,
                        step, time) every --checkpoint-every N steps (default: at every
                        CSV row) and at the last step; needs one --task and one optimizer
  --resume PATH         continue the run saved in PATH up to --steps (the total): the CSV
                        is continued, not restarted, and the run ends exactly where an
                        uninterrupted one would
  --adam-lr X, --sgd-lr X, --kfac-lr X, --kfac-damping X, --kfac-kl-clip X
                        override the per-task defaults printed at the start of each task
  --kfac-stats-period N, --kfac-inverse-period N
                        K-FAC statistics / inverse refresh periods (default 1 and 20)
  --kfac-inverse M      how K-FAC prepares its damped inverses: cholesky (default; the
                        damping is fixed here, so nothing is refactorized between
                        refreshes) or eigen (eigendecompositions, several times dearer)
  --distributed         data-parallel training on the ranks of an MPI job
                        (mpirun -np P fashion_mnist --distributed ...): every global
                        mini-batch of --batch examples is split over the P ranks; rank 0
                        prints and writes; the summary adds the communication per step
  --kfac-broadcast W     with --distributed, what K-FAC's ranks broadcast: refreshes (default:
                        each factor's refresh computed by one rank and sent to all) or
                        preconditioned (each layer's owner alone refreshes it and sends its
                        preconditioned gradient every step; less memory, more traffic)
  --help                this text
)";

Settings parse_command_line(int argc, char** argv, bool& show_help) {
  ex::CommandLine cli(argc, argv);
  Settings s;
  show_help = cli.take_flag("--help") || cli.take_flag("-h");
  if (show_help) return s;
  s.quick = cli.take_flag("--quick");
  s.use_float = cli.take_flag("--float");
  s.distributed = cli.take_flag("--distributed");
  const std::string broadcast = cli.take_string("--kfac-broadcast", "refreshes");
  if (broadcast != "refreshes" && broadcast != "preconditioned") {
    throw ex::UsageError("--kfac-broadcast expects refreshes or preconditioned, got '" + broadcast + "'");
  }
  s.broadcast_preconditioned = broadcast == "preconditioned";
  if (s.distributed && !ex::cluster_available) {
    throw ex::UsageError("--distributed: this build has no MPI (configure with Open MPI "
                         "installed: the kfopt::mpi target)");
  }
  s.out_dir = cli.take_string("--out", s.out_dir);
  s.data_dir = cli.take_string("--data", s.data_dir);

  const std::string task = cli.take_string("--task", "all");
  if (task == "autoencoder") {
    s.tasks = {Task::Autoencoder};
  } else if (task == "classifier") {
    s.tasks = {Task::Classifier};
  } else if (task != "all") {
    throw ex::UsageError("--task expects autoencoder, classifier or all, got '" + task + "'");
  }

  s.optimizers = ex::split_list(cli.take_string("--optimizers", "kfac,adam,sgd"));
  for (const auto& name : s.optimizers) {
    if (name != "kfac" && name != "adam" && name != "sgd") {
      throw ex::UsageError("--optimizers: unknown optimizer '" + name + "' (kfac, adam, sgd)");
    }
  }
  if (s.optimizers.empty()) throw ex::UsageError("--optimizers: the list is empty");

  const std::string fisher = cli.take_string("--fisher", "sampled");
  if (fisher == "empirical") {
    s.fisher = FisherTargets::Empirical;
  } else if (fisher != "sampled") {
    throw ex::UsageError("--fisher expects sampled or empirical, got '" + fisher + "'");
  }

  // Run lengths: a real run by default, CI-sized with --quick.
  s.autoencoder = TaskSettings{2000, 256, 0, 2000};
  s.classifier = TaskSettings{3000, 128, 0, 10000};
  if (s.quick) {
    s.autoencoder = TaskSettings{150, 128, 0, 1000};
    s.classifier = TaskSettings{300, 128, 0, 1000};
    s.ae_encoder = {250, 125, 60, 30};
  }
  // Optimizer defaults per task, from short sweeps on --quick runs (not a careful tuning).
  // The autoencoder's loss is a sum over 784 pixels, so its gradients are large: SGD needs
  // a small learning rate, and K-FAC's step is set by the KL clip (kl_clip) rather than by
  // the learning rate.
  s.autoencoder.adam_lr = 1e-3;
  s.autoencoder.sgd_lr = 1e-3;
  s.autoencoder.kfac_lr = 0.1;
  s.autoencoder.kfac_damping = 0.1;
  s.autoencoder.kfac_kl_clip = 1e-2;
  s.classifier.adam_lr = 1e-3;
  s.classifier.sgd_lr = 3e-2;
  s.classifier.kfac_lr = 0.1;
  s.classifier.kfac_damping = 1.0;
  s.classifier.kfac_kl_clip = 1e-2;

  const long max_steps = 10'000'000;
  const long steps = cli.take_long("--steps", 0, 1, max_steps);
  const long batch = cli.take_long("--batch", 0, 1, 60000);
  const long log_every = cli.take_long("--log-every", 0, 1, max_steps);
  const long test_examples = cli.take_long("--test-examples", 0, 1, 10000);
  // Options given as 0 / -1 below mean "absent": the per-task default stays.
  const double tiny = 1e-12;
  const double adam_lr = cli.take_double("--adam-lr", 0.0, tiny, 1e3);
  const double sgd_lr = cli.take_double("--sgd-lr", 0.0, tiny, 1e3);
  const double kfac_lr = cli.take_double("--kfac-lr", 0.0, tiny, 1e3);
  const double kfac_damping = cli.take_double("--kfac-damping", 0.0, tiny, 1e6);
  const double kfac_kl_clip = cli.take_double("--kfac-kl-clip", -1.0, 0.0, 1e6);
  const long kfac_stats = cli.take_long("--kfac-stats-period", 0, 1, 1'000'000);
  const long kfac_inverse = cli.take_long("--kfac-inverse-period", 0, 1, 1'000'000);
  const std::string kfac_inverse_method = cli.take_string("--kfac-inverse", "cholesky");
  if (kfac_inverse_method != "cholesky" && kfac_inverse_method != "eigen") {
    throw ex::UsageError("--kfac-inverse expects cholesky or eigen, got '" + kfac_inverse_method +
                         "'");
  }
  for (Task t : {Task::Autoencoder, Task::Classifier}) {
    TaskSettings& ts = s.of(t);
    if (steps > 0) ts.steps = steps;
    if (batch > 0) ts.batch = batch;
    if (test_examples > 0) ts.test_examples = test_examples;
    // About 40 rows per run (30 with --quick, where each row's test evaluation weighs more).
    ts.log_every = log_every > 0 ? log_every : std::max(1L, ts.steps / (s.quick ? 30 : 40));
    if (adam_lr > 0) ts.adam_lr = adam_lr;
    if (sgd_lr > 0) ts.sgd_lr = sgd_lr;
    if (kfac_lr > 0) ts.kfac_lr = kfac_lr;
    if (kfac_damping > 0) ts.kfac_damping = kfac_damping;
    if (kfac_kl_clip >= 0) ts.kfac_kl_clip = kfac_kl_clip;
    if (kfac_stats > 0) ts.kfac_statistics_period = kfac_stats;
    if (kfac_inverse > 0) ts.kfac_inverse_period = kfac_inverse;
    ts.kfac_cholesky = kfac_inverse_method == "cholesky";
  }

  const long seed = cli.take_long("--seed", 1, 0, 4'000'000'000L);
  s.seed = static_cast<unsigned>(seed);

  const std::string layers = cli.take_string("--ae-layers", "");
  if (!layers.empty()) {
    s.ae_encoder.clear();
    for (const auto& item : ex::split_list(layers)) {
      const long width = std::strtol(item.c_str(), nullptr, 10);
      if (width <= 0) throw ex::UsageError("--ae-layers: bad width '" + item + "'");
      s.ae_encoder.push_back(width);
    }
  }
  try {
    s.ae_activation = ex::activation_from_string(cli.take_string("--ae-activation", "tanh"));
  } catch (const std::invalid_argument& e) {
    throw ex::UsageError(std::string("--ae-activation: ") + e.what());
  }
  static_cast<ex::CheckpointOptions&>(s) = ex::take_checkpoint_options(
      cli, KFOPT_EXAMPLE_HAS_CHECKPOINT, s.tasks.size() == 1 && s.optimizers.size() == 1,
      "give one --task (autoencoder or classifier) and one optimizer (--optimizers X)", max_steps);
  if (s.broadcast_preconditioned && (!s.distributed || !s.checkpoint_path.empty() ||
                                     !s.resume_path.empty())) {
    throw ex::UsageError("--kfac-broadcast preconditioned needs --distributed, and its ranks hold "
                         "different inverses, so it cannot be combined with --checkpoint or --resume");
  }
  cli.finish();
  return s;
}

// ---------------------------------------------------------------------------------------------
// The two learning problems: network, mini-batch loss and gradient, Fisher pass, test metric
// ---------------------------------------------------------------------------------------------

/// Everything that differs between the autoencoder and the classifier.
template <typename Scalar>
class Problem {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Net = ex::Mlp<Scalar>;

  Problem(Task task, const ex::FashionMnist<Scalar>& data, const Settings& settings,
          ex::Cluster& cluster)
      : task_(task), data_(&data), settings_(&settings), cluster_(&cluster) {}

  /// The processes this problem is trained on.
  ex::Cluster& cluster() const { return *cluster_; }

  /// A fresh network of this task, initialized from `seed`.
  Net make_network(unsigned seed) const {
    using A = ex::Activation;
    std::vector<Eigen::Index> sizes{784};
    std::vector<A> activations;
    if (task_ == Task::Autoencoder) {
      // Encoder: hidden layers, then a linear code layer; decoder: the mirror image,
      // ending in 784 logits (the Bernoulli loss applies the logistic function).
      const auto& enc = settings_->ae_encoder;
      for (std::size_t i = 0; i < enc.size(); ++i) {
        sizes.push_back(enc[i]);
        activations.push_back(i + 1 == enc.size() ? A::Identity : settings_->ae_activation);
      }
      for (std::size_t i = enc.size() - 1; i-- > 0;) {
        sizes.push_back(enc[i]);
        activations.push_back(settings_->ae_activation);
      }
      sizes.push_back(784);
      activations.push_back(A::Identity);
    } else {
      sizes.insert(sizes.end(), {256, 128, 10});
      activations = {A::Relu, A::Relu, A::Identity};
    }
    Net net(sizes, activations);
    std::mt19937 rng(seed);
    net.initialize(rng);
    return net;
  }

  /// Layer names for the optimizers ("enc1".."dec4" or "fc1", "fc2", "out").
  std::string layer_name(const Net& net, std::size_t l) const {
    if (task_ == Task::Classifier)
      return l + 1 == net.depth() ? "out" : "fc" + std::to_string(l + 1);
    const std::size_t half = net.depth() / 2;
    return l < half ? "enc" + std::to_string(l + 1) : "dec" + std::to_string(l + 1 - half);
  }

  /// Copies this process's share of the global mini-batch `index` (all of it on one
  /// process) into the current mini-batch.
  void load_batch(const std::vector<int>& index) {
    const auto share = cluster_->slice(static_cast<long>(index.size()));
    global_rows_ = static_cast<double>(index.size());
    local_index_.assign(index.begin() + share.first, index.begin() + share.first + share.second);
    ex::gather_rows(data_->train.images, local_index_, x_);
    if (task_ == Task::Classifier) ex::gather_labels(data_->train.labels, local_index_, labels_);
  }

  /// Examples of the current mini-batch on this process.
  Eigen::Index local_rows() const { return x_.rows(); }

  /// Forward and backward pass on this process's share of the mini-batch: fills dW, db of
  /// every layer (gradients of the share's mean loss) and each layer's per-example g (for
  /// the real targets). Returns the mean loss over the whole mini-batch.
  Scalar loss_and_gradient(Net& net) {
    const Scalar loss = loss_of(net.forward(x_), &output_grad_);
    net.backward(output_grad_);
    return global_mean(loss);
  }

  /// Mean loss on the current mini-batch at the current parameters (forward only).
  Scalar loss(Net& net) { return global_mean(loss_of(net.forward(x_), nullptr)); }

  /// After `loss_and_gradient`: replaces every layer's g by the gradients of targets drawn
  /// from the model's predictive distribution (true Fisher). With empirical Fisher the g of
  /// the real targets stays, and nothing is done. dW, db are not touched.
  template <typename Rng>
  void fisher_pass(Net& net, Rng& rng) {
    if (settings_->fisher == FisherTargets::Empirical) return;
    const Matrix& logits = net.layers().back().h;
    if (task_ == Task::Autoencoder) {
      ex::sample_bernoulli_gradient(logits, rng, output_grad_);
    } else {
      ex::sample_softmax_gradient(logits, rng, output_grad_);
    }
    net.backward(output_grad_, Net::ParameterGradients::Skip);
  }

  /// test_metric on the first `count` test images, in chunks of 1000 (bounded memory); each
  /// process evaluates its share.
  double test_metric(Net& net, Eigen::Index count) {
    count = std::min(count, data_->test.size());
    const auto share = cluster_->slice(static_cast<long>(count));
    const Eigen::Index end = share.first + share.second;
    double sum = 0.0;
    for (Eigen::Index start = share.first; start < end; start += 1000) {
      const Eigen::Index rows = std::min<Eigen::Index>(1000, end - start);
      chunk_ = data_->test.images.middleRows(start, rows);
      const Matrix& out = net.forward(chunk_);
      if (task_ == Task::Autoencoder) {
        sum += ex::squared_reconstruction_error<Scalar>(out, chunk_) * static_cast<double>(rows);
      } else {
        const std::vector<int> labels(data_->test.labels.begin() + start,
                                      data_->test.labels.begin() + start + rows);
        sum += ex::accuracy<Scalar>(out, labels) * static_cast<double>(rows);
      }
    }
    return cluster_->sum(sum) / static_cast<double>(count);
  }

  const char* metric_description() const {
    return task_ == Task::Autoencoder
               ? "test_metric = squared reconstruction error per test image, sum over pixels "
                 "of (sigmoid(z) - x)^2 (lower is better)"
               : "test_metric = test accuracy (higher is better)";
  }
  const char* loss_description() const {
    return task_ == Task::Autoencoder
               ? "train_loss = Bernoulli cross-entropy summed over the 784 pixels, mean over "
                 "images"
               : "train_loss = softmax cross-entropy, mean over images";
  }

 private:
  /// The mean over the whole mini-batch from this process's mean over its share.
  Scalar global_mean(Scalar local) {
    if (!cluster_->distributed()) return local;
    return static_cast<Scalar>(cluster_->sum(static_cast<double>(local) * static_cast<double>(x_.rows())) /
                               global_rows_);
  }

  Scalar loss_of(const Matrix& logits, Matrix* grad) {
    if (task_ == Task::Autoencoder) return ex::bernoulli_cross_entropy<Scalar>(logits, x_, grad);
    return ex::softmax_cross_entropy<Scalar>(logits, labels_, grad);
  }

  Task task_;
  const ex::FashionMnist<Scalar>* data_;
  const Settings* settings_;
  ex::Cluster* cluster_;
  std::vector<int> local_index_;  // this process's share of the mini-batch
  double global_rows_ = 0.0;      // examples in the whole mini-batch
  Matrix x_;                 // current mini-batch, m×784
  std::vector<int> labels_;  // its labels (classifier)
  Matrix output_grad_;       // ∂ℓ_i/∂logits, m×outputs
  Matrix chunk_;             // test images being evaluated
};

// ---------------------------------------------------------------------------------------------
// The training loop shared by all optimizers
// ---------------------------------------------------------------------------------------------

/// What one optimizer's run leaves for the summary.
struct RunResult {
  std::string optimizer;
  long steps = 0;  ///< steps actually taken
  long steps_here = 0;  ///< of which by this process (not before the checkpoint it resumed)
  double final_train_loss = std::numeric_limits<double>::quiet_NaN();
  double test_metric = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0.0;  ///< training time, evaluation excluded
  bool diverged = false;
  long failed_steps = 0;                       ///< steps whose optimizer status was not Success
  std::string communication;                   ///< distributed runs: bytes per step, measured and predicted
  std::vector<std::pair<long, double>> curve;  ///< (step, train_loss) of every CSV row
};

/// Registers every layer's W, dW and b, db with a first-order optimizer.
template <typename Scalar>
kfopt::ParameterSet<Scalar> parameter_set(const Problem<Scalar>& problem, ex::Mlp<Scalar>& net) {
  kfopt::ParameterSet<Scalar> params;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    const std::string name = problem.layer_name(net, l);
    params.add(name + ".W", layer.W, layer.dW);
    params.add(name + ".b", layer.b, layer.db);
  }
  return params;
}

/// Runs `steps` steps of `step(t)` (which takes optimizer step t on the loaded mini-batch and
/// returns the mini-batch loss measured before it), logging rows to the CSV. With
/// --checkpoint / --resume, `opt` (its state dict) and `engines` (the optimizer's random
/// engines) are saved and restored with the model, the batch order and the loop's progress.
template <typename Scalar, typename Optimizer, typename StepFunction>
RunResult train(const std::string& optimizer, Task task, Problem<Scalar>& problem,
                ex::Mlp<Scalar>& net, const Settings& settings, ex::CsvWriter& csv,
                Optimizer& opt, const std::vector<std::mt19937_64*>& engines,
                StepFunction&& step) {
  const TaskSettings& ts = settings.of(task);
  RunResult result;
  result.optimizer = optimizer;
  ex::BatchSampler sampler(60000, ts.batch, settings.seed + 1);  // same batches for everyone
  ex::TrainingLoopStart start;
#if KFOPT_EXAMPLE_HAS_CHECKPOINT
  auto model = parameter_set(problem, net);
  const ex::RunIdentity id{"fashion_mnist", task_name(task), optimizer,
                           settings.trajectory_settings(task, sizeof(Scalar) == 4)};
  if (!settings.resume_path.empty()) {
    const kfopt::Checkpoint ck = problem.cluster().load(settings.resume_path);
    const ex::RunProgress p = ex::load_run(settings.resume_path, ck, id, &sampler, engines);
    ck.restore("model", model);
    ck.restore("optimizer", opt);
    start = ex::TrainingLoopStart{p.step + 1, p.seconds, p.window_sum, p.window_count};
    if (problem.cluster().root()) {
      std::fprintf(stderr, "%s/%s: resumed from %s at step %ld\n", task_name(task),
                   optimizer.c_str(), settings.resume_path.c_str(), p.step);
    }
  }
  const long every = settings.checkpoint_every > 0 ? settings.checkpoint_every : ts.log_every;
  auto save = [&](long t, double seconds, double window_sum, long window_count) {
    if (settings.checkpoint_path.empty() || (t % every != 0 && t != ts.steps)) return;
    // Rank 0's training time: every rank saves the same state.
    const double elapsed = problem.cluster().from_root(seconds);
    problem.cluster().save(settings.checkpoint_path,
                           ex::run_checkpoint(id, ex::RunProgress{t, elapsed, window_sum, window_count},
                                              model, opt.state_dict(), &sampler, engines));
  };
#else
  (void)opt;
  (void)engines;
  auto save = [](long, double, double, long) {};
#endif

  // Row 0: the initial weights, on the first mini-batch (not consumed); a resumed run's CSV
  // has it already.
  if (start.first_step == 1) {
    ex::BatchSampler peek(60000, ts.batch, settings.seed + 1);
    problem.load_batch(peek.next());
    const double loss0 = static_cast<double>(problem.loss(net));
    const double metric0 = problem.test_metric(net, ts.test_examples);
    csv.row(optimizer, 0, 0.0, loss0, metric0);
    result.curve.emplace_back(0, loss0);
  }

  ex::ProgressBar progress(std::string(task_name(task)) + "/" + optimizer, ts.steps,
                           problem.cluster().progress_stream());
  const auto outcome = ex::run_training_loop(
      start, ts.steps, ts.log_every, progress,
      [&](long t) {
        problem.load_batch(sampler.next());
        return static_cast<double>(step(t));
      },
      [&](long t, double seconds, double train_loss) {
        const double metric = problem.test_metric(net, ts.test_examples);
        csv.row(optimizer, t, seconds, train_loss, metric);
        result.curve.emplace_back(t, train_loss);
        result.final_train_loss = train_loss;
        result.test_metric = metric;
      },
      [](long) {},
      [&](long t, double seconds, double loss) {
        csv.row(optimizer, t, seconds, loss, std::numeric_limits<double>::quiet_NaN());
      },
      [](double mean_loss) { return ex::cell("train_loss %.4g (window mean)", mean_loss); },
      save);
  result.steps = outcome.steps;
  result.steps_here = outcome.steps - (start.first_step - 1);
  result.diverged = outcome.diverged;
  result.seconds = outcome.seconds;
  return result;
}

// ---------------------------------------------------------------------------------------------
// Distributed runs: the gradient average and the communication report
// ---------------------------------------------------------------------------------------------

/// Before each first-order step of a distributed run: every registered gradient ← its mean
/// over the global mini-batch (kfopt::mpi::DataParallelGradients, weighted by each rank's
/// share). Does nothing on one process.
template <typename Scalar>
class GradientAverage {
 public:
  GradientAverage(ex::Cluster& cluster, kfopt::ParameterSet<Scalar>& params) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (cluster.distributed()) {
      cluster.optimizer_comm().reset_traffic();
      sync_ = std::make_unique<kfopt::mpi::DataParallelGradients<Scalar>>(params,
                                                                          cluster.optimizer_comm());
    }
#else
    (void)cluster;
    (void)params;
#endif
  }
  /// `local_rows`: this rank's share of the mini-batch. A non-finite gradient on any rank
  /// leaves NaN in every rank's gradients, and the optimizer then skips the step everywhere.
  void operator()(Eigen::Index local_rows) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (sync_) (void)sync_->average_weighted(static_cast<double>(local_rows));
#else
    (void)local_rows;
#endif
  }

 private:
#if defined(KFOPT_EXAMPLE_MPI)
  std::unique_ptr<kfopt::mpi::DataParallelGradients<Scalar>> sync_;
#endif
};

/// Bytes the optimizer handed to MPI per step (its communicator's counters, summed over the
/// operations), against `predicted` bytes per step from the cost model, as a summary note.
/// Empty on one process.
inline std::string communication_report(ex::Cluster& cluster, const std::string& what,
                                        long steps, double predicted, const std::string& parts) {
#if defined(KFOPT_EXAMPLE_MPI)
  if (!cluster.distributed() || steps <= 0) return {};
  const double measured =
      static_cast<double>(cluster.optimizer_comm().traffic().total().payload_bytes) /
      static_cast<double>(steps);
  const int P = cluster.size();
  char text[640];
  std::snprintf(text, sizeof text,
                "%s: %d ranks, per step the optimizer handed MPI %.4g MB; the cost model "
                "predicts %.4g MB (%s; measured/predicted %.6f); a ring all-reduce sends "
                "2(P-1)/P = %.2f of its part per rank",
                what.c_str(), P, measured / 1e6, predicted / 1e6, parts.c_str(),
                predicted > 0 ? measured / predicted : 0.0, 2.0 * (P - 1) / P);
  return text;
#else
  (void)cluster;
  (void)what;
  (void)steps;
  (void)predicted;
  (void)parts;
  return {};
#endif
}

/// The cost model's bytes per step of the gradient average over `params` (cost_model.hpp).
template <typename Scalar>
double gradient_bytes_per_step(const kfopt::ParameterSet<Scalar>& params) {
#if defined(KFOPT_EXAMPLE_MPI)
  std::int64_t n = 0;
  for (const auto& block : params) n += block.size();
  return static_cast<double>(kfopt::mpi::cost_model::gradient_message_count(n) * sizeof(Scalar));
#else
  (void)params;
  return 0.0;
#endif
}

// ---------------------------------------------------------------------------------------------
// The optimizers
// ---------------------------------------------------------------------------------------------

template <typename Scalar>
RunResult run_adam(Task task, Problem<Scalar>& problem, const Settings& settings,
                   ex::CsvWriter& csv) {
  auto net = problem.make_network(settings.seed);
  auto params = parameter_set(problem, net);
  kfopt::AdamOptions options;
  options.learning_rate = settings.of(task).adam_lr;
  kfopt::Adam<Scalar> adam(params, options);
  GradientAverage<Scalar> average(problem.cluster(), params);
  RunResult r = train<Scalar>("adam", task, problem, net, settings, csv, adam, {}, [&](long) {
    const Scalar loss = problem.loss_and_gradient(net);
    average(problem.local_rows());
    adam.step();  // a non-finite gradient skips the step; the loss check then stops the run
    return loss;
  });
  r.failed_steps = static_cast<long>(adam.state().counters.skipped_nonfinite);
  r.communication = communication_report(problem.cluster(), "adam", r.steps_here,
                                         gradient_bytes_per_step(params), "gradients");
  return r;
}

template <typename Scalar>
RunResult run_sgd(Task task, Problem<Scalar>& problem, const Settings& settings,
                  ex::CsvWriter& csv) {
  auto net = problem.make_network(settings.seed);
  auto params = parameter_set(problem, net);
  kfopt::SgdOptions options;
  options.learning_rate = settings.of(task).sgd_lr;
  options.momentum = settings.of(task).sgd_momentum;
  kfopt::Sgd<Scalar> sgd(params, options);
  GradientAverage<Scalar> average(problem.cluster(), params);
  RunResult r = train<Scalar>("sgd", task, problem, net, settings, csv, sgd, {}, [&](long) {
    const Scalar loss = problem.loss_and_gradient(net);
    average(problem.local_rows());
    sgd.step();
    return loss;
  });
  r.failed_steps = static_cast<long>(sgd.state().counters.skipped_nonfinite);
  r.communication = communication_report(problem.cluster(), "sgd", r.steps_here,
                                         gradient_bytes_per_step(params), "gradients");
  return r;
}

#if KFOPT_EXAMPLE_HAS_KFAC
/// K-FAC (Martens & Grosse 2015) on every dense layer. Per step: forward and backward pass
/// (dW, db), then — on the steps where K-FAC refreshes its statistics — a second backward
/// pass with targets sampled from the model (true Fisher) whose per-example g, with each
/// layer's input a, updates the Kronecker factors A = E[ā āᵀ] (ā = [a, 1]) and G = E[g gᵀ].
template <typename Scalar>
RunResult run_kfac(Task task, Problem<Scalar>& problem, const Settings& settings,
                   ex::CsvWriter& csv) {
  auto net = problem.make_network(settings.seed);
  const TaskSettings& ts = settings.of(task);
  kfopt::KfacOptions options;
  options.learning_rate = ts.kfac_lr;
  options.damping = ts.kfac_damping;
  options.momentum = 0.9;
  options.decay = 0.95;
  options.statistics_period = static_cast<int>(ts.kfac_statistics_period);
  options.inverse_period = static_cast<int>(ts.kfac_inverse_period);
  options.kl_clip = ts.kfac_kl_clip;
  options.inverse_method =
      ts.kfac_cholesky ? kfopt::InverseMethod::Cholesky : kfopt::InverseMethod::Eigendecomposition;
  options.adaptive_damping = false;
  kfopt::Kfac<Scalar> kfac(options);
  std::vector<std::size_t> ids;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    auto& layer = net.layer(l);
    ids.push_back(
        kfac.add_dense_layer(problem.layer_name(net, l), layer.W, layer.dW, layer.b, layer.db));
  }
  std::mt19937_64 fisher_rng(settings.seed + 2);
  ex::Cluster& cluster = problem.cluster();
  // Distributed: every rank's statistics and gradients summed into the global batch's, the
  // eigendecompositions split over the ranks; each rank samples its Fisher targets from an
  // engine seeded by (seed, step, rank), which the checkpoints then need not hold.
  std::vector<std::mt19937_64*> engines{&fisher_rng};
  long statistics_steps = 0;
#if defined(KFOPT_EXAMPLE_MPI)
  std::unique_ptr<kfopt::mpi::DistributedKfac<Scalar>> distributed;
  if (cluster.distributed()) {
    cluster.optimizer_comm().reset_traffic();
    kfopt::mpi::DistributedKfacOptions dopt;
    dopt.broadcast_preconditioned_gradients = settings.broadcast_preconditioned;
    distributed = std::make_unique<kfopt::mpi::DistributedKfac<Scalar>>(kfac, cluster.optimizer_comm(), dopt);
    engines.clear();
  }
#endif
  auto record = [&](std::size_t l) {
#if defined(KFOPT_EXAMPLE_MPI)
    if (distributed) return distributed->record_statistics(ids[l], net.layer(l).a, net.layer(l).g);
#endif
    return kfac.record_statistics(ids[l], net.layer(l).a, net.layer(l).g);
  };
  auto step = [&] {
#if defined(KFOPT_EXAMPLE_MPI)
    if (distributed) return distributed->step_weighted(static_cast<double>(problem.local_rows()));
#endif
    return kfac.step();
  };
  long refreshes = 0;
  long failed = 0;
  RunResult r = train<Scalar>("kfac", task, problem, net, settings, csv, kfac, engines, [&](long t) {
    const Scalar loss = problem.loss_and_gradient(net);
    if (kfac.wants_statistics()) {
      if (cluster.distributed()) {
        std::seed_seq seq{static_cast<unsigned>(settings.seed + 2), static_cast<unsigned>(t),
                          static_cast<unsigned>(cluster.rank())};
        fisher_rng.seed(seq);
      }
      problem.fisher_pass(net, fisher_rng);
      for (std::size_t l = 0; l < net.depth(); ++l) (void)record(l);
      ++statistics_steps;
    }
    const std::int64_t refreshes_before = kfac.state().inverse_refreshes;
    if (step() != kfopt::Status::Success) ++failed;
    refreshes += static_cast<long>(kfac.state().inverse_refreshes - refreshes_before);
    if (options.adaptive_damping) {
      kfac.report_loss(loss, problem.loss(net));  // same mini-batch, after the step
    }
    return loss;
  });
  r.failed_steps = failed;
#if defined(KFOPT_EXAMPLE_MPI)
  // The cost model's bytes (cost_model.hpp): per step the gradients (N + 3 scalars) and the
  // any-rank agreement (one int); per statistics step m_stat scalars; per refresh the
  // broadcast eigendecompositions or damped Cholesky inverses.
  std::vector<kfopt::mpi::cost_model::LayerShape> shapes;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    shapes.push_back({net.layer(l).W.cols() + 1, net.layer(l).W.rows(), false, 0});
  }
  namespace cm = kfopt::mpi::cost_model;
  const double steps = std::max(1.0, static_cast<double>(r.steps_here));
  const double s = sizeof(Scalar);
  const double gradients = gradient_bytes_per_step(kfac.parameters()) + sizeof(int);
  const double statistics =
      static_cast<double>(cm::distributed_kfac_statistics_count(shapes, 512)) * s *
      static_cast<double>(statistics_steps) / steps;
  const double refresh =
      settings.broadcast_preconditioned
          ? static_cast<double>(cm::distributed_kfac_preconditioned_count(shapes)) * s *
                static_cast<double>(r.steps_here - failed) / steps
          : static_cast<double>(ts.kfac_cholesky ? cm::distributed_kfac_cholesky_refresh_count(shapes)
                                                 : cm::distributed_kfac_refresh_count(shapes)) *
                s * static_cast<double>(refreshes) / steps;
  char parts[200];
  std::snprintf(parts, sizeof parts,
                "gradients and agreement %.4g MB, statistics %.4g MB, %s broadcasts %.4g MB",
                gradients / 1e6, statistics / 1e6,
                settings.broadcast_preconditioned ? "preconditioned-gradient" : "refresh",
                refresh / 1e6);
  r.communication = communication_report(cluster, "kfac", r.steps_here,
                                         gradients + statistics + refresh, parts);
#else
  (void)statistics_steps;
  (void)refreshes;
#endif
  return r;
}
#endif

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

template <typename Scalar>
void run_task(Task task, const ex::FashionMnist<Scalar>& data, const Settings& settings,
              ex::Cluster& cluster, ex::SummaryTable& table, std::vector<std::string>& notes) {
  Problem<Scalar> problem(task, data, settings, cluster);
  const TaskSettings& ts = settings.of(task);
  if (ts.batch < cluster.size()) {
    throw ex::UsageError("--batch " + std::to_string(ts.batch) + " is smaller than the " +
                         std::to_string(cluster.size()) + " ranks it is split over");
  }
  const auto shape = problem.make_network(settings.seed).shape_string();
  if (cluster.root()) {
    std::fprintf(stderr,
               "%s: network %s, %ld steps of batch %ld, %s precision\n"
               "  adam lr %g | sgd lr %g, momentum %g | kfac lr %g, damping %g, kl_clip %g, "
               "statistics every %ld, inverses (%s) every %ld steps, %s Fisher\n",
               task_name(task), shape.c_str(), ts.steps, ts.batch,
               sizeof(Scalar) == 4 ? "single" : "double", ts.adam_lr, ts.sgd_lr, ts.sgd_momentum,
               ts.kfac_lr, ts.kfac_damping, ts.kfac_kl_clip, ts.kfac_statistics_period,
               ts.kfac_cholesky ? "Cholesky" : "eigendecomposition", ts.kfac_inverse_period,
               settings.fisher == FisherTargets::Sampled ? "sampled (true)" : "empirical");
    if (cluster.distributed()) {
      std::fprintf(stderr, "  data-parallel on %d ranks: %ld examples of each mini-batch per rank\n",
                   cluster.size(), ts.batch / cluster.size());
    }
  }
  // A resumed run continues its CSV (rows after the checkpoint's step dropped).
  long resume_step = -1;
#if KFOPT_EXAMPLE_HAS_CHECKPOINT
  if (!settings.resume_path.empty()) {
    const ex::RunIdentity id{"fashion_mnist", task_name(task), settings.optimizers.front(),
                             settings.trajectory_settings(task, sizeof(Scalar) == 4)};
    resume_step = ex::require_same_run(settings.resume_path, cluster.load(settings.resume_path), id);
  }
#endif
  // Rank 0 writes the CSV; the other ranks' writer writes nothing.
  std::unique_ptr<ex::CsvWriter> csv_file =
      !cluster.root()  ? std::make_unique<ex::CsvWriter>()
      : resume_step < 0 ? std::make_unique<ex::CsvWriter>(settings.out_dir, task_name(task))
                        : std::make_unique<ex::CsvWriter>(settings.out_dir, task_name(task),
                                                          settings.optimizers.front(), resume_step);
  ex::CsvWriter& csv = *csv_file;

  std::vector<RunResult> results;
  for (const auto& name : settings.optimizers) {
    if (name == "adam") results.push_back(run_adam(task, problem, settings, csv));
    if (name == "sgd") results.push_back(run_sgd(task, problem, settings, csv));
    if (name == "kfac") {
#if KFOPT_EXAMPLE_HAS_KFAC
      results.push_back(run_kfac(task, problem, settings, csv));
#else
      notes.push_back(std::string(task_name(task)) +
                      ": kfac skipped (this build has no <kfopt/optim/kfac/kfac.hpp>)");
#endif
    }
  }

  // Adam's final training loss is the yardstick for "steps to reach".
  double adam_final = std::numeric_limits<double>::quiet_NaN();
  long adam_steps = 1;
  for (const auto& r : results) {
    if (r.optimizer == "adam" && !r.diverged) {
      adam_final = r.final_train_loss;
      adam_steps = r.steps;
    }
  }
  for (const auto& r : results) {
    const double per_step = r.steps > 0 ? r.seconds / static_cast<double>(r.steps) : 0.0;
    table.add_row({task_name(task), r.optimizer, std::to_string(r.steps),
                   r.diverged ? "diverged" : ex::cell("%.5g", r.final_train_loss),
                   ex::cell("%.5g", r.test_metric), ex::cell("%.1f", r.seconds),
                   ex::cell("%.1f", per_step * 1e3),
                   ex::cell("%.2f", per_step > 0 ? 1.0 / per_step : 0.0),
                   ex::steps_to_reach(r.curve, adam_final, adam_steps, r.optimizer == "adam")});
    if (r.failed_steps > 0) {
      notes.push_back(std::string(task_name(task)) + "/" + r.optimizer + ": " +
                      std::to_string(r.failed_steps) + " steps did not succeed (skipped)");
    }
    if (!r.communication.empty()) notes.push_back(std::string(task_name(task)) + "/" + r.communication);
  }
  notes.push_back(std::string(task_name(task)) + " (" + shape + "): " + problem.loss_description() +
                  "; " + problem.metric_description() + ", on the first " +
                  std::to_string(std::min(ts.test_examples, 10000L)) +
                  " test images. CSV: " + csv.path());
}

template <typename Scalar>
int run(const Settings& settings, ex::Cluster& cluster) {
  const auto load_start = std::chrono::steady_clock::now();
  const auto data = ex::load_fashion_mnist<Scalar>(settings.data_dir);
  if (cluster.root()) std::fprintf(
      stderr, "loaded Fashion-MNIST from %s (%ld train, %ld test images) in %.1f s\n",
      settings.data_dir.c_str(), static_cast<long>(data.train.size()),
      static_cast<long>(data.test.size()),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());

  ex::SummaryTable table({"task", "optimizer", "steps", "train_loss", "test_metric", "seconds",
                          "ms/step", "steps/s", "steps to Adam's final loss"},
                         2);
  std::vector<std::string> notes;
  for (Task task : settings.tasks) run_task<Scalar>(task, data, settings, cluster, table, notes);

  if (!cluster.root()) return 0;
  ex::print_summary(std::cout, table, notes);
  std::cout << "* train_loss: mean mini-batch loss over the last logging window (the last "
               "progress line shows the same number); seconds: training time without evaluation.\n"
            << "* steps to Adam's final loss: the first logged step whose train_loss is at most "
               "Adam's final train_loss (Adam's own row: its step count, the reference).\n"
            << "* Plot: examples/plot_results.sh " << settings.out_dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return ex::example_main("fashion_mnist", help_text, argc, argv, parse_command_line,
                          [](const Settings& settings) {
                            auto run_on = [&](ex::Cluster& cluster) {
                              return settings.use_float ? run<float>(settings, cluster)
                                                        : run<double>(settings, cluster);
                            };
#if defined(KFOPT_EXAMPLE_MPI)
                            if (settings.distributed) {
                              ex::MpiSession session;
                              return session.run("fashion_mnist", [&] {
                                ex::Cluster cluster = ex::Cluster::world();
                                return run_on(cluster);
                              });
                            }
#endif
                            ex::Cluster one;
                            return run_on(one);
                          });
}
