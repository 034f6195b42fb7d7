#!/usr/bin/env bash
# Turns the CSVs of a kfopt example into PNGs: for every DIR/<task>.csv (header
# optimizer,step,seconds,train_loss,test_metric) it writes DIR/<task>.png with two panels,
# training loss against steps and against seconds (log y), one line per optimizer.
#
#   examples/plot_results.sh [DIR]        (default DIR: out)
#
# Needs gnuplot (Debian: apt-get install gnuplot-nox).
set -euo pipefail

dir="${1:-out}"
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "plot_results.sh: gnuplot not found; install it with: apt-get install gnuplot-nox" >&2
  exit 1
fi
shopt -s nullglob
csvs=("$dir"/*.csv)
if [ ${#csvs[@]} -eq 0 ]; then
  echo "plot_results.sh: no CSV files in $dir (run an example with --out $dir first)" >&2
  exit 1
fi

# pngcairo draws antialiased lines; plain png (libgd) is the fallback.
if gnuplot -e 'set terminal' 2>&1 | grep -q pngcairo; then
  terminal='pngcairo size 1400,560 font "DejaVu Sans,11" noenhanced'
else
  terminal='png size 1400,560 noenhanced'
fi

for csv in "${csvs[@]}"; do
  task="$(basename "$csv" .csv)"
  # Only the examples' training curves; other tables (e.g. char_lm_tune.csv) are skipped.
  if [ "$(head -n 1 "$csv" | tr -d '\r')" != "optimizer,step,seconds,train_loss,test_metric" ]; then
    echo "skipped $csv (not a training-curve CSV)"
    continue
  fi
  png="$dir/$task.png"
  # The optimizers in order of first appearance (column 1, header skipped).
  optimizers="$(awk -F, 'NR > 1 && !seen[$1]++ { printf "%s ", $1 }' "$csv")"
  gnuplot <<EOF
set terminal $terminal
set output "$png"
set datafile separator ","
set key top right
set logscale y
set autoscale yfix
# Labels at 1, 2, 3, 4, 5, 7 times each power of ten (gnuplot labels only the powers themselves).
set ytics ()
do for [k=-6:6] { do for [c in "1 2 3 4 5 7"] { set ytics add (sprintf("%g", c * 10.0**k) c * 10.0**k) } }
set grid xtics ytics mytics lc rgb "#dddddd"
set ylabel "training loss (mean of recent mini-batches)"
optimizers = "$optimizers"
set multiplot layout 1,2 title "$task: training loss"
set xlabel "optimizer steps"
plot for [name in optimizers] "$csv" using 2:(strcol(1) eq name ? \$4 : NaN) \
     skip 1 with lines lw 2 title name
set xlabel "seconds (training time, evaluation excluded)"
plot for [name in optimizers] "$csv" using 3:(strcol(1) eq name ? \$4 : NaN) \
     skip 1 with lines lw 2 title name
unset multiplot
EOF
  echo "wrote $png"
done
