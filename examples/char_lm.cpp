/// \file char_lm.cpp
/// \brief Reference example: a character-level LSTM language model trained by Adam and by
/// RNN K-FAC with the three Fisher approximations of Martens, Ba & Johnson 2018 —
/// independent (eq. 6), Option 1 (eq. 8) and Option 2 (eq. 9) — as in the paper's
/// character-level experiment (§4.1, figure 2: a 2-layer LSTM with 128 units on sequences
/// of 100 characters).
///
/// Model: one-hot characters → LSTM → LSTM → softmax over the vocabulary at every step
/// (common/recurrent.hpp). Every weight is used at every time step, so every weight is a
/// RecurrentKroneckerBlock; each LSTM gate matrix is its own block (four per layer, as in
/// the paper), the output layer one more. The output block uses eq. 6 under every option by
/// default (--kfac-output-block): its sampled-target gradients are uncorrelated across time,
/// so its true V1 is 0 and eq. 6 is exact there. Every optimizer starts from the same weights and
/// sees the same mini-batches (random windows of the training text, zero initial state).
///
/// K-FAC per step: a training pass (data targets: the gradient of the update), then — when
/// K-FAC takes statistics — a Fisher pass with targets sampled from the model's predictive
/// distribution (true Fisher), whose per-step a_t, g_t go to record_sequence_statistics;
/// then Kfac::step (damped block inverses, KL clipping, momentum).
///
/// Output contract (design.md): `--out DIR` writes `DIR/char_lm.csv` with the header
/// `optimizer,step,seconds,train_loss,test_metric`; progress on stderr, a summary table on
/// stdout; `examples/plot_results.sh DIR` draws DIR/char_lm.png. With several seeds,
/// DIR/char_lm_mean.csv (same header) holds each optimizer's mean curve over the seeds, and
/// `--jobs N` trains N runs at once (the results do not depend on N).
///   train_loss  = training bits per character, mean of the mini-batch losses (each measured
///                 before its step) since the previous row; row 0 = first batch, initial weights;
///   test_metric = validation bits per character (the held-out last part of the text, in
///                 windows of the sequence length, zero initial state);
///   seconds     = training time so far, evaluation excluded.
///
/// Text: `--text FILE`; by default the license texts under /usr/share/common-licenses
/// (Debian's base-files package), concatenated in name order (symbolic links skipped).
/// Run `char_lm --help` for the options.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <atomic>
#include <exception>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>


#include <kfopt/core/parameter_block.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#if __has_include(<kfopt/io/checkpoint.hpp>) && defined(KFOPT_EXAMPLE_CHECKPOINTS)
#include "common/run_checkpoint.hpp"
#define KFOPT_EXAMPLE_HAS_CHECKPOINT 1
#else
#define KFOPT_EXAMPLE_HAS_CHECKPOINT 0
#endif

#include "common/cli.hpp"
#include "common/csv_writer.hpp"
#include "common/example_main.hpp"
#include "common/progress.hpp"
#include "common/recurrent.hpp"
#include "common/summary_table.hpp"
#include "common/training_loop.hpp"

namespace ex = kfopt_examples;

namespace {

constexpr double kLn2 = 0.69314718055994530942;
const char* const kDefaultTextDir = "/usr/share/common-licenses";

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct Settings : ex::CheckpointOptions {
  bool quick = false;
  bool use_float = false;
  std::string text;  ///< empty: the default corpus
  std::string out_dir = "out";
  std::vector<std::string> optimizers{"adam", "kfac_independent", "kfac_option1", "kfac_option2"};
  std::vector<unsigned> seeds{1};
  long hidden = 128;
  long layers = 2;
  long seq_len = 100;
  long batch = 32;
  long steps = 1000;
  long log_every = 0;
  long valid_chars = 20000;
  double valid_fraction = 0.1;
  double adam_lr = 1e-2;
  /// K-FAC hyperparameters per approximation, indexed by variant_index(): independent,
  /// Option 1, Option 2. The paper tuned each method by its own grid search (§5); the
  /// independent approximation's damping default comes from tune_char_lm.sh's screen
  /// (README: 3e-2 beat 1e-2 and 1e-1 for it, 1e-2 beat 3e-2 for Option 2).
  std::array<double, 3> kfac_lr{0.2, 0.2, 0.2};
  std::array<double, 3> kfac_damping{3e-2, 1e-2, 1e-2};
  std::array<double, 3> kfac_kl_clip{1e-2, 1e-2, 1e-2};
  std::array<double, 3> kfac_momentum{0.9, 0.9, 0.9};
  double kfac_decay = 0.95;
  long kfac_stats_period = 1;
  long kfac_inverse_period = 20;
  /// The output (softmax) layer's approximation: "independent" (default) or "same" (the
  /// run's approximation, like the LSTM gates). See output_block_note.
  std::string kfac_output_block = "independent";
  long jobs = 1;  ///< runs trained at the same time, one thread each

  /// Every setting that shapes a run's trajectory (not its length), as text: a checkpoint
  /// resumes only a run with the same.
  std::string trajectory_settings(bool single) const {
    std::ostringstream o;
    o.precision(17);
    o << (single ? "float" : "double") << " text " << text << " hidden " << hidden << " layers "
      << layers << " seq " << seq_len << " batch " << batch << " log " << log_every << " valid "
      << valid_chars << " " << valid_fraction << " adam " << adam_lr << " kfac";
    for (std::size_t v = 0; v < 3; ++v) {
      o << " " << kfac_lr[v] << " " << kfac_damping[v] << " " << kfac_kl_clip[v] << " " << kfac_momentum[v];
    }
    o << " " << kfac_decay << " " << kfac_stats_period << " " << kfac_inverse_period << " "
      << kfac_output_block;
    return o.str();
  }
};

const char* help_text =
    R"(char_lm: character-level LSTM language model, Adam vs RNN K-FAC (independent, option 1,
option 2) — the character experiment of Martens, Ba & Johnson 2018 (kfopt reference example)

Model: one-hot characters -> LSTM x layers -> softmax, each LSTM gate matrix its own K-FAC
block. Every optimizer starts from the same weights and sees the same mini-batches. Writes
DIR/char_lm.csv (train_loss = training bits/char, test_metric = validation bits/char) and
prints a summary table.

Options:
  --text FILE           training text (default: the files under /usr/share/common-licenses,
                        concatenated; the last --valid-fraction of it is the validation set)
  --quick               CI-sized run (< 2 min on 2 cores): 2 layers of 32 units, sequences
                        of 25, batch 16, 100 steps, 4000 validation characters
  --out DIR             where char_lm.csv goes (default out/)
  --optimizers LIST     comma-separated subset of adam,kfac_independent,kfac_option1,
                        kfac_option2 (aliases: indep, option1, option2; default all four)
  --seeds LIST          comma-separated seeds (default 1); each seed is a separate run of
                        every optimizer (weights, batches and Fisher samples follow the seed);
                        with several seeds the CSV names are <optimizer>/s<seed>
  --steps N             updates per run (default 1000; --quick 100)
  --hidden N            LSTM units per layer (default 128; --quick 32)
  --layers N            LSTM layers (default 2)
  --seq-len N           characters per training sequence (default 100; --quick 25)
  --batch N             sequences per mini-batch (default 32; --quick 16)
  --log-every N         steps between CSV rows (default steps/40)
  --valid-chars N       validation characters evaluated per row (default 20000; --quick 4000)
  --valid-fraction X    share of the text held out for validation (default 0.1)
  --adam-lr X           Adam learning rate (default 1e-2; best of 3e-3, 1e-2, 3e-2 in a
                        150-step sweep with 64 units)
  The four K-FAC hyperparameters below take one value for every approximation or three,
  comma-separated, for independent,option1,option2 (e.g. --kfac-damping 3e-2,1e-2,1e-2):
  --kfac-lr X           K-FAC learning rate (default 0.2)
  --kfac-damping X      K-FAC Tikhonov damping lambda of each block (default 3e-2 for
                        independent, 1e-2 for options 1 and 2, from tune_char_lm.sh's
                        screen; V0 is damped by lambda/E[T], see recurrent_kronecker_block.hpp)
  --kfac-kl-clip X      K-FAC KL-clipping bound (default 1e-2; 0 disables)
  --kfac-momentum X     K-FAC momentum (default 0.9)
  --kfac-decay X        decay of the factors' moving averages (default 0.95)
  --kfac-stats-period N statistics (and the Fisher pass) every N steps (default 1)
  --kfac-inverse-period N  T_inv: eigendecompositions refreshed every N steps (default 20)
  --kfac-output-block M independent (default) or same: the softmax layer's Fisher block.
                        Its temporal cross-moment V1 is exactly 0 under the sampled-target
                        Fisher (the samples never feed back into the recurrence), so eq. 6 is
                        exact for it and Options 1/2 would only fit sampling noise; 'same'
                        gives it the run's approximation, as the LSTM gates
  --checkpoint PATH     save the run to PATH (HDF5: model, optimizer state, batch engine,
                        step, time) every --checkpoint-every N steps (default: at every
                        CSV row) and at the last step; needs one optimizer and one seed
  --resume PATH         continue the run saved in PATH up to --steps (the total): the CSV
                        is continued, and the run ends exactly where an uninterrupted one would
  --jobs N              train N runs at the same time, one thread each (default 1); the
                        runs are independent, so the results do not depend on N, only the
                        seconds do when the cores are shared
  --float               single precision (default double)
  --help                this text
)";

std::string canonical_optimizer(const std::string& name) {
  if (name == "adam") return "adam";
  if (name == "kfac_independent" || name == "indep" || name == "independent") return "kfac_independent";
  if (name == "kfac_option1" || name == "option1" || name == "opt1") return "kfac_option1";
  if (name == "kfac_option2" || name == "option2" || name == "opt2") return "kfac_option2";
  throw ex::UsageError("--optimizers: unknown optimizer '" + name +
                       "' (adam, kfac_independent, kfac_option1, kfac_option2)");
}

/// Position of a K-FAC approximation in Settings' per-variant arrays.
std::size_t variant_index(kfopt::RecurrentApproximation approximation) {
  switch (approximation) {
    case kfopt::RecurrentApproximation::Independent: return 0;
    case kfopt::RecurrentApproximation::Option1: return 1;
    case kfopt::RecurrentApproximation::Option2: return 2;
  }
  return 0;
}

/// A K-FAC hyperparameter given once for every approximation ("X") or once per
/// approximation ("I,O1,O2"), each value in [min, max].
std::array<double, 3> take_per_variant(ex::CommandLine& cli, const std::string& name,
                                       const std::array<double, 3>& fallback, double min, double max) {
  const std::string text = cli.take_string(name, "");
  if (text.empty()) return fallback;
  const std::vector<std::string> items = ex::split_list(text);
  if (items.size() != 1 && items.size() != 3) {
    throw ex::UsageError(name + " expects one value or three (independent,option1,option2), got '" +
                         text + "'");
  }
  std::array<double, 3> values{};
  for (std::size_t i = 0; i < 3; ++i) {
    const std::string& item = items[items.size() == 1 ? 0 : i];
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0' || !std::isfinite(v) || v < min || v > max) {
      throw ex::UsageError(name + " expects numbers in [" + ex::CommandLine::format(min) + ", " +
                           ex::CommandLine::format(max) + "], got '" + item + "'");
    }
    values[i] = v;
  }
  return values;
}

/// "x" when the three approximations share a value, "x/y/z" otherwise.
std::string per_variant_text(const std::array<double, 3>& values) {
  if (values[0] == values[1] && values[1] == values[2]) return ex::CommandLine::format(values[0]);
  return ex::CommandLine::format(values[0]) + "/" + ex::CommandLine::format(values[1]) + "/" +
         ex::CommandLine::format(values[2]);
}

Settings parse_command_line(int argc, char** argv, bool& show_help) {
  ex::CommandLine cli(argc, argv);
  Settings s;
  show_help = cli.take_flag("--help") || cli.take_flag("-h");
  if (show_help) return s;
  s.quick = cli.take_flag("--quick");
  s.use_float = cli.take_flag("--float");
  s.text = cli.take_string("--text", "");
  s.out_dir = cli.take_string("--out", s.out_dir);
  const std::string optimizers = cli.take_string("--optimizers", "");
  if (!optimizers.empty()) {
    s.optimizers.clear();
    for (const auto& name : ex::split_list(optimizers)) s.optimizers.push_back(canonical_optimizer(name));
    if (s.optimizers.empty()) throw ex::UsageError("--optimizers: the list is empty");
  }
  const std::string seeds = cli.take_string("--seeds", "");
  if (!seeds.empty()) {
    s.seeds.clear();
    for (const auto& item : ex::split_list(seeds)) {
      char* end = nullptr;
      const long v = std::strtol(item.c_str(), &end, 10);
      if (end == item.c_str() || *end != '\0' || v < 0 || v > 4'000'000'000L) {
        throw ex::UsageError("--seeds: bad seed '" + item + "'");
      }
      s.seeds.push_back(static_cast<unsigned>(v));
    }
    if (s.seeds.empty()) throw ex::UsageError("--seeds: the list is empty");
  }
  if (s.quick) {
    s.hidden = 32;
    s.seq_len = 25;
    s.batch = 16;
    s.steps = 100;
    s.valid_chars = 4000;
  }
  const long max = 100'000'000;
  s.steps = cli.take_long("--steps", s.steps, 1, max);
  s.hidden = cli.take_long("--hidden", s.hidden, 1, 4096);
  s.layers = cli.take_long("--layers", s.layers, 1, 16);
  s.seq_len = cli.take_long("--seq-len", s.seq_len, 2, 100000);
  s.batch = cli.take_long("--batch", s.batch, 1, 100000);
  s.log_every = cli.take_long("--log-every", 0, 1, max);
  if (s.log_every == 0) s.log_every = std::max(1L, s.steps / 40);
  s.valid_chars = cli.take_long("--valid-chars", s.valid_chars, 1, max);
  s.valid_fraction = cli.take_double("--valid-fraction", s.valid_fraction, 0.001, 0.5);
  s.adam_lr = cli.take_double("--adam-lr", s.adam_lr, 1e-12, 1e3);
  s.kfac_lr = take_per_variant(cli, "--kfac-lr", s.kfac_lr, 1e-12, 1e3);
  s.kfac_damping = take_per_variant(cli, "--kfac-damping", s.kfac_damping, 1e-12, 1e6);
  s.kfac_kl_clip = take_per_variant(cli, "--kfac-kl-clip", s.kfac_kl_clip, 0.0, 1e6);
  s.kfac_momentum = take_per_variant(cli, "--kfac-momentum", s.kfac_momentum, 0.0, 0.999);
  s.kfac_decay = cli.take_double("--kfac-decay", s.kfac_decay, 1e-3, 1.0);
  s.kfac_stats_period = cli.take_long("--kfac-stats-period", s.kfac_stats_period, 1, 1'000'000);
  s.kfac_inverse_period = cli.take_long("--kfac-inverse-period", s.kfac_inverse_period, 1, 1'000'000);
  s.jobs = cli.take_long("--jobs", s.jobs, 1, 256);
  s.kfac_output_block = cli.take_string("--kfac-output-block", s.kfac_output_block);
  if (s.kfac_output_block != "independent" && s.kfac_output_block != "same") {
    throw ex::UsageError("--kfac-output-block: expected 'independent' or 'same', got '" +
                         s.kfac_output_block + "'");
  }
  static_cast<ex::CheckpointOptions&>(s) = ex::take_checkpoint_options(
      cli, KFOPT_EXAMPLE_HAS_CHECKPOINT, s.optimizers.size() == 1 && s.seeds.size() == 1,
      "give one optimizer (--optimizers X) and one seed", max);
  cli.finish();
  return s;
}

// ---------------------------------------------------------------------------------------------
// The text
// ---------------------------------------------------------------------------------------------

struct Corpus {
  std::string source;            ///< what was read
  std::vector<unsigned char> symbols;  ///< token id → byte
  std::vector<int> train, valid;       ///< token ids
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read the text file '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The default text: every regular file (not a link) under /usr/share/common-licenses.
std::string read_default_text(std::string& source) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(kDefaultTextDir, ec)) {
    throw std::runtime_error(std::string("the default text folder ") + kDefaultTextDir +
                             " does not exist (it comes with Debian's base-files package); "
                             "pass a text with --text FILE");
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(kDefaultTextDir)) {
    if (entry.is_symlink() || !entry.is_regular_file()) continue;  // GPL -> GPL-3 etc.
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) text += read_file(f.string()) + "\n";
  source = std::string(kDefaultTextDir) + "/* (" + std::to_string(files.size()) + " files)";
  return text;
}

Corpus load_corpus(const Settings& s) {
  Corpus c;
  std::string text;
  if (s.text.empty()) {
    text = read_default_text(c.source);
  } else {
    text = read_file(s.text);
    c.source = s.text;
  }
  std::vector<int> id(256, -1);
  for (unsigned char ch : text) id[ch] = 0;
  for (int b = 0; b < 256; ++b) {
    if (id[static_cast<std::size_t>(b)] == 0) {
      id[static_cast<std::size_t>(b)] = static_cast<int>(c.symbols.size());
      c.symbols.push_back(static_cast<unsigned char>(b));
    }
  }
  const std::size_t n = text.size();
  const std::size_t n_valid = static_cast<std::size_t>(s.valid_fraction * static_cast<double>(n));
  const std::size_t need = static_cast<std::size_t>(s.seq_len) + 1;
  if (n_valid < need || n - n_valid < need + static_cast<std::size_t>(s.batch)) {
    throw std::runtime_error("the text " + c.source + " has " + std::to_string(n) +
                             " characters: too short for sequences of " + std::to_string(s.seq_len) +
                             " with a validation share of " + std::to_string(s.valid_fraction));
  }
  for (std::size_t i = 0; i < n; ++i) {
    (i < n - n_valid ? c.train : c.valid).push_back(id[static_cast<unsigned char>(text[i])]);
  }
  return c;
}

/// Random windows of the training text: m sequences of T inputs and their next characters,
/// time-major (row t·m + i).
class WindowSampler {
 public:
  WindowSampler(const std::vector<int>& text, long steps, long batch, unsigned seed)
      : text_(&text), steps_(steps), batch_(batch), rng_(seed),
        start_(0, static_cast<long>(text.size()) - steps - 1) {}

  /// The engine that draws the windows (all of the sampler's state, for a checkpoint).
  std::mt19937_64& engine() { return rng_; }

  void next(std::vector<int>& inputs, std::vector<int>& targets) {
    inputs.resize(static_cast<std::size_t>(steps_ * batch_));
    targets.resize(inputs.size());
    for (long i = 0; i < batch_; ++i) {
      const long s = start_(rng_);
      for (long t = 0; t < steps_; ++t) {
        const auto r = static_cast<std::size_t>(t * batch_ + i);
        inputs[r] = (*text_)[static_cast<std::size_t>(s + t)];
        targets[r] = (*text_)[static_cast<std::size_t>(s + t + 1)];
      }
    }
  }

 private:
  const std::vector<int>* text_;
  long steps_, batch_;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<long> start_;
};

/// The validation set: consecutive non-overlapping windows of the held-out text (up to
/// valid_chars predicted characters), evaluated in one batch.
struct Validation {
  std::vector<int> inputs, targets;
  long steps = 0, batch = 0;

  Validation(const std::vector<int>& text, long seq_len, long valid_chars) {
    steps = seq_len;
    const long windows = std::max(1L, std::min(valid_chars / seq_len,
                                               (static_cast<long>(text.size()) - 1) / seq_len));
    batch = windows;
    inputs.resize(static_cast<std::size_t>(steps * batch));
    targets.resize(inputs.size());
    for (long i = 0; i < batch; ++i) {
      for (long t = 0; t < steps; ++t) {
        const auto r = static_cast<std::size_t>(t * batch + i);
        inputs[r] = text[static_cast<std::size_t>(i * seq_len + t)];
        targets[r] = text[static_cast<std::size_t>(i * seq_len + t + 1)];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

template <typename Scalar>
using Model = ex::RecurrentLanguageModel<Scalar, ex::LstmLayer>;

template <typename Scalar>
Model<Scalar> make_model(const Settings& s, Eigen::Index vocabulary, unsigned seed) {
  Model<Scalar> model(vocabulary, std::vector<Eigen::Index>(static_cast<std::size_t>(s.layers), s.hidden));
  std::mt19937 rng(seed);
  model.initialize(rng);
  return model;
}

struct RunResult {
  std::string name;
  unsigned seed = 0;
  long steps = 0;
  double train_bpc = std::numeric_limits<double>::quiet_NaN();
  double valid_bpc = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0.0;
  bool diverged = false;
  long failed_steps = 0;
  std::string first_failure;  ///< what the first unsuccessful K-FAC call reported
  double mean_clip = std::numeric_limits<double>::quiet_NaN();  ///< K-FAC: mean KL-clip scale ν
  std::string diagnostics;  ///< K-FAC: asymmetry of the temporal factors at the end
  std::vector<std::pair<long, double>> curve;  ///< (step, train bpc) of every CSV row
  struct Row {
    long step;
    double seconds, train_bpc, valid_bpc;
  };
  std::vector<Row> rows;  ///< every CSV row of the run, in order
};

/// Where a run's CSV rows go: straight to the file when runs are sequential (an interrupted
/// run leaves its rows), or kept and written as one block when the run ends when several
/// run at once (the plot script needs each run's rows contiguous).
class RunLog {
 public:
  RunLog(ex::CsvWriter& csv, bool live) : csv_(csv), live_(live) {}
  void row(RunResult& r, long step, double seconds, double train_bpc, double valid_bpc) {
    r.rows.push_back({step, seconds, train_bpc, valid_bpc});
    if (live_) write(r.name, r.rows.back());
  }
  void finish(const RunResult& r) {
    if (live_) return;
    for (const auto& row : r.rows) write(r.name, row);
  }

 private:
  void write(const std::string& name, const RunResult::Row& row) {
    const std::lock_guard<std::mutex> lock(mutex_);
    csv_.row(name, row.step, row.seconds, row.train_bpc, row.valid_bpc);
  }
  ex::CsvWriter& csv_;
  bool live_;
  std::mutex mutex_;
};

template <typename Scalar>
double validation_bpc(Model<Scalar>& model, const Validation& v) {
  return static_cast<double>(model.loss(v.inputs, v.targets, v.steps, v.batch)) / kLn2;
}

/// Every weight and bias of the model, named as the optimizers name them.
template <typename Scalar>
kfopt::ParameterSet<Scalar> model_parameters(Model<Scalar>& model) {
  kfopt::ParameterSet<Scalar> params;
  for (std::size_t l = 0; l < model.depth(); ++l) {
    for (int k = 0; k < ex::LstmLayer<Scalar>::num_blocks(); ++k) {
      auto& w = model.layer(l).block(k);
      const std::string base = "lstm" + std::to_string(l + 1) + "." + ex::LstmLayer<Scalar>::block_name(k);
      params.add(base + ".W", w.W, w.dW);
      params.add(base + ".b", w.b, w.db);
    }
  }
  params.add("output.W", model.output().W, model.output().dW);
  params.add("output.b", model.output().b, model.output().db);
  return params;
}

/// Runs s.steps of `step` (one update on the loaded batch, returning the batch's mean loss
/// in nats before the update), logging CSV rows. With --checkpoint / --resume, `opt` (its
/// state dict) and `engines` (the optimizer's random engines) are saved and restored with
/// the model, the window sampler's engine and the loop's progress.
template <typename Scalar, typename Optimizer, typename StepFunction>
RunResult train(const std::string& name, unsigned seed, Model<Scalar>& model, const Corpus& corpus,
                const Validation& validation, const Settings& s, RunLog& csv,
                std::vector<int>& inputs, std::vector<int>& targets, Optimizer& opt,
                std::vector<std::mt19937_64*> engines, StepFunction&& step) {
  RunResult result;
  result.name = name;
  result.seed = seed;
  WindowSampler sampler(corpus.train, s.seq_len, s.batch, seed + 1);  // same batches for all
  engines.insert(engines.begin(), &sampler.engine());
  ex::TrainingLoopStart start;
#if KFOPT_EXAMPLE_HAS_CHECKPOINT
  auto params = model_parameters(model);
  const ex::RunIdentity id{"char_lm", "char_lm", name,
                           s.trajectory_settings(sizeof(Scalar) == 4) + " seed " + std::to_string(seed)};
  if (!s.resume_path.empty()) {
    const kfopt::Checkpoint ck = kfopt::load_checkpoint(s.resume_path);
    const ex::RunProgress p = ex::load_run(s.resume_path, ck, id, nullptr, engines);
    ck.restore("model", params);
    ck.restore("optimizer", opt);
    start = ex::TrainingLoopStart{p.step + 1, p.seconds, p.window_sum, p.window_count};
    std::fprintf(stderr, "char_lm/%s: resumed from %s at step %ld\n", name.c_str(),
                 s.resume_path.c_str(), p.step);
  }
  const long every = s.checkpoint_every > 0 ? s.checkpoint_every : s.log_every;
  auto save = [&](long t, double seconds, double window_sum, long window_count) {
    if (s.checkpoint_path.empty() || (t % every != 0 && t != s.steps)) return;
    ex::save_run(s.checkpoint_path, id, ex::RunProgress{t, seconds, window_sum, window_count},
                 params, opt.state_dict(), nullptr, engines);
  };
#else
  (void)opt;
  auto save = [](long, double, double, long) {};
#endif
  if (start.first_step == 1) {
    WindowSampler peek(corpus.train, s.seq_len, s.batch, seed + 1);
    peek.next(inputs, targets);
    const double bpc0 = static_cast<double>(model.loss(inputs, targets, s.seq_len, s.batch)) / kLn2;
    const double valid0 = validation_bpc(model, validation);
    csv.row(result, 0, 0.0, bpc0, valid0);
    result.curve.emplace_back(0, bpc0);
  }
  ex::ProgressBar progress("char_lm/" + name, s.steps, stderr, /*redraw=*/s.jobs == 1);
  const auto outcome = ex::run_training_loop(
      start, s.steps, s.log_every, progress,
      [&](long) {
        sampler.next(inputs, targets);
        return static_cast<double>(step()) / kLn2;
      },
      [&](long t, double seconds, double train_bpc) {
        const double valid = validation_bpc(model, validation);
        csv.row(result, t, seconds, train_bpc, valid);
        result.curve.emplace_back(t, train_bpc);
        result.train_bpc = train_bpc;
        result.valid_bpc = valid;
      },
      [](long) {},
      [&](long t, double seconds, double bpc) {
        csv.row(result, t, seconds, bpc, std::numeric_limits<double>::quiet_NaN());
      },
      [](double mean_bpc) { return ex::cell("train %.4f bits/char (window mean)", mean_bpc); },
      save);
  result.steps = outcome.steps;
  result.diverged = outcome.diverged;
  result.seconds = outcome.seconds;
  csv.finish(result);
  return result;
}

template <typename Scalar>
RunResult run_adam(const std::string& name, unsigned seed, const Corpus& corpus,
                   const Validation& validation, const Settings& s, RunLog& csv) {
  auto model = make_model<Scalar>(s, static_cast<Eigen::Index>(corpus.symbols.size()), seed);
  kfopt::ParameterSet<Scalar> params = model_parameters(model);
  kfopt::AdamOptions options;
  options.learning_rate = s.adam_lr;
  kfopt::Adam<Scalar> adam(params, options);
  std::vector<int> inputs, targets;
  RunResult r = train<Scalar>(name, seed, model, corpus, validation, s, csv, inputs, targets, adam,
                              {}, [&] {
    const Scalar loss = model.loss_and_gradient(inputs, targets, s.seq_len, s.batch);
    adam.step();
    return loss;
  });
  r.failed_steps = static_cast<long>(adam.state().counters.skipped_nonfinite);
  return r;
}

/// RNN K-FAC: every LSTM gate matrix and the output layer as RecurrentKroneckerBlocks with
/// the chosen approximation (eq. 6, 8 or 9), statistics from the Fisher pass.
template <typename Scalar>
RunResult run_kfac(const std::string& name, kfopt::RecurrentApproximation approximation,
                   unsigned seed, const Corpus& corpus, const Validation& validation,
                   const Settings& s, RunLog& csv) {
  auto model = make_model<Scalar>(s, static_cast<Eigen::Index>(corpus.symbols.size()), seed);
  kfopt::KfacOptions options;
  const std::size_t v = variant_index(approximation);
  options.learning_rate = s.kfac_lr[v];
  options.damping = s.kfac_damping[v];
  options.min_damping = std::min(options.min_damping, s.kfac_damping[v]);
  options.momentum = s.kfac_momentum[v];
  options.decay = s.kfac_decay;
  options.kl_clip = s.kfac_kl_clip[v];
  options.statistics_period = static_cast<int>(s.kfac_stats_period);
  options.inverse_period = static_cast<int>(s.kfac_inverse_period);
  options.damping_style = kfopt::DampingStyle::Factored;
  options.adaptive_damping = false;
  kfopt::Kfac<Scalar> kfac(options);
  kfopt::RecurrentLayerOptions layer_options;
  layer_options.approximation = approximation;

  struct Registered {
    std::size_t id;
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>* a;
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>* g;
  };
  std::vector<Registered> blocks;
  for (std::size_t l = 0; l < model.depth(); ++l) {
    auto& layer = model.layer(l);
    for (int k = 0; k < ex::LstmLayer<Scalar>::num_blocks(); ++k) {
      auto& w = layer.block(k);
      const std::string block_name = "lstm" + std::to_string(l + 1) + "." + ex::LstmLayer<Scalar>::block_name(k);
      blocks.push_back({kfac.add_recurrent_layer(block_name, w.W, w.dW, w.b, w.db, layer_options),
                        &layer.inputs(), &w.g});
    }
  }
  // The softmax layer: its g_t = p_t − e_{y_t} with y_t sampled independently at each step
  // and never fed back, so E[g_{t+1} g_tᵀ] = 0 and the true V1 vanishes; the independent
  // block (eq. 6) is then exact and Options 1/2 would fit noise (measured asymmetry ≈ 1).
  kfopt::RecurrentLayerOptions output_options = layer_options;
  if (s.kfac_output_block == "independent") {
    output_options.approximation = kfopt::RecurrentApproximation::Independent;
  }
  auto& out = model.output();
  blocks.push_back({kfac.add_recurrent_layer("output", out.W, out.dW, out.b, out.db, output_options),
                    &out.a, &out.g});

  const Eigen::VectorXi lengths = Eigen::VectorXi::Constant(s.batch, static_cast<int>(s.seq_len));
  std::mt19937_64 fisher_rng(seed + 2);
  long failed = 0;
  std::string first_failure;
  double clip_sum = 0.0;
  long clip_count = 0;
  const auto count = [&](kfopt::Status status, const char* what) {
    if (status == kfopt::Status::Success) return;
    if (failed++ == 0) first_failure = std::string(what) + ": " + kfopt::to_string(status);
  };
  std::vector<int> inputs, targets;
  RunResult r = train<Scalar>(name, seed, model, corpus, validation, s, csv, inputs, targets, kfac,
                              {&fisher_rng}, [&] {
    const Scalar loss = model.loss_and_gradient(inputs, targets, s.seq_len, s.batch);
    if (kfac.wants_statistics()) {
      model.fisher_pass(fisher_rng);  // true Fisher: targets sampled from the model
      for (const auto& b : blocks) {
        count(kfac.record_sequence_statistics(b.id, *b.a, *b.g, lengths), "statistics");
      }
    }
    count(kfac.step(), "step");
    clip_sum += kfac.state().last_clip_scale;
    ++clip_count;
    return loss;
  });
  r.mean_clip = clip_count > 0 ? clip_sum / static_cast<double>(clip_count) : r.mean_clip;
  // How far the final A1, G1 are from symmetric (Option 1 assumes V1 = A1 ⊗ G1 symmetric,
  // eq. 8 and C.3): ‖F1 − F1ᵀ‖ / ‖F1 + F1ᵀ‖ (0 = symmetric, 1 = antisymmetric). A is the
  // same for the four gates of a layer, so it is shown once per layer.
  const auto asymmetry = [](const auto& f) {
    const double den = static_cast<double>((f + f.transpose()).norm());
    return den > 0 ? static_cast<double>((f - f.transpose()).norm()) / den : 0.0;
  };
  std::ostringstream d;
  d.precision(2);
  d << "asymmetry of A1 / of G1 (mean over the layer's blocks) at the end:";
  for (std::size_t l = 0; l <= model.depth(); ++l) {
    const bool is_output = l == model.depth();
    const std::size_t first = is_output ? blocks.size() - 1 : 4 * l;
    const std::size_t count_blocks = is_output ? 1 : 4;
    double g_asym = 0.0;
    for (std::size_t j = first; j < first + count_blocks; ++j) {
      g_asym += asymmetry(kfac.recurrent_block(blocks[j].id).g1()) / static_cast<double>(count_blocks);
    }
    d << (l == 0 ? " " : "; ") << (is_output ? std::string("output") : "lstm" + std::to_string(l + 1))
      << " " << asymmetry(kfac.recurrent_block(blocks[first].id).a1()) << " / " << g_asym;
  }
  r.diagnostics = d.str();
  r.failed_steps = failed;
  r.first_failure = first_failure;
  return r;
}

/// With several seeds, `DIR/char_lm_mean.csv` (same header) holds each optimizer's mean
/// over the seeds at every logged step that all its non-diverged runs reached: the curve
/// plot_results.sh draws as char_lm_mean.png, one line per optimizer. Returns those mean
/// training curves, (step, bits/char), by optimizer.
std::map<std::string, std::vector<std::pair<long, double>>> write_seed_means(
    const Settings& s, const std::vector<RunResult>& results) {
  std::map<std::string, std::vector<std::pair<long, double>>> curves;
  ex::CsvWriter csv(s.out_dir, "char_lm_mean");
  for (const auto& opt : s.optimizers) {
    std::map<long, std::vector<const RunResult::Row*>> by_step;
    std::size_t runs = 0;
    for (const auto& r : results) {
      if (r.name.rfind(opt + "/s", 0) != 0 || r.diverged) continue;
      ++runs;
      for (const auto& row : r.rows) by_step[row.step].push_back(&row);
    }
    for (const auto& [step, rows] : by_step) {
      if (rows.size() != runs) continue;
      double seconds = 0.0, train = 0.0, valid = 0.0;
      for (const auto* row : rows) {
        seconds += row->seconds;
        train += row->train_bpc;
        valid += row->valid_bpc;
      }
      const double n = static_cast<double>(runs);
      csv.row(opt, step, seconds / n, train / n, valid / n);
      curves[opt].emplace_back(step, train / n);
    }
  }
  return curves;
}

template <typename Scalar>
int run(const Settings& s) {
  const Corpus corpus = load_corpus(s);
  const Validation validation(corpus.valid, s.seq_len, s.valid_chars);
  {
    auto probe = make_model<Scalar>(s, static_cast<Eigen::Index>(corpus.symbols.size()), 0);
    std::fprintf(stderr,
                 "char_lm: text %s: %zu training and %zu validation characters, vocabulary %zu\n"
                 "  model: %ld-layer LSTM, %ld units, %ld parameters, %zu K-FAC blocks; "
                 "sequences of %ld, batch %ld, %ld steps, %s precision\n"
                 "  validation: %ld windows of %ld characters\n"
                 "  adam lr %g | kfac (independent/option1/option2) lr %s, damping %s, kl_clip %s, "
                 "momentum %s; decay %g, "
                 "statistics every %ld, T_inv %ld, output block %s; %ld run(s) at a time\n",
                 corpus.source.c_str(), corpus.train.size(), corpus.valid.size(), corpus.symbols.size(),
                 s.layers, s.hidden, static_cast<long>(probe.num_parameters()),
                 static_cast<std::size_t>(4 * s.layers + 1), s.seq_len, s.batch, s.steps,
                 sizeof(Scalar) == 4 ? "single" : "double", validation.batch, validation.steps,
                 s.adam_lr, per_variant_text(s.kfac_lr).c_str(), per_variant_text(s.kfac_damping).c_str(),
                 per_variant_text(s.kfac_kl_clip).c_str(), per_variant_text(s.kfac_momentum).c_str(),
                 s.kfac_decay,
                 s.kfac_stats_period, s.kfac_inverse_period, s.kfac_output_block.c_str(), s.jobs);
  }
  // A resumed run continues its CSV (rows after the checkpoint's step dropped).
  long resume_step = -1;
#if KFOPT_EXAMPLE_HAS_CHECKPOINT
  if (!s.resume_path.empty()) {
    const ex::RunIdentity id{"char_lm", "char_lm", s.optimizers.front(),
                             s.trajectory_settings(sizeof(Scalar) == 4) + " seed " +
                                 std::to_string(s.seeds.front())};
    resume_step = ex::require_same_run(s.resume_path, kfopt::load_checkpoint(s.resume_path), id);
  }
#endif
  std::unique_ptr<ex::CsvWriter> csv_owner =
      resume_step < 0 ? std::make_unique<ex::CsvWriter>(s.out_dir, "char_lm")
                      : std::make_unique<ex::CsvWriter>(s.out_dir, "char_lm", s.optimizers.front(),
                                                        resume_step);
  ex::CsvWriter& csv_file = *csv_owner;
  RunLog csv(csv_file, /*live=*/s.jobs == 1);
  struct Job {
    std::string name, optimizer;
    unsigned seed;
  };
  std::vector<Job> jobs;
  for (unsigned seed : s.seeds) {
    for (const auto& opt : s.optimizers) {
      jobs.push_back({s.seeds.size() > 1 ? opt + "/s" + std::to_string(seed) : opt, opt, seed});
    }
  }
  // Every run owns its model, optimizer and random streams; the text and the validation set
  // are shared read-only. Runs are handed out in order to --jobs threads.
  std::vector<RunResult> results(jobs.size());
  std::vector<std::exception_ptr> errors(jobs.size());
  std::atomic<std::size_t> next{0};
  const auto worker = [&] {
    for (std::size_t i = next++; i < jobs.size(); i = next++) {
      const Job& job = jobs[i];
      try {
        if (job.optimizer == "adam") {
          results[i] = run_adam<Scalar>(job.name, job.seed, corpus, validation, s, csv);
        } else {
          const auto a = job.optimizer == "kfac_independent" ? kfopt::RecurrentApproximation::Independent
                         : job.optimizer == "kfac_option1"   ? kfopt::RecurrentApproximation::Option1
                                                             : kfopt::RecurrentApproximation::Option2;
          results[i] = run_kfac<Scalar>(job.name, a, job.seed, corpus, validation, s, csv);
        }
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  {
    std::vector<std::thread> threads;
    const std::size_t extra = std::min<std::size_t>(static_cast<std::size_t>(s.jobs), jobs.size()) - 1;
    for (std::size_t k = 0; k < extra; ++k) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  std::map<std::string, std::vector<std::pair<long, double>>> mean_curves;
  if (s.seeds.size() > 1) mean_curves = write_seed_means(s, results);

  ex::SummaryTable table({"optimizer", "seed", "steps", "train bits/char", "valid bits/char",
                          "seconds", "ms/step", "steps to Adam's final loss", "mean KL-clip scale"},
                         1);
  std::vector<std::string> notes;
  for (const auto& r : results) {
    double adam_final = std::numeric_limits<double>::quiet_NaN();
    long adam_steps = 1;
    for (const auto& q : results) {
      if (q.seed == r.seed && q.name.rfind("adam", 0) == 0 && !q.diverged) {
        adam_final = q.train_bpc;
        adam_steps = q.steps;
      }
    }
    const double per_step = r.steps > 0 ? r.seconds / static_cast<double>(r.steps) : 0.0;
    table.add_row({r.name, std::to_string(r.seed), std::to_string(r.steps),
                   r.diverged ? "diverged" : ex::cell("%.4f", r.train_bpc), ex::cell("%.4f", r.valid_bpc),
                   ex::cell("%.1f", r.seconds), ex::cell("%.1f", per_step * 1e3),
                   ex::steps_to_reach(r.curve, adam_final, adam_steps, r.name.rfind("adam", 0) == 0),
                   std::isfinite(r.mean_clip) ? ex::cell("%.3f", r.mean_clip) : "-"});
    if (!r.diagnostics.empty()) notes.push_back(r.name + ": " + r.diagnostics);
    if (r.failed_steps > 0) {
      notes.push_back(r.name + ": " + std::to_string(r.failed_steps) +
                      " K-FAC statistics batches or steps did not succeed (skipped; first: " +
                      r.first_failure + ")");
    }
  }
  // With several seeds: one more row per optimizer, the means over its seeds (the final
  // loss and the steps to Adam's final loss read off the mean curves).
  for (const auto& opt : s.optimizers) {
    if (s.seeds.size() < 2) break;
    const auto curve = mean_curves.find(opt);
    const auto adam = mean_curves.find("adam");
    double valid = 0.0, seconds = 0.0, per_step = 0.0, clip = 0.0;
    long steps = 0;
    std::size_t n = 0;
    for (const auto& r : results) {
      if (r.name.rfind(opt + "/s", 0) != 0 || r.diverged) continue;
      valid += r.valid_bpc;
      seconds += r.seconds;
      per_step += r.steps > 0 ? r.seconds / static_cast<double>(r.steps) : 0.0;
      clip += r.mean_clip;
      steps = r.steps;
      ++n;
    }
    if (n == 0 || curve == mean_curves.end()) continue;
    const double k = static_cast<double>(n);
    const bool has_adam = adam != mean_curves.end() && !adam->second.empty();
    table.add_row({opt, "mean of " + std::to_string(n), std::to_string(steps),
                   ex::cell("%.4f", curve->second.back().second), ex::cell("%.4f", valid / k),
                   ex::cell("%.1f", seconds / k), ex::cell("%.1f", per_step / k * 1e3),
                   has_adam ? ex::steps_to_reach(curve->second, adam->second.back().second,
                                                 adam->second.back().first, opt == "adam")
                            : std::string("-"),
                   std::isfinite(clip) ? ex::cell("%.3f", clip / k) : "-"});
  }
  ex::print_summary(std::cout, table, notes);
  std::cout << "* train bits/char: mean mini-batch loss over the last logging window (before each "
               "update); valid bits/char: "
            << validation.batch << " held-out windows of " << validation.steps
            << " characters; seconds: training time without evaluation; mean KL-clip scale: "
               "K-FAC's nu = min(1, sqrt(kl_clip / (lr^2 <Delta, grad>))) averaged over the "
               "updates (1 = the clip never bound); steps to Adam's final loss: the first logged "
               "step whose train bits/char is at most Adam's final one on the same seed (Adam's own "
               "row: its step count, the reference). The last progress line shows the final train "
               "bits/char.\n"
            << "* CSV: " << csv_file.path()
            << (s.seeds.size() > 1 ? " (mean over the seeds: char_lm_mean.csv)" : "")
            << "; plot: examples/plot_results.sh " << s.out_dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return ex::example_main("char_lm", help_text, argc, argv, parse_command_line,
                          [](const Settings& settings) {
                            return settings.use_float ? run<float>(settings)
                                                      : run<double>(settings);
                          });
}
