#pragma once
// The two-layer tanh network of the distributed K-FAC tests: seeded global batches, their
// slices per rank, a Kfac over both layers with closed-form gradients, and a bitwise
// fingerprint of its state for comparisons across ranks.
#include <kfopt/optim/kfac/kfac.hpp>

#include <Eigen/Core>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "mpi/mpi_test_support.hpp"

namespace kfopt_mpi_test {

constexpr Eigen::Index kIn = 6, kHidden = 5, kOut = 3;
constexpr Eigen::Index kGlobal = 24;  // divisible by 1, 2, 3

struct Slice {
  Eigen::Index begin = 0, count = kGlobal;
};
inline Slice equal_slice(int rank, int ranks, Eigen::Index total) {
  return {rank * total / ranks, total / ranks};
}
/// Sizes proportional to rank + 1 (P = 2: 8, 16; P = 3: 4, 8, 12 of 24).
inline Slice unequal_slice(int rank, int ranks, Eigen::Index total) {
  const Eigen::Index unit = total / (ranks * (ranks + 1) / 2);
  return {unit * rank * (rank + 1) / 2, unit * (rank + 1)};
}

/// Global batch of step t, examples as rows: X (kGlobal × kIn), targets T (kGlobal × kOut).
struct Batch {
  Mat<double> X, T;
};
inline Batch global_batch(int t) {
  std::mt19937_64 gen(4242u + static_cast<unsigned>(t));
  std::normal_distribution<double> normal(0.0, 1.0);
  Batch b{Mat<double>(kGlobal, kIn), Mat<double>(kGlobal, kOut)};
  for (Eigen::Index k = 0; k < b.X.size(); ++k) b.X(k) = normal(gen);
  for (Eigen::Index i = 0; i < kGlobal; ++i) {
    for (Eigen::Index j = 0; j < kOut; ++j) {
      b.T(i, j) = std::sin(b.X(i, j) + 0.5 * b.X(i, j + 1)) + 0.1 * normal(gen);
    }
  }
  return b;
}

inline kfopt::KfacOptions kfac_options() {
  kfopt::KfacOptions o;
  o.learning_rate = 0.05;
  o.momentum = 0.9;
  o.damping = 1e-2;
  o.inverse_period = 4;
  o.statistics_period = 1;
  o.kl_clip = 1e-2;
  return o;
}

/// y = W2 tanh(W1 x + b1) + b2 with a Kfac over both layers. Not movable (Kfac points into it).
struct Net {
  Mat<double> W1, dW1, W2, dW2;
  Vec<double> b1, db1, b2, db2;
  kfopt::Kfac<double> kfac;
  std::size_t l1 = 0, l2 = 0;
  // The last forward/backward pass: statistics of both layers.
  Mat<double> H, G1, G2;

  explicit Net(const kfopt::KfacOptions& o)
      : W1(kHidden, kIn), dW1(Mat<double>::Zero(kHidden, kIn)), W2(kOut, kHidden),
        dW2(Mat<double>::Zero(kOut, kHidden)), b1(Vec<double>::Zero(kHidden)),
        db1(Vec<double>::Zero(kHidden)), b2(Vec<double>::Zero(kOut)),
        db2(Vec<double>::Zero(kOut)), kfac(o) {
    for (Eigen::Index k = 0; k < W1.size(); ++k) W1(k) = 0.4 * std::sin(1.7 * k + 1.0);
    for (Eigen::Index k = 0; k < W2.size(); ++k) W2(k) = 0.4 * std::cos(2.3 * k + 0.5);
    l1 = kfac.add_dense_layer("fc1", W1, dW1, b1, db1);
    l2 = kfac.add_dense_layer("fc2", W2, dW2, b2, db2);
  }
  Net(const Net&) = delete;
  Net& operator=(const Net&) = delete;

  /// Gradients of the mean loss ½‖y − t‖² over the rows of X, and the statistics.
  void forward_backward(const Mat<double>& X, const Mat<double>& T) {
    const double k = static_cast<double>(X.rows());
    H = ((X * W1.transpose()).rowwise() + b1.transpose()).array().tanh().matrix();
    const Mat<double> Y = (H * W2.transpose()).rowwise() + b2.transpose();
    G2 = Y - T;
    G1 = ((G2 * W2).array() * (1.0 - H.array().square())).matrix();
    dW2 = G2.transpose() * H / k;
    db2 = G2.colwise().sum().transpose() / k;
    dW1 = G1.transpose() * X / k;
    db1 = G1.colwise().sum().transpose() / k;
  }
};

/// Every byte of a state dict's entries (names and data), one double per byte, plus the
/// parameters, for a bitwise comparison across ranks.
inline std::vector<double> fingerprint(const kfopt::StateDict& dict, const std::vector<const Mat<double>*>& mats,
                                const std::vector<const Vec<double>*>& vecs) {
  std::vector<double> out;
  for (const auto& kv : dict.entries()) {
    for (char ch : kv.first) out.push_back(static_cast<double>(ch));
    for (auto byte : kv.second.bytes) out.push_back(static_cast<double>(byte));
  }
  for (const auto* m : mats) out.insert(out.end(), m->data(), m->data() + m->size());
  for (const auto* v : vecs) out.insert(out.end(), v->data(), v->data() + v->size());
  return out;
}

}  // namespace kfopt_mpi_test
