# Runs in script mode (cmake -P). MODE=install (default): installs kfopt from
# KFOPT_SOURCE_DIR into a fresh prefix under WORK_DIR, then configures, builds and runs the
# consumer project against that prefix with find_package(kfopt CONFIG REQUIRED).
# MODE=subdirectory: the consumer pulls kfopt in with add_subdirectory instead.
if(NOT MODE)
  set(MODE install)
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
  run_step(${CMAKE_COMMAND} -S ${KFOPT_SOURCE_DIR} -B ${WORK_DIR}/kfopt-build -G ${GENERATOR}
    -DCMAKE_INSTALL_PREFIX=${prefix} -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_BENCHMARKS=OFF
    -DKFOPT_BUILD_EXAMPLES=OFF)
  run_step(${CMAKE_COMMAND} --install ${WORK_DIR}/kfopt-build)
  if(NOT EXISTS ${prefix}/share/cmake/kfopt/kfoptConfigVersion.cmake)
    message(FATAL_ERROR "install did not write kfoptConfigVersion.cmake")
  endif()
  run_step(${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix})
else()
  run_step(${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DKFOPT_SUBDIRECTORY=${KFOPT_SOURCE_DIR})
endif()
run_step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run_step(${WORK_DIR}/consumer-build/kfopt_consumer)
message(STATUS "consumer (${MODE}) built and ran")
