// The examples' output and plumbing toolkit: CSV header contract, summary table layout,
// command-line parsing, mini-batch sampling.
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/batches.hpp"
#include "common/cli.hpp"
#include "common/csv_writer.hpp"
#include "common/summary_table.hpp"
#include "common/training_loop.hpp"

using namespace kfopt_examples;
namespace fs = std::filesystem;

TEST_CASE("CSV: the header of the output contract, one row per call", "[examples][output]") {
  const fs::path dir = fs::temp_directory_path() /
                       ("kfopt_csv_test_" + std::to_string(static_cast<long>(getpid()))) / "nested";
  {
    CsvWriter csv(dir.string(), "task");
    csv.row("adam", 10, 1.5, 0.25, 0.875);
    CHECK(csv.path() == (dir / "task.csv").string());
  }
  std::ifstream in(dir / "task.csv");
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  CHECK(header == "optimizer,step,seconds,train_loss,test_metric");
  CHECK(row == "adam,10,1.5,0.25,0.875");
  fs::remove_all(dir.parent_path());
}

TEST_CASE("summary table: aligned columns, names left, numbers right", "[examples][output]") {
  SummaryTable table({"name", "value"});
  table.add_row({"adam", "1.5"});
  table.add_row({"kfac", "12.25"});
  std::ostringstream out;
  table.print(out);
  CHECK(out.str() ==
        "name  value\n"
        "-----------\n"
        "adam    1.5\n"
        "kfac  12.25\n");
  CHECK(cell("%.2f", 3.14159) == "3.14");
}

TEST_CASE("command line: flags, values, --name=value, and leftovers", "[examples][cli]") {
  const char* argv[] = {"prog",         "--quick",      "--steps",  "40",
                        "--out=/tmp/x", "--optimizers", "kfac,adam"};
  CommandLine cli(7, argv);
  CHECK(cli.take_flag("--quick"));
  CHECK_FALSE(cli.take_flag("--float"));
  CHECK(cli.take_long("--steps", 1, 1, 100) == 40);
  CHECK(cli.take_string("--out", "out") == "/tmp/x");
  CHECK(cli.take_string("--data", "default") == "default");
  CHECK(split_list(cli.take_string("--optimizers", "")) ==
        std::vector<std::string>{"kfac", "adam"});
  CHECK_NOTHROW(cli.finish());

  const char* bad[] = {"prog", "--steps", "x", "--typo"};
  CommandLine cli2(4, bad);
  CHECK_THROWS_AS(cli2.take_long("--steps", 1, 1, 100), UsageError);
  CHECK_THROWS_WITH(cli2.finish(), Catch::Contains("--typo"));

  const char* reals[] = {"prog", "--lr", "0.5", "--clip=-1"};
  CommandLine cli4(4, reals);
  CHECK(cli4.take_double("--lr", 1.0, 0.0, 1.0) == 0.5);
  CHECK_THROWS_WITH(cli4.take_double("--clip", 1.0, 0.0, 1.0), Catch::Contains("[0, 1]"));
  CHECK(cli4.take_double("--absent", 0.25, 0.0, 1.0) == 0.25);

  const char* missing[] = {"prog", "--out"};
  CommandLine cli3(2, missing);
  CHECK_THROWS_WITH(cli3.take_string("--out", ""), Catch::Contains("needs a value"));
  CHECK(split_list("a,,b,") == std::vector<std::string>{"a", "b"});
}

TEST_CASE("batches: every example once per epoch, reproducible from the seed",
          "[examples][batches]") {
  BatchSampler a(10, 3, 5), b(10, 3, 5);
  std::vector<int> seen;
  for (int k = 0; k < 3; ++k) {
    const auto batch = a.next();
    CHECK(batch == b.next());
    seen.insert(seen.end(), batch.begin(), batch.end());
  }
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());  // 9 distinct examples
  CHECK(a.next().size() == 3);  // the tail (1 example) is dropped, a new epoch starts
  CHECK_THROWS(BatchSampler(10, 11, 1));

  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> data(4, 2);
  data << 0, 1, 10, 11, 20, 21, 30, 31;
  Eigen::MatrixXd out;
  gather_rows(data, {2, 0}, out);
  CHECK(out(0, 1) == 21);
  CHECK(out(1, 0) == 0);
  std::vector<int> labels;
  gather_labels({5, 6, 7, 8}, {3, 1}, labels);
  CHECK(labels == std::vector<int>{8, 6});
}

TEST_CASE("steps to the reference's final loss: one rule, the reference reaches it at its end",
          "[examples][output]") {
  namespace ex = kfopt_examples;
  // A plateaued reference curve that dips below its own final loss at step 20.
  const std::vector<std::pair<long, double>> reference{{10, 2.0}, {20, 0.95}, {30, 1.0}, {40, 1.0}};
  const double final_loss = reference.back().second;
  CHECK(ex::steps_to_reach(reference, final_loss, 40, true) == "40 (reference)");
  // Another optimizer: the first logged step at or below the target, as a ratio of 40.
  const std::vector<std::pair<long, double>> other{{10, 1.5}, {20, 0.99}, {30, 0.5}};
  CHECK(ex::steps_to_reach(other, final_loss, 40) == "20 (0.50x)");
  CHECK(ex::steps_to_reach({{10, 1.5}}, final_loss, 40) == "not reached");
  CHECK(ex::steps_to_reach(other, std::nan(""), 40) == "-");
}

TEST_CASE("training loop: the last progress line shows the summary's final train loss",
          "[examples][output]") {
  namespace ex = kfopt_examples;
  const std::vector<double> losses{4.0, 3.0, 2.0, 1.5, 1.0};
  std::FILE* sink = std::tmpfile();
  REQUIRE(sink != nullptr);
  ex::ProgressBar progress("test", static_cast<long>(losses.size()), sink, false);
  std::vector<double> logged, shown;
  ex::run_training_loop(
      static_cast<long>(losses.size()), 2, progress,
      [&](long t) { return losses[static_cast<std::size_t>(t - 1)]; },
      [&](long, double, double mean) { logged.push_back(mean); }, [](long) {},
      [](long, double, double) {},
      [&](double mean) {
        shown.push_back(mean);
        return std::string();
      });
  std::fclose(sink);
  // Windows: steps 1-2, 3-4, 5 (the last step always logs).
  REQUIRE(logged == std::vector<double>{3.5, 1.75, 1.0});
  REQUIRE(shown.size() == losses.size());
  CHECK(shown.back() == logged.back());
  CHECK(shown[1] == logged[0]);
  CHECK(shown[0] == 4.0);  // the running mean of the window so far
}
