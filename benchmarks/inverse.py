"""Inverse-problem benchmark: guided diffusion against the Bayes-optimal posterior.

    python benchmarks/inverse.py --quick     # 64x64, one draw per task, exact-score prior
    python benchmarks/inverse.py             # three draws per task, plus the shipped learned prior

Rows per (task, method, grid, sensors, prior): ``rel_l2`` (posterior mean of the target channel),
``bayes_rel_l2`` (exact Gaussian posterior on the same draws and sensors), ``ratio_to_bayes``,
``coverage90``, ``pde_residual``, ``seconds_per_sample`` (compilation excluded), averaged over the
draws. Priors: ``exact-grf`` is the exact score of the tasks' GRF prior (so the only errors are those
of the guidance approximation and the sampler); the shipped prior is a trained joint (a, u) U-Net
(32x32, Poisson). The published DiffusionPDE and FunDPS figures (128x128, 500 sensors) are
reference rows. Writes ``benchmarks/results/inverse.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_results  # noqa: E402

from pdegen import inverse  # noqa: E402
from pdegen.inverse._invert_cli import compare_methods, format_table  # noqa: E402

# Relative L2 errors in % (forward / inverse), 128x128, 500 observed points, as tabulated by FunDPS.
PUBLISHED = {
    "DiffusionPDE (2000 steps)": {"poisson": (4.88, 21.10), "helmholtz": (12.64, 19.07), "darcy": (6.07, 7.87)},
    "FunDPS (500 steps)": {"poisson": (1.99, 20.47), "helmholtz": (2.13, 17.16), "darcy": (2.49, 5.18)},
}
TARGET_RATIO = 1.15
TARGET_COVERAGE = (0.85, 0.95)


def run_rows(prior, prior_name, task_name, grid, methods, *, draws, samples, steps, route=None, options=None,
             sensor_fraction=0.03):
    per_method: dict = {}
    for index in range(draws):
        task = inverse.make_task(task_name, grid=grid, sensor_fraction=sensor_fraction, index=index)
        rows, _ = compare_methods(prior, task, methods, key=jax.random.key(100 + index), num_samples=samples,
                                  num_steps=steps, route=route, options=options, progress=False,
                                  batch_size=max(1, samples // 2))
        print(f"\n{task_name} {grid}x{grid}, {task.num_sensors} sensors, draw {index}, prior {prior_name}")
        print(format_table(rows))
        bayes = next(r for r in rows if r["method"] == "bayes")
        for r in rows:
            r["bayes_rel_l2"] = bayes["rel_l2"]
            r["sensors"] = task.num_sensors
            per_method.setdefault((r["method"], r["route"]), []).append(r)
    out = []
    for (method, route_used), rs in per_method.items():
        mean = lambda k: float(np.mean([r[k] for r in rs]))  # noqa: E731
        row = {
            "task": task_name, "method": method, "route": route_used, "prior": prior_name if method != "bayes" else
            "exact GRF (Gaussian posterior)", "grid": grid, "sensors": rs[0]["sensors"], "draws": len(rs),
            "samples": samples, "steps": steps if method != "bayes" else None,
            "rel_l2": mean("rel_l2"), "bayes_rel_l2": mean("bayes_rel_l2"),
            "ratio_to_bayes": mean("rel_l2") / mean("bayes_rel_l2"), "coverage90": mean("coverage90"),
            "pde_residual": mean("pde_residual"), "seconds_per_sample": mean("seconds_per_sample"),
        }
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one draw per task, fewer methods")
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--no-learned", action="store_true", help="skip the shipped learned prior")
    args = p.parse_args(argv)
    draws = 1 if args.quick else 3
    samples = args.samples or (8 if args.quick else 16)
    methods = ["bayes", "tmpd", "dps"] if args.quick else ["bayes", "tmpd", "tmpd-diagonal", "dps", "pigdm"]
    t0 = time.perf_counter()
    rows = []
    exact = inverse.gaussian_prior(args.grid)
    for task_name in ("poisson-forward", "poisson-inverse", "helmholtz-forward", "helmholtz-inverse"):
        rows += run_rows(exact, "exact-grf", task_name, args.grid, methods, draws=draws, samples=samples,
                         steps=args.steps)
        write_results("inverse", _payload(args, rows, t0, partial=True))
    # The shipped learned prior (joint Poisson (a, u) on 32x32). TMPD (full) costs one network VJP per
    # sensor and step, so the quick mode runs the one-VJP methods only.
    from pdegen.models import available_pretrained, load_pretrained

    shipped = [n for n in available_pretrained() if "poisson" in n]
    if shipped and not args.no_learned:
        prior = inverse.prior_from_model(load_pretrained(shipped[0]), name=shipped[0])
        learned = ["bayes", "dps", "diffusionpde"] if args.quick else ["bayes", "tmpd", "pigdm", "dps", "diffusionpde"]
        for task_name in ("poisson-inverse",) if args.quick else ("poisson-inverse", "poisson-forward"):
            rows += run_rows(prior, shipped[0], task_name, prior.grid, learned, draws=draws,
                             samples=4 if args.quick else samples, steps=args.steps)
    path = write_results("inverse", _payload(args, rows, t0, partial=False))
    targets = _payload(args, rows, t0, partial=False)["targets"]
    print("\ntargets (best diffusion method per task):")
    for t in targets:
        print(f"  {t['task']:<18} {t['best_method']:<14} ratio {t['ratio_to_bayes']:.3f} "
              f"({'met' if t['ratio_met'] else 'missed'}), coverage {t['coverage90']:.2f} "
              f"({'met' if t['coverage_met'] else 'missed'})")
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


def _payload(args, rows, t0, partial):
    references = []
    for name, table in PUBLISHED.items():
        for pde, (fwd, inv) in table.items():
            for direction, value in (("forward", fwd), ("inverse", inv)):
                references.append({"task": f"{pde}-{direction}", "method": name, "grid": 128, "sensors": 500,
                                   "rel_l2": value / 100.0, "source": "published (FunDPS table)"})
    targets = []
    for task_name in ("poisson-forward", "poisson-inverse", "helmholtz-forward", "helmholtz-inverse"):
        cand = [r for r in rows if r["task"] == task_name and r["method"] != "bayes" and r["grid"] == args.grid]
        if not cand:
            continue
        best = min(cand, key=lambda r: r["ratio_to_bayes"])
        targets.append({"task": task_name, "grid": args.grid, "best_method": best["method"], "prior": best["prior"],
                        "ratio_to_bayes": best["ratio_to_bayes"], "coverage90": best["coverage90"],
                        "ratio_met": best["ratio_to_bayes"] <= TARGET_RATIO,
                        "coverage_met": TARGET_COVERAGE[0] <= best["coverage90"] <= TARGET_COVERAGE[1]})
    payload = {
        "description": __doc__.strip().splitlines()[0],
        "partial": partial, "quick": args.quick, "grid": args.grid, "sensor_fraction": 0.03, "noise": "noise-free",
        "rows": rows, "references": references, "targets": targets,
        "target": {"ratio_to_bayes": TARGET_RATIO, "coverage90": TARGET_COVERAGE},
        "notes": [
            "Darcy: no Gaussian prior and no shipped Darcy prior, so only the published figures are listed.",
            "Published figures are at 128x128 with a learned prior; rows here are at the stated grid.",
        ],
        "machine": machine_info(),
        "seconds": time.perf_counter() - t0,
    }
    return payload


if __name__ == "__main__":
    sys.exit(main())
