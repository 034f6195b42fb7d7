// Compile-cost probe: a training loop's optimizer part with Adam only.
// Built by bench/compile_cost.sh with -DKFOPT_COST_SCALAR=float or double.
#include <kfopt/optim/first_order/adam.hpp>

#include <cstdio>

using Scalar = KFOPT_COST_SCALAR;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

int main() {
  Matrix W1 = Matrix::Random(16, 8), dW1 = Matrix::Random(16, 8);
  Vector b1 = Vector::Random(16), db1 = Vector::Random(16);
  Matrix W2 = Matrix::Random(4, 16), dW2 = Matrix::Random(4, 16);
  kfopt::ParameterSet<Scalar> params;
  params.add("l1.weight", W1, dW1);
  params.add("l1.bias", b1, db1);
  params.add("l2.weight", W2, dW2);
  kfopt::Adam<Scalar> adam(params);
  const kfopt::Status s = adam.step();
  std::printf("%d %g\n", static_cast<int>(s), static_cast<double>(W1.sum() + W2.sum()));
  return s == kfopt::Status::Success ? 0 : 1;
}
