#pragma once
/// \file example_main.hpp
/// \brief The `main` every example shares: parse the command line, print the help text or
/// run, and turn exceptions into exit codes (2 for a usage error, 1 for anything else), each
/// message prefixed with the program's name.
///
/// This is example code, not part of the kfopt library: kfopt never includes it.

#include <exception>
#include <iostream>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/cli.hpp"

namespace kfopt_examples {

/// Eigen's matrix products allocate their packing buffers on every call, and glibc hands
/// blocks above 128 KiB straight back to the kernel on free: every step would pay for fresh
/// zeroed pages (a third of the run time of the Fashion-MNIST example went to page faults in
/// our measurements). Keeping freed memory in the process removes that cost; it changes
/// nothing else.
inline void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

/// `parse(argc, argv, show_help)` returns the settings (and sets show_help for --help);
/// `run(settings)` returns the exit code.
template <typename Parse, typename Run>
int example_main(const char* program, const char* help_text, int argc, char** argv,
                 Parse&& parse, Run&& run) {
  keep_freed_memory();
  try {
    bool show_help = false;
    const auto settings = parse(argc, argv, show_help);
    if (show_help) {
      std::cout << help_text;
      return 0;
    }
    return run(settings);
  } catch (const UsageError& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace kfopt_examples
