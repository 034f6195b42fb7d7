// The checkpoint file itself: every entry and hyperparameter round-trips bit for bit (floats
// with NaN payloads and signed zeros, int64 extremes, empty arrays, strings); the layout seen
// by h5dump; atomic replacement (a failing or crashing save leaves the previous file
// loadable); corrupted, truncated, foreign and newer-version files are refused with errors
// naming the file, and an optimizer restored from a refused file is left exactly as it was.
#include <catch2/catch.hpp>
#include <kfopt/io/checkpoint.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "io/checkpoint_fixtures.hpp"
#include "support/kfac_fixture.hpp"

using namespace kfopt_checkpoint_test;

namespace {

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const std::vector<char>& bytes, std::size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(n));
}
bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// A dict with every kind of entry and value a file must carry unchanged.
kfopt::StateDict every_kind_of_entry() {
  kfopt::StateDict d("kfopt::Test", kfopt::ScalarType::Float32);
  Mat<double> m(3, 2);
  m << 1.0, -0.0, std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max(),
      std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::infinity();
  d.set_array("layer0/A", m);
  Mat<float> f = wave_matrix<float>(3, 4, 5, 1);
  f(1, 2) = std::numeric_limits<float>::signaling_NaN();
  d.set_array("layer0/G", f);
  d.set_array("layer1/inner/v", Vec<float>(wave_matrix<float>(2, 7, 1, 2)), 1);
  d.set_array("empty_rows", Mat<double>(0, 4));
  d.set_array("empty_vector", Vec<float>(0), 1);
  Mat<std::int64_t> ints(2, 2);
  ints << std::numeric_limits<std::int64_t>::min(), -1, 0, std::numeric_limits<std::int64_t>::max();
  d.set_array("counts", ints);
  d.set_scalar<std::int64_t>("step", 123456789012345);
  d.set_scalar<double>("loss", -0.0);
  d.set_scalar<float>("scale", 1.5e-42f);
  d.set_hyperparameter("learning_rate", 0.1 + 0.2, kfopt::HyperparameterKind::Restored);
  d.set_hyperparameter("amsgrad", std::int64_t(1));
  d.set_hyperparameter("name", std::string("tanh rnn, 3 layers"));
  d.set_hyperparameter("empty", std::string());
  return d;
}

// Adam on the two-block model after a few steps: a real optimizer checkpoint.
using AdamFixture = ParamFixture<kfopt::Adam, double, kfopt::AdamOptions>;
// (Fixtures hold views of their own storage: built in place, never copied.)
struct TrainedAdam : AdamFixture {
  explicit TrainedAdam(kfopt::AdamOptions o = {}) : AdamFixture(o) {
    for (int t = 0; t < 4; ++t) step(t);
  }
};

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("every entry and hyperparameter round-trips through the file bit for bit", "[io][file]") {
  TempPath file("round_trip");
  const kfopt::StateDict original = every_kind_of_entry();
  kfopt::Checkpoint ck;
  ck.set("optimizer", original);
  ck.set("model", kfopt::parameters_state_dict(TrainedAdam().m.params));
  kfopt::StateDict run("run", kfopt::ScalarType::Int64);
  run.set_scalar<std::int64_t>("step", 40);
  std::mt19937 rng(7);
  std::mt19937_64 rng64(8);
  rng.discard(1000);  // mid-way through its state block
  rng64.discard(77);
  run.set_random_engine("data_order", rng);
  run.set_random_engine("dropout", rng64);
  ck.set("run", run);
  kfopt::save_checkpoint(file.path, ck);

  const kfopt::Checkpoint back = kfopt::load_checkpoint(file.path);
  REQUIRE(back.dicts().size() == 3);
  CHECK(back.get("optimizer") == original);
  CHECK(back.get("model") == ck.get("model"));
  CHECK(back.get("run").scalar<std::int64_t>("step") == 40);
  std::mt19937 rng_back;
  std::mt19937_64 rng64_back;
  back.get("run").random_engine("data_order", rng_back);
  back.get("run").random_engine("dropout", rng64_back);
  CHECK(rng_back == rng);
  CHECK(rng64_back == rng64);
  CHECK(rng_back() == rng());
  CHECK_THROWS_AS(back.get("run").random_engine("step", rng_back), kfopt::InvalidInputError);
  CHECK(back.path() == file.path);
  // Shapes, ranks and types are kept, not only the bytes.
  CHECK(back.get("optimizer").entry("layer1/inner/v").shape == std::vector<std::int64_t>{7});
  CHECK(back.get("optimizer").entry("step").rank() == 0);
  CHECK(back.get("optimizer").entry("empty_rows").shape == std::vector<std::int64_t>{0, 4});
  CHECK(back.get("optimizer").entry("layer0/G").type == kfopt::ScalarType::Float32);
  CHECK(back.get("optimizer").array<double>("layer0/A")(0, 1) == 0.0);
  CHECK(std::signbit(back.get("optimizer").array<double>("layer0/A")(0, 1)));
  // A changed byte makes the dicts differ (the equality can fail).
  kfopt::StateDict changed = original;
  kfopt::StateEntry e = changed.entry("layer0/G");
  e.bytes[5] ^= 1;
  changed.insert("layer0/G", e);
  CHECK_FALSE(back.get("optimizer") == changed);

  // The optimizer state of every optimizer through the file: Adam here (the resume tests
  // cover every optimizer through the file).
  const TrainedAdam adam;
  kfopt::Checkpoint ck2;
  ck2.set("optimizer", adam.opt.state_dict());
  kfopt::save_checkpoint(file.path, ck2);
  CHECK(kfopt::load_checkpoint(file.path).get("optimizer") == adam.opt.state_dict());
}

TEST_CASE("h5dump shows the documented layout", "[io][file]") {
  if (std::system("command -v h5dump > /dev/null 2>&1") != 0) {
    WARN("h5dump not installed (Debian: hdf5-tools); skipped");
    return;
  }
  TempPath file("h5dump");
  const std::string out_path = file.path + ".txt";
  kfopt::KroneckerFilterOptions kf_options;
  KroneckerFilterFixture<float> kf(kf_options);
  for (int t = 0; t < 2; ++t) kf.step(t);
  kfopt_kfac_test::KfacProblem kfac_problem;
  kfac_problem.options.damping = 0.01;
  kfopt_kfac_test::KfacFixture<float> kfac(kfac_problem);
  kfac.step(0);
  kfac.prepare(1);
  kfopt::Checkpoint ck;
  ck.set("optimizer", TrainedAdam().opt.state_dict());
  ck.set("filter", kf.opt.state_dict());
  ck.set("kfac", kfac.opt.state_dict());
  kfopt::save_checkpoint(file.path, ck);
  REQUIRE(std::system(("h5dump -H " + file.path + " > " + out_path).c_str()) == 0);
  std::ifstream in(out_path);
  const std::string dump((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(out_path.c_str());
  for (const char* expected :
       {"GROUP \"optimizer\"", "GROUP \"fc.weight\"", "DATASET \"first_moment\"",
        "DATASET \"second_moment\"", "DATASET \"steps\"", "GROUP \"hyperparameters\"",
        "ATTRIBUTE \"learning_rate\"", "ATTRIBUTE \"kfopt_type\"", "ATTRIBUTE \"scalar_type\"",
        "ATTRIBUTE \"kfopt_format_version\"", "ATTRIBUTE \"kfopt_version\"", "GROUP \"filter\"",
        "GROUP \"fc\"", "DATASET \"input_factor\"", "DATASET \"output_factor\"",
        "H5T_IEEE_F32LE", "H5T_IEEE_F64LE", "H5T_STD_I64LE", "DATASPACE  SIMPLE { ( 3, 4 ) / ( 3, 4 ) }",
        "DATASPACE  SIMPLE { ( 5, 5 ) / ( 5, 5 ) }", "GROUP \"kfac\"", "GROUP \"rnn_opt2\"",
        "DATASET \"A\"", "DATASET \"A_scale\"", "DATASET \"G_eigenvectors\"",
        "DATASET \"momentum\"", "GROUP \"refresh\"", "DATASET \"A0\"",
        "DATASET \"length_histogram\"", "ATTRIBUTE \"inverse_method\"",
        "ATTRIBUTE \"rnn_opt2.approximation\""}) {
    INFO("looking for " << expected);
    CHECK(dump.find(expected) != std::string::npos);
  }
  // The checksum filter is on the datasets (h5dump -p shows the filters).
  REQUIRE(std::system(("h5dump -p -d /optimizer/fc.weight/first_moment " + file.path + " > " + out_path).c_str()) == 0);
  std::ifstream in2(out_path);
  const std::string props((std::istreambuf_iterator<char>(in2)), std::istreambuf_iterator<char>());
  std::remove(out_path.c_str());
  CHECK(props.find("CHECKSUM FLETCHER32") != std::string::npos);
}

TEST_CASE("a failed or interrupted save leaves the previous checkpoint intact", "[io][file]") {
  TempPath file("atomic");
  const std::string temp = file.path + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  const TrainedAdam old_run;
  kfopt::Checkpoint old_ck;
  old_ck.set("optimizer", old_run.opt.state_dict());
  kfopt::save_checkpoint(file.path, old_ck);
  TrainedAdam new_run;
  new_run.step(4);
  kfopt::Checkpoint new_ck;
  new_ck.set("optimizer", new_run.opt.state_dict());
  REQUIRE_FALSE(new_ck.get("optimizer") == old_ck.get("optimizer"));

  SECTION("a save that fails after the temporary file is written") {
    kfopt::detail::checkpoint_before_rename_hook() = [](const std::string& t) {
      CHECK(file_exists(t));
      throw std::runtime_error("simulated failure");
    };
    CHECK_THROWS_WITH(kfopt::save_checkpoint(file.path, new_ck), "simulated failure");
    kfopt::detail::checkpoint_before_rename_hook() = nullptr;
    CHECK_FALSE(file_exists(temp));  // removed
    CHECK(kfopt::load_checkpoint(file.path).get("optimizer") == old_ck.get("optimizer"));
  }
  SECTION("a process killed during the save, with the temporary file half written") {
    std::fflush(nullptr);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      kfopt::detail::checkpoint_before_rename_hook() = [](const std::string& t) {
        const std::vector<char> bytes = read_bytes(t);
        write_bytes(t, bytes, bytes.size() / 2);  // as if the crash came mid-write
        ::_exit(42);                              // no cleanup, no rename
      };
      try {
        kfopt::save_checkpoint(file.path, new_ck);
      } catch (...) {
      }
      ::_exit(1);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 42);
    const std::string child_temp = file.path + ".tmp." + std::to_string(static_cast<long>(child));
    CHECK(file_exists(child_temp));  // the crash left it behind...
    CHECK_THROWS_AS(kfopt::load_checkpoint(child_temp), kfopt::CheckpointError);  // ...unusable
    std::remove(child_temp.c_str());
    CHECK(kfopt::load_checkpoint(file.path).get("optimizer") == old_ck.get("optimizer"));
  }
  SECTION("a completed save replaces the file") {
    kfopt::save_checkpoint(file.path, new_ck);
    CHECK(kfopt::load_checkpoint(file.path).get("optimizer") == new_ck.get("optimizer"));
    CHECK_FALSE(file_exists(temp));
  }
  SECTION("a save into a missing directory fails naming the file") {
    const std::string msg = error_of([&] { kfopt::save_checkpoint("no_such_dir/ck.h5", new_ck); });
    CHECK(msg.find("kfopt::save_checkpoint: file 'no_such_dir/ck.h5'") != std::string::npos);
  }
}

TEST_CASE("flipped bytes and truncations are refused and leave the optimizer unchanged", "[io][file][fuzz]") {
  TempPath file("fuzz_source");
  TempPath damaged("fuzz_damaged");
  // A real checkpoint: Adam's state and the model's weights.
  const TrainedAdam source;
  kfopt::Checkpoint ck;
  ck.set("optimizer", source.opt.state_dict());
  ck.set("model", source.model());
  kfopt::save_checkpoint(file.path, ck);
  const std::vector<char> bytes = read_bytes(file.path);
  REQUIRE(bytes.size() > 1000);

  // The optimizer that restores: a different state (one more step), compared whole.
  TrainedAdam target;
  target.step(4);
  const kfopt::StateDict before = target.opt.state_dict();
  const kfopt::StateDict model_before = target.model();

  int refused = 0, loaded_equal = 0;
  auto attempt = [&](const std::string& what) {
    INFO(what);
    bool ok = false;
    try {
      const kfopt::Checkpoint back = kfopt::load_checkpoint(damaged.path);
      back.restore("model", target.m.params);
      back.restore("optimizer", target.opt);
      ok = true;
    } catch (const kfopt::CheckpointError& e) {
      CHECK(std::string(e.what()).find(damaged.path) != std::string::npos);
    }
    if (ok) {  // the damage missed everything that is read: the state is the original's
      ++loaded_equal;
      CHECK(target.opt.state_dict() == ck.get("optimizer"));
      CHECK(target.model() == ck.get("model"));
      target.opt.load_state_dict(before);  // back to the comparison state
      target.load_model(model_before);
    } else {
      ++refused;
      CHECK(target.opt.state_dict() == before);
      CHECK(target.model() == model_before);
    }
  };
  // 300 single-byte flips at deterministic offsets spread over the file (every metadata
  // structure and every dataset), then 60 truncations.
  const std::size_t n = bytes.size();
  for (int i = 0; i < 300; ++i) {
    const std::size_t offset = i < 100 ? static_cast<std::size_t>(i) * 7 % n
                                       : (static_cast<std::size_t>(i) * 2654435761u) % n;
    std::vector<char> b = bytes;
    b[offset] = static_cast<char>(b[offset] ^ (1 << (i % 8)));
    write_bytes(damaged.path, b, n);
    attempt("bit " + std::to_string(i % 8) + " of byte " + std::to_string(offset) + " flipped");
  }
  int truncated_refused = 0;
  for (int i = 0; i < 60; ++i) {
    const std::size_t size = static_cast<std::size_t>(i) * n / 60;
    write_bytes(damaged.path, bytes, size);
    const int before_refused = refused;
    attempt("truncated to " + std::to_string(size) + " of " + std::to_string(n) + " bytes");
    truncated_refused += refused - before_refused;
  }
  CHECK(truncated_refused == 60);
  WARN("fuzz: " << refused << " refused, " << loaded_equal << " loaded unchanged (of 360)");
  // About a quarter of the file's bytes are never read (reserved fields, unused space in
  // object headers); the rest are data or checksummed metadata.
  CHECK(refused >= 150);
}

TEST_CASE("refused restores name the problem and leave the optimizer unchanged", "[io][restore]") {
  TrainedAdam target;
  const kfopt::StateDict before = target.opt.state_dict();
  auto refused = [&](const kfopt::StateDict& d, const std::string& expected_message,
                     kfopt::LoadOptions options = {}) {
    const std::string msg = error_of([&] { target.opt.load_state_dict(d, options); });
    INFO("message: " << msg);
    CHECK(msg.find("kfopt::Adam::load_state_dict") != std::string::npos);
    CHECK(msg.find(expected_message) != std::string::npos);
    CHECK(target.opt.state_dict() == before);
  };
  TrainedAdam other;
  other.step(4);
  const kfopt::StateDict good = other.opt.state_dict();

  SECTION("another model shape") {
    ParamFixture<kfopt::Adam, double, kfopt::AdamOptions> wide({}, 3, 5);
    wide.step(0);
    refused(wide.opt.state_dict(), "entry 'fc.weight/first_moment' is 3x5 float64 but must be 3x4 float64");
  }
  SECTION("a NaN entry") {
    kfopt::StateDict d = good;
    kfopt::StateEntry e = d.entry("fc.bias/first_moment");
    e.data<double>()[2] = std::numeric_limits<double>::quiet_NaN();
    d.insert("fc.bias/first_moment", e);
    refused(d, "entry 'fc.bias/first_moment' (3x1 float64) holds NaN or Inf");
  }
  SECTION("a negative second moment") {
    kfopt::StateDict d = good;
    kfopt::StateEntry e = d.entry("fc.weight/second_moment");
    e.data<double>()[0] = -1e-30;
    d.insert("fc.weight/second_moment", e);
    refused(d, "holds a negative value");
  }
  SECTION("a missing and an unexpected entry") {
    kfopt::StateDict d("kfopt::Adam", kfopt::ScalarType::Float64);
    for (const auto& kv : good.entries()) {
      if (kv.first != "steps") d.insert(kv.first, kv.second);
    }
    for (const auto& kv : good.hyperparameters()) d.set_hyperparameter(kv.first, kv.second.value, kv.second.kind);
    refused(d, "entry 'steps' (scalar int64) is missing");
    d.insert("steps", good.entry("steps"));
    d.set_scalar<double>("extra", 1.0);
    refused(d, "unexpected entry 'extra'");
  }
  SECTION("a negative step counter") {
    kfopt::StateDict d = good;
    d.set_scalar<std::int64_t>("steps", -3);
    refused(d, "entry 'steps' (scalar int64) holds -3, outside [0, ");
  }
  SECTION("another optimizer type") {
    ParamFixture<kfopt::Sgd, double, kfopt::SgdOptions> sgd({});
    sgd.step(0);
    refused(sgd.opt.state_dict(), "the state dict is of type 'kfopt::Sgd' but this is 'kfopt::Adam'");
  }
  SECTION("another scalar type") {
    ParamFixture<kfopt::Adam, float, kfopt::AdamOptions> single({});
    single.step(0);
    refused(single.opt.state_dict(), "holds float32 state but this optimizer is float64");
  }
  SECTION("a structural hyperparameter that differs") {
    kfopt::AdamOptions o;
    o.amsgrad = true;
    refused(TrainedAdam(o).opt.state_dict(), "hyperparameter 'amsgrad' is 1 in the state dict but 0 in this optimizer (structural");
    kfopt::LoadOptions lenient;
    lenient.allow_changed_hyperparameters = true;
    refused(TrainedAdam(o).opt.state_dict(), "hyperparameter 'amsgrad'", lenient);
  }
  SECTION("continuous hyperparameters: refused by default, kept with allow_changed_hyperparameters") {
    kfopt::AdamOptions o;
    o.beta1 = 0.8;
    o.learning_rate = 0.004;
    const kfopt::StateDict d = TrainedAdam(o).opt.state_dict();
    refused(d, "hyperparameter 'beta1' is 0.80000000000000004 in the state dict but 0.90000000000000002");
    kfopt::LoadOptions lenient;
    lenient.allow_changed_hyperparameters = true;
    target.opt.load_state_dict(d, lenient);
    CHECK(target.opt.options().beta1 == 0.9);             // kept: the constructed value
    CHECK(target.opt.options().learning_rate == 0.004);  // restored: the schedule's position
    CHECK(target.opt.state().counters.steps == 4);
  }
  SECTION("the learning rate is restored from the dict") {
    kfopt::AdamOptions o;
    o.learning_rate = 0.02;
    target.opt.load_state_dict(TrainedAdam(o).opt.state_dict());
    CHECK(target.opt.options().learning_rate == 0.02);
    kfopt::StateDict d = good;
    d.set_hyperparameter("learning_rate", -1.0, kfopt::HyperparameterKind::Restored);
    CHECK_THROWS_AS(target.opt.load_state_dict(d), kfopt::HyperparameterError);
    CHECK(target.opt.options().learning_rate == 0.02);
  }
}

TEST_CASE("refused restores of covariances and factors", "[io][restore]") {
  SECTION("an indefinite EKF covariance, and a factor that is not a Cholesky factor") {
    for (kfopt::KalmanForm form : {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Information}) {
      kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
      hp.form = form;
      LogisticFixture<Ekf, double> target(hp);
      for (int t = 0; t < 3; ++t) target.step(t);
      const kfopt::StateDict before = target.opt.state_dict();
      kfopt::StateDict d = before;
      Mat<double> P = d.array<double>("covariance");
      if (form == kfopt::KalmanForm::Covariance) {
        P(1, 1) = -P(1, 1);
        d.set_array("covariance", P);
        const std::string msg = error_of([&] { target.opt.load_state_dict(d); });
        CHECK(msg.find("kfopt::ExtendedKalmanFilter::load_state_dict: entry 'covariance' (5x5 float64) is not positive semi-definite") != std::string::npos);
        P(1, 1) = -P(1, 1);
        P(0, 1) += 0.5;
        d.set_array("covariance", P);
        CHECK(error_of([&] { target.opt.load_state_dict(d); }).find("is not symmetric") != std::string::npos);
      } else {
        P(2, 2) = 0.0;
        d.set_array("covariance", P);
        CHECK(error_of([&] { target.opt.load_state_dict(d); }).find("its diagonal must be > 0") != std::string::npos);
        P = before.array<double>("covariance");
        P(0, 3) = 1.0;
        d.set_array("covariance", P);
        CHECK(error_of([&] { target.opt.load_state_dict(d); }).find("strict upper triangle") != std::string::npos);
      }
      CHECK(target.opt.state_dict() == before);
      // A filter of the other form refuses the dict (structural hyperparameter).
      kfopt::ExtendedKalmanFilterHyperparameters<double> other_hp;
      other_hp.form = form == kfopt::KalmanForm::Covariance ? kfopt::KalmanForm::Information
                                                            : kfopt::KalmanForm::Covariance;
      LogisticFixture<Ekf, double> other(other_hp);
      CHECK(error_of([&] { other.opt.load_state_dict(before); }).find("hyperparameter 'form'") != std::string::npos);
    }
  }
  SECTION("an indefinite Kronecker factor") {
    KroneckerFilterFixture<float> target{kfopt::KroneckerFilterOptions{}};
    for (int t = 0; t < 3; ++t) target.step(t);
    const kfopt::StateDict before = target.opt.state_dict();
    kfopt::StateDict d = before;
    Mat<float> A = d.array<float>("fc/input_factor");
    A(0, 0) = -1.0f;
    d.set_array("fc/input_factor", A);
    CHECK(error_of([&] { target.opt.load_state_dict(d); }).find("entry 'fc/input_factor' (5x5 float32) is not positive semi-definite") != std::string::npos);
    d = before;
    d.set_array("fc/recorded_inputs", Mat<float>::Zero(2, 4));  // 2 inputs, 0 gradients
    CHECK(error_of([&] { target.opt.load_state_dict(d); }).find("layer 'fc' has 2 recorded inputs but 0 recorded gradients") != std::string::npos);
    CHECK(target.opt.state_dict() == before);
  }
}

TEST_CASE("refused restores of a K-FAC checkpoint leave the optimizer unchanged", "[io][restore]") {
  using Fixture = kfopt_kfac_test::KfacFixture<double>;
  kfopt_kfac_test::KfacProblem problem;
  problem.options.damping = 0.01;
  Fixture target(problem);
  for (int t = 0; t < 3; ++t) target.step(t);
  const kfopt::StateDict before = target.opt.state_dict();
  const kfopt::StateDict model_before = target.model();
  Fixture source(problem);
  for (int t = 0; t < 4; ++t) source.step(t);
  source.prepare(4);
  TempPath file("kfac_refused");
  {
    kfopt::Checkpoint ck;
    ck.set("optimizer", source.opt.state_dict());
    kfopt::save_checkpoint(file.path, ck);
  }
  const kfopt::StateDict good = kfopt::load_checkpoint(file.path).get("optimizer");
  CHECK(good == source.opt.state_dict());
  // A dict changed as named, saved to a file, restored through the checkpoint.
  auto refused = [&](const kfopt::StateDict& d, const std::string& expected) {
    {
      kfopt::Checkpoint ck;
      ck.set("optimizer", d);
      kfopt::save_checkpoint(file.path, ck);
    }
    const std::string msg =
        error_of([&] { kfopt::load_checkpoint(file.path).restore("optimizer", target.opt); });
    INFO("message: " << msg);
    CHECK(msg.find("kfopt::Kfac::load_state_dict") != std::string::npos);
    CHECK(msg.find(expected) != std::string::npos);
    CHECK(target.opt.state_dict() == before);
    CHECK(target.model() == model_before);
  };
  SECTION("a layer of another shape") {
    kfopt::Kfac<double> wide;
    Mat<double> W = Mat<double>::Zero(3, 5), dW = W;
    Vec<double> b = Vec<double>::Zero(3), db = b;
    wide.add_dense_layer("fc", W, dW, b, db);
    kfopt::StateDict d = good;
    d.insert("fc/A", wide.state_dict().entry("fc/A"));
    refused(d, "entry 'fc/A' is 6x6 float64 but must be 5x5 float64");
  }
  SECTION("a NaN entry") {
    kfopt::StateDict d = good;
    kfopt::StateEntry e = d.entry("rnn_opt1/A1");
    e.data<double>()[3] = std::numeric_limits<double>::quiet_NaN();
    d.insert("rnn_opt1/A1", e);
    refused(d, "entry 'rnn_opt1/A1' (4x4 float64) holds NaN or Inf");
  }
  SECTION("an indefinite factor") {
    kfopt::StateDict d = good;
    Mat<double> A = d.array<double>("fc/A");
    A(2, 2) = -A(2, 2);  // an eigenvalue below zero
    d.set_array("fc/A", A);
    refused(d, "entry 'fc/A' (5x5 float64) is not positive semi-definite");
  }
  SECTION("another optimizer, another scalar type") {
    refused(TrainedAdam().opt.state_dict(), "the state dict is of type 'kfopt::Adam' but this is 'kfopt::Kfac'");
    kfopt_kfac_test::KfacFixture<float> single(problem);
    single.step(0);
    refused(single.opt.state_dict(), "holds float32 state but this optimizer is float64");
  }
}

TEST_CASE("foreign, newer and damaged files are refused naming the file", "[io][file]") {
  TempPath file("foreign");
  const TrainedAdam adam;
  kfopt::Checkpoint ck;
  ck.set("optimizer", adam.opt.state_dict());
  kfopt::save_checkpoint(file.path, ck);

  SECTION("a checkpoint of another optimizer, through Checkpoint::restore") {
    ParamFixture<kfopt::RmsProp, double, kfopt::RmsPropOptions> rms({});
    const kfopt::StateDict before = rms.opt.state_dict();
    const std::string msg = error_of([&] { kfopt::load_checkpoint(file.path).restore("optimizer", rms.opt); });
    CHECK(msg.find("file '" + file.path + "', state dict 'optimizer': kfopt::RmsProp::load_state_dict: the state dict is of type 'kfopt::Adam'") != std::string::npos);
    CHECK(rms.opt.state_dict() == before);
    CHECK(error_of([&] { kfopt::load_checkpoint(file.path).get("model"); }).find("has no state dict 'model'") != std::string::npos);
  }
  SECTION("a newer format version") {
    {
      const hid_t f = H5Fopen(file.path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
      REQUIRE(f >= 0);
      const hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
      const hid_t a = H5Aopen(g, "kfopt_format_version", H5P_DEFAULT);
      const std::int64_t v = 2;
      REQUIRE(H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0);
      H5Aclose(a);
      H5Gclose(g);
      H5Fclose(f);
    }
    const std::string msg = error_of([&] { kfopt::load_checkpoint(file.path); });
    CHECK(msg.find("kfopt::load_checkpoint: file '" + file.path + "', state dict 'optimizer': checkpoint format version 2") != std::string::npos);
  }
  SECTION("a file that is not HDF5, an HDF5 file that is not a checkpoint, a missing file") {
    write_bytes(file.path, std::vector<char>(4096, 'x'), 4096);
    CHECK(error_of([&] { kfopt::load_checkpoint(file.path); }).find("not an HDF5 file") != std::string::npos);
    const hid_t f = H5Fcreate(file.path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    CHECK(error_of([&] { kfopt::load_checkpoint(file.path); }).find("not a kfopt checkpoint") != std::string::npos);
    CHECK(error_of([&] { kfopt::load_checkpoint("no_such_file.h5"); }).find("file 'no_such_file.h5'") != std::string::npos);
  }
}

TEST_CASE("a checkpoint file's bytes held in memory load as the file does", "[io][file][image]") {
  TempPath file("image_source");
  TempPath damaged("image_damaged");
  const TrainedAdam source;
  kfopt::Checkpoint ck;
  ck.set("optimizer", source.opt.state_dict());
  ck.set("model", source.model());
  ck.set("every_kind", every_kind_of_entry());
  kfopt::save_checkpoint(file.path, ck);
  const std::vector<char> bytes = read_bytes(file.path);

  const kfopt::Checkpoint from_image = kfopt::load_checkpoint_image(bytes.data(), bytes.size(), "run.h5");
  REQUIRE(from_image.path() == "run.h5");
  REQUIRE(from_image.dicts().size() == 3);
  for (const auto& kv : ck.dicts()) CHECK(from_image.get(kv.first) == kv.second);
  // The image is not modified (HDF5 works on its own copy).
  REQUIRE(bytes == read_bytes(file.path));

  // Damaged images: the same decision as reading the damaged file from disk, and errors
  // that name the image's given name.
  const std::size_t n = bytes.size();
  int refused = 0;
  for (int i = 0; i < 80; ++i) {
    std::vector<char> b = bytes;
    const std::size_t offset = (static_cast<std::size_t>(i) * 2654435761u) % n;
    b[offset] = static_cast<char>(b[offset] ^ (1 << (i % 8)));
    write_bytes(damaged.path, b, n);
    const std::string from_disk = error_of([&] { (void)kfopt::load_checkpoint(damaged.path); });
    const std::string from_memory =
        error_of([&] { (void)kfopt::load_checkpoint_image(b.data(), b.size(), "damaged.h5"); });
    INFO("byte " << offset);
    CHECK(from_disk.empty() == from_memory.empty());
    if (!from_memory.empty()) {
      ++refused;
      CHECK(from_memory.find("kfopt::load_checkpoint_image: file 'damaged.h5'") != std::string::npos);
    }
  }
  CHECK(refused >= 30);
  for (const std::size_t size : {std::size_t{0}, n / 3, n - 1}) {
    const std::string e = error_of([&] { (void)kfopt::load_checkpoint_image(bytes.data(), size, "cut.h5"); });
    CHECK(e.find("cut.h5") != std::string::npos);
  }
  const std::string text = "not an HDF5 file";
  CHECK_FALSE(error_of([&] { (void)kfopt::load_checkpoint_image(text.data(), text.size(), "t"); }).empty());
}
