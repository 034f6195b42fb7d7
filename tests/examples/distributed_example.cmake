# Runs in script mode (cmake -P): fashion_mnist --distributed on 2 ranks against one process.
#
# For adam and kfac with the data's targets in K-FAC's Fisher (--fisher empirical): a run of
# 2N steps (N = HALF) on one process without MPI, the same run on 2 ranks (--distributed), and
# on 2 ranks N steps with --checkpoint (written by rank 0) then --resume to 2N (rank 0 reads
# the file and sends it to the other rank). The three CSVs must hold the same rows (step,
# train_loss, test_metric as written, 8 significant digits; the seconds column aside): the
# split over the ranks changes the sums' order only. Then kfac with sampled Fisher targets
# (each rank its own, seeded by the step) and eigendecompositions split over the ranks: the
# resumed run must equal the uninterrupted one; and kfac with --kfac-broadcast preconditioned
# must equal one process. Every distributed summary must report the
# optimizer's bytes per step equal to the cost model's ("measured/predicted 1.000000").
#
# EXE: the example; MPIEXEC: the launcher with its flags, e.g. "mpiexec --oversubscribe";
# WORK_DIR: a scratch folder; ARGS: the run's options.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
separate_arguments(args UNIX_COMMAND "${ARGS}")
separate_arguments(launcher UNIX_COMMAND "${MPIEXEC}")
math(EXPR full "2 * ${HALF}")

function(run out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

function(distributed out_var)
  run(out ${launcher} -n 2 ${EXE} --distributed ${args} ${ARGN})
  string(REGEX MATCHALL "measured/predicted [0-9.]+" ratios "${out}")
  if(NOT ratios)
    message(FATAL_ERROR "no communication report in the summary:\n${out}")
  endif()
  foreach(ratio IN LISTS ratios)
    if(NOT ratio STREQUAL "measured/predicted 1.000000")
      message(FATAL_ERROR "the bytes per step differ from the cost model's (${ratio}):\n${out}")
    endif()
  endforeach()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# rows(CSV OUT_VAR): the CSV rows without the seconds column.
include(${CMAKE_CURRENT_LIST_DIR}/csv_rows.cmake)

function(require_same a b what)
  rows(${a}/classifier.csv expected)
  rows(${b}/classifier.csv got)
  list(LENGTH expected n)
  if(n LESS 4)
    message(FATAL_ERROR "${what}: only ${n} lines in ${a}/classifier.csv")
  endif()
  if(NOT expected STREQUAL got)
    message(FATAL_ERROR "${what}: the runs differ\n${a}: ${expected}\n${b}: ${got}")
  endif()
  message(STATUS "${what}: the same ${n} CSV lines")
endfunction()

foreach(opt adam kfac)
  set(one ${WORK_DIR}/${opt}_one_process)
  set(two ${WORK_DIR}/${opt}_two_ranks)
  set(resumed ${WORK_DIR}/${opt}_two_ranks_resumed)
  run(out ${EXE} ${args} --fisher empirical --optimizers ${opt} --steps ${full} --out ${one})
  distributed(out --fisher empirical --optimizers ${opt} --steps ${full} --out ${two})
  distributed(out --fisher empirical --optimizers ${opt} --steps ${HALF} --out ${resumed}
              --checkpoint ${resumed}/run.h5)
  distributed(out --fisher empirical --optimizers ${opt} --steps ${full} --out ${resumed}
              --resume ${resumed}/run.h5)
  require_same(${one} ${two} "${opt}: one process and 2 ranks")
  require_same(${two} ${resumed} "${opt}: 2 ranks, uninterrupted and resumed")
endforeach()

set(two ${WORK_DIR}/kfac_sampled)
set(resumed ${WORK_DIR}/kfac_sampled_resumed)
set(eigen --optimizers kfac --kfac-inverse eigen --kfac-inverse-period 3)
distributed(out ${eigen} --steps ${full} --out ${two})
distributed(out ${eigen} --steps ${HALF} --out ${resumed} --checkpoint ${resumed}/run.h5)
distributed(out ${eigen} --steps ${full} --out ${resumed} --resume ${resumed}/run.h5)
require_same(${two} ${resumed} "kfac, sampled Fisher, split eigendecompositions: uninterrupted and resumed")

# K-FAC with each layer's preconditioned gradient broadcast from its owner: the same rows as
# one process.
set(one ${WORK_DIR}/kfac_one_process)
set(preconditioned ${WORK_DIR}/kfac_preconditioned)
distributed(out --fisher empirical --optimizers kfac --steps ${full} --kfac-broadcast preconditioned
            --out ${preconditioned})
require_same(${one} ${preconditioned} "kfac: one process and 2 ranks broadcasting preconditioned gradients")
