"""Observation helpers: random sensor subsets, noise and the data-misfit energy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._mesh import Mesh
from ._space import FunctionSpace
from ._sparse import SparseMatrix, SparsityPattern, default_float_dtype


def random_sensors(
    mesh: Mesh,
    *,
    key,
    fraction: float | None = None,
    count: int | None = None,
    interior: bool = False,
) -> np.ndarray:
    """Sorted indices of randomly chosen mesh nodes (a fixed ``key``, keyword-only, gives a fixed mask).

    Give either ``fraction`` in (0, 1] (DiffusionPDE observes about 3% of the grid) or ``count``.
    ``interior=True`` excludes boundary nodes (useful with zero Dirichlet data).
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"random_sensors: mesh must be a Mesh, got {type(mesh).__name__}")
    if (fraction is None) == (count is None):
        raise ValueError("random_sensors: give exactly one of fraction= or count=")
    candidates = np.arange(mesh.npoints)
    if interior:
        candidates = np.setdiff1d(candidates, mesh.boundary_points)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"random_sensors: fraction must lie in (0, 1], got {fraction}")
        count = max(1, int(round(fraction * mesh.npoints)))
    if int(count) != count or not 1 <= count <= candidates.size:
        raise ValueError(
            f"random_sensors: count must be an integer in [1, {candidates.size}], got {count}"
        )
    perm = np.asarray(jax.random.permutation(key, candidates.size))
    return np.sort(candidates[perm[: int(count)]])


def node_observation(space: FunctionSpace, nodes) -> SparseMatrix:
    """``H`` with ``H @ u = u[nodes]`` for a P1/Q1 space (vertex dofs), shape ``(m, ndofs)``."""
    nodes = np.asarray(nodes, dtype=np.int64)
    if nodes.ndim != 1 or nodes.size == 0:
        raise ValueError(
            f"node_observation: nodes must be a non-empty 1-D index array, got shape {nodes.shape}"
        )
    if nodes.min() < 0 or nodes.max() >= space.mesh.npoints:
        raise ValueError(
            f"node_observation: node indices must lie in [0, {space.mesh.npoints - 1}]"
        )
    pattern = SparsityPattern(np.arange(nodes.size), nodes, (nodes.size, space.ndofs))
    return SparseMatrix(jnp.ones(nodes.size), pattern)


def add_noise(y, noise_std: float, *, key) -> jax.Array:
    """``y + noise_std * N(0, I)`` (``key`` keyword-only)."""
    if not noise_std >= 0:
        raise ValueError(f"add_noise: noise_std must be >= 0, got {noise_std}")
    y = jnp.asarray(y)
    return y + noise_std * jax.random.normal(key, y.shape, y.dtype)


def misfit_energy(u, H, y, noise_std: float) -> jax.Array:
    """``0.5 * ||y - H u||^2 / noise_std^2`` (negative log-likelihood up to a constant)."""
    u = jnp.asarray(u)
    y = jnp.asarray(y)
    if H.shape[1] != u.shape[-1]:
        raise ValueError(
            f"misfit_energy: H has {H.shape[1]} columns but u has {u.shape[-1]} entries"
        )
    if y.shape != (H.shape[0],):
        raise ValueError(f"misfit_energy: y must have shape ({H.shape[0]},), got {y.shape}")
    if not noise_std > 0:
        raise ValueError(f"misfit_energy: noise_std must be > 0, got {noise_std}")
    r = y - H @ u
    return 0.5 * jnp.sum(r**2) / noise_std**2


def region_average(space: FunctionSpace, regions) -> SparseMatrix:
    """``H`` with ``(H @ u)_i`` the average of ``u`` over region ``i``, shape ``(m, ndofs)``.

    ``regions``: a list of indicator functions ``inside(x) -> bool`` of points ``x`` of shape
    ``(2, ...)`` (evaluated at the quadrature points), e.g.
    ``lambda x: (x[0] - 0.3) ** 2 + (x[1] - 0.5) ** 2 < 0.1 ** 2``.

    Raises:
        ValueError: if a region contains no quadrature point of the mesh.
    """
    from ._assembly import load

    if callable(regions):
        regions = [regions]
    rows = []
    for i, inside in enumerate(regions):
        if not callable(inside):
            raise TypeError(f"region_average: regions[{i}] must be a function inside(x) -> bool")
        w = np.asarray(load(space, lambda x, f=inside: jnp.asarray(f(x), default_float_dtype())))
        total = w.sum()
        if not total > 0:
            raise ValueError(f"region_average: region {i} contains no quadrature point of the mesh")
        rows.append(w / total)
    dense = np.stack(rows)
    r, c = np.nonzero(dense)
    pattern = SparsityPattern(r, c, dense.shape)
    return SparseMatrix(jnp.asarray(dense[pattern.rows, pattern.cols]), pattern)


def full_observation(space: FunctionSpace) -> SparseMatrix:
    """The identity ``(ndofs, ndofs)``: every nodal value observed."""
    n = space.ndofs
    return SparseMatrix(jnp.ones(n), SparsityPattern(np.arange(n), np.arange(n), (n, n)))
