// Consumer smoke program: includes the umbrella header and checks one identity.
#include <kfopt/kfopt.hpp>

#include <cstdio>

int main() {
  Eigen::MatrixXd B = Eigen::MatrixXd::Random(3, 3);
  Eigen::MatrixXd C = Eigen::MatrixXd::Random(2, 2);
  Eigen::MatrixXd X = Eigen::MatrixXd::Random(2, 3);
  Eigen::MatrixXd Y(2, 3);
  kfopt::kron_matvec(B, C, X, Y);
  const double err = (Y - C * X * B.transpose()).norm();
  std::printf("kfopt %s consumer: |error| = %g\n", KFOPT_VERSION_STRING, err);
  return err < 1e-12 ? 0 : 1;
}
