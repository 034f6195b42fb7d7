#!/usr/bin/env python3
"""Reads a JSON run of bench_kfac_step and prints, per precision and K-FAC configuration,
the wall-clock time per training step on 1 and 2 threads, the speed-up of 2 threads over 1
(whole step and the optimizer's part), and the K-FAC/Adam ratio at each thread count; then
the one-thread K-FAC/Adam ratios per batch size (Cholesky refresh at its step).

    build/bench/bench/bench_kfac_step --benchmark_out=kfac_step.json --benchmark_out_format=json
    python3 bench/kfac_step_report.py kfac_step.json
"""
import json
import re
import sys


def parse(name):
    """'BM_KfacStep<float>/batch:1000/T_stats:1/.../threads:2/...' -> (kind, scalar, args)."""
    m = re.match(r"BM_(\w+)Step<(\w+)>/(.*)", name)
    if not m:
        return None
    args = dict(re.findall(r"(\w+):([\d.]+)", m.group(3)))
    args.pop("min_time", None)
    return m.group(1), m.group(2), args


def main(path):
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    adam, kfac = {}, {}
    for r in runs:
        if r.get("run_type", "iteration") != "iteration" or "error_occurred" in r:
            continue
        parsed = parse(r["name"])
        if parsed is None:
            continue
        kind, scalar, args = parsed
        threads = int(args.pop("threads"))
        row = (r["ms_per_step"], r["optimizer_ms_per_step"])
        if kind == "Adam":
            adam[(scalar, args["batch"], threads)] = row
        else:
            key = (scalar, args["batch"], args["T_stats"], args.get("inverse", "0"), args["async"])
            kfac.setdefault(key, {})[threads] = row
    inverse = {"0": "Cholesky", "1": "eigendecomposition"}
    print("| precision | batch | T_stats | refresh | async | ms/step, 1 thread | 2 threads | "
          "speed-up | optimizer ms, 1 thread | 2 threads | speed-up | K-FAC/Adam, 1 thread | "
          "2 threads |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(kfac):
        scalar, batch, t_stats, inv, asynchronous = key
        by_threads = kfac[key]
        if 1 not in by_threads or 2 not in by_threads:
            continue
        (s1, o1), (s2, o2) = by_threads[1], by_threads[2]
        a1 = adam.get((scalar, batch, 1), (float("nan"),))[0]
        a2 = adam.get((scalar, batch, 2), (float("nan"),))[0]
        print(f"| {scalar} | {batch} | {t_stats} | {inverse.get(inv, inv)} | {asynchronous} | "
              f"{s1:.1f} | {s2:.1f} | {s1 / s2:.2f}× | {o1:.1f} | {o2:.1f} | {o1 / o2:.2f}× | "
              f"{s1 / a1:.2f}× | {s2 / a2:.2f}× |")
    print()
    print("| precision | batch | Adam ms/step | K-FAC, statistics every step | every 5 steps |")
    print("|---|---:|---:|---:|---:|")
    for (scalar, batch, threads), (a, _) in sorted(adam.items(), key=lambda kv: (kv[0][0], int(kv[0][1]), kv[0][2])):
        if threads != 1:
            continue
        cells = []
        for t_stats in ("1", "5"):
            row = kfac.get((scalar, batch, t_stats, "0", "0"), {}).get(1)
            cells.append(f"{row[0]:.1f} ({row[0] / a:.2f}×)" if row else "—")
        print(f"| {scalar} | {batch} | {a:.1f} | {cells[0]} | {cells[1]} |")
    print()
    for (scalar, batch, threads), (s, o) in sorted(adam.items()):
        print(f"Adam {scalar}, batch {batch}, {threads} thread(s): {s:.1f} ms/step "
              f"(optimizer {o:.2f} ms)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kfac_step_report.py RUN.json")
    main(sys.argv[1])
