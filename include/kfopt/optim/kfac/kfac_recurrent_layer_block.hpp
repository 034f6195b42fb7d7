#pragma once
/// \file kfac_recurrent_layer_block.hpp
/// \brief A RecurrentKroneckerBlock behind Kfac's per-layer interface
/// (kfac_layer_block.hpp). Instantiated only by Kfac::add_recurrent_layer.

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
  RecurrentKroneckerBlock<Scalar>* recurrent() noexcept override { return &block_; }

 private:
  RecurrentKroneckerBlock<Scalar> block_;
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

#ifdef KFOPT_COMPILED
// Compiled once in kfopt_compiled (src/kfac_instantiations.hpp).
extern template class KfacRecurrentLayerBlock<float>;
extern template class KfacRecurrentLayerBlock<double>;
#endif

}  // namespace detail
}  // namespace kfopt
