// The bad-input suite: every public optimizer of the first-order, element-wise filter,
// Kronecker filter and Kalman families, in float and double, is driven through one table of
// bad inputs — NaN, ±Inf, ±max, huge (1e300 double / 1e30 float) and denormal values in
// gradients, statistics, observations and the caller's parameter storage (first entry, last
// entry, every entry); invalid and infinite hyperparameters and schedules; wrong shapes;
// zero-size registrations and batches; corrupted restores. For each trial it asserts:
//   - the outcome is a clear error (an exception whose message names a kfopt operation) or a
//     refusing Status, or an accepted step whose parameters and state are all finite;
//   - on an error or a refusal, parameters and state are bit-for-bit unchanged;
//   - afterwards, a step on good input succeeds and stays finite (normal training).
// It prints a summary (trials, refused, errors, accepted, silent non-finite) per optimizer.
//
// K-FAC runs as two fixtures per configuration, one per operation that can refuse:
// record_statistics (bad a or g) and step (bad gradients or storage, on good statistics).
//
// Adding an optimizer is one Fixture subclass — what to step,
// where inputs can be injected, how to snapshot its state, which restores and
// hyperparameters to corrupt — and one line in `registry()`.
#include <catch2/catch.hpp>
#include <kfopt/filter/observation_models.hpp>
#include <kfopt/models/tanh_rnn_cell.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/bayes_filter/filter_fixed_point.hpp>
#include <kfopt/optim/bayes_filter/filter_rmsprop.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/first_order/rmsprop.hpp>
#include <kfopt/optim/first_order/sgd.hpp>
#include <kfopt/optim/kalman/extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/joint_extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/natural_gradient_rtrl.hpp>
#include <kfopt/optim/kalman/online_natural_gradient.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <cstring>
#include <functional>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "reliability/bad_input_table.hpp"

using namespace kfopt_reliability;

namespace {

// ---------------------------------------------------------------- first-order optimizers

template <typename Scalar, typename Opt>
class ParameterSetFixture : public Fixture {
 public:
  using Make = std::function<Opt(kfopt::ParameterSet<Scalar>&)>;
  ParameterSetFixture(Make make) : opt_(make(params())) {}

  kfopt::ParameterSet<Scalar>& params() {
    if (params_.empty()) {
      params_.add("fc.weight", W_, dW_);
      params_.add("fc.bias", b_, db_);
    }
    return params_;
  }
  void good_inputs() override {
    dW_ = Mat<Scalar>::Constant(3, 4, Scalar(0.05));
    dW_(1, 2) = Scalar(-0.2);
    db_ = Vec<Scalar>::Constant(3, Scalar(0.1));
  }
  kfopt::Status step() override { return opt_.step(); }
  std::vector<Site> sites() override {
    return {site("gradient fc.weight", dW_), site("gradient fc.bias", db_),
            site("storage fc.weight", W_), site("storage fc.bias", b_)};
  }
  std::string snapshot() override {
    Bytes s;
    s.add(W_).add(b_);
    add_state(s, opt_.state());
    return s.str();
  }
  bool finite() override {
    Bytes s;
    s.add(W_).add(b_);
    add_state(s, opt_.state());
    return s.finite();
  }
  std::vector<Misuse> misuses() override {
    std::vector<Misuse> out;
    out.push_back({"gradient resized", [this] {
                     Mat<Scalar> saved = dW_;
                     dW_.resize(2, 2);
                     try {
                       opt_.step();
                     } catch (...) {
                       dW_ = saved;
                       throw;
                     }
                     dW_ = saved;
                   }});
    out.push_back({"bias resized", [this] {
                     Vec<Scalar> saved = b_;
                     b_.resize(5);
                     try {
                       opt_.step();
                     } catch (...) {
                       b_ = saved;
                       throw;
                     }
                     b_ = saved;
                   }});
    for (double lr : {inf(), -inf(), nan(), -1.0}) {
      out.push_back({"set_learning_rate(" + std::to_string(lr) + ")",
                     [this, lr] { opt_.set_learning_rate(lr); }});
    }
    for (auto& r : corrupt_restores(opt_.state())) {
      auto state = r.second;
      out.push_back({"set_state: " + r.first, [this, state] { opt_.set_state(state); }});
    }
    out.push_back({"zero-size registration", [] {
                     Mat<Scalar> e(0, 3), de(0, 3);
                     kfopt::ParameterSet<Scalar> p;
                     p.add("empty", e, de);
                   }});
    return out;
  }

 private:
  Mat<Scalar> W_ = Mat<Scalar>::Constant(3, 4, Scalar(0.3));
  Mat<Scalar> dW_ = Mat<Scalar>::Zero(3, 4);
  Vec<Scalar> b_ = Vec<Scalar>::Constant(3, Scalar(-0.1));
  Vec<Scalar> db_ = Vec<Scalar>::Zero(3);
  kfopt::ParameterSet<Scalar> params_;
  Opt opt_;
};

template <typename Scalar, typename Opt>
std::unique_ptr<Fixture> parameter_set_fixture(typename ParameterSetFixture<Scalar, Opt>::Make make) {
  return std::unique_ptr<Fixture>(new ParameterSetFixture<Scalar, Opt>(std::move(make)));
}

// ---------------------------------------------------------------- Kronecker filter

template <typename Scalar>
class KroneckerFilterFixture : public Fixture {
 public:
  explicit KroneckerFilterFixture(kfopt::KroneckerFilterOptions o) : kf_(o) {
    id_ = kf_.add_dense_layer("fc", W_, dW_, b_, db_);
  }
  void good_inputs() override {
    dW_ = Mat<Scalar>::Constant(2, 3, Scalar(0.02));
    db_ = Vec<Scalar>::Constant(2, Scalar(-0.01));
    a_ = Mat<Scalar>::Constant(4, 3, Scalar(0.5));
    a_(1, 1) = Scalar(-0.25);
    g_ = Mat<Scalar>::Constant(4, 2, Scalar(0.1));
    g_(2, 0) = Scalar(0.3);
  }
  kfopt::Status step() override {
    const kfopt::Status s = kf_.record_statistics(id_, a_, g_);
    if (s != kfopt::Status::Success) return s;
    return kf_.step();
  }
  std::vector<Site> sites() override {
    return {site("gradient fc.weight", dW_), site("gradient fc.bias", db_),
            site("storage fc.weight", W_), site("storage fc.bias", b_),
            site("statistics a", a_), site("statistics g", g_)};
  }
  std::string snapshot() override {
    Bytes s;
    s.add(W_).add(b_).add(kf_.covariance(id_).input_factor()).add(kf_.covariance(id_).output_factor());
    s.add(kf_.state().counters.steps);
    return s.str();
  }
  bool finite() override {
    Bytes s;
    s.add(W_).add(b_).add(kf_.covariance(id_).input_factor()).add(kf_.covariance(id_).output_factor());
    return s.finite();
  }
  std::vector<Misuse> misuses() override {
    std::vector<Misuse> out;
    const Mat<Scalar> X = kf_.covariance(id_).input_factor();
    const Mat<Scalar> D = kf_.covariance(id_).output_factor();
    auto restore = [this](std::string what, Mat<Scalar> x, Mat<Scalar> d) {
      return Misuse{"set_covariance: " + what, [this, x, d] { kf_.set_covariance(id_, x, d); }};
    };
    Mat<Scalar> bad = X;
    bad(0, 0) = nan_of<Scalar>();
    out.push_back(restore("NaN input factor", bad, D));
    bad = X;
    bad(1, 0) = inf_of<Scalar>();
    bad(0, 1) = inf_of<Scalar>();
    out.push_back(restore("Inf input factor", bad, D));
    out.push_back(restore("zero (singular) input factor", Mat<Scalar>::Zero(X.rows(), X.cols()), D));
    out.push_back(restore("indefinite output factor", X, -D));
    bad = X;
    bad(2, 0) += Scalar(1);
    out.push_back(restore("non-symmetric input factor", bad, D));
    out.push_back(restore("wrong shape", Mat<Scalar>::Identity(2, 2), D));
    out.push_back({"zero-size batch", [this] { kf_.record_statistics(id_, Mat<Scalar>(0, 3), Mat<Scalar>(0, 2)); }});
    out.push_back({"batch of the wrong width", [this] { kf_.record_statistics(id_, Mat<Scalar>::Ones(2, 4), Mat<Scalar>::Ones(2, 2)); }});
    out.push_back({"unknown layer id", [this] { kf_.record_statistics(7, a_, g_); }});
    for (double lr : {inf(), nan(), -1.0}) {
      out.push_back({"set_learning_rate(" + std::to_string(lr) + ")", [this, lr] { kf_.set_learning_rate(lr); }});
    }
    out.push_back({"gradient resized", [this] {
                     Mat<Scalar> saved = dW_;
                     dW_.resize(1, 1);
                     try {
                       step();
                     } catch (...) {
                       dW_ = saved;
                       throw;
                     }
                     dW_ = saved;
                   }});
    return out;
  }

 private:
  Mat<Scalar> W_ = Mat<Scalar>::Constant(2, 3, Scalar(0.1));
  Mat<Scalar> dW_ = Mat<Scalar>::Zero(2, 3);
  Vec<Scalar> b_ = Vec<Scalar>::Zero(2);
  Vec<Scalar> db_ = Vec<Scalar>::Zero(2);
  Mat<Scalar> a_, g_;
  kfopt::KroneckerFilter<Scalar> kf_;
  std::size_t id_ = 0;
};

// ---------------------------------------------------------------- Kalman optimizers

template <typename Scalar, typename Opt>
class KalmanFixture : public Fixture {
 public:
  static constexpr Eigen::Index d = 4;
  KalmanFixture(Opt opt, bool recoverable) : opt_(std::move(opt)), recoverable_(recoverable) {}
  bool recoverable() const override { return recoverable_; }
  void good_inputs() override {
    J_ = Mat<Scalar>::Constant(2, d, Scalar(0.2));
    J_(1, 3) = Scalar(-0.4);
    z_ = J_ * theta_;
    y_ = Vec<Scalar>::Constant(2, Scalar(0.3));
  }
  kfopt::Status step() override { return opt_.step(theta_, z_, J_, y_); }
  std::vector<Site> sites() override {
    return {site("storage theta", theta_), site("observation output z", z_),
            site("observation Jacobian", J_), site("observation target y", y_)};
  }
  std::string snapshot() override {
    Bytes s;
    s.add(theta_);
    add_kalman_state(s, opt_.state());
    return s.str();
  }
  bool finite() override {
    Bytes s;
    s.add(theta_);
    add_kalman_state(s, opt_.state());
    return s.finite();
  }
  std::vector<Misuse> misuses() override {
    std::vector<Misuse> out;
    for (auto& r : corrupt_kalman_restores(opt_.state())) {
      auto state = r.second;
      out.push_back({"set_state: " + r.first, [this, state] { opt_.set_state(state); }});
    }
    out.push_back({"theta of the wrong size", [this] {
                     Vec<Scalar> t(d + 1);
                     t.setZero();
                     opt_.step(t, z_, J_, y_);
                   }});
    out.push_back({"Jacobian of the wrong shape", [this] {
                     opt_.step(theta_, z_, Mat<Scalar>::Zero(2, d - 1), y_);
                   }});
    return out;
  }
  Opt& optimizer() { return opt_; }

 private:
  Vec<Scalar> theta_ = Vec<Scalar>::Constant(d, Scalar(0.1));
  Mat<Scalar> J_;
  Vec<Scalar> z_, y_;
  Opt opt_;
  bool recoverable_;
};

template <typename Scalar>
using Gauss = kfopt::GaussianObservation<Scalar>;

template <typename Scalar>
std::unique_ptr<Fixture> ekf_fixture(kfopt::KalmanForm form, bool schedule) {
  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> hp;
  hp.form = form;
  hp.fading = Scalar(0.01);
  if (schedule) {
    // A schedule that turns bad after 3 steps: the step must throw before changing anything.
    hp.fading_schedule = [](std::int64_t t) {
      return t <= 3 ? Scalar(0.01) : t == 4 ? std::numeric_limits<Scalar>::quiet_NaN() : Scalar(1);
    };
  }
  using Opt = kfopt::ExtendedKalmanFilter<Gauss<Scalar>>;
  return std::unique_ptr<Fixture>(new KalmanFixture<Scalar, Opt>(
      Opt(Gauss<Scalar>(2, Scalar(0.5)), Mat<Scalar>::Identity(4, 4), hp), !schedule));
}

template <typename Scalar>
std::unique_ptr<Fixture> ong_fixture(kfopt::KalmanForm form, bool schedule) {
  kfopt::OnlineNaturalGradientHyperparameters<Scalar> hp;
  hp.form = form;
  if (schedule) {
    hp.step_size_schedule = [](std::int64_t t) {
      return t <= 3 ? Scalar(0.05) : t == 4 ? std::numeric_limits<Scalar>::quiet_NaN() : Scalar(1);
    };
  }
  using Opt = kfopt::OnlineNaturalGradient<Gauss<Scalar>>;
  return std::unique_ptr<Fixture>(new KalmanFixture<Scalar, Opt>(
      Opt(Gauss<Scalar>(2, Scalar(0.5)), Mat<Scalar>::Identity(4, 4), hp), !schedule));
}

// ---------------------------------------------------------------- recurrent filters

template <typename Scalar, typename Opt>
class RecurrentFixture : public Fixture {
 public:
  RecurrentFixture(Opt opt, Eigen::Index d) : opt_(std::move(opt)), theta_(Vec<Scalar>::Constant(d, Scalar(0.1))) {}
  void good_inputs() override {
    u_ = Vec<Scalar>::Constant(1, Scalar(0.5));
    y_ = Vec<Scalar>::Constant(1, Scalar(0.2));
  }
  kfopt::Status step() override { return opt_.step(theta_, u_, y_); }
  std::vector<Site> sites() override {
    return {site("storage theta", theta_), site("input u", u_), site("observation target y", y_)};
  }
  std::string snapshot() override {
    Bytes s;
    s.add(theta_);
    add_recurrent_state(s, opt_.state());
    return s.str();
  }
  bool finite() override {
    Bytes s;
    s.add(theta_);
    add_recurrent_state(s, opt_.state());
    return s.finite();
  }
  std::vector<Misuse> misuses() override {
    std::vector<Misuse> out;
    for (auto& r : corrupt_recurrent_restores(opt_.state())) {
      auto state = r.second;
      out.push_back({"set_state: " + r.first, [this, state] { opt_.set_state(state); }});
    }
    out.push_back({"input of the wrong size", [this] { opt_.step(theta_, Vec<Scalar>::Zero(3), y_); }});
    return out;
  }

 private:
  Opt opt_;
  Vec<Scalar> theta_, u_, y_;
};

template <typename Scalar>
std::unique_ptr<Fixture> joint_fixture(kfopt::KalmanForm form) {
  using Cell = kfopt::TanhRnnCell<Scalar>;
  using Opt = kfopt::JointExtendedKalmanFilter<Cell, Gauss<Scalar>>;
  const Cell cell(2, 1, 1);
  const Eigen::Index d = cell.param_dim();
  kfopt::ExtendedKalmanFilterHyperparameters<Scalar> hp;
  hp.form = form;
  const Mat<Scalar> P = Opt::degenerate_covariance(Mat<Scalar>::Zero(2, d), Mat<Scalar>::Identity(d, d));
  return std::unique_ptr<Fixture>(new RecurrentFixture<Scalar, Opt>(
      Opt(cell, Gauss<Scalar>(1, Scalar(0.1)), Vec<Scalar>::Zero(2), P, hp), d));
}

template <typename Scalar>
std::unique_ptr<Fixture> ngrtrl_fixture(kfopt::KalmanForm form) {
  using Cell = kfopt::TanhRnnCell<Scalar>;
  using Opt = kfopt::NaturalGradientRtrl<Cell, Gauss<Scalar>>;
  const Cell cell(2, 1, 1);
  const Eigen::Index d = cell.param_dim();
  typename Opt::Hyperparameters hp;
  hp.natural_gradient.form = form;
  return std::unique_ptr<Fixture>(new RecurrentFixture<Scalar, Opt>(
      Opt(cell, Gauss<Scalar>(1, Scalar(0.1)), Vec<Scalar>::Zero(2), Mat<Scalar>::Identity(d, d), hp), d));
}

// ---------------------------------------------------------------- K-FAC

// What a K-FAC fixture exercises: the statistics update or the step.
enum class KfacPart { Statistics, Step };

// One dense layer (W 2×3, b 2) or one recurrent layer (mixed lengths), K-FAC with momentum,
// weight decay and KL clipping. Statistics: step() records a batch (sites a, g). Step:
// good_inputs() records good statistics, step() takes the step (sites: gradients, storage).
// The inverse period is long, so a trial never refreshes the spectra. A snapshot is the
// weights and the whole state dict (refusal counters aside).
template <typename Scalar>
class KfacFixture : public Fixture {
 public:
  KfacFixture(KfacPart part, kfopt::KfacOptions o, bool recurrent, bool bias,
              kfopt::DenseLayerOptions dense = {}, kfopt::RecurrentLayerOptions rec = {})
      : part_(part), recurrent_(recurrent), kfac_(tuned(o)) {
    if (recurrent_) {
      id_ = bias ? kfac_.add_recurrent_layer("rnn", W_, dW_, b_, db_, rec)
                 : kfac_.add_recurrent_layer("rnn", W_, dW_, rec);
    } else {
      id_ = bias ? kfac_.add_dense_layer("fc", W_, dW_, b_, db_, dense)
                 : kfac_.add_dense_layer("fc", W_, dW_, dense);
    }
    bias_ = bias;
  }
  void good_inputs() override {
    dW_ = Mat<Scalar>::Constant(2, 3, Scalar(0.02));
    dW_(1, 2) = Scalar(-0.05);
    db_ = Vec<Scalar>::Constant(2, Scalar(-0.01));
    a_ = Mat<Scalar>::Constant(6, 3, Scalar(0.5));
    a_(1, 1) = Scalar(-0.25);
    a_(4, 0) = Scalar(0.75);
    g_ = Mat<Scalar>::Constant(6, 2, Scalar(0.1));
    g_(2, 0) = Scalar(0.3);
    g_(5, 1) = Scalar(-0.2);
    if (part_ == KfacPart::Step) record();
  }
  kfopt::Status step() override { return part_ == KfacPart::Statistics ? record() : kfac_.step(); }
  std::vector<Site> sites() override {
    if (part_ == KfacPart::Statistics) return {site("statistics a", a_), site("statistics g", g_)};
    std::vector<Site> out{site("gradient W", dW_), site("storage W", W_)};
    if (bias_) {
      out.push_back(site("gradient b", db_));
      out.push_back(site("storage b", b_));
    }
    return out;
  }
  std::string snapshot() override { return bytes().str(); }
  bool finite() override { return bytes().finite(); }
  std::vector<Misuse> misuses() override {
    std::vector<Misuse> out;
    for (double lr : {inf(), nan(), -1.0}) {
      out.push_back({"set_learning_rate(" + std::to_string(lr) + ")", [this, lr] { kfac_.set_learning_rate(lr); }});
    }
    for (double d : {inf(), nan(), 0.0, 1e9}) {
      out.push_back({"set_damping(" + std::to_string(d) + ")", [this, d] { kfac_.set_damping(d); }});
    }
    out.push_back({"statistics of the wrong width", [this] {
                     if (recurrent_) {
                       kfac_.record_sequence_statistics(id_, Mat<Scalar>::Ones(6, 4), g_, lengths());
                     } else {
                       kfac_.record_statistics(id_, Mat<Scalar>::Ones(6, 4), g_);
                     }
                   }});
    out.push_back({"zero-size statistics batch", [this] {
                     if (recurrent_) {
                       kfac_.record_sequence_statistics(id_, Mat<Scalar>(0, 3), Mat<Scalar>(0, 2), Eigen::VectorXi(0));
                     } else {
                       kfac_.record_statistics(id_, Mat<Scalar>(0, 3), Mat<Scalar>(0, 2));
                     }
                   }});
    out.push_back({"unknown layer id", [this] { kfac_.record_statistics(9, a_, g_); }});
    out.push_back({"gradient resized", [this] {
                     Mat<Scalar> saved = dW_;
                     dW_.resize(1, 1);
                     try {
                       kfac_.step();
                     } catch (...) {
                       dW_ = saved;
                       throw;
                     }
                     dW_ = saved;
                   }});
    if (recurrent_) {
      out.push_back({"every step masked", [this] {
                       kfac_.record_sequence_statistics(id_, a_, g_, Eigen::VectorXi::Zero(3));
                     }});
      out.push_back({"a length beyond the batch", [this] {
                       Eigen::VectorXi l = lengths();
                       l(1) = 5;
                       kfac_.record_sequence_statistics(id_, a_, g_, l);
                     }});
    }
    out.push_back({"zero-size layer", [] {
                     Mat<Scalar> W(0, 3), dW(0, 3);
                     kfopt::Kfac<Scalar> k;
                     k.add_dense_layer("empty", W, dW);
                   }});
    return out;
  }

 private:
  static kfopt::KfacOptions tuned(kfopt::KfacOptions o) {
    o.inverse_period = 1000;
    return o;
  }
  // Three sequences of two steps, time-major (row t·3 + i); lengths 2, 1, 2.
  static Eigen::VectorXi lengths() { return (Eigen::VectorXi(3) << 2, 1, 2).finished(); }
  kfopt::Status record() {
    if (recurrent_) return kfac_.record_sequence_statistics(id_, a_, g_, lengths());
    return kfac_.record_statistics(id_, a_, g_);
  }
  // The weights and every entry of the state dict (factors, spectra or snapshots, momentum,
  // counters, damping), refusal counters and the NaN-by-design reduction ratio excluded.
  Bytes bytes() {
    Bytes s;
    s.add(W_).add(b_);
    const kfopt::StateDict d = kfac_.state_dict();
    for (const auto& kv : d.entries()) {
      const std::string& name = kv.first;
      if (name.find("skipped") != std::string::npos || name.find("singular") != std::string::npos ||
          name.find("reduction_ratio") != std::string::npos) {
        continue;
      }
      const kfopt::StateEntry& e = kv.second;
      const Eigen::Index n = static_cast<Eigen::Index>(e.size());
      if (e.type == kfopt::ScalarType::Float32) {
        s.add(Eigen::Map<const Eigen::VectorXf>(e.data<float>(), n));
      } else if (e.type == kfopt::ScalarType::Float64) {
        s.add(Eigen::Map<const Eigen::VectorXd>(e.data<double>(), n));
      } else {
        for (Eigen::Index k = 0; k < n; ++k) s.add(e.data<std::int64_t>()[k]);
      }
    }
    return s;
  }

  KfacPart part_;
  bool recurrent_;
  bool bias_ = true;
  Mat<Scalar> W_ = Mat<Scalar>::Constant(2, 3, Scalar(0.1));
  Mat<Scalar> dW_ = Mat<Scalar>::Zero(2, 3);
  Vec<Scalar> b_ = Vec<Scalar>::Zero(2);
  Vec<Scalar> db_ = Vec<Scalar>::Zero(2);
  Mat<Scalar> a_, g_;
  kfopt::Kfac<Scalar> kfac_;
  std::size_t id_ = 0;
};

template <typename Scalar>
void add_kfac_entries(std::vector<Entry>& r) {
  kfopt::KfacOptions base;
  base.learning_rate = 0.1;
  base.weight_decay = 1e-3;
  base.kl_clip = 1e-2;
  kfopt::KfacOptions chol = base;
  chol.inverse_method = kfopt::InverseMethod::Cholesky;
  kfopt::KfacOptions exact = base;
  exact.damping_style = kfopt::DampingStyle::Exact;
  kfopt::DenseLayerOptions diagonal;
  diagonal.input_factor = kfopt::FactorStructure::Diagonal;
  diagonal.gradient_factor = kfopt::FactorStructure::Diagonal;
  kfopt::RecurrentLayerOptions independent, option1, option2;
  independent.approximation = kfopt::RecurrentApproximation::Independent;
  option1.approximation = kfopt::RecurrentApproximation::Option1;
  option2.approximation = kfopt::RecurrentApproximation::Option2;
  struct Config {
    std::string name;
    kfopt::KfacOptions o;
    bool recurrent, bias;
    kfopt::DenseLayerOptions dense;
    kfopt::RecurrentLayerOptions rec;
  };
  const std::vector<Config> configs = {
      {"Kfac(dense)", base, false, true, {}, {}},
      {"Kfac(dense, Cholesky)", chol, false, true, {}, {}},
      {"Kfac(dense, exact damping)", exact, false, true, {}, {}},
      {"Kfac(diagonal factors, no bias)", base, false, false, diagonal, {}},
      {"Kfac(recurrent, Independent)", base, true, true, {}, independent},
      {"Kfac(recurrent, Option 1)", base, true, true, {}, option1},
      {"Kfac(recurrent, Option 2, no bias)", base, true, false, {}, option2},
  };
  for (const Config& c : configs) {
    for (KfacPart part : {KfacPart::Statistics, KfacPart::Step}) {
      r.push_back({c.name + (part == KfacPart::Statistics ? " record_statistics" : " step"), [c, part] {
                     return std::unique_ptr<Fixture>(
                         new KfacFixture<Scalar>(part, c.o, c.recurrent, c.bias, c.dense, c.rec));
                   }});
    }
  }
}

// ---------------------------------------------------------------- hyperparameter table

template <typename Scalar>
std::vector<Misuse> bad_hyperparameters() {
  std::vector<Misuse> out;
  auto add = [&](std::string name, std::function<void()> f) { out.push_back({std::move(name), std::move(f)}); };
  for (double v : {inf(), -inf(), nan(), 0.0, -1.0}) {
    const std::string s = "(" + std::to_string(v) + ")";
    add("SgdOptions.learning_rate" + s, [v] { kfopt::SgdOptions o; o.learning_rate = v; o.validate(); });
    add("AdamOptions.learning_rate" + s, [v] { kfopt::AdamOptions o; o.learning_rate = v; o.validate(); });
    add("AdamOptions.epsilon" + s, [v] { kfopt::AdamOptions o; o.epsilon = v; o.validate(); });
    add("RmsPropOptions.learning_rate" + s, [v] { kfopt::RmsPropOptions o; o.learning_rate = v; o.validate(); });
    add("RmsPropOptions.epsilon" + s, [v] { kfopt::RmsPropOptions o; o.epsilon = v; o.validate(); });
    add("FilterRmsPropOptions.prior_variance" + s, [v] { kfopt::FilterRmsPropOptions o; o.prior_variance = v; o.validate(); });
    add("FilterAdamOptions.prior_variance" + s, [v] { kfopt::FilterAdamOptions o; o.prior_variance = v; o.validate(); });
    add("FilterFixedPointOptions.learning_rate" + s, [v] { kfopt::FilterFixedPointOptions o; o.learning_rate = v; o.validate(); });
    add("KroneckerFilterOptions.prior_variance" + s, [v] { kfopt::KroneckerFilterOptions o; o.prior_variance = v; o.validate(); });
    add("OnlineNaturalGradient.step_size" + s, [v] {
      kfopt::OnlineNaturalGradientHyperparameters<Scalar> h;
      h.step_size = static_cast<Scalar>(v);
      h.validate();
    });
  }
  for (double v : {inf(), nan(), -1.0}) {
    const std::string s = "(" + std::to_string(v) + ")";
    add("SgdOptions.weight_decay" + s, [v] { kfopt::SgdOptions o; o.weight_decay = v; o.validate(); });
    add("AdamOptions.weight_decay" + s, [v] { kfopt::AdamOptions o; o.weight_decay = v; o.validate(); });
    add("RmsPropOptions.weight_decay" + s, [v] { kfopt::RmsPropOptions o; o.weight_decay = v; o.validate(); });
    add("FilterRmsPropOptions.learning_rate" + s, [v] { kfopt::FilterRmsPropOptions o; o.learning_rate = v; o.validate(); });
    add("FilterAdamOptions.learning_rate" + s, [v] { kfopt::FilterAdamOptions o; o.learning_rate = v; o.validate(); });
    add("FilterAdamOptions.weight_noise" + s, [v] { kfopt::FilterAdamOptions o; o.weight_noise = v; o.validate(); });
    add("KroneckerFilterOptions.learning_rate" + s, [v] { kfopt::KroneckerFilterOptions o; o.learning_rate = v; o.validate(); });
    add("KfacOptions.weight_decay" + s, [v] { kfopt::KfacOptions o; o.weight_decay = v; o.validate(); });
    add("KfacOptions.kl_clip" + s, [v] { kfopt::KfacOptions o; o.kl_clip = v; o.validate(); });
    add("KfacOptions.max_damping" + s, [v] { kfopt::KfacOptions o; o.max_damping = v; o.validate(); });
  }
  for (double v : {inf(), -inf(), nan(), 0.0, -1.0}) {
    const std::string s = "(" + std::to_string(v) + ")";
    add("KfacOptions.learning_rate" + s, [v] { kfopt::KfacOptions o; o.learning_rate = v; o.validate(); });
    add("KfacOptions.damping" + s, [v] { kfopt::KfacOptions o; o.damping = v; o.validate(); });
    add("KfacOptions.decay" + s, [v] { kfopt::KfacOptions o; o.decay = v; o.validate(); });
  }
  for (double v : {1.0, 1.5, nan(), -0.1}) {
    const std::string s = "(" + std::to_string(v) + ")";
    add("AdamOptions.beta1" + s, [v] { kfopt::AdamOptions o; o.beta1 = v; o.validate(); });
    add("AdamOptions.beta2" + s, [v] { kfopt::AdamOptions o; o.beta2 = v; o.validate(); });
    add("RmsPropOptions.alpha" + s, [v] { kfopt::RmsPropOptions o; o.alpha = v; o.validate(); });
    add("SgdOptions.momentum" + s, [v] { kfopt::SgdOptions o; o.momentum = v; o.validate(); });
    add("FilterFixedPointOptions.beta2" + s, [v] { kfopt::FilterFixedPointOptions o; o.beta2 = v; o.validate(); });
    add("ExtendedKalmanFilter.fading" + s, [v] {
      kfopt::ExtendedKalmanFilterHyperparameters<Scalar> h;
      h.fading = static_cast<Scalar>(v);
      h.validate();
    });
  }
  add("AdamW with lr*wd = 2", [] { kfopt::AdamOptions::adamw(1.0, 2.0).validate(); });
  add("AdamW with lr*wd = 1", [] { kfopt::AdamOptions::adamw(0.5, 2.0).validate(); });
  add("FilterRmsProp eta^2 > 2 sigma^2", [] { kfopt::FilterRmsPropOptions o; o.learning_rate = 1.0; o.prior_variance = 0.1; o.validate(); });
  add("KroneckerFilter trace_period 0", [] { kfopt::KroneckerFilterOptions o; o.trace_period = 0; o.validate(); });
  add("EKF process_noise with NaN", [] {
    kfopt::ExtendedKalmanFilterHyperparameters<Scalar> h;
    h.process_noise = Mat<Scalar>::Identity(2, 2);
    h.process_noise(0, 0) = nan_of<Scalar>();
    h.validate();
  });
  add("EKF process_noise non-symmetric", [] {
    kfopt::ExtendedKalmanFilterHyperparameters<Scalar> h;
    h.process_noise = Mat<Scalar>::Identity(2, 2);
    h.process_noise(0, 1) = Scalar(0.5);
    h.validate();
  });
  add("EKF process_noise indefinite", [] {
    kfopt::ExtendedKalmanFilterHyperparameters<Scalar> h;
    h.process_noise = -Mat<Scalar>::Identity(2, 2);
    h.validate();
  });
  return out;
}

template <typename Scalar>
std::vector<Entry> registry() {
  using S = Scalar;
  using kfopt::KalmanForm;
  std::vector<Entry> r;
  r.push_back({"Sgd(momentum, nesterov, wd)", [] {
                 return parameter_set_fixture<S, kfopt::Sgd<S>>([](kfopt::ParameterSet<S>& p) {
                   kfopt::SgdOptions o;
                   o.learning_rate = 0.1;
                   o.momentum = 0.9;
                   o.nesterov = true;
                   o.weight_decay = 1e-2;
                   return kfopt::Sgd<S>(p, o);
                 });
               }});
  r.push_back({"Adam(wd)", [] {
                 return parameter_set_fixture<S, kfopt::Adam<S>>([](kfopt::ParameterSet<S>& p) {
                   kfopt::AdamOptions o;
                   o.weight_decay = 1e-2;
                   return kfopt::Adam<S>(p, o);
                 });
               }});
  r.push_back({"AdamW(amsgrad)", [] {
                 return parameter_set_fixture<S, kfopt::Adam<S>>([](kfopt::ParameterSet<S>& p) {
                   kfopt::AdamOptions o = kfopt::AdamOptions::adamw();
                   o.amsgrad = true;
                   return kfopt::Adam<S>(p, o);
                 });
               }});
  r.push_back({"RmsProp(centered, momentum)", [] {
                 return parameter_set_fixture<S, kfopt::RmsProp<S>>([](kfopt::ParameterSet<S>& p) {
                   kfopt::RmsPropOptions o;
                   o.centered = true;
                   o.momentum = 0.9;
                   o.weight_decay = 1e-3;
                   return kfopt::RmsProp<S>(p, o);
                 });
               }});
  r.push_back({"FilterRmsProp(centered)", [] {
                 return parameter_set_fixture<S, kfopt::FilterRmsProp<S>>([](kfopt::ParameterSet<S>& p) {
                   kfopt::FilterRmsPropOptions o;
                   o.fisher = kfopt::FisherEstimate::Centered;
                   return kfopt::FilterRmsProp<S>(p, o);
                 });
               }});
  r.push_back({"FilterAdam(combined)", [] {
                 return parameter_set_fixture<S, kfopt::FilterAdam<S>>([](kfopt::ParameterSet<S>& p) {
                   return kfopt::FilterAdam<S>(p, kfopt::FilterAdamOptions::combined());
                 });
               }});
  r.push_back({"FilterAdam", [] {
                 return parameter_set_fixture<S, kfopt::FilterAdam<S>>([](kfopt::ParameterSet<S>& p) {
                   return kfopt::FilterAdam<S>(p);
                 });
               }});
  r.push_back({"FilterFixedPoint(centered)", [] {
                 return parameter_set_fixture<S, kfopt::FilterFixedPoint<S>>([](kfopt::ParameterSet<S>& p) {
                   kfopt::FilterFixedPointOptions o;
                   o.fisher = kfopt::FisherEstimate::Centered;
                   return kfopt::FilterFixedPoint<S>(p, o);
                 });
               }});
  r.push_back({"KroneckerFilter(first order)", [] {
                 return std::unique_ptr<Fixture>(new KroneckerFilterFixture<S>(kfopt::KroneckerFilterOptions{}));
               }});
  r.push_back({"KroneckerFilter(exact)", [] {
                 kfopt::KroneckerFilterOptions o;
                 o.projection = kfopt::KroneckerProjectionMethod::Exact;
                 return std::unique_ptr<Fixture>(new KroneckerFilterFixture<S>(o));
               }});
  add_kfac_entries<S>(r);
  r.push_back({"ExtendedKalmanFilter(covariance)", [] { return ekf_fixture<S>(KalmanForm::Covariance, false); }});
  r.push_back({"ExtendedKalmanFilter(joseph)", [] { return ekf_fixture<S>(KalmanForm::Joseph, false); }});
  r.push_back({"ExtendedKalmanFilter(information)", [] { return ekf_fixture<S>(KalmanForm::Information, false); }});
  r.push_back({"ExtendedKalmanFilter(bad fading schedule)", [] { return ekf_fixture<S>(KalmanForm::Covariance, true); }});
  r.push_back({"OnlineNaturalGradient(covariance)", [] { return ong_fixture<S>(KalmanForm::Covariance, false); }});
  r.push_back({"OnlineNaturalGradient(information)", [] { return ong_fixture<S>(KalmanForm::Information, false); }});
  r.push_back({"OnlineNaturalGradient(bad step-size schedule)", [] { return ong_fixture<S>(KalmanForm::Covariance, true); }});
  r.push_back({"JointExtendedKalmanFilter(covariance)", [] { return joint_fixture<S>(KalmanForm::Covariance); }});
  r.push_back({"JointExtendedKalmanFilter(joseph)", [] { return joint_fixture<S>(KalmanForm::Joseph); }});
  r.push_back({"NaturalGradientRtrl(covariance)", [] { return ngrtrl_fixture<S>(KalmanForm::Covariance); }});
  r.push_back({"NaturalGradientRtrl(information)", [] { return ngrtrl_fixture<S>(KalmanForm::Information); }});
  return r;
}

template <typename Scalar>
void run_suite(const char* type_name, Summary& total) {
  for (const Entry& e : registry<Scalar>()) {
    const std::string name = e.name + "<" + type_name + ">";
    Tally t = run_table<Scalar>(name, e.make);
    total.add(name, t);
  }
  Tally h = run_misuses(bad_hyperparameters<Scalar>(), nullptr);
  total.add(std::string("hyperparameters<") + type_name + ">", h);
}

}  // namespace

TEST_CASE("bad-input suite: every optimizer refuses or rejects every bad input cleanly",
          "[reliability][bad_input]") {
  Summary total;
  run_suite<float>("float", total);
  run_suite<double>("double", total);
  total.print(std::cout);
  CHECK(total.silent_nonfinite() == 0);
  CHECK(total.failures() == 0);
}
