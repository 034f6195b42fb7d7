# Optional checkpoint module (include/kfopt/io/checkpoint.hpp): the target kfopt::checkpoint,
# defined only when HDF5's C library is found (Debian: libhdf5-dev). Without HDF5 the rest of
# kfopt configures and builds; only checkpoint files are unavailable. Installed as its own
# export set, loaded by the package config only for find_package(kfopt COMPONENTS checkpoint).
option(KFOPT_WITH_CHECKPOINT "Build the HDF5 checkpoint target kfopt::checkpoint when HDF5 is found" ON)
if(KFOPT_WITH_CHECKPOINT)
  include(${CMAKE_CURRENT_LIST_DIR}/kfoptFindHdf5.cmake)
endif()
if(KFOPT_WITH_CHECKPOINT AND TARGET kfopt::hdf5)
  add_library(kfopt_checkpoint INTERFACE)
  add_library(kfopt::checkpoint ALIAS kfopt_checkpoint)
  set_target_properties(kfopt_checkpoint PROPERTIES EXPORT_NAME checkpoint)
  target_link_libraries(kfopt_checkpoint INTERFACE kfopt kfopt::hdf5)
  message(STATUS "kfopt: checkpoint target on (HDF5 ${KFOPT_HDF5_VERSION})")
else()
  message(STATUS "kfopt: no kfopt::checkpoint (HDF5 not found or KFOPT_WITH_CHECKPOINT=OFF)")
endif()
