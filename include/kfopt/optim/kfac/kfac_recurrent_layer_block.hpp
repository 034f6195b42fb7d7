#pragma once
/// \file kfac_recurrent_layer_block.hpp
/// \brief A RecurrentKroneckerBlock behind Kfac's per-layer interface
/// (kfac_layer_block.hpp). Instantiated only by Kfac::add_recurrent_layer.

#include <string>
#include <vector>

#include "kfopt/curvature/recurrent_kronecker_block.hpp"
#include "kfopt/optim/kfac/kfac_layer_block.hpp"

namespace kfopt {
namespace detail {

/// A recurrent layer's block behind the interface.
template <typename Scalar>
class KfacRecurrentLayerBlock final : public KfacLayerBlock<Scalar> {
 public:
  using Matrix = typename KfacLayerBlock<Scalar>::Matrix;

  explicit KfacRecurrentLayerBlock(RecurrentKroneckerBlock<Scalar> block)
      : block_(std::move(block)) {}

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
  void adopt_refresh(KfacLayerBlock<Scalar>& refreshed) override {
    block_.adopt_refresh(std::move(dynamic_cast<KfacRecurrentLayerBlock&>(refreshed).block_));
  }
  void copy_into(KfacLayerBlock<Scalar>& copy) const override {
    dynamic_cast<KfacRecurrentLayerBlock&>(copy).block_ = block_;
  }
  std::unique_ptr<KfacStatisticsContribution<Scalar>> empty_contribution(
      Eigen::Index max_length) const override {
    return std::make_unique<KfacBlockContribution<Scalar, Contribution>>(
        block_.empty_contribution(max_length));
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
  Status compute_refresh_part(int k, const BlockDamping<Scalar>&, Matrix& result) const override {
    return block_.compute_refresh_part(k, result);
  }
  void install_refresh(const std::vector<Matrix>& results, const BlockDamping<Scalar>&) override {
    require_two(op("install_refresh"), results);
    block_.install_refresh(results[0], results[1]);
  }
  int preparation_part_count(const BlockDamping<Scalar>& damping) const override {
    return block_.preparation_part_count(damping);
  }
  double preparation_part_cost(int k) const override { return block_.preparation_part_cost(k); }
  Status compute_preparation_part(int k, const BlockDamping<Scalar>& damping,
                                  Matrix& result) const override {
    return block_.compute_preparation_part(k, damping, result);
  }
  Status install_preparation(const std::vector<Matrix>& results,
                             const BlockDamping<Scalar>& damping) override {
    require_two(op("install_preparation"), results);
    return block_.install_preparation(results[0], results[1], damping);
  }
  RecurrentKroneckerBlock<Scalar>* recurrent() noexcept override { return &block_; }
  std::unique_ptr<KfacBlockState<Scalar>> save_state() const override;
  void stage_state(const std::string& op, const KfacBlockState<Scalar>& state) override;
  void commit_state(const KfacBlockState<Scalar>& state) override;

 private:
  using Contribution = typename RecurrentKroneckerBlock<Scalar>::Contribution;
  std::string op(const char* what) const {
    return std::string("kfopt::Kfac::") + what + " (layer '" + block_.name() + "')";
  }
  static void require_two(const std::string& operation, const std::vector<Matrix>& results) {
    if (results.size() != 2) {
      throw InvalidInputError(operation + ": needs 2 results (the A and G parts), got " +
                              std::to_string(results.size()));
    }
  }
  RecurrentKroneckerBlock<Scalar> block_;
};

/// A recurrent layer's state in Kfac's state dict, per layer: the statistics "A0", "A1",
/// "A_weight", "A_updates", "A_skipped_nonfinite", "A_last_mean_length" (and G's),
/// "length_histogram" (ω(T) for T = 0 … T_max seen, any length), "length_weight",
/// "length_updates", "skipped_statistics"; and the last refresh's snapshot "refreshes",
/// "refresh/A0", "refresh/A1", "refresh/G0", "refresh/G1", "refresh/lengths",
/// "refresh/length_weights" (the distribution (T_i, ω_i)) and "refresh/mean_length", from
/// which a load recomputes the spectra and preparations bit for bit. Structural
/// hyperparameters "<layer>.kind" ("recurrent"), "<layer>.bias", "<layer>.approximation".
template <typename Scalar>
class KfacRecurrentBlockState final : public KfacBlockState<Scalar> {
 public:
  /// The block's statistics, its refresh snapshot and its structure.
  KfacRecurrentBlockState(typename RecurrentKroneckerBlock<Scalar>::State s,
                          typename RecurrentKroneckerBlock<Scalar>::RefreshState r, bool b,
                          RecurrentApproximation a)
      : statistics(std::move(s)), refresh(std::move(r)), bias(b), approximation(a) {}
  void fields(StateDictWriter<Scalar>& io) override { fields_of(io); }
  void fields(StateDictReader<Scalar>& io) override { fields_of(io); }

  typename RecurrentKroneckerBlock<Scalar>::State statistics;     ///< A0, A1, G0, G1, lengths
  typename RecurrentKroneckerBlock<Scalar>::RefreshState refresh; ///< the last refresh's snapshot
  bool bias;                             ///< whether the layer has a bias
  RecurrentApproximation approximation;  ///< the temporal approximation

 private:
  // A std::vector<double> through a vector entry (written, or read back), any length.
  template <typename Io>
  static void doubles(Io& io, const std::string& name, std::vector<double>& v) {
    Eigen::VectorXd e = Eigen::Map<const Eigen::VectorXd>(v.data(), static_cast<Eigen::Index>(v.size()));
    io.array(name, e, EntryConstraint::Nonnegative, true);
    v.assign(e.data(), e.data() + e.size());
  }

  template <typename Io>
  void fields_of(Io& io) {
    using Average = typename TemporalFactorMovingAverage<Scalar>::State;
    std::string kind = "recurrent";
    io.hyperparameter("kind", kind);
    io.hyperparameter("bias", bias);
    io.hyperparameter("approximation", approximation);
    auto factor = [&io](const std::string& name, Average& f) {
      io.array(name + "0", f.average0, EntryConstraint::SymmetricPsd);
      io.array(name + "1", f.average1);
      io.real(name + "_weight", f.weight.weight, EntryConstraint::Nonnegative);
      io.integer(name + "_updates", f.updates);
      io.integer(name + "_skipped_nonfinite", f.skipped_nonfinite);
      io.real(name + "_last_mean_length", f.last_mean_length, EntryConstraint::Nonnegative);
    };
    factor("A", statistics.a);
    factor("G", statistics.g);
    doubles(io, "length_histogram", statistics.lengths.histogram);
    io.real("length_weight", statistics.lengths.weight.weight, EntryConstraint::Nonnegative);
    io.integer("length_updates", statistics.lengths.updates);
    io.integer("skipped_statistics", statistics.skipped_statistics);
    io.integer("refreshes", refresh.refreshes);
    io.array("refresh/A0", refresh.a0, EntryConstraint::SymmetricPsd);
    io.array("refresh/A1", refresh.a1);
    io.array("refresh/G0", refresh.g0, EntryConstraint::SymmetricPsd);
    io.array("refresh/G1", refresh.g1);
    doubles(io, "refresh/lengths", refresh.lengths.lengths);
    doubles(io, "refresh/length_weights", refresh.lengths.weights);
    io.real("refresh/mean_length", refresh.mean_length, EntryConstraint::Nonnegative);
  }
};

template <typename Scalar>
std::unique_ptr<KfacLayerBlock<Scalar>> KfacRecurrentLayerBlock<Scalar>::clone() const {
  return std::make_unique<KfacRecurrentLayerBlock>(*this);
}

template <typename Scalar>
Status KfacRecurrentLayerBlock<Scalar>::refresh() {
  return block_.refresh();
}

template <typename Scalar>
Status KfacRecurrentLayerBlock<Scalar>::apply_inverse(const Matrix& Z,
                                                      const BlockDamping<Scalar>& damping,
                                                      Matrix& out) {
  return block_.apply_inverse(Z, damping, out);
}

template <typename Scalar>
Status KfacRecurrentLayerBlock<Scalar>::multiply(const Matrix& Z, Matrix& out) {
  return block_.multiply(Z, out);
}

template <typename Scalar>
std::unique_ptr<KfacBlockState<Scalar>> KfacRecurrentLayerBlock<Scalar>::save_state() const {
  return std::make_unique<KfacRecurrentBlockState<Scalar>>(
      block_.state(), block_.refresh_state(), block_.has_bias(), block_.approximation());
}

template <typename Scalar>
void KfacRecurrentLayerBlock<Scalar>::stage_state(const std::string& op,
                                                  const KfacBlockState<Scalar>& state) {
  const auto* s = dynamic_cast<const KfacRecurrentBlockState<Scalar>*>(&state);
  if (s == nullptr) throw InvalidInputError(op + ": the state is not a recurrent layer's");
  block_.check_state(op, s->statistics);
  const Status st = block_.stage_refresh_state(op, s->refresh);
  if (st != Status::Success) {
    throw NumericalError(op + ": the refresh snapshot's A0 or G0 could not be decomposed (" +
                         to_string(st) + ")");
  }
}

template <typename Scalar>
void KfacRecurrentLayerBlock<Scalar>::commit_state(const KfacBlockState<Scalar>& state) {
  const auto& s = static_cast<const KfacRecurrentBlockState<Scalar>&>(state);
  block_.set_state(s.statistics);
  block_.commit_refresh_state(s.refresh);
}

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class KfacRecurrentLayerBlock<float>;
extern template class KfacRecurrentLayerBlock<double>;
extern template class KfacRecurrentBlockState<float>;
extern template class KfacRecurrentBlockState<double>;
#endif

}  // namespace detail
}  // namespace kfopt
