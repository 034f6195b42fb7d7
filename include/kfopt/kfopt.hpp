#pragma once
/// \file kfopt.hpp
/// \brief Umbrella header: every public header of kfopt.

#include "kfopt/version.hpp"

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"

#include "kfopt/kron/damped_cholesky_inverse.hpp"
#include "kfopt/kron/factor_moments.hpp"
#include "kfopt/kron/factor_spectrum.hpp"
#include "kfopt/kron/factored_damping.hpp"
#include "kfopt/kron/kronecker_inverse.hpp"
#include "kfopt/kron/kronecker_projection.hpp"
#include "kfopt/kron/kronecker_sum_inverse.hpp"
#include "kfopt/kron/scaled_congruence.hpp"
#include "kfopt/kron/symmetric_eigen_cache.hpp"
#include "kfopt/kron/vec.hpp"

#include "kfopt/curvature/kronecker_block.hpp"

#include "kfopt/optim/adam.hpp"
#include "kfopt/optim/kfac.hpp"
#include "kfopt/optim/rmsprop.hpp"
#include "kfopt/optim/sgd.hpp"
