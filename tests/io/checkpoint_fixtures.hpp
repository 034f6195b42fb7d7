#pragma once
// Small deterministic training problems, one per optimizer, for the checkpoint tests. Each
// fixture builds its model and optimizer the same way every time, and `step(t)` runs step t
// with gradients that depend on t and on the current parameters (so a state restored wrong
// changes every later step). `prepare(t)` is the part of step t that may happen before a
// checkpoint is taken (KroneckerFilter records its statistics there), `finish(t)` the rest.
// `model()` is the model's weights as a state dict, `load_model` restores them.
#include <catch2/catch.hpp>
#include <kfopt/core/state_dict.hpp>
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
#include <kfopt/optim/kalman/rtrl.hpp>

#include <cmath>
#include <cstring>
#include <string>

#include <unistd.h>  // getpid

namespace kfopt_checkpoint_test {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <typename S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// A deterministic pseudo-random value in [-1, 1] for (t, i, salt), no state.
inline double wave(int t, Eigen::Index i, int salt) {
  return std::sin(0.7 * t + 1.3 * static_cast<double>(i) + 0.37 * salt) *
         std::cos(0.11 * t * static_cast<double>(i % 7 + 1) + salt);
}

template <typename S>
Mat<S> wave_matrix(int t, Eigen::Index rows, Eigen::Index cols, int salt) {
  Mat<S> m(rows, cols);
  for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = static_cast<S>(wave(t, k, salt));
  return m;
}

template <typename S>
bool same_bits(const Mat<S>& a, const Mat<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(S) * static_cast<std::size_t>(a.size())) == 0);
}

// A two-block model (W: 3×4, b: 3×1) registered in a ParameterSet, with gradients
// g = W³ − target(t) (elementwise), so that they depend on the parameters.
template <typename S>
struct BlockModel {
  Mat<S> W, dW;
  Vec<S> b, db;
  kfopt::ParameterSet<S> params;
  explicit BlockModel(Eigen::Index rows = 3, Eigen::Index cols = 4)
      : W(wave_matrix<S>(0, rows, cols, 1)), dW(Mat<S>::Zero(rows, cols)),
        b(wave_matrix<S>(0, rows, 1, 2)), db(Vec<S>::Zero(rows)) {
    params.add("fc.weight", W, dW);
    params.add("fc.bias", b, db);
  }
  BlockModel(const BlockModel&) = delete;
  void gradients(int t) {
    dW = W.array().cube().matrix() - wave_matrix<S>(t, W.rows(), W.cols(), 3);
    db = b.array().cube().matrix() - wave_matrix<S>(t, b.rows(), 1, 4);
  }
  kfopt::StateDict model() const { return kfopt::parameters_state_dict(params); }
  void load_model(const kfopt::StateDict& d) { kfopt::load_parameters(params, d); }
  bool same_weights(const BlockModel& o) const {
    return same_bits<S>(W, o.W) && same_bits<S>(Mat<S>(b), Mat<S>(o.b));
  }
};

// The optimizers over a ParameterSet (Sgd, Adam, RmsProp and the diagonal filters): the
// gradients, then step().
template <template <typename> class OptT, typename S, typename Options>
struct ParamFixture {
  using Scalar = S;
  using Optimizer = OptT<S>;
  BlockModel<S> m;
  Optimizer opt;
  explicit ParamFixture(Options o, Eigen::Index rows = 3, Eigen::Index cols = 4)
      : m(rows, cols), opt(m.params, o) {}
  void prepare(int) {}
  void finish(int t) {
    m.gradients(t);
    REQUIRE(opt.step() == kfopt::Status::Success);
  }
  void step(int t) {
    prepare(t);
    finish(t);
  }
  kfopt::StateDict model() const { return m.model(); }
  void load_model(const kfopt::StateDict& d) { m.load_model(d); }
  bool same_weights(const ParamFixture& o) const { return m.same_weights(o.m); }
};

// KroneckerFilter on one dense layer (3×4 weights + bias): statistics recorded in prepare(t),
// update + predict in finish(t).
template <typename S>
struct KroneckerFilterFixture {
  using Scalar = S;
  using Optimizer = kfopt::KroneckerFilter<S>;
  BlockModel<S> m;
  Optimizer opt;
  explicit KroneckerFilterFixture(kfopt::KroneckerFilterOptions o, Eigen::Index rows = 3,
                                  Eigen::Index cols = 4)
      : m(rows, cols), opt(o) {
    opt.add_dense_layer("fc", m.W, m.dW, m.b, m.db);
  }
  void prepare(int t) {
    const Mat<S> a = wave_matrix<S>(t, 5, m.W.cols(), 5);
    const Mat<S> g = S(0.3) * wave_matrix<S>(t, 5, m.W.rows(), 6);
    REQUIRE(opt.record_statistics(0, a, g) == kfopt::Status::Success);
  }
  void finish(int t) {
    m.dW = S(0.2) * (m.W.array().cube().matrix() - wave_matrix<S>(t, m.W.rows(), m.W.cols(), 3));
    m.db = S(0.2) * (m.b.array().cube().matrix() - wave_matrix<S>(t, m.b.rows(), 1, 4));
    REQUIRE(opt.step() == kfopt::Status::Success);
  }
  void step(int t) {
    prepare(t);
    finish(t);
  }
  kfopt::StateDict model() const { return m.model(); }
  void load_model(const kfopt::StateDict& d) { m.load_model(d); }
  bool same_weights(const KroneckerFilterFixture& o) const { return m.same_weights(o.m); }
};

// A flat parameter vector θ as the model of the Kalman optimizers.
template <typename S>
kfopt::StateDict theta_dict(const Vec<S>& theta) {
  kfopt::StateDict d("theta", kfopt::scalar_type_of<S>());
  d.set_array("theta", theta, 1);
  return d;
}

// ExtendedKalmanFilter / OnlineNaturalGradient on logistic regression: x_t (1×d) from t,
// z = x θ, y_t ∈ {0, 1} from t.
template <template <typename> class OptT, typename S>
struct LogisticFixture {
  using Scalar = S;
  using Model = kfopt::BernoulliObservation<S>;
  using Optimizer = OptT<Model>;
  using Hyperparameters = typename Optimizer::Hyperparameters;
  static constexpr Eigen::Index d = 5;
  Vec<S> theta;
  Optimizer opt;
  explicit LogisticFixture(Hyperparameters hp, Eigen::Index dim = d)
      : theta(Vec<S>(wave_matrix<S>(0, dim, 1, 1))), opt(Model(), initial(dim), hp) {}
  static Mat<S> initial(Eigen::Index dim) {
    Mat<S> A = wave_matrix<S>(0, dim, dim, 7);
    Mat<S> P = A * A.transpose();
    P.diagonal().array() += S(1);
    return P;
  }
  void prepare(int) {}
  void finish(int t) {
    const Mat<S> x = wave_matrix<S>(t, 1, theta.size(), 8);
    const Vec<S> z = x * theta;
    const S y = wave(t, 0, 9) > 0 ? S(1) : S(0);
    REQUIRE(opt.step(theta, z, x, y) == kfopt::Status::Success);
  }
  void step(int t) {
    prepare(t);
    finish(t);
  }
  kfopt::StateDict model() const { return theta_dict(theta); }
  void load_model(const kfopt::StateDict& d) { theta = d.array<S>("theta"); }
  bool same_weights(const LogisticFixture& o) const {
    return same_bits<S>(Mat<S>(theta), Mat<S>(o.theta));
  }
};

template <typename Model>
using Ekf = kfopt::ExtendedKalmanFilter<Model>;
template <typename Model>
using Ong = kfopt::OnlineNaturalGradient<Model>;

// The recurrent optimizers on a tanh cell (state 3, input 2, output 1) fitting a sequence.
template <typename S>
struct RecurrentProblem {
  using Cell = kfopt::TanhRnnCell<S>;
  using Gauss = kfopt::GaussianObservation<S>;
  static Cell cell() { return Cell(3, 2, 1); }
  static Vec<S> input(int t) { return Vec<S>(wave_matrix<S>(t, 2, 1, 10)); }
  static Vec<S> target(int t) { return Vec<S>::Constant(1, static_cast<S>(0.5 * wave(t, 0, 11))); }
  static Vec<S> theta0() { return Vec<S>(S(0.3) * wave_matrix<S>(0, cell().param_dim(), 1, 12)); }
  static Vec<S> s0() { return Vec<S>(S(0.1) * wave_matrix<S>(0, 3, 1, 13)); }
};

template <typename S>
struct RtrlFixture {
  using Scalar = S;
  using P = RecurrentProblem<S>;
  using Optimizer = kfopt::Rtrl<typename P::Cell>;
  Vec<S> theta = P::theta0();
  Optimizer opt{P::cell(), P::s0()};
  RtrlFixture() = default;
  void prepare(int) {}
  void finish(int t) {
    const Vec<S> u = P::input(t);
    REQUIRE(opt.propagate(theta, u) == kfopt::Status::Success);
    Vec<S> z(1);
    Mat<S> H(1, theta.size());
    REQUIRE(opt.output(theta, u, z, H) == kfopt::Status::Success);
    const Vec<S> delta = S(-0.05) * H.transpose() * (z - P::target(t));
    theta += delta;  // plain online gradient descent along the RTRL gradient
    opt.commit(delta);
  }
  void step(int t) {
    prepare(t);
    finish(t);
  }
  kfopt::StateDict model() const { return theta_dict(theta); }
  void load_model(const kfopt::StateDict& d) { theta = d.array<S>("theta"); }
  bool same_weights(const RtrlFixture& o) const { return same_bits<S>(Mat<S>(theta), Mat<S>(o.theta)); }
};

template <typename S>
struct JointEkfFixture {
  using Scalar = S;
  using P = RecurrentProblem<S>;
  using Optimizer = kfopt::JointExtendedKalmanFilter<typename P::Cell, typename P::Gauss>;
  Vec<S> theta = P::theta0();
  Optimizer opt;
  explicit JointEkfFixture(kfopt::ExtendedKalmanFilterHyperparameters<S> hp = {})
      : opt(P::cell(), typename P::Gauss(1, S(0.5)), P::s0(), initial(), hp) {}
  static Mat<S> initial() {
    const Eigen::Index D = 3 + P::cell().param_dim();
    Mat<S> P0 = Mat<S>::Identity(D, D) * S(0.5);
    P0.topLeftCorner(3, 3) *= S(0.1);
    return P0;
  }
  void prepare(int) {}
  void finish(int t) { REQUIRE(opt.step(theta, P::input(t), P::target(t)) == kfopt::Status::Success); }
  void step(int t) {
    prepare(t);
    finish(t);
  }
  kfopt::StateDict model() const { return theta_dict(theta); }
  void load_model(const kfopt::StateDict& d) { theta = d.array<S>("theta"); }
  bool same_weights(const JointEkfFixture& o) const { return same_bits<S>(Mat<S>(theta), Mat<S>(o.theta)); }
};

template <typename S>
struct NgRtrlFixture {
  using Scalar = S;
  using P = RecurrentProblem<S>;
  using Optimizer = kfopt::NaturalGradientRtrl<typename P::Cell, typename P::Gauss>;
  Vec<S> theta = P::theta0();
  Optimizer opt;
  explicit NgRtrlFixture(kfopt::NaturalGradientRtrlHyperparameters<S> hp = {})
      : opt(P::cell(), typename P::Gauss(1, S(0.5)), P::s0(),
            Mat<S>::Identity(P::cell().param_dim(), P::cell().param_dim()), hp) {}
  void prepare(int) {}
  void finish(int t) { REQUIRE(opt.step(theta, P::input(t), P::target(t)) == kfopt::Status::Success); }
  void step(int t) {
    prepare(t);
    finish(t);
  }
  kfopt::StateDict model() const { return theta_dict(theta); }
  void load_model(const kfopt::StateDict& d) { theta = d.array<S>("theta"); }
  bool same_weights(const NgRtrlFixture& o) const { return same_bits<S>(Mat<S>(theta), Mat<S>(o.theta)); }
};

// A file path in the test's working directory, removed at scope exit.
/// A scratch file name in the working directory, unique to this process: ctest runs the
/// float and double cases of a test as separate processes at the same time.
struct TempPath {
  std::string path;
  explicit TempPath(const std::string& name)
      : path("kfopt_test_" + name + "_" + std::to_string(static_cast<long>(::getpid())) + ".h5") {
    std::remove(path.c_str());
  }
  ~TempPath() { std::remove(path.c_str()); }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
};

}  // namespace kfopt_checkpoint_test
