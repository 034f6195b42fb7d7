#pragma once
/// \file kronecker_block.hpp
/// \brief The Kronecker-factored Fisher block of one dense layer `s = W a (+ b)`:
/// `F ≈ A ⊗ G` with `A = E[a aᵀ]`, `G = E[g gᵀ]`, `g = ∂L/∂s` (Martens & Grosse 2015, §3;
/// RNN K-FAC paper, §2.3 and eq. 6 with T = 1).
///
/// The block knows only its curvature math: it updates the factor statistics, refreshes
/// the factors' spectra (the amortized "inverse"), applies the damped inverse to a gradient
/// and multiplies by `A ⊗ G` (for the quadratic model of adaptive damping). Step sizes,
/// schedules and the damping policy belong to the optimizer.
///
/// Shapes: the bias is folded in through the homogeneous coordinate (a gets a trailing 1),
/// so the block acts on the out × (in + 1) matrix `[∇W  ∇b]`; without a bias, on out × in.
///
/// **The Fisher needs model samples.** `G` must be estimated from gradients `g` computed
/// with targets *sampled from the model's predictive distribution* (y ~ p(y | x, θ)); only
/// then is `A ⊗ G` an approximation of the Fisher (RNN K-FAC paper, §2.2). Feeding the `g`
/// of the training targets gives the *empirical Fisher*, a different (and generally worse)
/// curvature matrix (Martens 2014); kfopt accepts it as an explicit choice of the caller,
/// since the block cannot tell the two apart.
///
/// Cost: statistics, a rank-k update per factor (in² k + out² k flops for a batch of k);
/// refresh, one symmetric eigendecomposition per dense factor (≈ 9 in³ + 9 out³ flops,
/// amortized over the inverse period), O(n) per diagonal factor. Apply with factored
/// damping: two products (out·in·(out + in) flops) with explicit damped inverses that are
/// rebuilt (one n³ product per factor) only when the spectra or λ change; with exact
/// damping: four products (2·out·in·(out + in) flops), for any λ.

#include <Eigen/Core>
#include <string>

#include "kfopt/linalg/damped_cholesky_inverse.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"
#include "kfopt/kron/factor_moments.hpp"
#include "kfopt/kron/factored_damping.hpp"
#include "kfopt/kron/kronecker_inverse.hpp"
#include "kfopt/kron/vec.hpp"

namespace kfopt {

/// How a damped Fisher block is inverted.
enum class DampingStyle {
  /// `(A + π√λ I) ⊗ (G + (√λ/π) I)`: Martens & Grosse 2015 §6.3 (the usual K-FAC choice).
  Factored,
  /// `A ⊗ G + λ I`: exact Tikhonov damping, from the same cached eigenbases.
  Exact,
};

/// How a block's damped inverse is prepared at each refresh.
enum class InverseMethod {
  /// Eigendecompose each dense factor (≈ 9n³ flops): any λ and both damping styles from one
  /// decomposition; a new λ costs only products.
  Eigendecomposition,
  /// Keep a snapshot of the factors and form `(F + δI)⁻¹` by Cholesky (≈ n³ flops with the
  /// explicit inverse), refactorizing only when the snapshot or λ changes. Factored damping
  /// only. Several times cheaper per refresh when λ changes rarely.
  Cholesky,
};

/// The damping applied to a block's inverse.
template <typename Scalar>
struct BlockDamping {
  /// Factored `(A + π√λ I) ⊗ (G + (√λ/π) I)` or exact `A ⊗ G + λ I`.
  DampingStyle style = DampingStyle::Factored;
  Scalar lambda = Scalar(1e-3);  ///< Tikhonov damping λ ≥ 0
  Scalar floor = Scalar(0);      ///< smallest factored shift (Factored only)
};

/// Structure of a dense layer's block.
struct KroneckerBlockOptions {
  bool bias = true;                                      ///< fold a bias via the homogeneous coordinate
  FactorStructure input_factor = FactorStructure::Dense;     ///< A: Diagonal for one-hot inputs
  FactorStructure gradient_factor = FactorStructure::Dense;  ///< G: Diagonal for very wide outputs
  double decay = 0.95;                                   ///< factor moving-average decay β ∈ (0, 1]
  InverseMethod inverse_method = InverseMethod::Eigendecomposition;  ///< see InverseMethod
};

/// Kronecker-factored Fisher block of a dense layer (see kronecker_block.hpp).
template <typename Scalar>
class KroneckerBlock {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// A factor's moving average as it is held (FactorMovingAverage::RawState).
  using RawFactor = typename FactorMovingAverage<Scalar>::RawState;

  /// Everything the block carries between steps (for checkpoints): the factors' moving
  /// averages as they are held (the lazy scale not folded in, so that taking the state
  /// changes nothing), the refused batches, and what the last refresh left for the next
  /// steps: each factor's spectrum (InverseMethod::Eigendecomposition; zero when it has none)
  /// or the factor snapshots (Cholesky). The explicit damped inverses are not part of it:
  /// they are rebuilt from these at the next apply_inverse, bit for bit.
  struct State {
    RawFactor a;                          ///< the input factor's average A
    RawFactor g;                          ///< the gradient factor's average G
    std::int64_t skipped_statistics = 0;  ///< batches refused for NaN/Inf
    bool a_has_spectrum = false;          ///< whether A's spectrum was computed
    bool g_has_spectrum = false;          ///< whether G's spectrum was computed
    Vector a_eigenvalues;                 ///< A's clipped eigenvalues (ascending; diagonal: in order)
    Vector g_eigenvalues;                 ///< G's clipped eigenvalues
    Matrix a_eigenvectors;                ///< A's eigenvectors (dense A only, else empty)
    Matrix g_eigenvectors;                ///< G's eigenvectors (dense G only, else empty)
    bool has_snapshot = false;            ///< whether a Cholesky refresh took a snapshot
    Matrix a_snapshot;                    ///< A at the last refresh (Cholesky; zero without)
    Matrix g_snapshot;                    ///< G at the last refresh (Cholesky; zero without)
  };

  /// The block's state (see State); does not finish the factors' pending blends.
  State state() const;
  /// Throws (ShapeError, InvalidInputError naming `op`) unless `state` fits this block:
  /// shapes, finite and symmetric averages and snapshots, valid spectra, equal update counts
  /// of A and G, counters ≥ 0. Changes nothing.
  void check_state(const std::string& op, const State& state) const;
  /// Restores a state() exactly: the next steps give the same bits as they would have on
  /// the saved block. All-or-nothing (check_state first).
  void set_state(const State& state);

  /// A block named `name` for a layer with `in` inputs and `out` outputs.
  KroneckerBlock(std::string name, Eigen::Index in, Eigen::Index out,
                 KroneckerBlockOptions options = {})
      : name_(std::move(name)),
        options_(options),
        in_(in),
        out_(out),
        a_(in, {options.decay, options.bias, options.input_factor == FactorStructure::Diagonal}),
        g_(out, {options.decay, false, options.gradient_factor == FactorStructure::Diagonal}),
        a_spectrum_(in + (options.bias ? 1 : 0), options.input_factor),
        g_spectrum_(out, options.gradient_factor) {}

  /// The layer's name (used in error messages).
  const std::string& name() const noexcept { return name_; }
  /// Number of layer inputs (without the bias).
  Eigen::Index input_size() const noexcept { return in_; }
  /// Number of layer outputs.
  Eigen::Index output_size() const noexcept { return out_; }
  /// Whether the layer has a bias (an extra input column).
  bool has_bias() const noexcept { return options_.bias; }
  /// The options in use.
  const KroneckerBlockOptions& options() const noexcept { return options_; }
  /// Columns of the gradient matrix the block acts on: in (+1 with a bias).
  Eigen::Index cols() const noexcept { return a_.dimension(); }
  /// Rows of the gradient matrix the block acts on: out.
  Eigen::Index rows() const noexcept { return out_; }

  /// Takes one batch of layer inputs `a` (k × in) and per-example pre-activation gradients
  /// `g` (k × out; from model-sampled targets for the true Fisher). Both or neither: a
  /// non-finite entry in either returns NonFiniteInput, a batch whose contribution would
  /// overflow a factor (FactorMovingAverage::admit) returns Overflow, with both factors
  /// unchanged. Shape mismatches throw ShapeError naming the layer and both shapes.
  Status update_statistics(const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g);

  /// Throws the ShapeError update_statistics(a, g) would throw (naming `op` and the layer);
  /// returns if a (k × in) and g (k × out) fit, k > 0.
  void require_statistics_shapes(const char* op, const Eigen::Ref<const Matrix>& a,
                                 const Eigen::Ref<const Matrix>& g) const {
    if (a.cols() != in_ || g.cols() != out_ || a.rows() != g.rows() || a.rows() == 0) {
      throw ShapeError(std::string(op) + " (layer '" + name_ + "'): a is " + detail::shape_of(a) + " and g is " + detail::shape_of(g) +
                       " but the layer needs k×" + std::to_string(in_) + " and k×" +
                       std::to_string(out_) + " with the same k > 0");
    }
  }

  /// A batch's statistics as sums over its examples, before normalization: A's and G's
  /// FactorContribution. Contributions add (the sum over data-parallel ranks of their
  /// batches' contributions is the contribution of the global batch), and
  /// update_statistics(contribution) takes a summed one as one batch.
  struct Contribution {
    FactorContribution<Scalar> a;  ///< Σ ããᵀ (with the bias coordinate) and its rows
    FactorContribution<Scalar> g;  ///< Σ ggᵀ and its rows
    /// Visits every field (FactorContribution::visit), A's then G's.
    template <typename Visitor>
    void visit(Visitor& v) {
      a.visit(v);
      g.visit(v);
    }
    /// Back to the empty contribution.
    void clear() {
      a.clear();
      g.clear();
    }
  };
  /// The empty contribution of this block's shape.
  Contribution empty_contribution() const { return Contribution{a_.empty_contribution(), g_.empty_contribution()}; }
  /// Adds a batch (`a` k × in, `g` k × out, k ≥ 0) to `c`, both factors or neither: NaN/Inf
  /// in either adds only the non-finite counts of both and returns NonFiniteInput. Shape
  /// mismatches throw ShapeError naming the layer. Changes nothing in the block.
  Status add_contribution(const Eigen::Ref<const Matrix>& a, const Eigen::Ref<const Matrix>& g,
                          Contribution& c) const {
    if (a.cols() != in_ || g.cols() != out_ || a.rows() != g.rows()) {
      throw ShapeError("kfopt::KroneckerBlock::add_contribution (layer '" + name_ + "'): a is " +
                       detail::shape_of(a) + " and g is " + detail::shape_of(g) +
                       " but the layer needs k×" + std::to_string(in_) + " and k×" +
                       std::to_string(out_) + " with the same k");
    }
    if (!detail::all_finite(a) || !detail::all_finite(g)) {
      c.a.nonfinite += 1.0;
      c.g.nonfinite += 1.0;
      return Status::NonFiniteInput;
    }
    (void)a_.add_contribution(a, c.a);  // finite: cannot be refused
    (void)g_.add_contribution(g, c.g);
    return Status::Success;
  }
  /// What update_statistics(c) would return, without changing anything: NotComputed for an
  /// empty contribution, else FactorMovingAverage::admit of A's, then of G's part.
  Status admit(const Contribution& c) const {
    const Status sa = a_.admit(c.a);
    if (sa != Status::Success) return sa;
    return g_.admit(c.g);
  }
  /// Takes a (possibly summed) contribution as one batch: the factors of
  /// update_statistics(a, g) on the batch it sums, to rounding. Both factors or neither;
  /// refused as admit(c) (counted in skipped_statistics, except NotComputed for an empty
  /// contribution, which changes nothing).
  Status update_statistics(const Contribution& c) {
    const Status admitted = admit(c);
    if (admitted == Status::NotComputed) return admitted;
    if (admitted != Status::Success) {
      ++skipped_statistics_;
      return admitted;
    }
    a_.update(c.a);
    g_.update(c.g);
    return Status::Success;
  }

  /// Whether any statistics have been taken.
  bool has_statistics() const noexcept { return a_.updates() > 0; }
  /// Batches refused because they held NaN or Inf or would have overflowed a factor.
  std::int64_t skipped_statistics() const noexcept { return skipped_statistics_; }

  /// Recomputes both factors' spectra from the current averages (the amortized
  /// preprocessing). On failure the previous spectra stay in use.
  Status refresh();
  /// The refresh as independent parts, for data-parallel processes that split it among
  /// themselves (kfopt::mpi::DistributedKfac): part 0 for A, part 1 for G. With
  /// InverseMethod::Eigendecomposition a part is the factor's spectrum; with Cholesky it is
  /// the factor's damped inverse `(F + δI)⁻¹` from the snapshot, for the damping the next
  /// apply_inverse will use (what apply_inverse would otherwise form itself).
  int refresh_part_count() const noexcept { return 2; }
  /// Flops of part k: ≈ 9n³ for a dense factor's eigendecomposition, n³ for its Cholesky
  /// factorization and inverse (potrf + potri), n for a diagonal factor.
  double refresh_part_cost(int k) const {
    const FactorSpectrum<Scalar>& f = k == 0 ? a_spectrum_ : g_spectrum_;
    const double n = static_cast<double>(f.size());
    if (f.is_diagonal()) return n;
    return options_.inverse_method == InverseMethod::Cholesky ? n * n * n : 9.0 * n * n * n;
  }
  /// Finishes the factors' pending lazy blends (FactorMovingAverage::value()), as refresh()
  /// does. Processes that split a refresh call it on every process before the parts, so that
  /// their averages stay bit for bit the same whichever process computed which part
  /// (compute_refresh_part reads the averages through value(), which finishes them). O(n²).
  void finish_statistics() const {
    (void)a_.value();
    (void)g_.value();
  }
  /// Called on every process before the parts of a split refresh: with Eigendecomposition
  /// finish_statistics(); with Cholesky the refresh itself (the O(n²) snapshot the parts
  /// invert). Returns NotComputed without statistics.
  Status begin_refresh_parts() {
    if (options_.inverse_method == InverseMethod::Cholesky) return refresh();
    finish_statistics();
    return has_statistics() ? Status::Success : Status::NotComputed;
  }
  /// Computes part k (0: A, 1: G) into `result`, changing nothing in the block, and returns
  /// its status. Eigendecomposition: n × (n + 1), the clipped eigenvalues in column 0 and the
  /// eigenvectors after them, of the current averages. Cholesky: the n × n damped inverse of
  /// the snapshot with the shift `damping` gives (n × 1 for a diagonal factor); NotComputed
  /// before begin_refresh_parts. Cost as refresh_part_cost(k).
  Status compute_refresh_part(int k, const BlockDamping<Scalar>& damping, Matrix& result) const {
    if (options_.inverse_method == InverseMethod::Cholesky) {
      if (!has_snapshot_) return Status::NotComputed;
      const FactoredDamping<Scalar> d = factored_damping("compute_refresh_part", damping);
      DampedCholeskyInverse<Scalar> chol;
      return snapshot_inverse(k == 0 ? a_snapshot_ : g_snapshot_, k == 0 ? d.a_shift : d.g_shift,
                              chol, result);
    }
    const FactorSpectrum<Scalar>& shape = k == 0 ? a_spectrum_ : g_spectrum_;
    FactorSpectrum<Scalar> f(shape.size(), shape.structure());
    const Status s = f.compute(k == 0 ? a_.value() : g_.value());
    if (s != Status::Success) return s;
    const Eigen::Index n = f.size();
    if (f.is_diagonal()) {
      result = f.eigenvalues();
    } else {
      result.resize(n, n + 1);
      result.col(0) = f.eigenvalues();
      result.rightCols(n) = f.eigenvectors();
    }
    return Status::Success;
  }
  /// Installs the results of both parts (compute_refresh_part with the same statistics and
  /// `damping`, possibly in another process) as the refresh: the block then holds what
  /// refresh() followed by apply_inverse(…, damping, …) would have left, bit for bit (the
  /// spectra; or, with Cholesky, the damped inverses for that damping, next to the snapshot
  /// begin_refresh_parts took). Throws ShapeError / InvalidInputError (nothing changes)
  /// unless both are valid results for this block: spectra are checked by an n³
  /// orthonormality product, damped inverses for their shape and finiteness (O(n²)).
  void install_refresh(const Matrix& a_result, const Matrix& g_result,
                       const BlockDamping<Scalar>& damping) {
    const std::string op = "kfopt::KroneckerBlock::install_refresh (layer '" + name_ + "')";
    if (options_.inverse_method == InverseMethod::Cholesky) {
      if (!has_snapshot_) {
        throw InvalidInputError(op + ": no snapshot to install inverses for (call begin_refresh_parts first)");
      }
      auto check = [&](const FactorSpectrum<Scalar>& f, const Matrix& r, const char* what) {
        detail::require_shape(op.c_str(), what, r, f.size(), f.is_diagonal() ? 1 : f.size());
        if (!r.allFinite()) throw InvalidInputError(op + ": " + what + " holds NaN or Inf");
      };
      check(a_spectrum_, a_result, "A's damped inverse");
      check(g_spectrum_, g_result, "G's damped inverse");
      const FactoredDamping<Scalar> d = factored_damping("install_refresh", damping);
      a_inverse_ = a_result;
      g_inverse_ = g_result;
      inverse_version_ = spectra_version_;
      cached_a_shift_ = d.a_shift;
      cached_g_shift_ = d.g_shift;
      return;
    }
    auto split = [&](const FactorSpectrum<Scalar>& f, const Matrix& r, Vector& values, Matrix& vectors) {
      const Eigen::Index n = f.size();
      detail::require_shape(op.c_str(), "result", r, n, f.is_diagonal() ? 1 : n + 1);
      values = r.col(0);
      if (!f.is_diagonal()) vectors = r.rightCols(n);
    };
    Vector av, gv;
    Matrix au, gu;
    split(a_spectrum_, a_result, av, au);
    split(g_spectrum_, g_result, gv, gu);
    g_spectrum_.check_result(op + " (G)", gv, gu);
    a_spectrum_.set_result(av, au);  // checks A first: nothing changed if it throws
    g_spectrum_.set_result(gv, gu);
    ++spectra_version_;
  }

  /// Forms now what apply_inverse with `damping` would form first: the explicit damped
  /// inverses (≈ 2n³ flops per dense factor from the spectra, or the Cholesky inverses of the
  /// snapshot), cached until the next refresh or another damping. Nothing for exact
  /// damping, which applies the spectra directly. Returns NotComputed before a refresh,
  /// NumericalIssue for a singular damped factor (the previous inverses stay).
  Status prepare(const BlockDamping<Scalar>& damping) {
    if (!has_inverse()) return Status::NotComputed;
    const bool cholesky = options_.inverse_method == InverseMethod::Cholesky;
    if (damping.style == DampingStyle::Exact && !cholesky) return Status::Success;
    const FactoredDamping<Scalar> d = factored_damping("prepare", damping);
    if (inverse_version_ == spectra_version_ && cached_a_shift_ == d.a_shift &&
        cached_g_shift_ == d.g_shift) {
      return Status::Success;
    }
    const Status s = cholesky ? cholesky_inverses(d) : spectral_inverses(d);
    if (s != Status::Success) return s;
    inverse_version_ = spectra_version_;
    cached_a_shift_ = d.a_shift;
    cached_g_shift_ = d.g_shift;
    return Status::Success;
  }

  /// Takes the refresh of `refreshed` — a copy of this block made at some step, refreshed
  /// (and possibly prepared) since, on another thread perhaps — while keeping this block's
  /// own statistics: afterwards the block holds the copy's spectra (or snapshot) and damped
  /// inverses and the statistics recorded here in the meantime. Kfac's delayed refresh
  /// (KfacOptions::refresh_delay). Throws InvalidInputError for a copy of another layer.
  void adopt_refresh(KroneckerBlock&& refreshed) {
    if (refreshed.name_ != name_ || refreshed.in_ != in_ || refreshed.out_ != out_) {
      throw InvalidInputError("kfopt::KroneckerBlock::adopt_refresh (layer '" + name_ +
                              "'): the refreshed block is layer '" + refreshed.name_ + "'");
    }
    refreshed.a_ = std::move(a_);
    refreshed.g_ = std::move(g_);
    refreshed.skipped_statistics_ = skipped_statistics_;
    *this = std::move(refreshed);
  }

  /// Whether an inverse is available (a refresh has succeeded).
  bool has_inverse() const noexcept {
    if (options_.inverse_method == InverseMethod::Cholesky) return has_snapshot_;
    return a_spectrum_.has_result() && g_spectrum_.has_result();
  }

  /// `out = F̂⁻¹ Z` for Z rows() × cols() (`[∇W ∇b]`), with the given damping. Returns
  /// NumericalIssue (out untouched) when the damped block is singular.
  template <typename DerivedZ>
  [[nodiscard]] Status apply_inverse(const Eigen::MatrixBase<DerivedZ>& Z,
                                     const BlockDamping<Scalar>& damping, Matrix& out);

  /// `out = (A ⊗ G) Z = G Z Aᵀ` with the current (undamped) factor averages.
  template <typename DerivedZ>
  void multiply(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out);

  /// Current factor averages: A (dimension² or dimension×1 if diagonal) and G.
  const Matrix& input_factor() const noexcept { return a_.value(); }
  /// Current average of the gradient factor G (out × out).
  const Matrix& gradient_factor() const noexcept { return g_.value(); }
  /// Eigendecomposition of the input factor A from the last refresh.
  const FactorSpectrum<Scalar>& input_spectrum() const noexcept { return a_spectrum_; }
  /// Eigendecomposition of the gradient factor G from the last refresh.
  const FactorSpectrum<Scalar>& gradient_spectrum() const noexcept { return g_spectrum_; }

  /// The dense `A ⊗ G` (diagonal factors expanded), for tests and small problems.
  Matrix to_dense() const;

 private:
  static Scalar factor_trace(const Matrix& f) {
    return (f.cols() == 1 && f.rows() != 1) ? f.sum() : f.trace();
  }

  Status spectral_inverses(const FactoredDamping<Scalar>& d) {
    if (!a_spectrum_.is_invertible(d.a_shift) || !g_spectrum_.is_invertible(d.g_shift)) {
      return Status::NumericalIssue;
    }
    damped_inverse(a_spectrum_, d.a_shift, a_inverse_, work_);
    damped_inverse(g_spectrum_, d.g_shift, g_inverse_, work_);
    return Status::Success;
  }

  // (F + shift·I)⁻¹ of a snapshot by Cholesky (dense) or reciprocals (diagonal, clipped at
  // 0 like the eigenvalues).
  static Status snapshot_inverse(const Matrix& f, Scalar shift, DampedCholeskyInverse<Scalar>& chol,
                                 Matrix& result) {
    if (f.cols() == 1 && f.rows() != 1) {
      const auto shifted = (f.col(0).array().cwiseMax(Scalar(0)) + shift).eval();
      if (!ScalarTraits<Scalar>::invertible_spectrum(shifted.minCoeff(), shifted.maxCoeff())) {
        return Status::NumericalIssue;
      }
      result = shifted.inverse().matrix();
      return Status::Success;
    }
    const Status s = chol.compute(f, shift).info();
    if (s != Status::Success) return s;
    result = chol.inverse();
    return Status::Success;
  }

  // The factored shifts of `damping` for the current factors (snapshot or spectra). Exact
  // damping needs the spectra: InvalidInputError with Cholesky.
  FactoredDamping<Scalar> factored_damping(const char* what, const BlockDamping<Scalar>& damping) const {
    const bool cholesky = options_.inverse_method == InverseMethod::Cholesky;
    if (cholesky && damping.style == DampingStyle::Exact) {
      throw InvalidInputError(std::string("kfopt::KroneckerBlock::") + what + " (layer '" + name_ +
                              "'): exact damping needs InverseMethod::Eigendecomposition");
    }
    const Scalar trace_a = cholesky ? factor_trace(a_snapshot_) : a_spectrum_.trace();
    const Scalar trace_g = cholesky ? factor_trace(g_snapshot_) : g_spectrum_.trace();
    return factored_tikhonov_damping(trace_a, cols(), trace_g, rows(), damping.lambda, damping.floor);
  }

  // Both damped inverses of the snapshots, formed before either is stored.
  Status cholesky_inverses(const FactoredDamping<Scalar>& d) {
    Status s = snapshot_inverse(a_snapshot_, d.a_shift, a_chol_, work_);
    if (s != Status::Success) return s;
    s = snapshot_inverse(g_snapshot_, d.g_shift, g_chol_, g_inverse_);
    if (s != Status::Success) return s;
    a_inverse_.swap(work_);
    return Status::Success;
  }

  // (F + shift·I)⁻¹ from a spectrum: U diag(1/(λ + shift)) Uᵀ (dense), or the reciprocal
  // diagonal as a column (diagonal). `scaled` is a reusable workspace.
  static void damped_inverse(const FactorSpectrum<Scalar>& f, Scalar shift, Matrix& out,
                             Matrix& scaled) {
    const auto& ev = f.eigenvalues();
    if (f.is_diagonal()) {
      out = (ev.array() + shift).inverse().matrix();
      return;
    }
    const Matrix& U = f.eigenvectors();
    scaled = U * (ev.array() + shift).inverse().matrix().asDiagonal();
    out.setZero(U.rows(), U.rows());
    detail::product_accumulate<Scalar>(out, Scalar(1), scaled, U.transpose());
    detail::symmetrize(out);
  }

  static Matrix expand(const Matrix& f) {
    if (f.cols() == 1 && f.rows() != 1) return f.col(0).asDiagonal();
    return f;
  }

  template <typename DerivedZ>
  void require_operand(const char* op, const Eigen::MatrixBase<DerivedZ>& Z) const {
    if (Z.rows() != rows() || Z.cols() != cols()) {
      throw ShapeError(std::string(op) + " (layer '" + name_ + "'): gradient is " +
                       detail::shape_of(Z) + " but the block is " +
                       detail::shape_string(rows(), cols()) +
                       (options_.bias ? " ([∇W ∇b] with the bias column)" : ""));
    }
  }

  std::string name_;
  KroneckerBlockOptions options_;
  Eigen::Index in_, out_;
  FactorMovingAverage<Scalar> a_, g_;
  FactorSpectrum<Scalar> a_spectrum_, g_spectrum_;
  Matrix work_;
  Matrix a_inverse_, g_inverse_;         // explicit damped inverses (factored damping)
  Matrix a_snapshot_, g_snapshot_;       // factors at the last refresh (Cholesky method)
  DampedCholeskyInverse<Scalar> a_chol_, g_chol_;
  bool has_snapshot_ = false;
  std::int64_t spectra_version_ = 0;     // bumped by every refresh
  std::int64_t inverse_version_ = -1;    // spectra version the explicit inverses belong to
  Scalar cached_a_shift_ = Scalar(-1), cached_g_shift_ = Scalar(-1);
  std::int64_t skipped_statistics_ = 0;
};

template <typename Scalar>
Status KroneckerBlock<Scalar>::update_statistics(const Eigen::Ref<const Matrix>& a,
                                                 const Eigen::Ref<const Matrix>& g) {
  require_statistics_shapes("kfopt::KroneckerBlock::update_statistics", a, g);
  // Both or neither: a NaN/Inf entry, or a contribution that would overflow A or G (one
  // entry of 1e300 in double, whose square does), refuses the batch whole.
  Status admitted = a_.admit(a);
  if (admitted == Status::Success) admitted = g_.admit(g);
  if (admitted != Status::Success) {
    ++skipped_statistics_;
    return admitted;
  }
  a_.update(a);  // both admitted: neither can fail now
  g_.update(g);
  return Status::Success;
}

template <typename Scalar>
Status KroneckerBlock<Scalar>::refresh() {
  if (!has_statistics()) return Status::NotComputed;
  if (options_.inverse_method == InverseMethod::Cholesky) {
    a_snapshot_ = a_.value();  // O(n²): the factors the inverses will be formed from
    g_snapshot_ = g_.value();
    has_snapshot_ = true;
    ++spectra_version_;
    return Status::Success;
  }
  const Status sa = a_spectrum_.compute(a_.value());
  if (sa != Status::Success) return sa;
  const Status sg = g_spectrum_.compute(g_.value());
  ++spectra_version_;  // A's spectrum may have changed even if G's failed
  return sg;
}

template <typename Scalar>
template <typename DerivedZ>
Status KroneckerBlock<Scalar>::apply_inverse(const Eigen::MatrixBase<DerivedZ>& Z,
                                             const BlockDamping<Scalar>& damping, Matrix& out) {
  require_operand("kfopt::KroneckerBlock::apply_inverse", Z);
  if (!has_inverse()) return Status::NotComputed;
  const bool cholesky = options_.inverse_method == InverseMethod::Cholesky;
  if (damping.style == DampingStyle::Exact && !cholesky) {
    return kronecker_damped_inverse(a_spectrum_, g_spectrum_, damping.lambda, Z, out, work_);
  }
  // Explicit damped inverses, rebuilt only when the factors (refresh) or the shifts change;
  // each step then costs two products.
  const Status prepared = prepare(damping);
  if (prepared != Status::Success) return prepared;
  // The two products on kfopt's product kernel (on kfopt's threads when large) for operands
  // it can read directly; Eigen's otherwise.
  constexpr bool direct = (Eigen::internal::traits<DerivedZ>::Flags & Eigen::DirectAccessBit) != 0;
  if (g_inverse_.cols() == 1 && rows() != 1) {
    work_ = g_inverse_.col(0).asDiagonal() * Z;
  } else if constexpr (direct) {
    work_.setZero(rows(), cols());
    detail::product_accumulate<Scalar>(work_, Scalar(1), g_inverse_, Z);
  } else {
    work_.noalias() = g_inverse_ * Z;
  }
  if (a_inverse_.cols() == 1 && cols() != 1) {
    out = work_ * a_inverse_.col(0).asDiagonal();
  } else {
    out.setZero(rows(), cols());
    detail::product_accumulate<Scalar>(out, Scalar(1), work_, a_inverse_);
  }
  return Status::Success;
}

template <typename Scalar>
template <typename DerivedZ>
void KroneckerBlock<Scalar>::multiply(const Eigen::MatrixBase<DerivedZ>& Z, Matrix& out) {
  require_operand("kfopt::KroneckerBlock::multiply", Z);
  kronecker_factor_multiply(a_.value(), g_.value(), Z, out, work_);
}

template <typename Scalar>
typename KroneckerBlock<Scalar>::Matrix KroneckerBlock<Scalar>::to_dense() const {
  const Matrix A = expand(a_.value());
  const Matrix G = expand(g_.value());
  return kronecker_product(A, G);
}

template <typename Scalar>
typename KroneckerBlock<Scalar>::State KroneckerBlock<Scalar>::state() const {
  State st;
  st.a = a_.raw_state();
  st.g = g_.raw_state();
  st.skipped_statistics = skipped_statistics_;
  auto spectrum = [](const FactorSpectrum<Scalar>& f, Eigen::Index n, bool& has, Vector& values,
                     Matrix& vectors) {
    has = f.has_result();
    values = has ? f.eigenvalues() : Vector::Zero(n);
    if (!f.is_diagonal()) vectors = has ? f.eigenvectors() : Matrix::Zero(n, n);
  };
  spectrum(a_spectrum_, a_.dimension(), st.a_has_spectrum, st.a_eigenvalues, st.a_eigenvectors);
  spectrum(g_spectrum_, g_.dimension(), st.g_has_spectrum, st.g_eigenvalues, st.g_eigenvectors);
  st.has_snapshot = has_snapshot_;
  st.a_snapshot = has_snapshot_ ? a_snapshot_ : Matrix::Zero(st.a.average.rows(), st.a.average.cols());
  st.g_snapshot = has_snapshot_ ? g_snapshot_ : Matrix::Zero(st.g.average.rows(), st.g.average.cols());
  return st;
}

template <typename Scalar>
void KroneckerBlock<Scalar>::check_state(const std::string& op, const State& st) const {
  a_.check_raw_state(op + " (A)", st.a);
  g_.check_raw_state(op + " (G)", st.g);
  if (st.a.updates != st.g.updates || st.skipped_statistics < 0) {
    throw InvalidInputError(op + ": A has " + std::to_string(st.a.updates) + " updates and G " +
                            std::to_string(st.g.updates) + " (must be equal), skipped statistics " +
                            std::to_string(st.skipped_statistics) + " (must be >= 0)");
  }
  if (st.a_has_spectrum) a_spectrum_.check_result(op + " (A's spectrum)", st.a_eigenvalues, st.a_eigenvectors);
  if (st.g_has_spectrum) g_spectrum_.check_result(op + " (G's spectrum)", st.g_eigenvalues, st.g_eigenvectors);
  auto snapshot = [&](const char* what, const Matrix& f, const RawFactor& shape) {
    detail::require_shape(op.c_str(), what, f, shape.average.rows(), shape.average.cols());
    detail::require_finite(op.c_str(), what, f);
    if (f.cols() != 1 || f.rows() == 1) detail::require_symmetric(op.c_str(), what, f);
  };
  snapshot("A snapshot", st.a_snapshot, st.a);
  snapshot("G snapshot", st.g_snapshot, st.g);
}

template <typename Scalar>
void KroneckerBlock<Scalar>::set_state(const State& st) {
  check_state("kfopt::KroneckerBlock::set_state (layer '" + name_ + "')", st);
  a_.set_raw_state(st.a);
  g_.set_raw_state(st.g);
  skipped_statistics_ = st.skipped_statistics;
  auto spectrum = [](FactorSpectrum<Scalar>& f, bool has, const Vector& values,
                     const Matrix& vectors) {
    if (has) {
      f.set_result(values, vectors);
    } else {
      f = FactorSpectrum<Scalar>(f.size(), f.structure());
    }
  };
  spectrum(a_spectrum_, st.a_has_spectrum, st.a_eigenvalues, st.a_eigenvectors);
  spectrum(g_spectrum_, st.g_has_spectrum, st.g_eigenvalues, st.g_eigenvectors);
  has_snapshot_ = st.has_snapshot;
  if (has_snapshot_) {
    a_snapshot_ = st.a_snapshot;
    g_snapshot_ = st.g_snapshot;
  } else {
    a_snapshot_.resize(0, 0);
    g_snapshot_.resize(0, 0);
  }
  // The explicit damped inverses belong to the old spectra: rebuilt at the next apply.
  ++spectra_version_;
  inverse_version_ = -1;
  cached_a_shift_ = Scalar(-1);
  cached_g_shift_ = Scalar(-1);
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class KroneckerBlock<float>;
extern template Status KroneckerBlock<float>::apply_inverse<Eigen::MatrixXf>(
    const Eigen::MatrixBase<Eigen::MatrixXf>&, const BlockDamping<float>&, Eigen::MatrixXf&);
extern template void KroneckerBlock<float>::multiply<Eigen::MatrixXf>(const Eigen::MatrixBase<Eigen::MatrixXf>&, Eigen::MatrixXf&);
extern template class KroneckerBlock<double>;
extern template Status KroneckerBlock<double>::apply_inverse<Eigen::MatrixXd>(
    const Eigen::MatrixBase<Eigen::MatrixXd>&, const BlockDamping<double>&, Eigen::MatrixXd&);
extern template void KroneckerBlock<double>::multiply<Eigen::MatrixXd>(const Eigen::MatrixBase<Eigen::MatrixXd>&, Eigen::MatrixXd&);
#endif

}  // namespace kfopt
