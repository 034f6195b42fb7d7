// The program around the README's MPI fragment (tests/readme/run_readme_test.cmake puts the
// fragment's #include lines above this file and its body into readme_fragment()). Each rank
// holds a different gradient; after the fragment's all-reduce and step, every rank must hold
// the parameters of one step on the mean gradient.
#include <kfopt/mpi/mpi.hpp>
#include <kfopt/optim/first_order/sgd.hpp>
#include <cstdio>

namespace {
Eigen::MatrixXd W = Eigen::MatrixXd::Zero(2, 3), dW(2, 3);
kfopt::ParameterSet<double> params = [] {
  kfopt::ParameterSet<double> p;
  p.add("fc.weight", W, dW);
  return p;
}();
kfopt::Sgd<double> optimizer(params);  // plain SGD: the step shows which gradient it took
}  // namespace

void readme_fragment();

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  dW = Eigen::MatrixXd::Constant(2, 3, static_cast<double>(rank + 1));  // this rank's share
  readme_fragment();
  // The reference: one SGD step on the mean gradient (1 + size) / 2, in one process.
  Eigen::MatrixXd R = Eigen::MatrixXd::Zero(2, 3), dR = Eigen::MatrixXd::Constant(2, 3, (1.0 + size) / 2.0);
  kfopt::ParameterSet<double> reference;
  reference.add("fc.weight", R, dR);
  kfopt::Sgd<double> one_process(reference);
  one_process.step();
  const int ok = (W - R).cwiseAbs().maxCoeff() <= 1e-15 ? 1 : 0;
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0) std::printf("MPI fragment on %d ranks: %s\n", size, all_ok ? "matches one process" : "differs");
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
