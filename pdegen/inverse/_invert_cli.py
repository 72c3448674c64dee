"""``pdegen invert`` (a benchmark task, or the user's own mesh, sensors and data with ``--mesh``)
and ``pdegen demo`` (the Poisson inverse problem on the shipped prior): tables, figures and JSON."""

from __future__ import annotations

import os
import time

import numpy as np

from ._cli_setup import check_positive, enable_compilation_cache, enable_x64, sampler_name
from ._invert_mesh import (
    MESH_METHODS_DEFAULT,
    add_mesh_options,
    field_method_names,
    run_invert_mesh,
)

__all__ = [
    "register",
    "run_invert",
    "run_demo",
    "compare_methods",
    "format_table",
    "DEMO_METHODS",
]

DEMO_METHODS = ("bayes", "map", "pigdm", "dps", "diffusionpde")
TASK_METHODS = ("bayes", "tmpd-cached")
NONLINEAR_TASK_METHODS = ("map", "pigdm")  # no exact posterior (Darcy): the MAP point instead
TASK_SENSOR_FRACTION = 0.03
# Per-method defaults (observation step for DPS-type guidance; physics weight for the joint route).
METHOD_DEFAULTS = {
    "dps": {"scale": 1.0},
    "diffusionpde": {"scale": 1.0, "physics_weight": 1.0},
}


def find_shipped_prior(pde: str = "poisson", *, joint: bool = False) -> str:
    """Name of a shipped prior for ``pde`` tasks: a joint ``(a, u)`` prior of that PDE when ``joint``
    (or when no prior over ``a`` alone is shipped), else a prior over the source ``a``, which
    serves every linear PDE through the FEM solve; a ``ValueError`` naming
    ``available_pretrained()`` when there is none."""
    from pdegen.models import available_pretrained, pretrained_metadata

    names = available_pretrained()
    channels = {n: tuple(pretrained_metadata(n).get("channels", ())) for n in names}
    joint_names = [n for n in names if channels[n] == ("a", "u") and pde in n.lower()]
    a_names = [n for n in names if channels[n] == ("a",)]
    matching = joint_names if joint else a_names + joint_names
    if not matching:
        listing = ", ".join(repr(n) for n in names) if names else "none"
        kind = f"joint (a, u) {pde}" if joint else f"{pde} or source (a)"
        raise ValueError(
            f"no shipped {kind} prior: pdegen.models.available_pretrained() lists {listing}. "
            f"Install the package data (pdegen/data/<name>/) or pass --checkpoint PATH to a trained prior"
        )
    return matching[0]


def load_prior(
    prior: str | None = None,
    checkpoint: str | None = None,
    *,
    grid: int | None = None,
    pde: str = "poisson",
    joint: bool = False,
):
    """A :class:`FieldPrior` from ``--checkpoint PATH``, ``--prior NAME`` / ``exact`` / ``exact-joint``
    (default: a shipped prior for ``pde``, joint when ``joint``; see :func:`find_shipped_prior`)."""
    from pdegen.models import load_checkpoint, load_pretrained

    from ._field_prior import gaussian_prior, prior_from_model

    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        return prior_from_model(ckpt, name=os.path.basename(os.path.normpath(checkpoint)))
    if prior in ("exact", "exact-joint"):
        if grid is None:
            raise ValueError("--grid is needed with --prior exact")
        channels = ("a",) if prior == "exact" else ("a", "u")
        return gaussian_prior(grid, pde=pde, channels=channels)
    name = prior or find_shipped_prior(pde, joint=joint)
    return prior_from_model(load_pretrained(name), name=name)


def compare_methods(
    prior,
    task,
    methods,
    *,
    key,
    num_samples: int = 4,
    num_steps: int = 100,
    sampler: str | None = None,
    route: str | None = None,
    project: bool = False,
    options: dict | None = None,
    progress: bool = True,
    batch_size: int | None = None,
):
    """Run ``methods`` on one task; returns ``(rows, posteriors)`` with one metrics dict per method."""
    import jax

    from ._metrics import evaluate
    from ._sample import sample_posterior

    options = options or {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=num_samples * len(methods),
            desc=f"{task.name} {task.grid}x{task.grid}",
            unit="sample",
            dynamic_ncols=True,
        )
    rows, posts = [], {}
    try:
        for i, method in enumerate(methods):
            if bar is not None:
                bar.set_postfix(method=method)
            kw = dict(METHOD_DEFAULTS.get(method, {}))
            kw.update(options.get(method, {}))
            t0 = time.perf_counter()
            post = sample_posterior(
                prior,
                task,
                method=method,
                key=jax.random.fold_in(key, i),
                num_samples=num_samples,
                num_steps=num_steps,
                sampler=sampler,
                route=route,
                project=project,
                progress=bar,
                batch_size=batch_size,
                **kw,
            )
            row = evaluate(post, task)
            row["wall_seconds"] = time.perf_counter() - t0
            row["compile_seconds"] = post.compile_seconds
            # one-off work before sampling (prior samples, variance or covariance tables)
            row["setup_seconds"] = post.info.get("setup_seconds")  # None where not measured
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
    """The fixed-width table ``pdegen invert`` and ``pdegen demo`` print, one line per method.

    Args:
        rows: Dicts with ``method``, ``route``, ``rel_l2``, ``coverage90``, ``pde_residual``,
            ``seconds_per_sample`` and optionally ``ratio_to_bayes`` (as from
            :func:`compare_methods`).

    Returns:
        The table as one string: a header, a rule and one line per row.
    """
    head = f"{'method':<21}{'route':<7}{'rel L2':>9}{'/ Bayes':>9}{'cover90':>9}{'residual':>10}{'s/sample':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.get("ratio_to_bayes", float("nan"))
        lines.append(
            f"{r['method']:<21}{r['route']:<7}{r['rel_l2']:>9.3f}{ratio:>9.2f}{r['coverage90']:>9.2f}"
            f"{r['pde_residual']:>10.1e}{r['seconds_per_sample']:>10.3f}"
        )
    return "\n".join(lines)


def plot_posteriors(task, posts, path, *, title: str = ""):
    """Truth, sensors, and per method the posterior mean, std and error of the target channel."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from pdegen.fem import save_figure

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
        show(
            axes[i, 0],
            mean,
            f"{m}: {label} (rel. L2 {rel:.3f})",
            cmap="cividis",
            vmin=vmin,
            vmax=vmax,
        )
        if point:
            axes[i, 1].axis("off")
            axes[i, 1].text(
                0.5,
                0.5,
                f"{m}: a point estimate\n(no posterior spread)",
                fontsize=8,
                ha="center",
                va="center",
            )
        else:
            show(axes[i, 1], std, f"{m}: posterior std", cmap="magma")
        show(
            axes[i, 2],
            np.abs(mean - truth[c]),
            f"{m}: |{'estimate' if point else 'mean'} - truth|",
            cmap="Reds",
            vmin=0,
            vmax=emax,
        )
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path


def _write_outputs(out, task, rows, posts, settings, stem):
    from pdegen._io import write_json_atomic

    png = plot_posteriors(
        task,
        posts,
        os.path.join(out, stem + ".png"),
        title=f"{task.name}, {task.grid}x{task.grid}, {task.num_sensors} sensors\n"
        f"prior: {settings.get('prior')}",
    )
    payload = {
        "task": task.name,
        "grid": task.grid,
        "sensors": task.num_sensors,
        "noise_std": task.noise_std,
        "seed": task.seed,
        "index": task.index,
        "settings": settings,
        "rows": rows,
    }
    write_json_atomic(os.path.join(out, stem + ".json"), payload)
    return png, os.path.join(out, stem + ".json")


def _task_sensor_fraction(value) -> float:
    if value is None:
        return TASK_SENSOR_FRACTION
    try:
        fraction = float(value)
    except ValueError:
        raise ValueError(
            f"--sensors: in task mode give the fraction of grid nodes observed "
            f"(e.g. 0.03), got {value!r}; a file of sensor coordinates needs --mesh"
        ) from None
    if not 0 < fraction <= 1:
        raise ValueError(
            f"--sensors: the fraction of grid nodes observed must be in (0, 1], got {value}"
        )
    return fraction


def _check_sampling_options(args) -> None:
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")


def check_task_options(args) -> tuple:
    """Task mode: every option that needs no file, checked before any work; returns the sensor
    fraction and the noise level."""
    for flag, value in (("--data", args.data), ("--truth", args.truth)):
        if value is not None:
            raise ValueError(f"{flag} needs --mesh (task mode makes its own data)")
    sensors = _task_sensor_fraction(args.sensors)
    noise = 0.0 if args.noise is None else args.noise
    check_positive("--noise", noise, allow_zero=True)
    _check_sampling_options(args)
    if args.grid is not None and args.grid < 3:
        raise ValueError(f"--grid must be >= 3, got {args.grid}")
    if args.discrepancy is not None:
        check_positive("--discrepancy", args.discrepancy, allow_zero=True)
    check_positive("--discrepancy-length", args.discrepancy_length)
    for flag, value in (("--scale", args.scale), ("--physics-weight", args.physics_weight)):
        if value is not None:
            check_positive(flag, value, allow_zero=True)
    if args.index < 0:
        raise ValueError(f"--index must be >= 0, got {args.index}")
    return sensors, noise


def check_prior_fits_task(prior, methods, route, *, grid):
    """Before any method runs: every sampling method's prior must generate fields on the task's
    grid (a resolution-free prior is moved to it) with the channels its route needs (the closed
    forms ``bayes`` / ``map`` need no prior). Returns the prior on the task's grid."""
    from ._field_prior import CHANNELS, prior_at_grid

    sampled = [m for m in methods if m not in ("bayes", "map")]
    if not sampled:
        return prior
    prior = prior_at_grid(prior, grid)
    if prior.grid != grid:
        raise ValueError(
            f"--grid {grid}: the prior {prior.name} generates {prior.grid}x{prior.grid} fields, "
            f"so --method {' '.join(sampled)} cannot run on a {grid}x{grid} task; drop --grid "
            f"(the prior's grid is the default), use --prior exact, or a prior trained on "
            f"{grid}x{grid} fields (--checkpoint)"
        )
    for m in sampled:
        r = route or (
            "joint" if tuple(prior.channels) == CHANNELS and m == "diffusionpde" else "solve"
        )
        if r == "joint" and tuple(prior.channels) != CHANNELS:
            raise ValueError(
                f"--route joint (for --method {m}) needs a joint prior over {CHANNELS}; "
                f"{prior.name} has channels {tuple(prior.channels)}; use --route solve"
            )
        if r == "solve" and prior.channels[0] != "a":
            raise ValueError(
                f"--method {m}: the prior {prior.name} must have channel 'a' first, "
                f"got {tuple(prior.channels)}"
            )
    return prior


def run_invert(args) -> int:
    """Run ``pdegen invert``: a benchmark task (``--task``) or, with ``--mesh``, the user's own
    problem (:func:`run_invert_mesh`); samples each ``--method``'s posterior and writes the
    table, figures and JSON to ``--out``.

    Args:
        args: The parsed command line (from the parser :func:`register` built).

    Returns:
        The exit code, 0 on success.
    """
    if args.mesh is not None:
        return run_invert_mesh(args)
    enable_x64()
    enable_compilation_cache()
    import jax

    from pdegen._io import check_output_dir

    from ._tasks import LINEAR_PDES, make_task, parse_task_name

    sensors, noise = check_task_options(args)
    check_output_dir(args.out)
    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint: no such folder {args.checkpoint!r}")
    pde, _ = parse_task_name(args.task)
    linear = pde in LINEAR_PDES
    methods = args.method or list(TASK_METHODS if linear else NONLINEAR_TASK_METHODS)
    if not linear and "bayes" in methods:
        raise ValueError(
            f"--method bayes: {args.task} is nonlinear in a, so it has no exact Gaussian "
            "posterior; use map, mcmc, pigdm, dps or smc"
        )
    joint = args.route == "joint" or "diffusionpde" in methods
    prior = load_prior(args.prior, args.checkpoint, grid=args.grid, pde=pde, joint=joint)
    grid = prior.grid if args.grid is None else args.grid
    prior = check_prior_fits_task(prior, methods, args.route, grid=grid)
    task = make_task(
        args.task,
        grid=grid,
        sensor_fraction=sensors,
        noise=noise,
        seed=args.seed,
        index=args.index,
        discrepancy=args.discrepancy,
        discrepancy_length=args.discrepancy_length,
    )
    options = {
        m: {
            k: v
            for k, v in (("scale", args.scale), ("physics_weight", args.physics_weight))
            if v is not None
        }
        for m in methods
    }
    t0 = time.perf_counter()
    rows, posts = compare_methods(
        prior,
        task,
        methods,
        key=jax.random.key(args.seed),
        num_samples=args.samples,
        num_steps=args.steps,
        sampler=args.sampler,
        route=args.route,
        project=args.project,
        options=options,
        progress=not args.quiet,
    )
    settings = {
        "prior": prior.name,
        "samples": args.samples,
        "steps": args.steps,
        "sampler": sampler_name(args, prior),
        "route": args.route,
        "project": args.project,
    }
    png, js = _write_outputs(args.out, task, rows, posts, settings, task.name)
    print(
        f"pdegen invert {task.name}: {task.grid}x{task.grid} grid, {task.num_sensors} sensors on {task.observed}, "
        f"recover {task.target}; prior {prior.name}"
    )
    print(format_table(rows))
    print(f"wrote {png}, {js} ({time.perf_counter() - t0:.1f} s)")
    return 0


# ------------------------------------------------------------------------------- mesh mode
# ``pdegen invert --mesh FILE --sensors CSV --data CSV --noise STD``: the user's own problem.


def run_demo(args) -> int:
    """Run ``pdegen demo``: the Poisson inverse problem on a 32x32 grid with the shipped prior
    ``poisson-joint-32`` and several guidance methods beside the exact Bayes posterior; prints
    the table and writes figures and JSON to ``--out`` (``out/demo``).

    Args:
        args: The parsed command line (from the parser :func:`register` built).

    Returns:
        The exit code, 0 on success.
    """
    enable_x64()
    enable_compilation_cache()
    import jax

    from pdegen._io import check_output_dir

    from ._tasks import make_task

    _task_sensor_fraction(args.sensors)
    _check_sampling_options(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output_dir(args.out)
    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint: no such folder {args.checkpoint!r}")
    t_start = time.perf_counter()
    prior = load_prior(None, args.checkpoint, pde="poisson", joint=True)
    if tuple(prior.channels) != ("a", "u"):
        raise ValueError(
            f"the demo needs a joint (a, u) prior; {prior.name} has channels {prior.channels}"
        )
    task = make_task(
        "poisson-inverse", grid=prior.grid, sensor_fraction=args.sensors, seed=args.seed
    )
    print(
        f"pdegen demo: Poisson inverse problem (recover the source a from u at {task.num_sensors} sensors, "
        f"{100 * task.num_sensors / task.grid**2:.1f}% of a {task.grid}x{task.grid} grid, noise-free)"
    )
    print(
        f"  prior: {prior.name} (joint (a, u) diffusion model); {args.samples} posterior samples per method, "
        f"{args.steps} steps"
    )
    rows, posts = compare_methods(
        prior,
        task,
        args.methods,
        key=jax.random.key(args.seed),
        num_samples=args.samples,
        num_steps=args.steps,
        progress=not args.quiet,
        batch_size=args.batch_size,
    )
    settings = {
        "prior": prior.name,
        "samples": args.samples,
        "steps": args.steps,
        "sampler": "euler_maruyama",
    }
    png, js = _write_outputs(args.out, task, rows, posts, settings, "demo")
    print(format_table(rows))
    print(
        "  rel L2: of the posterior mean of a; / Bayes: ratio to the exact Gaussian posterior under the true GRF "
        "prior;\n  cover90: fraction of nodes inside the 90% interval; residual: relative FEM residual of (a, u)"
    )
    print(f"wrote {png}, {js} in {time.perf_counter() - t_start:.0f} s")
    return 0


def _add_common(p, *, sensors: bool = True):
    p.add_argument("--samples", type=int, default=8, help="posterior samples per method")
    p.add_argument("--steps", type=int, default=200, help="sampler steps")
    if sensors:
        p.add_argument(
            "--sensors",
            type=float,
            default=TASK_SENSOR_FRACTION,
            help="fraction of grid nodes observed",
        )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    """Add ``invert`` and ``demo`` to an ``argparse`` subparsers object."""
    from ._field_prior import ROUTES
    from ._task_posterior import METHODS, SAMPLERS
    from ._tasks import DIRECTIONS, PDES

    add_demo(subparsers)

    p = subparsers.add_parser(
        "invert",
        help="posterior sampling for a benchmark task or your own mesh, sensors and data",
        description="Task mode (--task): posterior sampling on a DiffusionPDE-style task; prints a "
        "table and writes a figure and JSON. Mesh mode (--mesh FILE --sensors CSV "
        "--data CSV --noise STD): recover the unknown field a of --pde on your mesh "
        "from point data; writes per method XDMF/VTU fields and a PNG, and "
        "summary.json.",
    )
    p.add_argument(
        "--task",
        default="poisson-inverse",
        choices=[f"{a}-{b}" for a in PDES for b in DIRECTIONS],
        help="task mode: the benchmark task",
    )
    p.add_argument(
        "--method",
        nargs="+",
        default=None,
        choices=METHODS,
        help=f"methods (default: {' '.join(TASK_METHODS)}, for darcy tasks "
        f"{' '.join(NONLINEAR_TASK_METHODS)}; with --mesh {' '.join(MESH_METHODS_DEFAULT)}, "
        "for --pde darcy map pigdm, with a learned prior pigdm dps; mesh mode accepts "
        f"{', '.join(field_method_names())})",
    )
    p.add_argument(
        "--prior",
        default=None,
        help="task mode: shipped prior name, 'exact' (exact GRF score over a) or "
        "'exact-joint' (default: shipped); mesh mode: 'matern' (default) or a "
        "shipped prior name",
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint folder of a trained prior")
    p.add_argument(
        "--sensors",
        default=None,
        help=f"task mode: fraction of grid nodes observed (default "
        f"{TASK_SENSOR_FRACTION}); mesh mode: sensor coordinates (CSV x,y or .npy)",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        help="task mode: relative observation noise (default 0: noise-free); mesh "
        "mode: the noise standard deviation in data units (required)",
    )
    add_mesh_options(p)
    task = p.add_argument_group("task mode only")
    task.add_argument("--grid", type=int, default=None, help="grid (default: the prior's)")
    task.add_argument(
        "--route",
        choices=ROUTES,
        default=None,
        help="solve: FEM forward model; joint: PDE residual",
    )
    task.add_argument(
        "--discrepancy",
        type=float,
        default=0.0,
        help="relative size of a smooth model error added to the data (statFEM; 0: none)",
    )
    task.add_argument(
        "--discrepancy-length", type=float, default=0.2, help="length scale of the model error"
    )
    task.add_argument("--index", type=int, default=0, help="test draw")
    task.add_argument(
        "--physics-weight",
        type=float,
        default=None,
        help="PDE-residual guidance weight (joint route)",
    )
    task.add_argument(
        "--project", action="store_true", help="replace u by solve(a) and report the effect"
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="reverse-time sampler (default: flow_ode for a flow prior, else euler_maruyama)",
    )
    p.add_argument("--scale", type=float, default=None, help="DPS/DiffusionPDE observation step")
    p.add_argument("--out", default="out/invert")
    _add_common(p, sensors=False)
    p.set_defaults(func=run_invert)


def add_demo(subparsers) -> None:
    """The ``demo`` subcommand (registered by :func:`register`)."""
    from ._task_posterior import METHODS

    p = subparsers.add_parser(
        "demo",
        help="the main demo: Poisson inverse problem on the shipped prior",
        description="Recover the Poisson source a from ~3% sensors of u with several "
        "guided-diffusion methods and the exact Bayes posterior.",
    )
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="use this trained (a, u) prior instead of the shipped one",
    )
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), choices=METHODS)
    p.add_argument(
        "--batch-size",
        type=int,
        default=2,
        help="samples per compiled batch (timings exclude the first batch, which compiles)",
    )
    _add_common(p)
    p.set_defaults(func=run_demo, samples=4, steps=100)
