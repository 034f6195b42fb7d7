# Optional compiled mode (as fmt and spdlog offer): a static library with the explicit
# instantiations of kfopt's heavy class templates for float and double (Kfac, the Fisher
# blocks, the eigensolver and its cache, the Cholesky inverse, the factor statistics;
# src/kfac_instantiations.hpp). A target linked to kfopt::kfopt_compiled gets the
# definition KFOPT_COMPILED, under which the headers declare those instantiations
# `extern template`: the user's translation units then compile in seconds instead of
# instantiating the K-FAC machinery themselves (bench/compile_cost.sh). The header-only
# target kfopt::kfopt stays the default; both give the same results.
#
#   cmake -DKFOPT_BUILD_COMPILED=ON ...
#   target_link_libraries(app PRIVATE kfopt::kfopt_compiled)
#
# The library is built with the same kfopt interface (e.g. KFOPT_USE_LAPACK) as its users.
option(KFOPT_BUILD_COMPILED
  "Build kfopt_compiled, a static library of precompiled float/double instantiations" OFF)

if(KFOPT_BUILD_COMPILED)
  add_library(kfopt_compiled STATIC
    ${PROJECT_SOURCE_DIR}/src/kfopt_compiled_float.cpp
    ${PROJECT_SOURCE_DIR}/src/kfopt_compiled_double.cpp)
  add_library(kfopt::kfopt_compiled ALIAS kfopt_compiled)
  target_link_libraries(kfopt_compiled PUBLIC kfopt)
  target_compile_definitions(kfopt_compiled PUBLIC KFOPT_COMPILED)
  target_compile_features(kfopt_compiled PUBLIC cxx_std_17)
  set_target_properties(kfopt_compiled PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    EXPORT_NAME kfopt_compiled
    OUTPUT_NAME kfopt_compiled)
  # Warnings (and, in the sanitizer build, the sanitizers) as for kfopt's own targets.
  if(COMMAND kfopt_own_target)
    kfopt_own_target(kfopt_compiled)
  endif()
  install(TARGETS kfopt_compiled EXPORT kfoptTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
