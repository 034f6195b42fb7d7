#pragma once
/// \file cli.hpp
/// \brief Just enough command-line parsing for the examples: `--flag` switches and
/// `--name value` (or `--name=value`) options, with errors that say what was wrong.
///
/// Usage: construct from argc/argv, `take_*` every option the program knows, then call
/// `finish()`, which rejects anything left over (a typo is an error, not silently ignored).

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kfopt_examples {

/// Thrown for malformed or unknown command-line arguments.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The arguments of a program, consumed option by option.
class CommandLine {
 public:
  CommandLine(int argc, const char* const* argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      const auto eq = arg.find('=');
      if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
        args_.push_back(arg.substr(0, eq));  // "--name=value" is "--name" "value"
        args_.push_back(arg.substr(eq + 1));
      } else {
        args_.push_back(std::move(arg));
      }
    }
  }

  /// Whether `--name` is present (and removes it).
  bool take_flag(const std::string& name) {
    for (std::size_t i = 0; i < args_.size(); ++i) {
      if (args_[i] == name) {
        args_.erase(args_.begin() + static_cast<std::ptrdiff_t>(i));
        return true;
      }
    }
    return false;
  }

  /// The value after `--name`, or `fallback` when the option is absent.
  std::string take_string(const std::string& name, const std::string& fallback) {
    for (std::size_t i = 0; i < args_.size(); ++i) {
      if (args_[i] != name) continue;
      if (i + 1 >= args_.size()) throw UsageError(name + " needs a value");
      std::string value = args_[i + 1];
      args_.erase(args_.begin() + static_cast<std::ptrdiff_t>(i),
                  args_.begin() + static_cast<std::ptrdiff_t>(i + 2));
      return value;
    }
    return fallback;
  }

  /// An integer option in [min, max].
  long take_long(const std::string& name, long fallback, long min, long max) {
    const std::string text = take_string(name, "");
    if (text.empty()) return fallback;
    char* end = nullptr;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (end == text.c_str() || *end != '\0' || value < min || value > max) {
      throw UsageError(name + " expects an integer in [" + std::to_string(min) + ", " +
                       std::to_string(max) + "], got '" + text + "'");
    }
    return value;
  }

  /// A real-valued option in [min, max] (finite).
  double take_double(const std::string& name, double fallback, double min, double max) {
    const std::string text = take_string(name, "");
    if (text.empty()) return fallback;
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0' || !std::isfinite(value) || value < min ||
        value > max) {
      throw UsageError(name + " expects a number in [" + format(min) + ", " + format(max) +
                       "], got '" + text + "'");
    }
    return value;
  }

  /// Throws UsageError naming the first argument nobody took.
  void finish() const {
    if (!args_.empty()) throw UsageError("unknown argument '" + args_.front() + "' (see --help)");
  }

  /// A number as %g (for messages).
  static std::string format(double x) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%g", x);
    return buffer;
  }

 private:
  std::vector<std::string> args_;
};

/// The save-and-resume options shared by the examples that train one run at a time.
struct CheckpointOptions {
  std::string checkpoint_path;  ///< --checkpoint: where the run is saved ("" for never)
  long checkpoint_every = 0;    ///< --checkpoint-every (0: at every CSV row)
  std::string resume_path;      ///< --resume: the checkpoint to continue from ("" for none)
};

/// Takes --checkpoint PATH, --checkpoint-every N and --resume PATH. `available` says whether
/// the build has checkpoint support (HDF5); `one_run` whether the other options select a
/// single training run, `one_run_hint` how to (both are required when saving or resuming).
inline CheckpointOptions take_checkpoint_options(CommandLine& cli, bool available, bool one_run,
                                                 const std::string& one_run_hint, long max_steps) {
  CheckpointOptions o;
  o.checkpoint_path = cli.take_string("--checkpoint", "");
  o.checkpoint_every = cli.take_long("--checkpoint-every", 0, 1, max_steps);
  o.resume_path = cli.take_string("--resume", "");
  if (!o.checkpoint_path.empty() || !o.resume_path.empty()) {
    if (!available) {
      throw UsageError("--checkpoint/--resume: this build has no checkpoint support "
                       "(HDF5: apt-get install libhdf5-dev, then reconfigure)");
    }
    if (!one_run) throw UsageError("--checkpoint/--resume save one training run: " + one_run_hint);
  }
  if (o.checkpoint_every > 0 && o.checkpoint_path.empty()) {
    throw UsageError("--checkpoint-every needs --checkpoint PATH");
  }
  return o;
}

/// Splits "a,b,c" into {"a", "b", "c"} (empty items are dropped).
inline std::vector<std::string> split_list(const std::string& text, char separator = ',') {
  std::vector<std::string> items;
  std::string current;
  for (char c : text) {
    if (c == separator) {
      if (!current.empty()) items.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) items.push_back(current);
  return items;
}

}  // namespace kfopt_examples
