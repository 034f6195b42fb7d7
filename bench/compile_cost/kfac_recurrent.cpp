// Compile-cost probe: K-FAC over one recurrent layer with the Option-2 approximation
// (construct, register, record sequence statistics, step). Built by bench/compile_cost.sh
// with -DKFOPT_COST_SCALAR=float or double.
#include <kfopt/optim/kfac/kfac.hpp>

#include <cstdio>

using Scalar = KFOPT_COST_SCALAR;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

int main() {
  const int in = 8, out = 16, t_max = 5, m = 4;
  Matrix W = Matrix::Random(out, in), dW = Matrix::Random(out, in);
  Vector b = Vector::Random(out), db = Vector::Random(out);
  kfopt::Kfac<Scalar> kfac;
  const auto id = kfac.add_recurrent_layer("rnn", W, dW, b, db,
                                           {kfopt::RecurrentApproximation::Option2});
  Eigen::VectorXi lengths(m);
  lengths << 5, 4, 3, 5;
  kfac.record_sequence_statistics(id, Matrix::Random(t_max * m, in),
                                  Matrix::Random(t_max * m, out), lengths);
  const kfopt::Status s = kfac.step();
  std::printf("%d %g\n", static_cast<int>(s), static_cast<double>(W.sum()));
  return s == kfopt::Status::Success ? 0 : 1;
}
