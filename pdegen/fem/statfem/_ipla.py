"""Interacting particle Langevin (IPLA) for joint parameter estimation and latent sampling.

For an energy ``U(theta, x) = -log p(x, y | theta)`` (e.g. ``-model.log_joint(x, y)`` of a
:class:`StatFEM` whose parameter depends on ``theta``) and ``N`` particles ``x_i``:

    theta <- theta - (gamma_theta / N) sum_i grad_theta U(theta, x_i) + sqrt(2 gamma_theta / N) xi
    x_i   <- x_i - gamma P grad_x U(theta, x_i) + sqrt(2 gamma) N(0, P)

(``gamma_theta = gamma`` and ``P = I`` recover the scheme of Glyn-Davies et al. 2024; a fixed
preconditioner ``P`` and a separate parameter step keep the same stationary law and make the
stiff statFEM prior tractable). The theta-marginal of the stationary law is proportional to
``p(y | theta)^N``, so it concentrates at the maximum marginal likelihood estimate as ``N`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..._errors import NonFiniteError
from .._solve import _is_traced, solver_errors
from ._kernels import Preconditioner


class IPLAState(NamedTuple):
    """The state of interacting particle Langevin (:func:`ipla`).

    Attributes:
        theta: The current parameter estimate, shape ``(p,)``.
        particles: The latent particles, shape ``(N, dim)``.
    """

    theta: jax.Array
    particles: jax.Array  # (N, dim)


class IPLAInfo(NamedTuple):
    """What one IPLA step reports.

    Attributes:
        theta_gradient: The gradient of the energy with respect to ``theta``, averaged over the
            particles, shape ``(p,)``.
        energy: The energy averaged over the particles, a scalar.
    """

    theta_gradient: jax.Array  # mean over particles
    energy: jax.Array  # mean over particles


class IPLA(NamedTuple):
    """``init(theta0, particles0) -> state``; ``step(state, *, key) -> (state, info)``."""

    init: Callable
    step: Callable


def ipla(
    energy_fn: Callable,
    step_size: float,
    *,
    theta_step_size: float | None = None,
    preconditioner: Preconditioner | None = None,
) -> IPLA:
    """The IPLA kernel for ``energy_fn(theta, x) -> scalar`` (``theta`` a scalar or a vector).

    ``theta_step_size`` may be a vector of the shape of ``theta`` (a constant diagonal
    preconditioner of the parameter step: parameters of different scales, e.g. a forcing
    amplitude beside log length scales) or a symmetric positive definite matrix ``Gamma``
    (parameters that trade off against each other, e.g. a model-data scale and a discrepancy
    scale): ``theta <- theta - (Gamma / N) sum_i grad_theta U + sqrt(2 / N) Gamma^{1/2} xi``.
    Either keeps the stationary law."""
    for name, h in (("step_size", step_size), ("theta_step_size", theta_step_size)):
        if h is None or isinstance(h, jax.core.Tracer):
            continue
        arr = np.asarray(h, np.float64)
        if name == "theta_step_size" and arr.ndim == 2:
            if arr.shape[0] != arr.shape[1] or not np.allclose(arr, arr.T, rtol=1e-10, atol=0):
                raise ValueError(
                    f"ipla: a matrix theta_step_size must be square and symmetric, got shape "
                    f"{arr.shape}"
                )
            if not np.all(np.isfinite(arr)) or np.linalg.eigvalsh(arr).min() <= 0:
                raise ValueError("ipla: a matrix theta_step_size must be positive definite")
            continue
        if arr.ndim > (1 if name == "theta_step_size" else 0) or not np.all(arr > 0):
            raise ValueError(
                f"ipla: {name} must be > 0 (a scalar{', a vector of the shape of theta or a symmetric positive definite matrix' if name == 'theta_step_size' else ''}), got {h}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"ipla: {name} must be finite, got {h}")
    if preconditioner is not None and not isinstance(preconditioner, Preconditioner):
        raise TypeError("ipla: preconditioner must be a Preconditioner or None")
    gamma = step_size
    gamma_theta = step_size if theta_step_size is None else jnp.asarray(theta_step_size)
    matrix = jnp.ndim(gamma_theta) == 2
    root = jnp.linalg.cholesky(gamma_theta) if matrix else jnp.sqrt(gamma_theta)

    def total(theta, particles):
        e = jax.vmap(lambda x: energy_fn(theta, x))(particles)
        return jnp.sum(e), e

    grad_total = jax.grad(total, argnums=(0, 1), has_aux=True)

    def init(theta0, particles0):
        theta0 = jnp.asarray(theta0)
        particles0 = jnp.asarray(particles0)
        if theta0.ndim > 1:
            raise ValueError(f"ipla: theta must be a scalar or a vector, got shape {theta0.shape}")
        if particles0.ndim != 2 or particles0.shape[0] < 1:
            raise ValueError(f"ipla: particles must have shape (N, dim), got {particles0.shape}")
        expected = theta0.shape * 2 if matrix else theta0.shape
        if jnp.ndim(gamma_theta) >= 1 and jnp.shape(gamma_theta) != expected:
            raise ValueError(
                f"ipla: theta_step_size has shape {jnp.shape(gamma_theta)}, theta {theta0.shape}"
            )
        return IPLAState(theta0.astype(particles0.dtype), particles0)

    def step(state, *, key):
        theta, P = state
        N = P.shape[0]
        (g_theta, g_x), e = grad_total(theta, P)
        k_theta, k_x = jax.random.split(key)
        xi = jax.random.normal(k_theta, theta.shape, theta.dtype)
        if matrix:
            theta_new = theta - gamma_theta @ g_theta / N + math.sqrt(2.0 / N) * root @ xi
        else:
            theta_new = theta - gamma_theta / N * g_theta + math.sqrt(2.0 / N) * root * xi
        if preconditioner is None:
            drift = g_x
            noise = jax.random.normal(k_x, P.shape, P.dtype)
        else:
            drift = jax.vmap(preconditioner.apply)(g_x)
            noise = jax.vmap(lambda k: preconditioner.sample(key=k))(
                jax.random.split(k_x, N)
            ).astype(P.dtype)
        P_new = P - gamma * drift + jnp.sqrt(2.0 * gamma) * noise
        return IPLAState(theta_new, P_new), IPLAInfo(g_theta / N, jnp.mean(e))

    return IPLA(init, step)


class IPLAResult(NamedTuple):
    """Output of :func:`run_ipla`.

    Attributes:
        theta_trajectory: ``(num_steps + 1, ...)`` parameter iterates (initial value first).
        estimate: mean of the trajectory over its last ``average_fraction``.
        theta_std: standard deviation of the trajectory over that window.
        particles: final particles ``(N, dim)``.
        energy: mean particle energy per step.
    """

    theta_trajectory: jax.Array
    estimate: jax.Array
    theta_std: jax.Array
    particles: jax.Array
    energy: jax.Array


@solver_errors()  # a failed linear solve inside the energy is a one-line LinearSolveError
def run_ipla(
    energy_fn: Callable,
    theta0,
    particles0,
    num_steps: int,
    step_size: float,
    *,
    key,
    theta_step_size: float | None = None,
    preconditioner: Preconditioner | None = None,
    average_fraction: float = 0.5,
) -> IPLAResult:
    """Run IPLA for ``num_steps`` with ``lax.scan``; the estimate averages the last part of the run.

    ``key`` (keyword-only) is the PRNG key of the run.
    """
    if int(num_steps) < 1:
        raise ValueError(f"run_ipla: num_steps must be >= 1, got {num_steps}")
    if not 0 < average_fraction <= 1:
        raise ValueError(f"run_ipla: average_fraction must lie in (0, 1], got {average_fraction}")
    kernel = ipla(
        energy_fn, step_size, theta_step_size=theta_step_size, preconditioner=preconditioner
    )
    if not _is_traced(theta0, particles0) and not (
        bool(jnp.all(jnp.isfinite(jnp.asarray(theta0))))
        and bool(jnp.all(jnp.isfinite(jnp.asarray(particles0))))
    ):
        raise ValueError("run_ipla: theta0 and particles0 must be finite")
    state = kernel.init(theta0, particles0)

    def body(st, k):
        st, info = kernel.step(st, key=k)
        return st, (st.theta, info.energy)

    state, (thetas, energies) = lax.scan(body, state, jax.random.split(key, int(num_steps)))
    if not _is_traced(thetas) and not bool(jnp.all(jnp.isfinite(thetas))):
        first_bad = int(jnp.argmax(~jnp.all(jnp.isfinite(thetas.reshape(thetas.shape[0], -1)), 1)))
        raise NonFiniteError(
            f"run_ipla: the parameters turned non-finite at step {first_bad + 1}; the step sizes "
            "are too large for the particles' curvature (try smaller step_size / "
            "theta_step_size)"
        )
    first = jnp.broadcast_to(jnp.asarray(theta0).astype(thetas.dtype), thetas.shape[1:])
    traj = jnp.concatenate([first[None], thetas], axis=0)
    start = int(num_steps) - max(1, int(round(average_fraction * int(num_steps))))
    window = thetas[start:]
    return IPLAResult(
        traj, jnp.mean(window, axis=0), jnp.std(window, axis=0), state.particles, energies
    )
