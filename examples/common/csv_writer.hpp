#pragma once
/// \file csv_writer.hpp
/// \brief The examples' result files: one CSV per task with the header
/// `optimizer,step,seconds,train_loss,test_metric` (the output contract of every example).

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace kfopt_examples {

/// Writes `DIR/<task>.csv`, creating DIR if needed and replacing an older file.
///
/// Columns: optimizer name; step (optimizer steps taken so far); seconds (training time so
/// far, evaluation excluded); train_loss; test_metric (task-specific, see the example).
/// Numbers are written with up to 8 significant digits; a missing value is written as "nan".
class CsvWriter {
 public:
  static constexpr const char* header = "optimizer,step,seconds,train_loss,test_metric";

  CsvWriter(const std::string& directory, const std::string& task) {
    std::filesystem::create_directories(directory);
    path_ = (std::filesystem::path(directory) / (task + ".csv")).string();
    file_ = std::fopen(path_.c_str(), "w");
    if (file_ == nullptr) throw std::runtime_error("cannot write " + path_);
    std::fprintf(file_, "%s\n", header);
  }

  /// Continues `DIR/<task>.csv` for a run resumed after step `step` of `optimizer`: the rows
  /// that run wrote after that step (a run killed after its last checkpoint) are dropped,
  /// every other row is kept, and new rows are appended. The file must exist with the
  /// header above (std::runtime_error otherwise). The kept rows go to a temporary file that
  /// replaces the old one, so an interruption here loses nothing.
  CsvWriter(const std::string& directory, const std::string& task, const std::string& optimizer,
            long step) {
    path_ = (std::filesystem::path(directory) / (task + ".csv")).string();
    std::ifstream in(path_);
    std::string line;
    if (!in || !std::getline(in, line) || line != header) {
      throw std::runtime_error("cannot resume " + path_ + ": no such file, or not a result file");
    }
    const std::string temp = path_ + ".resume";
    std::FILE* out = std::fopen(temp.c_str(), "w");
    if (out == nullptr) throw std::runtime_error("cannot write " + temp);
    std::fprintf(out, "%s\n", header);
    const std::string prefix = optimizer + ",";
    while (std::getline(in, line)) {
      const bool mine = line.compare(0, prefix.size(), prefix) == 0;
      if (mine && std::strtol(line.c_str() + prefix.size(), nullptr, 10) > step) continue;
      std::fprintf(out, "%s\n", line.c_str());
    }
    std::fclose(out);
    std::filesystem::rename(temp, path_);
    file_ = std::fopen(path_.c_str(), "a");
    if (file_ == nullptr) throw std::runtime_error("cannot append to " + path_);
  }
  /// A writer that writes nothing (the ranks other than 0 of a distributed run); path() is
  /// empty.
  CsvWriter() = default;
  ~CsvWriter() {
    if (file_ != nullptr) std::fclose(file_);
  }
  CsvWriter(const CsvWriter&) = delete;
  CsvWriter& operator=(const CsvWriter&) = delete;

  /// Appends one row and flushes, so that a run interrupted midway leaves usable data.
  void row(const std::string& optimizer, long step, double seconds, double train_loss,
           double test_metric) {
    if (file_ == nullptr) return;
    std::fprintf(file_, "%s,%ld,%.8g,%.8g,%.8g\n", optimizer.c_str(), step, seconds, train_loss,
                 test_metric);
    std::fflush(file_);
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace kfopt_examples
