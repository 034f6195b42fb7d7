// Learning-rate and damping schedules and global gradient-norm clipping, the same options on
// Sgd, Adam, RmsProp, Kfac and the Bayesian filters (FilterRmsProp, FilterAdam,
// FilterFixedPoint, KroneckerFilter): the schedules' values against their formulas worked by hand; a
// scheduled run against the same optimizer whose learning rate (or damping) the test sets by
// hand before every step; clipping against the gradients scaled by the test itself (the norm
// summed in long double) and against the step length it implies for plain SGD; bad schedule
// values and non-finite gradients refused with nothing changed; a resumed run equal to the
// uninterrupted one.
#include <catch2/catch.hpp>
#include <kfopt/core/schedule.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/bayes_filter/filter_fixed_point.hpp>
#include <kfopt/optim/bayes_filter/filter_rmsprop.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/first_order/rmsprop.hpp>
#include <kfopt/optim/first_order/sgd.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <cmath>
#include <limits>
#include <string>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// W (3×2) and b (3) with their gradients, registered in a ParameterSet.
template <typename Scalar>
struct Model {
  Mat<Scalar> W, dW;
  Vec<Scalar> b, db;
  kfopt::ParameterSet<Scalar> params;
  explicit Model(unsigned seed) {
    Rng rng(seed);
    W = rng.normal<double>(3, 2).cast<Scalar>();
    b = rng.normal<double>(3, 1).cast<Scalar>();
    dW = Mat<Scalar>::Zero(3, 2);
    db = Vec<Scalar>::Zero(3);
    params.add("W", W, dW);
    params.add("b", b, db);
  }
  Model(const Model& other) : Model(0) {
    W = other.W;
    b = other.b;
    dW = other.dW;
    db = other.db;
  }
  // A gradient that depends on the parameters and the step, scaled by `size`.
  void gradients(int t, double size = 1.0) {
    const Mat<double> G = (Mat<double>(3, 2) << 1.0, -2.0, 0.5, 3.0, -1.5, 0.25).finished();
    dW = (size * (G * std::cos(t + 1.0) + 0.4 * W.template cast<double>())).template cast<Scalar>();
    db = (size * (Vec<double>::Constant(3, std::sin(t + 2.0)) + 0.4 * b.template cast<double>()))
             .template cast<Scalar>();
  }
  long double gradient_norm() const {
    long double s = 0;
    for (Eigen::Index k = 0; k < dW.size(); ++k) s += static_cast<long double>(dW(k)) * dW(k);
    for (Eigen::Index k = 0; k < db.size(); ++k) s += static_cast<long double>(db(k)) * db(k);
    return std::sqrt(s);
  }
  bool operator==(const Model& o) const { return W == o.W && b == o.b; }
};

kfopt::SgdOptions sgd_options() {
  kfopt::SgdOptions o;
  o.learning_rate = 0.05;
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  return o;
}
kfopt::AdamOptions adam_options() {
  kfopt::AdamOptions o = kfopt::AdamOptions::adamw(0.02, 0.1);
  o.amsgrad = true;
  return o;
}
kfopt::RmsPropOptions rmsprop_options() {
  kfopt::RmsPropOptions o;
  o.learning_rate = 0.01;
  o.momentum = 0.5;
  o.centered = true;
  return o;
}

kfopt::FilterRmsPropOptions filter_rmsprop_options() {
  kfopt::FilterRmsPropOptions o;
  o.learning_rate = 0.02;
  o.fisher = kfopt::FisherEstimate::Centered;
  return o;
}
kfopt::FilterAdamOptions filter_adam_options() {
  kfopt::FilterAdamOptions o = kfopt::FilterAdamOptions::combined(0.02, 0.01);
  o.fisher = kfopt::FisherEstimate::Centered;
  return o;
}
kfopt::FilterFixedPointOptions filter_fixed_point_options() {
  return kfopt::FilterFixedPointOptions::adamw(0.02, 0.05);
}

const kfopt::Schedule& warmup_cosine() {
  static const kfopt::Schedule s = kfopt::Schedule::warmup(3, kfopt::Schedule::cosine(6, 0.1));
  return s;
}

// The scheduled optimizer against the same one with set_learning_rate(η · f(t)) before every
// step, bit for bit.
template <template <typename> class Optimizer, typename Scalar, typename Options>
void check_schedule_equals_manual(Options options) {
  const double eta = options.learning_rate;
  Model<Scalar> a(7), m(7);
  Options scheduled = options;
  scheduled.learning_rate_schedule = warmup_cosine();
  Optimizer<Scalar> opt_a(a.params, scheduled), opt_m(m.params, options);
  for (int t = 0; t < 12; ++t) {
    a.gradients(t);
    m.gradients(t);
    opt_m.set_learning_rate(eta * warmup_cosine()(t));
    REQUIRE(opt_a.step() == kfopt::Status::Success);
    REQUIRE(opt_m.step() == kfopt::Status::Success);
    INFO("step " << t);
    REQUIRE(a == m);
  }
  CHECK(opt_a.options().learning_rate == eta);  // the base is unchanged
}

// A schedule that gives NaN at step 2 throws there, naming it; nothing changes.
template <template <typename> class Optimizer, typename Scalar, typename Options>
void check_bad_schedule_value(Options options) {
  Model<Scalar> a(8);
  options.learning_rate_schedule =
      kfopt::Schedule([](std::int64_t t) { return t == 2 ? kNaN : 1.0; }, "nan_at_two");
  Optimizer<Scalar> opt(a.params, options);
  for (int t = 0; t < 2; ++t) {
    a.gradients(t);
    REQUIRE(opt.step() == kfopt::Status::Success);
  }
  a.gradients(2);
  const Model<Scalar> before(a);
  const auto state = opt.state_dict();
  CHECK_THROWS_WITH(opt.step(), Catch::Contains("learning_rate_schedule nan_at_two at step 2") &&
                                    Catch::Contains("must be finite and > 0"));
  CHECK(a == before);
  CHECK(opt.state_dict() == state);
}

// Clipping: with c above the norm, bit for bit the unclipped run; with c below it, the run
// on gradients the test scaled by c / ‖∇‖ itself.
template <template <typename> class Optimizer, typename Scalar, typename Options>
void check_clipping(Options options, double tolerance) {
  Model<Scalar> clipped(9), loose(9), off(9), reference(9);
  Options with = options, above = options;
  with.max_gradient_norm = 0.5;
  above.max_gradient_norm = 1e6;
  Optimizer<Scalar> opt_c(clipped.params, with), opt_l(loose.params, above),
      opt_o(off.params, options), opt_r(reference.params, options);
  int active = 0;
  for (int t = 0; t < 10; ++t) {
    for (Model<Scalar>* m : {&clipped, &loose, &off, &reference}) m->gradients(t, 3.0);
    const long double norm = reference.gradient_norm();
    if (norm > 0.5L) {
      ++active;
      const Scalar s = static_cast<Scalar>(0.5L / norm);
      reference.dW *= s;
      reference.db *= s;
    }
    const Mat<Scalar> dW = clipped.dW;
    REQUIRE(opt_c.step() == kfopt::Status::Success);
    REQUIRE(opt_l.step() == kfopt::Status::Success);
    REQUIRE(opt_o.step() == kfopt::Status::Success);
    REQUIRE(opt_r.step() == kfopt::Status::Success);
    INFO("step " << t);
    CHECK(clipped.dW == dW);  // the caller's gradients are not written
    REQUIRE(loose == off);
    CHECK(relative_error(dense_vec<double>(clipped.W.template cast<double>()),
                         dense_vec<double>(reference.W.template cast<double>())) <= tolerance);
    CHECK(relative_error(clipped.b.template cast<double>(), reference.b.template cast<double>()) <=
          tolerance);
  }
  CHECK(active >= 8);
  // A NaN gradient is refused as without clipping.
  clipped.db(1) = static_cast<Scalar>(kNaN);
  const Model<Scalar> before(clipped);
  CHECK(opt_c.step() == kfopt::Status::NonFiniteInput);
  CHECK(clipped == before);
}

}  // namespace

TEST_CASE("Schedule: the factories' factors against their formulas", "[optim][schedule]") {
  const kfopt::Schedule constant;
  CHECK(constant.is_constant());
  CHECK(constant(0) == 1.0);
  CHECK(constant(123456) == 1.0);

  const kfopt::Schedule decay = kfopt::Schedule::step_decay(3, 0.5);
  const double decay_values[] = {1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125};
  for (int t = 0; t < 10; ++t) CHECK(decay(t) == decay_values[t]);

  // cos(π t / 4) at t = 0…4 is 1, √½, 0, −√½, −1.
  const kfopt::Schedule cosine = kfopt::Schedule::cosine(4, 0.2);
  const double h = std::sqrt(0.5);
  const double cosine_values[] = {1.0, 0.2 + 0.8 * (1 + h) / 2, 0.6, 0.2 + 0.8 * (1 - h) / 2, 0.2};
  for (int t = 0; t < 5; ++t) CHECK(cosine(t) == Approx(cosine_values[t]).epsilon(1e-15));
  CHECK(cosine(4) == Approx(0.2).epsilon(1e-15));
  CHECK(cosine(1000) == cosine(4));

  const kfopt::Schedule warm = kfopt::Schedule::warmup(4, kfopt::Schedule::step_decay(2, 0.1));
  const double warm_values[] = {0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1};
  for (int t = 0; t < 8; ++t) CHECK(warm(t) == Approx(warm_values[t]).epsilon(1e-15));
  CHECK(kfopt::Schedule::warmup(5)(100) == 1.0);
  CHECK(warm.description() == "warmup(4, step_decay(2, 0.1))");

  const kfopt::Schedule custom([](std::int64_t t) { return 1.0 / (1.0 + static_cast<double>(t)); });
  CHECK(custom(3) == 0.25);
  CHECK(custom.scaled("op", "learning_rate", 0.5, 3) == 0.125);

  // Bad construction and bad values.
  CHECK_THROWS_AS(kfopt::Schedule::step_decay(0, 0.5), kfopt::HyperparameterError);
  CHECK_THROWS_AS(kfopt::Schedule::step_decay(2, 1.5), kfopt::HyperparameterError);
  CHECK_THROWS_AS(kfopt::Schedule::cosine(10, 0.0), kfopt::HyperparameterError);
  CHECK_THROWS_AS(kfopt::Schedule::cosine(0, 0.5), kfopt::HyperparameterError);
  CHECK_THROWS_AS(kfopt::Schedule::warmup(0), kfopt::HyperparameterError);
  CHECK_THROWS_AS(kfopt::Schedule(kfopt::Schedule::Function()), kfopt::HyperparameterError);
  for (const double bad : {kNaN, 0.0, -1.0, std::numeric_limits<double>::infinity()}) {
    const kfopt::Schedule s([bad](std::int64_t) { return bad; }, "bad");
    CHECK_THROWS_WITH(s.scaled("kfopt::Sgd::step", "learning_rate", 0.1, 7),
                      Catch::StartsWith("kfopt::Sgd::step: learning_rate_schedule bad at step 7"));
  }
  // A finite factor whose product overflows is refused too.
  const kfopt::Schedule huge([](std::int64_t) { return 1e300; });
  CHECK_THROWS_AS(huge.scaled("op", "damping", 1e10, 0), kfopt::HyperparameterError);
}

TEST_CASE("A scheduled learning rate equals setting η · f(t) by hand before every step",
          "[optim][schedule]") {
  check_schedule_equals_manual<kfopt::Sgd, double>(sgd_options());
  check_schedule_equals_manual<kfopt::Sgd, float>(sgd_options());
  check_schedule_equals_manual<kfopt::Adam, double>(adam_options());
  check_schedule_equals_manual<kfopt::Adam, float>(adam_options());
  check_schedule_equals_manual<kfopt::RmsProp, double>(rmsprop_options());
  check_schedule_equals_manual<kfopt::RmsProp, float>(rmsprop_options());
  check_schedule_equals_manual<kfopt::FilterRmsProp, double>(filter_rmsprop_options());
  check_schedule_equals_manual<kfopt::FilterRmsProp, float>(filter_rmsprop_options());
  check_schedule_equals_manual<kfopt::FilterAdam, double>(filter_adam_options());
  check_schedule_equals_manual<kfopt::FilterAdam, float>(filter_adam_options());
  check_schedule_equals_manual<kfopt::FilterFixedPoint, double>(filter_fixed_point_options());
  check_schedule_equals_manual<kfopt::FilterFixedPoint, float>(filter_fixed_point_options());
}

TEST_CASE("A schedule's bad value throws at its step, naming it, and changes nothing",
          "[optim][schedule]") {
  check_bad_schedule_value<kfopt::Sgd, double>(sgd_options());
  check_bad_schedule_value<kfopt::Adam, float>(adam_options());
  check_bad_schedule_value<kfopt::RmsProp, double>(rmsprop_options());
  check_bad_schedule_value<kfopt::FilterRmsProp, double>(filter_rmsprop_options());
  check_bad_schedule_value<kfopt::FilterAdam, float>(filter_adam_options());
  check_bad_schedule_value<kfopt::FilterFixedPoint, double>(filter_fixed_point_options());
  // A filter's scheduled η is held to the filter's range: η² + η_w² ≤ 2σ² for FilterAdam.
  {
    Model<double> f(4);
    kfopt::FilterAdamOptions fo = filter_adam_options();
    fo.learning_rate_schedule = kfopt::Schedule([](std::int64_t t) { return t < 1 ? 1.0 : 1e3; });
    kfopt::FilterAdam<double> filter(f.params, fo);
    f.gradients(0);
    REQUIRE(filter.step() == kfopt::Status::Success);
    const Model<double> before(f);
    CHECK_THROWS_WITH(filter.step(), Catch::Contains("kfopt::FilterAdam::step") &&
                                         Catch::Contains("learning_rate"));
    CHECK(f == before);
    CHECK(filter.state().counters.steps == 1);
  }
  // AdamW: a scheduled η with η·wd ≥ 1 is refused at its step.
  Model<double> m(3);
  kfopt::AdamOptions o = kfopt::AdamOptions::adamw(0.5, 1.0);
  o.learning_rate_schedule = kfopt::Schedule([](std::int64_t t) { return t < 1 ? 1.0 : 2.5; });
  kfopt::Adam<double> adam(m.params, o);
  m.gradients(0);
  REQUIRE(adam.step() == kfopt::Status::Success);
  const Model<double> before(m);
  CHECK_THROWS_AS(adam.step(), kfopt::HyperparameterError);
  CHECK(m == before);
  CHECK(adam.state().counters.steps == 1);
}

TEST_CASE("Gradient-norm clipping equals stepping on gradients scaled to the threshold",
          "[optim][clipping]") {
  check_clipping<kfopt::Sgd, double>(sgd_options(), 1e-14);
  check_clipping<kfopt::Sgd, float>(sgd_options(), 1e-6);
  check_clipping<kfopt::Adam, double>(adam_options(), 1e-13);
  check_clipping<kfopt::Adam, float>(adam_options(), 1e-5);
  check_clipping<kfopt::RmsProp, double>(rmsprop_options(), 1e-13);
  check_clipping<kfopt::RmsProp, float>(rmsprop_options(), 1e-5);
  check_clipping<kfopt::FilterRmsProp, double>(filter_rmsprop_options(), 1e-12);
  check_clipping<kfopt::FilterRmsProp, float>(filter_rmsprop_options(), 1e-5);
  check_clipping<kfopt::FilterAdam, double>(filter_adam_options(), 1e-12);
  check_clipping<kfopt::FilterAdam, float>(filter_adam_options(), 1e-5);
  check_clipping<kfopt::FilterFixedPoint, double>(filter_fixed_point_options(), 1e-12);
  check_clipping<kfopt::FilterFixedPoint, float>(filter_fixed_point_options(), 1e-5);

  SECTION("plain SGD moves by η c exactly, also for gradients whose squares overflow") {
    for (const double size : {10.0, 1e200}) {
      Model<double> m(4);
      kfopt::SgdOptions o;
      o.learning_rate = 0.1;
      o.max_gradient_norm = 2.0;
      kfopt::Sgd<double> sgd(m.params, o);
      m.gradients(0, size);
      const Mat<double> W = m.W;
      const Vec<double> b = m.b;
      REQUIRE(sgd.step() == kfopt::Status::Success);
      const double moved = std::sqrt((m.W - W).squaredNorm() + (m.b - b).squaredNorm());
      INFO("gradient size " << size);
      CHECK(moved == Approx(0.1 * 2.0).epsilon(1e-13));
    }
  }
  SECTION("‖(3e200, 4e200)‖ = 5e200: the clipped step is (−3, −4)") {
    Mat<double> W = Mat<double>::Zero(1, 1), dW(1, 1);
    Vec<double> b = Vec<double>::Zero(1), db(1);
    dW(0, 0) = 3e200;
    db(0) = 4e200;
    kfopt::ParameterSet<double> params;
    params.add("W", W, dW);
    params.add("b", b, db);
    kfopt::SgdOptions o;
    o.learning_rate = 1.0;
    o.max_gradient_norm = 5.0;
    kfopt::Sgd<double> sgd(params, o);
    REQUIRE(sgd.step() == kfopt::Status::Success);
    CHECK(W(0, 0) == Approx(-3.0).epsilon(1e-15));  // the norm 5e200 formed without overflow
    CHECK(b(0) == Approx(-4.0).epsilon(1e-15));
  }
  SECTION("the threshold is validated and recorded in the state dict") {
    Model<double> m(5);
    kfopt::AdamOptions o;
    o.max_gradient_norm = -1.0;
    CHECK_THROWS_WITH(kfopt::Adam<double>(m.params, o), Catch::Contains("max_gradient_norm"));
    o.max_gradient_norm = std::numeric_limits<double>::infinity();
    CHECK_THROWS_AS(kfopt::Adam<double>(m.params, o), kfopt::HyperparameterError);
    o.max_gradient_norm = 1.0;
    kfopt::Adam<double> a(m.params, o);
    o.max_gradient_norm = 2.0;
    kfopt::Adam<double> other(m.params, o);
    CHECK_THROWS_WITH(other.load_state_dict(a.state_dict()),
                      Catch::Contains("max_gradient_norm"));
    kfopt::LoadOptions changed;
    changed.allow_changed_hyperparameters = true;
    CHECK_NOTHROW(other.load_state_dict(a.state_dict(), changed));
  }
}

TEST_CASE("A resumed scheduled, clipped run equals the uninterrupted one", "[optim][schedule]") {
  kfopt::AdamOptions o = adam_options();
  o.learning_rate_schedule = warmup_cosine();
  o.max_gradient_norm = 0.5;
  Model<double> whole(11), first(11);
  kfopt::Adam<double> opt_whole(whole.params, o), opt_first(first.params, o);
  for (int t = 0; t < 4; ++t) {
    whole.gradients(t, 3.0);
    first.gradients(t, 3.0);
    REQUIRE(opt_whole.step() == kfopt::Status::Success);
    REQUIRE(opt_first.step() == kfopt::Status::Success);
  }
  Model<double> second(first);  // the weights as a checkpoint holds them
  kfopt::Adam<double> opt_second(second.params, o);
  opt_second.load_state_dict(opt_first.state_dict());
  for (int t = 4; t < 12; ++t) {
    whole.gradients(t, 3.0);
    second.gradients(t, 3.0);
    REQUIRE(opt_whole.step() == kfopt::Status::Success);
    REQUIRE(opt_second.step() == kfopt::Status::Success);
    INFO("step " << t);
    REQUIRE(second == whole);
  }
}

namespace {

struct KfacModel {
  Mat<double> W1, dW1, W2, dW2;
  Vec<double> b1, db1, b2, db2;
  explicit KfacModel(unsigned seed) {
    Rng rng(seed);
    W1 = rng.normal<double>(4, 5);
    W2 = rng.normal<double>(3, 4);
    b1 = rng.normal<double>(4, 1);
    b2 = rng.normal<double>(3, 1);
    dW1 = Mat<double>::Zero(4, 5);
    dW2 = Mat<double>::Zero(3, 4);
    db1 = Vec<double>::Zero(4);
    db2 = Vec<double>::Zero(3);
  }
  void add_to(kfopt::Kfac<double>& k) {
    k.add_dense_layer("fc1", W1, dW1, b1, db1);
    k.add_dense_layer("fc2", W2, dW2, b2, db2);
  }
  long double gradient_norm() const {
    long double s = 0;
    for (const auto* m : {&dW1, &dW2}) {
      for (Eigen::Index k = 0; k < m->size(); ++k) s += static_cast<long double>((*m)(k)) * (*m)(k);
    }
    for (const auto* v : {&db1, &db2}) {
      for (Eigen::Index k = 0; k < v->size(); ++k) s += static_cast<long double>((*v)(k)) * (*v)(k);
    }
    return std::sqrt(s);
  }
  bool operator==(const KfacModel& o) const {
    return W1 == o.W1 && W2 == o.W2 && b1 == o.b1 && b2 == o.b2;
  }
  Vec<double> stacked() const {
    Vec<double> v(W1.size() + W2.size() + b1.size() + b2.size());
    v << dense_vec(W1), dense_vec(W2), b1, b2;
    return v;
  }
};

kfopt::KfacOptions kfac_options(kfopt::InverseMethod method) {
  kfopt::KfacOptions o;
  o.learning_rate = 0.2;
  o.momentum = 0.5;
  o.damping = 0.1;
  o.min_damping = 0.0;
  o.weight_decay = 1e-3;
  o.kl_clip = 1e-2;
  o.inverse_period = 3;
  o.inverse_method = method;
  return o;
}

// One step's statistics and gradients, the same for every model given the same rng state.
void feed(Rng& rng, double size, std::initializer_list<std::pair<kfopt::Kfac<double>*, KfacModel*>> runs) {
  const Mat<double> x1 = rng.normal<double>(8, 5), g1 = rng.normal<double>(8, 4);
  const Mat<double> x2 = rng.normal<double>(8, 4), g2 = rng.normal<double>(8, 3);
  const Mat<double> dW1 = size * rng.normal<double>(4, 5), dW2 = size * rng.normal<double>(3, 4);
  const Mat<double> db1 = size * rng.normal<double>(4, 1), db2 = size * rng.normal<double>(3, 1);
  for (const auto& r : runs) {
    REQUIRE(r.first->record_statistics(0, x1, g1) == kfopt::Status::Success);
    REQUIRE(r.first->record_statistics(1, x2, g2) == kfopt::Status::Success);
    r.second->dW1 = dW1;
    r.second->dW2 = dW2;
    r.second->db1 = db1;
    r.second->db2 = db2;
  }
}

}  // namespace

TEST_CASE("K-FAC: scheduled learning rate and damping equal setting them by hand every step",
          "[optim][kfac][schedule]") {
  for (const auto method : {kfopt::InverseMethod::Eigendecomposition, kfopt::InverseMethod::Cholesky}) {
    INFO("Cholesky: " << (method == kfopt::InverseMethod::Cholesky));
    const kfopt::KfacOptions base = kfac_options(method);
    kfopt::KfacOptions scheduled = base;
    scheduled.learning_rate_schedule = warmup_cosine();
    scheduled.damping_schedule = kfopt::Schedule::step_decay(4, 0.3);
    KfacModel a(21), m(21);
    kfopt::Kfac<double> ka(scheduled), km(base);
    a.add_to(ka);
    m.add_to(km);
    Rng rng(5);
    for (int t = 0; t < 12; ++t) {
      feed(rng, 1.0, {{&ka, &a}, {&km, &m}});
      km.set_learning_rate(base.learning_rate * warmup_cosine()(t));
      km.set_damping(base.damping * scheduled.damping_schedule(t));
      REQUIRE(ka.step() == kfopt::Status::Success);
      REQUIRE(km.step() == kfopt::Status::Success);
      INFO("step " << t);
      REQUIRE(a == m);
    }
    CHECK(ka.damping() == base.damping);  // the base is unchanged
  }
  // The damping schedule and adaptive damping exclude each other.
  kfopt::KfacOptions both = kfac_options(kfopt::InverseMethod::Eigendecomposition);
  both.adaptive_damping = true;
  both.damping_schedule = kfopt::Schedule::step_decay(4, 0.3);
  CHECK_THROWS_WITH(kfopt::Kfac<double>(both), Catch::Contains("damping_schedule"));
  // A bad damping value throws at its step with nothing changed.
  kfopt::KfacOptions bad = kfac_options(kfopt::InverseMethod::Cholesky);
  bad.damping_schedule = kfopt::Schedule([](std::int64_t t) { return t < 2 ? 1.0 : -1.0; }, "negative");
  KfacModel b(22);
  kfopt::Kfac<double> kb(bad);
  b.add_to(kb);
  Rng rng(6);
  for (int t = 0; t < 2; ++t) {
    feed(rng, 1.0, {{&kb, &b}});
    REQUIRE(kb.step() == kfopt::Status::Success);
  }
  feed(rng, 1.0, {{&kb, &b}});
  const KfacModel before(b);
  const auto state = kb.state_dict();
  CHECK_THROWS_WITH(kb.step(), Catch::Contains("damping_schedule negative at step 2"));
  CHECK(b == before);
  CHECK(kb.state_dict() == state);
}

TEST_CASE("K-FAC: gradient-norm clipping scales the raw gradients before weight decay and "
          "preconditioning; a resumed scheduled run equals the uninterrupted one",
          "[optim][kfac][clipping][schedule]") {
  kfopt::KfacOptions base = kfac_options(kfopt::InverseMethod::Eigendecomposition);
  kfopt::KfacOptions clipped_options = base;
  clipped_options.max_gradient_norm = 1.0;
  KfacModel c(31), r(31);
  kfopt::Kfac<double> kc(clipped_options), kr(base);
  c.add_to(kc);
  r.add_to(kr);
  Rng rng(7);
  for (int t = 0; t < 10; ++t) {
    feed(rng, 2.0, {{&kc, &c}, {&kr, &r}});
    const long double norm = r.gradient_norm();
    REQUIRE(norm > 1.0L);
    const double s = static_cast<double>(1.0L / norm);
    r.dW1 *= s;
    r.dW2 *= s;
    r.db1 *= s;
    r.db2 *= s;
    REQUIRE(kc.step() == kfopt::Status::Success);
    REQUIRE(kr.step() == kfopt::Status::Success);
    INFO("step " << t);
    CHECK(relative_error(c.stacked(), r.stacked()) <= 1e-13);
  }

  // Resume: 5 steps, state_dict, a new Kfac on a copy of the weights, 7 more.
  kfopt::KfacOptions o = base;
  o.learning_rate_schedule = warmup_cosine();
  o.damping_schedule = kfopt::Schedule::step_decay(3, 0.5);
  o.max_gradient_norm = 1.0;
  KfacModel whole(41), first(41);
  kfopt::Kfac<double> kw(o), kf(o);
  whole.add_to(kw);
  first.add_to(kf);
  Rng rw(8), rf(8);
  for (int t = 0; t < 5; ++t) {
    feed(rw, 2.0, {{&kw, &whole}});
    feed(rf, 2.0, {{&kf, &first}});
    REQUIRE(kw.step() == kfopt::Status::Success);
    REQUIRE(kf.step() == kfopt::Status::Success);
  }
  KfacModel second(first);
  kfopt::Kfac<double> ks(o);
  second.add_to(ks);
  ks.load_state_dict(kf.state_dict());
  for (int t = 5; t < 12; ++t) {
    feed(rw, 2.0, {{&kw, &whole}});
    feed(rf, 2.0, {{&ks, &second}});
    REQUIRE(kw.step() == kfopt::Status::Success);
    REQUIRE(ks.step() == kfopt::Status::Success);
    INFO("step " << t);
    REQUIRE(second == whole);
  }
}

TEST_CASE("KroneckerFilter: a scheduled η equals setting it by hand; clipping equals gradients "
          "scaled by the test", "[optim][kronecker_filter][schedule][clipping]") {
  // Four filters on copies of one layer: scheduled, by hand, clipped, and on gradients the
  // test scales itself.
  Rng rng(12);
  const Mat<double> W0 = rng.normal<double>(3, 4);
  const Vec<double> b0 = rng.normal<double>(3, 1);
  struct Run {
    Mat<double> W, dW;
    Vec<double> b, db;
    kfopt::KroneckerFilter<double> filter;
    Run(const Mat<double>& W0, const Vec<double>& b0, kfopt::KroneckerFilterOptions o)
        : W(W0), dW(Mat<double>::Zero(3, 4)), b(b0), db(Vec<double>::Zero(3)), filter(o) {
      filter.add_dense_layer("fc", W, dW, b, db);
    }
  };
  const kfopt::KroneckerFilterOptions base = kfopt::KroneckerFilterOptions::whitening(0.05, 0.3);
  kfopt::KroneckerFilterOptions scheduled = base, clipped = base;
  scheduled.learning_rate_schedule = warmup_cosine();
  clipped.max_gradient_norm = 0.1;
  Run s(W0, b0, scheduled), m(W0, b0, base), c(W0, b0, clipped), r(W0, b0, base);
  for (int t = 0; t < 10; ++t) {
    const Mat<double> a = rng.normal<double>(6, 4), g = rng.normal<double>(6, 3);
    const Mat<double> dW = rng.normal<double>(3, 4);
    const Vec<double> db = rng.normal<double>(3, 1);
    for (Run* run : {&s, &m, &c, &r}) {
      REQUIRE(run->filter.record_statistics(0, a, g) == kfopt::Status::Success);
      run->dW = dW;
      run->db = db;
    }
    const double norm = std::sqrt(static_cast<double>(
        static_cast<long double>(dW.squaredNorm()) + static_cast<long double>(db.squaredNorm())));
    REQUIRE(norm > 0.1);
    r.dW *= 0.1 / norm;
    r.db *= 0.1 / norm;
    m.filter.set_learning_rate(base.learning_rate * warmup_cosine()(t));
    for (Run* run : {&s, &m, &c, &r}) REQUIRE(run->filter.step() == kfopt::Status::Success);
    INFO("step " << t);
    REQUIRE(s.W == m.W);
    REQUIRE(s.b == m.b);
    CHECK(relative_error(dense_vec(c.W), dense_vec(r.W)) <= 1e-12);
    CHECK(relative_error(c.b, r.b) <= 1e-12);
  }
}
