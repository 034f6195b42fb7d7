#!/usr/bin/env python3
"""Turns Google Benchmark JSON from bench_kron into a markdown report and a log-log plot.

Usage: report.py MAIN_JSON [THREADS_JSON ...] --out DIR [--title TEXT]

MAIN_JSON is a run of bench_kron with --benchmark_format=json (names
<operation>/<implementation>/<scalar>/<n>[/...]). THREADS_JSON files are runs of the
threading subset, each tagged by a "threads_label" custom context (set through the
KFOPT_BENCH_LABEL environment variable of run_benchmarks.sh). Writes DIR/bench_kron.md,
DIR/bench_kron.png (with gnuplot, if installed) and DIR/plot_data.tsv. Python 3 standard
library only.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict

# Operations in report order, with what the row measures.
OPERATIONS = [
    ("stats", "statistics accumulation: one 256×n batch into a factor moving average "
              "(GFLOP/s; kfopt and SYRK count n²·256 flops, GEMM 2n²·256)"),
    ("gemm", "n×n×n matrix product (GFLOP/s), the scale of the n³ line"),
    ("chol_inverse", "damped inverse (A + λI)⁻¹ by Cholesky, explicit matrix"),
    ("eig", "symmetric eigendecomposition with vectors (any-λ damping, inverse roots)"),
    ("inv_sqrt", "eigendecomposition + dense (A + λI)^{-1/2}"),
    ("rnn_option1", "RNN K-FAC Option 1 preprocessing, one layer (A and G both n×n)"),
    ("rnn_option2", "RNN K-FAC Option 2 preprocessing, one layer (A and G both n×n)"),
    ("kron_sum_inverse", "(A⊗B + C⊗D)⁻¹ decomposition, all four n×n"),
    ("kl_projection", "KL projection of X1⊗Y1 + X2⊗Y2 onto A⊗B, all n×n"),
    ("precondition", "applying G⁻¹ Z A⁻¹ to a gradient Z (n×n layer)"),
    ("warm_inverse", "damped inverse refreshed after one moving-average step of weight 1−β "
                     "by WarmStartedDampedInverse: an O(n²) screen, then the previous inverse "
                     "reused, a warm-started Newton–Schulz iteration, or the exact Cholesky "
                     "inverse (fall-back); rel. error against an exact solve"),
]
RATE_OPS = {"stats", "gemm"}


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data.get("benchmarks", []):
        if b.get("run_type") == "aggregate" or "error_occurred" in b and b["error_occurred"]:
            continue
        parts = b["name"].split("/")
        if len(parts) < 4:
            continue
        op, impl, scalar = parts[0], parts[1], parts[2]
        try:
            n = int(parts[3])
        except ValueError:
            continue
        unit = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
        time_key = "real_time" if "real_time" in parts[-1] or b["name"].endswith(
            "real_time") else "cpu_time"
        entry = {"ms": b[time_key] * unit}
        for key in ("GFLOP/s", "rel_err", "iterations", "fell_back", "residual", "reused"):
            if key in b:
                entry[key] = b[key] / 1e9 if key == "GFLOP/s" else b[key]
        rows[(op, impl, scalar, n)] = entry
    return data.get("context", {}), rows


def fmt_ms(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}×"


def get(rows, op, impl, scalar, n, key="ms"):
    e = rows.get((op, impl, scalar, n))
    return None if e is None else e.get(key)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def table(rows, op, scalar, sizes):
    impls = sorted({k[1] for k in rows if k[0] == op and k[2] == scalar})
    if not impls:
        return []
    key = "GFLOP/s" if op in RATE_OPS else "ms"
    unit = "GFLOP/s" if key == "GFLOP/s" else "ms"
    out = ["| " + f"{op} ({scalar}, {unit})" + " | " + " | ".join(f"n={n}" for n in sizes) + " |",
           "|---|" + "---:|" * len(sizes)]
    for impl in impls:
        vals = [get(rows, op, impl, scalar, n, key) for n in sizes]
        if key == "GFLOP/s":
            cells = ["—" if v is None else f"{v:.1f}" for v in vals]
        else:
            cells = [fmt_ms(v) for v in vals]
        out.append(f"| {impl} | " + " | ".join(cells) + " |")
    # Ratio rows: kfopt against the LAPACK / Eigen references of the same run.
    ratio_rows = []
    if op in ("chol_inverse", "eig"):
        for impl in ("kfopt_eigen", "kfopt_lapack", "eigen", "eigen_llt"):
            if impl in impls and "lapack" in impls:
                ratio_rows.append((f"{impl} / lapack", impl, "lapack", False))
    if op in ("inv_sqrt", "rnn_option1", "rnn_option2"):
        if "kfopt_eigen" in impls and "kfopt_lapack" in impls:
            ratio_rows.append(("kfopt_eigen / kfopt_lapack", "kfopt_eigen", "kfopt_lapack", False))
    if op == "stats":
        for impl in ("kfopt_eigen", "kfopt_lapack", "eigen_syrk", "syrk_blas"):
            if impl in impls:
                ratio_rows.append((f"{impl} / best GEMM rate", impl, None, True))
        for impl, gemm in (("kfopt_eigen", "gemm_eigen"), ("kfopt_lapack", "gemm_blas")):
            if impl in impls and gemm in impls:
                ratio_rows.append((f"{impl} / {gemm} rate", impl, gemm, "rate"))
    for label, a, b, vs_gemm in ratio_rows:
        cells = []
        for n in sizes:
            if vs_gemm == "rate":
                r = ratio(get(rows, op, a, scalar, n, "GFLOP/s"), get(rows, op, b, scalar, n, "GFLOP/s"))
                cells.append("—" if r is None else f"{100 * r:.0f}%")
            elif vs_gemm:
                best = max([v for v in (get(rows, "stats", "gemm_eigen", scalar, n, "GFLOP/s"),
                                        get(rows, "stats", "gemm_blas", scalar, n, "GFLOP/s"),
                                        get(rows, "stats", "gemm_kfopt_kernel", scalar, n, "GFLOP/s"))
                            if v is not None], default=None)
                r = ratio(get(rows, op, a, scalar, n, "GFLOP/s"), best)
                cells.append("—" if r is None else f"{100 * r:.0f}%")
            else:
                cells.append(fmt_ratio(ratio(get(rows, op, a, scalar, n), get(rows, op, b, scalar, n))))
        out.append(f"| **{label}** | " + " | ".join(cells) + " |")
    return out


def warm_path(e):
    if e.get("fell_back", 0):
        return "exact (Cholesky)"
    if e.get("reused", 0):
        return "reused"
    return "iterated"


def warm_label(impl):
    """'kfopt_step0.05' -> '1−β = 0.05'; 'kfopt_iterate_step1e-06' -> '1−β = 1e-06,
    iteration forced (iteration_cost = 0)'."""
    step = impl.split("step")[-1]
    return f"1−β = {step}" + (", iteration forced" if "iterate_" in impl else "")


def warm_table(rows, sizes):
    impls = sorted({k[1] for k in rows if k[0] == "warm_inverse"},
                   key=lambda s: -float(s.split("step")[-1]))
    if not impls:
        return []
    out = ["| warm_inverse (double) | n | ms | path | iterations | residual estimate | "
           "rel. error of (A+λI)⁻¹Z | ÷ syevd time | ÷ Cholesky inverse time |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for impl in impls:
        for n in sizes:
            e = rows.get(("warm_inverse", impl, "double", n))
            if e is None:
                continue
            syevd = get(rows, "eig", "lapack", "double", n)
            chol = get(rows, "chol_inverse", "kfopt_eigen", "double", n)
            out.append(
                f"| {warm_label(impl)} | {n} | "
                f"{fmt_ms(e['ms'])} | {warm_path(e)} | {e.get('iterations', 0):.0f} | "
                f"{e.get('residual', float('nan')):.1e} | "
                f"{e.get('rel_err', float('nan')):.1e} | {fmt_ratio(ratio(e['ms'], syevd))} | "
                f"{fmt_ratio(ratio(e['ms'], chol))} |")
    return out


def targets(rows, sizes):
    big = [n for n in sizes if n >= 256]
    out = ["| target | measured (same run, double) | met? |", "|---|---|---|"]

    def worst(op, a, b, ns, scalar="double"):
        rs = [ratio(get(rows, op, a, scalar, n), get(rows, op, b, scalar, n)) for n in ns]
        rs = [r for r in rs if r is not None]
        return max(rs) if rs else None

    for impl in ("kfopt_eigen", "kfopt_lapack"):
        w = worst("chol_inverse", impl, "lapack", big)
        out.append(f"| Cholesky damped inverse ≤ 1.0× potrf+potri, n ≥ 256 ({impl}) | worst "
                   f"{fmt_ratio(w)} | {'yes' if w is not None and w <= 1.0 else 'no'} |")
    w = worst("eig", "kfopt_lapack", "lapack", big)
    out.append(f"| eig ≤ 1.0× syevd with the backend, n ≥ 256 | worst {fmt_ratio(w)} | "
               f"{'yes' if w is not None and w <= 1.0 else 'no'} |")
    w = worst("eig", "kfopt_eigen", "lapack", big)
    r1024 = ratio(get(rows, "eig", "kfopt_eigen", "double", 1024),
                  get(rows, "eig", "lapack", "double", 1024))
    out.append(f"| eig ≤ 2.0× syevd without the backend, n ≥ 256 | worst {fmt_ratio(w)}, "
               f"n=1024 {fmt_ratio(r1024)} | {'yes' if w is not None and w <= 2.0 else 'no'} |")
    for impl in ("kfopt_eigen", "kfopt_lapack"):
        fr, fs = [], []
        for n in big:
            best = max([v for v in (get(rows, "stats", "gemm_eigen", "double", n, "GFLOP/s"),
                                    get(rows, "stats", "gemm_blas", "double", n, "GFLOP/s"),
                                    get(rows, "stats", "gemm_kfopt_kernel", "double", n, "GFLOP/s"))
                        if v is not None], default=None)
            same = get(rows, "stats", "gemm_eigen" if impl == "kfopt_eigen" else "gemm_blas",
                       "double", n, "GFLOP/s")
            r = ratio(get(rows, "stats", impl, "double", n, "GFLOP/s"), best)
            if r is not None:
                fr.append(r)
            r = ratio(get(rows, "stats", impl, "double", n, "GFLOP/s"), same)
            if r is not None:
                fs.append(r)
        if not fr:
            continue
        m, ms = min(fr), (min(fs) if fs else None)
        out.append(f"| statistics ≥ 60% of GEMM rate, n ≥ 256 ({impl}) | worst {100 * m:.0f}% of the "
                   f"best GEMM (OpenBLAS, Eigen or kfopt's kernel)"
                   + ("" if ms is None else f", {100 * ms:.0f}% of its own library's GEMM")
                   + f" | {'yes' if m >= 0.6 else 'no'} |")
    syevd = get(rows, "eig", "lapack", "double", 1024)
    for impl in sorted({k[1] for k in rows if k[0] == "warm_inverse"}):
        e = rows.get(("warm_inverse", impl, "double", 1024))
        if e is None or syevd is None or "iterate_" in impl:  # forced rows: not a target
            continue
        speed = syevd / e["ms"]
        ok = speed >= 3 and e.get("rel_err", 1) <= 1e-8
        how = warm_path(e)
        if how == "iterated":
            how += " (%d steps)" % e.get("iterations", 0)
        step = warm_label(impl)
        out.append(f"| warm-started ≥ 3× faster than syevd at n=1024, rel. error ≤ 1e-8 "
                   f"({step}) | {speed:.2f}× faster, error {e.get('rel_err', float('nan')):.1e}, "
                   f"{how} | {'yes' if ok else 'no'} |")
    return out


def threads_table(thread_runs):
    if not thread_runs:
        return []
    labels = [label for label, _ in thread_runs]
    keys = sorted({(k[0], k[1], k[3]) for _, rows in thread_runs for k in rows
                   if k[2] == "double"})
    out = ["| operation / implementation / n | " + " | ".join(labels) + " |",
           "|---|" + "---:|" * len(labels)]
    for op, impl, n in keys:
        cells = [fmt_ms(get(rows, op, impl, "double", n)) for _, rows in thread_runs]
        if all(c == "—" for c in cells):
            continue
        out.append(f"| {op} / {impl} / {n} | " + " | ".join(cells) + " |")
    return out


def plot(rows, out_dir, sizes):
    series = [
        ("eig", "lapack", "syevd (LAPACK)"),
        ("eig", "kfopt_lapack", "kfopt eig, LAPACK backend"),
        ("eig", "kfopt_eigen", "kfopt eig, Eigen backend"),
        ("chol_inverse", "lapack", "potrf+potri (LAPACK)"),
        ("chol_inverse", "kfopt_lapack", "kfopt Cholesky inverse, LAPACK backend"),
        ("chol_inverse", "kfopt_eigen", "kfopt Cholesky inverse, Eigen backend"),
        ("chol_inverse", "eigen_llt", "Eigen LLT solve against I"),
        ("warm_inverse", "kfopt_step0.05", "warm-started refresh, 1−β = 0.05"),
        ("gemm", "blas", "n×n×n GEMM (OpenBLAS)"),
    ]
    series = [s for s in series if any(get(rows, s[0], s[1], "double", n) for n in sizes)]
    data_path = os.path.join(out_dir, "plot_data.tsv")
    with open(data_path, "w") as f:
        f.write("n\t" + "\t".join(s[2].replace(" ", "_") for s in series) + "\n")
        for n in sizes:
            vals = [get(rows, op, impl, "double", n) for op, impl, _ in series]
            f.write(str(n) + "\t" + "\t".join("NaN" if v is None else f"{v:.6g}" for v in vals)
                    + "\n")
    if shutil.which("gnuplot") is None:
        print("report.py: gnuplot not found, no PNG", file=sys.stderr)
        return None
    # The n³ line through syevd at the largest size measured.
    anchor_n = max([n for n in sizes if get(rows, "eig", "lapack", "double", n)], default=None)
    anchor = get(rows, "eig", "lapack", "double", anchor_n) if anchor_n else None
    png = os.path.join(out_dir, "bench_kron.png")
    cmds = [
        "set terminal pngcairo size 1100,750 font ',11'",
        f"set output '{png}'",
        "set logscale xy",
        "set grid",
        "set key top left",
        "set xlabel 'n (factor is n×n)'",
        "set ylabel 'time per call [ms]'",
        "set title 'kfopt factor inversion costs (double, one thread, same run)'",
        f"set xrange [{min(sizes) * 0.9}:{max(sizes) * 1.1}]",
        "set xtics (" + ", ".join(f"'{n}' {n}" for n in sizes) + ")",
    ]
    plots = []
    for i, (_, _, label) in enumerate(series):
        plots.append(f"'{data_path}' using 1:{i + 2} with linespoints lw 2 title '{label}'")
    if anchor:
        plots.append(f"{anchor}*(x/{anchor_n})**3 with lines dt 2 lc rgb 'black' "
                     f"title 'n³ slope'")
    cmds.append("plot " + ", \\\n     ".join(plots))
    subprocess.run(["gnuplot"], input="\n".join(cmds) + "\n", text=True, check=True)
    return png


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("main_json")
    ap.add_argument("thread_json", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="bench/run_benchmarks.sh")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    context, rows = load(args.main_json)
    sizes = sorted({k[3] for k in rows})
    thread_runs = []
    for path in args.thread_json:
        ctx, trows = load(path)
        thread_runs.append((ctx.get("threads_label", os.path.basename(path)), trows))

    md = ["# kfopt factor inversion benchmarks", ""]
    md.append(f"Command: `{args.command}` — {context.get('date', '')}, host "
              f"{context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs at "
              f"{context.get('mhz_per_cpu', '?')} MHz, load average "
              f"{', '.join(f'{x:.1f}' for x in context.get('load_avg', []))}.")
    md.append("")
    md.append(f"Time: {context.get('time', '?')} time per call, in ms. Eigen SIMD: "
              f"{context.get('eigen_simd', '?')}, Eigen threads {context.get('eigen_threads', '?')}; "
              f"OpenBLAS core {context.get('openblas_core', '?')}, threads "
              f"{context.get('openblas_threads', '?')}. The machine is shared with other jobs: "
              "absolute times are noisy, ratios are taken within this one run.")
    md.append("")
    md.append("## Targets")
    md.append("")
    md += targets(rows, sizes)
    md.append("")
    md.append("![log-log plot](bench_kron.png)")
    md.append("")
    for op, what in OPERATIONS:
        if not any(k[0] == op for k in rows):
            continue
        md.append(f"## {op}")
        md.append("")
        md.append(what + ".")
        md.append("")
        if op == "warm_inverse":
            md += warm_table(rows, sizes)
        else:
            for scalar in ("double", "float"):
                t = table(rows, op, scalar, sizes)
                if t:
                    md += t
                    md.append("")
        md.append("")
    if thread_runs:
        md.append("## Threads (wall-clock ms, double)")
        md.append("")
        md += threads_table(thread_runs)
        md.append("")
    md_path = os.path.join(args.out, "bench_kron.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    png = plot(rows, args.out, sizes)
    print(f"wrote {md_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
