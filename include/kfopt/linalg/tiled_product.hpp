#pragma once
/// \file tiled_product.hpp
/// \brief Matrix products evaluated tile by tile, so that Eigen never needs a heap buffer.
///
/// Eigen's matrix-matrix kernels pack their operands into blocking buffers, which live on
/// the stack up to EIGEN_STACK_ALLOCATION_LIMIT (128 KB) and on the heap beyond. kfopt's
/// per-step products (P Gᵀ with P d×d, the rank-r covariance downdates, the RTRL tangent
/// recursion) are split into tiles of at most 128 rows, 128 columns and 128 inner
/// dimensions, so that each packed operand stays under 128 KB: the per-step path does not
/// allocate, whatever d is. The flop count is unchanged; the tile overhead is a few percent
/// at d = 1000.

#include <Eigen/Core>
#include <algorithm>

namespace kfopt {
namespace detail {

/// Edge of the tiles: a 128×128 double block packs into 128 KB.
constexpr Eigen::Index kProductTile = 128;

/// dst += alpha · A · B, tile by tile (dst m×n, A m×p, B p×n; dst must not alias A or B).
template <typename Dst, typename Lhs, typename Rhs, typename Scalar>
void tiled_multiply_add(Dst&& dst, const Lhs& A, const Rhs& B, Scalar alpha) {
  const Eigen::Index m = A.rows(), p = A.cols(), n = B.cols();
  const Eigen::Index T = kProductTile;
  for (Eigen::Index j0 = 0; j0 < n; j0 += T) {
    const Eigen::Index nj = std::min(T, n - j0);
    for (Eigen::Index k0 = 0; k0 < p; k0 += T) {
      const Eigen::Index pk = std::min(T, p - k0);
      for (Eigen::Index i0 = 0; i0 < m; i0 += T) {
        const Eigen::Index mi = std::min(T, m - i0);
        dst.block(i0, j0, mi, nj).noalias() +=
            alpha * A.block(i0, k0, mi, pk) * B.block(k0, j0, pk, nj);
      }
    }
  }
}

/// The tiles on and below the diagonal of P += alpha · W Vᵀ (P d×d, W and V d×r). Entries
/// strictly above the diagonal are only partly updated: follow with symmetrize_from_lower
/// when the result is symmetric (V = W). About half the flops of the full product.
template <typename DstP, typename LhsW, typename RhsV, typename Scalar>
void tiled_lower_outer_add(DstP&& P, const LhsW& W, const RhsV& V, Scalar alpha) {
  const Eigen::Index d = P.rows(), r = W.cols();
  const Eigen::Index T = kProductTile;
  for (Eigen::Index j0 = 0; j0 < d; j0 += T) {
    const Eigen::Index nj = std::min(T, d - j0);
    for (Eigen::Index i0 = j0; i0 < d; i0 += T) {
      const Eigen::Index mi = std::min(T, d - i0);
      for (Eigen::Index k0 = 0; k0 < r; k0 += T) {
        const Eigen::Index rk = std::min(T, r - k0);
        P.block(i0, j0, mi, nj).noalias() +=
            alpha * W.block(i0, k0, mi, rk) * V.block(j0, k0, nj, rk).transpose();
      }
    }
  }
}

}  // namespace detail
}  // namespace kfopt
