"""``pdegen statfem``: sample the ULA-statFEM posterior, compare with the exact posterior.

Writes ``posterior.png`` (sampler vs exact mean and standard deviation, truth, error),
``samples.png`` (chain end points next to exact draws) and ``statfem.json`` (errors, ESS,
acceptance, timings) into ``--out``; every file is written atomically, and only after the chains
are checked (a diverged chain is an error, not a file of NaN).

Every option is checked before the expensive work: the step size of an unadjusted kernel against
its stability limit ``2 / lambda_max(P hess U)`` (computed by power iteration, exactly 2 for the
posterior-preconditioned ``pula``), and the memory the grid needs.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from ..._errors import ConvergenceError, NonFiniteError, UserError, check_memory, memory_limit_bytes
from ..._io import check_output_dir, json_safe, write_json_atomic

__all__ = ["register", "run", "SAMPLERS"]

SAMPLERS = ("ula", "pula", "pula-prior", "mala", "pmala", "pmala-prior", "pcn")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``statfem`` sub-command to the ``pdegen`` parser.

    Called by :func:`pdegen.cli.build_parser` for every module listed in its sub-command
    modules; the parser's ``func`` default is :func:`run`.

    Args:
        subparsers: The object ``argparse.ArgumentParser.add_subparsers`` returned.

    Returns:
        The new sub-parser.
    """
    p = subparsers.add_parser(
        "statfem",
        help="statistical FEM: Langevin sampling of the ULA-statFEM posterior",
        description="Sample the statFEM posterior of -div(theta grad u) = 1 (ULA-statFEM case) with "
        "a Langevin kernel; compare with the exact Gaussian posterior.",
    )
    p.add_argument(
        "--grid", type=int, default=32, help="nodes per side of the P1 grid (default 32)"
    )
    p.add_argument(
        "--sampler",
        default="pula",
        choices=SAMPLERS,
        help="ula | pula (posterior-preconditioned ULA) | pula-prior | mala | pmala | "
        "pmala-prior | pcn",
    )
    p.add_argument("--steps", type=int, default=2000, help="sampling steps per chain")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default steps // 4)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument(
        "--step-size",
        type=float,
        default=None,
        help="initial step size (default: from the largest curvature, see docs)",
    )
    p.add_argument("--sensors", type=int, default=128)
    p.add_argument("--replicates", type=int, default=1)
    p.add_argument("--sigma-f", type=float, default=0.1, help="forcing misspecification scale")
    p.add_argument("--sigma-e", type=float, default=5e-4, help="observation noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="statfem_out", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (phase lines stay)")
    p.set_defaults(func=run)
    return p


ULA_KERNELS = ("ula", "pula", "pula-prior")  # unadjusted: a step size above the limit diverges
MH_KERNELS = ("mala", "pmala", "pmala-prior", "pcn")  # Metropolis-adjusted: may reject everything


def _preconditioner(name, model, y):
    from ._exact import posterior_preconditioner, prior_preconditioner

    if name in ("pula", "pmala"):
        return posterior_preconditioner(model, y)
    if name in ("pula-prior", "pmala-prior", "pcn"):
        return prior_preconditioner(model, dense=model.dim <= 1500)
    return None


def _curvature(name, model, y, pre) -> float:
    """``lambda_max(P hess U)``: exactly 1 with the posterior covariance as ``P`` (the target is
    Gaussian), else by power iteration at the prior mean (the Hessian is constant)."""
    from ._kernels import largest_curvature

    if name in ("pula", "pmala"):
        return 1.0
    return float(largest_curvature(model.energy_fn(y), model.prior_mean(), preconditioner=pre))


def build_kernel(name, model, y, step_size=None, *, preconditioner=None, curvature=None):
    """The kernel ``name`` (see ``SAMPLERS``) for the posterior of ``model`` given ``y``, with a
    default step size: ``1 / lambda_max`` of ``P hess Phi`` for ULA/MALA-type kernels (``P`` the
    preconditioner), ``0.1`` for the posterior-preconditioned ones, ``beta = 0.1`` for pCN.
    ``preconditioner`` / ``curvature``: already computed ones (else computed here)."""
    from ._kernels import mala, pcn, ula

    if name not in SAMPLERS:
        raise ValueError(f"statfem: sampler must be one of {SAMPLERS}, got {name!r}")
    energy = model.energy_fn(y)
    pre = (
        preconditioner
        if preconditioner is not None or name in ("ula", "mala")
        else _preconditioner(name, model, y)
    )
    if step_size is None:
        if name in ("pula", "pmala"):
            step_size = 0.1
        elif name == "pcn":
            step_size = 0.1
        else:
            lam = curvature if curvature is not None else _curvature(name, model, y, pre)
            step_size = 1.0 / lam
    if name == "pcn":
        return pcn(
            model.likelihood_energy_fn(y), step_size, prior_mean=model.prior_mean(), prior=pre
        )
    if name.startswith("pmala") or name == "mala":
        return mala(energy, step_size, preconditioner=pre)
    return ula(energy, step_size, preconditioner=pre)


def thinning(steps: int) -> int:
    """Keep every ``thin``-th draw: at most ~200 per chain (``thin`` a power of 2 dividing
    ``steps``)."""
    thin = 1
    while steps // thin > 200 and steps % (thin * 2) == 0:
        thin *= 2
    return thin


def memory_parts(
    grid: int, sensors: int, replicates: int, chains: int = 4, steps: int = 2000
) -> dict:
    """Rough peak bytes of ``pdegen statfem`` by cause. ``grid``, dominant today: locating the
    fine truth grid's ``(2 (g - 1) + 1)^2`` nodes in the ``2 (g - 1)^2`` coarse cells (``fem`` point
    observation, an ``(nodes, cells, 2)`` float64 array and a temporary: 21 GB at ``--grid 96``)
    and the dense matrices of the ``dim = (g - 2)^2`` free dofs; ``sensors``: the sensor blocks;
    ``draws``: the kept draws (at most 256 coordinates each) and the chain states."""
    fine_nodes = (2 * (grid - 1) + 1) ** 2
    coarse_cells = 2 * (grid - 1) ** 2
    dim = max(grid - 2, 1) ** 2
    dense = 48.0 * dim**2 if dim <= 2500 else 0.0
    return {
        "grid": 32.0 * fine_nodes * coarse_cells + dense + 0.5e9,
        "sensors": 24.0 * sensors**2 + 24.0 * dim * sensors + 8.0 * replicates * sensors,
        "draws": 16.0 * chains * (steps // thinning(steps)) * min(dim, 256) + 64.0 * chains * dim,
    }


def _largest_grid(args) -> int:
    limit = memory_limit_bytes()
    g = 3
    while (
        g < 100_000
        and sum(
            memory_parts(g + 1, args.sensors, args.replicates, args.chains, args.steps).values()
        )
        <= limit
    ):
        g += 1
    return g


def _check_memory(args) -> None:
    parts = memory_parts(args.grid, args.sensors, args.replicates, args.chains, args.steps)
    need = sum(parts.values())
    if need <= memory_limit_bytes():
        return
    cause = max(parts, key=parts.get)
    fix = {
        "grid": f"use --grid {_largest_grid(args)} or less",
        "sensors": "use fewer --sensors",
        "draws": "use fewer --chains or --steps (draws are thinned to ~200 per chain only when a power of "
        "2 divides --steps)",
    }[cause]
    check_memory(
        need,
        f"--grid {args.grid} with --sensors {args.sensors}, --chains {args.chains}, "
        f"--steps {args.steps}",
        fix,
    )


def check_options(args) -> int:
    """Every option checked before any work (``UserError`` naming it); returns the warm-up."""
    for name, value, low in (
        ("--grid", args.grid, 3),
        ("--steps", args.steps, 1),
        ("--chains", args.chains, 1),
        ("--sensors", args.sensors, 1),
        ("--replicates", args.replicates, 1),
    ):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    warmup = args.steps // 4 if args.warmup is None else args.warmup
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    for name, value in (("--sigma-f", args.sigma_f), ("--sigma-e", args.sigma_e)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be finite and > 0, got {value}")
    h = args.step_size
    if h is not None:
        if not (math.isfinite(h) and h > 0):
            raise UserError(f"--step-size must be finite and > 0, got {h}")
        if args.sampler == "pcn" and h > 1:
            raise UserError(
                f"--step-size {h:g}: pcn's step size is beta in (0, 1]; use e.g. --step-size 0.1"
            )
        if args.sampler == "pula" and h >= 2:
            raise UserError(
                f"--step-size {h:g} is unstable for pula: preconditioned by the posterior covariance "
                f"ULA diverges for step sizes >= 2; use a value below 2 (default 0.1)"
            )
    _check_memory(args)
    return warmup


def check_step_size(args, lam: float) -> None:
    """An unadjusted kernel with a step size at or above ``2 / lambda_max`` diverges: refuse it
    before the exact posterior and the chains are computed."""
    h = args.step_size
    if h is None or args.sampler not in ULA_KERNELS or not math.isfinite(lam) or lam <= 0:
        return
    if h >= 2.0 / lam:
        raise UserError(
            f"--step-size {h:g} is unstable for {args.sampler}: unadjusted Langevin diverges for "
            f"step sizes >= 2 / lambda_max = {2.0 / lam:.3g} (lambda_max = {lam:.3g}, the largest "
            f"curvature of the preconditioned posterior); use a smaller --step-size, or omit it "
            f"for the default 1 / lambda_max = {1.0 / lam:.3g}"
        )


def check_chains(args, res, mean, var) -> None:
    """Stop before anything is written if a chain diverged or never moved."""
    import numpy as np

    pos = np.asarray(res.state.position)
    bad = ~np.all(np.isfinite(pos), axis=tuple(range(1, pos.ndim)))
    h = np.asarray(res.step_size)
    step = (
        f"step size {float(np.max(h)):.3g}" if np.all(np.isfinite(h)) else "a non-finite step size"
    )
    if bad.any() or not (
        np.all(np.isfinite(np.asarray(mean))) and np.all(np.isfinite(np.asarray(var)))
    ):
        raise NonFiniteError(
            f"--sampler {args.sampler}: {int(bad.sum()) or 'all'} of {args.chains} chains "
            f"diverged (NaN / inf) with {step}; use a smaller --step-size (or --sampler pula, "
            f"stable for step sizes below 2); nothing was written"
        )
    if args.sampler in MH_KERNELS:
        acc = np.asarray(res.acceptance_rate)
        if np.all(acc == 0):
            raise ConvergenceError(
                f"--sampler {args.sampler}: no proposal was accepted in {args.steps} steps "
                f"with {step}; use a smaller --step-size or a warm-up (--warmup > 0) to "
                f"adapt it; nothing was written"
            )


class _Phases:
    """One line per phase on stdout as it starts (so that a long phase is never silent)."""

    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.i += 1
        print(
            f"  [{self.i}/{self.total}] {text} (at {time.perf_counter() - self.t0:.1f} s)",
            flush=True,
        )


def _plot_posterior(path, args, case, model, post, mean, var, exact_var, truth, result):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from .._plot import save_figure

    mesh = case.mesh

    def image(x):
        return np.asarray(mesh.to_image(model.embed(jnp.asarray(x))))

    # pixel centres on the nodes (the image has one pixel per node)
    half = 0.5 / (args.grid - 1)
    ext = dict(origin="lower", extent=(-half, 1 + half, -half, 1 + half))
    fig, axes = plt.subplots(2, 3, figsize=(12.5, 7.8), layout="constrained")
    panels = [
        (image(mean), f"{args.sampler} posterior mean", "u"),
        (image(post.mean), "exact posterior mean", "u"),
        (image(truth), "truth (fine grid) and sensors", "u"),
        (np.sqrt(np.maximum(image(var), 0)), f"{args.sampler} posterior std", "std of u"),
        (np.sqrt(np.maximum(image(exact_var), 0)), "exact posterior std", "std of u"),
        (np.abs(image(mean) - image(post.mean)), "|sampler mean - exact mean|", "|error| of u"),
    ]
    vstd = max(float(np.max(panels[3][0])), float(np.max(panels[4][0])))
    for i, (ax, (img, title, label)) in enumerate(zip(axes.ravel(), panels)):
        kw = dict(vmin=0, vmax=vstd) if i in (3, 4) else {}
        im = ax.imshow(img, **ext, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x", fontsize=8)
        ax.set_ylabel("y", fontsize=8)
        ax.tick_params(labelsize=7)
        cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    axes[0, 2].plot(case.sensors[:, 0], case.sensors[:, 1], "k.", ms=2)
    fig.suptitle(
        f"-div(theta grad u) = 1 on a {args.grid}x{args.grid} P1 grid, {args.sensors} sensors; "
        f"{args.sampler}: mean error {result['mean_rel_error']:.2%}, "
        f"variance error {result['variance_rel_error']:.1%} (relative, vs the exact posterior)",
        fontsize=10,
    )
    save_figure(fig, path)
    plt.close(fig)


def _plot_samples(path, args, case, model, chain_draws, exact_draws):
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from .._plot import save_figure

    mesh = case.mesh
    half = 0.5 / (args.grid - 1)
    ext = dict(origin="lower", extent=(-half, 1 + half, -half, 1 + half))
    fig, axes = plt.subplots(2, 3, figsize=(12.5, 7.8), layout="constrained")
    for j in range(3):
        for row, (draws, label) in enumerate(
            ((chain_draws, f"{args.sampler} chain"), (exact_draws, "exact"))
        ):
            ax = axes[row, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < draws.shape[0]:
                im = ax.imshow(np.asarray(mesh.to_image(model.embed(jnp.asarray(draws[j])))), **ext)
                cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
                cb.set_label("u", fontsize=8)
                cb.ax.tick_params(labelsize=7)
                ax.set_title(f"{label} sample {j + 1}", fontsize=9)
            else:
                ax.axis("off")
    fig.suptitle(
        f"posterior draws on a {args.grid}x{args.grid} P1 grid: final state of each "
        f"{args.sampler} chain (top) and exact posterior draws (bottom)",
        fontsize=10,
    )
    save_figure(fig, path)
    plt.close(fig)


def run(args) -> int:
    """Run ``pdegen statfem``: sample the ULA-statFEM posterior with the chosen Langevin kernel,
    compare it with the exact Gaussian posterior and write figures and a JSON summary to
    ``--out``.

    Args:
        args: The parsed command line (from the parser :func:`register` built).

    Returns:
        The exit code, 0 on success.

    Raises:
        pdegen._errors.UserError: A bad option, found before any work.
        pdegen._errors.NonFiniteError: A chain that turned non-finite.
    """
    warmup = check_options(args)
    out = check_output_dir(args.out)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")

    from ._case import ula_statfem_case
    from ._exact import exact_posterior
    from ._kernels import effective_sample_size, pool_chains, run_chains

    key = jax.random.key(args.seed)
    k_case, k_init, k_run, k_exact = jax.random.split(key, 4)
    print(
        f"pdegen statfem: {args.grid}x{args.grid} P1 grid ({(args.grid - 2) ** 2} unknowns), "
        f"{args.sensors} sensors, sampler {args.sampler}, {args.chains} chains x "
        f"({warmup} warm-up + {args.steps}) steps",
        flush=True,
    )
    phase = _Phases(5)
    phase(f"data: truth on a {2 * (args.grid - 1) + 1}-node-per-side grid, {args.sensors} sensors")
    case = ula_statfem_case(
        key=k_case,
        grid=args.grid,
        num_sensors=args.sensors,
        num_replicates=args.replicates,
        sigma_f=args.sigma_f,
        sigma_e=args.sigma_e,
    )
    model, y = case.model, case.y

    phase(f"{args.sampler} kernel: preconditioner and step size")
    pre = None if args.sampler in ("ula", "mala") else _preconditioner(args.sampler, model, y)
    lam = None
    if args.sampler in ULA_KERNELS or args.step_size is None:
        lam = _curvature(args.sampler, model, y, pre) if args.sampler != "pcn" else None
        check_step_size(args, lam)
    kernel = build_kernel(args.sampler, model, y, args.step_size, preconditioner=pre, curvature=lam)

    phase(f"exact posterior ({args.sensors} sensor solves, variance of {model.dim} dofs)")
    t0 = time.perf_counter()
    post = exact_posterior(model, y)
    exact_var = post.variance()
    exact_var.block_until_ready()
    t_exact = time.perf_counter() - t0
    if not (bool(jnp.all(jnp.isfinite(post.mean))) and bool(jnp.all(jnp.isfinite(exact_var)))):
        raise NonFiniteError(
            f"the exact posterior is not finite (NaN / inf) for --sigma-f {args.sigma_f:g}, "
            f"--sigma-e {args.sigma_e:g}; use values nearer the defaults (0.1, 5e-4)"
        )

    x0 = model.sample_prior(key=k_init, num_samples=args.chains)
    thin = thinning(
        args.steps
    )  # at most ~200 draws per chain are kept; ESS on at most 256 coordinates
    steps = args.steps - args.steps % thin
    idx = np.unique(np.linspace(0, model.dim - 1, min(256, model.dim)).astype(int))
    phase(
        f"sampling: {args.chains} chains x ({warmup} warm-up + {steps}) steps"
        + ("" if args.no_progress else " (compiling first)")
    )
    t0 = time.perf_counter()
    res = run_chains(
        kernel,
        key=k_run,
        x0=x0,
        num_steps=steps,
        num_warmup=warmup,
        thin=thin,
        trace_fn=lambda x: x[jnp.asarray(idx)],
        progress=not args.no_progress,
    )
    mean, var = pool_chains(res)
    mean.block_until_ready()
    t_sample = time.perf_counter() - t0
    check_chains(args, res, mean, var)  # before anything is written
    ess = np.asarray(effective_sample_size(res.samples))

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    truth = model.restrict(case.truth)
    result = {
        "grid": args.grid,
        "sampler": args.sampler,
        "kernel": kernel.name,
        "steps": steps,
        "warmup": warmup,
        "chains": args.chains,
        "thin": thin,
        "dim": model.dim,
        "sensors": args.sensors,
        "replicates": args.replicates,
        "sigma_f": args.sigma_f,
        "sigma_e": args.sigma_e,
        "step_size": np.asarray(res.step_size).tolist(),
        "acceptance_rate": np.asarray(res.acceptance_rate).tolist(),
        "mean_rel_error": rel(mean, post.mean),
        "variance_rel_error": rel(var, exact_var),
        "std_rel_error": rel(jnp.sqrt(var), jnp.sqrt(exact_var)),
        "exact_mean_vs_truth_rel_error": rel(post.mean, truth),
        "sampler_mean_vs_truth_rel_error": rel(mean, truth),
        "ess_min": float(ess.min()),
        "ess_median": float(np.median(ess)),
        "ess_per_second": float(ess.min() / t_sample),
        "gradient_evaluations": int(np.sum(np.asarray(res.num_gradient_evaluations))),
        "seconds_sampling_incl_compile": t_sample,
        "seconds_exact_posterior": t_exact,
    }

    phase("figures and statfem.json")
    out.mkdir(parents=True, exist_ok=True)
    _plot_posterior(
        out / "posterior.png", args, case, model, post, mean, var, exact_var, truth, result
    )
    exact_draws = np.asarray(post.sample(key=k_exact, num_samples=3))
    chain_draws = np.asarray(res.state.position)[:3]
    _plot_samples(out / "samples.png", args, case, model, chain_draws, exact_draws)
    write_json_atomic(out / "statfem.json", result)  # last: its presence means a complete run
    summary = {
        k: result[k]
        for k in (
            "sampler",
            "mean_rel_error",
            "variance_rel_error",
            "ess_min",
            "seconds_sampling_incl_compile",
        )
    }
    print(json.dumps(json_safe(summary), indent=None, allow_nan=False))
    print(f"wrote {args.out}/posterior.png, samples.png, statfem.json")
    return 0
