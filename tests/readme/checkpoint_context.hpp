// The program around the README's "Save and resume" fragment (tests/readme/run_readme_test.cmake
// puts the fragment's #include lines above this file and its body into readme_fragment()).
// It trains a small least-squares model with Adam for a few steps, runs the fragment (which
// saves the run and restores it), then checks the file: a fresh optimizer and model loaded
// from it continue exactly like the original.
#include <kfopt/io/checkpoint.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <cstdio>

namespace {
Eigen::MatrixXd W = Eigen::MatrixXd::Zero(2, 3), dW(2, 3);
kfopt::ParameterSet<double> params = [] {
  kfopt::ParameterSet<double> p;
  p.add("fc.weight", W, dW);
  return p;
}();
kfopt::Adam<double> adam(params);
void gradient(const Eigen::MatrixXd& w, Eigen::MatrixXd& g) { g = w - Eigen::MatrixXd::Ones(2, 3); }
}  // namespace

void readme_fragment();

int main() {
  for (int t = 0; t < 5; ++t) {
    gradient(W, dW);
    if (adam.step() != kfopt::Status::Success) return 1;
  }
  readme_fragment();
  Eigen::MatrixXd W2 = Eigen::MatrixXd::Zero(2, 3), dW2(2, 3);
  kfopt::ParameterSet<double> params2;
  params2.add("fc.weight", W2, dW2);
  kfopt::Adam<double> adam2(params2);
  const kfopt::Checkpoint saved = kfopt::load_checkpoint("run.h5");
  saved.restore("model", params2);
  saved.restore("optimizer", adam2);
  for (int t = 0; t < 5; ++t) {
    gradient(W, dW);
    gradient(W2, dW2);
    if (adam.step() != kfopt::Status::Success || adam2.step() != kfopt::Status::Success) return 1;
  }
  const bool same = W == W2 && adam.state_dict() == adam2.state_dict();
  std::printf("checkpoint fragment: resumed run %s the original\n", same ? "equals" : "differs from");
  return same ? 0 : 1;
}
