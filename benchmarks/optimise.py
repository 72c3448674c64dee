"""Benchmark: diffusion samplers (DDS/PIS) as global optimisers vs baselines at equal budgets.

    python benchmarks/optimise.py --quick        # 2-D targets + five 10-D functions, ~ 6 min on 2 cores
    python benchmarks/optimise.py --dims 10      # the 10-D target: five functions, 20 seeds (~ 20 min)
    python benchmarks/optimise.py --dims 50 --functions rastrigin --methods dds-coordwise adam langevin \
        random cmaes --out benchmarks/results/optimise_50d.json   # 50-D, 50,000 evaluations (~ 25 min)
    python benchmarks/optimise.py                # every function and variant, 20 seeds (hours)

Writes benchmarks/results/optimise.json atomically after every row, under ``runs.quick`` or
``runs.full`` (the other run's rows are kept), and prints a table with one row per (function,
dimension, method): success rate over the seeds (|f - f*| < tol, tol = 1e-2 in every
dimension), median final gap, function evaluations used (values and gradients each count 1)
and wall time; then, per (function, dimension), whether a diffusion variant has a higher
success rate than every baseline that ran (the issue's 10-D target: on at least three
functions).

Polish: DDS/PIS, annealed Langevin and random search all end with the same polish of their 8
best points (successive-halving projected Adam, 641 evaluations of the budget); Adam with
restarts is local search throughout and CMA-ES converges locally by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.random as jr
import numpy as np

from pdegen._io import write_json_atomic
from pdegen.optimise import TEST_FUNCTIONS, minimise, test_function

jax.config.update("jax_enable_x64", True)

TOLERANCE = 1e-2
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "optimise.json")
BUDGETS = {2: 4000, 10: 10000, 50: 50000}

# The diffusion optimiser's defaults (minimise): DDS, batch 32, 16 steps, 4 temperatures,
# log-variance loss, plain MLP, final polish of the 8 best points (refine_steps=40: the budget of
# 40 Adam steps from each, spent by successive halving).
VARIANTS = {
    "dds": dict(method="dds"),
    "dds-grad": dict(method="dds", gradient_informed=True, num_steps=8, batch_size=16),
    "dds-coordwise": dict(method="dds", network="coordinatewise", width=32),
    "dds-coordwise-grad": dict(
        method="dds",
        network="coordinatewise",
        width=32,
        gradient_informed=True,
        num_steps=8,
        batch_size=16,
    ),
    "dds-norefine": dict(method="dds", refine_steps=0),
    "pis": dict(method="pis"),
    "adam": dict(method="adam"),
    "langevin": dict(method="langevin"),
    "random": dict(method="random"),
    "cmaes": dict(method="cmaes"),
}
BASELINES = ("adam", "langevin", "random", "cmaes")
TARGET_10D = ["rastrigin", "styblinski_tang", "carrillo", "ackley", "levy"]
# quick: the 2-D targets with every baseline (20 seeds), and five 10-D functions with the
# coordinate-wise network and every baseline (5 seeds); about 6 min on 2 busy cores
QUICK = {
    2: (["ackley", "rastrigin"], ["dds", *BASELINES], 20),
    10: (TARGET_10D, ["dds-coordwise", *BASELINES], 5),
}
# full 10-D: the target functions with the coordinate-wise network and every baseline, 20 seeds
FULL = {10: (TARGET_10D, ["dds-coordwise", *BASELINES], 20)}


def _load(path):
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data.get("runs"), dict) else {}


def summarise(rows):
    """Per (function, dim): the best diffusion variant's success rate, the best baseline's, and
    whether the former is strictly higher (only rows that ran; None without both kinds)."""
    out = []
    for dim, name in dict.fromkeys((r["dim"], r["function"]) for r in rows):
        mine = [r for r in rows if (r["dim"], r["function"]) == (dim, name)]
        ours = [r for r in mine if r["method"] not in BASELINES]
        theirs = [r for r in mine if r["method"] in BASELINES]
        if not ours or not theirs:
            continue
        best = max(ours, key=lambda r: r["success_rate"])
        rival = max(theirs, key=lambda r: r["success_rate"])
        out.append(
            dict(
                function=name,
                dim=dim,
                method=best["method"],
                success_rate=best["success_rate"],
                best_baseline=rival["method"],
                baseline_success_rate=rival["success_rate"],
                baselines=sorted(r["method"] for r in theirs),
                beats_every_baseline=best["success_rate"] > rival["success_rate"],
            )
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default 20)")
    ap.add_argument("--functions", nargs="*", default=None)
    ap.add_argument("--dims", nargs="*", type=int, default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--out", default=RESULTS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    plan = []
    dims = args.dims or [2, 10]
    for dim in dims:
        if args.quick and dim in QUICK:
            fns, methods, seeds = QUICK[dim]
        elif dim in FULL and args.dims:
            fns, methods, seeds = FULL[dim]
        else:
            fns, methods, seeds = list(TEST_FUNCTIONS), list(VARIANTS), 20
        fns = args.functions or fns
        methods = args.methods or methods
        seeds = args.seeds or seeds
        plan += [(name, dim, m, seeds) for name in fns for m in methods]
    mode = "quick" if args.quick else "full"
    rows = []
    header = (
        f"{'function':16s} {'d':>3s} {'method':18s} {'success':>8s} {'median gap':>11s} "
        f"{'evals':>7s} {'time/s':>7s}"
    )
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for name, dim, m, seeds in plan:
        prob = test_function(name, dim)
        budget = BUDGETS.get(dim, BUDGETS[max(BUDGETS)])
        keys = jr.split(jr.key(2026), seeds)
        t0 = time.perf_counter()
        res = minimise(prob.fn, prob.domain, key=keys, max_evaluations=budget, **VARIANTS[m])
        secs = time.perf_counter() - t0
        gaps = np.abs(np.asarray(res.value) - prob.minimum)
        row = dict(
            function=name,
            dim=dim,
            method=m,
            seeds=seeds,
            success_rate=float(np.mean(gaps < TOLERANCE)),
            median_gap=float(np.median(gaps)),
            budget=budget,
            evaluations=int(res.num_evaluations),
            seconds=secs,
            gaps=gaps.tolist(),
            tolerance=TOLERANCE,
        )
        rows.append(row)
        print(
            f"{name:16s} {dim:3d} {m:18s} {row['success_rate']:8.2f} "
            f"{row['median_gap']:11.3g} {row['evaluations']:7d} {secs:7.1f}",
            flush=True,
        )
        data = _load(args.out)
        runs = data.get("runs", {})
        runs[mode] = {
            "tolerance": TOLERANCE,
            "budgets": {str(k): v for k, v in BUDGETS.items()},
            "variants": VARIANTS,
            "seconds": time.perf_counter() - started,
            "polish": "dds/pis, langevin and random: successive-halving Adam polish "
            "of the 8 best points (refine_steps=40, 641 evaluations); "
            "adam: restarts of 200 Adam steps; cmaes: IPOP restarts",
            "command": " ".join(["python", "benchmarks/optimise.py", *(argv or [])]),
            "rows": rows,
            "summary": summarise(rows),
        }
        write_json_atomic(args.out, {"runs": runs})
    print()
    for item in summarise(rows):
        verdict = "beats" if item["beats_every_baseline"] else "does not beat"
        print(
            f"{item['function']:16s} d={item['dim']:<3d} {item['method']} "
            f"{item['success_rate']:.2f} {verdict} every baseline (best "
            f"{item['best_baseline']} {item['baseline_success_rate']:.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
