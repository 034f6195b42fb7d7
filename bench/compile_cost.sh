#!/usr/bin/env bash
# Compile cost of a user's translation unit, per optimizer and scalar type.
#
#   bash bench/compile_cost.sh [--mode header|compiled|both] [--lib DIR] [-j N] [--cxx CXX]
#
# Compiles (and links) the three programs of bench/compile_cost/ — Adam only; Kfac with two
# dense layers; Kfac with one recurrent Option-2 layer — for float and double at -O2 with
# the project's include path, and prints one row per program with the CPU time of the
# compiler (user + sys) and its peak memory (`/usr/bin/time -v`, "Maximum resident set
# size").
#
# Modes: `header` includes the headers only (the kfopt::kfopt target); `compiled` adds
# -DKFOPT_COMPILED and links libkfopt_compiled.a (the kfopt::kfopt_compiled target, CMake
# option KFOPT_BUILD_COMPILED), whose explicit instantiations the program then reuses.
# `--lib DIR` names a build tree that holds libkfopt_compiled.a; without it the library is
# built once into a temporary build tree (its own build time is printed, not counted per
# program). Programs run after linking (a crash or a failed step fails the script).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode=both
lib_dir=""
jobs=1
cxx="${CXX:-g++}"
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode="$2"; shift 2 ;;
    --lib) lib_dir="$2"; shift 2 ;;
    -j) jobs="$2"; shift 2 ;;
    --cxx) cxx="$2"; shift 2 ;;
    *) echo "usage: $0 [--mode header|compiled|both] [--lib DIR] [-j N] [--cxx CXX]" >&2; exit 2 ;;
  esac
done

eigen_dir=""
for d in /usr/include/eigen3 /usr/local/include/eigen3; do
  [ -f "$d/Eigen/Core" ] && eigen_dir="$d" && break
done
[ -n "$eigen_dir" ] || { echo "compile_cost: Eigen 3 headers not found" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "compile_cost: /usr/bin/time missing (Debian package: time)" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/kfopt_compile_cost.XXXXXX")"
trap 'rm -rf "$work"' EXIT

modes=()
case "$mode" in
  header) modes=(header) ;;
  compiled) modes=(compiled) ;;
  both) modes=(header compiled) ;;
  *) echo "compile_cost: unknown mode $mode" >&2; exit 2 ;;
esac

lib=""
if [[ " ${modes[*]} " == *" compiled "* ]]; then
  if [ -z "$lib_dir" ]; then
    lib_dir="$work/lib-build"
    echo "compile_cost: building kfopt_compiled in $lib_dir" >&2
    cmake -S "$here" -B "$lib_dir" -DCMAKE_BUILD_TYPE=Release -DKFOPT_BUILD_COMPILED=ON \
      -DKFOPT_BUILD_TESTS=OFF -DKFOPT_BUILD_BENCHMARKS=OFF -DKFOPT_BUILD_EXAMPLES=OFF >&2
    start=$(date +%s)
    cmake --build "$lib_dir" --target kfopt_compiled -j "$jobs" >&2
    echo "compile_cost: kfopt_compiled built in $(( $(date +%s) - start )) s (wall, -j $jobs)" >&2
  fi
  lib="$(find "$lib_dir" -name 'libkfopt_compiled.a' | head -n 1)"
  [ -n "$lib" ] || { echo "compile_cost: libkfopt_compiled.a not found under $lib_dir" >&2; exit 1; }
fi

programs=(adam kfac_dense kfac_recurrent)
scalars=(float double)

# One compile: writes "<cpu s> <peak MB>" to $work/<tag>.result.
measure() {
  local prog="$1" scalar="$2" m="$3" tag="$1.$2.$3"
  local flags=(-std=c++17 -O2 -I"$here/include" -isystem "$eigen_dir" -DKFOPT_COST_SCALAR="$scalar")
  local link=()
  if [ "$m" = compiled ]; then
    flags+=(-DKFOPT_COMPILED)
    link=("$lib")
  fi
  /usr/bin/time -v -o "$work/$tag.time" \
    "$cxx" "${flags[@]}" "$here/bench/compile_cost/$prog.cpp" "${link[@]}" -o "$work/$tag.exe" \
    2>"$work/$tag.err" || { cat "$work/$tag.err" >&2; echo "compile_cost: $tag failed" >&2; return 1; }
  "$work/$tag.exe" >/dev/null || { echo "compile_cost: $tag built but did not run" >&2; return 1; }
  awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} /Maximum resident set size/ {m=$2}
              END {printf "%.1f %.0f\n", u + s, m / 1024}' "$work/$tag.time" >"$work/$tag.result"
}

pids=()
for m in "${modes[@]}"; do
  for prog in "${programs[@]}"; do
    for scalar in "${scalars[@]}"; do
      measure "$prog" "$scalar" "$m" &
      pids+=($!)
      if [ "${#pids[@]}" -ge "$jobs" ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
      fi
    done
  done
done
for p in "${pids[@]}"; do wait "$p"; done

printf "%-16s %-7s %-9s %8s %8s\n" program scalar mode "CPU s" "peak MB"
for m in "${modes[@]}"; do
  for prog in "${programs[@]}"; do
    for scalar in "${scalars[@]}"; do
      read -r cpu mb <"$work/$prog.$scalar.$m.result"
      printf "%-16s %-7s %-9s %8s %8s\n" "$prog" "$scalar" "$m" "$cpu" "$mb"
    done
  done
done
