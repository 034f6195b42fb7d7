# Finds HDF5's C library and defines the imported target kfopt::hdf5 (nothing if not found).
# Used by kfopt's own build (cmake/kfoptCheckpoint.cmake) and by the installed package config
# when the `checkpoint` component is requested. pkg-config's `hdf5` module first (Debian's
# libhdf5-dev ships it; it needs no enabled C language), then CMake's FindHDF5 when the
# project has C enabled.
if(NOT TARGET kfopt::hdf5)
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(KFOPT_HDF5 QUIET IMPORTED_TARGET hdf5)
  endif()
  if(TARGET PkgConfig::KFOPT_HDF5)
    add_library(kfopt::hdf5 INTERFACE IMPORTED)
    target_link_libraries(kfopt::hdf5 INTERFACE PkgConfig::KFOPT_HDF5)
    set(KFOPT_HDF5_VERSION ${KFOPT_HDF5_VERSION})
  else()
    get_property(_kfopt_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
    if("C" IN_LIST _kfopt_languages)
      find_package(HDF5 COMPONENTS C QUIET)
      if(HDF5_FOUND AND TARGET HDF5::HDF5)
        add_library(kfopt::hdf5 INTERFACE IMPORTED)
        target_link_libraries(kfopt::hdf5 INTERFACE HDF5::HDF5)
        set(KFOPT_HDF5_VERSION ${HDF5_VERSION})
      endif()
    endif()
    unset(_kfopt_languages)
  endif()
endif()
