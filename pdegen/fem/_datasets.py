"""Data sets of (coefficient, solution) pairs for the DiffusionPDE tasks, batched and sharded."""

from __future__ import annotations

import json
import os
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from .._io import atomic_write, json_safe
from ._mesh import unit_square
from ._parameters import Source, ThresholdPermeability
from ._problems import Darcy, Helmholtz, Poisson
from ._random_fields import gaussian_random_field
from ._space import FunctionSpace

TASKS = {
    "poisson": "Laplacian(u) = a on the unit square, u = 0 on the boundary; a a GRF (alpha=2, tau=3)",
    "helmholtz": "Laplacian(u) + k^2 u = a with k = 1 on the unit square, u = 0 on the boundary; "
    "a a GRF (alpha=2, tau=3)",
    "darcy": "-div(a grad u) = 1 on the unit square, u = 0 on the boundary; a = 12 where a GRF "
    "(alpha=2, tau=3) is >= 0, else 3",
}
"""The data-set tasks of :func:`generate_dataset`: name -> the PDE, domain and input law."""
CHANNELS = ["a", "u"]
FORMAT_VERSION = 1


class PDETask:
    """One DiffusionPDE task on an ``s x s`` grid of the unit square (P1 triangles).

    ``pair(field)`` maps GRF nodal values to the pair ``(a, u)`` of nodal vectors; ``residual``
    returns the relative FEM residual of a pair. ``pair`` is ``jit``/``vmap``/``grad``-able.
    """

    def __init__(
        self,
        task: str,
        grid: int = 64,
        *,
        method: str = "auto",
        alpha: float = 2.0,
        tau: float = 3.0,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        if int(grid) != grid or grid < 3:
            raise ValueError(f"grid must be an integer >= 3 (nodes per side), got {grid}")
        self.task, self.grid, self.alpha, self.tau = task, int(grid), float(alpha), float(tau)
        self.mesh = unit_square(self.grid)
        self.space = FunctionSpace(self.mesh, "P1")
        if task == "poisson":
            self.parameter = Source(Poisson(self.space, method=method), sign=-1.0, kappa=1.0)
        elif task == "helmholtz":
            self.parameter = Source(Helmholtz(self.space, method=method), sign=-1.0, k=1.0)
        else:
            self.parameter = ThresholdPermeability(Darcy(self.space, method=method))
        self.problem = self.parameter.problem
        self.equation = TASKS[task]

    def theta(self, a):
        """Keyword arguments of ``problem.solve`` for the coefficient/source nodal values ``a``."""
        return {**self.parameter.fixed, **self.parameter.coefficients(a)}

    def coefficient(self, field):
        """The task's input ``a`` from GRF nodal values (Darcy: threshold to 12 / 3)."""
        return self.parameter.from_field(field)

    def pair(self, field):
        a = self.coefficient(field)
        return a, self.problem.solve(**self.theta(a))

    def sample(self, key):
        """One ``(a, u)`` pair of nodal vectors from a GRF draw."""
        field = gaussian_random_field(self.mesh, key=key, alpha=self.alpha, tau=self.tau)
        return self.pair(field)

    def residual(self, a, u):
        """Relative FEM residual ``||A(a) u - b(a)|| / ||b(a)||`` of a pair of nodal vectors."""
        return self.parameter.residual(a, u, smooth=False)


def generate_dataset(
    task: str,
    n: int,
    *,
    key,
    grid: int = 64,
    batch_size: int = 64,
    progress: bool = True,
    dtype=np.float32,
    devices=None,
    method: str | None = None,
):
    """Generate ``n`` pairs ``(a, u)`` as images: an array ``(n, 2, grid, grid)`` and metadata.

    Sample ``i`` uses ``jax.random.split(key, n)[i]``, so results do not depend on ``batch_size``
    or on the number of devices. With one device the CPU default is the direct solver (for Poisson
    and Helmholtz one factorisation serves a whole batch); with several devices each batch is
    sharded over them (``jax.sharding``, batch axis) and solved with a Krylov method.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"generate_dataset: n must be a positive integer, got {n}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"generate_dataset: batch_size must be a positive integer, got {batch_size}"
        )
    devices = list(devices) if devices is not None else jax.devices()
    sharded = len(devices) > 1
    if method is None:
        method = ("bicgstab" if task == "helmholtz" else "cg") if sharded else "auto"
    t = PDETask(task, grid, method=method)
    keys = jax.random.split(key, int(n))

    @jax.jit
    def batch(ks):
        a, u = jax.vmap(t.sample)(ks)
        res = jax.vmap(t.residual)(a, u)
        return a, u, res

    if sharded:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        sharding = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
        batch_size = int(np.ceil(batch_size / len(devices)) * len(devices))
    out = np.empty((int(n), 2, t.grid, t.grid), dtype=dtype)
    residuals = np.empty(int(n))
    bar = _progress(int(n), f"pdegen data {task}", progress)
    t0 = time.perf_counter()
    for start in range(0, int(n), batch_size):
        ks = keys[start : start + batch_size]
        m = ks.shape[0]
        if sharded:
            pad = (-m) % len(devices)
            if pad:
                ks = jnp.concatenate([ks, keys[:pad]])
            ks = jax.device_put(ks, sharding)
        a, u, res = batch(ks)
        a, u, res = np.asarray(a)[:m], np.asarray(u)[:m], np.asarray(res)[:m]
        out[start : start + m, 0] = a.reshape(m, t.grid, t.grid)
        out[start : start + m, 1] = u.reshape(m, t.grid, t.grid)
        residuals[start : start + m] = res
        bar.update(m)
    bar.close()
    seconds = time.perf_counter() - t0
    meta = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "equation": t.equation,
        "grid": t.grid,
        "n": int(n),
        "channels": CHANNELS,
        "layout": "(n, channel, y, x); row 0 is y = 0; nodal values of P1 on the grid",
        "alpha": t.alpha,
        "tau": t.tau,
        "seed_key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
        "solver": method,
        "devices": len(devices),
        "seconds": seconds,
        "max_relative_residual": float(residuals.max()),
        "mean_relative_residual": float(residuals.mean()),
        "pdegen_version": _version(),
    }
    return out, meta


def _version():
    from pdegen import __version__

    return __version__


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pair", disable=not enabled)


def _atomic_write_bytes(path, write):
    with atomic_write(path, "wb") as fh:
        write(fh)


def save_dataset(path, fields, meta: dict) -> str:
    """Write ``fields`` and ``meta`` to ``path`` (``.npz``) and ``meta`` to ``<path>.json``, atomically."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"save_dataset: path must end with .npz, got {path!r}")
    fields = np.asarray(fields)
    if fields.ndim != 4 or fields.shape[1] != len(meta.get("channels", CHANNELS)):
        raise ValueError(
            f"save_dataset: fields must have shape (n, channels, ny, nx), got {fields.shape}"
        )
    text = json.dumps(json_safe(meta), indent=2, allow_nan=False)
    _atomic_write_bytes(path, lambda fh: np.savez(fh, fields=fields, meta=np.array(text)))
    _atomic_write_bytes(path[:-4] + ".json", lambda fh: fh.write(text.encode()))
    return path


def load_dataset(path):
    """Read a data set written by :func:`save_dataset`: ``(fields, meta)``, validated."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_dataset: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = dict(z) if hasattr(z, "files") else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        reason = type(err).__name__ if "pickle" in str(err) else f"{type(err).__name__}: {err}"
        raise ValueError(
            f"load_dataset: {path!r} is not a pdegen data set (.npz) or is corrupt ({reason})"
        ) from None
    if entries is None or "fields" not in entries or "meta" not in entries:
        raise ValueError(
            f"load_dataset: {path!r} is not a readable pdegen data set (no 'fields'/'meta')"
        )
    fields = entries["fields"]
    try:
        meta = json.loads(str(entries["meta"]))
    except json.JSONDecodeError as err:
        raise ValueError(f"load_dataset: {path!r} has unreadable metadata ({err})") from err
    expected = (meta.get("n"), len(meta.get("channels", [])), meta.get("grid"), meta.get("grid"))
    if fields.shape != expected:
        raise ValueError(
            f"load_dataset: {path!r} holds fields of shape {fields.shape}, metadata says {expected}"
        )
    if not np.all(np.isfinite(fields)):
        raise ValueError(f"load_dataset: {path!r} contains NaN or inf")
    return fields, meta
