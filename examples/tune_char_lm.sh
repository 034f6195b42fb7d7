#!/usr/bin/env bash
# A hyperparameter screen for char_lm's K-FAC runs: trains one optimizer under every
# configuration given, on the same seeds and mini-batches, and collects the "mean of N"
# rows into one CSV and a table sorted by training bits/char.
#
#   examples/tune_char_lm.sh CHAR_LM OUT_DIR OPTIMIZER "SEEDS" STEPS CONFIG... [-- ARGS...]
#
# CONFIG is damping:kl_clip:momentum (char_lm's --kfac-damping, --kfac-kl-clip,
# --kfac-momentum); every other setting is char_lm's default or comes from ARGS (passed
# to every char_lm run, e.g. -- --hidden 64 --text FILE). Each configuration writes
# OUT_DIR/<optimizer>_d<damping>_k<clip>_m<momentum>/ (char_lm.csv and the run's log) and
# a row of OUT_DIR/tune.csv:
#   optimizer,damping,kl_clip,momentum,steps,seeds,train_bpc,valid_bpc,seconds
# (seeds joined by "/"; train_bpc: the mean over the seeds of the training bits/char of the
# last 25 updates, --log-every 25 being passed to every run).
#
# Example (the screen behind the independent approximation's damping default, about
# 2 minutes per configuration on 2 cores):
#   examples/tune_char_lm.sh ./char_lm tune indep "3,4" 300 1e-2:1e-2:0.9 3e-2:1e-2:0.9
# Progress goes to stderr; the sorted table to stdout.
set -euo pipefail

if [ $# -lt 6 ]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin=$1 out=$2 optimizer=$3 seeds=$4 steps=$5
shift 5
configs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
extra=("$@")
[ ${#configs[@]} -gt 0 ] || { echo "tune_char_lm.sh: no configuration given" >&2; exit 2; }
[ -x "$bin" ] || { echo "tune_char_lm.sh: $bin is not an executable char_lm" >&2; exit 1; }
mkdir -p "$out"
summary="$out/tune.csv"
[ -f "$summary" ] || echo "optimizer,damping,kl_clip,momentum,steps,seeds,train_bpc,valid_bpc,seconds" >"$summary"
jobs=$(echo "$seeds" | tr ',' '\n' | grep -c .)
cores=$(nproc 2>/dev/null || echo 2)
[ "$jobs" -le "$cores" ] || jobs=$cores

for config in "${configs[@]}"; do
  IFS=: read -r damping clip momentum <<<"$config"
  if [ -z "$damping" ] || [ -z "$clip" ] || [ -z "$momentum" ]; then
    echo "tune_char_lm.sh: configuration '$config' is not damping:kl_clip:momentum" >&2
    exit 2
  fi
  dir="$out/${optimizer}_d${damping}_k${clip}_m${momentum}"
  mkdir -p "$dir"
  echo "tune_char_lm.sh: $optimizer damping $damping, kl_clip $clip, momentum $momentum ($dir)" >&2
  "$bin" --optimizers "$optimizer" --seeds "$seeds" --jobs "$jobs" --steps "$steps" --log-every 25 \
    --kfac-damping "$damping" --kfac-kl-clip "$clip" --kfac-momentum "$momentum" \
    ${extra[@]+"${extra[@]}"} --out "$dir" >"$dir/summary.txt" 2>"$dir/progress.txt"
  # With one seed the run's own row is the mean; with several, the "mean of N" row.
  row=$(grep -E '^kfac_[a-z0-9]+ +(mean of [0-9]+|[0-9]+) ' "$dir/summary.txt" | tail -n 1)
  if [ -z "$row" ]; then
    echo "tune_char_lm.sh: no summary row in $dir/summary.txt (see $dir/progress.txt)" >&2
    exit 1
  fi
  if [ "$(echo "$row" | awk '{print $2}')" = "mean" ]; then
    read -r name train valid seconds <<<"$(echo "$row" | awk '{print $1, $6, $7, $8}')"
  else
    read -r name train valid seconds <<<"$(echo "$row" | awk '{print $1, $4, $5, $6}')"
  fi
  echo "$name,$damping,$clip,$momentum,$steps,${seeds//,//},$train,$valid,$seconds" >>"$summary"
done

echo "optimizer damping kl_clip momentum steps seeds train_bpc valid_bpc seconds"
tail -n +2 "$summary" | sort -t, -k7,7g | tr ',' ' '
