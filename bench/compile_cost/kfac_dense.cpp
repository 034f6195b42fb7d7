// Compile-cost probe: K-FAC over two dense layers (construct, register, record statistics,
// step). Built by bench/compile_cost.sh with -DKFOPT_COST_SCALAR=float or double.
#include <kfopt/optim/kfac/kfac.hpp>

#include <cstdio>

using Scalar = KFOPT_COST_SCALAR;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

int main() {
  Matrix W1 = Matrix::Random(16, 8), dW1 = Matrix::Random(16, 8);
  Vector b1 = Vector::Random(16), db1 = Vector::Random(16);
  Matrix W2 = Matrix::Random(4, 16), dW2 = Matrix::Random(4, 16);
  Vector b2 = Vector::Random(4), db2 = Vector::Random(4);
  kfopt::Kfac<Scalar> kfac;
  const auto l1 = kfac.add_dense_layer("l1", W1, dW1, b1, db1);
  const auto l2 = kfac.add_dense_layer("l2", W2, dW2, b2, db2);
  kfac.record_statistics(l1, Matrix::Random(32, 8), Matrix::Random(32, 16));
  kfac.record_statistics(l2, Matrix::Random(32, 16), Matrix::Random(32, 4));
  const kfopt::Status s = kfac.step();
  std::printf("%d %g\n", static_cast<int>(s), static_cast<double>(W1.sum() + W2.sum()));
  return s == kfopt::Status::Success ? 0 : 1;
}
