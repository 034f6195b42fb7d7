// Thread-count invariance of K-FAC: 50 steps give bit-identical parameters on 1, 2 and 3
// threads (kfopt::set_threads), in float and double, with eigendecompositions and with
// Cholesky inverses, both where one dominant layer's products are split (a two-layer network,
// inputs 400, hidden 300, outputs 20, batch 256) and where the layers are refreshed and
// preconditioned in parallel (four 120 × 120 layers). Under ThreadSanitizer (cmake/dev.sh
// tsan) the same runs check for races.
#include <catch2/catch.hpp>
#include <kfopt/linalg/threads.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include "support/kfac_fixture.hpp"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <typename S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Deterministic data in [-1, 1] (the checkpoint tests' generator).
template <typename S>
Mat<S> wave_matrix(int t, Eigen::Index rows, Eigen::Index cols, int salt) {
  return kfopt_kfac_test::kwave_matrix<S>(t, rows, cols, salt);
}

// Every registered parameter of `kfac`, concatenated; then the thread setting back to 0.
template <typename S>
std::vector<S> parameters_and_reset(const kfopt::Kfac<S>& kfac) {
  std::vector<S> all;
  for (const auto& block : kfac.parameters()) {
    const auto v = block.value();
    all.insert(all.end(), v.data(), v.data() + v.size());
  }
  kfopt::set_threads(0);
  return all;
}

// The parameters after `steps` K-FAC steps on `threads` threads, concatenated.
template <typename S>
std::vector<S> train(int threads, kfopt::InverseMethod method, int steps) {
  kfopt::set_threads(threads);
  const Eigen::Index in = 400, hidden = 300, out = 20, batch = 256;
  Mat<S> W1 = wave_matrix<S>(0, hidden, in, 1) * S(0.05), dW1(hidden, in);
  Vec<S> b1 = Vec<S>::Zero(hidden), db1(hidden);
  Mat<S> W2 = wave_matrix<S>(0, out, hidden, 2) * S(0.05), dW2(out, hidden);
  Vec<S> b2 = Vec<S>::Zero(out), db2(out);
  kfopt::KfacOptions options;
  options.inverse_method = method;
  options.inverse_period = 5;
  kfopt::Kfac<S> kfac(options);
  const auto l1 = kfac.add_dense_layer("hidden", W1, dW1, b1, db1);
  const auto l2 = kfac.add_dense_layer("output", W2, dW2, b2, db2);
  for (int t = 0; t < steps; ++t) {
    const Mat<S> x = wave_matrix<S>(t, batch, in, 3);
    const Mat<S> y = wave_matrix<S>(t, batch, out, 4);
    const Mat<S> h = (x * W1.transpose()).rowwise() + b1.transpose();
    const Mat<S> s = (h * W2.transpose()).rowwise() + b2.transpose();
    const Mat<S> g2 = s - y;          // per-example gradients of ½‖s − y‖²
    const Mat<S> g1 = g2 * W2;
    const S k = static_cast<S>(batch);
    dW2 = g2.transpose() * h / k;
    db2 = g2.colwise().sum().transpose() / k;
    dW1 = g1.transpose() * x / k;
    db1 = g1.colwise().sum().transpose() / k;
    REQUIRE(kfac.record_statistics(l1, x, g1) == kfopt::Status::Success);
    REQUIRE(kfac.record_statistics(l2, h, g2) == kfopt::Status::Success);
    REQUIRE(kfac.step() == kfopt::Status::Success);
  }
  return parameters_and_reset(kfac);
}

// The parameters after `steps` K-FAC steps of a linear network of four 120 × 120 layers
// (batch 128): no layer dominates, so Kfac refreshes and preconditions the layers in
// parallel (one per thread) instead of splitting each layer's products.
template <typename S>
std::vector<S> train_deep(int threads, kfopt::InverseMethod method, int steps) {
  kfopt::set_threads(threads);
  const Eigen::Index width = 120, batch = 128, depth = 4;
  std::vector<Mat<S>> W(depth), dW(depth);
  std::vector<Vec<S>> b(depth), db(depth);
  kfopt::KfacOptions options;
  options.inverse_method = method;
  options.inverse_period = 3;
  kfopt::Kfac<S> kfac(options);
  for (Eigen::Index l = 0; l < depth; ++l) {
    W[l] = Mat<S>::Identity(width, width) + wave_matrix<S>(0, width, width, 10 + int(l)) * S(0.05);
    b[l] = Vec<S>::Zero(width);
    dW[l].resize(width, width);
    db[l].resize(width);
  }
  for (Eigen::Index l = 0; l < depth; ++l) {
    kfac.add_dense_layer("layer" + std::to_string(l), W[l], dW[l], b[l], db[l]);
  }
  for (int t = 0; t < steps; ++t) {
    std::vector<Mat<S>> a(depth + 1);
    a[0] = wave_matrix<S>(t, batch, width, 20);
    for (Eigen::Index l = 0; l < depth; ++l) a[l + 1] = (a[l] * W[l].transpose()).rowwise() + b[l].transpose();
    Mat<S> g = a[depth] - wave_matrix<S>(t, batch, width, 21);  // ½‖s − y‖²
    const S k = static_cast<S>(batch);
    for (Eigen::Index l = depth - 1; l >= 0; --l) {
      dW[l] = g.transpose() * a[l] / k;
      db[l] = g.colwise().sum().transpose() / k;
      REQUIRE(kfac.record_statistics(static_cast<std::size_t>(l), a[l], g) == kfopt::Status::Success);
      g = (g * W[l]).eval();
    }
    REQUIRE(kfac.step() == kfopt::Status::Success);
  }
  return parameters_and_reset(kfac);
}

template <typename S>
using Training = std::vector<S> (*)(int, kfopt::InverseMethod, int);

template <typename S>
void check_thread_count_invariance(kfopt::InverseMethod method, Training<S> train) {
  const std::vector<S> one = train(1, method, 50);
  for (int threads : {2, 3}) {
    INFO(threads << " threads");
    const auto jobs_before = kfopt::detail::ThreadPool::instance().parallel_jobs();
    const std::vector<S> many = train(threads, method, 50);
    CHECK(kfopt::detail::ThreadPool::instance().parallel_jobs() > jobs_before);  // it did split
    REQUIRE(many.size() == one.size());
    CHECK(std::memcmp(many.data(), one.data(), sizeof(S) * one.size()) == 0);
  }
}

}  // namespace

TEST_CASE("Kfac: 50 steps on 1, 2 and 3 threads give bit-identical parameters (a dominant "
          "layer's products split)", "[threads][kfac]") {
  check_thread_count_invariance<double>(kfopt::InverseMethod::Eigendecomposition, train<double>);
  check_thread_count_invariance<double>(kfopt::InverseMethod::Cholesky, train<double>);
  check_thread_count_invariance<float>(kfopt::InverseMethod::Eigendecomposition, train<float>);
  check_thread_count_invariance<float>(kfopt::InverseMethod::Cholesky, train<float>);
}

TEST_CASE("Kfac: 50 steps on 1, 2 and 3 threads give bit-identical parameters (layers "
          "refreshed and preconditioned in parallel)", "[threads][kfac]") {
  check_thread_count_invariance<double>(kfopt::InverseMethod::Eigendecomposition, train_deep<double>);
  check_thread_count_invariance<double>(kfopt::InverseMethod::Cholesky, train_deep<double>);
  check_thread_count_invariance<float>(kfopt::InverseMethod::Cholesky, train_deep<float>);
}
