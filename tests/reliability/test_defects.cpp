// One test per defect of the memory-safety and non-finite audit (first-order, element-wise
// filter, Kronecker filter and Kalman optimizers): each reproduces the reported failure in a
// few lines and asserts the fixed behaviour. Only API that predates the fixes is used, so
// the file also compiles against the unfixed headers (where every test here fails or, for
// the memory-safety ones, crashes under ASan).
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
#include <kfopt/optim/kalman/natural_gradient_rtrl.hpp>
#include <kfopt/optim/kalman/online_natural_gradient.hpp>
#include <kfopt/optim/kalman/rtrl.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "reliability/bad_input_table.hpp"

namespace {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

template <typename Derived>
bool bits_equal(const Eigen::DenseBase<Derived>& a, const Eigen::DenseBase<Derived>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.derived().data(), b.derived().data(),
                     sizeof(typename Derived::Scalar) * static_cast<std::size_t>(a.size())) == 0;
}
template <typename Scalar>
bool buffers_equal(const kfopt::BlockBuffers<Scalar>& a, const kfopt::BlockBuffers<Scalar>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!bits_equal(a[i], b[i])) return false;
  }
  return true;
}
template <typename Scalar>
bool buffers_finite(const kfopt::BlockBuffers<Scalar>& a) {
  for (const auto& b : a) {
    if (!b.allFinite()) return false;
  }
  return true;
}

/// A two-block model (a matrix and a vector) with gradients.
template <typename Scalar>
struct Model {
  Mat<Scalar> W = Mat<Scalar>::Constant(2, 3, Scalar(0.5));
  Mat<Scalar> dW = Mat<Scalar>::Constant(2, 3, Scalar(0.1));
  Vec<Scalar> b = Vec<Scalar>::Constant(2, Scalar(-0.25));
  Vec<Scalar> db = Vec<Scalar>::Constant(2, Scalar(0.2));
  kfopt::ParameterSet<Scalar> params;
  Model() {
    params.add("fc.weight", W, dW);
    params.add("fc.bias", b, db);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("first-order and filter optimizers never take a finite gradient into a non-finite state",
                   "[reliability][defects]", float, double) {
  // A gradient at ±max() (one entry, or every entry, alternating in sign between steps):
  // either the step is refused and nothing changes, or it is taken and every parameter and
  // state entry is finite (the filters pin a weight whose e² overflows: a finite answer).
  using S = TestType;
  const S huge = std::numeric_limits<S>::max();
  auto check = [&](auto make, const char* name) {
    for (int all = 0; all < 2; ++all) {
      Model<S> m;
      auto opt = make(m.params);
      REQUIRE(opt.step() == kfopt::Status::Success);
      for (int t = 0; t < 3; ++t) {
        const S sign = t % 2 ? S(-1) : S(1);
        if (all) {
          m.dW.setConstant(sign * huge);
          m.db.setConstant(-sign * huge);
        } else {
          m.dW(1, 2) = sign * huge;
        }
        const Mat<S> W0 = m.W;
        const Vec<S> b0 = m.b;
        kfopt_reliability::Bytes before;
        kfopt_reliability::add_state(before, opt.state());
        INFO(name << (all ? ": every entry at ±max()" : ": one entry at ±max()") << ", step " << t);
        const kfopt::Status s = opt.step();
        kfopt_reliability::Bytes after;
        kfopt_reliability::add_state(after, opt.state());
        if (s == kfopt::Status::Success) {
          CHECK(m.W.allFinite());
          CHECK(m.b.allFinite());
          CHECK(after.finite());
        } else {
          CHECK(bits_equal(m.W, W0));
          CHECK(bits_equal(m.b, b0));
          CHECK(after.str() == before.str());
        }
      }
    }
  };
  check([](kfopt::ParameterSet<S>& p) { return kfopt::Adam<S>(p); }, "Adam");
  check([](kfopt::ParameterSet<S>& p) { return kfopt::RmsProp<S>(p); }, "RmsProp");
  check([](kfopt::ParameterSet<S>& p) {
    kfopt::SgdOptions o;
    o.learning_rate = 10;
    o.momentum = 0.9;
    return kfopt::Sgd<S>(p, o);
  }, "Sgd");
  check([](kfopt::ParameterSet<S>& p) { return kfopt::FilterRmsProp<S>(p); }, "FilterRmsProp");
  check([](kfopt::ParameterSet<S>& p) {
    kfopt::FilterRmsPropOptions o;
    o.fisher = kfopt::FisherEstimate::Centered;
    return kfopt::FilterRmsProp<S>(p, o);
  }, "FilterRmsProp(centered)");
  check([](kfopt::ParameterSet<S>& p) { return kfopt::FilterAdam<S>(p); }, "FilterAdam");
  check([](kfopt::ParameterSet<S>& p) {
    kfopt::FilterAdamOptions o = kfopt::FilterAdamOptions::combined();
    o.fisher = kfopt::FisherEstimate::Centered;
    return kfopt::FilterAdam<S>(p, o);
  }, "FilterAdam(combined, centered)");
  check([](kfopt::ParameterSet<S>& p) { return kfopt::FilterFixedPoint<S>(p); }, "FilterFixedPoint");
}

TEST_CASE("Adam<float>: a finite gradient of 1e20 is refused, v and the parameters stay finite",
          "[reliability][defects]") {
  Model<float> m;
  kfopt::Adam<float> adam(m.params);
  m.dW(0, 0) = 1e20f;
  CHECK(adam.step() != kfopt::Status::Success);
  CHECK(buffers_finite(adam.state().second_moment));
  CHECK(m.W.allFinite());
}

TEST_CASE("a parameter already NaN in the caller's storage is refused, not stepped",
          "[reliability][defects]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto check = [&](auto make, const char* name) {
    Model<double> m;
    auto opt = make(m.params);
    REQUIRE(opt.step() == kfopt::Status::Success);
    const auto before = opt.state();
    m.W(0, 1) = nan;
    INFO(name);
    CHECK(opt.step() != kfopt::Status::Success);
    CHECK(opt.state().counters.steps == before.counters.steps);
    CHECK(std::isnan(m.W(0, 1)));
    CHECK(m.b.allFinite());
    return opt.state();
  };
  kfopt::SgdOptions so;
  so.momentum = 0.9;
  so.weight_decay = 0.1;
  auto s = check([&](kfopt::ParameterSet<double>& p) { return kfopt::Sgd<double>(p, so); }, "Sgd");
  CHECK(buffers_finite(s.momentum));
  kfopt::AdamOptions ao;
  ao.weight_decay = 0.1;
  auto a = check([&](kfopt::ParameterSet<double>& p) { return kfopt::Adam<double>(p, ao); }, "Adam");
  CHECK(buffers_finite(a.first_moment));
  CHECK(buffers_finite(a.second_moment));
  kfopt::RmsPropOptions ro;
  ro.weight_decay = 0.1;
  ro.momentum = 0.5;
  auto r = check([&](kfopt::ParameterSet<double>& p) { return kfopt::RmsProp<double>(p, ro); }, "RmsProp");
  CHECK(buffers_finite(r.square_average));
  CHECK(buffers_finite(r.momentum));
}

TEST_CASE("hyperparameters that make every step non-finite are refused",
          "[reliability][defects]") {
  const double inf = std::numeric_limits<double>::infinity();
  kfopt::AdamOptions a;
  a.learning_rate = inf;
  CHECK_THROWS_AS(a.validate(), kfopt::HyperparameterError);
  a = {};
  a.weight_decay = inf;
  CHECK_THROWS_AS(a.validate(), kfopt::HyperparameterError);
  a = {};
  a.epsilon = inf;
  CHECK_THROWS_AS(a.validate(), kfopt::HyperparameterError);
  // AdamW with lr·wd = 2: the decay factor 1 − lr·wd = −1 flips the parameters.
  CHECK_THROWS_AS(kfopt::AdamOptions::adamw(1.0, 2.0).validate(), kfopt::HyperparameterError);
  kfopt::SgdOptions s;
  s.learning_rate = inf;
  CHECK_THROWS_AS(s.validate(), kfopt::HyperparameterError);
  s = {};
  s.weight_decay = inf;
  CHECK_THROWS_AS(s.validate(), kfopt::HyperparameterError);
  kfopt::RmsPropOptions r;
  r.epsilon = inf;
  CHECK_THROWS_AS(r.validate(), kfopt::HyperparameterError);
  r = {};
  r.learning_rate = inf;
  CHECK_THROWS_AS(r.validate(), kfopt::HyperparameterError);
  Model<double> m;
  kfopt::Adam<double> adam(m.params);
  CHECK_THROWS_AS(adam.set_learning_rate(inf), kfopt::HyperparameterError);
  CHECK(adam.options().learning_rate == 1e-3);
  kfopt::Sgd<double> sgd(m.params);
  CHECK_THROWS_AS(sgd.set_learning_rate(inf), kfopt::HyperparameterError);
  kfopt::RmsProp<double> rms(m.params);
  CHECK_THROWS_AS(rms.set_learning_rate(inf), kfopt::HyperparameterError);
}

TEST_CASE("Adam::set_state refuses NaN/Inf moments, a negative second moment and steps = -1",
          "[reliability][defects]") {
  Model<double> m;
  kfopt::Adam<double> adam(m.params);
  REQUIRE(adam.step() == kfopt::Status::Success);
  const auto good = adam.state();
  auto expect_refused = [&](kfopt::Adam<double>::State bad, const char* what) {
    INFO(what);
    CHECK_THROWS_AS(adam.set_state(bad), kfopt::InvalidInputError);
    CHECK(buffers_equal(adam.state().first_moment, good.first_moment));
    CHECK(buffers_equal(adam.state().second_moment, good.second_moment));
    CHECK(adam.state().counters.steps == good.counters.steps);
  };
  auto bad = good;
  bad.first_moment[0](0, 0) = std::numeric_limits<double>::quiet_NaN();
  expect_refused(bad, "NaN first moment");
  bad = good;
  bad.second_moment[1](1, 0) = std::numeric_limits<double>::infinity();
  expect_refused(bad, "Inf second moment");
  bad = good;
  bad.second_moment[0](1, 1) = -1.0;
  expect_refused(bad, "negative second moment");
  bad = good;
  bad.counters.steps = -1;
  expect_refused(bad, "steps = -1");
}

TEMPLATE_TEST_CASE("EKF and online natural gradient restores refuse corrupted beliefs in every form",
                   "[reliability][defects]", float, double) {
  using S = TestType;
  using Model = kfopt::GaussianObservation<S>;
  const Eigen::Index d = 3;
  const kfopt::KalmanForm forms[] = {kfopt::KalmanForm::Covariance, kfopt::KalmanForm::Joseph,
                                     kfopt::KalmanForm::Information};
  for (kfopt::KalmanForm form : forms) {
    INFO("form " << kfopt::to_string(form));
    kfopt::ExtendedKalmanFilterHyperparameters<S> hp;
    hp.form = form;
    kfopt::ExtendedKalmanFilter<Model> ekf(Model(1, S(0.5)), Mat<S>::Identity(d, d), hp);
    kfopt::OnlineNaturalGradientHyperparameters<S> nh;
    nh.form = form;
    kfopt::OnlineNaturalGradient<Model> ng(Model(1, S(0.5)), Mat<S>::Identity(d, d), nh);
    Vec<S> theta = Vec<S>::Zero(d), theta2 = Vec<S>::Zero(d);
    const Mat<S> J = Mat<S>::Constant(1, d, S(0.3));
    const Vec<S> z = J * theta, y = Vec<S>::Constant(1, S(1));
    REQUIRE(ekf.step(theta, z, J, y) == kfopt::Status::Success);
    REQUIRE(ng.step(theta2, z, J, y) == kfopt::Status::Success);
    const auto e0 = ekf.state();
    const auto n0 = ng.state();
    auto corrupt = [&](auto state, auto& storage_of, int kind) {
      Mat<S>& M = storage_of(state);
      switch (kind) {
        case 0: M(1, 1) = std::numeric_limits<S>::quiet_NaN(); break;
        case 1: M(2, 0) = std::numeric_limits<S>::infinity(); break;
        case 2: M(0, 0) = S(-1); break;                        // negative diagonal
        case 3: M(2, 0) += S(0.5); break;                      // not symmetric / not triangular
        default: break;
      }
      return state;
    };
    auto ekf_storage = [](kfopt::ExtendedKalmanFilterState<S>& s) -> Mat<S>& {
      return s.covariance.storage();
    };
    auto ng_storage = [](kfopt::OnlineNaturalGradientState<S>& s) -> Mat<S>& {
      return s.fisher.storage();
    };
    for (int kind = 0; kind < 5; ++kind) {
      INFO("corruption " << kind);
      auto be = corrupt(e0, ekf_storage, kind);
      auto bn = corrupt(n0, ng_storage, kind);
      if (kind == 4) {
        be.step = -1;
        bn.step = -1;
      }
      if (kind == 3 && form == kfopt::KalmanForm::Information) {
        be.covariance.storage()(0, 2) = S(0.5);  // a non-zero strict upper triangle
        bn.fisher.storage()(0, 2) = S(0.5);
      }
      CHECK_THROWS_AS(ekf.set_state(be), kfopt::InvalidInputError);
      CHECK_THROWS_AS(ng.set_state(bn), kfopt::InvalidInputError);
      CHECK(bits_equal(ekf.state().covariance.storage(), e0.covariance.storage()));
      CHECK(bits_equal(ng.state().fisher.storage(), n0.fisher.storage()));
    }
  }
}

TEST_CASE("a bias vector reassigned after registration is followed, not read after free",
          "[reliability][defects][asan]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Ones(2, 2), dW = Eigen::MatrixXd::Zero(2, 2);
  Eigen::VectorXd b = Eigen::VectorXd::Ones(2), db = Eigen::VectorXd::Zero(2);
  kfopt::ParameterSet<double> params;
  params.add("fc.weight", W, dW);
  params.add("fc.bias", b, db);
  kfopt::AdamOptions o;
  o.learning_rate = 0.1;
  kfopt::Adam<double> adam(params, o);
  auto compute_db = [] { return Eigen::VectorXd::Constant(2, 1.0).eval(); };
  auto compute_b = [] { return Eigen::VectorXd::Constant(2, 3.0).eval(); };
  db = compute_db();  // move assignment: db's old buffer is freed
  b = compute_b();    // and b's
  REQUIRE(adam.step() == kfopt::Status::Success);
  // Adam's first step moves each entry by lr·sign(g): b = 3 − 0.1.
  CHECK(b(0) == Approx(2.9));
  CHECK(b(1) == Approx(2.9));
}

TEST_CASE("a moved-from optimizer throws a clear error instead of crashing",
          "[reliability][defects][asan]") {
  Model<double> m;
  kfopt::Sgd<double> a(m.params);
  kfopt::Sgd<double> b(std::move(a));
  CHECK_THROWS_AS(a.step(), kfopt::InvalidInputError);  // NOLINT(bugprone-use-after-move)
  CHECK(b.step() == kfopt::Status::Success);
  kfopt::Adam<double> c(m.params);
  kfopt::Adam<double> d(std::move(c));
  CHECK_THROWS_AS(c.step(), kfopt::InvalidInputError);  // NOLINT(bugprone-use-after-move)
  kfopt::FilterAdam<double> e(m.params);
  kfopt::FilterAdam<double> f(std::move(e));
  CHECK_THROWS_AS(e.step(), kfopt::InvalidInputError);  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("NaturalGradientRtrl::set_state is all or nothing", "[reliability][defects]") {
  using Cell = kfopt::TanhRnnCell<double>;
  using Gauss = kfopt::GaussianObservation<double>;
  const Cell cell(2, 1, 1);
  const Eigen::Index d = cell.param_dim();
  kfopt::NaturalGradientRtrl<Cell, Gauss> ngr(cell, Gauss(1, 0.1), Vec<double>::Zero(2),
                                              Mat<double>::Identity(d, d));
  Vec<double> theta = Vec<double>::Constant(d, 0.1);
  REQUIRE(ngr.step(theta, Vec<double>::Constant(1, 0.5), Vec<double>::Constant(1, 0.2)) ==
          kfopt::Status::Success);
  const auto before = ngr.state();
  auto bad = before;
  bad.recurrent.hidden.setConstant(0.75);                              // valid
  bad.natural_gradient.fisher.storage()(0, 0) = std::numeric_limits<double>::quiet_NaN();  // not
  CHECK_THROWS(ngr.set_state(bad));
  CHECK(bits_equal(ngr.hidden(), before.recurrent.hidden));
  CHECK(bits_equal(ngr.state().natural_gradient.fisher.storage(),
                   before.natural_gradient.fisher.storage()));
}

TEST_CASE("KroneckerFilter::set_covariance refuses a singular factor", "[reliability][defects]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Constant(2, 3, 0.1), dW = Eigen::MatrixXd::Zero(2, 3);
  kfopt::KroneckerFilter<double> kf;
  const auto id = kf.add_dense_layer("fc", W, dW);
  const Eigen::MatrixXd before = kf.covariance(id).input_factor();
  CHECK_THROWS_AS(kf.set_covariance(id, Eigen::MatrixXd::Zero(3, 3), Eigen::MatrixXd::Identity(2, 2)),
                  kfopt::InvalidInputError);
  CHECK(bits_equal(kf.covariance(id).input_factor(), before));
}

TEST_CASE("a refused KroneckerFilter update does not keep its batch queued",
          "[reliability][defects]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Constant(2, 3, 0.1), dW = Eigen::MatrixXd::Constant(2, 3, 0.01);
  Eigen::VectorXd b = Eigen::VectorXd::Zero(2), db = Eigen::VectorXd::Constant(2, 0.01);
  kfopt::KroneckerFilter<double> kf;
  const auto id = kf.add_dense_layer("fc", W, dW, b, db);
  const Eigen::MatrixXd a_good = Eigen::MatrixXd::Constant(4, 3, 0.5);
  const Eigen::MatrixXd g_good = Eigen::MatrixXd::Constant(4, 2, 0.1);
  Eigen::MatrixXd a_bad = a_good;
  a_bad(0, 0) = 1e300;  // finite, but xᵀΣx·δᵀΣδ overflows
  REQUIRE(kf.record_statistics(id, a_bad, g_good) == kfopt::Status::Success);
  CHECK(kf.update() != kfopt::Status::Success);
  int succeeded = 0;
  for (int t = 0; t < 5; ++t) {
    REQUIRE(kf.record_statistics(id, a_good, g_good) == kfopt::Status::Success);
    if (kf.step() == kfopt::Status::Success) ++succeeded;
  }
  CHECK(succeeded == 5);
  CHECK(W.allFinite());
}

TEST_CASE("Rtrl: commit with a NaN correction is refused; misuse is InvalidInputError",
          "[reliability][defects]") {
  using Cell = kfopt::TanhRnnCell<double>;
  const Cell cell(2, 1, 1);
  const Eigen::Index d = cell.param_dim();
  kfopt::Rtrl<Cell> rtrl(cell, Vec<double>::Zero(2));
  const Vec<double> theta = Vec<double>::Constant(d, 0.1), u = Vec<double>::Constant(1, 0.5);
  Vec<double> z(1);
  Mat<double> H(1, d);
  CHECK_THROWS_AS(rtrl.output(theta, u, z, H), kfopt::InvalidInputError);
  CHECK_THROWS_AS(rtrl.commit(), kfopt::InvalidInputError);
  REQUIRE(rtrl.propagate(theta, u) == kfopt::Status::Success);
  rtrl.commit(Vec<double>::Constant(d, std::numeric_limits<double>::quiet_NaN()));
  CHECK(rtrl.hidden().allFinite());
  CHECK(rtrl.hidden().isZero());  // nothing committed
}

TEST_CASE("ParameterBlock errors at a step name the operation", "[reliability][defects]") {
  Model<double> m;
  kfopt::Adam<double> adam(m.params);
  m.dW.resize(1, 2);
  CHECK_THROWS_WITH(adam.step(), Catch::Contains("kfopt::Adam::step") &&
                                     Catch::Contains("fc.weight") && Catch::Contains("1x2"));
}

TEST_CASE("process_noise messages say whether it is non-symmetric or non-finite",
          "[reliability][defects]") {
  kfopt::ExtendedKalmanFilterHyperparameters<double> hp;
  hp.process_noise = Eigen::MatrixXd::Identity(2, 2);
  hp.process_noise(0, 1) = 0.5;
  CHECK_THROWS_WITH(hp.validate(), Catch::Contains("not symmetric"));
  hp.process_noise = Eigen::MatrixXd::Identity(2, 2);
  hp.process_noise(1, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(hp.validate(), Catch::Contains("NaN or Inf"));
}
