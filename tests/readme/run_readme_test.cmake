# Runs in script mode (cmake -P): every C++ block of the README must compile and run as shown.
#
# Two kinds of fenced C++ blocks are taken from README.md:
#   - a block after `<!-- quickstart: NAME -->` is a complete program, written to
#     WORK_DIR/consumer/NAME.cpp;
#   - a block after `<!-- fragment: NAME -->` is a piece of a training loop that uses the
#     variables of tests/readme/NAME_context.hpp (the program around it, which also checks
#     what the fragment did): its #include lines go on top, the context below them, and the
#     rest becomes the body of `void readme_fragment()`. A fragment named after an optional
#     component (checkpoint, mpi) links kfopt::NAME and is built only when the installed
#     package has it; the mpi fragment runs on two ranks (MPIEXEC).
# kfopt is installed from KFOPT_SOURCE_DIR into a fresh prefix, a consumer project with one
# executable per block is configured against it with find_package(kfopt), built, and each
# program is run (a non-zero exit fails). With BUILD_TREE (a kfopt build tree that built
# kfopt_compiled, e.g. the test suite's own) the package is installed from that tree and the
# programs link kfopt::kfopt_compiled: the same code, without compiling K-FAC once per
# program (the header-only target is what the package consumer test builds).
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
set(fragments)
set(current "")
set(kind "")
set(in_block OFF)
set(includes "")
set(body "")
foreach(line IN LISTS readme_lines)
  if(in_block)
    if(line MATCHES "^```")
      if(kind STREQUAL "fragment")
        file(COPY ${KFOPT_SOURCE_DIR}/tests/readme/${current}_context.hpp DESTINATION ${WORK_DIR}/consumer)
        file(WRITE ${WORK_DIR}/consumer/${current}.cpp
          "${includes}#include \"${current}_context.hpp\"\nvoid readme_fragment() {\n${body}}\n")
      endif()
      set(in_block OFF)
      set(current "")
    elseif(kind STREQUAL "fragment")
      if(line MATCHES "^#include")
        string(APPEND includes "${line}\n")
      else()
        string(APPEND body "${line}\n")
      endif()
    else()
      file(APPEND ${WORK_DIR}/consumer/${current}.cpp "${line}\n")
    endif()
  elseif(line MATCHES "^<!-- (quickstart|fragment): ([a-z0-9_]+) -->")
    set(kind ${CMAKE_MATCH_1})
    set(current ${CMAKE_MATCH_2})
    if(current IN_LIST names)
      message(FATAL_ERROR "README.md: two blocks are named '${current}'")
    endif()
    list(APPEND names ${current})
    if(kind STREQUAL "fragment")
      list(APPEND fragments ${current})
      if(NOT EXISTS ${KFOPT_SOURCE_DIR}/tests/readme/${current}_context.hpp)
        message(FATAL_ERROR "README.md: fragment '${current}' has no tests/readme/${current}_context.hpp")
      endif()
    endif()
  elseif(current AND line MATCHES "^```cpp")
    set(in_block ON)
    set(includes "")
    set(body "")
    file(WRITE ${WORK_DIR}/consumer/${current}.cpp "")
  endif()
endforeach()
list(LENGTH names count)
if(count EQUAL 0)
  message(FATAL_ERROR "README.md has no `<!-- quickstart: NAME -->` blocks")
endif()

# Every fenced C++ block must be one of them: an unmarked block would not be checked.
set(previous "")
foreach(line IN LISTS readme_lines)
  if(line MATCHES "^```cpp" AND NOT previous MATCHES "^<!-- (quickstart|fragment): ")
    message(FATAL_ERROR "README.md: a ```cpp block is not marked as a quickstart or a fragment "
                        "(the line before it is '${previous}')")
  endif()
  set(previous "${line}")
endforeach()

set(components checkpoint mpi)
set(project "cmake_minimum_required(VERSION 3.20)\nproject(kfopt_readme LANGUAGES CXX)\n")
string(APPEND project "find_package(kfopt 0.1 CONFIG REQUIRED OPTIONAL_COMPONENTS ${components})\n")
string(APPEND project "set(built)\n")
set(core_target kfopt::kfopt)
if(BUILD_TREE)
  set(core_target kfopt::kfopt_compiled)
endif()
foreach(name IN LISTS names)
  set(link ${core_target})
  set(guard "TRUE")
  if(name IN_LIST components)
    set(link kfopt::${name})
    set(guard "kfopt_${name}_FOUND")
  endif()
  string(APPEND project "if(${guard})\n")
  string(APPEND project "  add_executable(${name} ${name}.cpp)\n")
  string(APPEND project "  target_link_libraries(${name} PRIVATE ${link} ${core_target})\n")
  string(APPEND project "  target_compile_options(${name} PRIVATE -Wall -Wextra -Werror)\n")
  string(APPEND project "  list(APPEND built ${name})\n")
  string(APPEND project "endif()\n")
endforeach()
string(APPEND project "file(WRITE \${CMAKE_BINARY_DIR}/built.txt \"\${built}\")\n")
file(WRITE ${WORK_DIR}/consumer/CMakeLists.txt "${project}")

set(prefix ${WORK_DIR}/prefix)
if(BUILD_TREE)
  run_step(${CMAKE_COMMAND} --install ${BUILD_TREE} --prefix ${prefix})
else()
  run_step(${CMAKE_COMMAND} -S ${KFOPT_SOURCE_DIR} -B ${WORK_DIR}/kfopt-build -G ${GENERATOR}
    -DCMAKE_INSTALL_PREFIX=${prefix} -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_BENCHMARKS=OFF
    -DKFOPT_BUILD_EXAMPLES=OFF)
  run_step(${CMAKE_COMMAND} --install ${WORK_DIR}/kfopt-build)
endif()
# -O1: the quick starts compile about as fast as at -O0 and run their loops in milliseconds.
run_step(${CMAKE_COMMAND} -S ${WORK_DIR}/consumer -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
  -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix}
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O1)
run_step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build --parallel 2)
file(READ ${WORK_DIR}/consumer-build/built.txt built)
foreach(name IN LISTS names)
  if(NOT name IN_LIST built)
    message(STATUS "README block '${name}' skipped: the installed kfopt has no kfopt::${name}")
  elseif(name STREQUAL "mpi")
    if(NOT MPIEXEC)
      message(FATAL_ERROR "the README's mpi fragment needs MPIEXEC (mpiexec) to run")
    endif()
    set(ENV{OMPI_ALLOW_RUN_AS_ROOT} 1)
    set(ENV{OMPI_ALLOW_RUN_AS_ROOT_CONFIRM} 1)
    run_step(${MPIEXEC} -n 2 --oversubscribe ${WORK_DIR}/consumer-build/${name})
  else()
    execute_process(COMMAND ${WORK_DIR}/consumer-build/${name} WORKING_DIRECTORY ${WORK_DIR}
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "README block '${name}' failed (${rc}):\n${out}\n${err}")
    endif()
    message(STATUS "${out}")
  endif()
endforeach()
message(STATUS "README blocks built and ran: ${built}")
