# Runs in script mode (cmake -P): the README's quick starts must compile and run as shown.
#
# Every fenced C++ block of README.md that follows a line `<!-- quickstart: NAME -->` is
# written to WORK_DIR/consumer/NAME.cpp. kfopt is installed from KFOPT_SOURCE_DIR into a
# fresh prefix, a consumer project with one executable per quick start is configured against
# it with find_package(kfopt), built, and each program is run (a non-zero exit fails).
cmake_policy(SET CMP0057 NEW)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR}/consumer)

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(STRINGS ${KFOPT_SOURCE_DIR}/README.md readme_lines ENCODING UTF-8)
set(names)
set(current "")
set(in_block OFF)
foreach(line IN LISTS readme_lines)
  if(in_block)
    if(line MATCHES "^```")
      set(in_block OFF)
      set(current "")
    else()
      file(APPEND ${WORK_DIR}/consumer/${current}.cpp "${line}\n")
    endif()
  elseif(line MATCHES "^<!-- quickstart: ([a-z0-9_]+) -->")
    set(current ${CMAKE_MATCH_1})
    if(current IN_LIST names)
      message(FATAL_ERROR "README.md: two quick starts are named '${current}'")
    endif()
    list(APPEND names ${current})
  elseif(current AND line MATCHES "^```cpp")
    set(in_block ON)
    file(WRITE ${WORK_DIR}/consumer/${current}.cpp "")
  endif()
endforeach()
list(LENGTH names count)
if(count EQUAL 0)
  message(FATAL_ERROR "README.md has no `<!-- quickstart: NAME -->` blocks")
endif()

set(project "cmake_minimum_required(VERSION 3.20)\nproject(kfopt_readme LANGUAGES CXX)\n")
string(APPEND project "find_package(kfopt 0.1 CONFIG REQUIRED)\n")
foreach(name IN LISTS names)
  string(APPEND project "add_executable(${name} ${name}.cpp)\n")
  string(APPEND project "target_link_libraries(${name} PRIVATE kfopt::kfopt)\n")
  string(APPEND project "target_compile_options(${name} PRIVATE -Wall -Wextra -Werror)\n")
endforeach()
file(WRITE ${WORK_DIR}/consumer/CMakeLists.txt "${project}")

set(prefix ${WORK_DIR}/prefix)
run_step(${CMAKE_COMMAND} -S ${KFOPT_SOURCE_DIR} -B ${WORK_DIR}/kfopt-build -G ${GENERATOR}
  -DCMAKE_INSTALL_PREFIX=${prefix} -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_BENCHMARKS=OFF
  -DKFOPT_BUILD_EXAMPLES=OFF)
run_step(${CMAKE_COMMAND} --install ${WORK_DIR}/kfopt-build)
# -O1: the quick starts compile about as fast as at -O0 and run their loops in milliseconds.
run_step(${CMAKE_COMMAND} -S ${WORK_DIR}/consumer -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
  -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix}
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O1)
run_step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
foreach(name IN LISTS names)
  run_step(${WORK_DIR}/consumer-build/${name})
endforeach()
message(STATUS "README quick starts built and ran: ${names}")
