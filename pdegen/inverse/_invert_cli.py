"""``pdegen invert`` (a benchmark task, or the user's own mesh, sensors and data with ``--mesh``)
and ``pdegen demo`` (the Poisson inverse problem on the shipped prior): tables, figures and JSON."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = [
    "register",
    "run_invert",
    "run_invert_mesh",
    "run_demo",
    "compare_methods",
    "format_table",
    "DEMO_METHODS",
]

DEMO_METHODS = ("bayes", "map", "pigdm", "dps", "diffusionpde")
TASK_METHODS = ("bayes", "tmpd-cached")
TASK_SENSOR_FRACTION = 0.03
# Per-method defaults (observation step for DPS-type guidance; physics weight for the joint route).
METHOD_DEFAULTS = {
    "dps": {"scale": 1.0},
    "diffusionpde": {"scale": 1.0, "physics_weight": 1.0},
}


def _sampler_name(args, prior) -> str:
    """The sampler a run used: ``--sampler``, or the default for the prior's process."""
    from pdegen.models import default_sampler

    return args.sampler or default_sampler(prior.sde)


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def _enable_compilation_cache():
    """Persist compiled samplers between runs (the demo is mostly compilation on a first run)."""
    import jax

    folder = os.environ.get(
        "PDEGEN_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "pdegen", "jax")
    )
    try:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError):  # a read-only home: just compile
        return


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
    _positive("--noise", noise, allow_zero=True)
    _check_sampling_options(args)
    if args.grid is not None and args.grid < 3:
        raise ValueError(f"--grid must be >= 3, got {args.grid}")
    if args.discrepancy is not None:
        _positive("--discrepancy", args.discrepancy, allow_zero=True)
    _positive("--discrepancy-length", args.discrepancy_length)
    for flag, value in (("--scale", args.scale), ("--physics-weight", args.physics_weight)):
        if value is not None:
            _positive(flag, value, allow_zero=True)
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
    _enable_x64()
    _enable_compilation_cache()
    import jax

    from pdegen._io import check_output_dir

    from ._tasks import make_task, parse_task_name

    sensors, noise = check_task_options(args)
    check_output_dir(args.out)
    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint: no such folder {args.checkpoint!r}")
    pde, _ = parse_task_name(args.task)
    methods = args.method or list(TASK_METHODS)
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
        "sampler": _sampler_name(args, prior),
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

MESH_METHODS_DEFAULT = ("bayes", "pigdm")


class MeshPDE(NamedTuple):
    """What ``--pde NAME`` means: the equation (``{k}`` stands for the wavenumber where it enters),
    whether ``u`` is linear in ``a``, and the unknown as a :class:`pdegen.fem.ParameterMap`."""

    equation: str
    linear: bool
    build: Callable  # (space, wavenumber) -> ParameterMap
    uses_wavenumber: bool = False

    def label(self, wavenumber: float) -> str:
        return self.equation.format(k=f"{wavenumber:g}")


def _poisson_source(space, wavenumber):
    from pdegen import fem

    return fem.Source(fem.Poisson(space), sign=1.0)


def _helmholtz_source(space, wavenumber):
    from pdegen import fem

    return fem.Source(fem.Helmholtz(space), sign=1.0, k=float(wavenumber))


def _log_permeability(space, wavenumber):
    from pdegen import fem

    return fem.LogPermeability(fem.Darcy(space), f=1.0)


MESH_PDES = {
    "poisson": MeshPDE("-Lap u = a, u = 0 on the boundary", True, _poisson_source),
    "helmholtz": MeshPDE(
        "-Lap u - k^2 u = a (k = {k}), u = 0 on the boundary",
        True,
        _helmholtz_source,
        uses_wavenumber=True,
    ),
    "darcy": MeshPDE("-div(exp(a) grad u) = 1, u = 0 on the boundary", False, _log_permeability),
}
GAUSSIAN_ONLY_METHODS = ("bayes", "map")
MAX_DENSE_NODES = 6000  # matern_prior's dense eigendecomposition limit


def _field_method_names() -> tuple:
    from ._methods import FIELD_METHODS

    return tuple(FIELD_METHODS)


def _is_learned(args) -> bool:
    return bool(args.checkpoint) or args.prior not in (None, "matern")


def _positive(flag: str, value, *, allow_zero: bool = False) -> None:
    ok = value is not None and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{flag} must be finite and {bound}, got {value}")


def check_mesh_options(args) -> list:
    """The methods to run; a ``ValueError`` for any option that cannot work (no file is read)."""
    methods = list(args.method or MESH_METHODS_DEFAULT)
    names = _field_method_names()
    for m in methods:
        if m not in names:
            raise ValueError(
                f"--method {m} is a task-mode method; with --mesh use {', '.join(names)}"
            )
    if len(set(methods)) != len(methods):
        raise ValueError(f"--method lists a method twice: {' '.join(methods)}")
    if args.noise is None:
        raise ValueError(
            "--noise: with --mesh give the noise standard deviation of the data in "
            "data units (> 0), e.g. --noise 0.01"
        )
    _positive("--noise", args.noise)
    for flag, value in (("--length-scale", args.length_scale), ("--prior-std", args.prior_std)):
        _positive(flag, value)
    _positive("--wavenumber", args.wavenumber, allow_zero=True)
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {args.rank}")
    if not MESH_PDES[args.pde].linear and "bayes" in methods:
        raise ValueError(
            f"--method bayes: the exact posterior needs a linear forward map, but "
            f"--pde {args.pde} is nonlinear in a ({_equation(args)}); use map, "
            f"pigdm, tmpd or dps"
        )
    if args.prior in ("exact", "exact-joint"):
        raise ValueError(
            f"--prior {args.prior} is for task mode; with --mesh use --prior matern "
            f"(a Gaussian prior on any mesh) or a shipped prior name"
        )
    if _is_learned(args):
        closed = [m for m in methods if m in GAUSSIAN_ONLY_METHODS]
        if closed:
            raise ValueError(
                f"--method {' '.join(closed)} needs a Gaussian prior (--prior matern);"
                f" a learned prior has no closed form: use pigdm, tmpd or dps"
            )
    return methods


class MeshInputs(NamedTuple):
    """What mesh mode reads, all checked: the mesh, its P1/Q1 space, the sensors ``(m, 2)``, their
    observation matrix, the data ``(m,)`` and optionally the true field ``(npoints,)``."""

    mesh: object
    space: object
    points: np.ndarray
    observation: object
    y: np.ndarray
    truth: np.ndarray | None


def _require_files(args) -> None:
    for flag, path in (
        ("--mesh", args.mesh),
        ("--sensors", args.sensors),
        ("--data", args.data),
        ("--truth", args.truth),
        ("--checkpoint", args.checkpoint),
    ):
        if path is None:
            if flag in ("--sensors", "--data"):
                raise ValueError(f"{flag} FILE is required with --mesh")
            continue
        if not os.path.exists(path):
            raise FileNotFoundError(f"{flag}: no such file {path!r}")


def _check_prior_fits(args, npoints: int) -> None:
    if _is_learned(args):
        if not args.checkpoint:
            from pdegen.models import available_pretrained

            names = available_pretrained()
            if args.prior not in names:
                listing = ", ".join(names) if names else "none installed"
                raise ValueError(
                    f"--prior {args.prior!r}: not 'matern' nor a shipped prior "
                    f"({listing}); or pass --checkpoint PATH"
                )
        return
    if args.rank is None and npoints > MAX_DENSE_NODES:
        raise ValueError(
            f"--prior matern: the mesh has {npoints} nodes, too many for a dense "
            f"covariance (at most {MAX_DENSE_NODES}); give --rank (e.g. --rank 500) "
            f"for a truncated prior"
        )
    if args.rank is not None and args.rank >= npoints:
        raise ValueError(
            f"--rank must be below the number of mesh nodes ({npoints}), got {args.rank}"
        )


def _read_mesh(path):
    """``fem.read_mesh`` with meshio's console chatter kept out of the output; a corrupt file (on
    which meshio prints and exits) is a one-line ``ValueError``."""
    import contextlib
    import io

    import meshio

    from pdegen import fem

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return fem.read_mesh(path)
    except ValueError:  # pdegen's own checks (mixed cell types, not planar, ...): already clear
        raise
    except (Exception, SystemExit) as err:  # whatever meshio's parsers raise, or its sys.exit
        detail = " ".join(chatter.getvalue().split())
        if isinstance(err, meshio.ReadError):
            detail = f"{detail} {err}"
        elif not isinstance(err, SystemExit):
            detail = f"{detail} {type(err).__name__}: {err}"
        raise ValueError(
            f"--mesh {path!r}: not a readable mesh file (gmsh .msh, .xdmf, .vtu, "
            f"...): {detail.strip()}"
        ) from None


def read_mesh_inputs(args) -> MeshInputs:
    """Read and check every input file of mesh mode (cheap: no solve, no prior)."""
    from pdegen import fem

    from ._files import read_points, read_values

    _require_files(args)
    mesh = _read_mesh(args.mesh)
    _check_prior_fits(args, mesh.npoints)
    points = read_points(args.sensors)
    y = read_values(args.data)
    if y.shape[0] != points.shape[0]:
        raise ValueError(
            f"--data {args.data!r} has {y.shape[0]} values but --sensors "
            f"{args.sensors!r} has {points.shape[0]} points (one value per sensor, "
            f"in the same order)"
        )
    truth = None
    if args.truth is not None:
        truth = read_values(args.truth)
        if truth.shape[0] != mesh.npoints:
            raise ValueError(
                f"--truth {args.truth!r} has {truth.shape[0]} values; the mesh has "
                f"{mesh.npoints} nodes (one value per node)"
            )
    space = fem.FunctionSpace(mesh, "P1" if mesh.cell_type == "triangle" else "Q1")
    try:
        observation = space.point_observation(points)
    except ValueError as err:
        raise ValueError(
            f"--sensors {args.sensors!r} does not fit the mesh {args.mesh!r}: {err}"
        ) from None
    return MeshInputs(mesh, space, points, observation, y, truth)


def parameter_map(pde: str, space, *, wavenumber: float = 1.0):
    """The unknown ``a`` of ``pde`` as a :class:`pdegen.fem.ParameterMap` (see ``MESH_PDES``)."""
    if pde not in MESH_PDES:
        raise ValueError(f"--pde must be one of {', '.join(MESH_PDES)}, got {pde!r}")
    return MESH_PDES[pde].build(space, wavenumber)


def mesh_prior(args, inputs: MeshInputs):
    """The prior of ``--prior`` / ``--checkpoint`` on the mesh (the Matérn prior by default)."""
    from . import _priors

    if not _is_learned(args):
        return _priors.matern_prior(
            inputs.space, length_scale=args.length_scale, sigma=args.prior_std, rank=args.rank
        )
    from pdegen.models import load_checkpoint, load_pretrained

    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else load_pretrained(args.prior)
    name = os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint else args.prior
    return _priors.learned_prior(ckpt, inputs.mesh, channel="a", name=name)


def build_mesh_problem(args, inputs: MeshInputs):
    """``(prior, likelihood)``: the expensive part (prior covariance, one adjoint solve per sensor
    for a linear forward map)."""
    from ._likelihood import gaussian_likelihood, pde_forward

    prior = mesh_prior(args, inputs)
    param = parameter_map(args.pde, inputs.space, wavenumber=args.wavenumber)
    forward = pde_forward(param, inputs.observation)
    likelihood = gaussian_likelihood(forward, inputs.y, noise_std=args.noise, points=inputs.points)
    return prior, likelihood


def _method_object(name: str, args):
    from ._methods import DPS, FIELD_METHODS

    if name == "dps" and args.scale is not None:
        return DPS(scale=float(args.scale))
    return FIELD_METHODS[name]


def mesh_row(name: str, post, likelihood, inputs: MeshInputs, wall_seconds: float) -> dict:
    """Metrics of one method: data misfit (RMS whitened residual of the mean), posterior std at the
    sensors and over the mesh, timings; ``rel_l2`` and ``coverage90`` when the truth is known."""
    from ._field_posterior import field_metrics

    std = np.asarray(post.std, np.float64)
    row = {
        "method": name,
        "misfit": likelihood.misfit(post.mean),
        "std_at_sensors": float(np.mean(inputs.observation.to_scipy() @ std)),
        "mean_std": float(np.mean(std)),
        "seconds_per_sample": post.seconds_per_sample,
        "compile_seconds": post.compile_seconds,
        "wall_seconds": wall_seconds,
        "num_samples": int(post.samples.shape[0]),
    }
    if inputs.truth is not None:
        metrics = field_metrics(post, inputs.truth)
        row.update(rel_l2=metrics["rel_l2"], coverage90=metrics["coverage90"])
    return row


def _progress_bar(args, name: str):
    if args.quiet or not sys.stderr.isatty():  # a line per method is enough in logs
        return None
    from tqdm.auto import tqdm

    return tqdm(total=args.samples, desc=name, unit="sample", leave=False, dynamic_ncols=True)


def _sample(args, name: str, key, prior, likelihood):
    from ._sample import sample_posterior

    bar = _progress_bar(args, name)
    try:
        return sample_posterior(
            prior,
            likelihood,
            method=_method_object(name, args),
            key=key,
            num_samples=args.samples,
            num_steps=args.steps,
            sampler=args.sampler,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()


def run_mesh_methods(args, methods, prior, likelihood, inputs: MeshInputs):
    """Run each method; returns ``(rows, posteriors)``. A method whose sampler diverges is reported
    and skipped (its row holds the error)."""
    import jax

    key = jax.random.key(args.seed)
    rows, posts = [], {}
    for i, name in enumerate(methods):
        tag = f"  [{i + 1}/{len(methods)}] {name}:"
        t0 = time.perf_counter()
        try:
            post = _sample(args, name, jax.random.fold_in(key, i), prior, likelihood)
        except FloatingPointError as err:
            print(f"{tag} failed ({err})", flush=True)
            rows.append({"method": name, "error": str(err)})
            continue
        wall = time.perf_counter() - t0
        row = mesh_row(name, post, likelihood, inputs, wall)
        rows.append(row)
        posts[name] = post
        print(
            f"{tag} {row['num_samples']} sample(s) in {wall:.1f} s "
            f"({post.seconds_per_sample:.3g} s/sample), misfit {row['misfit']:.3f}",
            flush=True,
        )
    return rows, posts


def format_mesh_table(rows) -> str:
    truth = any("rel_l2" in r for r in rows)
    head = f"{'method':<15}{'misfit':>9}{'std@sensors':>13}{'mean std':>11}{'s/sample':>10}"
    head += f"{'rel L2':>9}{'cover90':>9}" if truth else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<15}failed: {r['error'][:60]}")
            continue
        line = (
            f"{r['method']:<15}{r['misfit']:>9.3f}{r['std_at_sensors']:>13.3g}"
            f"{r['mean_std']:>11.3g}{r['seconds_per_sample']:>10.3g}"
        )
        if truth:
            line += f"{r['rel_l2']:>9.3f}{r['coverage90']:>9.2f}"
        lines.append(line)
    return "\n".join(lines)


def strict_json(obj):
    """``obj`` with NaN / inf replaced by ``None`` and NumPy scalars by Python numbers (see
    :func:`pdegen._io.json_safe`; ``write_json_atomic`` applies it to everything it writes)."""
    from pdegen._io import json_safe

    return json_safe(obj)


def _equation(args) -> str:
    return MESH_PDES[args.pde].label(args.wavenumber)


def _write_mesh_outputs(args, inputs: MeshInputs, prior, rows, posts) -> list:
    from ._files import plot_field_posterior, write_posterior

    files = []
    for row in rows:
        post = posts.get(row["method"])
        if post is None:
            continue
        stem = row["method"]
        row["files"] = write_posterior(args.out, inputs.mesh, post, stem=stem, truth=inputs.truth)
        title = (
            f"{args.pde}: {_equation(args)}\nprior {prior.name}, "
            f"{inputs.points.shape[0]} sensors, noise std {args.noise:g}, "
            f"misfit {row['misfit']:.3f}"
        )
        png = plot_field_posterior(
            os.path.join(args.out, stem + ".png"),
            inputs.mesh,
            post,
            sensors=inputs.points,
            truth=inputs.truth,
            title=title,
        )
        row["files"].append(png)
        files += row["files"]
    return files


def _mesh_summary(args, inputs: MeshInputs, prior, rows) -> dict:
    mesh = inputs.mesh
    prior_info = {"name": prior.name, "kind": "learned" if _is_learned(args) else "matern"}
    if not _is_learned(args):
        prior_info.update(length_scale=args.length_scale, std=args.prior_std, rank=args.rank)
    spec = MESH_PDES[args.pde]
    pde = {"name": args.pde, "equation": _equation(args), "linear": spec.linear}
    if spec.uses_wavenumber:
        pde["wavenumber"] = args.wavenumber
    return {
        "mesh": os.path.abspath(args.mesh),
        "npoints": mesh.npoints,
        "ncells": mesh.ncells,
        "cell_type": mesh.cell_type,
        "sensors": {
            "file": os.path.abspath(args.sensors),
            "count": int(inputs.points.shape[0]),
            "points": inputs.points.tolist(),
        },
        "data": os.path.abspath(args.data),
        "noise_std": args.noise,
        "truth": os.path.abspath(args.truth) if args.truth else None,
        "pde": pde,
        "prior": prior_info,
        "settings": {
            "samples": args.samples,
            "steps": args.steps,
            "sampler": _sampler_name(args, prior),
            "seed": args.seed,
        },
        "methods": {r["method"]: r for r in rows},
    }


def run_invert_mesh(args) -> int:
    """``pdegen invert --mesh``: every input is checked before the prior and the forward map are
    built."""
    from pdegen._errors import NonFiniteError
    from pdegen._io import check_output_dir, write_json_atomic

    methods = check_mesh_options(args)
    check_output_dir(args.out)
    _enable_x64()
    inputs = read_mesh_inputs(args)
    _enable_compilation_cache()
    t_start = time.perf_counter()
    mesh = inputs.mesh
    print(
        f"pdegen invert: {args.mesh} ({mesh.npoints} nodes, {mesh.ncells} {mesh.cell_type}s), "
        f"{inputs.points.shape[0]} sensors, noise std {args.noise:g}",
        flush=True,
    )
    print(f"  pde    {args.pde}: {_equation(args)}; recover a", flush=True)
    prior, likelihood = build_mesh_problem(args, inputs)
    print(f"  prior  {prior.name}; set up in {time.perf_counter() - t_start:.1f} s", flush=True)
    rows, posts = run_mesh_methods(args, methods, prior, likelihood, inputs)
    if not posts:  # nothing to write: one error, no summary of failures
        failures = "; ".join(f"{r['method']}: {r['error']}" for r in rows)
        raise NonFiniteError(f"every method failed ({failures}); nothing was written")
    files = _write_mesh_outputs(args, inputs, prior, rows, posts)
    summary = os.path.join(args.out, "summary.json")
    write_json_atomic(summary, strict_json(_mesh_summary(args, inputs, prior, rows)))
    print(format_mesh_table(rows))
    print(
        "  misfit: RMS whitened residual of the posterior mean (about 1 or below: fits the data "
        "to the noise level);\n  std@sensors / mean std: posterior std at the sensors / over "
        "the mesh nodes"
    )
    print(
        f"wrote {len(files) + 1} files to {args.out} (summary.json, <method>.xdmf/.h5/.vtu/.png) "
        f"in {time.perf_counter() - t_start:.1f} s"
    )
    return 0


def _add_mesh_options(p) -> None:
    g = p.add_argument_group(
        "mesh mode (your own problem; --task and the task-mode options are not used)"
    )
    g.add_argument(
        "--mesh",
        default=None,
        help="mesh file (gmsh .msh, .xdmf, .vtu, ...): switches to mesh mode",
    )
    g.add_argument(
        "--pde",
        choices=tuple(MESH_PDES),
        default="poisson",
        help="; ".join(f"{k}: {v.equation.format(k='k')}" for k, v in MESH_PDES.items()),
    )
    g.add_argument(
        "--data", default=None, help="observed u at the sensors (CSV one column, or .npy)"
    )
    g.add_argument(
        "--truth",
        default=None,
        help="optional true a at the mesh nodes (synthetic studies): adds rel. L2 and coverage",
    )
    g.add_argument("--wavenumber", type=float, default=1.0, help="Helmholtz wavenumber k")
    g.add_argument(
        "--length-scale", type=float, default=0.2, help="Matern prior correlation length"
    )
    g.add_argument("--prior-std", type=float, default=1.0, help="Matern prior standard deviation")
    g.add_argument(
        "--rank",
        type=int,
        default=None,
        help=f"Matern prior: keep the leading modes (needed above {MAX_DENSE_NODES} nodes)",
    )


def run_demo(args) -> int:
    """Run ``pdegen demo``: the Poisson inverse problem on a 32x32 grid with the shipped prior
    ``poisson-joint-32`` and several guidance methods beside the exact Bayes posterior; prints
    the table and writes figures and JSON to ``--out`` (``out/demo``).

    Args:
        args: The parsed command line (from the parser :func:`register` built).

    Returns:
        The exit code, 0 on success.
    """
    _enable_x64()
    _enable_compilation_cache()
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
        help=f"methods (default: {' '.join(TASK_METHODS)}; with --mesh "
        f"{' '.join(MESH_METHODS_DEFAULT)}; mesh mode accepts "
        f"{', '.join(_field_method_names())})",
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
    _add_mesh_options(p)
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
