# Install rules and the package configuration that lets users write
#   find_package(kfopt CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE kfopt::kfopt)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS kfopt EXPORT kfoptTargets)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/kfopt
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp")

set(KFOPT_CMAKE_INSTALL_DIR ${CMAKE_INSTALL_DATADIR}/cmake/kfopt)

install(EXPORT kfoptTargets
  NAMESPACE kfopt::
  DESTINATION ${KFOPT_CMAKE_INSTALL_DIR})

# The optional MPI layer (cmake/kfoptMpi.cmake) has its own export file, which the package
# config loads only when the `mpi` component is requested.
if(TARGET kfopt_mpi)
  install(TARGETS kfopt_mpi EXPORT kfoptMpiTargets)
  install(EXPORT kfoptMpiTargets
    NAMESPACE kfopt::
    DESTINATION ${KFOPT_CMAKE_INSTALL_DIR})
endif()
# The optional checkpoint target (cmake/kfoptCheckpoint.cmake) in its own export set, so
# that only find_package(kfopt COMPONENTS checkpoint) looks for HDF5.
if(TARGET kfopt_checkpoint)
  install(TARGETS kfopt_checkpoint EXPORT kfoptCheckpointTargets)
  install(EXPORT kfoptCheckpointTargets
    NAMESPACE kfopt::
    DESTINATION ${KFOPT_CMAKE_INSTALL_DIR})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/kfoptFindHdf5.cmake
    DESTINATION ${KFOPT_CMAKE_INSTALL_DIR})
endif()

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/kfoptConfig.cmake.in
  ${PROJECT_BINARY_DIR}/kfoptConfig.cmake
  INSTALL_DESTINATION ${KFOPT_CMAKE_INSTALL_DIR})

write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/kfoptConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMajorVersion
  ARCH_INDEPENDENT)

install(FILES
  ${PROJECT_BINARY_DIR}/kfoptConfig.cmake
  ${PROJECT_BINARY_DIR}/kfoptConfigVersion.cmake
  DESTINATION ${KFOPT_CMAKE_INSTALL_DIR})
