#pragma once
/// \file mpi.hpp
/// \brief Umbrella header of the optional MPI layer (CMake target kfopt::mpi; not included by
/// kfopt/kfopt.hpp, so users who do not include it need no MPI): the Communicator, the
/// data-parallel gradient average, data-parallel K-FAC (which brings in kfopt/optim/kfac), the
/// communication cost model and the greedy assignment of refresh work to ranks. Checkpoints
/// of distributed runs (kfopt/mpi/distributed_checkpoint.hpp) also need HDF5 (kfopt::checkpoint)
/// and are included separately.

#include "kfopt/mpi/communicator.hpp"
#include "kfopt/mpi/cost_model.hpp"
#include "kfopt/mpi/data_parallel_gradients.hpp"
#include "kfopt/mpi/distributed_kfac.hpp"
#include "kfopt/mpi/mpi_error.hpp"
#include "kfopt/mpi/work_assignment.hpp"
