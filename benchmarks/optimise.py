"""Benchmark: diffusion samplers (DDS / PIS) as global optimisers against baselines, on random
BBOB-style instances, at equal budgets.

    python benchmarks/optimise.py --quick      # 2-D, every function, 20 instances (minutes)
    python benchmarks/optimise.py              # 10-D, 20 instances per function and kind (hours)
    python benchmarks/optimise.py --dims 10 --functions rastrigin --methods dds cmaes

Every function appears as random instances ``g(x) = f(R (x - s) + x*)`` with a Haar rotation
``R`` and a shift ``s`` (``pdegen.optimise.sample_instances``): the "rotated-shifted" block. The
"separable" block (``R = I``, shift per coordinate) is kept apart, labelled, with the
coordinate-wise 1-D search beside it. The same instances (seeded per function, dimension and
kind) go to every method. Success: final gap below 1e-3. Each method's inductive bias is
printed next to its rows. Also written: runtime-to-target data (first evaluation count at which
each instance's gap reaches 10, 1, 0.1, 0.01, 1e-3) and the COCO-style ECDF figure (fraction of
(instance, target) pairs reached against evaluations) ``benchmarks/results/optimise_ecdf.png``.

Writes ``benchmarks/results/optimise.json`` atomically after every row; rows already there
(same function, kind, dimension, method, budget, instances) are kept and skipped (resume).
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

from pdegen._io import atomic_path, write_json_atomic
from pdegen.optimise import (
    INDUCTIVE_BIAS,
    KINDS,
    TARGETS,
    TOLERANCE,
    ecdf,
    instance_family,
    minimise,
    runtimes_to_targets,
    sample_instances,
)

jax.config.update("jax_enable_x64", True)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "optimise.json")
BUDGETS = {2: 2000, 5: 5000, 10: 10000}
FUNCTIONS = ["rastrigin", "ackley", "levy", "styblinski_tang", "rosenbrock", "ellipsoid"]

# minimise's defaults: DDS, batch 32, 16 steps, 4 temperatures, log-variance loss, dense MLP,
# final polish of the 8 best points
VARIANTS = {
    "dds": dict(method="dds"),
    "dds-coordwise": dict(method="dds", network="coordinatewise", width=32),
    "dds-grad": dict(method="dds", gradient_informed=True, num_steps=8, batch_size=16),
    "dds-frame": dict(method="dds", full_frame=True),
    "dds-coordwise-frame": dict(method="dds", network="coordinatewise", width=32, full_frame=True),
    "pis": dict(method="pis"),
    "adam": dict(method="adam"),
    "lbfgs": dict(method="lbfgs"),
    "langevin": dict(method="langevin"),
    "random": dict(method="random"),
    "cmaes": dict(method="cmaes"),
    "coordinate": dict(method="coordinate"),
}
DEFAULT_METHODS = [
    "dds",
    "dds-coordwise",
    "cmaes",
    "adam",
    "lbfgs",
    "langevin",
    "random",
    "coordinate",
]


def _load(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _same(row, spec):
    return all(row.get(k) == v for k, v in spec.items())


def run_row(name, kind, dim, method, budget, instances, seed=0):
    family = instance_family(name, dim, kind=kind)
    # the same instances for every method: seeded by (function, dimension, kind)
    salt = sum(map(ord, f"{name}/{kind}/{dim}"))
    tasks = sample_instances(family, instances, key=jr.fold_in(jr.key(seed), salt))
    keys = jr.split(jr.fold_in(jr.key(seed + 1), salt), instances)
    t0 = time.perf_counter()
    res = minimise(
        family.fn,
        family.domain,
        key=keys,
        task=tasks,
        max_evaluations=budget,
        **VARIANTS[method],
    )
    seconds = time.perf_counter() - t0
    gaps = np.asarray(res.value) - family.minimum
    runtimes = runtimes_to_targets(res.evaluations, res.best_values, family.minimum)
    return {
        "function": name,
        "instance_type": kind,
        "dim": dim,
        "method": method,
        "budget": budget,
        "instances": instances,
        "success_rate": float(np.mean(gaps < TOLERANCE)),
        "median_gap": float(np.median(gaps)),
        "evaluations_used": int(np.max(res.num_evaluations)),
        "seconds": seconds,
        "runtimes_to_targets": np.where(np.isfinite(runtimes), runtimes, -1).tolist(),
        "inductive_bias": INDUCTIVE_BIAS[method],
    }


def ecdf_figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if any(r["instance_type"] == k for r in rows)]
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(5.5 * len(kinds), 4), layout="constrained", squeeze=False
    )
    for ax, kind in zip(axes[0], kinds):
        for dim in sorted({r["dim"] for r in rows if r["instance_type"] == kind}):
            sel = [r for r in rows if r["instance_type"] == kind and r["dim"] == dim]
            budget = max(r["budget"] for r in sel)
            grid = np.unique(np.geomspace(1, budget, 200).astype(int))
            for method in dict.fromkeys(r["method"] for r in sel):
                rt = np.concatenate(
                    [
                        np.asarray(r["runtimes_to_targets"], float)
                        for r in sel
                        if r["method"] == method
                    ]
                )
                rt = np.where(rt < 0, np.inf, rt)
                ax.step(grid, ecdf(rt, grid), where="post", label=f"{method} (d={dim})")
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel("function evaluations")
        ax.set_ylabel("fraction of (instance, target) pairs")
        ax.set_title(f"{kind}: targets {', '.join(f'{t:g}' for t in TARGETS)}")
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def print_table(rows):
    print(
        f"{'function':16s} {'kind':16s} {'d':>3s} {'method':14s} {'budget':>7s} {'success':>8s} "
        f"{'median gap':>11s} {'evals':>7s} {'s':>7s}"
    )
    for kind in KINDS:
        block = [r for r in rows if r["instance_type"] == kind]
        if not block:
            continue
        print(f"-- {kind} block")
        for r in block:
            print(
                f"{r['function']:16s} {kind:16s} {r['dim']:3d} {r['method']:14s} {r['budget']:7d} "
                f"{r['success_rate']:8.2f} {r['median_gap']:11.3g} {r['evaluations_used']:7d} "
                f"{r['seconds']:7.1f}"
            )
    print("inductive biases:")
    for m in dict.fromkeys(r["method"] for r in rows):
        print(f"  {m}: {INDUCTIVE_BIAS[m]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2-D, every function")
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--functions", nargs="+", choices=FUNCTIONS)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--methods", nargs="+", choices=list(VARIANTS))
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--budget", type=int, help="default: 2000 (2-D), 5000 (5-D), 10000 (10-D)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    dims = args.dims or ([2] if args.quick else [10])
    functions = args.functions or FUNCTIONS
    methods = args.methods or DEFAULT_METHODS
    data = _load(args.out)
    rows = data.get("rows", [])
    for dim in dims:
        budget = args.budget or BUDGETS.get(dim, 1000 * dim)
        for kind in args.kinds:
            for name in functions:
                if name == "rosenbrock" and dim < 2:
                    continue
                for method in methods:
                    spec = dict(
                        function=name,
                        instance_type=kind,
                        dim=dim,
                        method=method,
                        budget=budget,
                        instances=args.instances,
                    )
                    if any(_same(r, spec) for r in rows):
                        continue
                    row = run_row(name, kind, dim, method, budget, args.instances)
                    rows = [r for r in rows if not _same(r, spec)] + [row]
                    write_json_atomic(
                        args.out,
                        {
                            "tolerance": TOLERANCE,
                            "targets": list(TARGETS),
                            "machine": f"{os.cpu_count()} CPU cores",
                            "rows": rows,
                        },
                    )
                    print(
                        f"{name} {kind} d={dim} {method}: success {row['success_rate']:.2f}, "
                        f"median gap {row['median_gap']:.3g}, {row['seconds']:.1f} s",
                        flush=True,
                    )
    selected = [r for r in rows if r["dim"] in dims]
    print_table(selected)
    ecdf_figure(selected, os.path.splitext(args.out)[0] + "_ecdf.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
