# Warnings and sanitizers for kfopt's own targets only (tests, benchmarks, examples).
# Users who include kfopt get none of these flags.
function(kfopt_own_target target)
  cmake_parse_arguments(arg "NO_WERROR" "" "" ${ARGN})
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(KFOPT_WERROR AND NOT arg_NO_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
    if(KFOPT_SANITIZE)
      target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer
                                               -fno-sanitize-recover=undefined)
      target_link_options(${target} PRIVATE -fsanitize=address,undefined)
    endif()
  endif()
endfunction()
option(KFOPT_WERROR "Treat warnings in kfopt's own targets as errors" OFF)
