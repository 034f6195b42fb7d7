// Step cost of the extended Kalman filter and the online natural gradient:
// d ∈ {10, 100, 1000}, a scalar observation (Bernoulli, logit z = xᵀθ) and a k = 10
// dimensional one (Gaussian), in each update form. The counter ns_per_d2 is the step time
// over d²: flat across d means the O(d²) (O(k d²)) cost the headers state.
//
// Run: bench_ekf [--benchmark_min_time=0.2]
// Built without NDEBUG, every timed step also runs with Eigen's heap allocation forbidden
// (EIGEN_RUNTIME_NO_MALLOC): an allocation in the per-step path aborts the benchmark.
#define EIGEN_RUNTIME_NO_MALLOC
#include <benchmark/benchmark.h>

#include <kfopt/filter/observation_models.hpp>
#include <kfopt/optim/kalman/extended_kalman_filter.hpp>
#include <kfopt/optim/kalman/online_natural_gradient.hpp>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <ctime>
#include <vector>

namespace {

using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;
constexpr int kInputs = 16;  // a small cycle of precomputed inputs

// Step CPU time divided by d², in ns (process CPU time of the timed loop over its
// iterations; CPU rather than wall time because the benchmark machines are shared).
class PerD2 {
 public:
  explicit PerD2(Eigen::Index d) : d_(d), start_(std::clock()) {}
  void report(benchmark::State& state) const {
    const double ns = 1e9 * static_cast<double>(std::clock() - start_) / CLOCKS_PER_SEC;
    const double iters = std::max<double>(1.0, static_cast<double>(state.iterations()));
    state.counters["ns_per_d2"] = ns / iters / (static_cast<double>(d_) * static_cast<double>(d_));
  }

 private:
  Eigen::Index d_;
  std::clock_t start_;
};

struct NoMalloc {
  NoMalloc() { Eigen::internal::set_is_malloc_allowed(false); }
  ~NoMalloc() { Eigen::internal::set_is_malloc_allowed(true); }
};

template <template <typename> class Optimizer, kfopt::KalmanForm Form>
void BM_ScalarObservation(benchmark::State& state) {
  using Model = kfopt::BernoulliObservation<double>;
  const Eigen::Index d = state.range(0);
  const Mat X = Mat::Random(kInputs, d) / std::sqrt(double(d));
  Vec theta = Vec::Zero(d);
  Vec z(1);
  typename Optimizer<Model>::Hyperparameters hp;
  hp.form = Form;
  Optimizer<Model> opt(Model(), Mat::Identity(d, d), hp);
  Mat x = X.row(0);
  z(0) = 0;
  opt.step(theta, z, x, 1.0);  // the first step sizes the workspaces
  long t = 1;
  const PerD2 timer(d);
  for (auto _ : state) {
    x = X.row(t % kInputs);
    z(0) = x.row(0).dot(theta);
    const double y = (t % 3 == 0) ? 1.0 : 0.0;
    NoMalloc guard;
    benchmark::DoNotOptimize(opt.step(theta, z, x, y));
    ++t;
  }
  timer.report(state);
}

template <template <typename> class Optimizer, kfopt::KalmanForm Form>
void BM_VectorObservation(benchmark::State& state) {
  using Model = kfopt::GaussianObservation<double>;
  const Eigen::Index d = state.range(0), k = 10;
  std::vector<Mat> H;
  for (int i = 0; i < kInputs; ++i) H.push_back(Mat::Random(k, d) / std::sqrt(double(d)));
  const Vec y = Vec::Random(k);
  Vec theta = Vec::Zero(d);
  Vec z(k);
  typename Optimizer<Model>::Hyperparameters hp;
  hp.form = Form;
  Optimizer<Model> opt(Model(k, 1.0), Mat::Identity(d, d), hp);
  z.noalias() = H[0] * theta;
  opt.step(theta, z, H[0], y);  // the first step sizes the workspaces
  long t = 1;
  const PerD2 timer(d);
  for (auto _ : state) {
    const Mat& Ht = H[t % kInputs];
    z.noalias() = Ht * theta;
    NoMalloc guard;
    benchmark::DoNotOptimize(opt.step(theta, z, Ht, y));
    ++t;
  }
  timer.report(state);
  state.counters["k"] = static_cast<double>(k);
}

template <typename M>
using Ekf = kfopt::ExtendedKalmanFilter<M>;
template <typename M>
using Ng = kfopt::OnlineNaturalGradient<M>;
constexpr auto kCov = kfopt::KalmanForm::Covariance;
constexpr auto kJoseph = kfopt::KalmanForm::Joseph;
constexpr auto kInfo = kfopt::KalmanForm::Information;

}  // namespace

BENCHMARK_TEMPLATE(BM_ScalarObservation, Ekf, kCov)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_ScalarObservation, Ekf, kJoseph)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_ScalarObservation, Ekf, kInfo)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_ScalarObservation, Ng, kCov)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_ScalarObservation, Ng, kInfo)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_VectorObservation, Ekf, kCov)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_VectorObservation, Ekf, kJoseph)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_VectorObservation, Ekf, kInfo)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_VectorObservation, Ng, kCov)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK_TEMPLATE(BM_VectorObservation, Ng, kInfo)->Arg(10)->Arg(100)->Arg(1000);

BENCHMARK_MAIN();
