# Runs in script mode (cmake -P). MODE=install (default): installs kfopt from
# KFOPT_SOURCE_DIR into a fresh prefix under WORK_DIR, then configures, builds and runs the
# consumer project against that prefix with find_package(kfopt CONFIG REQUIRED).
# MODE=subdirectory: the consumer pulls kfopt in with add_subdirectory instead.
# TARGET=kfopt (default, header-only) or kfopt_compiled: the target the consumer links; for
# kfopt_compiled, kfopt is configured with KFOPT_BUILD_COMPILED=ON (and built before it is
# installed), and the consumer must see KFOPT_COMPILED. BUILD_TREE (optional): a kfopt build
# tree that already built kfopt_compiled (the test suite's own, configured with
# KFOPT_BUILD_COMPILED=ON); the install then comes from it instead of a second build of the
# library.
if(NOT MODE)
  set(MODE install)
endif()
if(NOT DEFINED TARGET OR "${TARGET}" STREQUAL "")
  set(TARGET kfopt)
endif()
set(compiled_option -DKFOPT_BUILD_COMPILED=OFF)
if("${TARGET}" STREQUAL "kfopt_compiled")
  set(compiled_option -DKFOPT_BUILD_COMPILED=ON)
endif()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

set(consumer_src ${KFOPT_SOURCE_DIR}/tests/package/consumer)
if(MODE STREQUAL "install")
  set(prefix ${WORK_DIR}/prefix)
  if("${TARGET}" STREQUAL "kfopt_compiled" AND BUILD_TREE)
    run_step(${CMAKE_COMMAND} --install ${BUILD_TREE} --prefix ${prefix})
  else()
    run_step(${CMAKE_COMMAND} -S ${KFOPT_SOURCE_DIR} -B ${WORK_DIR}/kfopt-build -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release
      -DCMAKE_INSTALL_PREFIX=${prefix} -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_BENCHMARKS=OFF
      -DKFOPT_BUILD_EXAMPLES=OFF ${compiled_option})
    run_step(${CMAKE_COMMAND} --build ${WORK_DIR}/kfopt-build --parallel 2)
    run_step(${CMAKE_COMMAND} --install ${WORK_DIR}/kfopt-build)
  endif()
  if(NOT EXISTS ${prefix}/share/cmake/kfopt/kfoptConfigVersion.cmake)
    message(FATAL_ERROR "install did not write kfoptConfigVersion.cmake")
  endif()
  run_step(${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix}
    -DKFOPT_CONSUMER_TARGET=${TARGET})
else()
  run_step(${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DKFOPT_SUBDIRECTORY=${KFOPT_SOURCE_DIR}
    -DKFOPT_CONSUMER_TARGET=${TARGET} ${compiled_option})
endif()
run_step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run_step(${WORK_DIR}/consumer-build/kfopt_consumer)
message(STATUS "consumer (${MODE}, kfopt::${TARGET}) built and ran")
