#pragma once
/// \file csv_writer.hpp
/// \brief The examples' result files: one CSV per task with the header
/// `optimizer,step,seconds,train_loss,test_metric` (the output contract of every example).

#include <cmath>
#include <cstdio>
#include <filesystem>
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
  ~CsvWriter() {
    if (file_ != nullptr) std::fclose(file_);
  }
  CsvWriter(const CsvWriter&) = delete;
  CsvWriter& operator=(const CsvWriter&) = delete;

  /// Appends one row and flushes, so that a run interrupted midway leaves usable data.
  void row(const std::string& optimizer, long step, double seconds, double train_loss,
           double test_metric) {
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
