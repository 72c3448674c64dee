"""Learned priors on the grid tasks, each row beside its exact-prior twin.

    python benchmarks/inverse_learned.py                        # 64x64, 3% sensors, 10 draws x 16 samples
    python benchmarks/inverse_learned.py --grid 128 --sensors 500   # the DiffusionPDE task size
    python benchmarks/inverse_learned.py --quick                # 32x32, 2 draws x 4 samples, 50 steps
    python benchmarks/inverse_learned.py --prior poisson-joint-64 --tasks poisson-inverse,poisson-forward \
        --methods dps --out-name inverse_learned_joint_poisson      # the joint (a, u) route

For each task (Poisson and Helmholtz, forward and inverse) the same draws (truth, sensors) are
solved by the exact posterior (the Bayes floor) and by guided sampling with two priors that share
the SDE (EDM), the sampler, its steps, the draws and the number of samples: the exact score of the
tasks' GRF (``exact-grf``: the error is the guidance's and the sampler's alone) and a shipped
learned prior (default ``grf-a``, the resolution-free prior over the source, used through the FEM
solve at any grid). The gap between the twins is the prior's share. A joint prior over ``(a, u)``
runs the joint route (both fields sampled, the data guide ``u`` or ``a`` directly, no solve in the
sampler) as :func:`pdegen.inverse.consistent_prior` (``--raw``: as trained), beside the exact joint
Gaussian of ``(a, solve(a))`` (the target there: <= 1.5x Bayes). Reported per (task, prior,
method): ratio of the posterior mean's relative L2 error to the exact posterior's, and coverage of
the 90% intervals on the free nodes, as mean +- std over the draws; seconds per sample; network
VJPs per sampler step. Inductive biases: TMPD is exact for a Gaussian prior and a linear forward
map (``tmpd-cached`` computes the projected Tweedie covariance once per call, at the zero state for
the exact prior and averaged over 4 noised prior samples for a learned one, then one VJP per step;
``rowsum`` approximates it by one VJP); PiGDM assumes an
isotropic prior covariance along the observed directions (its variance from prior samples); DPS
follows the misfit gradient with a step normalised by the misfit. Writes
``benchmarks/results/inverse_learned[_<grid>].json`` after every draw; ``--resume`` continues a run
(same grid, samples and steps) from the draws already there; ``--first-draw`` and ``--draws`` split
the draws across processes, whose results ``--merge`` joins.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, mean_std  # noqa: E402

from pdegen import inverse, models  # noqa: E402
from pdegen._io import write_json_atomic  # noqa: E402

TASKS = ("poisson-forward", "poisson-inverse", "helmholtz-forward", "helmholtz-inverse")
METHODS = ("tmpd-cached", "dps")
VJPS_PER_STEP = {
    "pigdm": 1,
    "tmpd-rowsum": 1,
    "dps": 1,
    "tmpd": "sensors",
    "tmpd-cached": "1 (+ 16 x sensors once per call; x 4 noised prior states for a learned prior)",
}
BIAS = {
    "tmpd": "exact for Gaussian prior + linear map; one VJP per sensor",
    "tmpd-cached": "TMPD with a tabulated Tweedie covariance (zero state if Gaussian: exact; "
    "noised prior samples if learned)",
    "tmpd-rowsum": "Tweedie covariance by its row sums (one VJP)",
    "pigdm": "isotropic prior variance along observed rows (from prior samples)",
    "dps": "misfit gradient, step zeta / ||residual||",
}
TARGET_RATIO, TARGET_COVERAGE, TARGET_DPS, TARGET_JOINT = 1.15, (0.85, 0.95), 2.0, 1.5


def draw_records(task_name, index, priors, methods, *, grid, sensors, samples, steps, route=None):
    """Per-draw records of one task draw: every prior x method on the same truth and sensors."""
    t0 = time.perf_counter()
    task = inverse.make_task(task_name, grid=grid, sensor_fraction=sensors / grid**2, index=index)
    out = []
    # "name@N": the method at N sampler steps (e.g. DPS at the network-VJP budget of cached TMPD)
    plain = [m for m in methods if "@" not in m]
    stepped = [(m, *m.partition("@")[::2]) for m in methods if "@" in m]
    for prior_name, prior in priors.items():
        runs = [(["bayes", *plain] if prior_name == "exact-grf" else plain, steps, None)]
        runs += [([name], int(n), label) for label, name, n in stepped]
        rows = []
        for wanted, num_steps, label in runs:
            if not wanted:
                continue
            got, _ = inverse.compare_methods(
                prior,
                task,
                wanted,
                key=jax.random.key(1000 + index),
                num_samples=samples,
                num_steps=num_steps,
                progress=False,
                batch_size=max(1, min(samples, 8)),
                route=route,
            )
            rows += [{**r, "method": label or r["method"]} for r in got]
        for r in rows:
            out.append(
                {
                    "task": task_name,
                    "draw": index,
                    "prior": "exact posterior" if r["method"] == "bayes" else prior_name,
                    "method": r["method"],
                    "sensors": task.num_sensors,
                    **{
                        k: r.get(k)
                        for k in (
                            "rel_l2",
                            "coverage90",
                            "data_misfit",
                            "seconds_per_sample",
                            "setup_seconds",
                        )
                    },
                }
            )
    bayes = next(r["rel_l2"] for r in out if r["method"] == "bayes")
    for r in out:
        r["ratio"] = r["rel_l2"] / bayes
    line = ", ".join(f"{r['prior']}/{r['method']} {r['ratio']:.2f}" for r in out[1:])
    print(f"  {task_name} draw {index}: {line} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def aggregate(records, *, grid, samples, steps):
    """One row per (task, prior, method): mean +- std over its draws."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["task"], r["prior"], r["method"]), []).append(r)
    out = []
    for (task_name, prior_name, method), rs in groups.items():
        base, _, at = method.partition("@")  # "name@N": that method at N steps
        ratio, ratio_std = mean_std([r["ratio"] for r in rs])
        cov, cov_std = mean_std([r["coverage90"] for r in rs])
        rel, rel_std = mean_std([r["rel_l2"] for r in rs])
        out.append(
            {
                "task": task_name,
                "grid": grid,
                "sensors": rs[0]["sensors"],
                "prior": prior_name,
                "method": method,
                "draws": len(rs),
                "samples": samples,
                "steps": None if method == "bayes" else int(at or steps),
                "rel_l2": rel,
                "rel_l2_std": rel_std,
                "ratio_to_bayes": ratio,
                "ratio_std": ratio_std,
                "coverage90": cov,
                "coverage90_std": cov_std,
                "data_misfit": mean_std([r["data_misfit"] for r in rs])[0],
                "seconds_per_sample": mean_std([r["seconds_per_sample"] for r in rs])[0],
                # one-off per call before sampling (prior samples, tables; compilation included)
                "setup_seconds": mean_std([r.get("setup_seconds") for r in rs])[0],
                "vjps_per_step": None if method == "bayes" else VJPS_PER_STEP.get(base),
                "inductive_bias": BIAS.get(base, "closed form (the floor)"),
            }
        )
    return out


def format_rows(rows) -> str:
    width = max([16, *(len(r["prior"]) + 2 for r in rows)])
    head = (
        f"{'task':<18}{'prior':<{width}}{'method':<13}{'ratio':>14}{'coverage90':>14}"
        f"{'misfit':>9}{'s/sample':>10}{'setup s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio_to_bayes']:.3f}+-{r['ratio_std']:.3f}"
        cov = f"{r['coverage90']:.2f}+-{r['coverage90_std']:.2f}"
        lines.append(
            f"{r['task']:<18}{r['prior']:<{width}}{r['method']:<13}{ratio:>14}{cov:>14}"
            f"{r['data_misfit']:>9.3f}{r['seconds_per_sample']:>10.3f}"
            f"{r.get('setup_seconds') or float('nan'):>9.1f}"
        )
    return "\n".join(lines)


def ratio_target(route: str) -> float:
    """The best method's target ratio to Bayes on a route (the joint route's is looser)."""
    return TARGET_JOINT if route == "joint" else TARGET_RATIO


def targets(rows, learned_name, route="solve"):
    """Per task: the learned prior's best method against the targets of its route."""
    limit = ratio_target(route)
    out = []
    for task_name in TASKS:
        cand = [
            r for r in rows if r["task"] == task_name and r["prior"] == learned_name and r["draws"]
        ]
        if not cand:
            continue
        best = min(cand, key=lambda r: r["ratio_to_bayes"])
        dps = next((r for r in cand if r["method"] == "dps"), None)
        budget = [r for r in cand if r["method"].startswith("dps@")]
        out.append(
            {
                "task": task_name,
                "best_method": best["method"],
                "ratio_to_bayes": best["ratio_to_bayes"],
                "coverage90": best["coverage90"],
                "ratio_met": best["ratio_to_bayes"] <= limit,
                "coverage_met": TARGET_COVERAGE[0] <= best["coverage90"] <= TARGET_COVERAGE[1],
                "dps_ratio": dps["ratio_to_bayes"] if dps else None,
                "dps_met": bool(dps and dps["ratio_to_bayes"] <= TARGET_DPS),
                **(
                    {
                        "dps_more_steps": budget[0]["method"],
                        "dps_more_steps_ratio": budget[0]["ratio_to_bayes"],
                        "dps_more_steps_met": budget[0]["ratio_to_bayes"] <= TARGET_DPS,
                    }
                    if budget
                    else {}
                ),
            }
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=None, help="grid (default 64; quick 32)")
    p.add_argument("--sensors", type=int, default=None, help="sensors (default 3%% of the nodes)")
    p.add_argument("--draws", type=int, default=None, help="draws per task (default 10)")
    p.add_argument(
        "--first-draw",
        type=int,
        default=0,
        help="run draws first-draw..draws-1 only (split a long run across processes)",
    )
    p.add_argument("--samples", type=int, default=None, help="samples per method (default 16)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 100)")
    p.add_argument("--prior", default="grf-a", help="shipped learned prior (default grf-a)")
    p.add_argument("--checkpoint", default=None, help="a trained prior's folder instead")
    p.add_argument(
        "--raw",
        action="store_true",
        help="a joint prior as trained (default: inverse.consistent_prior of it)",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="guided methods; name@N runs that method at N sampler steps (e.g. dps@600)",
    )
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--quick", action="store_true", help="32x32, 2 draws x 4 samples, 50 steps")
    p.add_argument("--resume", action="store_true", help="keep the tasks already in the results")
    p.add_argument("--out-name", default=None, help="results name (default by grid)")
    p.add_argument(
        "--merge",
        default="",
        help="comma-separated results names (same folder) whose records of other draws join these",
    )
    p.add_argument(
        "--merge-only", action="store_true", help="with --merge: write the joined results, run none"
    )
    p.add_argument(
        "--results-dir", default=None, help="where to write (default benchmarks/results)"
    )
    args = p.parse_args(argv)
    grid = args.grid or (32 if args.quick else 64)
    sensors = args.sensors or max(1, round(0.03 * grid * grid))
    draws = args.draws or (2 if args.quick else 10)
    samples = args.samples or (4 if args.quick else 16)
    steps = args.steps or (50 if args.quick else 100)
    methods = tuple(m for m in args.methods.split(",") if m)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    if draws < 2:
        p.error("--draws must be >= 2 (rows report a std over draws)")
    if args.merge_only and not args.merge:
        p.error("--merge-only needs --merge")
    if not 0 <= args.first_draw < draws:
        p.error(f"--first-draw must be in [0, {draws}), got {args.first_draw}")
    name = args.out_name or ("inverse_learned" + ("" if grid == 64 else f"_{grid}"))
    if args.checkpoint:
        model = models.load_checkpoint(args.checkpoint)
        args.prior = model.metadata.get("name") or Path(args.checkpoint).name
    else:
        model = models.load_pretrained(args.prior)
    learned = inverse.prior_at_grid(inverse.prior_from_model(model, name=args.prior), grid)
    route = "solve"
    if learned.channels == ("a", "u"):  # a joint prior: the joint route, beside the exact joint law
        pde = model.metadata.get("task", "poisson")
        if any(not t.startswith(pde + "-") for t in tasks):
            p.error(f"the joint prior {args.prior} is over {pde} pairs; --tasks must be {pde}-*")
        route = "joint"
        exact = inverse.gaussian_prior(
            grid, pde=pde, channels=("a", "u"), sde=model.model.sde, max_joint_grid=64
        )
        if not args.raw:  # every denoised estimate projected onto the PDE's solutions
            learned = inverse.consistent_prior(learned, pde)
    else:
        exact = inverse.gaussian_prior(grid, sde=model.model.sde)
    priors = {"exact-grf": exact, args.prior: learned}
    results = Path(args.results_dir) if args.results_dir else RESULTS_DIR
    path = results / f"{name}.json"
    records: list = []
    # records join only those of the same run settings and the same prior weights
    weights = model.metadata.get("state_sha256")
    settings = (("grid", grid), ("samples", samples), ("steps", steps), ("weights", weights))
    if args.resume and path.is_file():
        old = json.loads(path.read_text())
        same = all(old.get(k) == v for k, v in settings)
        records = old.get("records", []) if same else []
    for other in (n for n in args.merge.split(",") if n):
        # records of the same benchmark run elsewhere (another process, another machine)
        old = json.loads((results / f"{other}.json").read_text())
        if any(old.get(k) != v for k, v in settings):
            p.error(
                f"--merge {other}: grid, samples, steps or prior weights differ from this run's"
            )
        have = {(r["task"], r["draw"]) for r in records}
        records += [r for r in old["records"] if (r["task"], r["draw"]) not in have]
    t0 = time.perf_counter()

    def write(records):
        rows = aggregate(records, grid=grid, samples=samples, steps=steps)
        payload = {
            "description": __doc__.strip().splitlines()[0],
            "grid": grid,
            "sensors": sensors,
            "draws": draws,
            "samples": samples,
            "steps": steps,
            "sampler": "euler_maruyama",
            "learned_prior": args.prior,
            "weights": weights,
            "route": route,
            "learned_prior_projected": route == "joint" and not args.raw,
            "sde": priors[args.prior].sde.config(),
            "learned_prior_metadata": {
                k: model.metadata.get(k)
                for k in ("excess_loss", "grids_trained", "train_wall_seconds")
            },
            "quick": args.quick,
            "complete": False,
            "rows": rows,
            "records": records,
            "targets": targets(rows, args.prior, route),
            "target": {
                "ratio_to_bayes": ratio_target(route),
                "coverage90": TARGET_COVERAGE,
                "dps": TARGET_DPS,
            },
            "machine": machine_info(),
            "seconds_this_run": round(time.perf_counter() - t0, 1),
        }
        write_json_atomic(path, payload, sort_keys=True)

    print(
        f"{', '.join(tasks)}: {grid}x{grid}, {sensors} sensors, {draws} draws x {samples} samples"
    )
    # Draws outermost: a run stopped early (a time cap, the end of a session) covers every task.
    for index in range(args.first_draw, 0 if args.merge_only else draws):
        for task_name in tasks:
            have = {r["method"] for r in records if r["task"] == task_name and r["draw"] == index}
            if {"bayes", *methods} <= have:
                continue
            records = [r for r in records if not (r["task"] == task_name and r["draw"] == index)]
            records += draw_records(
                task_name,
                index,
                priors,
                methods,
                grid=grid,
                sensors=sensors,
                samples=samples,
                steps=steps,
                route=route,
            )
            write(records)
    if args.merge:
        write(records)
    rows = aggregate(records, grid=grid, samples=samples, steps=steps)
    if path.is_file():
        payload = json.loads(path.read_text())
        wanted = {(t, i) for t in tasks for i in range(args.first_draw, draws)}
        payload["complete"] = wanted <= {(r["task"], r["draw"]) for r in records}
        write_json_atomic(path, payload, sort_keys=True)
    print(format_rows(rows))
    for t in targets(rows, args.prior, route):
        print(
            f"  {t['task']:<18} best {t['best_method']:<12} ratio {t['ratio_to_bayes']:.3f} "
            f"({'met' if t['ratio_met'] else 'missed'}), coverage {t['coverage90']:.2f} "
            f"({'met' if t['coverage_met'] else 'missed'})"
            + (
                f"; dps {t['dps_ratio']:.3f} ({'met' if t['dps_met'] else 'missed'})"
                if t["dps_ratio"] is not None
                else ""
            )
            + (
                f"; {t['dps_more_steps']} {t['dps_more_steps_ratio']:.3f}"
                f" ({'met' if t['dps_more_steps_met'] else 'missed'})"
                if "dps_more_steps" in t
                else ""
            )
        )
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
