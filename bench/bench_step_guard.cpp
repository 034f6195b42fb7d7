// Cost of the transactional step guard (core/step_guard.hpp): the guarded step of Sgd
// (momentum 0.9), Adam, RmsProp and FilterAdam (update + predict) as shipped, against an
// unguarded reference that computes the same update in place with no checks (the textbook
// Eigen expressions, one pass over memory; FilterAdam: its update and prediction in one
// vectorized pass, written below), for float and double, 10⁴ and 10⁶ parameters.
//
// Both run in the same benchmark, interleaved step by step (the order alternates), on two
// identical models, so the ratio guarded/unguarded comes from one run on the same machine
// state. Counters: guarded_us and unguarded_us (mean step time, thread CPU time; each timed
// half runs max(1, 2·10⁵/n) steps) and ratio = guarded_us / unguarded_us.
// Single thread (no OpenMP in this target).
//
// Run: bench_step_guard [--benchmark_repetitions=5 --benchmark_report_aggregates_only=true]
#include <benchmark/benchmark.h>

#include <kfopt/optim/bayes_filter/filter_adam.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/first_order/rmsprop.hpp>
#include <kfopt/optim/first_order/sgd.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

namespace {

template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

// A model of `n` parameters in one block (a square-ish matrix), a fixed gradient.
template <typename Scalar>
struct Model {
  explicit Model(Eigen::Index n) {
    const auto rows = static_cast<Eigen::Index>(std::sqrt(static_cast<double>(n)));
    value = Matrix<Scalar>::Random(rows, n / rows);
    gradient = Matrix<Scalar>::Random(rows, n / rows);
    params.add("w", value, gradient);
  }
  Matrix<Scalar> value, gradient;
  kfopt::ParameterSet<Scalar> params;
};

// The unguarded references: the textbook update, in place, as Eigen array expressions over
// chunks of kChunk elements (so the statements of one chunk share cached data and the whole
// update is one pass over memory, vectorized, sqrt included).
constexpr Eigen::Index kChunk = 1024;

template <typename Scalar>
using Span = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
template <typename Scalar>
using ConstSpan = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

// Calls f(offset, length) for the chunks of [0, n).
template <typename F>
void chunks(Eigen::Index n, F&& f) {
  for (Eigen::Index o = 0; o < n; o += kChunk) f(o, std::min(kChunk, n - o));
}

template <typename Scalar>
struct SgdReference {
  explicit SgdReference(Model<Scalar>& m) : model(m), b(Matrix<Scalar>::Zero(m.value.rows(), m.value.cols())) {}
  void step() {
    const Scalar lr = Scalar(0.01), mu = Scalar(0.9);
    chunks(model.value.size(), [&](Eigen::Index o, Eigen::Index n) {
      Span<Scalar> p(model.value.data() + o, n), bb(b.data() + o, n);
      const ConstSpan<Scalar> g(model.gradient.data() + o, n);
      bb = mu * bb + g;
      p -= lr * bb;
    });
  }
  Model<Scalar>& model;
  Matrix<Scalar> b;
};

template <typename Scalar>
struct AdamReference {
  explicit AdamReference(Model<Scalar>& mod)
      : model(mod), m(Matrix<Scalar>::Zero(mod.value.rows(), mod.value.cols())), v(m) {}
  void step() {
    const double b1 = 0.9, b2 = 0.999;
    ++t;
    const Scalar step_size = static_cast<Scalar>(1e-3 / (1.0 - std::pow(b1, t)));
    const Scalar inv_sqrt_bc2 = static_cast<Scalar>(1.0 / std::sqrt(1.0 - std::pow(b2, t)));
    const Scalar c1 = static_cast<Scalar>(b1), c2 = static_cast<Scalar>(b2), eps = Scalar(1e-8);
    chunks(model.value.size(), [&](Eigen::Index o, Eigen::Index n) {
      Span<Scalar> p(model.value.data() + o, n), mm(m.data() + o, n), vv(v.data() + o, n);
      const ConstSpan<Scalar> g(model.gradient.data() + o, n);
      mm = c1 * mm + (Scalar(1) - c1) * g;
      vv = c2 * vv + (Scalar(1) - c2) * g.square();
      p -= step_size * mm / (vv.sqrt() * inv_sqrt_bc2 + eps);
    });
  }
  Model<Scalar>& model;
  Matrix<Scalar> m, v;
  double t = 0;
};

template <typename Scalar>
struct RmsPropReference {
  explicit RmsPropReference(Model<Scalar>& m) : model(m), v(Matrix<Scalar>::Zero(m.value.rows(), m.value.cols())) {}
  void step() {
    const Scalar a = Scalar(0.99), lr = Scalar(0.01), eps = Scalar(1e-8);
    chunks(model.value.size(), [&](Eigen::Index o, Eigen::Index n) {
      Span<Scalar> p(model.value.data() + o, n), vv(v.data() + o, n);
      const ConstSpan<Scalar> g(model.gradient.data() + o, n);
      vv = a * vv + (Scalar(1) - a) * g.square();
      p -= lr * g / (vv.sqrt() + eps);
    });
  }
  Model<Scalar>& model;
  Matrix<Scalar> v;
};

// FilterAdam's step is its data update (eq. 7, 6) then its prediction (eq. 3, 16): the
// reference runs both in one pass over the elements, in place, vectorized with the same lane
// formulas as the optimizer (core/lanes.hpp, filter/elementwise_filter.hpp) — the guarded
// step's arithmetic once, with no check. Compiled against headers without core/lanes.hpp
// (the step before the transactional guard, bench/README.md), it runs the two scalar loops.
template <typename Scalar>
struct FilterAdamReference {
  explicit FilterAdamReference(Model<Scalar>& mod, const kfopt::FilterAdamOptions& o)
      : model(mod),
        drift(kfopt::MomentumDrift<Scalar>::from(o.learning_rate, o.momentum_rate, o.weight_noise,
                                                 o.prior_variance)),
        m(Matrix<Scalar>::Zero(mod.value.rows(), mod.value.cols())),
        ww(Matrix<Scalar>::Constant(m.rows(), m.cols(), static_cast<Scalar>(o.prior_variance))),
        wp(Matrix<Scalar>::Zero(m.rows(), m.cols())),
        pp(Matrix<Scalar>::Constant(m.rows(), m.cols(),
                                    static_cast<Scalar>(o.momentum_rate / (2.0 - o.momentum_rate)))) {}
  void step() {
    Scalar* p = model.value.data();
    const Scalar* g = model.gradient.data();
    const Eigen::Index n = model.value.size();
#if __has_include(<kfopt/core/lanes.hpp>)
    namespace d = kfopt::detail;
    d::LaneCounter<Scalar> clamps;
    d::for_each_lane<Scalar>(n, [&](Eigen::Index k, auto lane) {
      using T = decltype(lane);
      kfopt::WeightMomentumCovariance<T> c{d::lane_load<T>(ww.data() + k), d::lane_load<T>(wp.data() + k),
                                           d::lane_load<T>(pp.data() + k)};
      const T grad = d::lane_load<T>(g + k);
      T mean_w = d::lane_load<T>(p + k), mean_p = d::lane_load<T>(m.data() + k);
      clamps.add(kfopt::momentum_filter_update(c, grad));
      const T step_p = c.wp * grad;
      mean_p = mean_p - step_p;
      clamps.add(kfopt::momentum_filter_predict(drift, mean_w, mean_p, c));
      d::lane_store(p + k, mean_w);
      d::lane_store(m.data() + k, mean_p);
      d::lane_store(ww.data() + k, c.ww);
      d::lane_store(wp.data() + k, c.wp);
      d::lane_store(pp.data() + k, c.pp);
    });
    clamped += clamps.total();
#else
    for (Eigen::Index k = 0; k < n; ++k) {
      kfopt::WeightMomentumCovariance<Scalar> c{ww.data()[k], wp.data()[k], pp.data()[k]};
      clamped += kfopt::momentum_filter_update(c, g[k]);
      ww.data()[k] = c.ww;
      wp.data()[k] = c.wp;
      pp.data()[k] = c.pp;
      m.data()[k] -= c.wp * g[k];
    }
    for (Eigen::Index k = 0; k < n; ++k) {
      kfopt::WeightMomentumCovariance<Scalar> c{ww.data()[k], wp.data()[k], pp.data()[k]};
      clamped += kfopt::momentum_filter_predict(drift, p[k], m.data()[k], c);
      ww.data()[k] = c.ww;
      wp.data()[k] = c.wp;
      pp.data()[k] = c.pp;
    }
#endif
  }
  Model<Scalar>& model;
  kfopt::MomentumDrift<Scalar> drift;
  Matrix<Scalar> m, ww, wp, pp;
  std::int64_t clamped = 0;
};

template <typename Scalar>
kfopt::SgdOptions sgd_options() {
  kfopt::SgdOptions o;
  o.momentum = 0.9;
  return o;
}

template <typename Scalar> struct SgdPair {
  static const char* name() { return "sgd_momentum"; }
  SgdPair(Model<Scalar>& a, Model<Scalar>& b) : guarded(a.params, sgd_options<Scalar>()), reference(b) {}
  kfopt::Sgd<Scalar> guarded;
  SgdReference<Scalar> reference;
};
template <typename Scalar> struct AdamPair {
  static const char* name() { return "adam"; }
  AdamPair(Model<Scalar>& a, Model<Scalar>& b) : guarded(a.params), reference(b) {}
  kfopt::Adam<Scalar> guarded;
  AdamReference<Scalar> reference;
};
template <typename Scalar> struct RmsPropPair {
  static const char* name() { return "rmsprop"; }
  RmsPropPair(Model<Scalar>& a, Model<Scalar>& b) : guarded(a.params), reference(b) {}
  kfopt::RmsProp<Scalar> guarded;
  RmsPropReference<Scalar> reference;
};
template <typename Scalar> struct FilterAdamPair {
  static const char* name() { return "filter_adam"; }
  FilterAdamPair(Model<Scalar>& a, Model<Scalar>& b)
      : guarded(a.params), reference(b, kfopt::FilterAdamOptions{}) {}
  kfopt::FilterAdam<Scalar> guarded;
  FilterAdamReference<Scalar> reference;
};

// CPU time of the calling thread, in seconds (the machines are shared: wall time would
// count other processes' time slices).
double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

template <template <typename> class Pair, typename Scalar>
void BM_Guard(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  // Steps per timed half: enough for ~10⁵ parameter updates, so the clock's cost is noise.
  const int repeat = static_cast<int>(std::max<Eigen::Index>(1, 200000 / n));
  Model<Scalar> a(n), b(n);
  Pair<Scalar> pair(a, b);
  // First steps outside the timing (Sgd's first momentum step differs from the later ones).
  if (pair.guarded.step() != kfopt::Status::Success) state.SkipWithError("guarded step refused");
  pair.reference.step();
  double guarded_s = 0, reference_s = 0;
  std::int64_t refused = 0;
  bool guarded_first = true;
  for (auto _ : state) {
    for (int half = 0; half < 2; ++half) {
      const double t0 = thread_seconds();
      if (guarded_first == (half == 0)) {
        for (int r = 0; r < repeat; ++r) refused += pair.guarded.step() != kfopt::Status::Success;
        guarded_s += thread_seconds() - t0;
      } else {
        for (int r = 0; r < repeat; ++r) pair.reference.step();
        reference_s += thread_seconds() - t0;
      }
    }
    guarded_first = !guarded_first;
    benchmark::DoNotOptimize(a.value.data());
    benchmark::DoNotOptimize(b.value.data());
    benchmark::ClobberMemory();
  }
  if (refused != 0) state.SkipWithError("a guarded step was refused");
  const double steps = static_cast<double>(state.iterations()) * repeat;
  state.counters["guarded_us"] = 1e6 * guarded_s / steps;
  state.counters["unguarded_us"] = 1e6 * reference_s / steps;
  state.counters["ratio"] = guarded_s / reference_s;
}

template <template <typename> class Pair, typename Scalar>
void add(const char* scalar) {
  for (const Eigen::Index n : {Eigen::Index(10000), Eigen::Index(1000000)}) {
    const std::string name = std::string(Pair<Scalar>::name()) + "/" + scalar + "/" + std::to_string(n);
    benchmark::RegisterBenchmark(name.c_str(), BM_Guard<Pair, Scalar>)->Arg(n)->Unit(benchmark::kMicrosecond);
  }
}

template <typename Scalar>
void add_all(const char* scalar) {
  add<SgdPair, Scalar>(scalar);
  add<AdamPair, Scalar>(scalar);
  add<RmsPropPair, Scalar>(scalar);
  add<FilterAdamPair, Scalar>(scalar);
}

}  // namespace

int main(int argc, char** argv) {
  add_all<float>("float");
  add_all<double>("double");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
