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

#include "kfopt/core/error.hpp"
#include "kfopt/curvature/kronecker_block.hpp"

namespace kfopt {

template <typename Scalar>
class RecurrentKroneckerBlock;

namespace detail {

/// What Kfac needs of a layer's Fisher block (see kfac_layer_block.hpp).
template <typename Scalar>
class KfacLayerBlock {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  virtual ~KfacLayerBlock() = default;
  /// A copy of the block (Kfac is copyable).
  virtual std::unique_ptr<KfacLayerBlock> clone() const = 0;
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
  /// `out = F̂ Z` (undamped), for the quadratic model of adaptive damping; a block that
  /// cannot form it reports a status other than Success.
  virtual Status multiply(const Matrix& Z, Matrix& out) = 0;
  /// The block as a dense or a recurrent block (nullptr if it is the other kind).
  virtual KroneckerBlock<Scalar>* dense() noexcept { return nullptr; }
  virtual RecurrentKroneckerBlock<Scalar>* recurrent() noexcept { return nullptr; }

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
  KroneckerBlock<Scalar>* dense() noexcept override { return &block_; }

 private:
  KroneckerBlock<Scalar> block_;
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

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class KfacDenseLayerBlock<float>;
extern template class KfacDenseLayerBlock<double>;
#endif

}  // namespace detail
}  // namespace kfopt
