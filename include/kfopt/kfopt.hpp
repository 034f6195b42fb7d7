#pragma once
/// \file kfopt.hpp
/// \brief Umbrella header: every public header of kfopt, layer by layer (arrows point down:
/// optim → curvature, filter → kron → core).

#include "kfopt/version.hpp"

#include "kfopt/core/error.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"

#include "kfopt/kron/damped_cholesky_inverse.hpp"
#include "kfopt/kron/factor_moments.hpp"
#include "kfopt/kron/factor_spectrum.hpp"
#include "kfopt/kron/factored_damping.hpp"
#include "kfopt/kron/kronecker_inverse.hpp"
#include "kfopt/kron/kronecker_projection.hpp"
#include "kfopt/kron/kronecker_stein_inverse.hpp"
#include "kfopt/kron/kronecker_sum_inverse.hpp"
#include "kfopt/kron/scaled_congruence.hpp"
#include "kfopt/kron/sequence_lengths.hpp"
#include "kfopt/kron/symmetric_eigen_cache.hpp"
#include "kfopt/kron/temporal_gamma.hpp"
#include "kfopt/kron/vec.hpp"

#include "kfopt/filter/bernoulli_observation.hpp"
#include "kfopt/filter/categorical_observation.hpp"
#include "kfopt/filter/gaussian_belief.hpp"
#include "kfopt/filter/gaussian_observation.hpp"
#include "kfopt/filter/kalman_predict.hpp"
#include "kfopt/filter/kalman_update.hpp"
#include "kfopt/filter/observation_model.hpp"
#include "kfopt/filter/observation_models.hpp"
#include "kfopt/filter/poisson_observation.hpp"
#include "kfopt/filter/tiled_product.hpp"

#include "kfopt/curvature/kronecker_block.hpp"
#include "kfopt/curvature/recurrent_kronecker_block.hpp"

#include "kfopt/optim/adam.hpp"
#include "kfopt/optim/ekf_natural_gradient_correspondence.hpp"
#include "kfopt/optim/extended_kalman_filter.hpp"
#include "kfopt/optim/joint_extended_kalman_filter.hpp"
#include "kfopt/optim/kfac.hpp"
#include "kfopt/optim/natural_gradient_rtrl.hpp"
#include "kfopt/optim/online_natural_gradient.hpp"
#include "kfopt/optim/rmsprop.hpp"
#include "kfopt/optim/rtrl.hpp"
#include "kfopt/optim/sgd.hpp"
#include "kfopt/optim/tanh_rnn_cell.hpp"
