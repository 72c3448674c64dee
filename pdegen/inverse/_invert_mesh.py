"""``pdegen invert --mesh``: the user's own mesh, sensors and data; the unknown field of a
Poisson, Helmholtz or Darcy problem recovered with a Matern or a learned prior; fields written as
XDMF / VTU, figures and ``summary.json``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._cli_setup import check_positive, enable_compilation_cache, enable_x64, sampler_name

__all__ = ["run_invert_mesh", "add_mesh_options", "MESH_PDES", "MESH_METHODS_DEFAULT"]

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


def field_method_names() -> tuple:
    from ._methods import FIELD_METHODS

    return tuple(FIELD_METHODS)


def _is_learned(args) -> bool:
    return bool(args.checkpoint) or args.prior not in (None, "matern")


def default_mesh_methods(args) -> tuple:
    """The methods mesh mode runs without ``--method``: the exact posterior where it exists
    (Matérn prior, linear PDE), else the MAP point (Matérn prior) or DPS (learned prior), and
    PiGDM."""
    if _is_learned(args):
        return ("pigdm", "dps")
    return MESH_METHODS_DEFAULT if MESH_PDES[args.pde].linear else ("map", "pigdm")


def check_mesh_options(args) -> list:
    """The methods to run; a ``ValueError`` for any option that cannot work (no file is read)."""
    methods = list(args.method or default_mesh_methods(args))
    names = field_method_names()
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
    check_positive("--noise", args.noise)
    for flag, value in (("--length-scale", args.length_scale), ("--prior-std", args.prior_std)):
        check_positive(flag, value)
    check_positive("--wavenumber", args.wavenumber, allow_zero=True)
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
            "sampler": sampler_name(args, prior),
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
    enable_x64()
    inputs = read_mesh_inputs(args)
    enable_compilation_cache()
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


def add_mesh_options(p) -> None:
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
        help="; ".join(f"{k}: {v.equation.format(k='--wavenumber')}" for k, v in MESH_PDES.items()),
    )
    g.add_argument(
        "--data", default=None, help="observed u at the sensors (CSV one column, or .npy)"
    )
    g.add_argument(
        "--truth",
        default=None,
        help="optional true a at the mesh nodes (synthetic studies): adds rel. L2 and coverage",
    )
    g.add_argument(
        "--wavenumber", type=float, default=1.0, help="Helmholtz wavenumber k (default 1)"
    )
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
