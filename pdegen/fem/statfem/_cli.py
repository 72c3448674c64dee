"""``pdegen statfem``: sample the ULA-statFEM posterior, compare with the exact posterior.

Writes ``posterior.png`` (sampler vs exact mean and standard deviation, truth, error),
``samples.png`` (chain end points next to exact draws) and ``statfem.json`` (errors, ESS,
acceptance, timings) into ``--out``; every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from ..._io import write_json_atomic

__all__ = ["register", "run", "SAMPLERS"]

SAMPLERS = ("ula", "pula", "pula-prior", "mala", "pmala", "pmala-prior", "pcn")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "statfem", help="statistical FEM: Langevin sampling of the ULA-statFEM posterior",
        description="Sample the statFEM posterior of -div(theta grad u) = 1 (ULA-statFEM case) with "
                    "a Langevin kernel; compare with the exact Gaussian posterior.")
    p.add_argument("--grid", type=int, default=32, help="nodes per side of the P1 grid (default 32)")
    p.add_argument("--sampler", default="pula", choices=SAMPLERS,
                   help="ula | pula (posterior-preconditioned ULA) | pula-prior | mala | pmala | "
                        "pmala-prior | pcn")
    p.add_argument("--steps", type=int, default=2000, help="sampling steps per chain")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default steps // 4)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--step-size", type=float, default=None,
                   help="initial step size (default: from the largest curvature, see docs)")
    p.add_argument("--sensors", type=int, default=128)
    p.add_argument("--replicates", type=int, default=1)
    p.add_argument("--sigma-f", type=float, default=0.1, help="forcing misspecification scale")
    p.add_argument("--sigma-e", type=float, default=5e-4, help="observation noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="statfem_out", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def build_kernel(name, model, y, step_size=None):
    """The kernel ``name`` (see ``SAMPLERS``) for the posterior of ``model`` given ``y``, with a
    default step size: ``1 / lambda_max`` of ``P hess Phi`` for ULA/MALA-type kernels (``P`` the
    preconditioner), ``0.1`` for the posterior-preconditioned ones, ``beta = 0.1`` for pCN."""
    from ._exact import posterior_preconditioner, prior_preconditioner
    from ._kernels import largest_curvature, mala, pcn, ula

    if name not in SAMPLERS:
        raise ValueError(f"statfem: sampler must be one of {SAMPLERS}, got {name!r}")
    energy = model.energy_fn(y)
    pre = None
    if name in ("pula", "pmala"):
        pre = posterior_preconditioner(model, y)
    elif name in ("pula-prior", "pmala-prior", "pcn"):
        pre = prior_preconditioner(model, dense=model.dim <= 1500)
    if step_size is None:
        if name in ("pula", "pmala"):
            step_size = 0.1
        elif name == "pcn":
            step_size = 0.1
        else:
            lam = float(largest_curvature(energy, model.prior_mean(), preconditioner=pre))
            step_size = 1.0 / lam
    if name == "pcn":
        return pcn(model.likelihood_energy_fn(y), step_size, prior_mean=model.prior_mean(), prior=pre)
    if name.startswith("pmala") or name == "mala":
        return mala(energy, step_size, preconditioner=pre)
    return ula(energy, step_size, preconditioner=pre)


def run(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._plot import save_figure
    from ._case import ula_statfem_case
    from ._exact import exact_posterior
    from ._kernels import effective_sample_size, pool_chains, run_chains

    for name, value, low in (("--grid", args.grid, 3), ("--steps", args.steps, 1), ("--chains", args.chains, 1),
                             ("--sensors", args.sensors, 1), ("--replicates", args.replicates, 1)):
        if value < low:
            raise ValueError(f"pdegen statfem: {name} must be >= {low}, got {value}")
    warmup = args.steps // 4 if args.warmup is None else args.warmup
    if warmup < 0:
        raise ValueError(f"pdegen statfem: --warmup must be >= 0, got {warmup}")
    key = jax.random.key(args.seed)
    k_case, k_init, k_run, k_exact = jax.random.split(key, 4)
    case = ula_statfem_case(k_case, args.grid, num_sensors=args.sensors, num_replicates=args.replicates,
                            sigma_f=args.sigma_f, sigma_e=args.sigma_e)
    model, y = case.model, case.y

    t0 = time.perf_counter()
    post = exact_posterior(model, y)
    exact_var = post.variance()
    exact_var.block_until_ready()
    t_exact = time.perf_counter() - t0

    kernel = build_kernel(args.sampler, model, y, args.step_size)
    x0 = model.sample_prior(k_init, args.chains)
    # thin so that at most ~200 draws per chain are kept; ESS on at most 256 coordinates
    thin = 1
    while args.steps // thin > 200 and args.steps % (thin * 2) == 0:
        thin *= 2
    steps = args.steps - args.steps % thin
    idx = np.unique(np.linspace(0, model.dim - 1, min(256, model.dim)).astype(int))
    t0 = time.perf_counter()
    res = run_chains(kernel, k_run, x0, steps, warmup, thin=thin, trace_fn=lambda x: x[jnp.asarray(idx)],
                     progress=not args.no_progress)
    mean, var = pool_chains(res)
    mean.block_until_ready()
    t_sample = time.perf_counter() - t0
    ess = np.asarray(effective_sample_size(res.samples))

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    truth = model.restrict(case.truth)
    result = {
        "grid": args.grid, "sampler": args.sampler, "kernel": kernel.name, "steps": steps, "warmup": warmup,
        "chains": args.chains, "thin": thin, "dim": model.dim, "sensors": args.sensors,
        "replicates": args.replicates, "sigma_f": args.sigma_f, "sigma_e": args.sigma_e,
        "step_size": np.asarray(res.step_size).tolist(),
        "acceptance_rate": np.asarray(res.acceptance_rate).tolist(),
        "mean_rel_error": rel(mean, post.mean),
        "variance_rel_error": rel(var, exact_var),
        "std_rel_error": rel(jnp.sqrt(var), jnp.sqrt(exact_var)),
        "exact_mean_vs_truth_rel_error": rel(post.mean, truth),
        "sampler_mean_vs_truth_rel_error": rel(mean, truth),
        "ess_min": float(ess.min()), "ess_median": float(np.median(ess)),
        "ess_per_second": float(ess.min() / t_sample),
        "gradient_evaluations": int(np.sum(np.asarray(res.num_gradient_evaluations))),
        "seconds_sampling_incl_compile": t_sample, "seconds_exact_posterior": t_exact,
    }
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "statfem.json"), result)

    mesh = case.mesh

    def image(x):
        return np.asarray(mesh.to_image(model.embed(jnp.asarray(x))))

    # pixel centres on the nodes (the image has one pixel per node)
    half = 0.5 / (args.grid - 1)
    ext = dict(origin="lower", extent=(-half, 1 + half, -half, 1 + half))
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.4))
    panels = [(image(mean), f"{args.sampler} mean"), (image(post.mean), "exact mean"),
              (image(truth), "truth (fine grid)"),
              (np.sqrt(np.maximum(image(var), 0)), f"{args.sampler} std"),
              (np.sqrt(np.maximum(image(exact_var), 0)), "exact std"),
              (np.abs(image(mean) - image(post.mean)), "|sampler mean - exact mean|")]
    vstd = max(float(np.max(panels[3][0])), float(np.max(panels[4][0])))
    for i, (ax, (img, title)) in enumerate(zip(axes.ravel(), panels)):
        kw = dict(vmin=0, vmax=vstd) if i in (3, 4) else {}
        im = ax.imshow(img, **ext, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    axes[0, 2].plot(case.sensors[:, 0], case.sensors[:, 1], "k.", ms=2)
    fig.suptitle(f"{args.grid}x{args.grid} P1, {args.sampler}: mean err {result['mean_rel_error']:.2%}, "
                 f"variance err {result['variance_rel_error']:.1%}", fontsize=10)
    save_figure(fig, os.path.join(args.out, "posterior.png"))
    plt.close(fig)

    exact_draws = np.asarray(post.sample(k_exact, 3))
    chain_draws = np.asarray(res.state.position)[:3]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.4))
    for j in range(3):
        for row, (draws, label) in enumerate(((chain_draws, args.sampler), (exact_draws, "exact"))):
            ax = axes[row, j]
            if j < draws.shape[0]:
                im = ax.imshow(image(draws[j]), **ext)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
                ax.set_title(f"{label} sample {j + 1}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, os.path.join(args.out, "samples.png"))
    plt.close(fig)
    print(json.dumps({k: result[k] for k in ("sampler", "mean_rel_error", "variance_rel_error", "ess_min",
                                             "seconds_sampling_incl_compile")}, indent=None))
    print(f"wrote {args.out}/posterior.png, samples.png, statfem.json")
    return 0
