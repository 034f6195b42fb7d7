#!/usr/bin/env bash
# Data-parallel training measured: fashion_mnist --distributed on 1 and on 2 ranks (one thread
# each), and the bytes the ranks put on the network against the cost model.
#
#   bash examples/run_distributed.sh [FASHION_MNIST_BINARY] [extra fashion_mnist options]
#
# The binary defaults to build/release/examples/fashion_mnist (bash cmake/dev.sh test builds
# it); e.g. add --float for single precision. For each rank count P = 1, 2, the classifier
# (784-256-128-10, global batch 1000, 60 steps) is trained by Adam, by K-FAC with Cholesky
# inverses (split over the ranks) and by K-FAC with eigendecompositions every 20 steps (split
# over the ranks), and with eigendecompositions where each layer's owner rank refreshes it and
# broadcasts its preconditioned gradient every step (--kfac-broadcast preconditioned). Then the
# eigendecomposition run on 2 ranks once more with Open MPI's TCP
# transport on the loopback interface and the ring all-reduce forced, where the interface's
# transmit counter (/proc/net/dev) sees every byte the ranks exchange: it is compared with the
# cost model's prediction, 2 × (per-rank all-reduce payload) + broadcast payload per step at
# P = 2 (a ring all-reduce sends its whole payload from each of 2 ranks; a broadcast is sent
# once). Outputs: OUT (default out/distributed)/<run>.txt and CSVs; the summary on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exe="${1:-$here/build/release/examples/fashion_mnist}"
[ $# -gt 0 ] && shift
out="${OUT:-out/distributed}"
mkdir -p "$out"
if [ ! -x "$exe" ]; then
  echo "run_distributed.sh: no fashion_mnist at $exe (build it: bash cmake/dev.sh test)" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
common=(--distributed --task classifier --batch 1000 --steps 60 --log-every 60
        --test-examples 1000 "$@")
steps=60

run() {  # run NAME RANKS [mpirun options --] fashion_mnist options
  local name="$1" ranks="$2"
  shift 2
  local mpi=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do mpi+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  echo "run_distributed.sh: $name on $ranks rank(s)" >&2
  mpirun -np "$ranks" --oversubscribe --bind-to core "${mpi[@]}" "$exe" "${common[@]}" "$@" \
    --out "$out/$name" > "$out/$name.txt" 2> "$out/$name.err"
}
# ms/step of OPTIMIZER in a run's summary table.
ms_per_step() { awk -v o="$2" '$1 == "classifier" && $2 == o { print $7 }' "$out/$1.txt"; }
# A number from the summary's communication note of a run.
note_number() { grep "classifier/kfac:" "$out/$1.txt" | sed -E "s/.*$2 ([0-9.e+-]+) MB.*/\1/"; }

for p in 1 2; do
  run "p${p}_cholesky" "$p" -- --optimizers adam,kfac
  run "p${p}_eigen" "$p" -- --optimizers kfac --kfac-inverse eigen
  run "p${p}_preconditioned" "$p" -- --optimizers kfac --kfac-inverse eigen --kfac-broadcast preconditioned
done

tx() { awk '/^ *lo:/ { split($0, a, ":"); split(a[2], f, " "); print f[9] }' /proc/net/dev; }
before="$(tx)"
run p2_eigen_tcp 2 --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo \
  --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4 -- \
  --optimizers kfac --kfac-inverse eigen
after="$(tx)"

echo
echo "fashion_mnist --distributed, classifier 784-256-128-10, global batch 1000, $steps steps, one thread per rank"
printf "%-34s %12s %12s %10s\n" "optimizer" "P=1 ms/step" "P=2 ms/step" "speed-up"
row() {
  local label="$1" a="$2" b="$3"
  printf "%-34s %12s %12s %10s\n" "$label" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2fx", a / b }')"
}
row "adam" "$(ms_per_step p1_cholesky adam)" "$(ms_per_step p2_cholesky adam)"
row "kfac (Cholesky, split)" "$(ms_per_step p1_cholesky kfac)" "$(ms_per_step p2_cholesky kfac)"
row "kfac (eigendecompositions, split)" "$(ms_per_step p1_eigen kfac)" "$(ms_per_step p2_eigen kfac)"
row "kfac (eigen, owners precondition)" "$(ms_per_step p1_preconditioned kfac)" "$(ms_per_step p2_preconditioned kfac)"
grad="$(note_number p2_eigen_tcp "gradients and agreement")"
stat="$(note_number p2_eigen_tcp "statistics")"
refresh="$(note_number p2_eigen_tcp "refresh broadcasts")"
awk -v g="$grad" -v s="$stat" -v r="$refresh" -v n="$steps" -v m="$((after - before))" 'BEGIN {
  predicted = n * (2 * (g + s) + r) * 1e6
  printf "\nkfac (eigendecompositions, split), P = 2 over TCP on lo: %.4g MB sent (lo transmit counter), cost model %.4g MB (gradients %.4g, statistics %.4g, refresh %.4g MB per step per rank): measured/predicted %.4f\n", m / 1e6, predicted / 1e6, g, s, r, m / predicted
}'
echo "Summaries and CSVs: $out/"
