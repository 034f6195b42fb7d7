#pragma once
/// \file matrix_product_kernel.hpp
/// \brief kfopt's general matrix product `C += α·A·B` on Eigen's SIMD packets: the product
/// kernel under the Eigen backend's recursive Cholesky, triangular and Gram kernels
/// (damped_cholesky_inverse.hpp, factor_moments.hpp).
///
/// Why not Eigen's own product: Eigen 3.4's kernel keeps a register tile of 3 packets × 4
/// columns on every target (12 accumulators), AVX-512's 32 vector registers included. This
/// kernel keeps 3 packets × 8 columns there (24 accumulators: twice the multiply-adds per
/// loaded packet of A, and each broadcast of B feeds three of them). On the 2-core AVX-512
/// machine of bench/results/bench_kron.md, square products at n = 256…2048 ran at 84–97
/// GFLOP/s in double against Eigen's 43–73 and OpenBLAS's 82–89, and at 183–201 GFLOP/s in
/// float against Eigen's 138–150 and OpenBLAS's 188–206 (one thread, same process; the
/// `gemm/kfopt_kernel` rows of bench_kron). With 16 vector registers (SSE, AVX2) the tile is
/// 3 packets × 4 columns, Eigen's shape.
///
/// The scheme is the usual one for cache-blocked products (Goto and van de Geijn, 2008): B in
/// blocks of depth_block × col_block packed into row-interleaved panels of `cols` columns, A
/// in blocks of row_block × depth_block packed (with α applied) into column-interleaved
/// panels of `rows` rows, and a register tile that runs over one panel of each. Edges are
/// zero-padded in the packed copies and added to C through a small tile buffer.
///
/// The packed copies live in per-thread buffers that grow to at most
/// `depth_block·(col_block + row_block)` scalars (2.5 MB in double, 1.2 MB in float) and are
/// kept for the thread's lifetime: a product allocates nothing once they are that large (a
/// fresh allocation of that size per product is served by mmap under glibc's default
/// thresholds and page-faults on every call). Safe to call from several threads at once
/// (each has its own buffers).
///
/// **Threads** (linalg/threads.hpp). A product of at least kMinParallelProductFlops runs on
/// up to kfopt::threads() threads, each computing whole columns of C: a contiguous range of
/// register-tile widths (for the lower product, ranges of equal work rather than equal
/// width). Every entry of C is accumulated by the same sequence of packet operations
/// whatever the range it falls in (the depth blocks and the rows' blocking do not depend on
/// the columns), so the result is bit-identical for any thread count. Each thread packs its
/// own columns of B and all of A: the extra packing is m·k per thread against 2mnk/T flops.

#include <Eigen/Core>
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kfopt/linalg/threads.hpp"

/// Fully unrolls the next loop (a register tile's fixed-count loops). Without it GCC unrolls
/// them only at -O3: at -O2 (CMake's RelWithDebInfo) the accumulators stayed in memory and
/// the kernel ran at half of Eigen's rate.
#if defined(__GNUC__) || defined(__clang__)
#define KFOPT_UNROLL _Pragma("GCC unroll 32")
#else
#define KFOPT_UNROLL
#endif

namespace kfopt {
namespace detail {

/// Register tile and cache blocks of the product kernel for one scalar type.
template <typename Scalar>
struct ProductKernelShape {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  static constexpr int packet_size = Eigen::internal::unpacket_traits<Packet>::size;
  /// Register tile: rows = 3 packets, cols = 8 with 32 vector registers, else 4.
  static constexpr int row_packets = 3;
  static constexpr int rows = row_packets * packet_size;
  static constexpr int cols = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 8 : 4;
  /// Depth of one packed block: a packed panel of B (depth_block × cols) stays in L1.
  static constexpr Eigen::Index depth_block = 256;
  /// Rows of A per packed block (about 240 KB in float, 480 KB in double: in L2).
  static constexpr Eigen::Index row_block = rows * (sizeof(Scalar) >= 8 ? 10 : 5);
  /// Columns of B per packed block (1 MB in float, 2 MB in double: in L3). Measured against
  /// 512 and 4096 at n = 128…2048: 1024 was fastest or within noise everywhere.
  static constexpr Eigen::Index col_block = 1024;
};

/// Whether the kernel serves this scalar type (float and double; anything else goes to
/// Eigen's product).
template <typename Scalar>
inline constexpr bool kHasProductKernel =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// Read-only strided view of a matrix expression with direct access: element (i, j) at
/// `data[i·row_stride + j·col_stride]` (covers column-major blocks and their transposes).
template <typename Scalar>
struct StridedConstView {
  const Scalar* data;
  Eigen::Index row_stride;
  Eigen::Index col_stride;
  const Scalar* at(Eigen::Index i, Eigen::Index j) const {
    return data + i * row_stride + j * col_stride;
  }
};

template <typename Scalar>
struct ProductPackingBuffers {
  std::vector<Scalar, Eigen::aligned_allocator<Scalar>> lhs, rhs;
};

/// This thread's packing buffers (see the file comment).
template <typename Scalar>
ProductPackingBuffers<Scalar>& product_packing_buffers() {
  thread_local ProductPackingBuffers<Scalar> buffers;
  return buffers;
}

/// Packs rows `r0 … r0+mc−1`, columns `p0 … p0+kc−1` of A, times α, into panels of
/// `Shape::rows` rows: panel q holds, for each depth index p, its rows contiguously.
template <typename Scalar>
void pack_product_lhs(const StridedConstView<Scalar>& A, Eigen::Index r0, Eigen::Index p0,
                      Eigen::Index mc, Eigen::Index kc, Scalar alpha, Scalar* out) {
  constexpr Eigen::Index R = ProductKernelShape<Scalar>::rows;
  for (Eigen::Index i0 = 0; i0 < mc; i0 += R) {
    Scalar* panel = out + i0 * kc;
    const Eigen::Index m = std::min(R, mc - i0);
    if (A.row_stride == 1) {
      for (Eigen::Index p = 0; p < kc; ++p) {
        const Scalar* src = A.at(r0 + i0, p0 + p);
        Scalar* dst = panel + p * R;
        for (Eigen::Index i = 0; i < m; ++i) dst[i] = alpha * src[i];
        for (Eigen::Index i = m; i < R; ++i) dst[i] = Scalar(0);
      }
    } else {
      // Rows contiguous in memory (a transposed column-major block): read along rows.
      for (Eigen::Index i = 0; i < m; ++i) {
        const Scalar* src = A.at(r0 + i0 + i, p0);
        for (Eigen::Index p = 0; p < kc; ++p) panel[p * R + i] = alpha * src[p * A.col_stride];
      }
      for (Eigen::Index p = 0; p < kc; ++p) {
        for (Eigen::Index i = m; i < R; ++i) panel[p * R + i] = Scalar(0);
      }
    }
  }
}

/// Packs rows `p0 … p0+kc−1`, columns `c0 … c0+nc−1` of B into panels of `Shape::cols`
/// columns: panel q holds, for each depth index p, its columns contiguously.
template <typename Scalar>
void pack_product_rhs(const StridedConstView<Scalar>& B, Eigen::Index p0, Eigen::Index c0,
                      Eigen::Index kc, Eigen::Index nc, Scalar* out) {
  constexpr Eigen::Index NR = ProductKernelShape<Scalar>::cols;
  for (Eigen::Index j0 = 0; j0 < nc; j0 += NR) {
    Scalar* panel = out + j0 * kc;
    const Eigen::Index n = std::min(NR, nc - j0);
    if (B.row_stride == 1) {
      for (Eigen::Index j = 0; j < n; ++j) {
        const Scalar* src = B.at(p0, c0 + j0 + j);
        for (Eigen::Index p = 0; p < kc; ++p) panel[p * NR + j] = src[p];
      }
      for (Eigen::Index p = 0; p < kc; ++p) {
        for (Eigen::Index j = n; j < NR; ++j) panel[p * NR + j] = Scalar(0);
      }
    } else {
      for (Eigen::Index p = 0; p < kc; ++p) {
        const Scalar* src = B.at(p0 + p, c0 + j0);
        Scalar* dst = panel + p * NR;
        for (Eigen::Index j = 0; j < n; ++j) dst[j] = src[j * B.col_stride];
        for (Eigen::Index j = n; j < NR; ++j) dst[j] = Scalar(0);
      }
    }
  }
}

/// The register tile: `C(0:m, 0:n) += a_panel · b_panel` over depth kc, for one packed panel
/// of A (rows × kc) and of B (kc × cols); m ≤ rows and n ≤ cols say how much of the tile C
/// has (edges). C is column-major with leading dimension ldc. Only the first `UsedPackets`
/// packets of each panel row are computed (the last panel of a block whose row count is
/// not a multiple of `rows`: e.g. a 64-row block in float with AVX-512 is one panel of 48
/// rows and one of 16, not two of 48).
/// With `Masked`, only the entries on or below C's diagonal are added: entry (i, j) of the
/// tile is C's entry (i + d, j) relative to the diagonal, `d = row_minus_col`, and is added
/// when `i + d ≥ j`.
template <typename Scalar, int UsedPackets = ProductKernelShape<Scalar>::row_packets,
          bool Masked = false>
inline void product_register_tile(Eigen::Index kc, const Scalar* a, const Scalar* b, Scalar* c,
                                  Eigen::Index ldc, Eigen::Index m, Eigen::Index n,
                                  Eigen::Index row_minus_col = 0) {
  using Shape = ProductKernelShape<Scalar>;
  using Packet = typename Shape::Packet;
  namespace ei = Eigen::internal;
  constexpr int P = Shape::packet_size, MP = UsedPackets, NR = Shape::cols;
  constexpr int R = Shape::rows;  // the packed panel's row stride
  Packet acc[MP][NR];
  KFOPT_UNROLL
  for (int j = 0; j < NR; ++j) {
    KFOPT_UNROLL
    for (int q = 0; q < MP; ++q) acc[q][j] = ei::pset1<Packet>(Scalar(0));
  }
  for (Eigen::Index p = 0; p < kc; ++p) {
    Packet lhs[MP];
    KFOPT_UNROLL
    for (int q = 0; q < MP; ++q) lhs[q] = ei::pload<Packet>(a + q * P);
    KFOPT_UNROLL
    for (int j = 0; j < NR; ++j) {
      const Packet rhs = ei::pset1<Packet>(b[j]);
      KFOPT_UNROLL
      for (int q = 0; q < MP; ++q) acc[q][j] = ei::pmadd(lhs[q], rhs, acc[q][j]);
    }
    a += R;
    b += NR;
  }
  if (!Masked && m == MP * P && n == NR) {
    KFOPT_UNROLL
    for (int j = 0; j < NR; ++j) {
      Scalar* cj = c + j * ldc;
      KFOPT_UNROLL
      for (int q = 0; q < MP; ++q) {
        ei::pstoreu(cj + q * P, ei::padd(ei::ploadu<Packet>(cj + q * P), acc[q][j]));
      }
    }
    return;
  }
  alignas(EIGEN_MAX_ALIGN_BYTES) Scalar tile[R * NR];
  KFOPT_UNROLL
  for (int j = 0; j < NR; ++j) {
    KFOPT_UNROLL
    for (int q = 0; q < MP; ++q) ei::pstore(tile + j * R + q * P, acc[q][j]);
  }
  for (Eigen::Index j = 0; j < n; ++j) {
    // Masked: rows i ≥ j − d only.
    const Eigen::Index first = Masked ? std::max<Eigen::Index>(0, j - row_minus_col) : 0;
    for (Eigen::Index i = first; i < m; ++i) c[j * ldc + i] += tile[j * R + i];
  }
}

/// One register tile with as many packets per panel row as the tile has rows for.
template <typename Scalar, bool Masked>
inline void product_tile_dispatch(Eigen::Index kc, const Scalar* a, const Scalar* b, Scalar* c,
                                  Eigen::Index ldc, Eigen::Index m, Eigen::Index n,
                                  Eigen::Index row_minus_col) {
  constexpr Eigen::Index P = ProductKernelShape<Scalar>::packet_size;
  constexpr int MP = ProductKernelShape<Scalar>::row_packets;
  if (m > 2 * P) {
    product_register_tile<Scalar, MP, Masked>(kc, a, b, c, ldc, m, n, row_minus_col);
  } else if (m > P) {
    product_register_tile<Scalar, 2, Masked>(kc, a, b, c, ldc, m, n, row_minus_col);
  } else {
    product_register_tile<Scalar, 1, Masked>(kc, a, b, c, ldc, m, n, row_minus_col);
  }
}

/// The blocked loops of product_accumulate (LowerOnly false) and lower_product_accumulate
/// (true: tiles strictly above the diagonal skipped, tiles across it masked, row blocks
/// strictly above a column block neither packed nor computed). C may be columns
/// `col_offset …` of the product: the diagonal is where row = col_offset + column of C.
template <typename Scalar, bool LowerOnly>
void product_accumulate_blocked(
    Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C, Scalar alpha,
    const StridedConstView<Scalar>& a, const StridedConstView<Scalar>& b, Eigen::Index k,
    Eigen::Index col_offset = 0) {
  using Shape = ProductKernelShape<Scalar>;
  constexpr Eigen::Index R = Shape::rows, NR = Shape::cols;
  const Eigen::Index m = C.rows(), n = C.cols();
  ProductPackingBuffers<Scalar>& buffers = product_packing_buffers<Scalar>();
  const Eigen::Index ldc = C.outerStride();
  for (Eigen::Index c0 = 0; c0 < n; c0 += Shape::col_block) {
    const Eigen::Index nc = std::min(Shape::col_block, n - c0);
    const Eigen::Index nc_padded = (nc + NR - 1) / NR * NR;
    for (Eigen::Index p0 = 0; p0 < k; p0 += Shape::depth_block) {
      const Eigen::Index kc = std::min(Shape::depth_block, k - p0);
      const auto rhs_size = static_cast<std::size_t>(nc_padded * kc);
      if (buffers.rhs.size() < rhs_size) buffers.rhs.resize(rhs_size);
      pack_product_rhs(b, p0, c0, kc, nc, buffers.rhs.data());
      for (Eigen::Index r0 = 0; r0 < m; r0 += Shape::row_block) {
        const Eigen::Index mc = std::min(Shape::row_block, m - r0);
        if (LowerOnly && r0 + mc <= col_offset + c0) continue;  // every row above every column
        const Eigen::Index mc_padded = (mc + R - 1) / R * R;
        const auto lhs_size = static_cast<std::size_t>(mc_padded * kc);
        if (buffers.lhs.size() < lhs_size) buffers.lhs.resize(lhs_size);
        pack_product_lhs(a, r0, p0, mc, kc, alpha, buffers.lhs.data());
        for (Eigen::Index j0 = 0; j0 < nc; j0 += NR) {
          const Scalar* b_panel = buffers.rhs.data() + j0 * kc;
          const Eigen::Index n_tile = std::min(NR, nc - j0);
          for (Eigen::Index i0 = 0; i0 < mc; i0 += R) {
            const Eigen::Index m_tile = std::min(R, mc - i0);
            const Scalar* a_panel = buffers.lhs.data() + i0 * kc;
            Scalar* c_tile = &C(r0 + i0, c0 + j0);
            if constexpr (LowerOnly) {
              const Eigen::Index d = (r0 + i0) - (col_offset + c0 + j0);  // row − column
              if (d + m_tile <= 0) continue;                  // strictly above the diagonal
              if (d < n_tile - 1) {                           // across the diagonal
                product_tile_dispatch<Scalar, true>(kc, a_panel, b_panel, c_tile, ldc, m_tile,
                                                    n_tile, d);
                continue;
              }
            }
            product_tile_dispatch<Scalar, false>(kc, a_panel, b_panel, c_tile, ldc, m_tile,
                                                 n_tile, 0);
          }
        }
      }
    }
  }
}

/// Products below this many flops run on the calling thread alone (a pool job costs a few
/// microseconds to start; this is about 40 µs of one core's work).
inline constexpr double kMinParallelProductFlops = 4e6;

/// product_accumulate_blocked on up to kfopt::threads() threads, each over a contiguous
/// range of C's columns (see the file comment). The ranges are whole register-tile widths;
/// for LowerOnly their boundaries balance the lower triangle's work, column j costing
/// (m − j) rows.
template <typename Scalar, bool LowerOnly>
void product_accumulate_threaded(
    Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C, Scalar alpha,
    const StridedConstView<Scalar>& a, const StridedConstView<Scalar>& b, Eigen::Index k) {
  constexpr Eigen::Index NR = ProductKernelShape<Scalar>::cols;
  const Eigen::Index m = C.rows(), n = C.cols();
  const Eigen::Index widths = (n + NR - 1) / NR;  // tile widths across C
  const double flops = (LowerOnly ? 1.0 : 2.0) * static_cast<double>(m) *
                       static_cast<double>(n) * static_cast<double>(k);
  const int wanted = threads();
  const Eigen::Index parts =
      std::min<Eigen::Index>(wanted, widths / 2);  // at least two tile widths each
  if (parts < 2 || flops < kMinParallelProductFlops || ThreadPool::inside_job()) {
    product_accumulate_blocked<Scalar, LowerOnly>(C, alpha, a, b, k);
    return;
  }
  // bounds[p] … bounds[p+1]: the columns of part p, multiples of NR (the last ends at n).
  std::vector<Eigen::Index> bounds(static_cast<std::size_t>(parts) + 1, n);
  bounds[0] = 0;
  if constexpr (LowerOnly) {
    // Work of columns [0, j): Σ (m − i) = j·m − j(j−1)/2; split it into equal parts.
    const auto work = [m](double j) { return j * static_cast<double>(m) - j * (j - 1.0) / 2.0; };
    const double total = work(static_cast<double>(n));
    Eigen::Index w = 0;
    for (Eigen::Index p = 1; p < parts; ++p) {
      const double target = total * static_cast<double>(p) / static_cast<double>(parts);
      while (w < widths && work(static_cast<double>(std::min(n, (w + 1) * NR))) <= target) ++w;
      bounds[static_cast<std::size_t>(p)] = std::min(n, w * NR);
    }
  } else {
    for (Eigen::Index p = 1; p < parts; ++p) {
      bounds[static_cast<std::size_t>(p)] = std::min(n, widths * p / parts * NR);
    }
  }
  ThreadPool::instance().run(parts, wanted, [&](std::ptrdiff_t p) {
    const Eigen::Index j0 = bounds[static_cast<std::size_t>(p)];
    const Eigen::Index j1 = bounds[static_cast<std::size_t>(p) + 1];
    if (j1 <= j0) return;
    const StridedConstView<Scalar> b_part{b.at(0, j0), b.row_stride, b.col_stride};
    product_accumulate_blocked<Scalar, LowerOnly>(C.middleCols(j0, j1 - j0), alpha, a, b_part,
                                                  k, j0);
  });
}

template <typename Scalar, typename Derived>
StridedConstView<Scalar> strided_view(const Eigen::MatrixBase<Derived>& M) {
  static_assert(bool(Derived::Flags & Eigen::DirectAccessBit),
                "the product kernel reads its operands through strides (direct access)");
  return {M.derived().data(), M.derived().rowStride(), M.derived().colStride()};
}

/// `C += α·A·B` for C m×n column-major (unit inner stride), A m×k and B k×n any
/// direct-access expressions (blocks, transposed blocks, Refs, maps). C must not overlap A
/// or B. 2mnk flops, on up to kfopt::threads() threads when large (file comment, bit-identical
/// for any count). float and double run kfopt's kernel (file comment);
/// other scalar types Eigen's product.
template <typename Scalar, typename DerivedA, typename DerivedB>
void product_accumulate(Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C,
                        Scalar alpha, const Eigen::MatrixBase<DerivedA>& A,
                        const Eigen::MatrixBase<DerivedB>& B) {
  eigen_assert(A.rows() == C.rows() && B.cols() == C.cols() && A.cols() == B.rows());
  if (C.rows() == 0 || C.cols() == 0 || A.cols() == 0) return;
  if constexpr (!kHasProductKernel<Scalar>) {
    C.noalias() += alpha * (A.derived() * B.derived());
  } else {
    product_accumulate_threaded<Scalar, false>(C, alpha, strided_view<Scalar>(A),
                                               strided_view<Scalar>(B), A.cols());
  }
}

/// `lower(C) += α·A·B` for square C: only the entries on and below C's diagonal are computed
/// and written (the strictly upper triangle is not touched) — BLAS's syrk when B = Aᵀ, which
/// is what callers use it for. About n²k flops plus the tiles across the diagonal (with
/// AVX-512 in double, 24 × 8 tiles: about 12% extra at n = 256). Requirements as in
/// product_accumulate.
template <typename Scalar, typename DerivedA, typename DerivedB>
void lower_product_accumulate(
    Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C, Scalar alpha,
    const Eigen::MatrixBase<DerivedA>& A, const Eigen::MatrixBase<DerivedB>& B) {
  eigen_assert(C.rows() == C.cols() && A.rows() == C.rows() && B.cols() == C.cols() &&
               A.cols() == B.rows());
  if (C.rows() == 0 || A.cols() == 0) return;
  if constexpr (!kHasProductKernel<Scalar>) {
    C.template triangularView<Eigen::Lower>() += alpha * (A.derived() * B.derived());
  } else {
    product_accumulate_threaded<Scalar, true>(C, alpha, strided_view<Scalar>(A),
                                              strided_view<Scalar>(B), A.cols());
  }
}

/// Lower triangle of `C += scale · X(:, cols)ᵀ X(:, cols)` with `cols = first … first+n−1`,
/// C n×n (a symmetric rank-k update, BLAS's syrk) by lower_product_accumulate. n²k flops for
/// X k×n. C must not overlap X. (Eigen 3.4's own rank-k update,
/// `selfadjointView<Lower>().rankUpdate(batch.transpose(), 1/k)` with `batch` an
/// `Eigen::Ref<const Matrix>` of 256 rows, ran at ~6% of its GEMM rate at n = 128 and 256 in
/// double with AVX-512; this path has no such cliff: bench_kron's `stats` rows.)
template <typename Scalar, typename DerivedX>
void accumulate_lower_gram(Eigen::Ref<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> C,
                           const Eigen::MatrixBase<DerivedX>& X, Eigen::Index first,
                           Scalar scale) {
  const Eigen::Index n = C.rows();
  lower_product_accumulate<Scalar>(C, scale, X.middleCols(first, n).transpose(),
                                   X.middleCols(first, n));
}

}  // namespace detail
}  // namespace kfopt
