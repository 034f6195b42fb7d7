# test_metric against optimizer steps, one line per optimizer, for any example CSV (used for examples/ekf_online)
# (examples/plot_results.sh draws the train_loss panels; this draws the test_metric column).
#   gnuplot -e "csv='DIR/drift.csv'; png='DIR/drift_test_metric.png'; ylabel='|theta - theta*|'; logy=1" \
#           examples/plot_test_metric.gp
if (!exists("csv") || !exists("png")) { print "set csv='...' and png='...' with -e"; exit }
if (!exists("ylabel")) ylabel = "test_metric"
if (!exists("logy")) logy = 0
set terminal pngcairo size 900,560 font "DejaVu Sans,11" noenhanced
set output png
set datafile separator ","
set key outside right top
set grid lc rgb "#dddddd"
if (logy) { set logscale y }
set xlabel "optimizer steps (one observation each)"
set ylabel ylabel
optimizers = system(sprintf("awk -F, 'NR > 1 && !seen[$1]++ { printf \"%%s \", $1 }' '%s'", csv))
set title system(sprintf("basename '%s' .csv", csv)) . ": test_metric"
set format y "%g"
plot for [name in optimizers] csv using 2:(strcol(1) eq name ? $5 : NaN) skip 1 with lines lw 2 title name
