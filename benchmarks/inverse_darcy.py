"""Darcy without a closed form: SMC and guidance against a long-run MCMC reference posterior.

    python benchmarks/inverse_darcy.py --quick          # 1 draw per task, short runs
    python benchmarks/inverse_darcy.py                  # 10 draws per task (resumable)

DiffusionPDE's Darcy problem (``-div(a grad u) = 1``, ``a`` two-valued, 3 / 12) has no closed-form
posterior. Every method here uses the same prior: the task's GRF through the smooth threshold
(:func:`pdegen.inverse.threshold_prior`, exact latent score), so differences are those of the
methods. The reference per draw is long-run Laplace-preconditioned MALA (``inverse.MCMC()``:
``--ref-chains`` chains of ``--ref-steps`` steps after ``--ref-warmup``, split R-hat and ESS
reported), stored in ``benchmarks/results/inverse_darcy_reference.npz`` (one entry per task,
grid, noise and draw; a rerun reuses it). Rows, per (task, method, particles / budget), averaged
over draws with their spread:

- ``rel_l2``: the posterior mean of the target channel (``a`` for the inverse task, ``u`` for
  the forward task) against the truth; ``ratio_to_reference``: over the reference mean's;
- ``mean_error_in_std``: ``||mean - mean_ref|| / ||std_ref||`` over the target's free nodes (0 for
  a perfect posterior mean, about ``1 / sqrt(ESS)`` for an MCMC run with that ESS);
- ``std_ratio``: median of ``std / std_ref``; ``coverage90`` of the truth;
- ``forward_evaluations`` (forward maps; SMC and MALA add one VJP each) and ``seconds``.

Methods: ``mcmc`` at the SMC's budget (the same chains with as many forward evaluations as the
largest SMC run: the strongest baseline with the same information), ``map`` (L-BFGS), ``smc``
(PiGDM twist) and ``smc-tmpd`` (TMPD twist), both with the twist's covariance shared at the zero
state, ``smc-particle`` / ``smc-tmpd-particle`` (the same twists linearised at each particle's
Tweedie mean: ``m`` / ``2m`` VJPs per particle and step for ``m`` sensors), ``pigdm`` (guidance
alone, 16 samples). ``--prior grf-a`` runs the SMC and PiGDM rows with a learned prior instead: the
shipped resolution-free prior of the GRF (never trained on Darcy data) through the same threshold,
against the same exact-prior reference, so the gap is the learned score's (written to
``inverse_darcy_grf-a.json``). ``--methods`` runs some rows only; with ``--merge`` the other rows of the
results file are kept; ``--resume`` reuses the per-draw records written after every draw, so a
stopped run continues where it stopped. Writes ``benchmarks/results/inverse_darcy.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, add_mean_std, machine_info, write_results  # noqa: E402

from pdegen import inverse, models  # noqa: E402

BIAS = {
    "reference": "Laplace-preconditioned MALA (Gauss-Newton at the MAP), long chains: exact in the limit",
    "mcmc": "the same MCMC with the forward-evaluation budget of the largest SMC run",
    "map": "the posterior mode by L-BFGS in white-noise coordinates: a point, no spread",
    "smc": "twisted SMC, PiGDM twist (isotropic Tweedie covariance) shared at the zero state: "
    "asymptotically exact in the particles",
    "smc-tmpd": "twisted SMC, TMPD twist (Tweedie covariance of the exact latent GRF) shared at the "
    "zero state: asymptotically exact in the particles",
    "smc-particle": "twisted SMC, PiGDM twist linearised at each particle's Tweedie mean (m VJPs "
    "per particle and step): asymptotically exact in the particles",
    "smc-tmpd-particle": "twisted SMC, TMPD twist linearised at each particle's Tweedie mean (2m "
    "VJPs per particle and step): asymptotically exact in the particles",
    "smc-tmpd-conditional": "twisted SMC, TMPD twist linearised at each particle; each particle "
    "moves by the model step conditioned on the data through that linearisation (2m VJPs and 2 "
    "forward maps per particle and step): asymptotically exact in the particles",
    "pigdm": "PiGDM guidance alone (linearised through the solve): no correction, not exact",
}


# SMC rows: (label, twist, twist covariance shared at the zero state, particle move).
SMC_VARIANTS = (
    ("smc", inverse.PiGDM(), True, "gradient"),
    ("smc-tmpd", inverse.TMPD(), True, "gradient"),
    ("smc-particle", inverse.PiGDM(), False, "gradient"),
    ("smc-tmpd-particle", inverse.TMPD(), False, "gradient"),
    ("smc-tmpd-conditional", inverse.TMPD(), False, "conditional"),
)
METHODS = tuple(v[0] for v in SMC_VARIANTS) + ("mcmc", "map", "pigdm")


def _reference(task, args, index, store: dict):
    """The MCMC reference of one draw: from the store, or run and stored."""
    key = f"{task.name}_g{task.grid}_n{args.noise:g}_s{args.ref_steps}_c{args.ref_chains}_{index}"
    if key in store:
        return {k: store[key][k] for k in store[key]}, True
    method = inverse.MCMC(
        num_chains=args.ref_chains,
        num_steps=args.ref_steps,
        num_warmup=args.ref_warmup,
        thin=args.ref_thin,
    )
    prior, lik = inverse.task_problem(task)
    post = inverse.sample_posterior(prior, lik, method=method, key=jax.random.key(9000 + index))
    mean, std = _joint(task, post)
    rec = {
        "mean": mean,
        "std": std,
        "rhat_max": post.info["rhat_max"],
        "ess_min": post.info["ess_min"],
        "ess_median": post.info["ess_median"],
        "acceptance": post.info["acceptance"],
        "seconds": post.info["seconds"],
        "num_forward": post.info["num_forward"],
    }
    store[key] = rec
    _save_store(store)
    return rec, False


STORE = RESULTS_DIR / "inverse_darcy_reference.npz"


def _load_store() -> dict:
    if not STORE.exists():
        return {}
    data = np.load(STORE)
    out: dict = {}
    for name in data.files:
        key, _, field = name.rpartition("__")
        out.setdefault(key, {})[field] = data[name]
    return out


def _save_store(store: dict) -> None:
    flat = {f"{k}__{f}": np.asarray(v) for k, rec in store.items() for f, v in rec.items()}
    tmp = STORE.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **flat)
    os.replace(tmp, STORE)


def _metrics(task, mean, std, ref) -> dict:
    c = task.target_index
    free = np.asarray(task.free_nodes)
    flat = lambda v: np.asarray(v)[c].reshape(-1)[free]  # noqa: E731
    m, s, t = flat(mean), flat(std), flat(task.truth)
    m_ref, s_ref = flat(ref["mean"]), flat(ref["std"])
    rel = float(np.linalg.norm(m - t) / np.linalg.norm(t))
    ref_rel = float(np.linalg.norm(m_ref - t) / np.linalg.norm(t))
    ok = s_ref > 1e-12 * np.max(s_ref)
    out = {
        "rel_l2": rel,
        "reference_rel_l2": ref_rel,
        "ratio_to_reference": rel / ref_rel,
        "mean_error_in_std": float(np.linalg.norm(m - m_ref) / np.linalg.norm(s_ref)),
        "std_ratio": float(np.median(s[ok] / s_ref[ok])) if np.any(s > 0) else 0.0,
        "coverage90": float(np.mean(np.abs(m - t)[ok] <= 1.645 * s[ok])),
    }
    return out


def _joint(task, post) -> tuple:
    """Mean and std of (a, u) from a field posterior of ``a`` (weighted particles for SMC)."""
    info = post.info
    if "particles" in info:
        fields, w = np.asarray(info["particles"]), np.asarray(info["weights"])
    elif "draws" in info:  # MCMC: every kept draw of every chain
        fields = np.asarray(info["draws"]).reshape(-1, np.asarray(info["draws"]).shape[-1])
        w = np.full(fields.shape[0], 1.0 / fields.shape[0])
    else:
        fields = np.asarray(post.samples)
        w = np.full(fields.shape[0], 1.0 / fields.shape[0])
    a = jax.vmap(task.mesh.to_image)(jnp.asarray(fields))
    u = jax.lax.map(task.solve, a, batch_size=64)
    joint = np.stack([np.asarray(a), np.asarray(u)], axis=1)
    mean = np.tensordot(w, joint, 1)
    var = np.tensordot(w, (joint - mean[None]) ** 2, 1) / max(1.0 - float(w @ w), 1e-12)
    return mean, np.sqrt(np.maximum(var, 0.0))


@functools.lru_cache(maxsize=2)
def _pretrained(name: str):
    """A shipped prior, read once per run (not once per draw)."""
    return models.load_pretrained(name)


def task_prior(task, name: str):
    """The task's prior and likelihood; with a learned ``name``, that shipped prior of the GRF
    (at the task's grid) through the task's own threshold."""
    prior, lik = inverse.task_problem(task)
    if name == "exact":
        return prior, lik
    par, physics = task.physics.parameter, task.physics
    latent = inverse.learned_prior(_pretrained(name), task.mesh, grid=task.grid)
    prior = inverse.threshold_prior(
        task.mesh, low=par.low, high=par.high, alpha=physics.alpha, tau=physics.tau, latent=latent
    )
    return prior, lik


def run_draw(task, args, index, ref) -> dict:
    prior, lik = task_prior(task, args.prior)
    key = jax.random.key(100 + index)
    out = {}
    counts = [int(c) for c in args.particles.split(",")]
    budget = max(counts) * args.steps  # particle-steps of the largest SMC run
    wanted = set(args.methods.split(","))
    for n in counts:
        for label, proposal, shared, transition in SMC_VARIANTS:
            if label not in wanted:
                continue
            method = inverse.SMC(
                proposal, num_particles=n, shared_covariance=shared, transition=transition
            )
            t0 = time.perf_counter()
            post = inverse.sample_posterior(
                prior, lik, method=method, key=jax.random.fold_in(key, n), num_steps=args.steps
            )
            wall = time.perf_counter() - t0
            mean, std = _joint(task, post)
            rec = _metrics(task, mean, std, ref)
            rec.update(
                seconds=wall,
                # the conditional move maps each step's mean too
                forward_evaluations=n
                * (args.steps * (2 if transition == "conditional" else 1) + 1),
                final_ess=post.info["final_ess"],
                log_evidence=post.info["log_evidence"],
            )
            out[(label, n)] = rec
    if "mcmc" in wanted:
        out.update(_budget_mcmc(task, args, prior, lik, key, budget, ref))
    if "map" in wanted:
        t0 = time.perf_counter()
        post = inverse.sample_posterior(prior, lik, method="map", key=key)
        wall = time.perf_counter() - t0
        mean, std = _joint(task, post)
        rec = _metrics(task, mean, std, ref)
        rec.update(seconds=wall, forward_evaluations=None)
        out[("map", 1)] = rec
    if "pigdm" in wanted:
        t0 = time.perf_counter()
        post = inverse.sample_posterior(
            prior, lik, method="pigdm", key=key, num_samples=args.samples, num_steps=args.steps
        )
        wall = time.perf_counter() - t0
        mean, std = _joint(task, post)
        rec = _metrics(task, mean, std, ref)
        rec.update(seconds=wall, forward_evaluations=args.samples * args.steps)
        out[("pigdm", args.samples)] = rec
    return out


def _budget_mcmc(task, args, prior, lik, key, budget, ref) -> dict:
    """MCMC with the forward-evaluation budget of the largest SMC run."""
    chains = args.ref_chains
    steps = max(8 * args.ref_thin, budget // chains - args.ref_warmup)
    method = inverse.MCMC(
        num_chains=chains, num_steps=steps, num_warmup=args.ref_warmup, thin=args.ref_thin
    )
    t0 = time.perf_counter()
    post = inverse.sample_posterior(prior, lik, method=method, key=jax.random.fold_in(key, 7))
    wall = time.perf_counter() - t0
    mean, std = _joint(task, post)
    rec = _metrics(task, mean, std, ref)
    rec.update(
        seconds=wall,
        forward_evaluations=post.info["num_forward"],
        rhat_max=post.info["rhat_max"],
    )
    return {("mcmc", budget): rec}


def summarise(per: dict, task_name: str, grid: int, sensors: int, args) -> list:
    rows = []
    for (method, n), recs in per.items():
        row = {
            "task": task_name,
            "method": method,
            "count": n,
            "grid": grid,
            "sensors": sensors,
            "noise": args.noise,
            "draws": len(recs),
            "bias": BIAS[method],
        }
        rows.append(add_mean_std(row, recs))
    return rows


def format_table(rows) -> str:
    lines = [
        f"{'task':<14} {'method':<9} {'N':>6} {'rel L2':>13} {'ratio':>13} {'mean err/std':>13} "
        f"{'std ratio':>10} {'cov90':>6} {'seconds':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r['task']:<14} {r['method']:<9} {r['count']:>6} "
            f"{r['rel_l2']:.3f}+-{r['rel_l2_std']:.3f} "
            f"{r['ratio_to_reference']:.3f}+-{r['ratio_to_reference_std']:.3f} "
            f"{r['mean_error_in_std']:>6.2f}+-{r['mean_error_in_std_std']:.2f} "
            f"{r['std_ratio']:>10.2f} {r['coverage90']:>6.2f} {r['seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 draw, short reference, 32 particles")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--sensor-fraction", type=float, default=0.1)
    p.add_argument("--noise", type=float, default=0.02, help="relative noise of the data")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--tasks", default="darcy-inverse,darcy-forward")
    p.add_argument("--particles", default="32,128")
    p.add_argument("--steps", type=int, default=200, help="SMC / guidance steps")
    p.add_argument("--samples", type=int, default=16, help="PiGDM samples")
    p.add_argument("--ref-chains", type=int, default=8)
    p.add_argument("--ref-steps", type=int, default=6000)
    p.add_argument("--ref-warmup", type=int, default=1000)
    p.add_argument("--ref-thin", type=int, default=10)
    p.add_argument(
        "--prior",
        default="exact",
        help="exact (the task's thresholded GRF) or a shipped learned prior of the GRF, e.g. grf-a "
        "(SMC and PiGDM rows; the reference stays the exact prior's)",
    )
    p.add_argument("--out", default=None, help="results name (default inverse_darcy[_PRIOR])")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated rows to run (default all: {','.join(METHODS)}; with a learned "
        "--prior all but mcmc and map)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of the other methods from the existing results file",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the per-draw records of the existing results file (a stopped run continues)",
    )
    args = p.parse_args(argv)
    exact_only = {"mcmc", "map"}  # white-noise coordinates of the exact latent GRF
    if args.methods is None:
        args.methods = ",".join(m for m in METHODS if args.prior == "exact" or m not in exact_only)
    if not set(args.methods.split(",")) <= set(METHODS):
        p.error(f"--methods: choose from {METHODS}")
    if args.prior != "exact" and exact_only & set(args.methods.split(",")):
        p.error(f"--prior {args.prior}: mcmc and map need the exact latent GRF")
    args.out = args.out or ("inverse_darcy" + ("" if args.prior == "exact" else f"_{args.prior}"))
    if args.quick:
        args.draws, args.particles, args.ref_steps, args.ref_warmup = 1, "32", 2000, 500
    t0 = time.perf_counter()
    store = _load_store()
    rows: list = []
    refs: list = []
    load_start = os.getloadavg()
    kept, kept_records = _kept(args) if args.merge else ([], [])
    done = _stored_records(args) if args.resume else {}
    records: list = []
    for task_name in args.tasks.split(","):
        per: dict = {}
        for index in range(args.draws):
            task = inverse.make_task(
                task_name,
                grid=args.grid,
                sensor_fraction=args.sensor_fraction,
                noise=args.noise,
                index=index,
            )
            ref, cached = _reference(task, args, index, store)
            refs.append(
                {
                    "task": task_name,
                    "draw": index,
                    "cached": cached,
                    **{k: float(ref[k]) for k in ("rhat_max", "ess_min", "ess_median", "seconds")},
                }
            )
            print(
                f"{task_name} draw {index}: reference R-hat {float(ref['rhat_max']):.3f}, "
                f"ESS min {float(ref['ess_min']):.0f} ({'stored' if cached else 'run'}, "
                f"{float(ref['seconds']):.0f} s)",
                flush=True,
            )
            mine = {k[2:]: v for k, v in done.items() if k[:2] == (task_name, index)}
            expected = _expected_keys(args)
            if all(k in mine for k in expected):  # --resume: this draw's rows are stored
                results = {k: mine[k] for k in expected}
                print("  (stored)", flush=True)
            else:
                results = run_draw(task, args, index, ref)
            for k, rec in results.items():
                records.append(
                    {
                        "task": task_name,
                        "draw": index,
                        "method": k[0],
                        "count": k[1],
                        "metrics": rec,
                    }
                )
                per.setdefault(k, []).append(rec)
                print(
                    f"  {k[0]:<9} {k[1]:>6}: rel L2 {rec['rel_l2']:.3f} "
                    f"(reference {rec['reference_rel_l2']:.3f}), mean err/std "
                    f"{rec['mean_error_in_std']:.2f}, std ratio {rec['std_ratio']:.2f}, "
                    f"coverage {rec['coverage90']:.2f}, {rec['seconds']:.1f} s",
                    flush=True,
                )
            partial_rows = rows + summarise(per, task_name, args.grid, task.num_sensors, args)
            write_results(
                args.out,
                _payload(
                    args, kept + partial_rows, kept_records + records, refs, t0, load_start, True
                ),
            )
        rows += summarise(per, task_name, args.grid, task.num_sensors, args)
    final = _payload(args, kept + rows, kept_records + records, refs, t0, load_start, False)
    path = write_results(args.out, final)
    print("\n" + format_table(rows))
    print(f"\nwrote {path} in {final['seconds']:.0f} s")
    return 0


def _expected_keys(args) -> list:
    """The ``(method, count)`` rows one draw of this run produces (as :func:`run_draw`)."""
    wanted = set(args.methods.split(","))
    counts = [int(c) for c in args.particles.split(",")]
    keys = [(v[0], n) for n in counts for v in SMC_VARIANTS if v[0] in wanted]
    extra = (("mcmc", max(counts) * args.steps), ("map", 1), ("pigdm", args.samples))
    return keys + [k for k in extra if k[0] in wanted]


SETTINGS = ("grid", "sensor_fraction", "noise", "steps", "samples", "ref_chains", "ref_steps")


def _old_results(args) -> dict:
    path = RESULTS_DIR / f"{args.out}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    differ = [k for k in SETTINGS if old.get("settings", {}).get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"{path}: made with other settings ({', '.join(differ)}); use --out")
    return old


def _kept(args) -> tuple:
    """``--merge``: the rows (and per-draw records) of the existing results file that this run
    does not redo."""
    old = _old_results(args)
    tasks, methods = set(args.tasks.split(",")), set(args.methods.split(","))
    mine = lambda r: r["task"] in tasks and r["method"] in methods  # noqa: E731
    return (
        [r for r in old.get("rows", []) if not mine(r)],
        [r for r in old.get("records", []) if not mine(r)],
    )


def _stored_records(args) -> dict:
    """``--resume``: the per-draw records of the existing results file, by (task, draw, method,
    count); a draw whose rows are all there is not run again."""
    return {
        (r["task"], r["draw"], r["method"], r["count"]): r["metrics"]
        for r in _old_results(args).get("records", [])
    }


def _payload(args, rows, records, refs, t0, load_start, partial) -> dict:
    machine = machine_info(load_start)
    return {
        "description": "Darcy (no closed form): SMC, guidance, MAP and equal-budget MCMC against a "
        "long-run MCMC reference, all under the task's thresholded-GRF prior"
        + (
            ""
            if args.prior == "exact"
            else f"; here SMC and PiGDM with the learned prior {args.prior} of the GRF through the "
            "same threshold, against the exact prior's reference"
        ),
        "prior": args.prior,
        "partial": partial,
        "quick": args.quick,
        "settings": {
            k: getattr(args, k)
            for k in (
                "grid",
                "sensor_fraction",
                "noise",
                "draws",
                "particles",
                "steps",
                "samples",
                "ref_chains",
                "ref_steps",
                "ref_warmup",
                "ref_thin",
            )
        },
        "rows": rows,
        "records": records,
        "references": refs,
        "bias": BIAS,
        "machine": machine,
        "seconds": time.perf_counter() - t0,
        "rerun": "python benchmarks/inverse_darcy.py"
        + ("" if args.prior == "exact" else f" --prior {args.prior}")
        + (" --quick" if args.quick else ""),
    }


if __name__ == "__main__":
    raise SystemExit(main())
