#!/usr/bin/env bash
# kfopt developer entry point. One command per job, each installing what it is missing:
#
#   bash cmake/dev.sh test       build the tests and examples and run the whole test suite (ctest)
#   bash cmake/dev.sh sanitize   build the tests with ASan + UBSan and run them
#   bash cmake/dev.sh tsan       build the threaded tests (tests/threads) with ThreadSanitizer
#                                and run them
#   bash cmake/dev.sh bench      build the benchmarks (Release, KFOPT_WITH_LAPACK=ON, with the
#                                OpenMP copy bench_kron_omp: KFOPT_BENCH_OPENMP=ON) and run
#                                bench/run_benchmarks.sh (report in bench/results/)
#   bash cmake/dev.sh docs       build the API reference (Doxygen) into build/docs/docs/html;
#                                a warning (e.g. an undocumented public member) fails it
#   bash cmake/dev.sh deps       only check / install the Debian packages
#
# Missing Debian packages are installed with apt-get when running as root (or through
# passwordless sudo); otherwise the script stops and prints the exact install line.
# Build trees: build/release, build/sanitize, build/tsan and build/bench (override with KFOPT_BUILD_ROOT).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_root="${KFOPT_BUILD_ROOT:-$here/build}"
jobs="${KFOPT_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Everything the build, tests, benchmarks and examples need, by Debian package name.
# HDF5 is for the optional checkpoint target (kfopt::checkpoint) and its tests, OpenMPI for
# the optional MPI target (kfopt::mpi) and its mpirun tests, Doxygen for the API reference,
# the Fashion-MNIST data for the examples' end-to-end test (fashion_mnist --resume).
packages=(cmake make g++ libeigen3-dev catch2 libbenchmark-dev zlib1g-dev
          libhdf5-dev hdf5-tools libopenmpi-dev openmpi-bin doxygen dataset-fashion-mnist)
# Only for `bench` (the LAPACK reference rows and backend, the report and its plot).
bench_packages=(liblapacke-dev libopenblas-dev python3 gnuplot-nox)

ensure_packages() {
  local missing=()
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local line="apt-get install -y ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    echo "kfopt: installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "kfopt: installing ${missing[*]} with sudo" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "kfopt: missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get update && sudo $line" >&2
    exit 1
  fi
}

configure_build_test() {
  local dir="$1"; shift
  cmake -S "$here" -B "$dir" "$@"
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest --output-on-failure -j "$jobs")
}

case "${1:-test}" in
  deps)
    ensure_packages "${packages[@]}"
    ;;
  test)
    ensure_packages "${packages[@]}"
    # The benchmarks are built by `bench` (their own build tree, with LAPACK). The tests and
    # examples link kfopt_compiled (KFOPT_BUILD_COMPILED=ON), K-FAC's float/double
    # instantiations compiled once instead of once per test batch and example; the
    # header-only target is built by the package tests' consumers. On a fresh 2-core machine
    # the whole .ci/run (API reference, this command, the sanitizers) took 52 min (64 before
    # the compiled instantiations); this command about 25 of them.
    configure_build_test "$build_root/release" -DCMAKE_BUILD_TYPE=Release -DKFOPT_WERROR=ON \
      -DKFOPT_BUILD_BENCHMARKS=OFF -DKFOPT_BUILD_COMPILED=ON
    ;;
  sanitize)
    # -O0: half the compile time of -O1 under the sanitizers; the tests still run in minutes.
    ensure_packages "${packages[@]}"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    configure_build_test "$build_root/sanitize" -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" -DKFOPT_SANITIZE=ON -DKFOPT_WERROR=ON \
      -DKFOPT_BUILD_BENCHMARKS=OFF -DKFOPT_BUILD_EXAMPLES=OFF -DKFOPT_BUILD_COMPILED=ON
    ;;
  tsan)
    # ThreadSanitizer on the tests that run kfopt's threads (tests/threads), header-only (an
    # uninstrumented kfopt_compiled would hide races inside K-FAC), at -O1.
    ensure_packages "${packages[@]}"
    TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" \
    configure_build_test "$build_root/tsan" -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DKFOPT_TSAN=ON -DKFOPT_WERROR=ON \
      -DKFOPT_BUILD_BENCHMARKS=OFF -DKFOPT_BUILD_EXAMPLES=OFF -DKFOPT_BUILD_COMPILED=OFF
    ;;
  docs)
    ensure_packages cmake make g++ libeigen3-dev doxygen
    cmake -S "$here" -B "$build_root/docs" -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_EXAMPLES=OFF \
      -DKFOPT_BUILD_BENCHMARKS=OFF -DKFOPT_DOCS_WERROR=ON
    cmake --build "$build_root/docs" --target docs
    echo "kfopt: API reference in $build_root/docs/docs/html/index.html" >&2
    ;;
  bench)
    ensure_packages "${packages[@]}" "${bench_packages[@]}"
    cmake -S "$here" -B "$build_root/bench" -DCMAKE_BUILD_TYPE=Release -DKFOPT_WITH_LAPACK=ON \
      -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_EXAMPLES=OFF -DKFOPT_BUILD_BENCHMARKS=ON \
      -DKFOPT_BENCH_OPENMP=ON
    cmake --build "$build_root/bench" -j "$jobs"
    bash "$here/bench/run_benchmarks.sh" "$build_root/bench/bench"
    ;;
  *)
    echo "usage: bash cmake/dev.sh [test|sanitize|tsan|docs|bench|deps]" >&2
    exit 2
    ;;
esac
