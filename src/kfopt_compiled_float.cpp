// float instantiations of kfopt_compiled (see kfac_instantiations.hpp).
#define KFOPT_COMPILED_SCALAR float
#include "kfac_instantiations.hpp"
