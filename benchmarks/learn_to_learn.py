"""Benchmark: learning to learn. One optimiser trained on a family of problems, applied to
unseen members, against per-instance optimisers, at a stated target gap.

    python benchmarks/learn_to_learn.py --quick   # small training, 5 unseen tasks (minutes)
    python benchmarks/learn_to_learn.py           # the three families, 20 unseen tasks each

Families (``--families``):

- ``quadratic``: ``f(x) = ||W x - y||^2`` with standard normal ``W`` (10 x 10) and ``y``
  (Andrychowicz et al. 2016) on ``[-5, 5]^10``; the exact minimum of each member by
  box-constrained least squares; features ``(W, y)``.
- ``rastrigin``: rotated-shifted instances of Rastrigin in 10-D (multimodal; BBOB-style Haar
  rotation and shift, :func:`pdegen.optimise.instances_family`); features: the rotation and shift.
- ``poisson-sources``: place 3 Gaussian heat sources (6 coordinates) so that the Poisson solution
  (P1, 17 x 17 nodes, :func:`pdegen.optimise.poisson_source_family`) matches a target field drawn
  per member; relative squared misfit, minimum 0; features: the target on every other node.

Methods: the amortised diffusion optimisers (a DDS or a PIS sampler conditioned on the task's
features, trained once per family, then sampling + polish on each unseen task with no further
training),
the coordinate-wise LSTM optimiser (trained on the same family), and per-instance DDS, IPOP-CMA-ES,
Adam with restarts, projected L-BFGS with restarts and random search with the same polish
(``pdegen.optimise.minimise``; the last one tells how much of the amortised result is the
polish's). The amortised optimisers end with successive-halving Adam from their 8 best samples
(``amortised-dds``, ``amortised-pis``) or projected L-BFGS from their best sample (``-lbfgs``). Every family gets the same
settings (no per-family tuning). Per method: training cost (evaluations, seconds), and on the
unseen tasks the fraction that reach the target gap, the median evaluations to reach it (over
the tasks that do) and the wall time per task (the whole batched run divided by the number of
tasks; seconds to target scaled by evaluations to target over evaluations used). Evaluations: a
value counts 1, a value with its gradient 2.

Writes ``benchmarks/results/learn_to_learn.json`` (the rows of the families and methods run now
replace their stored rows; the others are kept).
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
from pdegen.optimise import (
    FAMILY_NAMES,
    AdamPolish,
    LBFGSPolish,
    apply_amortised,
    apply_lstm,
    make_family,
    minimise,
    runtimes_to_targets,
    train_amortised,
    train_lstm,
)

jax.config.update("jax_enable_x64", True)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "learn_to_learn.json")


def _summary(family_name, method, evals, best_values, minima, seconds, used, train_evals, train_s):
    rt = runtimes_to_targets(evals, best_values - minima[:, None], 0.0, targets=(TARGET,))[:, 0]
    reached = np.isfinite(rt)
    n = len(minima)
    median = float(np.median(rt[reached])) if reached.any() else None
    per_task = seconds / n
    return {
        "family": family_name,
        "method": method,
        "target_gap": TARGET,
        "unseen_tasks": n,
        "training_evaluations": int(train_evals),
        "training_seconds": float(train_s),
        "reached_fraction": float(np.mean(reached)),
        "median_evaluations_to_target": median,
        "evaluations_used": int(used),
        "seconds_per_task": per_task,
        "median_seconds_to_target": None if median is None else per_task * median / used,
        "median_final_gap": float(np.median(best_values[:, -1] - minima)),
    }


TARGET = 1e-2


def main(argv=None):
    global TARGET
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=FAMILY_NAMES)
    p.add_argument("--dim", type=int, default=10, help="quadratic and rastrigin")
    p.add_argument("--sources", type=int, default=3, help="poisson-sources: number of sources")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--target", type=float, default=1e-2)
    p.add_argument("--budget", type=int, default=10000, help="per-instance methods")
    p.add_argument("--amortised-iterations", type=int, default=1000)
    p.add_argument("--lstm-iterations", type=int, default=1000)
    p.add_argument(
        "--methods",
        nargs="+",
        default=[
            "amortised-dds",
            "amortised-pis",
            "amortised-dds-lbfgs",
            "amortised-pis-lbfgs",
            "lstm",
            "dds",
            "cmaes",
            "adam",
            "lbfgs",
            "random",
        ],
    )
    p.add_argument(
        "--samples", type=int, default=8, help="amortised: samples per task before the polish"
    )
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.budget = min(args.tasks, 5), min(args.budget, 3000)
        args.amortised_iterations = min(args.amortised_iterations, 200)
        args.lstm_iterations = min(args.lstm_iterations, 100)
    TARGET = args.target
    stored = []
    if os.path.exists(args.out) and not args.quick:
        with open(args.out) as fh:
            previous = json.load(fh)
        if previous.get("target_gap") == TARGET:
            stored = previous["rows"]
    rows = []
    for name in args.families:
        dim = 2 * args.sources if name == "poisson-sources" else args.dim
        family = make_family(name, dim)
        stored = [
            r for r in stored if not (r["family"] == family.name and r["method"] in args.methods)
        ]
        rows += run_family(family, args)
        write_json_atomic(
            args.out,
            {"target_gap": TARGET, "dim": args.dim, "quick": args.quick, "rows": stored + rows},
        )
    return 0


def run_family(family, args) -> list:
    tasks = family.sample(jr.key(2026), args.tasks)  # unseen: training draws from other keys
    minima = np.array(
        [family.minimum(jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(args.tasks)]
    )
    rows = []
    for method in args.methods:
        t0 = time.perf_counter()
        if method.startswith("amortised-"):
            sampler = method.split("-")[1]
            lbfgs = method.endswith("-lbfgs")
            am = train_amortised(
                family,
                key=jr.key(0),
                method=sampler,
                iterations=args.amortised_iterations,
                tasks_per_iteration=4,
                batch_size=8,
                final_temperature_ratio=1e-2,
            )
            t1 = time.perf_counter()
            polish = LBFGSPolish(steps=100) if lbfgs else AdamPolish(steps=80)
            res = apply_amortised(
                am, family, tasks, key=jr.key(1), num_samples=args.samples, polish=polish
            )
            row = _summary(
                family.name,
                method,
                res.evaluations,
                res.best_values,
                minima,
                time.perf_counter() - t1,
                res.num_evaluations,
                am.training_evaluations,
                am.training_seconds,
            )
        elif method == "lstm":
            lstm = train_lstm(family, key=jr.key(0), iterations=args.lstm_iterations)
            t1 = time.perf_counter()
            evals, best, _ = apply_lstm(lstm, family, tasks, key=jr.key(1), steps=500)
            row = _summary(
                family.name,
                method,
                evals,
                best,
                minima,
                time.perf_counter() - t1,
                int(evals[-1]),
                lstm.training_evaluations,
                lstm.training_seconds,
            )
        else:
            res = minimise(
                family.fn,
                family.domain,
                key=jr.split(jr.key(1), args.tasks),
                task=tasks,
                method=method,
                max_evaluations=args.budget,
            )
            row = _summary(
                family.name,
                method,
                res.evaluations,
                np.asarray(res.best_values),
                minima,
                time.perf_counter() - t0,
                int(np.max(res.num_evaluations)),
                0,
                0.0,
            )
        row["dim"] = family.dim
        if method.startswith("amortised-"):
            row["samples"] = args.samples
        rows.append(row)
        print(
            f"{row['family']} {method:14s} train {row['training_evaluations']:>8d} evals "
            f"{row['training_seconds']:7.1f} s | reached {row['reached_fraction']:.2f} | median "
            f"evals to target {row['median_evaluations_to_target']} | "
            f"{row['seconds_per_task']:.2f} s/task | median final gap {row['median_final_gap']:.3g}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
