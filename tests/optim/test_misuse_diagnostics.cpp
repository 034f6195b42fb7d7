// Diagnostics of two silent misuses. (1) A Bayesian filter given the gradient of a mean loss
// without the likelihood scale S (S = 1) cannot move; State::posterior_contraction flags it
// (below kfopt::weak_likelihood_contraction) and does not flag the same run with S = N, on
// a logistic regression, for FilterRmsProp, FilterAdam, FilterFixedPoint and, through its
// loss reduction, KroneckerFilter. The contraction itself is checked against the variances
// before and after an update. (2) Kfac::check_statistics_scale tells a g of the right scale
// from one divided by the batch size.
#include <catch2/catch.hpp>
#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/bayes_filter/filter_fixed_point.hpp>
#include <kfopt/optim/bayes_filter/filter_rmsprop.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// Logistic regression: n examples of d features, labels from a random w*.
struct Logistic {
  Mat<double> X;
  Vec<double> y;
  Logistic(int n, int d, unsigned seed) {
    Rng rng(seed);
    X = rng.normal<double>(n, d);
    const Vec<double> w_true = rng.normal<double>(d, 1);
    const Vec<double> z = X * w_true / std::sqrt(static_cast<double>(d));
    y = (z.array() > 0.0).cast<double>().matrix();
  }
  Vec<double> probabilities(const Vec<double>& w) const {
    return (1.0 / (1.0 + (-(X * w).array()).exp())).matrix();
  }
  double loss(const Vec<double>& w) const {
    const Vec<double> p = probabilities(w);
    double l = 0.0;
    for (Eigen::Index i = 0; i < y.size(); ++i) l -= y(i) > 0.5 ? std::log(p(i)) : std::log(1.0 - p(i));
    return l / static_cast<double>(y.size());
  }
  // Gradient of the mean loss.
  Vec<double> gradient(const Vec<double>& w) const {
    return X.transpose() * (probabilities(w) - y) / static_cast<double>(y.size());
  }
};

struct Trace {
  double first_loss = 0.0, last_loss = 0.0;
  double smallest = std::numeric_limits<double>::infinity(), largest = 0.0;
};

// 40 full-batch steps of an element-wise filter on S · ∇(mean loss).
template <template <typename> class Filter, typename Options>
Trace run_filter(const Logistic& task, Options options, double S) {
  Vec<double> w = Vec<double>::Zero(task.X.cols()), dw = w;
  kfopt::ParameterSet<double> params;
  params.add("w", w, dw);
  Filter<double> filter(params, options);
  CHECK(std::isnan(filter.state().posterior_contraction));  // no update yet
  Trace t;
  t.first_loss = task.loss(w);
  for (int step = 0; step < 40; ++step) {
    dw = S * task.gradient(w);
    REQUIRE(filter.step() == kfopt::Status::Success);
    const double c = filter.state().posterior_contraction;
    REQUIRE(c >= 0.0);
    REQUIRE(c <= 1.0);
    t.smallest = std::min(t.smallest, c);
    t.largest = std::max(t.largest, c);
  }
  t.last_loss = task.loss(w);
  return t;
}

template <template <typename> class Filter, typename Options>
void check_flags_weak_likelihood(const char* name, Options options) {
  const Logistic task(400, 100, 3);
  const double N = static_cast<double>(task.y.size());
  const Trace weak = run_filter<Filter>(task, options, 1.0);
  const Trace healthy = run_filter<Filter>(task, options, N);
  INFO(name << ": S = 1: contraction " << weak.smallest << " .. " << weak.largest << ", loss "
            << weak.first_loss << " -> " << weak.last_loss << "; S = N: contraction "
            << healthy.smallest << " .. " << healthy.largest << ", loss " << healthy.first_loss
            << " -> " << healthy.last_loss);
  CHECK(weak.largest < kfopt::weak_likelihood_contraction);      // flagged at every step
  CHECK(healthy.smallest > kfopt::weak_likelihood_contraction);  // never flagged
  // And the flag means what it says: with S = 1 the loss hardly moves.
  CHECK(weak.first_loss - weak.last_loss < 0.1 * (healthy.first_loss - healthy.last_loss));
}

}  // namespace

TEST_CASE("Bayesian filters: the posterior contraction flags a likelihood scale S that is too "
          "small and not a healthy one", "[optim][filter][diagnostics]") {
  kfopt::FilterRmsPropOptions rms;
  rms.learning_rate = 1e-3;
  check_flags_weak_likelihood<kfopt::FilterRmsProp>("FilterRmsProp", rms);
  kfopt::FilterAdamOptions adam;
  adam.learning_rate = 1e-2;
  check_flags_weak_likelihood<kfopt::FilterAdam>("FilterAdam", adam);
  check_flags_weak_likelihood<kfopt::FilterFixedPoint>(
      "FilterFixedPoint", kfopt::FilterFixedPointOptions::adamw(1e-2, 0.01));
}

TEST_CASE("Bayesian filters: the posterior contraction is 1 - sum of posterior variances / "
          "sum of prior variances of the update", "[optim][filter][diagnostics]") {
  Rng rng(5);
  Mat<double> W = rng.normal<double>(4, 3), dW = rng.normal<double>(4, 3);
  Vec<double> b = rng.normal<double>(4, 1), db = rng.normal<double>(4, 1);
  kfopt::ParameterSet<double> params;
  params.add("W", W, dW);
  params.add("b", b, db);
  kfopt::FilterRmsPropOptions o;
  o.initial_variance = 0.3;
  kfopt::FilterRmsProp<double> rms(params, o);
  double prior = 0.0;
  for (const auto& v : rms.variance()) prior += v.sum();
  REQUIRE(rms.update() == kfopt::Status::Success);
  double posterior = 0.0;  // the Posterior phase holds σ²_post
  for (const auto& v : rms.variance()) posterior += v.sum();
  CHECK(rms.state().posterior_contraction == Approx(1.0 - posterior / prior).epsilon(1e-12));
  // By hand for one parameter: σ²_post = σ²/(1 + σ² e²) with e = ∇.
  const double e = dW(0, 0), s2 = 0.3;
  CHECK(rms.variance()[0](0, 0) == Approx(s2 / (1 + s2 * e * e)).epsilon(1e-14));

  // FilterAdam: Σ_ww before and after the update.
  kfopt::FilterAdamOptions ao;
  ao.initial_weight_variance = 0.2;
  kfopt::FilterAdam<double> adam(params, ao);
  double ww_prior = 0.0;
  for (const auto& v : adam.state().weight_variance) ww_prior += v.sum();
  REQUIRE(adam.update() == kfopt::Status::Success);
  double ww_post = 0.0;
  for (const auto& v : adam.state().weight_variance) ww_post += v.sum();
  CHECK(adam.state().posterior_contraction == Approx(1.0 - ww_post / ww_prior).epsilon(1e-12));
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

TEST_CASE("KroneckerFilter: the posterior contraction flags a mean-loss gradient declared as a "
          "summed one", "[optim][kronecker_filter][diagnostics]") {
  // A linear softmax-free layer s = W a on least squares: with LossReduction::Mean the
  // filter scales the mean-loss gradient by the batch size; declaring it Sum makes the
  // likelihood k times too weak.
  const int k = 400, in = 30, out = 4;
  Rng rng(9);
  const Mat<double> A = rng.normal<double>(k, in);
  const Mat<double> W_true = rng.normal<double>(out, in);
  const Mat<double> Y = A * W_true.transpose();
  auto run = [&](kfopt::LossReduction reduction) {
    Mat<double> W = Mat<double>::Zero(out, in), dW = W;
    kfopt::KroneckerFilterOptions o = kfopt::KroneckerFilterOptions::whitening(1e-3, 0.05);
    o.loss_reduction = reduction;
    kfopt::KroneckerFilter<double> filter(o);
    filter.add_dense_layer("fc", W, dW);
    double largest = 0.0, smallest = 1.0;
    for (int step = 0; step < 20; ++step) {
      const Mat<double> G = A * W.transpose() - Y;  // per-example gradients w.r.t. s
      dW = G.transpose() * A / static_cast<double>(k);  // of the mean loss
      REQUIRE(filter.record_statistics(0, A, G) == kfopt::Status::Success);
      REQUIRE(filter.step() == kfopt::Status::Success);
      largest = std::max(largest, filter.state().posterior_contraction);
      smallest = std::min(smallest, filter.state().posterior_contraction);
    }
    return std::make_pair(smallest, largest);
  };
  const auto right = run(kfopt::LossReduction::Mean);
  const auto wrong = run(kfopt::LossReduction::Sum);
  INFO("Mean: " << right.first << " .. " << right.second << "; Sum: " << wrong.first << " .. "
                << wrong.second);
  CHECK(right.first > kfopt::weak_likelihood_contraction);
  CHECK(wrong.second < kfopt::weak_likelihood_contraction);
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
