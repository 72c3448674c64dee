"""Benchmark: diffusion samplers (DDS/PIS) as global optimisers vs baselines at equal budgets.

    python benchmarks/optimise.py --quick        # ~ a few minutes on 2 CPU cores
    python benchmarks/optimise.py                # more methods/variants, larger budgets

Writes benchmarks/results/optimise.json atomically (after every row) and prints a table with
one row per (function, dimension, method): success rate over the seeds (|f - f*| < tol,
tol = 1e-2 in every dimension), median final gap, function evaluations used (values and
gradients each count 1) and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.random as jr
import numpy as np

from pdegen.inverse import TEST_FUNCTIONS, minimise, test_function

jax.config.update("jax_enable_x64", True)

TOLERANCE = 1e-2
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "optimise.json")

DDS_BASE = dict(method="dds", batch_size=32, num_steps=16, num_temperatures=4,
                gradient_informed=False)
VARIANTS = {
    "dds": DDS_BASE,
    "dds-grad": {**DDS_BASE, "gradient_informed": True, "num_steps": 8, "batch_size": 16},
    "dds-coordwise": {**DDS_BASE, "network": "coordinatewise"},
    "pis": {**DDS_BASE, "method": "pis"},
    "adam": dict(method="adam"),
    "langevin": dict(method="langevin"),
    "random": dict(method="random"),
    "cmaes": dict(method="cmaes"),
}


def atomic_write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--functions", nargs="*", default=list(TEST_FUNCTIONS))
    ap.add_argument("--dims", nargs="*", type=int, default=[2, 10])
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        budgets = {2: 4000, 10: 10000}
        methods = args.methods or ["dds", "adam", "langevin", "random", "cmaes"]
    else:
        budgets = {2: 20000, 10: 60000}
        methods = args.methods or list(VARIANTS)
    keys = jr.split(jr.key(2026), args.seeds)
    rows = []
    header = (f"{'function':16s} {'d':>3s} {'method':14s} {'success':>8s} {'median gap':>11s} "
              f"{'evals':>7s} {'time/s':>7s}")
    print(header)
    print("-" * len(header))
    for name in args.functions:
        for dim in args.dims:
            prob = test_function(name, dim)
            budget = budgets.get(dim, budgets[max(budgets)])
            for m in methods:
                t0 = time.perf_counter()
                res = minimise(prob.fn, prob.domain, key=keys, max_evaluations=budget,
                               **VARIANTS[m])
                secs = time.perf_counter() - t0
                gaps = np.abs(np.asarray(res.value) - prob.minimum)
                row = dict(function=name, dim=dim, method=m, seeds=args.seeds,
                           success_rate=float(np.mean(gaps < TOLERANCE)),
                           median_gap=float(np.median(gaps)), budget=budget,
                           evaluations=int(res.num_evaluations), seconds=secs,
                           gaps=gaps.tolist(), tolerance=TOLERANCE)
                rows.append(row)
                print(f"{name:16s} {dim:3d} {m:14s} {row['success_rate']:8.2f} "
                      f"{row['median_gap']:11.3g} {row['evaluations']:7d} {secs:7.1f}",
                      flush=True)
                atomic_write_json(args.out, {"quick": args.quick, "tolerance": TOLERANCE,
                                             "budgets": budgets, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
