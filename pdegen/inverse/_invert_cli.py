"""``pdegen invert`` (any task and method) and ``pdegen demo`` (the Poisson inverse problem on the
shipped prior): tables, figures and JSON."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

__all__ = ["register", "run_invert", "run_demo", "compare_methods", "format_table", "DEMO_METHODS"]

DEMO_METHODS = ("bayes", "map", "pigdm", "dps", "diffusionpde")
# Per-method defaults (observation step for DPS-type guidance; physics weight for the joint route).
METHOD_DEFAULTS = {
    "dps": {"scale": 1.0},
    "diffusionpde": {"scale": 1.0, "physics_weight": 1.0},
}


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def _enable_compilation_cache():
    """Persist compiled samplers between runs (the demo is mostly compilation on a first run)."""
    import jax

    folder = os.environ.get("PDEGEN_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "pdegen", "jax"))
    try:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError):  # a read-only home: just compile
        pass


def find_shipped_prior(pde: str = "poisson") -> str:
    """Name of the shipped joint prior for ``pde``, or a ``ValueError`` naming ``available_pretrained()``."""
    from pdegen.models import available_pretrained

    names = available_pretrained()
    matching = [n for n in names if pde in n.lower()]
    if not matching:
        listing = ", ".join(repr(n) for n in names) if names else "none"
        raise ValueError(
            f"no shipped {pde} prior: pdegen.models.available_pretrained() lists {listing}. "
            f"Install the package data (pdegen/data/<name>/) or pass --checkpoint PATH to a trained (a, u) prior"
        )
    return matching[0]


def load_prior(prior: str | None = None, checkpoint: str | None = None, *, grid: int | None = None,
               pde: str = "poisson"):
    """A :class:`FieldPrior` from ``--checkpoint PATH``, ``--prior NAME`` / ``exact`` / ``exact-joint``."""
    from pdegen.models import load_checkpoint, load_pretrained

    from ._posterior import gaussian_prior, prior_from_model

    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        return prior_from_model(ckpt, name=os.path.basename(os.path.normpath(checkpoint)))
    if prior in ("exact", "exact-joint"):
        if grid is None:
            raise ValueError("--grid is needed with --prior exact")
        channels = ("a",) if prior == "exact" else ("a", "u")
        return gaussian_prior(grid, pde=pde, channels=channels)
    name = prior or find_shipped_prior(pde)
    return prior_from_model(load_pretrained(name), name=name)


def compare_methods(prior, task, methods, *, key, num_samples: int = 4, num_steps: int = 100,
                    sampler: str = "euler_maruyama", route: str | None = None, project: bool = False,
                    options: dict | None = None, progress: bool = True, batch_size: int | None = None):
    """Run ``methods`` on one task; returns ``(rows, posteriors)`` with one metrics dict per method."""
    import jax

    from ._posterior import evaluate, sample_posterior

    options = options or {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_samples * len(methods), desc=f"{task.name} {task.grid}x{task.grid}", unit="sample",
                   dynamic_ncols=True)
    rows, posts = [], {}
    try:
        for i, method in enumerate(methods):
            if bar is not None:
                bar.set_postfix(method=method)
            kw = dict(METHOD_DEFAULTS.get(method, {}))
            kw.update(options.get(method, {}))
            t0 = time.perf_counter()
            post = sample_posterior(prior, task, method=method, key=jax.random.fold_in(key, i), num_samples=num_samples,
                                    num_steps=num_steps, sampler=sampler, route=route, project=project,
                                    progress=bar, batch_size=batch_size, **kw)
            row = evaluate(post, task)
            row["wall_seconds"] = time.perf_counter() - t0
            row["compile_seconds"] = post.compile_seconds
            rows.append(row)
            posts[method] = post
    finally:
        if bar is not None:
            bar.close()
    bayes = next((r for r in rows if r["method"] == "bayes"), None)
    for r in rows:
        r["ratio_to_bayes"] = r["rel_l2"] / bayes["rel_l2"] if bayes else float("nan")
    return rows, posts


def format_table(rows) -> str:
    head = f"{'method':<21}{'route':<7}{'rel L2':>9}{'/ Bayes':>9}{'cover90':>9}{'residual':>10}{'s/sample':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.get("ratio_to_bayes", float("nan"))
        lines.append(f"{r['method']:<21}{r['route']:<7}{r['rel_l2']:>9.3f}{ratio:>9.2f}{r['coverage90']:>9.2f}"
                     f"{r['pde_residual']:>10.1e}{r['seconds_per_sample']:>10.3f}")
    return "\n".join(lines)


def plot_posteriors(task, posts, path, *, title: str = ""):
    """Truth, sensors, and per method the posterior mean, std and error of the target channel."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from pdegen.fem._plot import save_figure

    c = task.target_index
    g = task.grid
    truth = np.asarray(task.truth)
    pts = task.points * (g - 1)
    methods = list(posts)
    rows = 1 + len(methods)
    fig, axes = plt.subplots(rows, 3, figsize=(9.6, 2.9 * rows), squeeze=False)
    vmin, vmax = truth[c].min(), truth[c].max()

    def show(ax, img, ttl, **kw):
        im = ax.imshow(img, origin="lower", **kw)
        ax.set_title(ttl, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    show(axes[0, 0], truth[c], f"truth {task.target}", cmap="cividis", vmin=vmin, vmax=vmax)
    o = task.observed_index
    show(axes[0, 1], truth[o], f"{task.observed} and {task.num_sensors} sensors", cmap="viridis")
    axes[0, 1].plot(pts[:, 0], pts[:, 1], "r.", ms=3)
    axes[0, 2].axis("off")
    axes[0, 2].text(0.0, 0.5, title or task.name, fontsize=8, va="center", wrap=True)
    emax = float(np.abs(truth[c]).max())  # one error scale for all methods: the size of the truth
    for i, m in enumerate(methods, start=1):
        p = posts[m]
        mean, std = np.asarray(p.mean[c]), np.asarray(p.std[c])
        rel = np.linalg.norm(mean - truth[c]) / np.linalg.norm(truth[c])
        point = p.method == "map"  # a point estimate: no spread to show
        label = "MAP estimate" if point else "posterior mean"
        show(axes[i, 0], mean, f"{m}: {label} (rel. L2 {rel:.3f})", cmap="cividis", vmin=vmin, vmax=vmax)
        if point:
            axes[i, 1].axis("off")
            axes[i, 1].text(0.5, 0.5, f"{m}: a point estimate\n(no posterior spread)", fontsize=8, ha="center",
                            va="center")
        else:
            show(axes[i, 1], std, f"{m}: posterior std", cmap="magma")
        show(axes[i, 2], np.abs(mean - truth[c]), f"{m}: |{'estimate' if point else 'mean'} - truth|", cmap="Reds",
             vmin=0, vmax=emax)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path


def _write_outputs(out, task, rows, posts, settings, stem):
    from pdegen.models import write_json_atomic

    png = plot_posteriors(task, posts, os.path.join(out, stem + ".png"),
                          title=f"{task.name}, {task.grid}x{task.grid}, {task.num_sensors} sensors\n"
                                f"prior: {settings.get('prior')}")
    payload = {"task": task.name, "grid": task.grid, "sensors": task.num_sensors, "noise_std": task.noise_std,
               "seed": task.seed, "index": task.index, "settings": settings, "rows": rows}
    write_json_atomic(os.path.join(out, stem + ".json"), payload)
    return png, os.path.join(out, stem + ".json")


def run_invert(args) -> int:
    _enable_x64()
    _enable_compilation_cache()
    import jax

    from ._tasks import make_task, parse_task_name

    pde, _ = parse_task_name(args.task)
    prior = load_prior(args.prior, args.checkpoint, grid=args.grid, pde=pde)
    grid = prior.grid if args.grid is None else args.grid
    task = make_task(args.task, grid=grid, sensor_fraction=args.sensors, noise=args.noise, seed=args.seed,
                     index=args.index, discrepancy=args.discrepancy, discrepancy_length=args.discrepancy_length)
    methods = args.method
    options = {m: {k: v for k, v in (("scale", args.scale), ("physics_weight", args.physics_weight)) if v is not None}
               for m in methods}
    t0 = time.perf_counter()
    rows, posts = compare_methods(prior, task, methods, key=jax.random.key(args.seed), num_samples=args.samples,
                                  num_steps=args.steps, sampler=args.sampler, route=args.route, project=args.project,
                                  options=options, progress=not args.quiet)
    settings = {"prior": prior.name, "samples": args.samples, "steps": args.steps, "sampler": args.sampler,
                "route": args.route, "project": args.project}
    png, js = _write_outputs(args.out, task, rows, posts, settings, task.name)
    print(f"pdegen invert {task.name}: {task.grid}x{task.grid} grid, {task.num_sensors} sensors on {task.observed}, "
          f"recover {task.target}; prior {prior.name}")
    print(format_table(rows))
    print(f"wrote {png}, {js} ({time.perf_counter() - t0:.1f} s)")
    return 0


def run_demo(args) -> int:
    _enable_x64()
    _enable_compilation_cache()
    import jax

    from ._tasks import make_task

    t_start = time.perf_counter()
    prior = load_prior(None, args.checkpoint, pde="poisson")
    if tuple(prior.channels) != ("a", "u"):
        raise ValueError(f"the demo needs a joint (a, u) prior; {prior.name} has channels {prior.channels}")
    task = make_task("poisson-inverse", grid=prior.grid, sensor_fraction=args.sensors, seed=args.seed)
    print(f"pdegen demo: Poisson inverse problem (recover the source a from u at {task.num_sensors} sensors, "
          f"{100 * task.num_sensors / task.grid**2:.1f}% of a {task.grid}x{task.grid} grid, noise-free)")
    print(f"  prior: {prior.name} (joint (a, u) diffusion model); {args.samples} posterior samples per method, "
          f"{args.steps} steps")
    rows, posts = compare_methods(prior, task, args.methods, key=jax.random.key(args.seed), num_samples=args.samples,
                                  num_steps=args.steps, progress=not args.quiet, batch_size=args.batch_size)
    settings = {"prior": prior.name, "samples": args.samples, "steps": args.steps, "sampler": "euler_maruyama"}
    png, js = _write_outputs(args.out, task, rows, posts, settings, "demo")
    print(format_table(rows))
    print("  rel L2: of the posterior mean of a; / Bayes: ratio to the exact Gaussian posterior under the true GRF "
          "prior;\n  cover90: fraction of nodes inside the 90% interval; residual: relative FEM residual of (a, u)")
    print(f"wrote {png}, {js} in {time.perf_counter() - t_start:.0f} s")
    return 0


def _add_common(p):
    p.add_argument("--samples", type=int, default=8, help="posterior samples per method")
    p.add_argument("--steps", type=int, default=200, help="sampler steps")
    p.add_argument("--sensors", type=float, default=0.03, help="fraction of grid nodes observed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    """Add ``invert`` and ``demo`` to an ``argparse`` subparsers object."""
    from ._posterior import METHODS, ROUTES, SAMPLERS
    from ._tasks import DIRECTIONS, PDES

    p = subparsers.add_parser("invert", help="solve a forward/inverse task with posterior sampling",
                              description="Posterior sampling on a DiffusionPDE-style task; prints a table and "
                                          "writes a figure and JSON.")
    p.add_argument("--task", default="poisson-inverse", choices=[f"{a}-{b}" for a in PDES for b in DIRECTIONS])
    p.add_argument("--method", nargs="+", default=["bayes", "tmpd"], choices=METHODS)
    p.add_argument("--prior", default=None,
                   help="shipped prior name, 'exact' (exact GRF score over a) or 'exact-joint' (default: shipped)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder of a trained prior")
    p.add_argument("--grid", type=int, default=None, help="grid (default: the prior's)")
    p.add_argument("--route", choices=ROUTES, default=None, help="solve: FEM forward model; joint: PDE residual")
    p.add_argument("--sampler", choices=SAMPLERS, default="euler_maruyama")
    p.add_argument("--noise", type=float, default=0.0, help="relative observation noise (0: noise-free)")
    p.add_argument("--discrepancy", type=float, default=0.0,
                   help="relative size of a smooth model error added to the data (statFEM; 0: none)")
    p.add_argument("--discrepancy-length", type=float, default=0.2, help="length scale of the model error")
    p.add_argument("--index", type=int, default=0, help="test draw")
    p.add_argument("--scale", type=float, default=None, help="DPS/DiffusionPDE observation step")
    p.add_argument("--physics-weight", type=float, default=None, help="PDE-residual guidance weight (joint route)")
    p.add_argument("--project", action="store_true", help="replace u by solve(a) and report the effect")
    p.add_argument("--out", default="out/invert")
    _add_common(p)
    p.set_defaults(func=run_invert)


def add_demo(subparsers) -> None:
    """The ``demo`` subcommand (registered by :mod:`pdegen.cli`)."""
    from ._posterior import METHODS

    p = subparsers.add_parser("demo", help="the main demo: Poisson inverse problem on the shipped prior",
                              description="Recover the Poisson source a from ~3% sensors of u with several "
                                          "guided-diffusion methods and the exact Bayes posterior.")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--checkpoint", default=None, help="use this trained (a, u) prior instead of the shipped one")
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), choices=METHODS)
    p.add_argument("--batch-size", type=int, default=2,
                   help="samples per compiled batch (timings exclude the first batch, which compiles)")
    _add_common(p)
    p.set_defaults(func=run_demo, samples=4, steps=100)
