#pragma once
/// \file observation_models.hpp
/// \brief All exponential-family observation models of kfopt (see observation_model.hpp
/// for the interface they share).

#include "kfopt/filter/bernoulli_observation.hpp"
#include "kfopt/filter/categorical_observation.hpp"
#include "kfopt/filter/gaussian_observation.hpp"
#include "kfopt/filter/observation_model.hpp"
#include "kfopt/filter/poisson_observation.hpp"
