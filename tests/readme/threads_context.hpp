// The program around the README's "Several threads" fragment (tests/readme/run_readme_test.cmake
// puts the fragment's #include lines above this file and its body into readme_fragment()).
// It runs the fragment (which sets two threads), then checks that the setting took and that a
// product large enough to be split gives the same bits as on one thread.
#include <kfopt/linalg/matrix_product_kernel.hpp>
#include <cstdio>
#include <cstring>

void readme_fragment();

namespace {
Eigen::MatrixXd product(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) {
  Eigen::MatrixXd C = Eigen::MatrixXd::Zero(A.rows(), B.cols());
  kfopt::detail::product_accumulate<double>(C, 1.0, A, B);
  return C;
}
}  // namespace

int main() {
  const Eigen::MatrixXd A = Eigen::MatrixXd::Random(300, 400), B = Eigen::MatrixXd::Random(400, 500);
  const Eigen::MatrixXd one = product(A, B);
  readme_fragment();
  if (kfopt::threads() != 2) return 1;
  const Eigen::MatrixXd two = product(A, B);
  const bool same = std::memcmp(one.data(), two.data(), sizeof(double) * one.size()) == 0;
  std::printf("threads: %d, same bits as one thread: %s\n", kfopt::threads(), same ? "yes" : "no");
  return same ? 0 : 1;
}
