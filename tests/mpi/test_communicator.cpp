// The Communicator's collectives against values every rank computes alone: each rank's
// contribution comes from a seeded generator, so any rank can recompute what all the others
// sent. Integer-valued contributions have exact sums in any order and are compared bit for
// bit; real-valued ones within a few ulps of the summed magnitude.
#include <catch2/catch.hpp>
#include <kfopt/mpi/communicator.hpp>

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "mpi/mpi_test_support.hpp"

using namespace kfopt_mpi_test;
using kfopt::mpi::Communicator;
using kfopt::mpi::Operation;

namespace {

template <typename Scalar>
double sum_tolerance(int ranks) {
  return 4.0 * ranks * static_cast<double>(std::numeric_limits<Scalar>::epsilon());
}

/// max |a − b| ≤ tol · P (entries of the sums are bounded by P).
template <typename A>
bool close_to(const A& a, const Mat<double>& b, double tol) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.template cast<double>() - b).cwiseAbs().maxCoeff() <= tol;
}

template <typename A>
bool equal_to(const A& a, const Mat<double>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && (a.template cast<double>() == b);
}

}  // namespace

TEMPLATE_TEST_CASE("mpi: allreduce sum and mean of contiguous blocks equal the local sum",
                   "[mpi][allreduce]", float, double) {
  using Scalar = TestType;
  Communicator comm;
  const int P = comm.size();
  for (const bool integers : {true, false}) {
    Mat<Scalar> x = contribution<Scalar>(1, comm.rank(), 7, 5, integers);
    const Mat<double> expected = expected_sum<Scalar>(1, P, 7, 5, integers);
    comm.allreduce_sum(x);
    CHECK(everywhere(comm, integers ? equal_to(x, expected)
                                    : close_to(x, expected, sum_tolerance<Scalar>(P))));

    Mat<Scalar> y = contribution<Scalar>(1, comm.rank(), 7, 5, integers);
    comm.allreduce_mean(y);
    CHECK(everywhere(comm, close_to(y, expected / P, sum_tolerance<Scalar>(P))));

    // A vector and a Map of a std::vector.
    std::vector<Scalar> raw(11);
    const Mat<Scalar> c = contribution<Scalar>(2, comm.rank(), 11, 1, integers);
    for (int k = 0; k < 11; ++k) raw[k] = c(k);
    comm.allreduce_sum(Eigen::Map<Vec<Scalar>>(raw.data(), 11));
    const Mat<double> e2 = expected_sum<Scalar>(2, P, 11, 1, integers);
    CHECK(everywhere(comm, integers ? equal_to(Eigen::Map<Vec<Scalar>>(raw.data(), 11), e2)
                                    : close_to(Eigen::Map<Vec<Scalar>>(raw.data(), 11), e2,
                                               sum_tolerance<Scalar>(P))));
  }
}

TEMPLATE_TEST_CASE("mpi: allreduce of non-contiguous blocks reduces the block and nothing else",
                   "[mpi][allreduce]", float, double) {
  using Scalar = TestType;
  Communicator comm;
  const int P = comm.size();
  // The parent matrix differs per rank; only the block's entries may change.
  const Mat<Scalar> parent0 = contribution<Scalar>(3, comm.rank(), 9, 8, true);
  const Mat<double> sum = expected_sum<Scalar>(3, P, 9, 8, true);

  Mat<Scalar> m = parent0;
  comm.allreduce_sum(m.block(2, 1, 4, 5));
  Mat<double> want = parent0.template cast<double>();
  want.block(2, 1, 4, 5) = sum.block(2, 1, 4, 5);
  CHECK(everywhere(comm, equal_to(m, want)));

  m = parent0;
  comm.allreduce_sum(m.row(3));  // stride 9 in column-major storage
  want = parent0.template cast<double>();
  want.row(3) = sum.row(3);
  CHECK(everywhere(comm, equal_to(m, want)));

  m = parent0;
  comm.allreduce_mean(m.col(6).reverse());  // no direct access at all
  want = parent0.template cast<double>();
  want.col(6) = sum.col(6) / P;
  CHECK(everywhere(comm, close_to(m, want, sum_tolerance<Scalar>(P))));

  // A row-major matrix and a strided Map.
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> r = parent0;
  comm.allreduce_sum(r.block(1, 2, 5, 3));
  want = parent0.template cast<double>();
  want.block(1, 2, 5, 3) = sum.block(1, 2, 5, 3);
  CHECK(everywhere(comm, equal_to(r, want)));

  m = parent0;
  Eigen::Map<Mat<Scalar>, 0, Eigen::OuterStride<>> every_other_column(
      m.data(), 9, 4, Eigen::OuterStride<>(18));
  comm.allreduce_sum(every_other_column);
  want = parent0.template cast<double>();
  for (int j = 0; j < 8; j += 2) want.col(j) = sum.col(j);
  CHECK(everywhere(comm, equal_to(m, want)));
}

TEMPLATE_TEST_CASE("mpi: broadcast from every root, contiguous and not", "[mpi][broadcast]", float,
                   double) {
  using Scalar = TestType;
  Communicator comm;
  for (int root = 0; root < comm.size(); ++root) {
    Mat<Scalar> x = contribution<Scalar>(4, comm.rank(), 6, 6, false);
    const Mat<Scalar> from_root = contribution<Scalar>(4, root, 6, 6, false);
    comm.broadcast(x, root);
    CHECK(everywhere(comm, x == from_root));

    Mat<Scalar> y = contribution<Scalar>(5, comm.rank(), 6, 6, false);
    const Mat<Scalar> own = y;
    comm.broadcast(y.block(1, 2, 3, 4), root);
    Mat<Scalar> want = own;
    want.block(1, 2, 3, 4) = contribution<Scalar>(5, root, 6, 6, false).block(1, 2, 3, 4);
    CHECK(everywhere(comm, y == want));
  }
}

TEMPLATE_TEST_CASE("mpi: packed-triangle allreduce equals the full allreduce at half the payload",
                   "[mpi][symmetric]", float, double) {
  using Scalar = TestType;
  Communicator comm;
  const int P = comm.size();
  const Eigen::Index n = 9;
  for (const bool integers : {true, false}) {
    Mat<Scalar> c = contribution<Scalar>(6, comm.rank(), n, n, integers);
    const Mat<Scalar> sym = c + c.transpose();
    Mat<Scalar> full = sym;
    comm.reset_traffic();
    comm.allreduce_sum(full);
    const auto full_bytes = comm.traffic()[Operation::Allreduce].payload_bytes;

    // The upper triangle of the input is not read: poison it.
    Mat<Scalar> packed = sym;
    packed.template triangularView<Eigen::StrictlyUpper>().setConstant(
        std::numeric_limits<Scalar>::quiet_NaN());
    comm.allreduce_sum_symmetric(packed);
    const auto packed_bytes = comm.traffic()[Operation::AllreduceSymmetric].payload_bytes;

    CHECK(everywhere(comm, packed == packed.transpose()));
    if (integers) {
      CHECK(everywhere(comm, packed == full));
    } else {
      CHECK(everywhere(comm, close_to(packed, full.template cast<double>(),
                                      2 * sum_tolerance<Scalar>(P))));
    }
    CHECK(full_bytes == static_cast<std::uint64_t>(n * n) * sizeof(Scalar));
    CHECK(packed_bytes == static_cast<std::uint64_t>(n * (n + 1) / 2) * sizeof(Scalar));

    Mat<Scalar> mean = sym;
    comm.allreduce_mean_symmetric(mean);
    CHECK(everywhere(comm, close_to(mean, full.template cast<double>() / P,
                                    2 * sum_tolerance<Scalar>(P))));
  }

  // broadcast_symmetric: every rank (root too) ends with root's lower triangle mirrored.
  for (int root = 0; root < P; ++root) {
    Mat<Scalar> s = contribution<Scalar>(7, comm.rank(), n, n, false);
    comm.broadcast_symmetric(s, root);
    const Mat<Scalar> root_c = contribution<Scalar>(7, root, n, n, false);
    Mat<Scalar> want = root_c.template triangularView<Eigen::Lower>();
    want.template triangularView<Eigen::StrictlyUpper>() = root_c.transpose();
    CHECK(everywhere(comm, s == want));
  }

  Mat<Scalar> not_square(3, 4);
  not_square.setZero();
  bool threw = false;
  try {
    comm.allreduce_sum_symmetric(not_square);
  } catch (const kfopt::ShapeError& e) {
    threw = std::string(e.what()).find("kfopt::mpi::Communicator::allreduce_sum_symmetric") !=
                std::string::npos &&
            std::string(e.what()).find("3x4") != std::string::npos;
  }
  CHECK(everywhere(comm, threw));
}

TEMPLATE_TEST_CASE("mpi: fused allreduce equals one allreduce per block, in one call",
                   "[mpi][fused]", float, double) {
  using Scalar = TestType;
  Communicator comm;
  const int P = comm.size();
  for (const bool integers : {true, false}) {
    std::vector<Mat<Scalar>> blocks;
    for (int k = 0; k < 4; ++k) {
      blocks.push_back(contribution<Scalar>(10 + k, comm.rank(), 3 + k, 5 - k, integers));
    }
    Mat<Scalar> single = contribution<Scalar>(20, comm.rank(), 4, 4, integers);
    Mat<Scalar> parent = contribution<Scalar>(21, comm.rank(), 6, 6, integers);

    std::vector<Mat<Scalar>> blocks_ref = blocks;
    Mat<Scalar> single_ref = single;
    Mat<Scalar> parent_ref = parent;
    for (auto& b : blocks_ref) comm.allreduce_sum(b);
    comm.allreduce_sum(single_ref);
    comm.allreduce_sum(parent_ref.block(1, 1, 3, 2));

    comm.reset_traffic();
    comm.allreduce_sum_fused(blocks, single, parent.block(1, 1, 3, 2));
    const auto fused = comm.traffic()[Operation::AllreduceFused];
    CHECK(comm.traffic().total().calls == 1);
    CHECK(fused.calls == 1);
    std::uint64_t elements = 16 + 6;
    for (const auto& b : blocks) elements += static_cast<std::uint64_t>(b.size());
    CHECK(fused.payload_bytes == elements * sizeof(Scalar));

    bool ok = true;
    for (std::size_t k = 0; k < blocks.size(); ++k) {
      const Mat<double> want = expected_sum<Scalar>(10 + static_cast<unsigned>(k), P,
                                                    blocks[k].rows(), blocks[k].cols(), integers);
      ok = ok && (integers ? (blocks[k] == blocks_ref[k] && equal_to(blocks[k], want))
                           : close_to(blocks[k], blocks_ref[k].template cast<double>(),
                                      2 * sum_tolerance<Scalar>(P)));
    }
    ok = ok && (integers ? single == single_ref
                         : close_to(single, single_ref.template cast<double>(),
                                    2 * sum_tolerance<Scalar>(P)));
    ok = ok && (integers ? parent == parent_ref
                         : close_to(parent, parent_ref.template cast<double>(),
                                    2 * sum_tolerance<Scalar>(P)));
    CHECK(everywhere(comm, ok));

    // Mean and the symmetric fused forms.
    Mat<Scalar> a = contribution<Scalar>(30, comm.rank(), 5, 5, integers);
    Mat<Scalar> g = contribution<Scalar>(31, comm.rank(), 3, 3, integers);
    a = (a + a.transpose()).eval();
    g = (g + g.transpose()).eval();
    Mat<Scalar> a_ref = a, g_ref = g, a_mean = a, g_mean = g, a_mean_ref = a, g_mean_ref = g;
    comm.allreduce_sum_symmetric(a_ref);
    comm.allreduce_sum_symmetric(g_ref);
    comm.allreduce_mean(a_mean_ref);
    comm.allreduce_mean(g_mean_ref);
    comm.reset_traffic();
    comm.allreduce_sum_symmetric_fused(a, g);
    CHECK(comm.traffic()[Operation::AllreduceSymmetricFused].payload_bytes ==
          (15u + 6u) * sizeof(Scalar));
    comm.allreduce_mean_fused(a_mean, g_mean);
    const double tol = 2 * sum_tolerance<Scalar>(P);
    CHECK(everywhere(comm, integers ? (a == a_ref && g == g_ref)
                                    : (close_to(a, a_ref.template cast<double>(), tol) &&
                                       close_to(g, g_ref.template cast<double>(), tol))));
    CHECK(everywhere(comm, close_to(a_mean, a_mean_ref.template cast<double>(), tol) &&
                               close_to(g_mean, g_mean_ref.template cast<double>(), tol)));
  }
}

TEST_CASE("mpi: fused allreduce allocates nothing after the first call", "[mpi][fused]") {
  Communicator comm;
  std::vector<Mat<double>> blocks;
  for (int k = 0; k < 5; ++k) blocks.push_back(contribution<double>(40 + k, comm.rank(), 6, k + 1, false));
  Mat<float> f = contribution<float>(50, comm.rank(), 7, 7, false);
  Mat<double> s = contribution<double>(51, comm.rank(), 8, 8, false);
  Mat<double> parent = contribution<double>(52, comm.rank(), 8, 8, false);
  auto run = [&] {
    comm.allreduce_mean_fused(blocks, parent.block(1, 1, 3, 3));
    comm.allreduce_sum_symmetric_fused(s, parent.block(0, 0, 4, 4));
    comm.allreduce_sum(f.row(2));
    comm.broadcast(parent.row(1), 0);
    comm.broadcast_symmetric(s, comm.size() - 1);
    (void)comm.any_rank(false);
  };
  run();  // buffers grow here
  const std::size_t scratch = comm.scratch_bytes();
  const long before = allocation_count();
  Eigen::internal::set_is_malloc_allowed(false);
  for (int k = 0; k < 3; ++k) run();
  Eigen::internal::set_is_malloc_allowed(true);
  const long after = allocation_count();
  CHECK(everywhere(comm, after == before && comm.scratch_bytes() == scratch));
}

TEST_CASE("mpi: any_rank and all_ranks agree on every rank", "[mpi][agreement]") {
  Communicator comm;
  const int P = comm.size();
  for (int k = 0; k < P; ++k) {
    const bool local = comm.rank() == k;
    const bool any = comm.any_rank(local);
    const bool all = comm.all_ranks(local);
    CHECK(everywhere(comm, any && all == (P == 1)));
  }
  CHECK(everywhere(comm, !comm.any_rank(false) && comm.all_ranks(true)));
  CHECK(comm.traffic()[Operation::Agreement].payload_bytes ==
        comm.traffic()[Operation::Agreement].calls * sizeof(int));
}

TEST_CASE("mpi: MPI errors become kfopt::MpiError naming the operation", "[mpi][errors]") {
  // A communicator of MPI_COMM_NULL (what MPI_Comm_split gives a rank it leaves out).
  bool threw_null = false;
  try {
    Communicator null_comm(MPI_COMM_NULL);
  } catch (const kfopt::MpiError& e) {
    const std::string what = e.what();
    threw_null = what.find("kfopt::mpi::Communicator") != std::string::npos &&
                 what.find("MPI_COMM_NULL") != std::string::npos;
  }

  // A root outside [0, P): MPI_Bcast itself returns MPI_ERR_ROOT (on every rank), which the
  // Communicator turns into an exception instead of MPI aborting the job.
  Communicator comm;
  Mat<double> x = Mat<double>::Ones(3, 3);
  const Mat<double> before = x;
  bool threw_root = false;
  int error_class = MPI_SUCCESS;
  try {
    comm.broadcast(x, comm.size());
  } catch (const kfopt::MpiError& e) {
    const std::string what = e.what();
    MPI_Error_class(e.error_code(), &error_class);
    threw_root = what.find("kfopt::mpi::Communicator::broadcast") != std::string::npos &&
                 what.find("MPI_Bcast") != std::string::npos &&
                 what.find("9 elements") != std::string::npos;
  }
  CHECK(error_class == MPI_ERR_ROOT);
  CHECK(x == before);

  // An error code no portable misuse provokes (MPI_ERR_COUNT): the message names the
  // operation, the MPI call, MPI's text and the message size.
  bool threw_count = false;
  try {
    kfopt::mpi::detail::check_mpi(MPI_ERR_COUNT, "kfopt::some_operation", "MPI_Allreduce", 12);
  } catch (const kfopt::MpiError& e) {
    const std::string what = e.what();
    threw_count = what.find("kfopt::some_operation: MPI_Allreduce failed") == 0 &&
                  what.find("12 elements") != std::string::npos && e.error_code() == MPI_ERR_COUNT;
  }
  CHECK(everywhere(comm, threw_null && threw_root && threw_count));
}
