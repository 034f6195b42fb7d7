# The API reference: `cmake --build <dir> --target docs` runs Doxygen over include/ into
# <dir>/docs/html. With KFOPT_DOCS_WERROR=ON (CI) an undocumented public member or a broken
# doc comment fails the target. Needs Doxygen (Debian: doxygen); without it there is no
# `docs` target and nothing else changes.
option(KFOPT_DOCS_WERROR "Treat Doxygen warnings (e.g. an undocumented public member) as errors" OFF)
find_package(Doxygen QUIET)
if(DOXYGEN_FOUND)
  set(KFOPT_DOCS_OUTPUT_DIR ${PROJECT_BINARY_DIR}/docs)
  if(KFOPT_DOCS_WERROR)
    set(KFOPT_DOCS_WARN_AS_ERROR FAIL_ON_WARNINGS)
  else()
    set(KFOPT_DOCS_WARN_AS_ERROR NO)
  endif()
  configure_file(${PROJECT_SOURCE_DIR}/docs/Doxyfile.in ${KFOPT_DOCS_OUTPUT_DIR}/Doxyfile @ONLY)
  add_custom_target(docs
    COMMAND ${CMAKE_COMMAND} -E make_directory ${KFOPT_DOCS_OUTPUT_DIR}
    COMMAND ${DOXYGEN_EXECUTABLE} ${KFOPT_DOCS_OUTPUT_DIR}/Doxyfile
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    COMMENT "kfopt API reference (Doxygen) in ${KFOPT_DOCS_OUTPUT_DIR}/html"
    VERBATIM)
else()
  message(STATUS "kfopt: Doxygen not found, no `docs` target")
endif()
