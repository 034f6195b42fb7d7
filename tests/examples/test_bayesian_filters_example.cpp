// The helpers of the Bayesian-filter example (examples/common/filter_diagnostics.hpp):
// the per-example Fisher root against a brute-force sum, the running ⟨e²⟩ and its median,
// and the steady-state formulas of Aitchison (2018) §2.1.1–2.1.2 against the filters'
// recursions run to convergence.
#include <Eigen/Core>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <stdexcept>

#include "common/filter_diagnostics.hpp"

using namespace kfopt_examples;
using Matrix = Eigen::MatrixXd;
using Vector = Eigen::VectorXd;

TEST_CASE("per-example Fisher root: sqrt of the summed squared per-example gradients",
          "[examples][filters]") {
  std::mt19937 rng(3);
  std::normal_distribution<double> normal;
  const Eigen::Index m = 7, in = 5, out = 3;
  Matrix a(m, in), g(m, out);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = normal(rng);
  for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = normal(rng);
  Matrix eW, sa, sg;
  Vector eb;
  const double scale = 0.25;
  per_example_fisher_root<double>(a, g, scale, eW, eb, sa, sg);
  REQUIRE(eW.rows() == out);
  REQUIRE(eW.cols() == in);
  REQUIRE(eb.size() == out);
  for (Eigen::Index j = 0; j < out; ++j) {
    double bias = 0.0;
    for (Eigen::Index b = 0; b < m; ++b) bias += g(b, j) * g(b, j);
    CHECK(eb(j) == Approx(scale * std::sqrt(bias)).epsilon(1e-13));
    for (Eigen::Index i = 0; i < in; ++i) {
      double sum = 0.0;
      for (Eigen::Index b = 0; b < m; ++b) {
        const double per_example = g(b, j) * a(b, i);  // ∂ℓ_b/∂W_ji
        sum += per_example * per_example;
      }
      CHECK(eW(j, i) == Approx(scale * std::sqrt(sum)).epsilon(1e-13));
    }
  }
  Matrix wrong(m + 1, out);
  CHECK_THROWS_AS(per_example_fisher_root<double>(a, wrong, scale, eW, eb, sa, sg),
                  std::invalid_argument);
}

TEST_CASE("square average: bias-corrected mean of e^2, median over parameters skips zeros",
          "[examples][filters]") {
  SquareAverage<double> avg(0.9);
  CHECK(std::isnan(avg.median_root()));
  Matrix e0(2, 2), e1(3, 1);
  e0 << 1.0, 0.0, 3.0, 4.0;  // the 0 never becomes active and is left out
  e1 << 5.0, 6.0, 7.0;
  for (int t = 0; t < 5; ++t) {  // a constant stream: the corrected average is exactly e²
    avg.add(0, e0);
    avg.add(1, e1);
    avg.next_step();
  }
  // Values 1, 3, 4, 5, 6, 7: the upper median of six is the 4th smallest, 5.
  CHECK(avg.median_root() == Approx(5.0).epsilon(1e-12));
  CHECK_THROWS_AS(avg.add(1, e0), std::invalid_argument);
  CHECK_THROWS_AS(SquareAverage<double>(1.0), std::invalid_argument);
}

TEST_CASE("filter RMSProp: steady variance and averaging time match the scalar recursion",
          "[examples][filters]") {
  // The scalar filter (eq. 11-12) on a constant precision e² relaxes to the fixed point.
  const double eta = 1e-2, sigma2 = 0.5, e = 2.0;
  const double keep = 1.0 - eta * eta / (2.0 * sigma2);
  double prior = sigma2, post = 0.0;
  for (int t = 0; t < 20000; ++t) {
    post = prior / (1.0 + prior * e * e);  // update (eq. 12)
    prior = keep * keep * post + eta * eta;  // predict (eq. 11)
  }
  // The continuous-time fixed point (SI §4.1) is accurate to first order in η e = 0.02.
  CHECK(filter_steady_variance(eta, sigma2, e) == Approx(post).epsilon(0.03));
  CHECK(filter_steady_variance(eta, sigma2, e) != Approx(post).epsilon(1e-6));
  // σ² → ∞: η/sqrt⟨e²⟩; tiny σ²: σ² (SGD limit).
  CHECK(filter_steady_variance(eta, 1e12, e) == Approx(eta / e).epsilon(1e-9));
  CHECK(filter_steady_variance(eta, 1e-6, e) == Approx(1e-6).epsilon(1e-6));
  CHECK(filter_averaging_steps(1e-3, 0.5) == Approx(1000.0));
}

TEST_CASE("filter Adam: fraction of Adam's step in the steady state", "[examples][filters]") {
  for (double x : {1e-4, 1e-2, 1.0, 10.0, 1e4}) {
    const double y = filter_adam_step_fraction(x);
    CHECK(2.0 * y * (1.0 + std::sqrt(2.0 * x * y)) / x + y * y == Approx(1.0).epsilon(1e-10));
    CHECK(y > 0.0);
    CHECK(y < 1.0);
  }
  CHECK(filter_adam_step_fraction(1e-4) == Approx(0.5e-4).epsilon(1e-3));  // y ≈ x/2
  CHECK(filter_adam_step_fraction(1e6) == Approx(1.0).epsilon(3e-3));      // Adam
  CHECK(filter_adam_step_fraction(10.0) < filter_adam_step_fraction(100.0));
  CHECK(filter_adam_data_strength(1e-3, 0.1, 50.0) == Approx(0.5));
  CHECK_THROWS_AS(filter_adam_step_fraction(0.0), std::invalid_argument);
  CHECK_THROWS_AS(filter_adam_step_fraction(std::nan("")), std::invalid_argument);
}
