"""Gauss-Newton tools for targets in white-noise coordinates.

Many posteriors can be written over a latent ``z`` with a standard normal prior (the white noise
of a Gaussian random field, a forcing, ...), ``U(z) = 0.5 |z|^2 + 0.5 |r(z)|^2`` with ``r`` the
whitened data residual (``L^{-1} (y - G(z))`` for noise covariance ``L L^T``). Its Gauss-Newton
Hessian is ``I + J^T J`` with ``J = dr/dz``, which has at most ``k = len(r)`` eigenvalues above 1:

- :func:`gauss_newton_map`: the MAP point by Gauss-Newton steps ``(I + J^T J)^{-1} grad U``
  (Woodbury: a ``k x k`` solve) with a backtracking line search (:func:`descend`, which takes any
  descent direction);
- :func:`gauss_newton_laplace`: the Laplace preconditioner ``(I + J^T J)^{-1}`` at a point, of
  rank ``min(k, n)`` (a :class:`LowRankPreconditioner`).

``J`` comes from ``k`` reverse-mode products (:func:`jacobian_rows`), so ``r`` may contain a PDE
solve with an adjoint (a custom VJP and no forward mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._errors import ConvergenceError, UserError
from ._preconditioners import LowRankPreconditioner, low_rank_preconditioner


class GaussNewtonResult(NamedTuple):
    """Result of :func:`gauss_newton_map`."""

    z: jax.Array
    energy: float
    gradient_norm: float
    iterations: int


def jacobian_rows(fn: Callable, z) -> tuple[jax.Array, jax.Array]:
    """``(fn(z), J)`` with the Jacobian ``J`` ``(k, n)`` of ``fn: R^n -> R^k`` from ``k`` VJPs."""
    out, vjp = jax.vjp(fn, z)
    k = int(out.shape[0])
    J = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(k, dtype=out.dtype))
    return out, J


def _energy(residual, z):
    r = residual(z)
    return 0.5 * (jnp.dot(z, z) + jnp.dot(r, r))


def descend(
    energy: Callable, linearise: Callable, z0, *, tol: float = 1e-9, max_iterations: int = 30
) -> GaussNewtonResult:
    """Minimise ``energy`` by steps ``z <- z - t d`` with a backtracking (Armijo) line search.

    ``linearise(z)`` returns ``(energy(z), grad, d)`` with ``d`` a descent direction (e.g. a
    Gauss-Newton direction ``H^{-1} grad`` for a positive definite ``H``). Stops when
    ``|grad| <= tol * max(|grad(z0)|, 1)`` or after ``max_iterations`` steps.

    Raises:
        ConvergenceError: the energy becomes non-finite.
    """
    if int(max_iterations) < 1:
        raise UserError(f"descend: max_iterations must be >= 1, got {max_iterations}")
    z = jnp.asarray(z0)
    e, g, d = linearise(z)
    g0 = float(jnp.linalg.norm(g))
    for it in range(1, int(max_iterations) + 1):
        if not jnp.isfinite(e):
            raise ConvergenceError("descend: the energy became non-finite")
        slope, t = float(jnp.dot(g, d)), 1.0
        while True:
            zn = z - t * d
            en = energy(zn)
            if float(en) <= float(e) - 1e-4 * t * slope or t < 1e-8:
                break
            t *= 0.5
        z = zn
        e, g, d = linearise(z)
        gn = float(jnp.linalg.norm(g))
        if gn <= tol * max(g0, 1.0):
            return GaussNewtonResult(z, float(e), gn, it)
    if not jnp.isfinite(e):
        raise ConvergenceError("descend: the energy became non-finite")
    return GaussNewtonResult(z, float(e), float(jnp.linalg.norm(g)), int(max_iterations))


def gauss_newton_map(
    residual: Callable, z0, *, tol: float = 1e-9, max_iterations: int = 30
) -> GaussNewtonResult:
    """Minimise ``0.5 |z|^2 + 0.5 |residual(z)|^2`` by Gauss-Newton with backtracking.

    The line search is :func:`descend`'s. Each iteration costs ``k`` reverse-mode products (the Jacobian) and a few
    residual evaluations.

    Raises:
        ConvergenceError: the energy becomes non-finite.
    """

    @jax.jit
    def linearise(z):
        r, J = jacobian_rows(residual, z)
        g = z + J.T @ r
        # (I + J^T J)^{-1} g = g - J^T (I + J J^T)^{-1} J g
        K = jnp.eye(J.shape[0], dtype=J.dtype) + J @ J.T
        d = g - J.T @ jnp.linalg.solve(K, J @ g)
        return 0.5 * (jnp.dot(z, z) + jnp.dot(r, r)), g, d

    energy = jax.jit(lambda z: _energy(residual, z))
    return descend(energy, linearise, z0, tol=tol, max_iterations=max_iterations)


def gauss_newton_laplace(residual: Callable, z, *, key) -> LowRankPreconditioner:
    """The Laplace preconditioner ``(I + J^T J)^{-1}`` at ``z`` (e.g. the MAP point).

    ``J`` is the Jacobian of ``residual`` at ``z`` (``k`` reverse-mode products); the result has
    rank ``min(k, n)``, exact for that rank (``key``: the eigensolver's test matrix)."""
    z = jnp.ravel(jnp.asarray(z))
    _, J = jax.jit(lambda z: jacobian_rows(residual, z))(z)
    k, n = J.shape

    def identity(v):
        return v

    rank = min(k, n)
    return low_rank_preconditioner(
        identity,
        identity,
        lambda v: J.T @ (J @ v),
        n,
        rank=rank,
        key=key,
        oversampling=min(10, n - rank),
    )
