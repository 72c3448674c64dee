"""Physically consistent generation: joint (a, u) samples of the shipped joint priors and the PDE.

    python benchmarks/generation.py [--quick] [--priors poisson-joint-64,helmholtz-joint-64]

For each shipped joint prior, on its training grid, prior samples of ``(a, u)`` (no data) drawn by
the recommended sampler, plain and with each physics option of
:func:`pdegen.inverse.sample_posterior` (``route="joint"``, ``method="unguided"``):

- ``guidance``: the gradient of ``0.5 ||u - solve(a)||^2`` of the denoised estimate, weight 1,
  last 30% of the steps;
- ``correction``: the denoised estimate replaced by the nearest PDE-consistent pair
  (:func:`pdegen.inverse.pde_projection`) in the last 20% / all of the steps and on the final sample;
- ``u = solve(a)``: the exact projection after sampling (``project=True``), which trusts ``a`` only;
- ``PDE-consistent prior``: :func:`pdegen.inverse.consistent_prior`, the prior whose every denoised
  estimate is projected (in the score itself, so at every step of every sampler).

Per setting: the relative FEM residual (median, max), ``||u - solve(a)|| / ||solve(a)||`` before
any projection, the band powers of ``a`` over the exact GRF's per octave of ``|k|`` (mean over
samples, with the standard error from the per-sample spread), and seconds per sample. Target:
residual <= 1e-3 with every band within +-15%. Writes ``benchmarks/results/generation.json``.

Physics-informed training against the correction (``generation_pidm.json``): two priors trained alike
at 32x32, without and with the consistency penalty on the denoised estimate, then this script on both:

    python benchmarks/train_prior.py --out build/pidm/w0 --data poisson --grids 32 --network spectral \
        --sine --width 16 --depth 2 --modes 12 --n-train 2000 --steps 800 --sigma-max 160 \
        --p-mean 1 --p-std 2.5 --lr 0.003 --ema 0.995 --consistency-weight 0 --name pidm-w0
    (the same with --out build/pidm/w1 --consistency-weight 1 --name pidm-w1)
    python benchmarks/generation.py --priors "" --grid 32 --out-name generation_pidm \
        --checkpoints pidm-w0=build/pidm/w0/model,pidm-w1=build/pidm/w1/model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import band_power_per_sample, machine_info, write_results  # noqa: E402

from pdegen import fem, inverse, models  # noqa: E402

SETTINGS = {  # id: (label, options of sample_posterior)
    "unguided": ("unguided", {}),
    "guidance": ("guidance w=1, last 30%", dict(physics_weight=1.0, physics_fraction=0.3)),
    "correction": ("correction, last 20%", dict(correction=True, physics_fraction=0.2)),
    "correction-all": ("correction, all steps", dict(correction=True, physics_fraction=1.0)),
    "project": ("u = solve(a) after sampling", dict(project=True)),
    "consistent": ("PDE-consistent prior", dict(consistent=True)),
}


def band_power(samples: np.ndarray, mode_var: np.ndarray) -> tuple[dict, dict]:
    """Per octave band: mean over samples of the band power over the exact one, and its standard error."""
    per_sample = band_power_per_sample(samples, mode_var)
    ratio = {k: float(v.mean()) for k, v in per_sample.items()}
    err = {k: float(v.std(ddof=1) / np.sqrt(len(v))) for k, v in per_sample.items()}
    return ratio, err


def run_prior(
    name: str,
    *,
    grid: int,
    num_samples: int,
    num_steps: int,
    seed: int,
    path: str | None = None,
    settings=tuple(SETTINGS),
) -> list[dict]:
    if path is None:
        meta = models.pretrained_metadata(name)
        model = models.load_pretrained(name).model
    else:  # a prior trained by benchmarks/train_prior.py (its exported model folder)
        ckpt = models.load_checkpoint(path)
        meta, model = ckpt.metadata, ckpt.model
    pde = meta["arguments"]["data"]  # the PDE of the training pairs
    task = inverse.make_task(f"{pde}-inverse", grid=grid, seed=0)
    prior = inverse.prior_at_grid(inverse.prior_from_model(model), grid)
    S = inverse.solution_operator(task.physics)
    residual = jax.jit(jax.vmap(task.residual))
    mode_var = fem.grf_mode_std((grid, grid)) ** 2
    sampler = models.recommended_sampler(meta)  # with its recorded options (EDM-Heun: rho)
    sampler_label = dict(meta.get("recommended_sampler") or {"method": "edm_heun"})
    rows = []
    for label, options in (SETTINGS[k] for k in settings):
        options = dict(options)
        consistent = options.pop("consistent", False)
        post = inverse.sample_posterior(
            inverse.consistent_prior(prior, task.physics) if consistent else prior,
            task,
            method="unguided",
            route="joint",
            key=jax.random.key(seed),
            num_samples=num_samples,
            num_steps=num_steps,
            sampler=sampler,
            batch_size=min(num_samples, 8),
            **options,
        )
        x = np.asarray(post.samples, np.float64)
        a, u = x[:, 0], x[:, 1]
        solved = (a.reshape(len(a), -1) @ S.T).reshape(a.shape)
        before = post.info.get("before_projection")
        r = np.asarray(residual(jnp.asarray(a), jnp.asarray(u)))
        change = np.linalg.norm((u - solved).reshape(len(x), -1), axis=1) / np.linalg.norm(
            solved.reshape(len(x), -1), axis=1
        )
        ratio, err = band_power(a, mode_var)
        rows.append(
            {
                "prior": name,
                "grid": grid,
                "setting": label,
                "options": {k: v for k, v in options.items()},
                "sampler": sampler_label,
                "num_steps": num_steps,
                "num_samples": num_samples,
                "residual_median": float(np.median(r)),
                "residual_max": float(r.max()),
                "u_vs_solve_a": float(change.mean()),
                "before_projection": before,
                "a_band_power_ratio": ratio,
                "a_band_power_stderr": err,
                "worst_band_deviation": float(max(abs(v - 1.0) for v in ratio.values())),
                "seconds_per_sample": float(post.seconds_per_sample),
            }
        )
        row = rows[-1]
        bands = " ".join(f"{v:.2f}" for v in ratio.values())
        print(
            f"{name:<20} {label:<28} residual {row['residual_median']:.1e} (max {row['residual_max']:.1e})"
            f"  u vs solve(a) {row['u_vs_solve_a']:.3f}  a bands [{bands}]"
            f"  {row['seconds_per_sample']:.2f} s/sample",
            flush=True,
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few samples on one prior")
    parser.add_argument("--priors", default="poisson-joint-64,helmholtz-joint-64")
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument(
        "--checkpoints",
        default="",
        help="extra priors as name=folder,... (train_prior.py's OUT/model), e.g. to compare "
        "a prior trained with --consistency-weight",
    )
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-name", default="generation", help="results/<name>.json")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"a subset of {', '.join(SETTINGS)}"
    )
    args = parser.parse_args(argv)
    settings = tuple(k for k in args.settings.split(",") if k)
    if not settings or any(k not in SETTINGS for k in settings):
        parser.error(f"--settings: choose from {', '.join(SETTINGS)}; got {args.settings!r}")
    priors = [(p, None) for p in args.priors.split(",") if p]
    priors += [tuple(c.split("=", 1)) for c in args.checkpoints.split(",") if c]
    if args.quick:
        priors, args.num_samples, args.num_steps, args.grid = priors[:1], 4, 6, 16
    t0 = time.perf_counter()
    rows = []
    for name, path in priors:
        rows += run_prior(
            name,
            path=path,
            grid=args.grid,
            num_samples=args.num_samples,
            num_steps=args.num_steps,
            seed=args.seed,
            settings=settings,
        )
    out = {
        "machine": machine_info(),
        "quick": args.quick,
        "target": "relative residual <= 1e-3 with every band of a within +-15% of the exact GRF",
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    path = write_results(args.out_name, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
