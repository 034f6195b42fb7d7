# Runs in script mode (cmake -P): an example's --resume continues a run exactly.
#
# For each optimizer of OPTIMIZERS (comma-separated): an uninterrupted run of 2N steps (N = HALF), and a run of
# N steps with --checkpoint followed by --resume to 2N, with the same ARGS; the two CSVs
# (OUT_DIR/CSV) must hold the same rows — step, train_loss, test_metric, compared as written
# (8 significant digits), the seconds column aside. Then resuming a checkpoint with other
# settings (--seed 2 / --seeds 2) must be refused naming the file.
# EXE is the example binary, WORK_DIR a scratch folder, SEED_FLAG the example's seed option.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
separate_arguments(args UNIX_COMMAND "${ARGS}")
math(EXPR full "2 * ${HALF}")

function(run)
  execute_process(COMMAND ${EXE} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${EXE} ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

# rows(CSV OUT_VAR): the CSV rows without the seconds column.
include(${CMAKE_CURRENT_LIST_DIR}/csv_rows.cmake)

string(REPLACE "," ";" optimizers "${OPTIMIZERS}")
foreach(opt IN LISTS optimizers)
  set(a ${WORK_DIR}/${opt}_uninterrupted)
  set(b ${WORK_DIR}/${opt}_resumed)
  run(${args} --optimizers ${opt} --steps ${full} --out ${a})
  run(${args} --optimizers ${opt} --steps ${HALF} --out ${b} --checkpoint ${b}/run.h5)
  run(${args} --optimizers ${opt} --steps ${full} --out ${b} --resume ${b}/run.h5)
  rows(${a}/${CSV} expected)
  rows(${b}/${CSV} got)
  list(LENGTH expected n)
  if(n LESS 4)
    message(FATAL_ERROR "${opt}: the uninterrupted run wrote only ${n} lines")
  endif()
  if(NOT expected STREQUAL got)
    message(FATAL_ERROR "${opt}: the resumed run differs from the uninterrupted one\n"
                        "uninterrupted: ${expected}\nresumed:       ${got}")
  endif()
  message(STATUS "${opt}: ${HALF} steps + --resume to ${full} = ${full} uninterrupted steps (${n} CSV lines)")
  set(last_checkpoint ${b}/run.h5)
  set(last_opt ${opt})
endforeach()

# A checkpoint of another run (another seed) is refused, naming the file.
execute_process(COMMAND ${EXE} ${args} --optimizers ${last_opt} --steps ${full} ${SEED_FLAG} 2
                        --out ${WORK_DIR}/other --resume ${last_checkpoint}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "run.h5")
  message(FATAL_ERROR "resuming with another seed was not refused clearly (${rc}):\n${err}")
endif()
message(STATUS "a checkpoint of another run is refused: ${err}")
