"""A PDE-constrained family for learning to learn: place heat sources so that the Poisson
solution matches a target field drawn per member (:func:`poisson_source_family`).

The objective is built with :mod:`pdegen.fem` (public names only): ``-laplace u = f`` on the unit
square with ``u = 0`` on the boundary, P1 elements; ``f`` is a sum of Gaussian bumps centred at the
design variables. The operator does not depend on the design, so its solution operator (nodal
source values to nodal solution) is computed once, by one factorisation and one solve per node,
and every evaluation of the objective is one matrix-vector product: cheap enough for optimisers
that spend tens of thousands of evaluations, exact to the solver's precision, and free of host
callbacks inside compiled loops."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._box import default_dtype
from ._family import Family


class SourceTask(NamedTuple):
    """One member of :func:`poisson_source_family`.

    Attributes:
        target: the target field, nodal values ``(grid * grid,)``.
        centres: the source centres that made it, ``(2 k,)`` as ``(x_1, y_1, ..., x_k, y_k)``:
            a minimiser (value 0; so is every permutation of the sources).
    """

    target: jax.Array
    centres: jax.Array


def poisson_source_family(
    num_sources: int = 2,
    *,
    grid: int = 17,
    width: float = 0.08,
    margin: float = 0.1,
) -> Family:
    """Source placement for the Poisson equation, one target field per member.

    Design ``x = (x_1, y_1, ..., x_k, y_k)`` in ``[margin, 1 - margin]^(2k)``: the centres of ``k``
    Gaussian heat sources ``exp(-|p - c_j|^2 / (2 width^2))``. A member is a target field
    ``u*``, the finite-element solution (``grid x grid`` P1 nodes) for centres drawn uniformly in
    the box; the objective is the relative squared misfit ``||u(x) - u*||^2 / ||u*||^2``, so the
    minimum is 0 (at the drawn centres and their permutations) and values are of order one.
    Multimodal: besides the ``k!`` equivalent minimisers, placing one source between two true ones
    is a local minimum. Features (what conditions an amortised optimiser): the target on every
    other node, scaled to unit maximum."""
    from .. import fem

    if not isinstance(num_sources, (int, np.integer)) or num_sources < 1:
        raise ValueError(
            f"poisson_source_family(num_sources=...): expected a positive int, got {num_sources!r}"
        )
    if not isinstance(grid, (int, np.integer)) or grid < 5:
        raise ValueError(f"poisson_source_family(grid=...): expected an int >= 5, got {grid!r}")
    if not width > 0:
        raise ValueError(f"poisson_source_family(width=...): expected > 0, got {width!r}")
    if not 0 <= margin < 0.5:
        raise ValueError(f"poisson_source_family(margin=...): expected in [0, 0.5), got {margin!r}")
    k, grid = int(num_sources), int(grid)
    dim = 2 * k
    dt = default_dtype()
    mesh = fem.unit_square(grid)
    problem = fem.Poisson(fem.FunctionSpace(mesh, "P1"), dirichlet=0.0)
    n = problem.ndofs
    # the solution operator, column j = the solution for a unit nodal source at node j
    columns = jax.vmap(lambda e: problem.solve(f=e))(jnp.eye(n, dtype=jnp.float64))
    S = jnp.asarray(np.asarray(columns, np.float64).T, dt)
    points = jnp.asarray(mesh.points, dt)
    stride = np.arange(0, grid, 2)
    coarse = (stride[:, None] * grid + stride[None, :]).ravel()  # every other node, image order

    def source(x):
        c = x.reshape(k, 2)
        d2 = jnp.sum((points[:, None, :] - c[None, :, :]) ** 2, axis=-1)
        return jnp.sum(jnp.exp(-d2 / (2.0 * width**2)), axis=1)

    def field(x):
        return S @ source(x)

    def fn(x, task: SourceTask):
        r = field(x) - task.target
        return jnp.sum(r**2) / jnp.sum(task.target**2)

    lower = np.full(dim, float(margin))
    upper = np.full(dim, 1.0 - float(margin))

    def sample(key, num):
        c = jr.uniform(key, (num, dim), dtype=dt, minval=lower[0], maxval=upper[0])
        return SourceTask(jax.vmap(field)(c), c)

    def features(task: SourceTask):
        t = task.target[coarse]
        return t / jnp.max(jnp.abs(t))

    def minimum(task: SourceTask) -> float:
        return 0.0

    return Family(f"poisson-sources-{k}", dim, fn, lower, upper, sample, features, minimum)
