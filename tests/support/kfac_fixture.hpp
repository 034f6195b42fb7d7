#pragma once
// A small deterministic K-FAC training problem for the state-dict and checkpoint tests: dense
// layers (with and without bias, diagonal input or gradient factors) and recurrent layers
// (mixed sequence lengths), with gradients that depend on the current parameters, so that a
// state restored wrong changes every later step. `prepare(t)` records the statistics of step
// t (a checkpoint may be taken after it: the factors' lazy blends are then pending),
// `finish(t)` computes the gradients, steps, and reports the loss (adaptive damping).
#include <catch2/catch.hpp>
#include <kfopt/core/state_dict.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <string>

namespace kfopt_kfac_test {

template <typename S>
using KMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <typename S>
using KVec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// A deterministic value in [-1, 1] for (t, i, salt).
inline double kwave(int t, Eigen::Index i, int salt) {
  return std::sin(0.7 * t + 1.3 * static_cast<double>(i) + 0.37 * salt) *
         std::cos(0.11 * t * static_cast<double>(i % 7 + 1) + salt);
}

template <typename S>
KMat<S> kwave_matrix(int t, Eigen::Index rows, Eigen::Index cols, int salt) {
  KMat<S> m(rows, cols);
  for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = static_cast<S>(kwave(t, k, salt));
  return m;
}

template <typename S>
bool same_bits(const KMat<S>& a, const KMat<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(S) * static_cast<std::size_t>(a.size())) == 0);
}

// Which layers the problem has.
struct KfacProblem {
  kfopt::KfacOptions options;
  bool dense = true;                  // fc (bias), fc_nobias, embed (diagonal A), wide (diagonal G)
  bool recurrent = true;              // rnn_indep (Independent) and, unless exact damping, rnn_opt1, rnn_opt2
  bool diagonal = true;               // the diagonal-factor dense layers
};

template <typename S>
struct KfacFixture {
  using Scalar = S;
  using Optimizer = kfopt::Kfac<S>;

  struct Layer {
    std::string name;
    KMat<S> W, dW;
    KVec<S> b, db;
    bool bias = true;
    bool recurrent = false;
    int salt = 0;
  };

  KfacProblem problem;
  std::deque<Layer> layers;  // stable addresses
  kfopt::ParameterSet<S> params;
  Optimizer opt;

  explicit KfacFixture(KfacProblem p) : problem(p), opt(p.options) {
    using kfopt::FactorStructure;
    using kfopt::RecurrentApproximation;
    int salt = 0;
    auto add = [&](const std::string& name, Eigen::Index out, Eigen::Index in, bool bias,
                   bool recurrent) -> Layer& {
      layers.push_back(Layer{name, S(0.5) * kwave_matrix<S>(0, out, in, ++salt),
                             KMat<S>::Zero(out, in),
                             KVec<S>(S(0.5) * kwave_matrix<S>(0, out, 1, ++salt)),
                             KVec<S>::Zero(out), bias, recurrent, salt});
      Layer& l = layers.back();
      params.add(name + ".weight", l.W, l.dW);
      if (bias) params.add(name + ".bias", l.b, l.db);
      return l;
    };
    if (p.dense) {
      Layer& fc = add("fc", 3, 4, true, false);
      opt.add_dense_layer(fc.name, fc.W, fc.dW, fc.b, fc.db);
      Layer& nb = add("fc_nobias", 2, 3, false, false);
      opt.add_dense_layer(nb.name, nb.W, nb.dW);
      if (p.diagonal) {
        kfopt::DenseLayerOptions da;
        da.input_factor = FactorStructure::Diagonal;
        Layer& em = add("embed", 3, 5, true, false);
        opt.add_dense_layer(em.name, em.W, em.dW, em.b, em.db, da);
        kfopt::DenseLayerOptions dg;
        dg.gradient_factor = FactorStructure::Diagonal;
        Layer& wd = add("wide", 4, 2, false, false);
        opt.add_dense_layer(wd.name, wd.W, wd.dW, dg);
      }
    }
    if (p.recurrent) {
      kfopt::RecurrentLayerOptions ri;
      ri.approximation = RecurrentApproximation::Independent;
      Layer& r0 = add("rnn_indep", 3, 2, true, true);
      opt.add_recurrent_layer(r0.name, r0.W, r0.dW, r0.b, r0.db, ri);
      if (p.options.damping_style == kfopt::DampingStyle::Factored) {
        kfopt::RecurrentLayerOptions r1o;
        r1o.approximation = RecurrentApproximation::Option1;
        Layer& r1 = add("rnn_opt1", 2, 3, true, true);
        opt.add_recurrent_layer(r1.name, r1.W, r1.dW, r1.b, r1.db, r1o);
        kfopt::RecurrentLayerOptions r2o;
        r2o.approximation = RecurrentApproximation::Option2;
        Layer& r2 = add("rnn_opt2", 3, 3, false, true);
        opt.add_recurrent_layer(r2.name, r2.W, r2.dW, r2o);
      }
    }
  }
  KfacFixture(const KfacFixture&) = delete;

  // Statistics of step t for every layer: dense batches of 5, recurrent batches of 3
  // sequences padded to 4 steps with lengths that change with t.
  void prepare(int t) {
    for (std::size_t id = 0; id < layers.size(); ++id) {
      const Layer& l = layers[id];
      if (!l.recurrent) {
        KMat<S> a = kwave_matrix<S>(t, 5, l.W.cols(), 40 + l.salt);
        if (l.name == "embed") {  // one-hot inputs, as the diagonal factor assumes
          a.setZero();
          for (Eigen::Index k = 0; k < a.rows(); ++k) a(k, (t + 2 * k) % a.cols()) = S(1);
        }
        const KMat<S> g = S(0.3) * kwave_matrix<S>(t, 5, l.W.rows(), 60 + l.salt);
        REQUIRE(opt.record_statistics(id, a, g) == kfopt::Status::Success);
      } else {
        const Eigen::Index m = 3, t_max = 4;
        Eigen::VectorXi lengths(m);
        lengths << 4, 1 + t % 4, 2 + (t / 2) % 2;  // sequence 2 never reaches step 3
        KMat<S> a = kwave_matrix<S>(t, t_max * m, l.W.cols(), 80 + l.salt);
        const KMat<S> g = S(0.3) * kwave_matrix<S>(t, t_max * m, l.W.rows(), 90 + l.salt);
        a(t_max * m - 1, 0) = std::numeric_limits<S>::quiet_NaN();  // padding: never read
        REQUIRE(opt.record_sequence_statistics(id, a, g, lengths) == kfopt::Status::Success);
      }
    }
  }

  // L(θ) = c Σ (θ⁴/4 − target_t θ) over all parameters, gradient c (θ³ − target_t).
  double loss(int t) const {
    double total = 0.0;
    for (const Layer& l : layers) {
      const KMat<S> tw = kwave_matrix<S>(t, l.W.rows(), l.W.cols(), 100 + l.salt);
      for (Eigen::Index k = 0; k < l.W.size(); ++k) {
        const double w = static_cast<double>(l.W.data()[k]);
        total += 0.2 * (0.25 * w * w * w * w - static_cast<double>(tw.data()[k]) * w);
      }
      if (l.bias) {
        const KMat<S> tb = kwave_matrix<S>(t, l.b.size(), 1, 120 + l.salt);
        for (Eigen::Index k = 0; k < l.b.size(); ++k) {
          const double w = static_cast<double>(l.b(k));
          total += 0.2 * (0.25 * w * w * w * w - static_cast<double>(tb(k, 0)) * w);
        }
      }
    }
    return total;
  }

  void finish(int t) {
    for (Layer& l : layers) {
      l.dW = S(0.2) * (l.W.array().cube().matrix() -
                       kwave_matrix<S>(t, l.W.rows(), l.W.cols(), 100 + l.salt));
      if (l.bias) {
        l.db = S(0.2) * (l.b.array().cube().matrix() -
                         KVec<S>(kwave_matrix<S>(t, l.b.size(), 1, 120 + l.salt)));
      }
    }
    const double before = loss(t);
    REQUIRE(opt.step() == kfopt::Status::Success);
    if (problem.options.adaptive_damping) opt.report_loss(before, loss(t));
  }

  void step(int t) {
    prepare(t);
    finish(t);
  }

  kfopt::StateDict model() const { return kfopt::parameters_state_dict(params); }
  void load_model(const kfopt::StateDict& d) { kfopt::load_parameters(params, d); }
  bool same_weights(const KfacFixture& o) const {
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (!same_bits<S>(layers[i].W, o.layers[i].W)) return false;
      if (!same_bits<S>(KMat<S>(layers[i].b), KMat<S>(o.layers[i].b))) return false;
    }
    return true;
  }
};

}  // namespace kfopt_kfac_test
