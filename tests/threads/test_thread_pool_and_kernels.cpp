// kfopt's threads (linalg/threads.hpp): the pool runs every index once and rethrows a job's
// exception; the product kernel, the lower product, the damped Cholesky inverse, the
// symmetric eigensolver and the warm-started (Newton–Schulz) inverse give bit-identical
// results on 1, 2, 3 and 4 threads, and match independent references.
#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kfopt/linalg/damped_cholesky_inverse.hpp"
#include "kfopt/linalg/symmetric_eigensolver.hpp"
#include "kfopt/linalg/warm_started_inverse.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"
#include "kfopt/linalg/threads.hpp"

namespace {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Restores the thread setting when a test ends.
struct ThreadSetting {
  ~ThreadSetting() { kfopt::set_threads(0); }
};

template <typename S>
Mat<S> random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::srand(seed);
  return Mat<double>::Random(rows, cols).cast<S>();
}

// C + α·A·B on `threads` threads.
template <typename S, typename DA, typename DB>
Mat<S> product_on(int threads, const Mat<S>& C0, S alpha, const Eigen::MatrixBase<DA>& A,
                  const Eigen::MatrixBase<DB>& B, bool lower) {
  kfopt::set_threads(threads);
  Mat<S> C = C0;
  if (lower) {
    kfopt::detail::lower_product_accumulate<S>(C, alpha, A, B);
  } else {
    kfopt::detail::product_accumulate<S>(C, alpha, A, B);
  }
  return C;
}

// Worst entrywise error against C0 + α·A·B in long double, relative to |C0| + |α||A||B|
// (only the lower triangle for `lower`).
template <typename S, typename DA, typename DB>
long double worst_relative_error(const Mat<S>& C0, S alpha, const Eigen::MatrixBase<DA>& A,
                                 const Eigen::MatrixBase<DB>& B, const Mat<S>& got, bool lower) {
  using L = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  const L a = A.template cast<long double>(), b = B.template cast<long double>();
  const L exact = C0.template cast<long double>() + static_cast<long double>(alpha) * (a * b);
  const L scale = C0.template cast<long double>().cwiseAbs() +
                  std::abs(static_cast<long double>(alpha)) * (a.cwiseAbs() * b.cwiseAbs());
  long double worst = 0;
  for (Eigen::Index j = 0; j < got.cols(); ++j) {
    for (Eigen::Index i = lower ? j : 0; i < got.rows(); ++i) {
      const long double e = std::abs(static_cast<long double>(got(i, j)) - exact(i, j));
      worst = std::max(worst, e / scale(i, j));
    }
  }
  return worst;
}

template <typename S>
void check_products_thread_invariant() {
  ThreadSetting restore;
  // Shapes around the tile and block sizes, odd edges, and large enough to be split.
  const std::vector<std::array<Eigen::Index, 3>> shapes = {
      {300, 517, 389}, {64, 1100, 257}, {1030, 96, 300}, {513, 513, 513}, {40, 40, 40}};
  const S alpha = S(-0.75);
  for (const auto& [m, k, n] : shapes) {
    const Mat<S> A = random_matrix<S>(m, k, 1), B = random_matrix<S>(k, n, 2);
    const Mat<S> C0 = random_matrix<S>(m, n, 3);
    INFO("m " << m << ", k " << k << ", n " << n);
    const Mat<S> one = product_on<S>(1, C0, alpha, A, B, false);
    CHECK(worst_relative_error<S>(C0, alpha, A, B, one, false) <
          4.0L * (k + 2) * std::numeric_limits<S>::epsilon());
    for (int t : {2, 3, 4}) {
      INFO(t << " threads");
      CHECK(product_on<S>(t, C0, alpha, A, B, false) == one);
    }
    // Transposed operands (strided reads) and the lower product (square C: m × m).
    const Mat<S> At = A.transpose();
    const Mat<S> S0 = random_matrix<S>(m, m, 4);
    const Mat<S> lower_one = product_on<S>(1, S0, alpha, A, At.transpose().transpose(), true);
    CHECK(worst_relative_error<S>(S0, alpha, A, At, lower_one, true) <
          4.0L * (k + 2) * std::numeric_limits<S>::epsilon());
    for (int t : {2, 3, 4}) {
      INFO(t << " threads, lower product");
      const Mat<S> lower_t = product_on<S>(t, S0, alpha, A, At.transpose().transpose(), true);
      CHECK(lower_t == lower_one);
      // The strict upper triangle is never written.
      CHECK(lower_t.template triangularView<Eigen::StrictlyUpper>().toDenseMatrix() ==
            S0.template triangularView<Eigen::StrictlyUpper>().toDenseMatrix());
      CHECK(product_on<S>(t, C0, alpha, At.transpose(), B, false) == one);
    }
  }
}

}  // namespace

TEST_CASE("threads: the setting follows Eigen until set, and the pool runs every index once",
          "[linalg][threads]") {
  ThreadSetting restore;
  kfopt::set_threads(0);
  CHECK(kfopt::threads() == std::max(1, Eigen::nbThreads()));
  kfopt::set_threads(3);
  CHECK(kfopt::threads() == 3);
  kfopt::set_threads(-2);  // treated as 0
  CHECK(kfopt::threads() == std::max(1, Eigen::nbThreads()));

  for (int threads : {1, 2, 3, 8}) {
    std::vector<std::atomic<int>> calls(1000);
    kfopt::detail::ThreadPool::instance().run(1000, threads, [&](std::ptrdiff_t i) {
      calls[static_cast<std::size_t>(i)].fetch_add(1);
      // A nested job runs on the calling thread, completely.
      std::atomic<int> inner{0};
      kfopt::detail::ThreadPool::instance().run(3, threads, [&](std::ptrdiff_t) { ++inner; });
      if (inner.load() != 3) calls[static_cast<std::size_t>(i)].fetch_add(100);
    });
    for (const auto& c : calls) REQUIRE(c.load() == 1);
  }
  // An exception of one index reaches the caller after the job ends; the pool still works.
  std::atomic<int> ran{0};
  CHECK_THROWS_WITH(kfopt::detail::ThreadPool::instance().run(64, 4,
                                                              [&](std::ptrdiff_t i) {
                                                                ++ran;
                                                                if (i == 17) throw std::runtime_error("index 17");
                                                              }),
                    "index 17");
  CHECK(ran.load() == 64);
  std::atomic<int> after{0};
  kfopt::detail::ThreadPool::instance().run(10, 4, [&](std::ptrdiff_t) { ++after; });
  CHECK(after.load() == 10);
}

TEST_CASE("threads: the product kernel and the lower product are bit-identical on 1-4 threads",
          "[linalg][threads]") {
  check_products_thread_invariant<double>();
  check_products_thread_invariant<float>();
}

TEST_CASE("threads: the damped Cholesky inverse is bit-identical on 1-4 threads",
          "[linalg][threads]") {
  ThreadSetting restore;
  const Eigen::Index n = 700;
  const Mat<double> X = random_matrix<double>(2 * n, n, 5);
  const Mat<double> A = X.transpose() * X / static_cast<double>(2 * n);
  const Mat<double> rhs = random_matrix<double>(n, 300, 6);
  Mat<double> reference_solution;
  for (int t : {1, 2, 3, 4}) {
    INFO(t << " threads");
    kfopt::set_threads(t);
    kfopt::DampedCholeskyInverse<double> inverse(n);
    inverse.compute(A, 0.1);
    REQUIRE(inverse.info() == kfopt::Status::Success);
    Mat<double> solution;
    inverse.solve(rhs, solution);
    if (t == 1) {
      reference_solution = solution;
      const Mat<double> residual = (A + 0.1 * Mat<double>::Identity(n, n)) * solution - rhs;
      CHECK(residual.cwiseAbs().maxCoeff() < 1e-10);
    } else {
      CHECK(solution == reference_solution);
    }
  }
}

TEST_CASE("threads: the symmetric eigensolver is bit-identical on 1-4 threads",
          "[linalg][threads]") {
  ThreadSetting restore;
  // n = 600: forming Q and the recorded rotations are both large enough to be split.
  const Eigen::Index n = 600;
  const Mat<double> X = random_matrix<double>(n, n, 7);
  const Mat<double> A = (X + X.transpose()) / 2.0;
  Mat<double> vectors;
  Eigen::VectorXd values;
  const std::uint64_t jobs_before = kfopt::detail::ThreadPool::instance().parallel_jobs();
  for (int t : {1, 2, 3, 4}) {
    INFO(t << " threads");
    kfopt::set_threads(t);
    kfopt::SymmetricEigensolver<double> es(n);
    REQUIRE(es.compute(A).info() == kfopt::Status::Success);
    if (t == 1) {
      vectors = es.eigenvectors();
      values = es.eigenvalues();
      // Against the definition: A V = V Λ, VᵀV = I.
      const Mat<double> residual = A * vectors - vectors * values.asDiagonal();
      CHECK(residual.cwiseAbs().maxCoeff() < 1e-11 * A.cwiseAbs().maxCoeff() * n);
      CHECK((vectors.transpose() * vectors - Mat<double>::Identity(n, n)).cwiseAbs().maxCoeff() < 1e-12);
    } else {
      CHECK(es.eigenvalues() == values);
      CHECK(es.eigenvectors() == vectors);
    }
  }
  CHECK(kfopt::detail::ThreadPool::instance().parallel_jobs() > jobs_before);  // it did split
}

TEST_CASE("threads: the warm-started Newton–Schulz inverse is bit-identical on 1-4 threads",
          "[linalg][threads]") {
  ThreadSetting restore;
  const Eigen::Index n = 400;
  const Mat<double> X = random_matrix<double>(2 * n, n, 8);
  const Mat<double> A = X.transpose() * X / static_cast<double>(2 * n);
  Mat<double> A_next = A;
  A_next.diagonal().array() += 2e-2;  // a factor that moved a little: the iteration runs
  Mat<double> reference;
  for (int t : {1, 2, 3, 4}) {
    INFO(t << " threads");
    kfopt::set_threads(t);
    kfopt::WarmStartOptions<double> options;
    options.iteration_cost = 0.0;  // iterate whenever the tolerance is reachable
    options.max_iterations = 10;
    kfopt::WarmStartedDampedInverse<double> inverse(n, options);
    REQUIRE(inverse.compute(A, 0.1).info() == kfopt::Status::Success);
    REQUIRE(inverse.compute(A_next, 0.1).info() == kfopt::Status::Success);
    REQUIRE_FALSE(inverse.last_fell_back());
    REQUIRE(inverse.last_iterations() > 0);
    if (t == 1) {
      reference = inverse.inverse();
      const Mat<double> residual =
          (A_next + 0.1 * Mat<double>::Identity(n, n)) * reference - Mat<double>::Identity(n, n);
      CHECK(residual.cwiseAbs().maxCoeff() < 1e-8);
    } else {
      CHECK(inverse.inverse() == reference);
    }
  }
}
