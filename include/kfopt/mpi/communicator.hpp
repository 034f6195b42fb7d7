#pragma once
/// \file communicator.hpp
/// \brief The MPI collectives kfopt's data-parallel training needs, on Eigen blocks in place:
/// all-reduce (sum, mean), broadcast, the packed lower triangle of symmetric matrices (half the
/// traffic), one fused all-reduce over many blocks, and an any-rank / all-rank agreement.
///
/// \code
///   MPI_Init(&argc, &argv);
///   {
///     kfopt::mpi::Communicator comm;               // MPI_COMM_WORLD
///     Eigen::MatrixXd A = ...;                      // this rank's contribution
///     comm.allreduce_mean(A);                       // A = (1/P) Σ_ranks A_r, on every rank
///     comm.allreduce_sum_symmetric(S);              // n(n+1)/2 scalars instead of n²
///     comm.allreduce_sum_fused(W, b, more_blocks);  // one MPI_Allreduce for all of them
///     comm.broadcast(X.block(0, 0, 3, 3), 0);       // non-contiguous blocks too
///     if (comm.any_rank(!grad.allFinite())) { ... } // every rank takes the same branch
///   }
///   MPI_Finalize();
/// \endcode
///
/// **Ownership.** A Communicator does not own its MPI_Comm (it never frees it); the
/// communicator must stay valid while the object is used, and MPI must be initialized before
/// construction and finalized after destruction. The constructor sets the communicator's error
/// handler to MPI_ERRORS_RETURN (a property of the MPI communicator itself, visible to other
/// code that uses it) so that every failed call becomes a kfopt::MpiError naming the
/// operation instead of aborting the job.
///
/// **Blocks.** Every operation takes any writable dense Eigen expression with float or double
/// scalars: matrices, vectors, Maps, Refs, `M.block(...)`, `M.row(i)`, `M.col(j)`. Contiguous
/// storage is handed to MPI as is (MPI_IN_PLACE); anything else is packed into a scratch buffer
/// of the Communicator, reduced there, and unpacked. Every rank must pass blocks of the same
/// shapes in the same order (as for any MPI collective); shapes are only checked locally.
///
/// **Allocation.** The scratch buffers (one per scalar type) grow to the largest message seen
/// and are then reused: after the first call of each size, no operation allocates.
///
/// **Traffic.** Each operation records its calls and its payload bytes (elements handed to MPI
/// × sizeof(scalar), i.e. after packing: n(n+1)/2 elements for a symmetric n×n block) in
/// `traffic()`. What a payload costs on the network depends on MPI's algorithm; see
/// cost_model.hpp (a ring all-reduce sends 2(P−1)/P × payload per rank).
///
/// **Numerics.** Sums are formed by MPI in an order that depends on its algorithm and on P, so
/// the result differs from a one-process sum by rounding only (a few ulps per addition). Open
/// MPI's and MPICH's all-reduce algorithms hand the same bits to every rank (each element is
/// reduced once, or in a rank-independent order up to the commutativity of a + b); the tests
/// check this at P = 2 and 3. Means divide the sum by P.
///
/// Not thread-safe: one Communicator per thread (its scratch buffers are shared by its calls).

#include <mpi.h>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/mpi/mpi_error.hpp"

namespace kfopt {
namespace mpi {

/// The kinds of operations whose traffic a Communicator counts.
enum class Operation : int {
  Allreduce = 0,            ///< allreduce_sum / allreduce_mean of one block
  AllreduceSymmetric,       ///< allreduce_*_symmetric: packed lower triangle
  AllreduceFused,           ///< allreduce_*_fused: many blocks, one MPI_Allreduce
  AllreduceSymmetricFused,  ///< allreduce_*_symmetric_fused: many packed triangles, one call
  Broadcast,                ///< broadcast of one block
  BroadcastSymmetric,       ///< broadcast_symmetric: packed lower triangle
  Agreement,                ///< any_rank / all_ranks (one int)
};

/// Number of Operation values.
inline constexpr std::size_t operation_count = 7;

/// Name of an operation, for reports.
inline const char* to_string(Operation op) noexcept {
  switch (op) {
    case Operation::Allreduce: return "allreduce";
    case Operation::AllreduceSymmetric: return "allreduce_symmetric";
    case Operation::AllreduceFused: return "allreduce_fused";
    case Operation::AllreduceSymmetricFused: return "allreduce_symmetric_fused";
    case Operation::Broadcast: return "broadcast";
    case Operation::BroadcastSymmetric: return "broadcast_symmetric";
    case Operation::Agreement: return "agreement";
  }
  return "unknown";
}

/// Calls and payload bytes of one kind of operation on one rank.
struct TrafficCounter {
  std::uint64_t calls = 0;          ///< collective calls made (chunks of > INT_MAX count once)
  std::uint64_t payload_bytes = 0;  ///< elements handed to MPI × sizeof(element)
};

/// Traffic of a Communicator, per Operation.
class Traffic {
 public:
  /// The counter of one operation.
  const TrafficCounter& operator[](Operation op) const noexcept {
    return counters_[static_cast<std::size_t>(op)];
  }
  /// Sum over all operations.
  TrafficCounter total() const noexcept {
    TrafficCounter t;
    for (const auto& c : counters_) {
      t.calls += c.calls;
      t.payload_bytes += c.payload_bytes;
    }
    return t;
  }
  /// Counts one call of `op` that handed `bytes` bytes to MPI.
  void record(Operation op, std::uint64_t bytes) noexcept {
    auto& c = counters_[static_cast<std::size_t>(op)];
    ++c.calls;
    c.payload_bytes += bytes;
  }
  /// Sets every counter to zero.
  void reset() noexcept { counters_ = {}; }

 private:
  std::array<TrafficCounter, operation_count> counters_{};
};

namespace detail {

template <typename Scalar>
struct MpiScalar {
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value,
                "kfopt::mpi: blocks must hold float or double");
};
template <>
struct MpiScalar<float> {
  static MPI_Datatype type() noexcept { return MPI_FLOAT; }
};
template <>
struct MpiScalar<double> {
  static MPI_Datatype type() noexcept { return MPI_DOUBLE; }
};

/// Whether T (after removing references and const) is a dense Eigen expression.
template <typename T>
inline constexpr bool is_dense_block =
    std::is_base_of<Eigen::DenseBase<std::decay_t<T>>, std::decay_t<T>>::value;

/// Scalar type of a dense block, or of the elements of a range of dense blocks.
template <typename T, bool IsBlock = is_dense_block<T>>
struct BlockScalar {
  using type = typename std::decay_t<T>::Scalar;
};
template <typename T>
struct BlockScalar<T, false> {
  using type = typename std::decay_t<decltype(*std::begin(std::declval<T&>()))>::Scalar;
};

/// Applies f to `arg` if it is a dense block, else to every element of the range `arg`.
template <typename F, typename T>
void for_each_block(F& f, T& arg) {
  if constexpr (is_dense_block<T>) {
    f(arg.derived());
  } else {
    for (auto& block : arg) f(block.derived());
  }
}

/// Pointer to the storage of `x` if its elements are contiguous and writable, else nullptr.
template <typename Derived>
typename Derived::Scalar* contiguous_data(Derived& x) {
  constexpr int flags = static_cast<int>(Derived::Flags);
  if constexpr ((flags & Eigen::DirectAccessBit) != 0 && (flags & Eigen::LvalueBit) != 0 &&
                !std::is_const<Derived>::value) {
    if (x.size() == 0) return x.data();
    if (x.innerStride() == 1 && (x.outerSize() <= 1 || x.outerStride() == x.innerSize())) {
      return x.data();
    }
  }
  return nullptr;
}

inline std::int64_t packed_triangle_size(Eigen::Index n) {
  return static_cast<std::int64_t>(n) * (static_cast<std::int64_t>(n) + 1) / 2;
}

/// Lower triangle of `m` (with the diagonal), column by column, into `out`.
template <typename Derived>
void pack_lower(const Derived& m, typename Derived::Scalar* out) {
  const Eigen::Index n = m.rows();
  for (Eigen::Index j = 0; j < n; ++j) {
    for (Eigen::Index i = j; i < n; ++i) *out++ = m(i, j);
  }
}

/// Inverse of pack_lower, writing both triangles (the upper one mirrors the lower).
template <typename Derived>
void unpack_symmetric(const typename Derived::Scalar* in, Derived& m) {
  const Eigen::Index n = m.rows();
  for (Eigen::Index j = 0; j < n; ++j) {
    m(j, j) = *in++;
    for (Eigen::Index i = j + 1; i < n; ++i) {
      const auto v = *in++;
      m(i, j) = v;
      m(j, i) = v;
    }
  }
}

}  // namespace detail

/// Non-owning wrapper of an MPI communicator with in-place collectives on Eigen blocks (see
/// the file comment for ownership, allocation, traffic and numerics).
class Communicator {
 public:
  /// Wraps MPI_COMM_WORLD.
  Communicator() : Communicator(MPI_COMM_WORLD) {}

  /// Wraps `comm` (not owned). Throws MpiError if MPI is not initialized (or already
  /// finalized) or if `comm` is MPI_COMM_NULL, and sets MPI_ERRORS_RETURN on `comm`.
  explicit Communicator(MPI_Comm comm) : comm_(comm) {
    constexpr const char* op = "kfopt::mpi::Communicator";
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized == 0 || finalized != 0) {
      throw MpiError(std::string(op) + ": MPI is " +
                         (finalized != 0 ? "already finalized" : "not initialized") +
                         " (call MPI_Init before and MPI_Finalize after every kfopt::mpi use)",
                     MPI_ERR_OTHER);
    }
    if (comm == MPI_COMM_NULL) {
      throw MpiError(std::string(op) +
                         ": the communicator is MPI_COMM_NULL (e.g. this rank was left out "
                         "of an MPI_Comm_split with MPI_UNDEFINED); no collective can run on it",
                     MPI_ERR_COMM);
    }
    detail::check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), op,
                      "MPI_Comm_set_errhandler");
    detail::check_mpi(MPI_Comm_rank(comm_, &rank_), op, "MPI_Comm_rank");
    detail::check_mpi(MPI_Comm_size(comm_, &size_), op, "MPI_Comm_size");
  }

  /// The wrapped communicator.
  MPI_Comm get() const noexcept { return comm_; }
  /// This process's rank in [0, size()).
  int rank() const noexcept { return rank_; }
  /// Number of ranks P.
  int size() const noexcept { return size_; }
  /// Whether this rank is `root` (rank 0 by default: the one that prints and writes files).
  bool is_root(int root = 0) const noexcept { return rank_ == root; }

  /// Payload counters of every operation since construction or reset_traffic().
  const Traffic& traffic() const noexcept { return traffic_; }
  /// Sets every traffic counter to zero.
  void reset_traffic() noexcept { traffic_.reset(); }

  // --- one block -------------------------------------------------------------------------

  /// x ← Σ_ranks x_r on every rank (MPI_SUM), in place.
  template <typename Derived>
  void allreduce_sum(Eigen::DenseBase<Derived>& x) {
    reduce_block(x.derived(), false, "kfopt::mpi::Communicator::allreduce_sum");
  }
  template <typename Derived>
  /// As above, for a temporary block expression (e.g. `M.block(0, 0, 3, 3)`).
  void allreduce_sum(Eigen::DenseBase<Derived>&& x) {
    reduce_block(x.derived(), false, "kfopt::mpi::Communicator::allreduce_sum");
  }

  /// x ← (1/P) Σ_ranks x_r on every rank, in place.
  template <typename Derived>
  void allreduce_mean(Eigen::DenseBase<Derived>& x) {
    reduce_block(x.derived(), true, "kfopt::mpi::Communicator::allreduce_mean");
  }
  template <typename Derived>
  /// As above, for a temporary block expression.
  void allreduce_mean(Eigen::DenseBase<Derived>&& x) {
    reduce_block(x.derived(), true, "kfopt::mpi::Communicator::allreduce_mean");
  }

  /// x ← x on rank `root`, on every rank (MPI_Bcast), in place. A `root` outside [0, P) is
  /// reported by MPI (MpiError).
  template <typename Derived>
  void broadcast(Eigen::DenseBase<Derived>& x, int root = 0) {
    broadcast_block(x.derived(), root);
  }
  template <typename Derived>
  /// As above, for a temporary block expression.
  void broadcast(Eigen::DenseBase<Derived>&& x, int root = 0) {
    broadcast_block(x.derived(), root);
  }

  // --- symmetric blocks: packed lower triangle ------------------------------------------

  /// For symmetric n×n blocks: the lower triangles (with the diagonal) are summed over the
  /// ranks, n(n+1)/2 scalars instead of n², and written to both triangles of `s` on every rank.
  /// The upper triangle of the input is not read. Throws ShapeError if `s` is not square.
  template <typename Derived>
  void allreduce_sum_symmetric(Eigen::DenseBase<Derived>& s) {
    reduce_symmetric(s.derived(), false, "kfopt::mpi::Communicator::allreduce_sum_symmetric");
  }
  template <typename Derived>
  /// As above, for a temporary block expression.
  void allreduce_sum_symmetric(Eigen::DenseBase<Derived>&& s) {
    reduce_symmetric(s.derived(), false, "kfopt::mpi::Communicator::allreduce_sum_symmetric");
  }
  /// Mean over the ranks of symmetric blocks, as allreduce_sum_symmetric.
  template <typename Derived>
  void allreduce_mean_symmetric(Eigen::DenseBase<Derived>& s) {
    reduce_symmetric(s.derived(), true, "kfopt::mpi::Communicator::allreduce_mean_symmetric");
  }
  template <typename Derived>
  /// As above, for a temporary block expression.
  void allreduce_mean_symmetric(Eigen::DenseBase<Derived>&& s) {
    reduce_symmetric(s.derived(), true, "kfopt::mpi::Communicator::allreduce_mean_symmetric");
  }

  /// Root's lower triangle to every rank (n(n+1)/2 scalars); every rank, root included, ends
  /// with the symmetric matrix it defines (root's upper triangle is overwritten by the mirror
  /// of its lower one, so all ranks hold the same bits).
  template <typename Derived>
  void broadcast_symmetric(Eigen::DenseBase<Derived>& s, int root = 0) {
    broadcast_symmetric_block(s.derived(), root);
  }
  template <typename Derived>
  /// As above, for a temporary block expression.
  void broadcast_symmetric(Eigen::DenseBase<Derived>&& s, int root = 0) {
    broadcast_symmetric_block(s.derived(), root);
  }

  // --- many blocks, one call -------------------------------------------------------------

  /// Sums every given block over the ranks with ONE MPI_Allreduce: the blocks are packed
  /// into one persistent buffer, reduced, and unpacked. Each argument is a dense block or a
  /// range of dense blocks (e.g. a std::vector<Eigen::MatrixXd>); all hold the same scalar
  /// type. Same result as one allreduce_sum per block (each element is still a sum of P
  /// values; only the message differs).
  template <typename... Blocks>
  void allreduce_sum_fused(Blocks&&... blocks) {
    reduce_fused(false, false, "kfopt::mpi::Communicator::allreduce_sum_fused", blocks...);
  }
  /// Mean over the ranks of every given block, in one MPI_Allreduce.
  template <typename... Blocks>
  void allreduce_mean_fused(Blocks&&... blocks) {
    reduce_fused(true, false, "kfopt::mpi::Communicator::allreduce_mean_fused", blocks...);
  }
  /// allreduce_sum_symmetric over many square blocks in one MPI_Allreduce of
  /// Σ n_i(n_i+1)/2 scalars (e.g. every Kronecker factor of a network at once).
  template <typename... Blocks>
  void allreduce_sum_symmetric_fused(Blocks&&... blocks) {
    reduce_fused(false, true, "kfopt::mpi::Communicator::allreduce_sum_symmetric_fused",
                 blocks...);
  }
  /// allreduce_mean_symmetric over many square blocks in one MPI_Allreduce.
  template <typename... Blocks>
  void allreduce_mean_symmetric_fused(Blocks&&... blocks) {
    reduce_fused(true, true, "kfopt::mpi::Communicator::allreduce_mean_symmetric_fused",
                 blocks...);
  }

  // --- agreement -------------------------------------------------------------------------

  /// True on every rank if `local` is true on at least one rank (MPI_LOR of one int), e.g.
  /// "some rank saw a non-finite gradient, so every rank skips".
  bool any_rank(bool local) {
    return agree(local, MPI_LOR, "kfopt::mpi::Communicator::any_rank");
  }
  /// True on every rank if `local` is true on all ranks (MPI_LAND of one int).
  bool all_ranks(bool local) {
    return agree(local, MPI_LAND, "kfopt::mpi::Communicator::all_ranks");
  }

  /// The lowest rank on which `local` is true, on every rank; size() if it is true nowhere
  /// (MPI_MIN of one int; counted as an Agreement). E.g. the first rank that failed, whose
  /// message broadcast_bytes() can then send to the others.
  int first_rank_where(bool local) {
    int value = local ? rank_ : size_;
    traffic_.record(Operation::Agreement, sizeof(int));
    detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MIN, comm_),
                      "kfopt::mpi::Communicator::first_rank_where", "MPI_Allreduce", 1);
    return value;
  }

  /// `bytes` ← rank `root`'s bytes on every rank (its size first, then the bytes in chunks of
  /// at most INT_MAX; other ranks' vectors are resized). Counted as one Broadcast of the
  /// bytes plus the 8-byte size. For files, messages and other untyped data.
  void broadcast_bytes(std::vector<unsigned char>& bytes, int root = 0) {
    constexpr const char* operation = "kfopt::mpi::Communicator::broadcast_bytes";
    std::int64_t n = static_cast<std::int64_t>(bytes.size());
    detail::check_mpi(MPI_Bcast(&n, 1, MPI_INT64_T, root, comm_), operation, "MPI_Bcast", 1);
    if (rank_ != root) bytes.resize(static_cast<std::size_t>(n));
    traffic_.record(Operation::Broadcast, static_cast<std::uint64_t>(n) + sizeof(n));
    unsigned char dummy = 0;
    unsigned char* data = n > 0 ? bytes.data() : &dummy;
    std::int64_t offset = 0;
    do {
      const int chunk = static_cast<int>(std::min<std::int64_t>(n - offset, INT_MAX));
      detail::check_mpi(MPI_Bcast(data + offset, chunk, MPI_BYTE, root, comm_), operation,
                        "MPI_Bcast", n);
      offset += chunk;
    } while (offset < n);
  }

  /// MPI_Barrier (for timing; no traffic is counted).
  void barrier() {
    detail::check_mpi(MPI_Barrier(comm_), "kfopt::mpi::Communicator::barrier", "MPI_Barrier");
  }

  /// Bytes of scratch buffer held (grows to the largest packed message, then stays).
  std::size_t scratch_bytes() const noexcept {
    return scratch_float_.capacity() * sizeof(float) +
           scratch_double_.capacity() * sizeof(double);
  }

 private:
  template <typename Scalar>
  Scalar* scratch(std::int64_t n) {
    auto& buffer = scratch_vector<Scalar>();
    const auto needed = static_cast<std::size_t>(std::max<std::int64_t>(n, 1));
    if (buffer.size() < needed) buffer.resize(needed);
    return buffer.data();
  }
  template <typename Scalar>
  std::vector<Scalar>& scratch_vector() {
    if constexpr (std::is_same<Scalar, float>::value) {
      return scratch_float_;
    } else {
      return scratch_double_;
    }
  }

  /// MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_SUM) in chunks of at most INT_MAX elements;
  /// then data /= P when `mean`.
  template <typename Scalar>
  void allreduce_raw(Scalar* data, std::int64_t n, bool mean, Operation kind,
                     const char* operation) {
    (void)detail::MpiScalar<Scalar>{};
    traffic_.record(kind, static_cast<std::uint64_t>(n) * sizeof(Scalar));
    Scalar dummy{};
    if (data == nullptr) data = &dummy;
    std::int64_t offset = 0;
    do {
      const int chunk = static_cast<int>(std::min<std::int64_t>(n - offset, INT_MAX));
      detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + offset, chunk,
                                      detail::MpiScalar<Scalar>::type(), MPI_SUM, comm_),
                        operation, "MPI_Allreduce", n);
      offset += chunk;
    } while (offset < n);
    if (mean) {
      const Scalar p = static_cast<Scalar>(size_);
      for (std::int64_t k = 0; k < n; ++k) data[k] /= p;
    }
  }

  template <typename Scalar>
  void broadcast_raw(Scalar* data, std::int64_t n, int root, Operation kind,
                     const char* operation) {
    (void)detail::MpiScalar<Scalar>{};
    traffic_.record(kind, static_cast<std::uint64_t>(n) * sizeof(Scalar));
    Scalar dummy{};
    if (data == nullptr) data = &dummy;
    std::int64_t offset = 0;
    do {
      const int chunk = static_cast<int>(std::min<std::int64_t>(n - offset, INT_MAX));
      detail::check_mpi(
          MPI_Bcast(data + offset, chunk, detail::MpiScalar<Scalar>::type(), root, comm_),
          operation, "MPI_Bcast", n);
      offset += chunk;
    } while (offset < n);
  }

  template <typename Derived>
  void reduce_block(Derived& x, bool mean, const char* operation) {
    using Scalar = typename Derived::Scalar;
    const std::int64_t n = x.size();
    if (Scalar* data = detail::contiguous_data(x)) {
      allreduce_raw(data, n, mean, Operation::Allreduce, operation);
      return;
    }
    Scalar* buffer = scratch<Scalar>(n);
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> packed(buffer, x.rows(),
                                                                              x.cols());
    packed = x;
    allreduce_raw(buffer, n, mean, Operation::Allreduce, operation);
    x = packed;
  }

  template <typename Derived>
  void broadcast_block(Derived& x, int root) {
    using Scalar = typename Derived::Scalar;
    constexpr const char* operation = "kfopt::mpi::Communicator::broadcast";
    const std::int64_t n = x.size();
    if (Scalar* data = detail::contiguous_data(x)) {
      broadcast_raw(data, n, root, Operation::Broadcast, operation);
      return;
    }
    Scalar* buffer = scratch<Scalar>(n);
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> packed(buffer, x.rows(),
                                                                              x.cols());
    if (rank_ == root) packed = x;
    broadcast_raw(buffer, n, root, Operation::Broadcast, operation);
    x = packed;
  }

  template <typename Derived>
  void reduce_symmetric(Derived& s, bool mean, const char* operation) {
    using Scalar = typename Derived::Scalar;
    kfopt::detail::require_square(operation, "the symmetric block", s);
    const std::int64_t n = detail::packed_triangle_size(s.rows());
    Scalar* buffer = scratch<Scalar>(n);
    detail::pack_lower(s, buffer);
    allreduce_raw(buffer, n, mean, Operation::AllreduceSymmetric, operation);
    detail::unpack_symmetric(buffer, s);
  }

  template <typename Derived>
  void broadcast_symmetric_block(Derived& s, int root) {
    using Scalar = typename Derived::Scalar;
    constexpr const char* operation = "kfopt::mpi::Communicator::broadcast_symmetric";
    kfopt::detail::require_square(operation, "the symmetric block", s);
    const std::int64_t n = detail::packed_triangle_size(s.rows());
    Scalar* buffer = scratch<Scalar>(n);
    if (rank_ == root) detail::pack_lower(s, buffer);
    broadcast_raw(buffer, n, root, Operation::BroadcastSymmetric, operation);
    detail::unpack_symmetric(buffer, s);
  }

  template <typename First, typename... Rest>
  void reduce_fused(bool mean, bool symmetric, const char* operation, First& first,
                    Rest&... rest) {
    using Scalar = typename detail::BlockScalar<First>::type;
    static_assert((std::is_same<Scalar, typename detail::BlockScalar<Rest>::type>::value && ...),
                  "kfopt::mpi::Communicator: fused blocks must all hold the same scalar type");
    std::int64_t n = 0;
    auto count = [&](auto& b) {
      if (symmetric) {
        kfopt::detail::require_square(operation, "a symmetric block", b);
        n += detail::packed_triangle_size(b.rows());
      } else {
        n += b.size();
      }
    };
    detail::for_each_block(count, first);
    (detail::for_each_block(count, rest), ...);

    Scalar* const buffer = scratch<Scalar>(n);
    Scalar* cursor = buffer;
    auto pack = [&](auto& b) {
      if (symmetric) {
        detail::pack_lower(b, cursor);
        cursor += detail::packed_triangle_size(b.rows());
      } else {
        Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>(cursor, b.rows(),
                                                                          b.cols()) = b;
        cursor += b.size();
      }
    };
    detail::for_each_block(pack, first);
    (detail::for_each_block(pack, rest), ...);

    allreduce_raw(buffer, n, mean,
                  symmetric ? Operation::AllreduceSymmetricFused : Operation::AllreduceFused,
                  operation);

    cursor = buffer;
    auto unpack = [&](auto& b) {
      if (symmetric) {
        detail::unpack_symmetric(static_cast<const Scalar*>(cursor), b);
        cursor += detail::packed_triangle_size(b.rows());
      } else {
        b = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>(
            cursor, b.rows(), b.cols());
        cursor += b.size();
      }
    };
    detail::for_each_block(unpack, first);
    (detail::for_each_block(unpack, rest), ...);
  }

  bool agree(bool local, MPI_Op op, const char* operation) {
    int value = local ? 1 : 0;
    traffic_.record(Operation::Agreement, sizeof(int));
    detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, op, comm_), operation,
                      "MPI_Allreduce", 1);
    return value != 0;
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  Traffic traffic_;
  std::vector<float> scratch_float_;
  std::vector<double> scratch_double_;
};

}  // namespace mpi
}  // namespace kfopt
