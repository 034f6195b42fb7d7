#!/usr/bin/env bash
# Runs kfopt's factor-inversion benchmark suite and writes a markdown report and a log-log
# plot into bench/results/ (or OUT_DIR):
#
#   bash bench/run_benchmarks.sh [BENCH_DIR]
#
# BENCH_DIR holds bench_kron (and optionally bench_kron_omp), default build/bench/bench.
# `bash cmake/dev.sh bench` builds them (Release, KFOPT_WITH_LAPACK=ON) and calls this.
#
# Main run: one thread everywhere (OPENBLAS_NUM_THREADS=1, Eigen without OpenMP), process
# CPU time, sizes 64..2048 (the composite RNN / Kronecker-sum / KL rows up to 1024 to keep
# a run near 10 minutes on 2 cores). Then a threading run of the GEMM, Cholesky and
# eigendecomposition rows with 1 and 2 threads (wall-clock time).
#
# Environment: KFOPT_BENCH_SIZES, KFOPT_BENCH_MAX_COMPOSITE, KFOPT_BENCH_THREAD_SIZES,
# OUT_DIR, KFOPT_BENCH_SKIP_THREADS=1, KFOPT_BENCH_OPENBLAS_CORETYPE.
# OpenBLAS kernels: OpenBLAS 0.3.21 may pick its AVX2 (Haswell) kernels on AVX-512 CPUs it
# does not recognize (or OPENBLAS_CORETYPE may pin them), while Eigen, compiled with
# -march=native, uses AVX-512: the reference would be handicapped. So with
# KFOPT_BENCH_OPENBLAS_CORETYPE=auto (default) the script sets OPENBLAS_CORETYPE=SkylakeX on
# CPUs with AVX-512 F/BW/DQ/VL; set KFOPT_BENCH_OPENBLAS_CORETYPE=keep to leave the
# environment alone, or to a core name to force one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench_dir="${1:-$here/build/bench/bench}"
out_dir="${OUT_DIR:-$here/bench/results}"
bench="$bench_dir/bench_kron"
bench_omp="$bench_dir/bench_kron_omp"
if [ ! -x "$bench" ]; then
  echo "run_benchmarks.sh: $bench not found; build it first (bash cmake/dev.sh bench)" >&2
  exit 1
fi
mkdir -p "$out_dir"

coretype="${KFOPT_BENCH_OPENBLAS_CORETYPE:-auto}"
if [ "$coretype" = auto ]; then
  flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
  if [[ "$flags" == *avx512f* && "$flags" == *avx512bw* && "$flags" == *avx512dq* &&
        "$flags" == *avx512vl* ]]; then
    export OPENBLAS_CORETYPE=SkylakeX
  fi
elif [ "$coretype" != keep ]; then
  export OPENBLAS_CORETYPE="$coretype"
fi

export KFOPT_BENCH_SIZES="${KFOPT_BENCH_SIZES:-64,128,256,512,1024,2048}"
export KFOPT_BENCH_MAX_COMPOSITE="${KFOPT_BENCH_MAX_COMPOSITE:-1024}"
thread_sizes="${KFOPT_BENCH_THREAD_SIZES:-512,1024,2048}"
json_dir="$out_dir/json"
mkdir -p "$json_dir"

start=$(date +%s)
echo "== main run (1 thread, sizes $KFOPT_BENCH_SIZES) ==" >&2
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 KFOPT_BENCH_LABEL=main \
  "$bench" --benchmark_out="$json_dir/bench_kron.json" --benchmark_out_format=json \
  --benchmark_counters_tabular=false

thread_jsons=()
if [ "${KFOPT_BENCH_SKIP_THREADS:-0}" != 1 ]; then
  filter='^(gemm|chol_inverse|eig|stats)/.*/double/'
  for t in 1 2; do
    echo "== threads: OpenBLAS $t, Eigen (OpenMP) $t, sizes $thread_sizes ==" >&2
    if [ -x "$bench_omp" ]; then
      exe="$bench_omp"
    else
      exe="$bench"  # no OpenMP build: Eigen stays single-threaded
    fi
    KFOPT_BENCH_SIZES="$thread_sizes" KFOPT_BENCH_REAL_TIME=1 OPENBLAS_NUM_THREADS=$t \
      OMP_NUM_THREADS=$t KFOPT_BENCH_LABEL="$t thread(s)$([ "$exe" = "$bench" ] && echo ', Eigen 1')" \
      "$exe" --benchmark_filter="$filter" --benchmark_out="$json_dir/threads_$t.json" \
      --benchmark_out_format=json >/dev/null
    thread_jsons+=("$json_dir/threads_$t.json")
  done
fi

python3 "$here/bench/report.py" "$json_dir/bench_kron.json" "${thread_jsons[@]}" \
  --out "$out_dir" --command "bash bench/run_benchmarks.sh (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto})"
echo "run_benchmarks.sh: done in $(( $(date +%s) - start )) s; report in $out_dir/bench_kron.md" >&2
