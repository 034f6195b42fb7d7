#pragma once
// Independent dense brute-force constructions for tests: explicit Kronecker products built
// element by element, explicit inverses, random SPD matrices, and per-type tolerances.
// Nothing here calls kfopt, so a test that compares kfopt against these is a real check.

#include <Eigen/Dense>
#include <cmath>
#include <random>

namespace kfopt_test {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Per-type relative tolerance for comparisons against brute force at small sizes
/// (double <= 1e-10, float <= 1e-4).
template <typename Scalar>
struct Tolerance;
template <>
struct Tolerance<double> {
  static constexpr double dense = 1e-10;
};
template <>
struct Tolerance<float> {
  static constexpr float dense = 1e-4f;
};

/// ||a - b||_F / max(||b||_F, tiny).
template <typename A, typename B>
double relative_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const double denom = std::max(static_cast<double>(b.norm()), 1e-300);
  return static_cast<double>((a - b).norm()) / denom;
}

/// Explicit Kronecker product, entry by entry: K[i*p + k, j*q + l] = B[i, j] * C[k, l].
template <typename Scalar>
Mat<Scalar> dense_kron(const Mat<Scalar>& B, const Mat<Scalar>& C) {
  const Eigen::Index m = B.rows(), n = B.cols(), p = C.rows(), q = C.cols();
  Mat<Scalar> K(m * p, n * q);
  for (Eigen::Index i = 0; i < m; ++i)
    for (Eigen::Index j = 0; j < n; ++j)
      for (Eigen::Index k = 0; k < p; ++k)
        for (Eigen::Index l = 0; l < q; ++l) K(i * p + k, j * q + l) = B(i, j) * C(k, l);
  return K;
}

/// Column-stacking vec, entry by entry.
template <typename Scalar>
Vec<Scalar> dense_vec(const Mat<Scalar>& X) {
  Vec<Scalar> v(X.size());
  for (Eigen::Index j = 0; j < X.cols(); ++j)
    for (Eigen::Index i = 0; i < X.rows(); ++i) v(j * X.rows() + i) = X(i, j);
  return v;
}

template <typename Scalar>
Mat<Scalar> dense_unvec(const Vec<Scalar>& v, Eigen::Index rows, Eigen::Index cols) {
  Mat<Scalar> X(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) X(i, j) = v(j * rows + i);
  return X;
}

/// Deterministic random numbers for tests.
class Rng {
 public:
  explicit Rng(unsigned seed) : engine_(seed) {}
  template <typename Scalar>
  Mat<Scalar> normal(Eigen::Index rows, Eigen::Index cols) {
    std::normal_distribution<double> dist(0.0, 1.0);
    Mat<Scalar> M(rows, cols);
    for (Eigen::Index j = 0; j < cols; ++j)
      for (Eigen::Index i = 0; i < rows; ++i) M(i, j) = static_cast<Scalar>(dist(engine_));
    return M;
  }
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(engine_);
  }
  int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(engine_); }
  std::mt19937& engine() { return engine_; }

  /// Symmetric positive definite n×n with eigenvalues in [lo, hi] (condition number hi/lo).
  template <typename Scalar>
  Mat<Scalar> spd(Eigen::Index n, double lo = 0.5, double hi = 4.0) {
    const Mat<double> Q = Eigen::HouseholderQR<Mat<double>>(normal<double>(n, n)).householderQ();
    Vec<double> d(n);
    for (Eigen::Index i = 0; i < n; ++i) d(i) = uniform(lo, hi);
    const Mat<double> S = Q * d.asDiagonal() * Q.transpose();
    return (0.5 * (S + S.transpose())).template cast<Scalar>();
  }

 private:
  std::mt19937 engine_;
};

/// Explicit inverse computed in double by a full-pivoting LU (independent of any
/// symmetric solver under test).
template <typename Scalar>
Mat<Scalar> dense_inverse(const Mat<Scalar>& M) {
  return Eigen::FullPivLU<Mat<double>>(M.template cast<double>())
      .inverse()
      .template cast<Scalar>();
}

}  // namespace kfopt_test
