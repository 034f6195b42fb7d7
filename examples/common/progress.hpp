#pragma once
/// \file progress.hpp
/// \brief A progress bar on stderr that keeps logs small.
///
/// On a terminal it redraws one line in place (at most ten times a second). When stderr is
/// a file or a pipe (CI logs), it prints one plain line at 25 %, 50 %, 75 % and 100 % of each
/// run instead of a stream of carriage returns.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <utility>

namespace kfopt_examples {

/// Progress of one run of `total` steps, labelled e.g. "autoencoder/kfac".
class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  /// `redraw = false` keeps the plain quarter lines even on a terminal (for several bars
  /// running at once, which would overwrite each other's line).
  /// A null `stream` shows nothing (e.g. on the ranks other than 0 of a distributed run).
  ProgressBar(std::string label, long total, std::FILE* stream = stderr, bool redraw = true)
      : label_(std::move(label)),
        total_(total > 0 ? total : 1),
        stream_(stream),
        tty_(stream != nullptr && redraw && isatty(fileno(stream)) == 1),
        start_(Clock::now()),
        last_draw_(start_) {}

  /// Reports that `step` of `total` steps are done; `status` is a short free text (a loss).
  void update(long step, const std::string& status) {
    if (stream_ == nullptr) return;
    const auto now = Clock::now();
    if (tty_) {
      if (step < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      draw(step, status, now);
    } else {
      // Plain lines at each quarter only.
      const int quarter = static_cast<int>(4 * step / total_);
      if (quarter > last_quarter_) {
        last_quarter_ = quarter;
        std::fprintf(stream_, "%s: step %ld/%ld (%3d%%) %s, %.1f s\n", label_.c_str(), step, total_,
                     static_cast<int>(100 * step / total_), status.c_str(),
                     seconds_since_start(now));
        std::fflush(stream_);
      }
    }
  }

  /// Ends the bar's line on a terminal (nothing to do otherwise).
  void finish() {
    if (tty_ && !finished_) {
      std::fputc('\n', stream_);
      std::fflush(stream_);
    }
    finished_ = true;
  }

  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

 private:
  double seconds_since_start(Clock::time_point now) const {
    return std::chrono::duration<double>(now - start_).count();
  }

  void draw(long step, const std::string& status, Clock::time_point now) {
    constexpr int width = 30;
    const double fraction = static_cast<double>(step) / static_cast<double>(total_);
    const int filled = static_cast<int>(fraction * width);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, '.');
    const double elapsed = seconds_since_start(now);
    const double eta = step > 0 ? elapsed * static_cast<double>(total_ - step) / step : 0.0;
    // \r returns to the line start; \033[K clears what a longer previous line left behind.
    std::fprintf(stream_, "\r%-22s [%s] %ld/%ld %s  %.0fs, eta %.0fs\033[K", label_.c_str(),
                 bar.c_str(), step, total_, status.c_str(), elapsed, eta);
    std::fflush(stream_);
  }

  std::string label_;
  long total_;
  std::FILE* stream_;
  bool tty_;
  bool finished_ = false;
  int last_quarter_ = 0;
  Clock::time_point start_;
  Clock::time_point last_draw_;
};

}  // namespace kfopt_examples
