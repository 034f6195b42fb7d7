// Diagnostics of two silent misuses. (1) A Bayesian filter given the gradient of a mean loss
// without the likelihood scale S (S = 1) stays in its prior: FilterAdam does not move at all
// (the loss stays at log 10 on a ten-class softmax regression), the others are slow SGD.
// State::posterior_contraction flags it (below kfopt::weak_likelihood_contraction at every
// step) and does not flag the same run with S = N (after the first steps), for FilterAdam,
// FilterRmsProp, FilterFixedPoint and, through its loss reduction, KroneckerFilter. The
// contraction itself is checked against the variances the filters expose. (2)
// Kfac::check_statistics_scale tells a g of the right scale from one divided by the batch.
#include <catch2/catch.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/bayes_filter/filter_fixed_point.hpp>
#include <kfopt/optim/bayes_filter/filter_rmsprop.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// Softmax regression: n examples of d features, 10 classes from a random linear teacher.
struct Softmax {
  static constexpr int classes = 10;
  Mat<double> X, Y;  // inputs, one-hot labels
  Softmax(int n, int d, unsigned seed) {
    Rng rng(seed);
    X = rng.normal<double>(n, d);
    const Mat<double> teacher = rng.normal<double>(d, classes);
    const Mat<double> z = X * teacher;
    Y = Mat<double>::Zero(n, classes);
    for (Eigen::Index i = 0; i < n; ++i) {
      Eigen::Index c = 0;
      z.row(i).maxCoeff(&c);
      Y(i, c) = 1.0;
    }
  }
  Mat<double> probabilities(const Mat<double>& W) const {  // W is d × classes
    Mat<double> p = X * W;
    for (Eigen::Index i = 0; i < p.rows(); ++i) {
      p.row(i).array() = (p.row(i).array() - p.row(i).maxCoeff()).exp();
      p.row(i) /= p.row(i).sum();
    }
    return p;
  }
  double loss(const Mat<double>& W) const {
    return -(Y.array() * probabilities(W).array().log()).sum() / static_cast<double>(X.rows());
  }
  // Gradient of the mean loss.
  Mat<double> gradient(const Mat<double>& W) const {
    return X.transpose() * (probabilities(W) - Y) / static_cast<double>(X.rows());
  }
};

struct Trace {
  double first_loss = 0.0, last_loss = 0.0;
  double smallest = std::numeric_limits<double>::infinity(), largest = -1.0;
};

constexpr int kSteps = 60;
constexpr int kFirstSteps = 3;  // a healthy run's contraction may still be rising

// kSteps full-batch steps of an element-wise filter on S · ∇(mean loss); the contraction's
// range over the steps after the first kFirstSteps (S = N) or over all steps (S = 1).
template <template <typename> class Filter, typename Options>
Trace run_filter(const Softmax& task, Options options, double S) {
  Mat<double> W = Mat<double>::Zero(task.X.cols(), Softmax::classes), dW = W;
  kfopt::ParameterSet<double> params;
  params.add("W", W, dW);
  Filter<double> filter(params, options);
  CHECK(std::isnan(filter.state().posterior_contraction));  // no update yet
  Trace t;
  t.first_loss = task.loss(W);
  for (int step = 0; step < kSteps; ++step) {
    dW = S * task.gradient(W);
    REQUIRE(filter.step() == kfopt::Status::Success);
    const double c = filter.state().posterior_contraction;
    REQUIRE(c <= 1.0);
    if (S == 1.0 || step >= kFirstSteps) {
      t.smallest = std::min(t.smallest, c);
      t.largest = std::max(t.largest, c);
    }
  }
  t.last_loss = task.loss(W);
  return t;
}

template <template <typename> class Filter, typename Options>
std::pair<Trace, Trace> check_flags_weak_likelihood(const char* name, Options options) {
  const Softmax task(2000, 20, 3);
  const double N = static_cast<double>(task.X.rows());
  const Trace weak = run_filter<Filter>(task, options, 1.0);
  const Trace healthy = run_filter<Filter>(task, options, N);
  INFO(name << ": S = 1: contraction " << weak.smallest << " .. " << weak.largest << ", loss "
            << weak.first_loss << " -> " << weak.last_loss << "; S = N: contraction "
            << healthy.smallest << " .. " << healthy.largest << ", loss " << healthy.first_loss
            << " -> " << healthy.last_loss);
  CHECK(weak.largest < kfopt::weak_likelihood_contraction);      // flagged at every step
  CHECK(healthy.smallest > kfopt::weak_likelihood_contraction);  // not after the first steps
  CHECK(healthy.last_loss < 0.8 * healthy.first_loss);           // and that run trains
  return {weak, healthy};
}

}  // namespace

TEST_CASE("Bayesian filters: the posterior contraction flags a likelihood scale S that is too "
          "small and not a healthy one", "[optim][filter][diagnostics]") {
  kfopt::FilterAdamOptions adam;
  adam.learning_rate = 1e-2;
  const auto runs = check_flags_weak_likelihood<kfopt::FilterAdam>("FilterAdam", adam);
  // The stuck regime the flag reports: with S = 1 FilterAdam's loss stays near log 10 (it
  // falls by less than 1% of the S = N run's fall).
  CHECK(runs.first.first_loss == Approx(std::log(10.0)).epsilon(1e-12));
  CHECK(runs.first.first_loss - runs.first.last_loss <
        0.01 * (runs.second.first_loss - runs.second.last_loss));
  kfopt::FilterRmsPropOptions rms;
  rms.learning_rate = 1e-2;
  check_flags_weak_likelihood<kfopt::FilterRmsProp>("FilterRmsProp", rms);
  check_flags_weak_likelihood<kfopt::FilterFixedPoint>(
      "FilterFixedPoint", kfopt::FilterFixedPointOptions::adamw(1e-2, 0.01));
}

TEST_CASE("Bayesian filters: the posterior contraction is 1 - sum of posterior variances / "
          "(P sigma^2)", "[optim][filter][diagnostics]") {
  Rng rng(5);
  Mat<double> W = rng.normal<double>(4, 3), dW = rng.normal<double>(4, 3);
  Vec<double> b = rng.normal<double>(4, 1), db = rng.normal<double>(4, 1);
  kfopt::ParameterSet<double> params;
  params.add("W", W, dW);
  params.add("b", b, db);
  const double P = 16.0;
  kfopt::FilterRmsPropOptions o;
  o.prior_variance = 0.2;
  o.initial_variance = 0.3;
  kfopt::FilterRmsProp<double> rms(params, o);
  REQUIRE(rms.update() == kfopt::Status::Success);
  double posterior = 0.0;  // the Posterior phase holds σ²_post
  for (const auto& v : rms.variance()) posterior += v.sum();
  CHECK(rms.state().posterior_contraction == Approx(1.0 - posterior / (P * 0.2)).epsilon(1e-12));
  // By hand for one parameter: σ²_post = σ²/(1 + σ² e²) with e = ∇.
  const double e = dW(0, 0), s2 = 0.3;
  CHECK(rms.variance()[0](0, 0) == Approx(s2 / (1 + s2 * e * e)).epsilon(1e-14));

  // FilterAdam: Σ_ww after the update, against P σ².
  kfopt::FilterAdamOptions ao;
  ao.prior_variance = 0.1;
  ao.initial_weight_variance = 0.2;
  kfopt::FilterAdam<double> adam(params, ao);
  REQUIRE(adam.update() == kfopt::Status::Success);
  double ww_post = 0.0;
  for (const auto& v : adam.state().weight_variance) ww_post += v.sum();
  CHECK(adam.state().posterior_contraction == Approx(1.0 - ww_post / (P * 0.1)).epsilon(1e-12));
  // step() (update and prediction fused) reports the update's contraction, bit for bit.
  Mat<double> W2 = W, dW2 = dW;
  Vec<double> b2 = b, db2 = db;
  Mat<double> W3 = W, dW3 = dW;
  Vec<double> b3 = b, db3 = db;
  kfopt::ParameterSet<double> p2, p3;
  p2.add("W", W2, dW2);
  p2.add("b", b2, db2);
  p3.add("W", W3, dW3);
  p3.add("b", b3, db3);
  kfopt::FilterAdam<double> separate(p2, ao), fused(p3, ao);
  REQUIRE(separate.update() == kfopt::Status::Success);
  REQUIRE(fused.step() == kfopt::Status::Success);
  CHECK(fused.state().posterior_contraction == separate.state().posterior_contraction);
}

TEST_CASE("KroneckerFilter: the posterior contraction is 1 - tr(Sx) tr(Sd) / (P sigma^2) and "
          "flags statistics g divided by the batch size until the filter catches up",
          "[optim][kronecker_filter][diagnostics]") {
  // A linear layer s = W a on least squares. Its covariance update reads the recorded
  // statistics, whose g must be one example's gradient: divided by the batch size k, the
  // first updates barely inform the filter.
  const int k = 400, in = 30, out = 4;
  Rng rng(9);
  const Mat<double> A = rng.normal<double>(k, in);
  const Mat<double> W_true = rng.normal<double>(out, in);
  const Mat<double> Y = A * W_true.transpose();
  auto run = [&](double divisor) {
    Mat<double> W = Mat<double>::Zero(out, in), dW = W;
    kfopt::KroneckerFilter<double> filter(kfopt::KroneckerFilterOptions::whitening(1e-3, 0.05));
    filter.add_dense_layer("fc", W, dW);
    std::vector<double> contraction;
    for (int step = 0; step < 20; ++step) {
      const Mat<double> G = A * W.transpose() - Y;  // per-example gradients w.r.t. s
      dW = G.transpose() * A / static_cast<double>(k);  // of the mean loss
      REQUIRE(filter.record_statistics(0, A, G / divisor) == kfopt::Status::Success);
      REQUIRE(filter.update() == kfopt::Status::Success);
      const auto& cov = filter.covariance(0);  // the posterior's factors
      const double expected = 1.0 - cov.input_factor().trace() * cov.output_factor().trace() /
                                        (static_cast<double>(in * out) * 0.05);
      REQUIRE(filter.state().posterior_contraction == Approx(expected).epsilon(1e-12));
      contraction.push_back(filter.state().posterior_contraction);
      REQUIRE(filter.predict() == kfopt::Status::Success);
    }
    return contraction;
  };
  const std::vector<double> right = run(1.0), wrong = run(static_cast<double>(k));
  INFO("g: " << right.front() << " -> " << right.back() << "; g / k: " << wrong.front() << " -> "
             << wrong.back());
  CHECK(*std::min_element(right.begin() + kFirstSteps, right.end()) >
        kfopt::weak_likelihood_contraction);
  CHECK(wrong.front() < 0.01);                                 // flagged at first,
  CHECK(wrong.back() > kfopt::weak_likelihood_contraction);    // until the filter catches up
}

TEST_CASE("Kfac::check_statistics_scale tells g of the right scale from g divided by the batch",
          "[optim][kfac][diagnostics]") {
  const int k = 64, in = 5, out = 3;
  Rng rng(13);
  Mat<double> W = rng.normal<double>(out, in), dW(out, in);
  Vec<double> b = rng.normal<double>(out, 1), db(out);
  kfopt::Kfac<double> kfac;
  const auto id = kfac.add_dense_layer("fc", W, dW, b, db);
  const Mat<double> a = rng.normal<double>(k, in);
  const Mat<double> g = rng.normal<double>(k, out);  // per-example gradients w.r.t. s
  dW = g.transpose() * a / static_cast<double>(k);  // the mean-loss gradient they give
  db = g.colwise().sum().transpose() / static_cast<double>(k);
  const auto right = kfac.check_statistics_scale(id, a, g);
  CHECK(right.ratio == Approx(1.0).epsilon(1e-12));
  CHECK(right.cosine == Approx(1.0).epsilon(1e-12));
  CHECK(right.scale_matches);
  const Mat<double> divided = g / static_cast<double>(k);
  const auto wrong = kfac.check_statistics_scale(id, a, divided);
  CHECK(wrong.ratio == Approx(static_cast<double>(k)).epsilon(1e-12));
  CHECK(wrong.cosine == Approx(1.0).epsilon(1e-12));
  CHECK_FALSE(wrong.scale_matches);
  // Model-sampled targets: the cosine drops, the scale is still near 1 only by chance.
  const auto sampled = kfac.check_statistics_scale(id, a, rng.normal<double>(k, out));
  CHECK(std::abs(sampled.cosine) < 0.9);
  // Nothing changed; bad shapes and a recurrent layer are refused with the layer named.
  CHECK(kfac.state().counters.steps == 0);
  CHECK_THROWS_WITH(kfac.check_statistics_scale(id, a.leftCols(4), g),
                    Catch::Contains("kfopt::Kfac::check_statistics_scale (layer 'fc')") &&
                        Catch::Contains("a is 64x4"));
  Mat<double> R = rng.normal<double>(3, 3), dR = R;
  const auto rid = kfac.add_recurrent_layer("rnn", R, dR);
  CHECK_THROWS_WITH(kfac.check_statistics_scale(rid, a, g), Catch::Contains("recurrent"));
}
