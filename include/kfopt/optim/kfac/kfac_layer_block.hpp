#pragma once
/// \file kfac_layer_block.hpp
/// \brief The per-layer Fisher block as Kfac sees it: a small abstract interface over
/// KroneckerBlock (dense layers) and RecurrentKroneckerBlock (weights shared across time).
///
/// Kfac holds one `KfacLayerBlock<Scalar>` per registered layer and calls it through
/// virtual functions, so the code of a block type is instantiated only where a layer of
/// that type is registered (add_dense_layer, add_recurrent_layer): a program with dense
/// layers only never compiles the recurrent block's preparation (eigen-decompositions of the
/// transition factors, complex Schur forms, Stein solves). One virtual call per layer and
/// step; the calls do O(n³) or O(n²·k) work each, so the indirection is not measurable.

#include <Eigen/Core>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/curvature/kronecker_block.hpp"

namespace kfopt {

template <typename Scalar>
class RecurrentKroneckerBlock;

/// What a transport sees of a statistics contribution: every field, once, in a fixed order
/// (the same on every process for layers of the same shapes). `symmetric` matrices are
/// summed by their lower triangles (the upper one mirrors it), `general` ones entry by
/// entry, `count`s as numbers. kfopt::mpi::DistributedKfac packs, all-reduces and unpacks
/// contributions through this interface.
template <typename Scalar>
class ContributionVisitor {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  virtual ~ContributionVisitor() = default;
  /// A symmetric matrix (summed by its lower triangle).
  virtual void symmetric(Matrix& m) = 0;
  /// A matrix summed entry by entry.
  virtual void general(Matrix& m) = 0;
  /// A count (rows, sequences, refused batches).
  virtual void count(double& x) = 0;

 protected:
  /// Made only as a base class.
  ContributionVisitor() = default;
  /// Copied only as a base class.
  ContributionVisitor(const ContributionVisitor&) = default;
  /// Assigned only as a base class.
  ContributionVisitor& operator=(const ContributionVisitor&) = default;
};

/// One layer's statistics as sums over examples (KroneckerBlock::Contribution or
/// RecurrentKroneckerBlock::Contribution behind an interface), made by
/// Kfac::empty_contribution, filled by Kfac::add_statistics_contribution /
/// add_sequence_statistics_contribution, taken by Kfac::record_statistics(id, contribution).
template <typename Scalar>
class KfacStatisticsContribution {
 public:
  virtual ~KfacStatisticsContribution() = default;
  /// Visits every field (see ContributionVisitor).
  virtual void visit(ContributionVisitor<Scalar>& v) = 0;
  /// Back to the empty contribution.
  virtual void clear() = 0;

 protected:
  /// Made only as a base class.
  KfacStatisticsContribution() = default;
  /// Copied only as a base class.
  KfacStatisticsContribution(const KfacStatisticsContribution&) = default;
  /// Assigned only as a base class.
  KfacStatisticsContribution& operator=(const KfacStatisticsContribution&) = default;
};

namespace detail {

/// A typed block contribution behind KfacStatisticsContribution.
template <typename Scalar, typename Contribution>
class KfacBlockContribution final : public KfacStatisticsContribution<Scalar> {
 public:
  explicit KfacBlockContribution(Contribution c) : contribution(std::move(c)) {}
  void visit(ContributionVisitor<Scalar>& v) override { contribution.visit(v); }
  void clear() override { contribution.clear(); }
  Contribution contribution;  ///< the block's own contribution
};

/// The typed contribution inside `c`, or InvalidInputError naming `op` when `c` belongs to
/// another kind of layer.
template <typename Contribution, typename Scalar>
Contribution& contribution_of(const std::string& op, KfacStatisticsContribution<Scalar>& c) {
  auto* typed = dynamic_cast<KfacBlockContribution<Scalar, Contribution>*>(&c);
  if (typed == nullptr) throw InvalidInputError(op + ": the contribution is of another kind of layer");
  return typed->contribution;
}
template <typename Contribution, typename Scalar>
const Contribution& contribution_of(const std::string& op, const KfacStatisticsContribution<Scalar>& c) {
  const auto* typed = dynamic_cast<const KfacBlockContribution<Scalar, Contribution>*>(&c);
  if (typed == nullptr) throw InvalidInputError(op + ": the contribution is of another kind of layer");
  return typed->contribution;
}

/// A copy of one layer block's state, as Kfac's state dict holds it: its fields are listed
/// once (a function template of the concrete state) for both the writer and the reader, so
/// that saving and loading cannot disagree. Made by KfacLayerBlock::save_state.
template <typename Scalar>
class KfacBlockState {
 public:
  virtual ~KfacBlockState() = default;
  /// Writes the fields, inside the layer's scope (entries "<layer>/<field>").
  virtual void fields(StateDictWriter<Scalar>& io) = 0;
  /// Reads the fields from a dict already checked against the layer's own.
  virtual void fields(StateDictReader<Scalar>& io) = 0;

 protected:
  KfacBlockState() = default;
  KfacBlockState(const KfacBlockState&) = default;
  KfacBlockState& operator=(const KfacBlockState&) = default;
};

/// What Kfac needs of a layer's Fisher block (see kfac_layer_block.hpp).
template <typename Scalar>
class KfacLayerBlock {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  virtual ~KfacLayerBlock() = default;
  /// A copy of the block (Kfac is copyable).
  virtual std::unique_ptr<KfacLayerBlock> clone() const = 0;
  /// Makes `copy`, an earlier clone() of this block, equal to it again, reusing its storage
  /// (no allocation when the shapes are unchanged).
  virtual void copy_into(KfacLayerBlock& copy) const = 0;
  /// Shape of the gradient matrix `[∇W ∇b]` the block acts on.
  virtual Eigen::Index rows() const noexcept = 0;
  virtual Eigen::Index cols() const noexcept = 0;
  virtual bool has_statistics() const noexcept = 0;
  virtual bool has_inverse() const noexcept = 0;
  /// Recomputes the spectra from the current statistics.
  virtual Status refresh() = 0;
  /// `out = F̂⁻¹ Z` with the given damping.
  virtual Status apply_inverse(const Matrix& Z, const BlockDamping<Scalar>& damping,
                               Matrix& out) = 0;
  /// Forms now what the next apply_inverse with `damping` would prepare first (damped
  /// inverses, prepared operators); NotComputed before a refresh.
  virtual Status prepare(const BlockDamping<Scalar>& damping) = 0;
  /// Finishes what the statistics defer (a dense factor's lazy decay blend) as refresh()
  /// would, so that copying the block for a refresh elsewhere leaves the statistics as a
  /// refresh here would have. O(n²).
  virtual void finish_statistics() const {}
  /// Takes the refresh of `refreshed`, a clone() of this block refreshed since, keeping this
  /// block's statistics (KroneckerBlock::adopt_refresh). `refreshed` is left unspecified.
  virtual void adopt_refresh(KfacLayerBlock& refreshed) = 0;
  /// `out = F̂ Z` (undamped), for the quadratic model of adaptive damping; a block that
  /// cannot form it reports a status other than Success.
  virtual Status multiply(const Matrix& Z, Matrix& out) = 0;
  /// The empty statistics contribution of this block (`max_length`: the longest sequence
  /// a recurrent block's length counts hold; ignored by a dense block).
  virtual std::unique_ptr<KfacStatisticsContribution<Scalar>> empty_contribution(
      Eigen::Index max_length) const = 0;
  /// What update_statistics(c) would return, without changing anything.
  virtual Status admit(const KfacStatisticsContribution<Scalar>& c) const = 0;
  /// Takes a (possibly summed) contribution as one batch (the block's update_statistics).
  virtual Status update_statistics(const KfacStatisticsContribution<Scalar>& c) = 0;
  /// The refresh split into parts that other processes may compute (0: the block refreshes
  /// itself in refresh()); see KroneckerBlock::refresh_part_count.
  virtual int refresh_part_count() const noexcept { return 0; }
  /// Flops of part k.
  virtual double refresh_part_cost(int) const { return 0.0; }
  /// Called on every process before a split refresh's parts
  /// (KroneckerBlock::begin_refresh_parts).
  virtual void begin_refresh_parts() {}
  /// Computes part k of the current statistics into `result` for the damping the step will
  /// use, changing nothing.
  virtual Status compute_refresh_part(int, const BlockDamping<Scalar>&, Matrix&) const {
    return Status::NotComputed;
  }
  /// Installs every part's result as the refresh (throws for invalid results).
  virtual void install_refresh(const std::vector<Matrix>&, const BlockDamping<Scalar>&) {}
  /// The damping-dependent preparation the next apply_inverse with `damping` would run, as
  /// parts (0: nothing to prepare, or not split); see
  /// RecurrentKroneckerBlock::preparation_part_count.
  virtual int preparation_part_count(const BlockDamping<Scalar>&) const { return 0; }
  /// Flops of preparation part k.
  virtual double preparation_part_cost(int) const { return 0.0; }
  /// Computes preparation part k for `damping` into `result`, changing nothing.
  virtual Status compute_preparation_part(int, const BlockDamping<Scalar>&, Matrix&) const {
    return Status::NotComputed;
  }
  /// Installs every preparation part's result as the prepared inverse for `damping`.
  virtual Status install_preparation(const std::vector<Matrix>&, const BlockDamping<Scalar>&) {
    return Status::NotComputed;
  }
  /// The block as a dense or a recurrent block (nullptr if it is the other kind).
  virtual KroneckerBlock<Scalar>* dense() noexcept { return nullptr; }
  virtual RecurrentKroneckerBlock<Scalar>* recurrent() noexcept { return nullptr; }
  /// A copy of the block's complete state (without changing the block, not even the
  /// factors' pending lazy blends).
  virtual std::unique_ptr<KfacBlockState<Scalar>> save_state() const = 0;
  /// First half of a restore: throws (ShapeError, InvalidInputError, NumericalError naming
  /// `op`) unless `state` (made by this kind of block's save_state, then read) fits the
  /// block, and prepares what the restore computes, with no visible change.
  virtual void stage_state(const std::string& op, const KfacBlockState<Scalar>& state) = 0;
  /// Second half: installs a state that stage_state accepted; the caches derived from it
  /// (explicit damped inverses, prepared operators) are rebuilt at the next use.
  virtual void commit_state(const KfacBlockState<Scalar>& state) = 0;

 protected:
  KfacLayerBlock() = default;
  KfacLayerBlock(const KfacLayerBlock&) = default;
  KfacLayerBlock& operator=(const KfacLayerBlock&) = default;
};

/// A dense layer's block behind the interface.
template <typename Scalar>
class KfacDenseLayerBlock final : public KfacLayerBlock<Scalar> {
 public:
  using Matrix = typename KfacLayerBlock<Scalar>::Matrix;

  explicit KfacDenseLayerBlock(KroneckerBlock<Scalar> block) : block_(std::move(block)) {}

  std::unique_ptr<KfacLayerBlock<Scalar>> clone() const override;
  Eigen::Index rows() const noexcept override { return block_.rows(); }
  Eigen::Index cols() const noexcept override { return block_.cols(); }
  bool has_statistics() const noexcept override { return block_.has_statistics(); }
  bool has_inverse() const noexcept override { return block_.has_inverse(); }
  Status refresh() override;
  Status apply_inverse(const Matrix& Z, const BlockDamping<Scalar>& damping,
                       Matrix& out) override;
  Status multiply(const Matrix& Z, Matrix& out) override;
  Status prepare(const BlockDamping<Scalar>& damping) override { return block_.prepare(damping); }
  void finish_statistics() const override { block_.finish_statistics(); }
  void adopt_refresh(KfacLayerBlock<Scalar>& refreshed) override {
    block_.adopt_refresh(std::move(dynamic_cast<KfacDenseLayerBlock&>(refreshed).block_));
  }
  void copy_into(KfacLayerBlock<Scalar>& copy) const override {
    dynamic_cast<KfacDenseLayerBlock&>(copy).block_ = block_;
  }
  std::unique_ptr<KfacStatisticsContribution<Scalar>> empty_contribution(
      Eigen::Index) const override {
    return std::make_unique<KfacBlockContribution<Scalar, Contribution>>(block_.empty_contribution());
  }
  Status admit(const KfacStatisticsContribution<Scalar>& c) const override {
    return block_.admit(contribution_of<Contribution>(op("admit"), c));
  }
  Status update_statistics(const KfacStatisticsContribution<Scalar>& c) override {
    return block_.update_statistics(contribution_of<Contribution>(op("update_statistics"), c));
  }
  int refresh_part_count() const noexcept override { return block_.refresh_part_count(); }
  double refresh_part_cost(int k) const override { return block_.refresh_part_cost(k); }
  void begin_refresh_parts() override { (void)block_.begin_refresh_parts(); }
  Status compute_refresh_part(int k, const BlockDamping<Scalar>& damping,
                              Matrix& result) const override {
    return block_.compute_refresh_part(k, damping, result);
  }
  void install_refresh(const std::vector<Matrix>& results,
                       const BlockDamping<Scalar>& damping) override {
    if (results.size() != 2) {
      throw InvalidInputError(op("install_refresh") + ": needs 2 results, got " +
                              std::to_string(results.size()));
    }
    block_.install_refresh(results[0], results[1], damping);
  }
  KroneckerBlock<Scalar>* dense() noexcept override { return &block_; }
  std::unique_ptr<KfacBlockState<Scalar>> save_state() const override;
  void stage_state(const std::string& op, const KfacBlockState<Scalar>& state) override;
  void commit_state(const KfacBlockState<Scalar>& state) override;

 private:
  using Contribution = typename KroneckerBlock<Scalar>::Contribution;
  std::string op(const char* what) const {
    return std::string("kfopt::Kfac::") + what + " (layer '" + block_.name() + "')";
  }
  KroneckerBlock<Scalar> block_;
};

/// A dense layer's state in Kfac's state dict, per layer: the factors "A" and "G" as they
/// are held (FactorMovingAverage::RawState: the factor is `A_scale · A`, `A_scale ∈
/// [1/4096, 1]` being the decay not yet folded in; diagonal factors are columns),
/// "A_weight", "A_updates", "A_skipped_nonfinite" (and G's), "skipped_statistics", and what
/// the last refresh left: "A_has_spectrum", "A_eigenvalues", "A_eigenvectors" (dense
/// factors) and G's with InverseMethod::Eigendecomposition, or "has_snapshot",
/// "A_snapshot", "G_snapshot" with Cholesky. Structural hyperparameters "<layer>.kind"
/// ("dense"), "<layer>.bias", "<layer>.input_factor", "<layer>.gradient_factor".
template <typename Scalar>
class KfacDenseBlockState final : public KfacBlockState<Scalar> {
 public:
  /// The block's state and its structure.
  KfacDenseBlockState(typename KroneckerBlock<Scalar>::State s, KroneckerBlockOptions o)
      : state(std::move(s)), options(o) {}
  void fields(StateDictWriter<Scalar>& io) override { fields_of(io); }
  void fields(StateDictReader<Scalar>& io) override { fields_of(io); }

  typename KroneckerBlock<Scalar>::State state;  ///< the block's state
  KroneckerBlockOptions options;                 ///< the block's structure

 private:
  template <typename Io>
  void fields_of(Io& io) {
    using Raw = typename KroneckerBlock<Scalar>::RawFactor;
    const bool a_diagonal = options.input_factor == FactorStructure::Diagonal;
    const bool g_diagonal = options.gradient_factor == FactorStructure::Diagonal;
    std::string kind = "dense";
    io.hyperparameter("kind", kind);
    io.hyperparameter("bias", options.bias);
    io.hyperparameter("input_factor", options.input_factor);
    io.hyperparameter("gradient_factor", options.gradient_factor);
    auto factor = [&io](const std::string& name, Raw& f, bool diagonal) {
      io.array(name, f.average, diagonal ? EntryConstraint::Nonnegative : EntryConstraint::SymmetricPsd);
      io.real(name + "_scale", f.scale, EntryConstraint::Nonnegative);
      io.real(name + "_weight", f.weight.weight, EntryConstraint::Nonnegative);
      io.integer(name + "_updates", f.updates);
      io.integer(name + "_skipped_nonfinite", f.skipped_nonfinite);
    };
    factor("A", state.a, a_diagonal);
    factor("G", state.g, g_diagonal);
    io.integer("skipped_statistics", state.skipped_statistics);
    if (options.inverse_method == InverseMethod::Eigendecomposition) {
      io.boolean("A_has_spectrum", state.a_has_spectrum);
      io.array("A_eigenvalues", state.a_eigenvalues, EntryConstraint::Nonnegative);
      if (!a_diagonal) io.array("A_eigenvectors", state.a_eigenvectors);
      io.boolean("G_has_spectrum", state.g_has_spectrum);
      io.array("G_eigenvalues", state.g_eigenvalues, EntryConstraint::Nonnegative);
      if (!g_diagonal) io.array("G_eigenvectors", state.g_eigenvectors);
    } else {
      io.boolean("has_snapshot", state.has_snapshot);
      io.array("A_snapshot", state.a_snapshot,
               a_diagonal ? EntryConstraint::Nonnegative : EntryConstraint::SymmetricPsd);
      io.array("G_snapshot", state.g_snapshot,
               g_diagonal ? EntryConstraint::Nonnegative : EntryConstraint::SymmetricPsd);
    }
  }
};

template <typename Scalar>
std::unique_ptr<KfacLayerBlock<Scalar>> KfacDenseLayerBlock<Scalar>::clone() const {
  return std::make_unique<KfacDenseLayerBlock>(*this);
}

template <typename Scalar>
Status KfacDenseLayerBlock<Scalar>::refresh() {
  return block_.refresh();
}

template <typename Scalar>
Status KfacDenseLayerBlock<Scalar>::apply_inverse(const Matrix& Z,
                                                  const BlockDamping<Scalar>& damping,
                                                  Matrix& out) {
  return block_.apply_inverse(Z, damping, out);
}

template <typename Scalar>
Status KfacDenseLayerBlock<Scalar>::multiply(const Matrix& Z, Matrix& out) {
  block_.multiply(Z, out);
  return Status::Success;
}

template <typename Scalar>
std::unique_ptr<KfacBlockState<Scalar>> KfacDenseLayerBlock<Scalar>::save_state() const {
  return std::make_unique<KfacDenseBlockState<Scalar>>(block_.state(), block_.options());
}

template <typename Scalar>
void KfacDenseLayerBlock<Scalar>::stage_state(const std::string& op,
                                              const KfacBlockState<Scalar>& state) {
  const auto* s = dynamic_cast<const KfacDenseBlockState<Scalar>*>(&state);
  if (s == nullptr) throw InvalidInputError(op + ": the state is not a dense layer's");
  block_.check_state(op, s->state);
}

template <typename Scalar>
void KfacDenseLayerBlock<Scalar>::commit_state(const KfacBlockState<Scalar>& state) {
  block_.set_state(static_cast<const KfacDenseBlockState<Scalar>&>(state).state);
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class KfacDenseLayerBlock<float>;
extern template class KfacDenseLayerBlock<double>;
extern template class KfacDenseBlockState<float>;
extern template class KfacDenseBlockState<double>;
#endif

}  // namespace detail
}  // namespace kfopt
