# Included by the examples' test scripts (cmake -P): rows(CSV OUT_VAR) sets OUT_VAR to the
# lines of an example's result CSV without the seconds column (step, train_loss and
# test_metric as written), for row-by-row comparisons of runs.
function(rows csv out_var)
  file(STRINGS ${csv} lines)
  set(result "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^([^,]*,[^,]*),[^,]*,(.*)$" "\\1,\\2" kept "${line}")
    list(APPEND result "${kept}")
  endforeach()
  set(${out_var} "${result}" PARENT_SCOPE)
endfunction()
