/// \file ekf_online.cpp
/// \brief The extended Kalman filter as an online natural gradient (Ollivier 2018,
/// arXiv:1703.00209), on three online learning problems.
///
/// - **regression**: online softmax regression on real Fashion-MNIST, one pass over a
///   shuffled training stream, one image per step. Images are mean-pooled in 4×4 blocks
///   (28×28 → 7×7 = 49 features, standardized with the training set's mean and standard
///   deviation) plus a bias, so θ = vec(W) with W 10×50 has d = 500 entries and the d×d
///   covariance (2 MB) and its rank-10 update per step (~10 d² = 2.5 M multiply-adds) stay
///   affordable for 60 000 steps. ExtendedKalmanFilter (λ = 0: the exact online Bayesian
///   filter, P_0 = 0.1 I) and its OnlineNaturalGradient twin (γ_t = η_t = 1/(t+1),
///   J_0 = P_0⁻¹, the map of the static-case theorem) run side by side on the same stream;
///   the largest parameter difference over the run is printed. SGD and Adam (batch 1) see
///   the same stream. train_loss = online (prequential) cross-entropy, each image scored
///   before its step; test_metric = accuracy on the 10 000 test images.
/// - **drift**: tracking a drifting parameter. A linear-Gaussian model y = xᵀθ*_t + σε,
///   x ~ N(0, I_10), whose true θ*_t does a random walk of step σ_w per coordinate. Fading
///   memory λ (constant; the default λ = σ_w/σ matches the steady state of the exact filter)
///   tracks it; λ = 0 (the Bayesian filter of a *static* θ) stops tracking, its gain
///   decaying like 1/t. The Kalman filter with the true process noise Q = σ_w² I is shown as
///   the optimal tracker (it has no natural-gradient twin), and the natural-gradient twin of
///   the fading filter (η_t → λ) overlaps it. train_loss = online squared prediction error
///   (y − xᵀθ_{t−1})² (noise floor σ²); test_metric = ‖θ_t − θ*_t‖.
/// - **recurrent**: a tanh RNN (kfopt::TanhRnnCell, 10 hidden units, d = 131) learns the
///   Mackey–Glass series (τ = 17, sampled every 6 time units, standardized;
///   common/chaotic_series.hpp) online, one-step-ahead prediction of x(t+6) from the inputs
///   up to x(t). Joint EKF over (state, θ) from the degenerate covariance vs natural
///   gradient on RTRL with the state correction (the same algorithm, Ollivier 2018,
///   recurrent case: the example prints their largest difference) vs truncated BPTT with
///   Adam (common/truncated_bptt.hpp). Filters: P_0^θθ = 0.1 I, observation variance
///   r = 0.01, fading λ = 3·10⁻⁴ (η_t → 3·10⁻⁴ for the twin). train_loss = online squared one-step error;
///   test_metric = NMSE (MSE / variance) of one-step predictions on the 2000 samples that
///   follow the training stream, weights frozen. (With λ = 10⁻³ the filters learn faster at
///   first, but after ~27 000 steps the frozen network run open-loop from a zero state
///   diverges from the series — test NMSE ~1 — while the filters' online error keeps
///   falling: their state correction s ← s + A δθ feeds the innovation back into the hidden
///   state and hides an instability of the free-running network. λ = 3·10⁻⁴ does not.)
///
/// Output contract (design.md): `--out DIR/<task>.csv` with the header
/// `optimizer,step,seconds,train_loss,test_metric`, progress on stderr, a summary table on
/// stdout; `examples/plot_results.sh DIR` turns the CSVs into PNGs. seconds counts the
/// optimizer's own work (prediction, Jacobian and step; evaluation excluded) in CPU time of
/// the thread, which other processes on a shared machine do not inflate. The
/// optimizers of a task run in lockstep on the same stream, each timed separately.

#include <time.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <kfopt/core/parameter_block.hpp>
#include <kfopt/filter/observation_models.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/kalman/ekf_natural_gradient_correspondence.hpp>
#include <kfopt/optim/kalman/extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/joint_extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/natural_gradient_rtrl.hpp>
#include <kfopt/optim/kalman/online_natural_gradient.hpp>
#include <kfopt/optim/first_order/sgd.hpp>
#include <kfopt/models/tanh_rnn_cell.hpp>

#include "common/chaotic_series.hpp"
#include "common/cli.hpp"
#include "common/csv_writer.hpp"
#include "common/example_main.hpp"
#include "common/idx_reader.hpp"
#include "common/progress.hpp"
#include "common/summary_table.hpp"
#include "common/truncated_bptt.hpp"

namespace ex = kfopt_examples;

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

enum class Task { Regression, Drift, Recurrent };

struct Settings {
  bool quick = false;
  bool use_float = false;  ///< --float: every task in single precision
  std::string out_dir = "out";
  std::string data_dir = ex::default_fashion_mnist_dir();
  std::vector<Task> tasks{Task::Regression, Task::Drift, Task::Recurrent};
  unsigned seed = 1;
  kfopt::KalmanForm form = kfopt::KalmanForm::Covariance;
  long points = 40;  ///< CSV rows per optimizer (about)

  // regression
  long reg_steps = 60000;
  long pool = 4;
  std::vector<int> classes{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  double reg_prior = 0.1;  ///< P_0 = reg_prior · I
  double reg_fading = 0.0;
  double reg_sgd_lr = 0.01;
  double reg_adam_lr = 3e-3;

  // drift
  long drift_steps = 50000;
  long drift_dim = 10;
  double drift_noise = 0.5;  ///< σ
  double drift_rate = 0.005; ///< σ_w
  double drift_fading = -1;  ///< λ; < 0: σ_w/σ

  // recurrent
  long rec_steps = 50000;
  long rec_hidden = 10;
  double rec_sample_every = 6.0;
  long rec_test = 2000;
  double rec_prior = 0.1;       ///< P_0^θθ = rec_prior · I
  double rec_noise = 0.01;      ///< observation variance r of the filters
  double rec_fading = 3e-4;     ///< λ of the joint EKF
  double rec_adam_lr = 3e-3;
  long rec_window = 20;         ///< truncated-BPTT window
  long rec_stride = 1;          ///< one Adam step every `stride` time steps
};

const char* help_text =
    R"(ekf_online: the extended Kalman filter as an online natural gradient (Ollivier 2018)

Three online tasks; in each the optimizers run in lockstep on the same stream. Writes
DIR/<task>.csv (optimizer,step,seconds,train_loss,test_metric), prints a summary table.

  regression  online softmax regression on Fashion-MNIST, one image per step, one pass.
              Images mean-pooled in 4x4 blocks (28x28 -> 7x7 = 49 features, standardized)
              plus a bias: d = 10 x 50 = 500 parameters, so the 500x500 covariance and its
              rank-10 update per step (~2.5 M multiply-adds) fit a 60 000-step pass in a few
              minutes. (Full 784 pixels would give d = 7850: a 490 MB covariance and ~600 M
              multiply-adds per step.) EKF (lambda = 0, P0 = p0 I) and its natural-gradient
              twin (gamma_t = eta_t = 1/(t+1), J0 = P0^-1) must overlap exactly: the largest
              parameter difference over the run is printed. Against SGD and Adam (batch 1).
              train_loss: online cross-entropy (each image scored before its step);
              test_metric: test accuracy (10 000 images).
  drift       linear-Gaussian model y = x'theta*_t + sigma e, x ~ N(0, I_10), with theta*_t
              a random walk (step sigma_w per coordinate). EKF with fading memory lambda
              (default sigma_w/sigma) and its natural-gradient twin, the EKF with lambda = 0
              (stops tracking), and the Kalman filter with the true process noise
              Q = sigma_w^2 I (optimal; no natural-gradient twin).
              train_loss: online squared error; test_metric: |theta - theta*|.
  recurrent   tanh RNN (10 hidden units, d = 131) learns the Mackey-Glass series (tau = 17,
              sampled every 6 time units, standardized) online: one-step prediction.
              Joint EKF over (state, theta) vs natural gradient on RTRL (the same
              algorithm: the largest difference is printed) vs truncated BPTT with Adam.
              train_loss: online squared error; test_metric: test NMSE (next 2000 samples).

Options:
  --quick               CI-sized run (< 2 min on 2 cores): regression 4000 steps,
                        drift 10000, recurrent 3000
  --out DIR             where <task>.csv goes (default out/)
  --float               run every task in single precision (default double)
  --data DIR            Fashion-MNIST IDX .gz files (default /usr/share/datasets/fashion-mnist,
                        Debian package dataset-fashion-mnist)
  --task T              regression | drift | recurrent | all (default all)
  --seed N              seed of streams and initializations (default 1)
  --form F              covariance (default) | joseph | information: update algebra of the
                        EKF and natural gradient in regression and drift (the true-Q
                        filter of drift stays in covariance form with information, which
                        cannot take additive process noise); the recurrent filters always
                        use the covariance form
  --points N            about N CSV rows per optimizer (default 40)
 regression:
  --reg-steps N         stream length (default 60000 = one pass; --quick 4000)
  --pool N              pooling block size, 1, 2, 4, 7, 14 or 28 (default 4: d = 10 (784/N^2+1))
  --classes LIST        class subset, e.g. 0,6 (T-shirt vs shirt) (default all ten)
  --reg-prior X         prior variance p0 of the EKF (default 0.1)
  --reg-fading X        EKF fading memory lambda (default 0)
  --reg-sgd-lr X, --reg-adam-lr X     (default 0.01, 0.003)
 drift:
  --drift-steps N       (default 50000; --quick 10000)
  --drift-dim N         (default 10)
  --drift-noise X       sigma (default 0.5)
  --drift-rate X        sigma_w (default 0.005)
  --drift-fading X      lambda of the fading filter (default sigma_w/sigma = 0.01)
 recurrent:
  --rec-steps N         (default 50000; --quick 3000)
  --rec-hidden N        (default 10)
  --rec-prior X         P0 of theta (default 0.1)
  --rec-noise X         observation variance r of the filters (default 0.01)
  --rec-fading X        lambda of the joint EKF / its twin (default 0.0003)
  --rec-adam-lr X       (default 0.003)
  --rec-window N        truncated-BPTT window (default 20)
  --rec-stride N        time steps between two BPTT+Adam updates (default 1)
  --help                this text

The seconds column is CPU time of the thread doing the optimizer's own work (prediction,
Jacobian, step; evaluation excluded), so other processes on a shared machine do not count.
)";

Settings parse_command_line(int argc, char** argv, bool& show_help) {
  ex::CommandLine cli(argc, argv);
  Settings s;
  show_help = cli.take_flag("--help") || cli.take_flag("-h");
  if (show_help) return s;
  s.quick = cli.take_flag("--quick");
  if (s.quick) {
    s.reg_steps = 4000;
    s.drift_steps = 10000;
    s.rec_steps = 3000;
  }
  s.use_float = cli.take_flag("--float");
  s.out_dir = cli.take_string("--out", s.out_dir);
  s.data_dir = cli.take_string("--data", s.data_dir);
  const std::string task = cli.take_string("--task", "all");
  if (task == "regression") {
    s.tasks = {Task::Regression};
  } else if (task == "drift") {
    s.tasks = {Task::Drift};
  } else if (task == "recurrent") {
    s.tasks = {Task::Recurrent};
  } else if (task != "all") {
    throw ex::UsageError("--task expects regression, drift, recurrent or all, got '" + task + "'");
  }
  s.seed = static_cast<unsigned>(cli.take_long("--seed", 1, 0, 4'000'000'000L));
  const std::string form = cli.take_string("--form", "covariance");
  if (form == "joseph") {
    s.form = kfopt::KalmanForm::Joseph;
  } else if (form == "information") {
    s.form = kfopt::KalmanForm::Information;
  } else if (form != "covariance") {
    throw ex::UsageError("--form expects covariance, joseph or information, got '" + form + "'");
  }
  s.points = cli.take_long("--points", s.points, 2, 100000);

  s.reg_steps = cli.take_long("--reg-steps", s.reg_steps, 1, 60000);
  s.pool = cli.take_long("--pool", s.pool, 1, 28);
  if (28 % s.pool != 0) throw ex::UsageError("--pool must divide 28 (1, 2, 4, 7, 14, 28)");
  const std::string classes = cli.take_string("--classes", "");
  if (!classes.empty()) {
    s.classes.clear();
    for (const auto& item : ex::split_list(classes)) {
      const long c = std::strtol(item.c_str(), nullptr, 10);
      if (c < 0 || c > 9 || item.find_first_not_of("0123456789") != std::string::npos) {
        throw ex::UsageError("--classes: bad class '" + item + "' (0..9)");
      }
      if (std::find(s.classes.begin(), s.classes.end(), c) != s.classes.end()) {
        throw ex::UsageError("--classes: class " + item + " given twice");
      }
      s.classes.push_back(static_cast<int>(c));
    }
    if (s.classes.size() < 2) throw ex::UsageError("--classes: needs at least two classes");
  }
  s.reg_prior = cli.take_double("--reg-prior", s.reg_prior, 1e-8, 1e8);
  s.reg_fading = cli.take_double("--reg-fading", s.reg_fading, 0.0, 0.5);
  s.reg_sgd_lr = cli.take_double("--reg-sgd-lr", s.reg_sgd_lr, 1e-8, 10.0);
  s.reg_adam_lr = cli.take_double("--reg-adam-lr", s.reg_adam_lr, 1e-8, 10.0);

  s.drift_steps = cli.take_long("--drift-steps", s.drift_steps, 1, 100'000'000);
  s.drift_dim = cli.take_long("--drift-dim", s.drift_dim, 1, 2000);
  s.drift_noise = cli.take_double("--drift-noise", s.drift_noise, 1e-6, 1e6);
  s.drift_rate = cli.take_double("--drift-rate", s.drift_rate, 0.0, 1e3);
  s.drift_fading = cli.take_double("--drift-fading", s.drift_fading, 0.0, 0.5);
  if (s.drift_fading < 0) s.drift_fading = std::min(0.5, s.drift_rate / s.drift_noise);
  if (!(s.drift_fading > 0)) {
    throw ex::UsageError("--drift-fading: lambda must be > 0 (set it, or a drift rate > 0)");
  }

  s.rec_steps = cli.take_long("--rec-steps", s.rec_steps, 10, 10'000'000);
  s.rec_hidden = cli.take_long("--rec-hidden", s.rec_hidden, 1, 200);
  s.rec_prior = cli.take_double("--rec-prior", s.rec_prior, 1e-8, 1e8);
  s.rec_noise = cli.take_double("--rec-noise", s.rec_noise, 1e-8, 1e8);
  s.rec_fading = cli.take_double("--rec-fading", s.rec_fading, 0.0, 0.5);
  s.rec_adam_lr = cli.take_double("--rec-adam-lr", s.rec_adam_lr, 1e-8, 10.0);
  s.rec_window = cli.take_long("--rec-window", s.rec_window, 1, 10000);
  s.rec_stride = cli.take_long("--rec-stride", s.rec_stride, 1, 10000);
  cli.finish();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping shared by the tasks: one Run per optimizer
// ---------------------------------------------------------------------------------------------

/// CPU time of the calling thread in seconds. The optimizers' work is single-threaded, and
/// on a shared machine this is steadier than wall time (other processes do not count).
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// One optimizer's run inside a lockstep loop: its own clock, loss window and results.
struct Run {
  explicit Run(std::string n) : name(std::move(n)) {}
  std::string name;
  double seconds = 0.0;
  double window_sum = 0.0;
  long window_count = 0;
  long steps = 0;
  long failed = 0;
  bool diverged = false;
  bool logged_divergence = false;
  double train_loss = kNaN;  ///< of the last CSV row
  double metric = kNaN;      ///< of the last CSV row
  double metric_sum_late = 0.0;  ///< sum of test_metric over the rows of the second half
  long metric_rows_late = 0;

  /// A CSV row, kept until the end of the task (the optimizers run in lockstep, and the
  /// plotting scripts want each optimizer's rows together).
  struct Row {
    long step;
    double seconds, train_loss, test_metric;
  };
  std::vector<Row> rows;

  /// Times `work` (one step) and records its loss.
  template <typename Work>
  void step(Work&& work) {
    if (diverged) return;
    const double start = thread_seconds();
    const double loss = work();
    seconds += thread_seconds() - start;
    ++steps;
    if (!std::isfinite(loss)) {
      diverged = true;
      return;
    }
    window_sum += loss;
    ++window_count;
  }

  /// Records a CSV row with the mean loss since the previous row.
  void log(long step, double test_metric, bool late) {
    if (diverged) {  // one row marks the divergence, then the run is over
      if (!logged_divergence) rows.push_back({steps, seconds, kNaN, kNaN});
      logged_divergence = true;
      train_loss = kNaN;
      return;
    }
    if (window_count > 0) train_loss = window_sum / static_cast<double>(window_count);
    metric = test_metric;
    window_sum = 0.0;
    window_count = 0;
    rows.push_back({step, seconds, train_loss, metric});
    if (late && std::isfinite(metric)) {
      metric_sum_late += metric;
      ++metric_rows_late;
    }
  }
};

/// Writes every run's rows to `DIR/<task>.csv`, one optimizer after the other.
std::string write_csv(const Settings& s, const char* task, const std::vector<Run>& runs) {
  ex::CsvWriter csv(s.out_dir, task);
  for (const auto& r : runs) {
    for (const auto& row : r.rows) csv.row(r.name, row.step, row.seconds, row.train_loss, row.test_metric);
  }
  return csv.path();
}

/// One summary row per run of a task (values in `value_format`, seconds and µs/step in
/// `seconds_format`), and a note for a run with skipped steps.
void add_summary_rows(const char* task, const std::vector<Run>& runs, const char* value_format,
                      const char* seconds_format, ex::SummaryTable& table,
                      std::vector<std::string>& notes) {
  for (const auto& r : runs) {
    const double late_mean = r.metric_rows_late > 0
                                 ? r.metric_sum_late / static_cast<double>(r.metric_rows_late)
                                 : kNaN;
    table.add_row({task, r.name, std::to_string(r.steps),
                   r.diverged ? "diverged" : ex::cell(value_format, r.train_loss),
                   ex::cell(value_format, r.metric), ex::cell(value_format, late_mean),
                   ex::cell(seconds_format, r.seconds),
                   ex::cell(seconds_format,
                            1e6 * r.seconds / static_cast<double>(std::max(1L, r.steps)))});
    if (r.failed > 0) {
      notes.push_back(std::string(task) + "/" + r.name + ": " + std::to_string(r.failed) +
                      " steps did not succeed (skipped)");
    }
  }
}

/// Steps at which a row is written: 0 (initial), then about `points` evenly spaced.
bool is_log_step(long t, long total, long points) {
  const long every = std::max(1L, total / points);
  return t == 0 || t == total || t % every == 0;
}

/// Everything that depends on the precision (data, models, optimizers, the three tasks),
/// compiled for float (--float) and double.
template <typename Scalar>
struct Precision {
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

static double max_abs_difference(const Vector& a, const Vector& b) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff());
}

// ---------------------------------------------------------------------------------------------
// Task a: online softmax regression on Fashion-MNIST
// ---------------------------------------------------------------------------------------------

/// Pooled, standardized features with a trailing bias 1, for the chosen classes.
struct PooledSet {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x;  ///< N×p
  std::vector<Eigen::Index> y;  ///< label index into the class subset
};

static void pool_images(const ex::ImageSet<Scalar>& set, const std::vector<int>& classes, long block,
                 PooledSet& out) {
  const long side = 28 / block;
  const Eigen::Index features = side * side + 1;
  std::vector<Eigen::Index> keep;
  std::vector<Eigen::Index> label;
  for (Eigen::Index i = 0; i < set.size(); ++i) {
    const auto it = std::find(classes.begin(), classes.end(), set.labels[static_cast<std::size_t>(i)]);
    if (it != classes.end()) {
      keep.push_back(i);
      label.push_back(it - classes.begin());
    }
  }
  out.x.resize(static_cast<Eigen::Index>(keep.size()), features);
  out.y = label;
  const double scale = 1.0 / static_cast<double>(block * block);
  for (std::size_t r = 0; r < keep.size(); ++r) {
    const auto image = set.images.row(keep[r]);
    for (long by = 0; by < side; ++by) {
      for (long bx = 0; bx < side; ++bx) {
        double sum = 0.0;
        for (long y = 0; y < block; ++y) {
          for (long x = 0; x < block; ++x) sum += image((by * block + y) * 28 + bx * block + x);
        }
        out.x(static_cast<Eigen::Index>(r), by * side + bx) = sum * scale;
      }
    }
    out.x(static_cast<Eigen::Index>(r), features - 1) = 1.0;
  }
}

/// Standardizes every feature but the bias with the mean and standard deviation of `train`.
static void standardize(PooledSet& train, PooledSet& test) {
  const Eigen::Index p = train.x.cols() - 1;
  for (Eigen::Index j = 0; j < p; ++j) {
    const Scalar mean = train.x.col(j).mean();
    const Scalar var = (train.x.col(j).array() - mean).square().mean();
    const Scalar inv = Scalar(1) / std::sqrt(var + Scalar(1e-8));
    train.x.col(j) = (train.x.col(j).array() - mean) * inv;
    test.x.col(j) = (test.x.col(j).array() - mean) * inv;
  }
}

/// Softmax regression z = W x, θ = vec(W) (W K×p, column-major): z, ∂z/∂θ, loss, gradient.
class SoftmaxRegression {
 public:
  SoftmaxRegression(Eigen::Index classes, Eigen::Index features) : K_(classes), p_(features) {}
  Eigen::Index dim() const { return K_ * p_; }

  template <typename Row>
  void logits(const Vector& theta, const Row& x, Vector& z) const {
    z.noalias() = Eigen::Map<const Matrix>(theta.data(), K_, p_) * x.transpose();
  }
  /// J(c, c + K j) = x_j; only those entries are written (J must be zero elsewhere).
  template <typename Row>
  void jacobian(const Row& x, Matrix& J) const {
    for (Eigen::Index j = 0; j < p_; ++j) {
      for (Eigen::Index c = 0; c < K_; ++c) J(c, c + K_ * j) = x(j);
    }
  }
  /// Cross-entropy at logits z and ∂ℓ/∂θ = vec((softmax(z) − e_y) xᵀ).
  template <typename Row>
  double loss_gradient(const Vector& z, const Row& x, Eigen::Index y, Vector& grad) const {
    const Scalar m = z.maxCoeff();
    const Eigen::Array<Scalar, Eigen::Dynamic, 1> e = (z.array() - m).exp();
    const Scalar sum = e.sum();
    Vector p = e.matrix() / sum;
    p(y) -= Scalar(1);
    Eigen::Map<Matrix>(grad.data(), K_, p_).noalias() = p * x;
    return static_cast<double>(m + std::log(sum) - z(y));
  }
  template <typename Set>
  double accuracy(const Vector& theta, const Set& set) const {
    const Matrix Z = set.x * Eigen::Map<const Matrix>(theta.data(), K_, p_).transpose();
    long right = 0;
    for (Eigen::Index i = 0; i < Z.rows(); ++i) {
      Eigen::Index best = 0;
      Z.row(i).maxCoeff(&best);
      if (best == set.y[static_cast<std::size_t>(i)]) ++right;
    }
    return static_cast<double>(right) / static_cast<double>(Z.rows());
  }

 private:
  Eigen::Index K_, p_;
};

static void run_regression(const Settings& s, ex::SummaryTable& table, std::vector<std::string>& notes) {
  const auto load_start = Clock::now();
  const auto data = ex::load_fashion_mnist<Scalar>(s.data_dir);
  PooledSet train, test;
  pool_images(data.train, s.classes, s.pool, train);
  pool_images(data.test, s.classes, s.pool, test);
  standardize(train, test);
  const Eigen::Index K = static_cast<Eigen::Index>(s.classes.size());
  const Eigen::Index p = train.x.cols();
  const SoftmaxRegression model(K, p);
  const Eigen::Index d = model.dim();
  const long steps = std::min<long>(s.reg_steps, static_cast<long>(train.x.rows()));
  std::fprintf(stderr,
               "regression: Fashion-MNIST from %s (%.1f s), %ld classes, %ldx%ld pooling -> %ld "
               "features + bias, d = %ld; %ld online steps (one image each) of %ld training "
               "images; EKF lambda %g, P0 = %g I; SGD lr %g; Adam lr %g; %s form\n",
               s.data_dir.c_str(), std::chrono::duration<double>(Clock::now() - load_start).count(),
               static_cast<long>(K), s.pool, s.pool, static_cast<long>(p - 1), static_cast<long>(d),
               steps, static_cast<long>(train.x.rows()), s.reg_fading, s.reg_prior, s.reg_sgd_lr,
               s.reg_adam_lr, kfopt::to_string(s.form));

  std::vector<Eigen::Index> order(static_cast<std::size_t>(train.x.rows()));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(s.seed);
  std::shuffle(order.begin(), order.end(), rng);

  using Obs = kfopt::CategoricalObservation<Scalar>;
  const Matrix P0 = Matrix::Identity(d, d) * static_cast<Scalar>(s.reg_prior);
  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> ekf_hp;
  ekf_hp.fading = s.reg_fading;
  ekf_hp.form = s.form;
  kfopt::ExtendedKalmanFilter<Obs> ekf(Obs(K), P0, ekf_hp);
  const auto twin = kfopt::natural_gradient_twin<Scalar>(ekf_hp, P0, Scalar(1));
  kfopt::OnlineNaturalGradient<Obs> ng(Obs(K), twin.initial_fisher, twin.hyperparameters);

  // All start at θ = 0 (the prior mean), the same for every optimizer.
  Vector th_ekf = Vector::Zero(d), th_ng = Vector::Zero(d), th_sgd = Vector::Zero(d),
         th_adam = Vector::Zero(d);
  Vector g_sgd = Vector::Zero(d), g_adam = Vector::Zero(d);
  kfopt::ParameterSet<Scalar> ps_sgd, ps_adam;
  ps_sgd.add("W", th_sgd, g_sgd);
  ps_adam.add("W", th_adam, g_adam);
  kfopt::SgdOptions sgd_options;
  sgd_options.learning_rate = s.reg_sgd_lr;
  kfopt::Sgd<Scalar> sgd(ps_sgd, sgd_options);
  kfopt::AdamOptions adam_options;
  adam_options.learning_rate = s.reg_adam_lr;
  kfopt::Adam<Scalar> adam(ps_adam, adam_options);

  std::vector<Run> runs{Run("ekf"), Run("natural_gradient"), Run("sgd"), Run("adam")};
  Vector z(K), grad(d);
  Matrix J_ekf = Matrix::Zero(K, d), J_ng = Matrix::Zero(K, d);
  double worst = 0.0, worst_relative = 0.0;

  auto log_all = [&](long t) {
    const bool late = t >= steps / 2;
    runs[0].log(t, model.accuracy(th_ekf, test), late);
    runs[1].log(t, model.accuracy(th_ng, test), late);
    runs[2].log(t, model.accuracy(th_sgd, test), late);
    runs[3].log(t, model.accuracy(th_adam, test), late);
  };
  {  // row 0: the initial weights (loss ln K on every image)
    for (auto& r : runs) {
      r.window_sum = std::log(static_cast<double>(K));
      r.window_count = 1;
    }
    log_all(0);
  }
  ex::ProgressBar progress("regression", steps);
  for (long t = 1; t <= steps; ++t) {
    const auto x = train.x.row(order[static_cast<std::size_t>(t - 1)]);
    const Eigen::Index y = train.y[static_cast<std::size_t>(order[static_cast<std::size_t>(t - 1)])];
    runs[0].step([&] {
      model.logits(th_ekf, x, z);
      model.jacobian(x, J_ekf);
      if (ekf.step(th_ekf, z, J_ekf, y) != kfopt::Status::Success) ++runs[0].failed;
      return ekf.state().last_loss;
    });
    runs[1].step([&] {
      model.logits(th_ng, x, z);
      model.jacobian(x, J_ng);
      if (ng.step(th_ng, z, J_ng, y) != kfopt::Status::Success) ++runs[1].failed;
      return ng.state().last_loss;
    });
    runs[2].step([&] {
      model.logits(th_sgd, x, z);
      const double loss = model.loss_gradient(z, x, y, g_sgd);
      if (sgd.step() != kfopt::Status::Success) ++runs[2].failed;
      return loss;
    });
    runs[3].step([&] {
      model.logits(th_adam, x, z);
      const double loss = model.loss_gradient(z, x, y, g_adam);
      if (adam.step() != kfopt::Status::Success) ++runs[3].failed;
      return loss;
    });
    const double diff = max_abs_difference(th_ekf, th_ng);
    worst = std::max(worst, diff);
    worst_relative = std::max(worst_relative, diff / std::max(1e-300, static_cast<double>(th_ekf.cwiseAbs().maxCoeff())));
    if (is_log_step(t, steps, s.points)) log_all(t);
    if (t % 50 == 0 || t == steps) {
      char status[96];
      std::snprintf(status, sizeof status, "ekf acc %.3f, |ekf-ng| %.1e", runs[0].metric, worst);
      progress.update(t, status);
    }
  }
  progress.finish();
  const std::string csv_path = write_csv(s, "regression", runs);

  add_summary_rows("regression", runs, "%.4f", "%.1f", table, notes);
  char line[400];
  std::snprintf(line, sizeof line,
                "regression: EKF vs natural gradient, largest |theta_EKF - theta_NG| over the %ld "
                "steps = %.3g (relative to max|theta_EKF|: %.3g); final max|theta| = %.3g",
                steps, worst, worst_relative, th_ekf.cwiseAbs().maxCoeff());
  notes.push_back(line);
  std::snprintf(line, sizeof line,
                "regression (d = %ld, %ld classes, %ldx%ld pooling): train_loss = online "
                "cross-entropy (each image scored before its step) over the last window; "
                "test_metric = accuracy on %ld test images. CSV: %s",
                static_cast<long>(d), static_cast<long>(K), s.pool, s.pool,
                static_cast<long>(test.x.rows()), csv_path.c_str());
  notes.push_back(line);
}

// ---------------------------------------------------------------------------------------------
// Task b: tracking a drifting parameter
// ---------------------------------------------------------------------------------------------

static void run_drift(const Settings& s, ex::SummaryTable& table, std::vector<std::string>& notes) {
  const Eigen::Index d = s.drift_dim;
  const long steps = s.drift_steps;
  const double sigma = s.drift_noise, sigma_w = s.drift_rate, lambda = s.drift_fading;
  std::fprintf(stderr,
               "drift: y = x'theta*_t + %g e, x ~ N(0, I_%ld), theta*_0 ~ N(0, I), random-walk "
               "step %g per coordinate; %ld steps; fading lambda = %g; %s form\n",
               sigma, static_cast<long>(d), sigma_w, steps, lambda, kfopt::to_string(s.form));
  using Obs = kfopt::GaussianObservation<Scalar>;
  const Obs obs(1, sigma * sigma);
  const Matrix P0 = Matrix::Identity(d, d);  // the prior of θ*_0

  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> hp_static;
  hp_static.form = s.form;
  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> hp_fading;
  hp_fading.fading = lambda;
  hp_fading.form = s.form;
  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> hp_noise;
  hp_noise.process_noise = Matrix::Identity(d, d) * static_cast<Scalar>(sigma_w * sigma_w);
  hp_noise.form = s.form == kfopt::KalmanForm::Information ? kfopt::KalmanForm::Covariance : s.form;
  kfopt::ExtendedKalmanFilter<Obs> ekf_static(obs, P0, hp_static);
  kfopt::ExtendedKalmanFilter<Obs> ekf_fading(obs, P0, hp_fading);
  kfopt::ExtendedKalmanFilter<Obs> ekf_noise(obs, P0, hp_noise);
  const auto twin = kfopt::natural_gradient_twin<Scalar>(hp_fading, P0, Scalar(1));
  kfopt::OnlineNaturalGradient<Obs> ng_fading(obs, twin.initial_fisher, twin.hyperparameters);

  std::mt19937_64 rng(s.seed + 100);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto gaussian = [&](Eigen::Index n) {
    Vector v(n);
    for (Eigen::Index i = 0; i < n; ++i) v(i) = normal(rng);
    return v;
  };
  Vector truth = gaussian(d);
  std::vector<Vector> theta(4, Vector::Zero(d));  // static, fading, ng, process noise
  std::vector<Run> runs{Run("ekf_lambda0"), Run("ekf_fading"), Run("natural_gradient_fading"),
                        Run("kalman_true_Q")};
  Vector z(1), yv(1);
  Matrix J(1, d);
  double worst = 0.0;

  auto log_all = [&](long t) {
    for (std::size_t i = 0; i < runs.size(); ++i) {
      runs[i].log(t, (theta[i] - truth).norm(), t >= steps / 2);
    }
  };
  for (auto& r : runs) {  // row 0: the prior mean θ = 0 predicts y = 0
    r.window_sum = truth.squaredNorm() + sigma * sigma;  // E[(y − 0)²]
    r.window_count = 1;
  }
  log_all(0);
  ex::ProgressBar progress("drift", steps);
  for (long t = 1; t <= steps; ++t) {
    const Vector x = gaussian(d);
    yv(0) = x.dot(truth) + sigma * normal(rng);
    J = x.transpose();
    auto filter_step = [&](auto& opt, Vector& th, Run& run) {
      run.step([&] {
        z(0) = x.dot(th);
        const double error = yv(0) - z(0);
        if (opt.step(th, z, J, yv) != kfopt::Status::Success) ++run.failed;
        return error * error;
      });
    };
    filter_step(ekf_static, theta[0], runs[0]);
    filter_step(ekf_fading, theta[1], runs[1]);
    filter_step(ng_fading, theta[2], runs[2]);
    filter_step(ekf_noise, theta[3], runs[3]);
    worst = std::max(worst, max_abs_difference(theta[1], theta[2]));
    // θ* moves after the observation: the next one is generated by θ*_{t+1}.
    if (sigma_w > 0) truth += static_cast<Scalar>(sigma_w) * gaussian(d);
    if (is_log_step(t, steps, s.points)) log_all(t);
    if (t % 200 == 0 || t == steps) {
      char status[96];
      std::snprintf(status, sizeof status, "err lambda0 %.3f, fading %.3f", runs[0].metric,
                    runs[1].metric);
      progress.update(t, status);
    }
  }
  progress.finish();
  const std::string csv_path = write_csv(s, "drift", runs);
  add_summary_rows("drift", runs, "%.4f", "%.2f", table, notes);
  char line[400];
  std::snprintf(line, sizeof line,
                "drift: EKF with fading lambda = %g vs its natural-gradient twin (eta_t -> lambda): "
                "largest |theta_EKF - theta_NG| over the run = %.3g",
                lambda, worst);
  notes.push_back(line);
  std::snprintf(line, sizeof line,
                "drift: the lambda = 0 filter's gain decays like 1/t (P_t ~ sigma^2/t per "
                "coordinate), its estimate is about the running mean of theta*: after %ld steps "
                "its error is about sigma_w sqrt(d t / 3) (~%.2f), while a random-walk tracker stays near sqrt(d sigma sigma_w) (~%.2f). "
                "train_loss = online squared error (noise floor sigma^2 = %g); test_metric = "
                "|theta - theta*|. CSV: %s",
                steps, sigma_w * std::sqrt(static_cast<double>(d * steps) / 3.0),
                std::sqrt(static_cast<double>(d) * sigma * sigma_w), sigma * sigma,
                csv_path.c_str());
  notes.push_back(line);
}

// ---------------------------------------------------------------------------------------------
// Task c: a tanh RNN learns the Mackey–Glass series online
// ---------------------------------------------------------------------------------------------

static void run_recurrent(const Settings& s, ex::SummaryTable& table, std::vector<std::string>& notes) {
  using Cell = kfopt::TanhRnnCell<Scalar>;
  using Obs = kfopt::GaussianObservation<Scalar>;
  const long steps = s.rec_steps;
  const long warmup = 100;  // test: steps run before scoring, from a zero state
  ex::MackeyGlassParameters mg;
  mg.sample_every = s.rec_sample_every;
  const long reference = 5000;  // samples that set the standardization, whatever the run length
  const std::vector<double> raw = ex::mackey_glass(
      static_cast<std::size_t>(std::max(reference, steps + 1 + s.rec_test + warmup + 1)), mg);
  double mean = 0.0, var = 0.0;
  for (long i = 0; i < reference; ++i) mean += raw[static_cast<std::size_t>(i)];
  mean /= static_cast<double>(reference);
  for (long i = 0; i < reference; ++i) var += std::pow(raw[static_cast<std::size_t>(i)] - mean, 2);
  var /= static_cast<double>(reference);
  std::vector<double> series(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) series[i] = (raw[i] - mean) / std::sqrt(var);
  // Test segment: inputs series[steps + 1 ...], the continuation after the training stream.
  const long test_begin = steps + 1;
  const long test_length = s.rec_test + warmup;
  double test_var = 0.0, test_mean = 0.0, persistence = 0.0;
  for (long i = warmup; i < test_length; ++i) test_mean += series[static_cast<std::size_t>(test_begin + i + 1)];
  test_mean /= static_cast<double>(s.rec_test);
  for (long i = warmup; i < test_length; ++i) {
    const double y = series[static_cast<std::size_t>(test_begin + i + 1)];
    test_var += (y - test_mean) * (y - test_mean);
    persistence += std::pow(y - series[static_cast<std::size_t>(test_begin + i)], 2);
  }
  persistence /= test_var;
  test_var /= static_cast<double>(s.rec_test);

  const Cell cell(s.rec_hidden, 1, 1);
  const Eigen::Index n = cell.state_dim(), d = cell.param_dim();
  std::fprintf(stderr,
               "recurrent: Mackey-Glass (tau 17, sampled every %g), %ld online steps, tanh RNN "
               "n = %ld, d = %ld; joint EKF / NG-RTRL lambda %g, P0 = %g I, r = %g; truncated "
               "BPTT window %ld every %ld steps, Adam lr %g\n",
               s.rec_sample_every, steps, static_cast<long>(n), static_cast<long>(d), s.rec_fading,
               s.rec_prior, s.rec_noise, s.rec_window, s.rec_stride, s.rec_adam_lr);

  // Initial weights: W ~ N(0, 0.8²/n) (contracting), U ~ N(0, 1), V ~ N(0, 1/n), biases 0.
  std::mt19937_64 rng(s.seed + 200);
  std::normal_distribution<double> normal(0.0, 1.0);
  Vector theta0 = Vector::Zero(d);
  for (Eigen::Index i = 0; i < n * n; ++i) theta0(cell.offset_W() + i) = 0.8 / std::sqrt(double(n)) * normal(rng);
  for (Eigen::Index i = 0; i < n; ++i) theta0(cell.offset_U() + i) = normal(rng);
  for (Eigen::Index i = 0; i < n; ++i) theta0(cell.offset_V() + i) = normal(rng) / std::sqrt(double(n));

  const Obs obs(1, s.rec_noise);
  const Matrix P0 = Matrix::Identity(d, d) * static_cast<Scalar>(s.rec_prior);
  const Vector s0 = Vector::Zero(n);
  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> hp;
  hp.fading = s.rec_fading;
  hp.form = kfopt::KalmanForm::Covariance;
  using Joint = kfopt::JointExtendedKalmanFilter<Cell, Obs>;
  // s_0 does not depend on θ: A_0 = 0, joint covariance [[0, 0], [0, P0]].
  Joint joint(cell, obs, s0, Joint::degenerate_covariance(Matrix::Zero(n, d), P0), hp);
  const auto twin = kfopt::natural_gradient_twin<Scalar>(hp, P0, Scalar(1));
  kfopt::NaturalGradientRtrlHyperparameters<Scalar> nh;
  nh.natural_gradient = twin.hyperparameters;
  kfopt::NaturalGradientRtrl<Cell, Obs> ngr(cell, obs, s0, twin.initial_fisher, nh);

  Vector th_joint = theta0, th_ng = theta0, th_bptt = theta0, g_bptt = Vector::Zero(d);
  kfopt::ParameterSet<Scalar> ps;
  ps.add("rnn", th_bptt, g_bptt);
  kfopt::AdamOptions adam_options;
  adam_options.learning_rate = s.rec_adam_lr;
  kfopt::Adam<Scalar> adam(ps, adam_options);
  ex::TruncatedBptt<Cell> bptt(cell);
  Matrix states(n, steps + 1);  // the BPTT run's hidden states s_0..s_T (window starts)
  states.col(0) = s0;
  Matrix window_inputs(1, s.rec_window), window_targets(1, s.rec_window);

  // Test NMSE of θ: one-step predictions over the test segment, zero initial state.
  ex::TruncatedBptt<Cell> evaluator(cell);
  auto test_nmse = [&](const Vector& th) {
    Vector h = Vector::Zero(n), next(n), z(1), u(1);
    double sse = 0.0;
    for (long i = 0; i < test_length; ++i) {
      u(0) = series[static_cast<std::size_t>(test_begin + i)];
      evaluator.advance(h, th, u, next);
      h.swap(next);
      if (i < warmup) continue;
      evaluator.output(h, th, u, z);
      sse += std::pow(z(0) - series[static_cast<std::size_t>(test_begin + i + 1)], 2);
    }
    const double nmse = sse / static_cast<double>(s.rec_test) / test_var;
    return std::isfinite(nmse) ? nmse : kNaN;
  };

  std::vector<Run> runs{Run("joint_ekf"), Run("natural_gradient_rtrl"), Run("tbptt_adam")};
  auto log_all = [&](long t) {
    const bool late = t >= steps / 2;
    runs[0].log(t, test_nmse(th_joint), late);
    runs[1].log(t, test_nmse(th_ng), late);
    runs[2].log(t, test_nmse(th_bptt), late);
  };
  for (auto& r : runs) {  // row 0: the mean predictor's error, 1 (standardized units)
    r.window_sum = 1.0;
    r.window_count = 1;
  }
  log_all(0);

  const double log_normalizer = 0.5 * std::log(2.0 * 3.14159265358979323846 * s.rec_noise);
  double worst_theta = 0.0, worst_state = 0.0, worst_theta_early = 0.0;
  const long early = 200;
  Vector u(1), y(1), z(1), next(n);
  ex::ProgressBar progress("recurrent", steps);
  for (long t = 1; t <= steps; ++t) {
    u(0) = series[static_cast<std::size_t>(t - 1)];
    y(0) = series[static_cast<std::size_t>(t)];
    runs[0].step([&] {
      if (joint.step(th_joint, u, y) != kfopt::Status::Success) {
        ++runs[0].failed;
        return kNaN;
      }
      // Squared error from the Gaussian loss ½ e²/r + ½ ln(2π r) at the predicted state.
      return 2.0 * s.rec_noise * (joint.state().last_loss - log_normalizer);
    });
    runs[1].step([&] {
      if (ngr.step(th_ng, u, y) != kfopt::Status::Success) {
        ++runs[1].failed;
        return kNaN;
      }
      return std::pow(ngr.last_output()(0) - y(0), 2);
    });
    runs[2].step([&] {
      bptt.advance(states.col(t - 1), th_bptt, u, next);
      states.col(t) = next;
      bptt.output(next, th_bptt, u, z);
      const double error = std::pow(z(0) - y(0), 2);
      if (t >= s.rec_window && t % s.rec_stride == 0) {
        const long first = t - s.rec_window;  // window: inputs u_{first+1..t}, start s_first
        for (long i = 0; i < s.rec_window; ++i) {
          window_inputs(0, i) = series[static_cast<std::size_t>(first + i)];
          window_targets(0, i) = series[static_cast<std::size_t>(first + i + 1)];
        }
        bptt.gradient(th_bptt, states.col(first), window_inputs, window_targets,
                      std::max<long>(0, s.rec_window - s.rec_stride), g_bptt);
        if (adam.step() != kfopt::Status::Success) ++runs[2].failed;
      }
      return error;
    });
    if (!runs[0].diverged && !runs[1].diverged) {
      worst_theta = std::max(worst_theta, max_abs_difference(th_joint, th_ng));
      worst_state = std::max(worst_state, max_abs_difference(joint.hidden(), ngr.hidden()));
      if (t <= early) worst_theta_early = worst_theta;
    }
    if (is_log_step(t, steps, s.points)) log_all(t);
    if (t % 50 == 0 || t == steps) {
      char status[96];
      std::snprintf(status, sizeof status, "nmse ekf %.3g, bptt %.3g, |ekf-ng| %.1e",
                    runs[0].metric, runs[2].metric, worst_theta);
      progress.update(t, status);
    }
  }
  progress.finish();
  const std::string csv_path = write_csv(s, "recurrent", runs);
  add_summary_rows("recurrent", runs, "%.3g", "%.1f", table, notes);
  char line[500];
  std::snprintf(line, sizeof line,
                "recurrent: joint EKF vs natural gradient on RTRL, largest |theta_joint - "
                "theta_NG| over the first %ld steps = %.3g, over the %ld steps = %.3g; largest "
                "hidden-state difference = %.3g (final max|theta| = %.3g)",
                std::min(early, steps), worst_theta_early, steps, worst_theta, worst_state,
                th_joint.cwiseAbs().maxCoeff());
  notes.push_back(line);
  std::snprintf(line, sizeof line,
                "recurrent (n = %ld, d = %ld): train_loss = online squared one-step error "
                "(standardized units, variance 1); test_metric = NMSE of one-step predictions "
                "on the next %ld samples (frozen weights, %ld warm-up steps from a zero "
                "state); persistence (predict x(t+1) = x(t)) scores %.3f there. CSV: %s",
                static_cast<long>(n), static_cast<long>(d), s.rec_test, warmup, persistence,
                csv_path.c_str());
  notes.push_back(line);
}

};  // struct Precision

int run(const Settings& s) {
  ex::SummaryTable table({"task", "optimizer", "steps", "train_loss", "test_metric",
                          "mean test_metric, 2nd half", "seconds", "us/step"},
                         2);
  std::vector<std::string> notes;
  std::fprintf(stderr, "ekf_online: %s precision\n", s.use_float ? "float (single)" : "double");
  notes.push_back(std::string("precision: ") + (s.use_float ? "float (single)" : "double"));
  for (Task task : s.tasks) {
    if (s.use_float) {
      if (task == Task::Regression) Precision<float>::run_regression(s, table, notes);
      if (task == Task::Drift) Precision<float>::run_drift(s, table, notes);
      if (task == Task::Recurrent) Precision<float>::run_recurrent(s, table, notes);
    } else {
      if (task == Task::Regression) Precision<double>::run_regression(s, table, notes);
      if (task == Task::Drift) Precision<double>::run_drift(s, table, notes);
      if (task == Task::Recurrent) Precision<double>::run_recurrent(s, table, notes);
    }
  }
  ex::print_summary(std::cout, table, notes);
  std::cout << "* train_loss: mean over the last logging window; seconds: CPU time of the "
               "optimizer's own work (prediction, Jacobian, step), evaluation excluded.\n"
            << "* Plot: examples/plot_results.sh " << s.out_dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return ex::example_main("ekf_online", help_text, argc, argv, parse_command_line,
                          [](const Settings& settings) { return run(settings); });
}
