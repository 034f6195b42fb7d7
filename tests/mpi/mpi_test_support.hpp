#pragma once
// Shared pieces of the MPI tests: seeded per-rank contributions that every rank can recompute
// for every other rank, and collective agreement on a check so that all ranks pass or fail a
// test case together (a REQUIRE failing on one rank only would leave the others waiting in
// the next collective).
#include <kfopt/mpi/communicator.hpp>

#include <Eigen/Core>
#include <cstring>
#include <random>
#include <vector>

namespace kfopt_mpi_test {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Number of global operator new calls so far (allocation_counter.cpp).
long allocation_count();

/// Rank r's contribution for test `seed`: real values in [-1, 1], or small integers (whose sums
/// are exact in any order, so results can be compared bit for bit).
template <typename Scalar>
Mat<Scalar> contribution(unsigned seed, int rank, Eigen::Index rows, Eigen::Index cols,
                         bool integers) {
  std::mt19937_64 gen(1000003ull * seed + 7919ull * static_cast<unsigned>(rank) + 17ull);
  std::uniform_real_distribution<double> real(-1.0, 1.0);
  std::uniform_int_distribution<int> integer(-50, 50);
  Mat<Scalar> m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i)
      m(i, j) = integers ? static_cast<Scalar>(integer(gen)) : static_cast<Scalar>(real(gen));
  return m;
}

/// Σ_{r < P} contribution(r), computed on this rank alone, in double.
template <typename Scalar>
Mat<double> expected_sum(unsigned seed, int ranks, Eigen::Index rows, Eigen::Index cols,
                         bool integers) {
  Mat<double> s = Mat<double>::Zero(rows, cols);
  for (int r = 0; r < ranks; ++r) {
    s += contribution<Scalar>(seed, r, rows, cols, integers).template cast<double>();
  }
  return s;
}

/// Whether `local` holds on every rank (one MPI_Allreduce with MPI_LAND).
inline bool everywhere(kfopt::mpi::Communicator& comm, bool local) {
  return comm.all_ranks(local);
}

/// Whether `bytes` equal rank 0's bytes (rank 0's copy is broadcast and compared on each rank).
inline bool same_bytes_as_rank0(kfopt::mpi::Communicator& comm, const std::vector<double>& bytes) {
  Eigen::Matrix<double, 1, 1> count;
  count(0) = static_cast<double>(bytes.size());
  comm.broadcast(count, 0);
  if (!comm.all_ranks(count(0) == static_cast<double>(bytes.size()))) return false;
  Eigen::Matrix<double, Eigen::Dynamic, 1> root = Eigen::Map<const Eigen::VectorXd>(
      bytes.data(), static_cast<Eigen::Index>(bytes.size()));
  comm.broadcast(root, 0);
  return comm.all_ranks(std::memcmp(root.data(), bytes.data(), bytes.size() * sizeof(double)) == 0);
}

}  // namespace kfopt_mpi_test
