"""Dense operators of the benchmark tasks on their grids (computed once per task family and kept
in small LRU caches keyed by the task's physics): the GRF square root, the FEM solution operator,
the sensor operator, the channels' prior RMS and the noise floor the task-mode methods assume."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem

from ._tasks import InverseTask, physics_for


@functools.lru_cache(maxsize=8)
def grf_sqrt_matrix(grid: int, *, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """Dense ``L`` with ``a = L z`` (``z`` white noise): the GRF of the tasks, ``(g^2, g^2)``."""
    d = grid * grid

    def column(e):
        return fem.grf_from_white_noise(e.reshape(grid, grid), alpha=alpha, tau=tau).reshape(-1)

    return np.concatenate(list(_column_blocks(column, d)), axis=1)


COLUMN_CHUNK = 512
"""Unit vectors per compiled batch when a linear map is tabulated column by column (the memory of
one batch, not of all ``d`` columns at once: ``d = 16384`` at 128x128)."""


def _column_blocks(f, d: int):
    """The columns ``f(e_j)`` of a linear map on ``R^d``, as ``(d_out, k)`` NumPy blocks of at most
    :data:`COLUMN_CHUNK` columns (one compiled batch shape)."""
    k = min(COLUMN_CHUNK, d)
    batched = jax.jit(jax.vmap(f))
    rows = jnp.arange(k)
    for start in range(0, d, k):
        n = min(k, d - start)
        cols = jnp.minimum(start + rows, d - 1)
        eye = jnp.zeros((k, d)).at[rows, cols].set(jnp.where(rows < n, 1.0, 0.0))
        yield np.asarray(batched(eye))[:n].T


@functools.lru_cache(maxsize=8)
def _solution_factors(physics: fem.PDETask):
    """``(LU of A, B)`` with ``u = A^-1 B a`` for a linear PDE (nodal / image order).

    Assembled once from the FEM residual ``r(u, a) = A u - b(a)`` (``A`` from ``r(u, 0)``, ``b`` from
    ``-r(0, a)``, both tabulated in column batches and kept sparse); ``A`` factorised sparse."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    if not physics.parameter.linear:
        raise ValueError(f"solution_operator: the {physics.task} solution depends nonlinearly on a")
    d = physics.mesh.npoints
    zero = jnp.zeros(d)

    def residual(u, a):
        r = physics.problem.residual(u, **physics.theta(a))
        return r.real if jnp.iscomplexobj(r) else r

    def sparse(f):
        return sp.hstack([sp.csc_matrix(b) for b in _column_blocks(f, d)]).tocsc()

    A = sparse(lambda e: residual(e, zero))
    B = -sparse(lambda e: residual(zero, e))
    return spla.splu(A), B


@functools.lru_cache(maxsize=8)
def solution_operator(physics: fem.PDETask) -> np.ndarray:
    """Dense FEM solution operator ``S`` with ``u = S a`` (nodal / image order), linear PDEs only.

    One sparse LU factorisation of the FEM operator, solved with all right-hand sides at once:
    ``g^2`` solves and ``g^4`` numbers (2 GiB at 128x128). Where only a few products are needed,
    :func:`solve_columns` and :func:`sensor_operator` use the factorisation directly.
    """
    lu, B = _solution_factors(physics)
    return lu.solve(B.toarray())


def solve_columns(physics: fem.PDETask, a) -> np.ndarray:
    """``S @ a`` for the columns of ``a`` (``(g^2, k)``), by ``k`` sparse solves (no dense ``S``)."""
    lu, B = _solution_factors(physics)
    a = np.asarray(a, np.float64)
    return lu.solve(np.asarray(B @ a, np.float64).reshape(a.shape))


def sensor_operator(task: InverseTask) -> np.ndarray:
    """Dense ``G`` (m, g^2) with noise-free data ``y = G a`` of a linear task: the sensor rows of the
    FEM solution operator (``u`` observed) or of the identity (``a`` observed)."""
    if task.observed == "a":
        return np.eye(task.grid**2)[task.sensors]
    # rows of S = A^-1 B at the sensors: G^T = B^T A^-T P^T, one transposed solve per sensor
    lu, B = _solution_factors(task.physics)
    P = np.zeros((task.grid**2, len(task.sensors)))
    P[np.asarray(task.sensors), np.arange(len(task.sensors))] = 1.0
    return np.asarray(B.T @ lu.solve(P, trans="T")).T


@functools.lru_cache(maxsize=16)
def channel_rms(pde: str, grid: int, channel: str) -> float:
    """Prior RMS of channel ``a`` or ``u`` of a task family (16 fixed draws)."""
    physics = physics_for(pde, grid)
    keys = jax.random.split(jax.random.key(987654), 16)
    pairs = [physics.sample(k) for k in keys]
    vals = np.stack([np.asarray(p[0 if channel == "a" else 1]).real for p in pairs])
    return float(np.sqrt(np.mean(vals**2)))


def noise_floor(task: InverseTask) -> float:
    """The noise level assumed by the methods (static per task family, so compiled code is reused).

    Noisy tasks: their ``noise_std``. Noise-free tasks: ``1e-3`` times the prior RMS of the observed
    channel (a small regulariser; the data themselves are exact).
    """
    if task.noise_std > 0:
        return float(task.noise_std)
    return 1e-3 * channel_rms(task.pde, task.grid, task.observed)
