#pragma once
/// \file symmetric_eigensolver.hpp
/// \brief Eigen-only dense symmetric eigensolver with eigenvectors: blocked Householder
/// tridiagonalization, implicit symmetric QR with exact (precomputed) or Wilkinson shifts,
/// and the QR rotations applied to the eigenvector matrix in cache-sized chunks.
///
/// Algorithm (all steps are textbook; the code is kfopt's own):
///  1. The matrix is scaled by a power of two so that its largest entry lies in [1/2, 1)
///     (exact; keeps every later step away from overflow and harmful underflow).
///  2. Householder tridiagonalization `A = Q T Qᵀ`, blocked as in LAPACK's sytrd/latrd
///     (Dongarra, Hammarling & Sorensen 1989, "Block reduction of matrices to condensed forms
///     for eigenvalue computations", J. Comput. Appl. Math. 27): panels of `kPanel` columns
///     are reduced with matrix–vector products against the not-yet-updated trailing matrix
///     and corrections from the panel, then the trailing matrix takes one rank-2·kPanel
///     update `A ← A − V Wᵀ − W Vᵀ` on its lower triangle through a triangular matrix product.
///  3. Q is formed explicitly from the reflectors in compact WY form, `I − V T Vᵀ` per block
///     (Schreiber & Van Loan 1989, SIAM J. Sci. Stat. Comput. 10), last block first.
///  4. Implicit symmetric QR steps on T (Golub & Van Loan, Matrix Computations, 4th ed.,
///     Algorithms 8.3.2 and 8.3.3), deflating when `|e_i| ≤ ε (|d_i| + |d_{i+1}|)` or
///     `|e_i| ≤ 32 ε ‖T‖`. From n = kExactShiftsFrom on, a first QR pass without vectors
///     (O(n²)) gives the eigenvalues, and the pass with vectors uses the one nearest the
///     Wilkinson shift as an exact shift: most eigenvalues then deflate after one sweep
///     (about 0.55 n² rotations in all instead of about 0.9 n²); after two tries at one
///     position it falls back to the Wilkinson shift. Instead of applying each Givens
///     rotation to all n rows of the eigenvector matrix at once (one pass over n² memory per
///     rotation), the rotations of many sweeps are recorded and then applied per block of
///     rows: rotations
///     act on rows independently, so a block of rows stays in cache while it takes the whole
///     chunk, and the column carried between consecutive rotations of a sweep stays in
///     registers; two consecutive sweeps over the same block go through a row block together
///     as a two-deep wavefront (after Van Zee, van de Geijn & Quintana-Ortí 2011,
///     "Restructuring the tridiagonal and bidiagonal QR algorithms for performance", ACM TOMS
///     40(3)).
///  5. Eigenvalues are sorted ascending with their vectors and scaled back.
///
/// Threads (linalg/threads.hpp): forming Q (its two products per block run on kfopt's
/// product kernel) and applying the recorded rotations (split into ranges of rows) use up
/// to kfopt::threads() threads; the reduction's matrix–vector products stay on one. The
/// result is the same bit for bit on any number of threads.
///
/// Cost: about 4/3 n³ flops for the reduction (half in matrix–vector products, which are
/// memory-bound once the matrix leaves the cache), 4/3 n³ for forming Q (matrix products),
/// and 6n flops per rotation, about 3.3 n³ with exact shifts — in total about 6n³ flops,
/// most at cache speed. On one AVX-512 core it takes 0.55–1.4× the time of LAPACK's syevd
/// at n = 256–2048 (bench_kron, eig/kfopt_eigen vs eig/lapack; double 1.09–1.23× in
/// bench/results/bench_kron.md). Memory: 3n² scalars plus
/// 64n for the recorded rotations.
///
/// No heap allocation in `compute` after the first call at a given size (or after the
/// preallocating constructor), apart from what Eigen's matrix products allocate internally
/// for their blocking buffers on large sizes.
///
/// Failure: `compute` returns `info() != Success` (NonFiniteInput for NaN/Inf entries,
/// NoConvergence if the QR iteration exceeds 30·n steps, NumericalIssue if an eigenvalue
/// overflows when the scaling is undone); the previous result is then not valid. Only the
/// lower triangle of the input is read.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"
#include "kfopt/linalg/threads.hpp"

namespace kfopt {

/// Dense symmetric eigensolver `A = U diag(λ) Uᵀ`, λ ascending, U orthonormal (see the file
/// comment for the algorithm). Behaves like Eigen's decompositions: preallocating
/// constructor, `compute()` returning `*this`, `info()`.
///
/// `PanelSize` is the panel width of the blocked reduction and the WY block size (32 is
/// best on current x86 cores; tests use small panels to cover the blocked path at small n).
template <typename Scalar, int PanelSize = 32>
class SymmetricEigensolver {
  static_assert(PanelSize >= 2, "SymmetricEigensolver: PanelSize must be at least 2");
  static_assert(std::is_floating_point<Scalar>::value, "SymmetricEigensolver: real scalars only");

 public:
  /// Eigen index type.
  using Index = Eigen::Index;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// Columns per panel of the blocked reduction and reflectors per WY block.
  static constexpr Index kPanel = PanelSize;
  /// Below this size the reduction is unblocked (the panel bookkeeping does not pay).
  static constexpr Index kBlockedFrom = 3 * kPanel;
  /// Rows per block when applying recorded rotations (a multiple of the SIMD width).
  static constexpr int kRowBlock = sizeof(Scalar) == 4 ? 64 : 32;
  /// From this size on, the eigenvalues are computed first and used as exact shifts (the
  /// extra O(n²) scalar pass costs more than the rotations it saves on small matrices).
  static constexpr Index kExactShiftsFrom = 192;
  /// Sweeps' worth of rotations (times n) recorded before they are applied.
  static constexpr Index kChunkSweeps = 32;

  SymmetricEigensolver() = default;

  /// Preallocates every workspace for n×n matrices.
  explicit SymmetricEigensolver(Index n) { allocate(n); }

  /// Decomposes the symmetric matrix whose lower triangle is A's. Throws ShapeError if A is
  /// not square.
  SymmetricEigensolver& compute(const Eigen::Ref<const Matrix>& A);

  /// Status of the last compute().
  Status info() const noexcept { return info_; }
  /// Size n of the decomposed matrix.
  Index size() const noexcept { return values_.size(); }

  /// Eigenvalues in ascending order (valid when info() == Success).
  const Vector& eigenvalues() const noexcept { return values_; }
  /// Orthonormal eigenvectors, column i for eigenvalue i (valid when info() == Success).
  const Matrix& eigenvectors() const noexcept { return vectors_; }
  /// Mutable access for callers that swap the results out (the solver reallocates as
  /// needed on the next compute).
  Vector& eigenvalues_storage() noexcept { return values_; }
  /// As above, for the eigenvectors.
  Matrix& eigenvectors_storage() noexcept { return vectors_; }

  /// Number of Givens rotations the last compute applied (for tests and tuning).
  Index rotation_count() const noexcept { return rotations_; }
  /// Number of implicit QR steps of the last compute.
  Index sweep_count() const noexcept { return sweeps_; }

 private:
  void allocate(Index n) {
    if (values_.size() != n) values_.setZero(n);
    if (vectors_.rows() != n || vectors_.cols() != n) vectors_.setZero(n, n);
    if (n_ == n) return;
    n_ = n;
    // Leading dimension of the working matrices: whole cache lines, an odd number of them,
    // so that a row slice across all columns does not fall into a few cache sets (a
    // power-of-two stride would make the blocked rotations thrash).
    constexpr Index line = 64 / static_cast<Index>(sizeof(Scalar));
    Index lines = (n + line - 1) / line;
    if (lines % 2 == 0) ++lines;
    const Index ld = lines * line;
    a_.setZero(ld, n);
    z_.setZero(ld, n);
    perm_.assign(static_cast<std::size_t>(n), 0);
    used_.assign(static_cast<std::size_t>(n), 0);
    e_.setZero(std::max<Index>(n, 1));
    tau_.setZero(std::max<Index>(n, 1));
    panel_.setZero(n, 2 * kPanel);
    swapped_.setZero(n, 2 * kPanel);
    small_.setZero(kPanel, 1);
    t_.setZero(kPanel, kPanel);
    wy_.setZero(kPanel, n);
    wy2_.setZero(kPanel, n);
    vec_.setZero(n);
    vec2_.setZero(n);
    shift_d_.setZero(n);
    shift_e_.setZero(n);
    rot_capacity_ = std::max<Index>(kChunkSweeps * n, 16);
    rot_.setZero(2 * rot_capacity_);
    sweep_start_.assign(static_cast<std::size_t>(rot_capacity_), 0);
    sweep_length_.assign(static_cast<std::size_t>(rot_capacity_), 0);
  }

  // ---- Householder reflector -------------------------------------------------------
  // For x = a_(c+1:n, c): H = I − τ v vᵀ with v(0) = 1, H x = β e₁. Writes v(1:) into
  // a_(c+2:n, c), returns β, sets tau_(c).
  Scalar make_reflector(Index n, Index c) {
    const Index m = n - c - 1;
    auto x = Aw().col(c).segment(c + 1, m);
    const Scalar alpha = x(0);
    const Scalar sigma = m > 1 ? x.tail(m - 1).squaredNorm() : Scalar(0);
    if (!(sigma > std::numeric_limits<Scalar>::min())) {
      // Tail negligible (the matrix is scaled to max entry ~1): identity reflector.
      if (m > 1) x.tail(m - 1).setZero();
      tau_(c) = Scalar(0);
      return alpha;
    }
    const Scalar norm = std::sqrt(alpha * alpha + sigma);
    const Scalar beta = alpha >= Scalar(0) ? -norm : norm;
    tau_(c) = (beta - alpha) / beta;
    x.tail(m - 1) *= Scalar(1) / (alpha - beta);
    x(0) = beta;
    return beta;
  }

  // ---- 2. tridiagonalization ----------------------------------------------------------
  void tridiagonalize(Index n) {
    Index c = 0;
    if (n >= kBlockedFrom) {
      for (; c + kPanel + kBlockedFrom / 2 <= n; c += kPanel) reduce_panel(n, c);
    }
    // Unblocked for the remaining columns.
    for (; c + 2 < n; ++c) {
      values_(c) = Aw()(c, c);
      e_(c) = make_reflector(n, c);
      const Scalar tau = tau_(c);
      if (tau == Scalar(0)) continue;
      const Index m = n - c - 1;
      auto v = vec_.head(m);
      v(0) = Scalar(1);
      v.tail(m - 1) = Aw().col(c).segment(c + 2, m - 1);
      auto p = vec2_.head(m);
      auto trailing = Aw().bottomRightCorner(m, m);
      p.noalias() = tau * (trailing.template selfadjointView<Eigen::Lower>() * v);
      p += (Scalar(-0.5) * tau * p.dot(v)) * v;
      trailing.template selfadjointView<Eigen::Lower>().rankUpdate(v, p, Scalar(-1));
    }
    values_(n - 2) = Aw()(n - 2, n - 2);
    values_(n - 1) = Aw()(n - 1, n - 1);
    e_(n - 2) = Aw()(n - 1, n - 2);
  }

  // One latrd-style panel of kPanel columns starting at column j0. panel_ holds [V | W],
  // rows indexed globally (row r of V is the reflectors' entry r; zero above their start).
  void reduce_panel(Index n, Index j0) {
    const Index nb = kPanel;
    auto V = panel_.leftCols(nb);
    auto W = panel_.rightCols(nb);
    for (Index i = 0; i < nb; ++i) {
      const Index c = j0 + i;
      const Index mc = n - c;  // rows c..n-1
      if (i > 0) {
        Aw().col(c).tail(mc).noalias() -=
            V.block(c, 0, mc, i) * W.row(c).head(i).transpose();
        Aw().col(c).tail(mc).noalias() -=
            W.block(c, 0, mc, i) * V.row(c).head(i).transpose();
      }
      values_(c) = Aw()(c, c);
      e_(c) = make_reflector(n, c);
      const Scalar tau = tau_(c);
      const Index m = mc - 1;  // rows c+1..n-1
      auto v = V.col(i);
      v.head(c + 1).setZero();
      v(c + 1) = Scalar(1);
      v.tail(m - 1) = Aw().col(c).tail(m - 1);
      auto w = W.col(i);
      w.head(c + 1).setZero();
      if (tau == Scalar(0)) {
        w.tail(m).setZero();
        continue;
      }
      auto vt = v.tail(m);
      auto wt = w.tail(m);
      wt.noalias() = Aw().bottomRightCorner(m, m).template selfadjointView<Eigen::Lower>() * vt;
      if (i > 0) {
        auto s = small_.col(0).head(i);
        s.noalias() = W.bottomLeftCorner(m, i).transpose() * vt;
        wt.noalias() -= V.bottomLeftCorner(m, i) * s;
        s.noalias() = V.bottomLeftCorner(m, i).transpose() * vt;
        wt.noalias() -= W.bottomLeftCorner(m, i) * s;
      }
      wt *= tau;
      wt += (Scalar(-0.5) * tau * wt.dot(vt)) * vt;
    }
    // Trailing update on the lower triangle: A ← A − [V W] [W V]ᵀ.
    const Index t0 = j0 + nb;
    const Index m = n - t0;
    swapped_.leftCols(nb).bottomRows(m) = W.bottomRows(m);
    swapped_.rightCols(nb).bottomRows(m) = V.bottomRows(m);
    Aw().bottomRightCorner(m, m).template triangularView<Eigen::Lower>() -=
        panel_.bottomRows(m) * swapped_.bottomRows(m).transpose();
  }

  // ---- 3. Q = H_0 H_1 ⋯ H_{n−3} in WY blocks, last block first -----------------------
  void form_q(Index n) {
    Zw().setIdentity();
    const Index reflectors = n - 2;
    if (reflectors <= 0) return;
    Index k1 = reflectors;
    while (k1 > 0) {
      const Index k0 = std::max<Index>(0, k1 - kPanel);
      const Index b = k1 - k0;
      const Index r0 = k0 + 1;  // first row touched by reflector k0
      const Index m = n - r0;
      auto Vb = panel_.block(r0, 0, m, b);
      for (Index j = 0; j < b; ++j) {
        auto col = Vb.col(j);
        col.head(j).setZero();
        col(j) = Scalar(1);
        col.tail(m - j - 1) = Aw().col(k0 + j).tail(m - j - 1);
      }
      auto T = t_.topLeftCorner(b, b);
      T.setZero();
      for (Index j = 0; j < b; ++j) {
        const Scalar tau = tau_(k0 + j);
        T(j, j) = tau;
        if (j > 0) {
          auto s = small_.col(0).head(j);
          s.noalias() = Vb.leftCols(j).transpose() * Vb.col(j);
          s *= -tau;
          auto tcol = T.col(j).head(j);
          tcol.noalias() = T.topLeftCorner(j, j).template triangularView<Eigen::Upper>() * s;
        }
      }
      auto Zb = Zw().bottomRightCorner(m, m);
      auto tmp = wy_.topLeftCorner(b, m);
      auto tmp2 = wy2_.topLeftCorner(b, m);
      tmp.setZero();
      detail::product_accumulate<Scalar>(tmp, Scalar(1), Vb.transpose(), Zb);
      tmp2.noalias() = T.template triangularView<Eigen::Upper>() * tmp;
      detail::product_accumulate<Scalar>(Zb, Scalar(-1), Vb, tmp2);
      k1 = k0;
    }
  }

  // Eigenvalues first (QR without vectors, O(n²)), then QR with vectors using them as
  // shifts. If the first pass fails, the second runs with Wilkinson shifts alone; small
  // matrices use Wilkinson shifts only.
  bool solve_tridiagonal(Index n) {
    if (n < kExactShiftsFrom) return qr_iterate(n, values_.data(), e_.data(), true, nullptr);
    shift_d_.head(n) = values_.head(n);
    shift_e_.head(n - 1) = e_.head(n - 1);
    const bool have_shifts = qr_iterate(n, shift_d_.data(), shift_e_.data(), false, nullptr);
    if (have_shifts) std::sort(shift_d_.data(), shift_d_.data() + n);
    std::fill(used_.begin(), used_.end(), static_cast<unsigned char>(0));
    return qr_iterate(n, values_.data(), e_.data(), true, have_shifts ? shift_d_.data() : nullptr);
  }

  // ---- 4. implicit QR, rotations recorded -------------------------------------------
  // Runs the QR iteration on (d, e) = (values_, e_). With `record`, the rotations are
  // recorded and applied to the working eigenvectors; `shifts` (ascending, or nullptr) are
  // eigenvalues of T known beforehand, used as exact shifts: the one nearest the Wilkinson
  // shift is taken for the first two steps at each bottom index, so that most eigenvalues
  // deflate after one sweep instead of about two (only convergence depends on the shift;
  // every step is an orthogonal similarity whatever the shift).
  bool qr_iterate(Index n, Scalar* d, Scalar* e, bool record, const Scalar* shifts) {
    const Scalar eps = std::numeric_limits<Scalar>::epsilon();
    // Deflation: relative to the neighbouring diagonal (Golub & Van Loan 8.3.3) or below
    // 32ε‖T‖; the latter keeps the normwise backward error at the level the Householder
    // reduction has anyway (a few ε‖A‖ times √n) and lets an eigenvalue deflate after one
    // sweep with an exact shift, whose residual is a small multiple of ε‖T‖.
    Scalar tnorm = Scalar(0);
    for (Index i = 0; i < n; ++i) tnorm = std::max(tnorm, std::abs(d[i]));
    for (Index i = 0; i + 1 < n; ++i) tnorm = std::max(tnorm, std::abs(e[i]));
    const Scalar tiny = std::max(std::numeric_limits<Scalar>::min(), Scalar(32) * eps * tnorm);
    const Index max_steps = 30 * n;
    Index steps = 0;
    Index used = 0;     // rotations recorded in the current chunk
    Index nsweeps = 0;  // sweeps recorded in the current chunk
    Index hi = n - 1;
    Index tries = 0;
    Index last_hi = -1;
    while (hi > 0) {
      // Find the unreduced block [lo, hi].
      Index lo = hi;
      while (lo > 0) {
        const Scalar off = std::abs(e[lo - 1]);
        if (off <= eps * (std::abs(d[lo - 1]) + std::abs(d[lo])) || off <= tiny) {
          e[lo - 1] = Scalar(0);
          break;
        }
        --lo;
      }
      if (lo == hi) {
        if (shifts != nullptr) take_shift(shifts, n, d[hi]);
        --hi;
        continue;
      }
      if (++steps > max_steps) {
        if (record) flush(n, used, nsweeps);
        return false;
      }
      if (hi != last_hi) {
        last_hi = hi;
        tries = 0;
      }
      ++tries;
      Scalar mu = wilkinson_shift(d, e, hi);
      if (shifts != nullptr && tries <= 2) {
        const Index k = nearest_shift(shifts, n, mu);
        if (k >= 0) mu = shifts[k];
      }
      const Index len = hi - lo;  // rotations in this sweep
      Scalar* cs = rot_.data();
      if (record) {
        if (used + len > rot_capacity_) flush(n, used, nsweeps);
        sweep_start_[static_cast<std::size_t>(nsweeps)] = lo;
        sweep_length_[static_cast<std::size_t>(nsweeps)] = len;
        ++nsweeps;
        cs += 2 * used;
        used += len;
        rotations_ += len;
        ++sweeps_;
      }
      qr_step(d, e, lo, hi, mu, cs);
    }
    if (record) flush(n, used, nsweeps);
    return true;
  }

  // Index of the not yet deflated precomputed eigenvalue nearest to mu (−1 if none).
  Index nearest_shift(const Scalar* shifts, Index n, Scalar mu) const {
    Index up = static_cast<Index>(std::lower_bound(shifts, shifts + n, mu) - shifts);
    Index down = up - 1;
    while (up < n && used_[static_cast<std::size_t>(up)]) ++up;
    while (down >= 0 && used_[static_cast<std::size_t>(down)]) --down;
    if (up >= n) return down;
    if (down < 0) return up;
    return std::abs(shifts[up] - mu) < std::abs(shifts[down] - mu) ? up : down;
  }

  // Marks the precomputed eigenvalue that the deflated value lambda stands for as used, so
  // that later exact shifts are taken among the eigenvalues of the remaining blocks.
  void take_shift(const Scalar* shifts, Index n, Scalar lambda) {
    const Index k = nearest_shift(shifts, n, lambda);
    if (k >= 0) used_[static_cast<std::size_t>(k)] = 1;
  }

  // Wilkinson shift: the eigenvalue of the trailing 2×2 block of [.., hi] nearer d[hi].
  static Scalar wilkinson_shift(const Scalar* d, const Scalar* e, Index hi) {
    const Scalar b = e[hi - 1];
    const Scalar delta = (d[hi - 1] - d[hi]) * Scalar(0.5);
    const Scalar r = std::hypot(delta, b);
    const Scalar denom = delta >= Scalar(0) ? delta + r : delta - r;
    return denom != Scalar(0) ? d[hi] - (b / denom) * b : d[hi];
  }

  // One implicit QR step with shift mu on the unreduced block [lo, hi] (Golub & Van Loan
  // Alg. 8.3.2), chasing the bulge with rotations G_k in the plane (k, k+1),
  // T ← G_kᵀ T G_k. Writes (c_k, s_k) to cs; the eigenvector update is Z ← Z G_k with
  // G_k = [c s; −s c].
  static void qr_step(Scalar* d, Scalar* e, Index lo, Index hi, Scalar mu, Scalar* cs) {
    Scalar x = d[lo] - mu;
    Scalar z = e[lo];
    for (Index k = lo; k < hi; ++k) {
      Scalar c, s;
      givens(x, z, c, s);
      if (k > lo) e[k - 1] = c * x - s * z;
      const Scalar a0 = d[k], a1 = d[k + 1], bk = e[k];
      const Scalar cc = c * c, ss = s * s, cs2 = Scalar(2) * c * s * bk;
      d[k] = cc * a0 - cs2 + ss * a1;
      d[k + 1] = ss * a0 + cs2 + cc * a1;
      e[k] = (a0 - a1) * c * s + bk * (cc - ss);
      if (k + 1 < hi) {
        const Scalar bn = e[k + 1];
        z = -s * bn;
        e[k + 1] = c * bn;
      }
      x = e[k];
      cs[2 * (k - lo)] = c;
      cs[2 * (k - lo) + 1] = s;
    }
  }

  // c, s with [c s; −s c]ᵀ [a; b] = [r; 0] (Golub & Van Loan Alg. 5.1.3).
  static void givens(Scalar a, Scalar b, Scalar& c, Scalar& s) {
    if (b == Scalar(0)) {
      c = Scalar(1);
      s = Scalar(0);
    } else if (std::abs(b) > std::abs(a)) {
      const Scalar t = -a / b;
      s = Scalar(1) / std::sqrt(Scalar(1) + t * t);
      c = s * t;
    } else {
      const Scalar t = -b / a;
      c = Scalar(1) / std::sqrt(Scalar(1) + t * t);
      s = c * t;
    }
  }

  // Applies the recorded sweeps to the working eigenvectors from the right, kRowBlock rows
  // at a time (then smaller blocks, then single rows, for the remainder). Rows take the
  // rotations independently, so the full blocks are split into contiguous ranges over
  // kfopt's threads when the work (6 flops per rotation and row) is large enough: the result
  // is the same bit for bit on any number of threads.
  void flush(Index n, Index& used, Index& nsweeps) {
    if (nsweeps == 0) return;
    Scalar* Z = z_.data();
    const Index ld = z_.outerStride();
    const Index blocks = n / kRowBlock;
    const int parts = static_cast<int>(std::min<Index>(
        blocks, 6.0 * static_cast<double>(used) * static_cast<double>(n) >=
                        detail::kMinParallelProductFlops
                    ? kfopt::threads()
                    : 1));
    if (parts > 1) {
      detail::parallel_for(parts, [&](std::ptrdiff_t t) {
        const Index first = blocks * t / parts, last = blocks * (t + 1) / parts;
        for (Index b = first; b < last; ++b) apply_block<kRowBlock>(Z + b * kRowBlock, ld, nsweeps);
      });
    }
    Index r0 = parts > 1 ? blocks * kRowBlock : 0;
    for (; r0 + kRowBlock <= n; r0 += kRowBlock) apply_block<kRowBlock>(Z + r0, ld, nsweeps);
    if (r0 + kRowBlock / 2 <= n) {
      apply_block<kRowBlock / 2>(Z + r0, ld, nsweeps);
      r0 += kRowBlock / 2;
    }
    if (r0 + kRowBlock / 4 <= n) {
      apply_block<kRowBlock / 4>(Z + r0, ld, nsweeps);
      r0 += kRowBlock / 4;
    }
    for (; r0 < n; ++r0) apply_block<1>(Z + r0, ld, nsweeps);
    used = 0;
    nsweeps = 0;
  }

  // Applies all recorded sweeps to R rows starting at `base` (column-major, stride ld).
  // Two consecutive sweeps over blocks with the same start, the second not longer, are
  // applied together as a wavefront: rotation k−1 of the second follows rotation k of the
  // first, so every column is loaded and stored once for two rotations and the two carried
  // columns form independent dependency chains.
  template <int R>
  void apply_block(Scalar* base, Index ld, Index nsweeps) const {
    using Block = Eigen::Array<Scalar, R, 1>;
    using Map = Eigen::Map<Block>;
    const Scalar* cs = rot_.data();
    Index sw = 0;
    while (sw < nsweeps) {
      const Index lo = sweep_start_[static_cast<std::size_t>(sw)];
      const Index len = sweep_length_[static_cast<std::size_t>(sw)];
      const bool pair = sw + 1 < nsweeps && sweep_start_[static_cast<std::size_t>(sw + 1)] == lo &&
                        sweep_length_[static_cast<std::size_t>(sw + 1)] <= len;
      if (!pair) {
        Scalar* col = base + lo * ld;
        Block x = Map{col};
        for (Index k = 0; k < len; ++k) {
          Scalar* next = col + ld;
          const Block y = Map{next};
          const Scalar c = cs[2 * k], s = cs[2 * k + 1];
          Map{col} = c * x - s * y;
          x = s * x + c * y;
          col = next;
        }
        Map{col} = x;
        cs += 2 * len;
        sw += 1;
        continue;
      }
      const Index len2 = sweep_length_[static_cast<std::size_t>(sw + 1)];
      const Scalar* cs2 = cs + 2 * len;
      Scalar* col0 = base + lo * ld;
      Block x1 = Map{col0};
      Block x2;
      {
        const Block y = Map{col0 + ld};
        const Scalar c = cs[0], s = cs[1];
        x2 = c * x1 - s * y;  // column lo after the first sweep
        x1 = s * x1 + c * y;
      }
      for (Index k = 1; k < len; ++k) {
        const Block y = Map{col0 + (k + 1) * ld};
        const Scalar c = cs[2 * k], s = cs[2 * k + 1];
        const Block out = c * x1 - s * y;  // column lo+k after the first sweep
        x1 = s * x1 + c * y;
        const Index j = k - 1;  // second sweep's rotation on (lo+j, lo+j+1)
        if (j < len2) {
          const Scalar c2 = cs2[2 * j], s2 = cs2[2 * j + 1];
          Map{col0 + j * ld} = c2 * x2 - s2 * out;
          x2 = s2 * x2 + c2 * out;
        } else {
          if (j == len2) Map{col0 + j * ld} = x2;
          Map{col0 + k * ld} = out;
        }
      }
      const Index j = len - 1;
      if (j < len2) {
        const Scalar c2 = cs2[2 * j], s2 = cs2[2 * j + 1];
        Map{col0 + j * ld} = c2 * x2 - s2 * x1;
        Map{col0 + len * ld} = s2 * x2 + c2 * x1;
      } else {
        if (j == len2) Map{col0 + j * ld} = x2;
        Map{col0 + len * ld} = x1;
      }
      cs = cs2 + 2 * len2;
      sw += 2;
    }
  }

  // ---- 5. ascending order, undo the scaling ------------------------------------------
  void sort_and_unscale(Index n, int exponent) {
    for (Index i = 0; i < n; ++i) perm_[static_cast<std::size_t>(i)] = i;
    std::sort(perm_.begin(), perm_.end(),
              [this](Index i, Index j) { return values_(i) < values_(j); });
    for (Index i = 0; i < n; ++i) {
      const Index from = perm_[static_cast<std::size_t>(i)];
      vec_(i) = std::ldexp(values_(from), exponent);
      vectors_.col(i) = z_.col(from).head(n);
    }
    values_ = vec_.head(n);
  }

  // Views of the padded working matrices (n×n, leading dimension a_.rows()).
  auto Aw() { return a_.topRows(n_); }
  auto Zw() { return z_.topRows(n_); }

  Index n_ = -1;
  Matrix a_;        // working copy: lower triangle, then the reflectors (padded)
  Matrix z_;        // Q, then the unsorted eigenvectors (padded)
  std::vector<Index> perm_;
  std::vector<unsigned char> used_;  // precomputed eigenvalues already deflated
  Vector values_;   // diagonal of T, then the eigenvalues
  Matrix vectors_;  // the eigenvectors, sorted
  Vector e_;        // off-diagonal of T
  Vector tau_;      // reflector scalars
  Matrix panel_;    // [V | W] of a panel; V blocks of the WY formation
  Matrix swapped_;  // [W | V]
  Matrix small_;    // kPanel × 1 scratch
  Matrix t_;        // WY triangular factor
  Matrix wy_, wy2_;  // kPanel × n scratch for the WY application
  Vector vec_, vec2_;
  Vector shift_d_, shift_e_;  // eigenvalue-only pass
  Vector rot_;      // recorded (c, s) pairs
  std::vector<Index> sweep_start_, sweep_length_;
  Index rot_capacity_ = 0;
  Index rotations_ = 0;
  Index sweeps_ = 0;
  Status info_ = Status::NotComputed;
};

// Defined out of the class (not inline): with KFOPT_COMPILED the float and double
// instantiations come from kfopt_compiled and a user's translation unit compiles none of
// the reduction, QR and back-transformation code.
template <typename Scalar, int PanelSize>
SymmetricEigensolver<Scalar, PanelSize>& SymmetricEigensolver<Scalar, PanelSize>::compute(
    const Eigen::Ref<const Matrix>& A) {
  if (A.rows() != A.cols()) {
    throw ShapeError("kfopt::SymmetricEigensolver::compute: A is " +
                     std::to_string(A.rows()) + "x" + std::to_string(A.cols()) +
                     " but must be square");
  }
  const Index n = A.rows();
  allocate(n);
  info_ = Status::NotComputed;
  rotations_ = 0;
  sweeps_ = 0;
  if (n == 0) {
    info_ = Status::Success;
    return *this;
  }
  // Copy the lower triangle, checking finiteness and the largest magnitude on the way.
  auto a = Aw();
  Scalar amax = Scalar(0);
  bool finite = true;
  for (Index j = 0; j < n; ++j) {
    for (Index i = j; i < n; ++i) {
      const Scalar v = A(i, j);
      finite = finite && std::isfinite(v);
      amax = std::max(amax, std::abs(v));
      a(i, j) = v;
    }
  }
  if (!finite) {
    info_ = Status::NonFiniteInput;
    return *this;
  }
  if (amax == Scalar(0)) {
    values_.setZero();
    vectors_.setIdentity();
    info_ = Status::Success;
    return *this;
  }
  // Exact power-of-two scaling to max |a_ij| in [1/2, 1).
  int exponent = 0;
  std::frexp(amax, &exponent);
  for (Index j = 0; j < n; ++j) {
    for (Index i = j; i < n; ++i) a(i, j) = std::ldexp(a(i, j), -exponent);
  }
  if (n == 1) {
    values_(0) = A(0, 0);
    vectors_(0, 0) = Scalar(1);
    info_ = Status::Success;
    return *this;
  }
  tridiagonalize(n);
  form_q(n);
  if (!solve_tridiagonal(n)) {
    info_ = Status::NoConvergence;
    return *this;
  }
  sort_and_unscale(n, exponent);
  // Finite entries can still have eigenvalues beyond the largest finite number.
  info_ = values_.allFinite() ? Status::Success : Status::NumericalIssue;
  return *this;
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class SymmetricEigensolver<float>;
extern template class SymmetricEigensolver<double>;
#endif

}  // namespace kfopt
