"""Preconditioners a user can build without the answer.

:func:`low_rank_preconditioner`: the Laplace / Gauss-Newton approximation of a posterior whose
prior (or linearised prior) covariance has a square root ``S`` (``C = S S^T``) and whose data
misfit has the (Gauss-Newton) Hessian ``H``. The prior-preconditioned misfit Hessian
``S^T H S`` is approximated by its leading eigenpairs ``W diag(lam) W^T`` from a randomised
eigensolver (Halko, Martinsson and Tropp 2011; the hIPPYlib approach, Villa, Petra and Ghattas
2021), so

    P = S (I + W diag(lam) W^T)^{-1} S^T = S (I - W diag(lam / (1 + lam)) W^T) S^T,
    P^{1/2} z = S (z + W diag(1 / sqrt(1 + lam) - 1) W^T z),

exact when the rank covers the data (``rank >= number of observations`` for a linear model).
Cost: ``(rank + oversampling) * (2 + 2 * power_iterations)`` products with ``S^T H S``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._errors import UserError
from ._kernels import Preconditioner


class LowRankPreconditioner(NamedTuple):
    """A low-rank Laplace preconditioner and the eigenvalues it kept.

    Result of :func:`low_rank_preconditioner`: the :class:`Preconditioner` and the eigenvalues
    ``lam`` (descending) of the prior-preconditioned misfit Hessian it kept."""

    preconditioner: Preconditioner
    eigenvalues: jax.Array
    basis: jax.Array  # W, (latent_dim, rank)


def low_rank_preconditioner(
    prior_sqrt: Callable,
    prior_sqrt_transpose: Callable,
    misfit_hvp: Callable,
    latent_dim: int,
    *,
    rank: int,
    key,
    oversampling: int = 10,
    power_iterations: int = 1,
) -> LowRankPreconditioner:
    """Laplace-type preconditioner from a prior square root and a low-rank misfit Hessian.

    Args:
        prior_sqrt: ``z -> S z``, from the latent space (``(latent_dim,)``) to the state.
        prior_sqrt_transpose: ``v -> S^T v``.
        misfit_hvp: ``v -> H v`` in the state space (a Gauss-Newton or exact Hessian of the data
            misfit at the point of linearisation, e.g. the MAP).
        latent_dim: size of ``z``.
        rank: eigenpairs kept (at most ``latent_dim``).
        key: PRNG key of the random test matrix (keyword-only).
    """
    latent_dim, rank, oversampling = int(latent_dim), int(rank), int(oversampling)
    if not 1 <= rank <= latent_dim:
        raise UserError(f"low_rank_preconditioner: rank must lie in [1, {latent_dim}], got {rank}")
    if oversampling < 0 or int(power_iterations) < 0:
        raise UserError("low_rank_preconditioner: oversampling and power_iterations must be >= 0")
    k = min(rank + oversampling, latent_dim)

    def op(z):
        return prior_sqrt_transpose(misfit_hvp(prior_sqrt(z)))

    batched = jax.vmap(op, in_axes=1, out_axes=1)
    omega = jax.random.normal(key, (latent_dim, k))
    Y = batched(omega.astype(jnp.result_type(float)))
    for _ in range(int(power_iterations)):
        Q, _ = jnp.linalg.qr(Y)
        Y = batched(Q)
    Q, _ = jnp.linalg.qr(Y)
    T = Q.T @ batched(Q)
    lam, U = jnp.linalg.eigh(0.5 * (T + T.T))
    order = jnp.argsort(lam)[::-1][:rank]
    lam = jnp.maximum(lam[order], 0.0)
    W = Q @ U[:, order]
    return LowRankPreconditioner(
        preconditioner_from_eigenpairs(prior_sqrt, prior_sqrt_transpose, lam, W), lam, W
    )


def preconditioner_from_eigenpairs(
    prior_sqrt: Callable, prior_sqrt_transpose: Callable, eigenvalues, basis
) -> Preconditioner:
    """The Laplace preconditioner of :func:`low_rank_preconditioner` from its kept eigenpairs.

    ``P = S (I - W diag(lam / (1 + lam)) W^T) S^T`` and its draws, for eigenvalues ``lam`` ``(r,)``
    and orthonormal columns ``W`` ``(latent_dim, r)`` (e.g. a :class:`LowRankPreconditioner`'s):
    rebuild it inside ``jit`` from arrays passed as arguments, so one compiled sampler serves
    other data."""
    lam = jnp.maximum(jnp.asarray(eigenvalues), 0.0)
    W = jnp.asarray(basis)
    shrink = lam / (1.0 + lam)
    root = 1.0 / jnp.sqrt(1.0 + lam) - 1.0

    def apply(v):
        u = prior_sqrt_transpose(v)
        return prior_sqrt(u - W @ (shrink * (W.T @ u)))

    def sample(*, key):
        z = jax.random.normal(key, (W.shape[0],), W.dtype)
        return prior_sqrt(z + W @ (root * (W.T @ z)))

    return Preconditioner(apply, sample)
