"""MAP estimation under the tasks' Gaussian-process prior: the classical baseline of the benchmark.

The unknown coefficient is ``a = L z`` with ``L`` the square root of the GRF covariance
(:func:`pdegen.fem.grf_from_white_noise`) and ``z`` white; Darcy's two-valued coefficient is the
smooth threshold ``a = 3 + 9 sigmoid(k L z / sd)``. The MAP point minimises

    0.5 || W (y - rho F(a)) ||^2 + 0.5 ||z||^2,

``F`` the observation of the task (sensors of ``a``, or of ``u = solve(a)`` through the
differentiable FEM solve), ``W`` the whitening of the noise (or of the statFEM noise covariance),
by L-BFGS (optax). For the linear PDEs it equals the exact posterior mean.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..mcmc import lbfgs_minimise
from ._guidance import StatFEMLikelihood
from ._latent_priors import latent_coefficient
from ._operators import noise_floor, sensor_operator
from ._results import Posterior
from ._tasks import InverseTask


class MAPResult(NamedTuple):
    """A MAP estimate of a benchmark task and how it was reached.

    A MAP estimate: the joint field ``(2, g, g)`` (``a``, ``u = solve(a)``), the white-noise
    coordinates ``z``, the objective per iteration and the wall time (compilation included)."""

    field: jax.Array
    z: jax.Array
    objective: jax.Array
    seconds: float


def map_estimate(
    task: InverseTask,
    *,
    y=None,
    likelihood: StatFEMLikelihood | None = None,
    steps: int | None = None,
    alpha: float | None = None,
    tau: float | None = None,
    sharpness: float = 4.0,
) -> MAPResult:
    """The MAP estimate of ``task``'s coefficient under the GRF prior (any PDE of the tasks).

    Args:
        task: an :class:`pdegen.inverse.InverseTask`.
        y: observations (default ``task.y``).
        likelihood: a :class:`StatFEMLikelihood` (model-error-aware); default: Gaussian noise at
            the level the other methods assume.
        steps: at most this many L-BFGS iterations (default 10000 for the linear PDEs, 300 for Darcy,
            where each costs a few FEM solves); it stops earlier when the gradient has fallen by 1e-9.
        alpha: smoothness of the GRF prior (default: that of the task's data).
        tau: inverse length scale of the GRF prior (default: that of the task's data).
        sharpness: Darcy only: steepness of the smooth threshold, in units of the GRF's standard
            deviation.
    """
    alpha = task.physics.alpha if alpha is None else float(alpha)
    tau = task.physics.tau if tau is None else float(tau)
    if steps is None:
        steps = 10000 if task.linear else 300
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"map_estimate: steps must be a positive int, got {steps!r}")
    y = jnp.asarray(task.y if y is None else task.check_observations(y), jnp.float64)
    if likelihood is None:
        W = jnp.eye(task.num_sensors) / noise_floor(task)
        rho = 1.0
    else:
        likelihood = StatFEMLikelihood(*likelihood).check()
        W = jnp.asarray(likelihood.whitener(task.points))
        rho = float(likelihood.rho)
    g = task.grid
    # Linear observation of a (any PDE, or u of a linear PDE): a dense matrix; Darcy's u: the sensors.
    obs = jnp.asarray(task.sensors if _solves(task) else sensor_operator(task))
    t0 = time.perf_counter()
    z, values = _run_map(
        jnp.zeros((g, g), jnp.float64),
        W,
        y,
        jnp.asarray(rho, jnp.float64),
        obs,
        physics=task.physics,
        solves=_solves(task),
        steps=steps,
        alpha=float(alpha),
        tau=float(tau),
        sharpness=float(sharpness),
    )
    z = jax.block_until_ready(z)
    seconds = time.perf_counter() - t0
    if not bool(jnp.all(jnp.isfinite(z))):
        raise RuntimeError("map_estimate: the optimisation diverged (non-finite estimate)")
    a = latent_coefficient(task.physics, z, alpha=alpha, tau=tau, sharpness=sharpness)
    u = task.solve(a)
    return MAPResult(jnp.stack([a, u]), z, values, seconds)


def _solves(task: InverseTask) -> bool:
    """Whether the observation needs the FEM solve of a nonlinear PDE (Darcy's ``u``)."""
    return task.observed == "u" and not task.linear


@functools.partial(
    jax.jit, static_argnames=("physics", "solves", "steps", "alpha", "tau", "sharpness")
)
def _run_map(z0, W, y, rho, obs, *, physics, solves, steps, alpha, tau, sharpness):
    """L-BFGS on the MAP objective of a task family (compiled once per family: the draw's data are
    arguments). ``solves``: the data see ``u`` of a nonlinear PDE (``obs`` holds sensor indices);
    else ``obs`` is the dense linear observation of ``a``."""
    mesh = physics.mesh

    def objective(z):
        a = latent_coefficient(physics, z, alpha=alpha, tau=tau, sharpness=sharpness)
        pred = physics.parameter.solve(mesh.from_image(a))[obs] if solves else obs @ a.reshape(-1)
        r = W @ (y - rho * pred)
        return 0.5 * jnp.sum(r**2) + 0.5 * jnp.sum(z**2)

    return lbfgs_minimise(objective, z0, steps)


def map_posterior(task: InverseTask, *, y=None, likelihood=None, **options):
    """:func:`map_estimate` as a :class:`pdegen.inverse.Posterior` (one sample, zero spread)."""
    res = map_estimate(task, y=y, likelihood=likelihood, **options)
    mean = res.field
    return Posterior(
        mean[None],
        mean,
        jnp.zeros_like(mean),
        "map",
        "solve",
        res.seconds,
        0.0,
        {"objective": np.asarray(res.objective), "likelihood": likelihood},
    )
