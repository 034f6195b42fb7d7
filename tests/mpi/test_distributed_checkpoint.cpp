// Checkpoints of a data-parallel K-FAC run (kfopt/mpi/distributed_checkpoint.hpp): saved by
// rank 0, read by rank 0 and sent to every rank, restored everywhere or nowhere. The reference
// is the same run without the interruption. Built when both the MPI and the checkpoint
// targets exist (KFOPT_TEST_CHECKPOINT).
#if defined(KFOPT_TEST_CHECKPOINT)
#include <catch2/catch.hpp>
#include <kfopt/mpi/distributed_checkpoint.hpp>
#include <kfopt/mpi/distributed_kfac.hpp>
#include <kfopt/optim/first_order/adam.hpp>

#include <Eigen/Core>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <unistd.h>
#include <vector>

#include "mpi/mpi_test_support.hpp"
#include "mpi/two_layer_kfac_net.hpp"

using namespace kfopt_mpi_test;
using kfopt::CheckpointError;
using kfopt::Status;
using kfopt::mpi::Communicator;
using kfopt::mpi::DistributedKfac;

namespace {

/// A file name every rank agrees on (rank 0's process id), in the working directory.
std::string shared_path(Communicator& comm, const char* stem) {
  Eigen::Matrix<double, 1, 1> pid;
  pid(0) = static_cast<double>(::getpid());
  comm.broadcast(pid, 0);
  return std::string(stem) + "." + std::to_string(static_cast<long>(pid(0))) + ".h5";
}

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Steps [first, last) of data-parallel K-FAC on this rank's slice of the global batches.
void train(Net& net, DistributedKfac<double>& dk, Communicator& comm, int first, int last) {
  const Slice s = equal_slice(comm.rank(), comm.size(), kGlobal);
  for (int t = first; t < last; ++t) {
    const Batch b = global_batch(t);
    const Mat<double> X = b.X.middleRows(s.begin, s.count), T = b.T.middleRows(s.begin, s.count);
    net.forward_backward(X, T);
    if (dk.wants_statistics()) {
      dk.record_statistics(net.l1, X, net.G1);
      dk.record_statistics(net.l2, net.H, net.G2);
    }
    REQUIRE(dk.step() == Status::Success);
  }
}

kfopt::ParameterSet<double> parameters_of(Net& net) {
  kfopt::ParameterSet<double> p;
  p.add("fc1.W", net.W1, net.dW1);
  p.add("fc1.b", net.b1, net.db1);
  p.add("fc2.W", net.W2, net.dW2);
  p.add("fc2.b", net.b2, net.db2);
  return p;
}

kfopt::Checkpoint checkpoint_of(Net& net) {
  kfopt::Checkpoint ck;
  auto params = parameters_of(net);
  ck.set("model", kfopt::parameters_state_dict(params));
  ck.set("optimizer", net.kfac.state_dict());
  return ck;
}

std::vector<double> everything(const Net& net) {
  return fingerprint(net.kfac.state_dict(), {&net.W1, &net.W2}, {&net.b1, &net.b2});
}

}  // namespace

TEST_CASE("mpi checkpoints: saved by rank 0, restored on every rank, the run continues exactly",
          "[mpi][checkpoint]") {
  Communicator comm;
  const std::string path = shared_path(comm, "kfopt_mpi_resume");
  const kfopt::KfacOptions o = kfac_options();  // T_inv = 4: a refresh falls after the resume

  // The uninterrupted run: 18 steps, with a save after step 10 (the save changes nothing).
  Net straight(o);
  {
    DistributedKfac<double> dk(straight.kfac, comm);
    train(straight, dk, comm, 0, 10);
    kfopt::mpi::save_checkpoint(comm, path, checkpoint_of(straight));
    train(straight, dk, comm, 10, 18);
  }
  // Only rank 0 wrote (every rank sees the one file here, all ranks share the directory).
  REQUIRE(everywhere(comm, !file_bytes(path).empty()));

  // A fresh process state on every rank, restored from the file, runs steps 10..17.
  Net resumed(o);
  {
    const kfopt::Checkpoint ck = kfopt::mpi::load_checkpoint(comm, path);
    auto params = parameters_of(resumed);
    kfopt::mpi::restore(comm, ck, "model", params);
    kfopt::mpi::restore(comm, ck, "optimizer", resumed.kfac);
    DistributedKfac<double> dk(resumed.kfac, comm);
    train(resumed, dk, comm, 10, 18);
  }
  // Bit for bit the uninterrupted run's parameters and state, on every rank.
  REQUIRE(everywhere(comm, everything(resumed) == everything(straight)));
  REQUIRE(same_bytes_as_rank0(comm, everything(resumed)));
  REQUIRE(everywhere(comm, (resumed.W1 - Net(o).W1).norm() > 1e-3));
  comm.barrier();
  if (comm.is_root()) std::remove(path.c_str());
}

TEST_CASE("mpi checkpoints: a state that differs on one rank is not saved, the old file stays",
          "[mpi][checkpoint]") {
  Communicator comm;
  const std::string path = shared_path(comm, "kfopt_mpi_drift");
  Net net(kfac_options());
  DistributedKfac<double> dk(net.kfac, comm);
  train(net, dk, comm, 0, 3);
  kfopt::mpi::save_checkpoint(comm, path, checkpoint_of(net));
  const std::vector<char> saved = file_bytes(path);

  train(net, dk, comm, 3, 5);
  if (comm.rank() == comm.size() - 1) net.W2(0, 0) += 1e-12;  // one rank drifts
  std::string message;
  try {
    kfopt::mpi::save_checkpoint(comm, path, checkpoint_of(net));
  } catch (const CheckpointError& e) {
    message = e.what();
  }
  // Every rank refused, naming the rank and the file; the previous checkpoint is intact.
  const std::string rank = "rank " + std::to_string(comm.size() - 1) + " of";
  REQUIRE(everywhere(comm, message.find("kfopt::mpi::save_checkpoint") != std::string::npos));
  REQUIRE(everywhere(comm, message.find(rank) != std::string::npos));
  REQUIRE(everywhere(comm, message.find(path) != std::string::npos));
  // It names the dict that differs (the weights), not the ones that agree.
  REQUIRE(everywhere(comm, message.find("dicts 'model';") != std::string::npos));
  REQUIRE(everywhere(comm, file_bytes(path) == saved));

  // Saving rank-specific state on purpose: allowed without the check (rank 0's copy is written).
  kfopt::mpi::DistributedSaveOptions lenient;
  lenient.require_identical = false;
  kfopt::mpi::save_checkpoint(comm, path, checkpoint_of(net), lenient);
  REQUIRE(everywhere(comm, file_bytes(path) != saved));
  comm.barrier();
  if (comm.is_root()) std::remove(path.c_str());
}

TEST_CASE("mpi checkpoints: failures of the root's file reach every rank", "[mpi][checkpoint]") {
  Communicator comm;
  Net net(kfac_options());
  const std::vector<double> before = everything(net);
  auto message_of = [&](auto&& call) {
    std::string m;
    try {
      call();
    } catch (const CheckpointError& e) {
      m = e.what();
    }
    return m;
  };
  // A directory that does not exist: the root cannot write, every rank throws.
  const std::string unwritable = "/nonexistent-kfopt-directory/run.h5";
  std::string m = message_of([&] { kfopt::mpi::save_checkpoint(comm, unwritable, checkpoint_of(net)); });
  REQUIRE(everywhere(comm, m.find("rank 0 of") != std::string::npos &&
                               m.find(unwritable) != std::string::npos));
  // A missing file: the root cannot read, every rank throws.
  m = message_of([&] { (void)kfopt::mpi::load_checkpoint(comm, "kfopt-no-such-file.h5"); });
  REQUIRE(everywhere(comm, m.find("kfopt::mpi::load_checkpoint") != std::string::npos &&
                               m.find("kfopt-no-such-file.h5") != std::string::npos));
  // A file that is not a checkpoint: every rank parses the root's bytes and refuses them.
  const std::string garbage = shared_path(comm, "kfopt_mpi_garbage");
  if (comm.is_root()) std::ofstream(garbage) << "not an HDF5 file";
  comm.barrier();
  m = message_of([&] { (void)kfopt::mpi::load_checkpoint(comm, garbage); });
  REQUIRE(everywhere(comm, m.find(garbage) != std::string::npos));
  comm.barrier();
  if (comm.is_root()) std::remove(garbage.c_str());
  REQUIRE(everywhere(comm, everything(net) == before));
}

TEST_CASE("mpi checkpoints: a restore refused on one rank is undone on the others",
          "[mpi][checkpoint]") {
  Communicator comm;
  const std::string path = shared_path(comm, "kfopt_mpi_refused");
  // Adam on a vector of 4, trained a little, saved.
  Vec<double> x = Vec<double>::LinSpaced(4, -1.0, 1.0), dx = Vec<double>::Ones(4);
  kfopt::ParameterSet<double> ps;
  ps.add("x", x, dx);
  kfopt::Adam<double> adam(ps);
  for (int t = 0; t < 3; ++t) {
    dx = x + Vec<double>::Constant(4, 0.5);
    REQUIRE(adam.step() == Status::Success);
  }
  kfopt::Checkpoint ck;
  ck.set("optimizer", adam.state_dict());
  ck.set("model", kfopt::parameters_state_dict(ps));
  kfopt::mpi::save_checkpoint(comm, path, ck);
  const kfopt::Checkpoint loaded = kfopt::mpi::load_checkpoint(comm, path);

  // Every rank has a fresh optimizer; the last rank's has another shape, so its restore fails.
  const bool odd = comm.rank() == comm.size() - 1;
  Vec<double> y = Vec<double>::Zero(odd ? 5 : 4), dy = Vec<double>::Zero(odd ? 5 : 4);
  kfopt::ParameterSet<double> fresh;
  fresh.add("x", y, dy);
  kfopt::Adam<double> target(fresh);
  const kfopt::StateDict untouched = target.state_dict();
  const Vec<double> y_before = y;
  std::string m;
  try {
    kfopt::mpi::restore(comm, loaded, "optimizer", target);
  } catch (const CheckpointError& e) {
    m = e.what();
  }
  const std::string rank = "rank " + std::to_string(comm.size() - 1) + " of";
  REQUIRE(everywhere(comm, m.find(rank) != std::string::npos));
  // No rank kept the checkpoint's state (the others restored and put their own back).
  REQUIRE(everywhere(comm, fingerprint(target.state_dict(), {}, {}) == fingerprint(untouched, {}, {})));
  m.clear();
  try {
    kfopt::mpi::restore(comm, loaded, "model", fresh);
  } catch (const CheckpointError& e) {
    m = e.what();
  }
  REQUIRE(everywhere(comm, m.find(rank) != std::string::npos));
  REQUIRE(everywhere(comm, y == y_before));
  // With matching shapes everywhere the same calls succeed and take the saved values.
  kfopt::ParameterSet<double> good;
  Vec<double> z = Vec<double>::Zero(4), dz = Vec<double>::Zero(4);
  good.add("x", z, dz);
  kfopt::Adam<double> ok(good);
  kfopt::mpi::restore(comm, loaded, "model", good);
  kfopt::mpi::restore(comm, loaded, "optimizer", ok);
  REQUIRE(everywhere(comm, z == x));
  comm.barrier();
  if (comm.is_root()) std::remove(path.c_str());
}
#endif
