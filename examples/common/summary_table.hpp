#pragma once
/// \file summary_table.hpp
/// \brief A plain-text table with aligned columns, for the summary an example prints on
/// stdout at the end of a run.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace kfopt_examples {

/// The first `text_columns` columns are left-aligned (names), the others right-aligned
/// (numbers).
class SummaryTable {
 public:
  explicit SummaryTable(std::vector<std::string> headers, std::size_t text_columns = 1)
      : headers_(std::move(headers)), text_columns_(text_columns) {}

  /// Appends a row; missing trailing cells print as empty.
  void add_row(std::vector<std::string> cells) {
    cells.resize(headers_.size());
    rows_.push_back(std::move(cells));
  }

  /// Prints the header, a rule, and the rows.
  void print(std::ostream& out) const {
    std::vector<std::size_t> width(headers_.size());
    for (std::size_t c = 0; c < headers_.size(); ++c) {
      width[c] = headers_[c].size();
      for (const auto& row : rows_) width[c] = std::max(width[c], row[c].size());
    }
    auto print_row = [&](const std::vector<std::string>& cells) {
      for (std::size_t c = 0; c < cells.size(); ++c) {
        const std::string pad(width[c] - cells[c].size(), ' ');
        out << (c == 0 ? "" : "  ") << (c >= text_columns_ ? pad + cells[c] : cells[c] + pad);
      }
      out << '\n';
    };
    print_row(headers_);
    std::size_t total = 0;
    for (std::size_t w : width) total += w + 2;
    out << std::string(total - 2, '-') << '\n';
    for (const auto& row : rows_) print_row(row);
  }

 private:
  std::vector<std::string> headers_;
  std::size_t text_columns_;
  std::vector<std::vector<std::string>> rows_;
};

/// printf-style formatting of one number into a table cell, e.g. cell("%.3f", x).
inline std::string cell(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

/// The summary every example prints on stdout: a blank line, the table, a blank line, then
/// each note as a "* " bullet.
inline void print_summary(std::ostream& out, const SummaryTable& table,
                          const std::vector<std::string>& notes) {
  out << "\n";
  table.print(out);
  out << "\n";
  for (const auto& note : notes) out << "* " << note << "\n";
}

/// The "steps to reach" cell, with one rule for every row: the first logged step (> 0) of
/// `curve` (step, window-mean loss) whose loss is at most `target` (the reference's final
/// logged loss), with its ratio to `reference_steps`, e.g. "120 (0.30x)"; "-" when the target
/// is not finite, "not reached" when no logged loss gets there. The reference itself
/// (`is_reference`) reaches its own final loss, by definition, at its last step: its cell is
/// "<reference_steps> (reference)", not an earlier dip of a plateaued curve below that loss.
inline std::string steps_to_reach(const std::vector<std::pair<long, double>>& curve,
                                  double target, long reference_steps, bool is_reference = false) {
  if (!std::isfinite(target)) return "-";
  if (is_reference) return std::to_string(reference_steps) + " (reference)";
  for (const auto& [step, loss] : curve) {
    if (step > 0 && loss <= target) {
      return std::to_string(step) + " (" +
             cell("%.2f", static_cast<double>(step) / static_cast<double>(reference_steps)) + "x)";
    }
  }
  return "not reached";
}

}  // namespace kfopt_examples
