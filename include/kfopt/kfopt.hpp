#pragma once
/// \file kfopt.hpp
/// \brief Umbrella header: every public header of kfopt.

#include "kfopt/version.hpp"

#include "kfopt/core/error.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/validate.hpp"

#include "kfopt/kron/vec.hpp"
