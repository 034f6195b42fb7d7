#!/usr/bin/env bash
# The sweep behind KfacOptions' defaults: each K-FAC setting given runs on the three example
# tasks — the Fashion-MNIST classifier and deep autoencoder (fashion_mnist --quick) and the
# character-level LSTM (char_lm --quick, the independent approximation) — with every other
# setting at the example's default, on the same seed and mini-batches, and the final
# losses are collected into one CSV and a table.
#
#   examples/sweep_kfac_defaults.sh EXAMPLES_DIR OUT_DIR CONFIG... [-- ARGS...]
#
# EXAMPLES_DIR holds the built fashion_mnist and char_lm; CONFIG is lr:damping:kl_clip
# (--kfac-lr, --kfac-damping, --kfac-kl-clip of both examples); ARGS go to every run of
# both (e.g. -- --float). Each configuration writes OUT_DIR/lr<lr>_d<damping>_k<clip>/
# (the runs' CSVs and logs) and a row of OUT_DIR/sweep.csv:
#   lr,damping,kl_clip,classifier_loss,classifier_accuracy,autoencoder_loss,autoencoder_test_loss,char_bpc,char_valid_bpc,seconds
# (the last CSV row of each run: training loss of the last logged steps and the test or
# validation metric; a diverged run's loss reads nan). Progress goes to stderr; the table to
# stdout, sorted by each setting's worst excess over the best training loss of each task,
# max over the tasks of (loss / best − 1): the setting to choose as a default is first.
#
# Example (the sweep recorded in examples/README.md, about 1.5 minutes per configuration
# on 2 cores):
#   examples/sweep_kfac_defaults.sh build/release/examples sweep 0.1:0.1:1e-2 0.2:3e-2:1e-2
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin=$1 out=$2
shift 2
configs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
extra=("$@")
[ ${#configs[@]} -gt 0 ] || { echo "sweep_kfac_defaults.sh: no configuration given" >&2; exit 2; }
for exe in fashion_mnist char_lm; do
  [ -x "$bin/$exe" ] || { echo "sweep_kfac_defaults.sh: $bin/$exe is not an executable" >&2; exit 1; }
done
mkdir -p "$out"
summary="$out/sweep.csv"
[ -f "$summary" ] || echo "lr,damping,kl_clip,classifier_loss,classifier_accuracy,autoencoder_loss,autoencoder_test_loss,char_bpc,char_valid_bpc,seconds" >"$summary"

# The last row of a run's CSV for the optimizer whose name starts with $2: "loss,metric".
last_row() {
  awk -F, -v name="$2" 'index($1, name) == 1 { loss = $4; metric = $5 } END { print loss "," metric }' "$1"
}

for config in "${configs[@]}"; do
  IFS=: read -r lr damping clip <<<"$config"
  if [ -z "$lr" ] || [ -z "$damping" ] || [ -z "$clip" ]; then
    echo "sweep_kfac_defaults.sh: configuration '$config' is not lr:damping:kl_clip" >&2
    exit 2
  fi
  dir="$out/lr${lr}_d${damping}_k${clip}"
  mkdir -p "$dir"
  echo "sweep_kfac_defaults.sh: K-FAC lr $lr, damping $damping, kl_clip $clip ($dir)" >&2
  start=$(date +%s)
  kfac=(--kfac-lr "$lr" --kfac-damping "$damping" --kfac-kl-clip "$clip")
  # Both Fashion-MNIST tasks in parallel (one core each), then the LSTM.
  "$bin/fashion_mnist" --quick --task classifier --optimizers kfac "${kfac[@]}" \
    ${extra[@]+"${extra[@]}"} --out "$dir" >"$dir/classifier.txt" 2>"$dir/classifier.log" &
  classifier=$!
  "$bin/fashion_mnist" --quick --task autoencoder --optimizers kfac "${kfac[@]}" \
    ${extra[@]+"${extra[@]}"} --out "$dir" >"$dir/autoencoder.txt" 2>"$dir/autoencoder.log" &
  autoencoder=$!
  wait "$classifier" || echo "sweep_kfac_defaults.sh: classifier run failed (see $dir/classifier.log)" >&2
  wait "$autoencoder" || echo "sweep_kfac_defaults.sh: autoencoder run failed (see $dir/autoencoder.log)" >&2
  "$bin/char_lm" --quick --optimizers indep "${kfac[@]}" ${extra[@]+"${extra[@]}"} --out "$dir" \
    >"$dir/char_lm.txt" 2>"$dir/char_lm.log" ||
    echo "sweep_kfac_defaults.sh: char_lm run failed (see $dir/char_lm.log)" >&2
  row="$lr,$damping,$clip"
  for run in classifier autoencoder char_lm; do
    if [ -f "$dir/$run.csv" ]; then row="$row,$(last_row "$dir/$run.csv" kfac)"; else row="$row,nan,nan"; fi
  done
  echo "$row,$(($(date +%s) - start))" >>"$summary"
done

# The table: every configuration of the CSV, sorted by its worst excess over the best
# training loss of each task, max over tasks of (loss / best − 1) (a diverged run: inf).
python3 - "$summary" <<'EOF'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tasks = ("classifier_loss", "autoencoder_loss", "char_bpc")
def value(r, k):
    try:
        v = float(r[k])
        return v if math.isfinite(v) else math.inf
    except ValueError:
        return math.inf
best = {t: min(value(r, t) for r in rows) for t in tasks}
for r in rows:
    r["excess"] = max(value(r, t) / best[t] - 1.0 for t in tasks)
print("| lr | λ | KL clip | classifier loss / accuracy | autoencoder loss / test loss | char-LSTM bpc / valid bpc | worst excess |")
print("|---|---|---|---|---|---|---|")
for r in sorted(rows, key=lambda r: r["excess"]):
    print(f"| {r['lr']} | {r['damping']} | {r['kl_clip']} | {float(r['classifier_loss']):.4f} / {float(r['classifier_accuracy']):.3f} "
          f"| {float(r['autoencoder_loss']):.2f} / {float(r['autoencoder_test_loss']):.2f} "
          f"| {float(r['char_bpc']):.3f} / {float(r['char_valid_bpc']):.3f} | {100 * r['excess']:.1f}% |")
EOF
