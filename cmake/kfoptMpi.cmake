# Optional MPI layer: the INTERFACE target kfopt::mpi (headers include/kfopt/mpi/, linked to
# kfopt::kfopt and MPI::MPI_CXX). Nothing else in kfopt needs MPI.
#
#   KFOPT_WITH_MPI=AUTO (default)  build kfopt::mpi when MPI is found, else skip it quietly
#   KFOPT_WITH_MPI=ON              MPI is required
#   KFOPT_WITH_MPI=OFF             never look for MPI
#
# Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin
set(KFOPT_WITH_MPI AUTO CACHE STRING "Build the optional MPI layer kfopt::mpi (AUTO, ON, OFF)")
set_property(CACHE KFOPT_WITH_MPI PROPERTY STRINGS AUTO ON OFF)

if(NOT KFOPT_WITH_MPI STREQUAL "OFF")
  # Only MPI's C API is used: skip the deprecated C++ bindings.
  set(MPI_CXX_SKIP_MPICXX ON)
  if(KFOPT_WITH_MPI STREQUAL "AUTO")
    find_package(MPI QUIET COMPONENTS CXX)
  else()
    find_package(MPI REQUIRED COMPONENTS CXX)
  endif()
  if(MPI_CXX_FOUND)
    add_library(kfopt_mpi INTERFACE)
    add_library(kfopt::mpi ALIAS kfopt_mpi)
    set_target_properties(kfopt_mpi PROPERTIES EXPORT_NAME mpi)
    target_link_libraries(kfopt_mpi INTERFACE kfopt MPI::MPI_CXX)
    message(STATUS "kfopt: MPI layer kfopt::mpi on (${MPI_CXX_LIBRARY_VERSION_STRING})")
  else()
    message(STATUS "kfopt: MPI not found, the optional target kfopt::mpi is not built "
      "(Debian: apt-get install libopenmpi-dev openmpi-bin)")
  endif()
endif()
