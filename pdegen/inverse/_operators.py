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
    ``-r(0, a)``, their linear parts tabulated sparse by :func:`_sparse_matrix`); ``A``
    factorised sparse."""
    import scipy.sparse.linalg as spla

    if not physics.parameter.linear:
        raise ValueError(f"solution_operator: the {physics.task} solution depends nonlinearly on a")
    d = physics.mesh.npoints
    zero = jnp.zeros(d)

    def residual(u, a):
        r = physics.problem.residual(u, **physics.theta(a))
        return r.real if jnp.iscomplexobj(r) else r

    # the FEM pattern: where an operator assembled on the space can be nonzero
    space = physics.problem.space
    pattern = fem.SparseMatrix(jnp.ones(space.pattern.nnz), space.pattern).to_scipy()
    # the residual's linear parts, linearised once, then tabulated
    _, A_of = jax.linearize(lambda u: residual(u, zero), zero)
    _, b_of = jax.linearize(lambda a: residual(zero, a), zero)
    A = _sparse_matrix(A_of, d, pattern)
    B = -_sparse_matrix(b_of, d, pattern)
    return spla.splu(A), B


def _column_colours(P) -> np.ndarray:
    """A greedy colouring of the columns of the pattern ``P`` in which no two columns of one
    colour share a row (so one product with their sum recovers each column)."""
    C = (P.T @ P).tocsr()  # columns that share a row
    colours = np.full(P.shape[1], -1)
    for j in range(P.shape[1]):
        taken = colours[C.indices[C.indptr[j] : C.indptr[j + 1]]]
        free = np.flatnonzero(np.bincount(taken[taken >= 0], minlength=taken.size + 1) == 0)
        colours[j] = free[0]
    return colours


def _sparse_matrix(f, d: int, pattern):
    """The matrix of the linear map ``f`` on ``R^d`` (SciPy CSC).

    With ``pattern`` (a superset of its nonzeros) the columns are coloured so that one product per
    colour recovers them all (Curtis, Powell and Reid): about ten products for a P1 mesh instead
    of ``d``. The result is checked on a random vector; a map whose nonzeros leave the pattern is
    tabulated column by column instead."""
    import scipy.sparse as sp

    if pattern is not None and pattern.shape == (d, d):
        colours = _column_colours(pattern)
        seeds = np.zeros((colours.max() + 1, d))
        seeds[colours, np.arange(d)] = 1.0
        Y = np.asarray(jax.vmap(f)(jnp.asarray(seeds)), np.float64)  # (colours, d)
        coo = pattern.tocoo()
        M = sp.csc_matrix((Y[colours[coo.col], coo.row], (coo.row, coo.col)), shape=(d, d))
        M.eliminate_zeros()
        v = np.random.default_rng(0).standard_normal(d)
        want = np.asarray(f(jnp.asarray(v)), np.float64)
        if np.linalg.norm(M @ v - want) <= 1e-10 * max(np.linalg.norm(want), 1e-300):
            return M
    return sp.hstack([sp.csc_matrix(b) for b in _column_blocks(f, d)]).tocsc()


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
