"""PDE-constrained global optimisation examples built on :mod:`pdegen.fem` energies.

:func:`source_inversion`: find the positions and strengths of ``k`` Gaussian heat sources so
that the Poisson solution ``-Laplacian(u) = f``, ``u = 0`` on the boundary of the unit square,
matches point values of ``u`` at a few sensors. The misfit is multi-modal: sources can be
swapped (equivalent minima), a source can hide between sensors, and two sources can merge to
explain one (local minima that trap gradient descent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import fem

__all__ = ["SourceInversion", "source_inversion"]

MISFIT_FLOOR = 1e-10


class SourceInversion(NamedTuple):
    """A source-inversion task.

    ``relative_misfit(theta)`` is the relative sensor misfit ``||K f(theta) - y||^2 / ||y||^2``
    (minimum 0 at the true parameters, noise-free data) and ``objective(theta)`` its log,
    ``log10(relative_misfit + 1e-10) + 10`` (minimum 0), with ``theta`` of shape ``(3 k,)``
    ordered ``(x_1, y_1, s_1, x_2, y_2, s_2, ...)``; ``domain`` its box ``(lower, upper)``;
    ``source(theta)`` the nodal source field; ``solve(theta)`` the FE solution (one Poisson
    solve, differentiable by one adjoint solve); ``misfit_energy(theta)`` the same misfit
    computed by that full solve (for checks; ``objective`` uses the sensor response matrix
    ``K = H A^{-1} M``, built once by ``m`` adjoint solves, which is exact because the solve is
    linear in the source). ``parameter_error(theta)`` is the largest error in any parameter,
    minimised over the ordering of the sources when their strengths are unknown.
    """

    objective: Callable
    domain: tuple
    true_parameters: np.ndarray
    sensors: np.ndarray
    observations: Any
    space: Any
    problem: Any
    source: Callable
    solve: Callable
    relative_misfit: Callable
    misfit_energy: Callable
    parameter_error: Callable
    num_sources: int


def source_inversion(
    *,
    num_sources: int = 2,
    grid: int = 17,
    num_sensors: int = 16,
    width: float = 0.05,
    known_strengths: bool = False,
    true_parameters=None,
    sensors=None,
    seed: int = 0,
) -> SourceInversion:
    """Build a :class:`SourceInversion` task on a ``grid x grid`` P1 mesh.

    Sources are ``s exp(-|x - p|^2 / (2 width^2))`` with ``p`` in ``[0.15, 0.85]^2`` and
    ``s`` in ``[0.5, 2]``. Without ``true_parameters`` / ``sensors`` they are drawn with
    ``seed`` (``num_sensors`` a square number: a regular grid on ``[0.1, 0.9]^2``; otherwise
    uniform there). With ``known_strengths`` the unknowns are the positions only
    (``theta`` of shape ``(2 k,)``, strengths fixed at their true values).

    Example (minutes on a CPU: shown rather than run as a doctest):

    ```python
    task = source_inversion(num_sources=2)
    res = minimise(task.objective, task.domain, key=jax.random.key(0), max_evaluations=8000)
    ```
    """
    if not isinstance(num_sources, int) or num_sources < 1:
        raise ValueError(
            f"source_inversion(num_sources=...): need a positive int, got {num_sources!r}"
        )
    if not isinstance(grid, int) or grid < 5:
        raise ValueError(f"source_inversion(grid=...): need an int >= 5, got {grid!r}")
    if not width > 0:
        raise ValueError(f"source_inversion(width=...): must be positive, got {width}")
    rng = np.random.default_rng(seed)
    lower = np.tile([0.15, 0.15, 0.5], num_sources)
    upper = np.tile([0.85, 0.85, 2.0], num_sources)
    if true_parameters is None:
        true_parameters = rng.uniform(lower, upper)
    true_parameters = np.asarray(true_parameters, dtype=np.float64)
    if true_parameters.shape != (3 * num_sources,):
        raise ValueError(
            f"source_inversion(true_parameters=...): expected shape ({3 * num_sources},), "
            f"got {true_parameters.shape}"
        )
    if sensors is None:
        side = math.isqrt(num_sensors)
        if side * side == num_sensors:
            g = np.linspace(0.1, 0.9, side)
            sensors = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
        else:
            sensors = rng.uniform(0.1, 0.9, size=(num_sensors, 2))
    sensors = np.asarray(sensors, dtype=np.float64)

    mesh = fem.unit_square(grid)
    space = fem.FunctionSpace(mesh, "P1")
    problem = fem.Poisson(space)
    H = space.point_observation(sensors)
    nodes = jnp.asarray(space.dof_coordinates)  # (ndofs, 2)
    dtype = nodes.dtype

    n_per = 2 if known_strengths else 3
    true_strengths = jnp.asarray(true_parameters.reshape(num_sources, 3)[:, 2:3])

    def source(theta):
        theta = jnp.asarray(theta, dtype=dtype)
        if theta.shape != (n_per * num_sources,):
            raise ValueError(
                f"source_inversion: theta must have shape ({n_per * num_sources},), "
                f"got {theta.shape}"
            )
        p = theta.reshape(num_sources, n_per)
        if known_strengths:
            p = jnp.concatenate([p, true_strengths.astype(dtype)], axis=1)
        d2 = jnp.sum((nodes[None, :, :] - p[:, None, :2]) ** 2, axis=-1)
        return jnp.sum(p[:, 2:3] * jnp.exp(-0.5 * d2 / width**2), axis=0)

    def solve(theta):
        return problem.solve(kappa=1.0, f=source(theta))

    # Sensor responses: y = H A^{-1} b(f) is linear in the nodal source f, so its Jacobian K
    # (m adjoint solves) is the whole map.
    zero = jnp.zeros((space.ndofs,), dtype=dtype)
    K = jax.jacrev(lambda f: H @ problem.solve(kappa=1.0, f=f))(zero)
    full_truth = true_parameters
    if known_strengths:
        true_parameters = true_parameters.reshape(num_sources, 3)[:, :2].reshape(-1)
        lower = lower.reshape(num_sources, 3)[:, :2].reshape(-1)
        upper = upper.reshape(num_sources, 3)[:, :2].reshape(-1)
    del full_truth
    y = K @ source(jnp.asarray(true_parameters))
    scale = jnp.sum(y**2)

    def relative_misfit(theta):
        r = K @ source(theta) - y
        return jnp.sum(r**2) / scale

    def objective(theta):
        # log scale: misfits of wrong configurations span decades (1e-1 .. 1e-5), and a fixed
        # temperature schedule can only separate them on a log scale
        return jnp.log10(relative_misfit(theta) + MISFIT_FLOOR) - math.log10(MISFIT_FLOOR)

    def misfit_energy(theta):
        return fem.misfit_energy(solve(theta), H, y, 1.0) * 2.0 / scale

    # unknown strengths: relabelling the sources is an exact symmetry; known (distinct)
    # strengths tie each position to its source, and the swapped positions are a local minimum
    perms = [tuple(range(num_sources))] if known_strengths else _permutations(num_sources)

    def parameter_error(theta):
        t = np.asarray(theta, dtype=np.float64).reshape(-1, num_sources, n_per)
        truth = true_parameters.reshape(num_sources, n_per)
        errs = np.stack([np.max(np.abs(t[:, list(p)] - truth[None]), axis=(1, 2)) for p in perms])
        out = np.min(errs, axis=0)
        return out if np.ndim(theta) > 1 else float(out[0])

    return SourceInversion(
        objective,
        (lower, upper),
        true_parameters,
        sensors,
        y,
        space,
        problem,
        source,
        solve,
        relative_misfit,
        misfit_energy,
        parameter_error,
        num_sources,
    )


def _permutations(n):
    import itertools

    return list(itertools.permutations(range(n)))
