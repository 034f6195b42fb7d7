#!/usr/bin/env bash
# The reference example, from a fresh Debian/Ubuntu machine to a plot:
#
#   bash examples/run_fashion_mnist.sh            # a real run (tens of minutes on 2 cores)
#   bash examples/run_fashion_mnist.sh --quick    # CI-sized (< 2 min on an idle 2-core machine)
#
# Installs what is missing (the build packages via cmake/dev.sh deps, plus the data set
# dataset-fashion-mnist and gnuplot-nox for the plot) with apt-get when run as root or with
# passwordless sudo, otherwise prints the exact install line. Builds build/release, runs
# fashion_mnist with any arguments given (default --out out/), and turns out/*.csv into PNGs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KFOPT_BUILD_ROOT:-$here/build}/release"
jobs="$(nproc 2>/dev/null || echo 2)"

bash "$here/cmake/dev.sh" deps
missing=()
for p in dataset-fashion-mnist gnuplot-nox zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "kfopt: missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKFOPT_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$jobs" --target fashion_mnist

out="out"
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do
  if [ "${args[$i]}" = "--out" ] && [ $((i + 1)) -lt ${#args[@]} ]; then out="${args[$((i + 1))]}"; fi
done
has_out=0
for a in "$@"; do [ "$a" = "--out" ] && has_out=1; done
if [ $has_out -eq 0 ]; then args+=(--out "$out"); fi

"$build/examples/fashion_mnist" "${args[@]}"
bash "$here/examples/plot_results.sh" "$out"
