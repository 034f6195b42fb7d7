// Explicit instantiations compiled into kfopt_compiled (cmake/kfoptCompiled.cmake), one
// translation unit per scalar type: KFOPT_COMPILED_SCALAR is float or double. Users of the
// kfopt::kfopt_compiled target see the matching `extern template` declarations in the
// headers (under KFOPT_COMPILED) and do not instantiate these classes themselves.
#include "kfopt/optim/kfac/kfac.hpp"

namespace kfopt {

using CompiledMatrix = Eigen::Matrix<KFOPT_COMPILED_SCALAR, Eigen::Dynamic, Eigen::Dynamic>;

template class Kfac<KFOPT_COMPILED_SCALAR>;
template class detail::KfacDenseLayerBlock<KFOPT_COMPILED_SCALAR>;
template class detail::KfacRecurrentLayerBlock<KFOPT_COMPILED_SCALAR>;
template class detail::KfacDenseBlockState<KFOPT_COMPILED_SCALAR>;
template class detail::KfacRecurrentBlockState<KFOPT_COMPILED_SCALAR>;

template class KroneckerBlock<KFOPT_COMPILED_SCALAR>;
template Status KroneckerBlock<KFOPT_COMPILED_SCALAR>::apply_inverse<CompiledMatrix>(
    const Eigen::MatrixBase<CompiledMatrix>&, const BlockDamping<KFOPT_COMPILED_SCALAR>&,
    CompiledMatrix&);
template void KroneckerBlock<KFOPT_COMPILED_SCALAR>::multiply<CompiledMatrix>(
    const Eigen::MatrixBase<CompiledMatrix>&, CompiledMatrix&);

template class RecurrentKroneckerBlock<KFOPT_COMPILED_SCALAR>;
template Status RecurrentKroneckerBlock<KFOPT_COMPILED_SCALAR>::apply_inverse<CompiledMatrix>(
    const Eigen::MatrixBase<CompiledMatrix>&, const BlockDamping<KFOPT_COMPILED_SCALAR>&,
    CompiledMatrix&);
template Status RecurrentKroneckerBlock<KFOPT_COMPILED_SCALAR>::multiply<CompiledMatrix>(
    const Eigen::MatrixBase<CompiledMatrix>&, CompiledMatrix&);

template class SymmetricEigensolver<KFOPT_COMPILED_SCALAR>;
template class SymmetricEigenCache<KFOPT_COMPILED_SCALAR>;
template class FactorSpectrum<KFOPT_COMPILED_SCALAR>;
template class DampedCholeskyInverse<KFOPT_COMPILED_SCALAR>;
template class FactorMovingAverage<KFOPT_COMPILED_SCALAR>;
template class TemporalFactorMovingAverage<KFOPT_COMPILED_SCALAR>;

}  // namespace kfopt
