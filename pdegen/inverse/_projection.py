"""The nearest PDE-consistent pair: projection of a joint field ``(a, u)`` onto ``{u = solve(a)}``.

A joint prior's denoised estimate ``(a_hat, u_hat)`` (normalised units, each channel of unit scale)
is in general off the solution set of the PDE. Its projection

    a* = argmin_a ||a - a_hat||^2 + ||F(a) - u_hat||^2,    u* = F(a*),

with ``F`` the FEM solve in normalised units, keeps what ``u_hat`` says about ``a`` (the source
moves towards what the generated solution implies) and satisfies the PDE to solver precision. One
Gauss-Newton step at ``a_hat``: ``(I + J^T J) da = J^T (u_hat - F(a_hat))``, solved by conjugate
gradients with Jacobian products (``J^T`` by the solve's adjoint, ``J`` by ``F(v) - F(0)`` for a
linear PDE and by a finite difference otherwise; exact for a linear PDE, whose ``F`` is affine; the system's
condition number is ``1 + ||J||^2``). ``u* = F(a_hat + da)`` is a fresh solve, so the PDE holds
exactly whatever the CG tolerance. Replacing ``u`` by ``solve(a_hat)`` is the limit that trusts
``a_hat`` only.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem

__all__ = [
    "pde_projection",
    "ConsistencyPenalty",
    "consistency_penalty",
    "ConsistentScore",
    "consistent_prior",
]

_EPS = 1e-4  # normalised units: each channel has unit scale


def normalised_solve(physics: fem.PDETask, mean: tuple, std: tuple, *, solution_operator=None):
    """``a_n (g, g) -> (solve(a) - mean_u) / std_u`` with ``a = a_n std_a + mean_a``: the FEM solve in a
    joint prior's normalised units (``S @ a`` when the dense ``solution_operator`` is given)."""
    mesh = physics.mesh
    ma, mu = float(mean[0]), float(mean[1])
    sa, su = float(std[0]), float(std[1])
    S = None if solution_operator is None else jnp.asarray(solution_operator, jnp.float64)

    def forward(a_n):
        a = a_n * sa + ma
        if S is not None:
            u = (S @ a.reshape(-1)).reshape(a.shape)
        else:
            u = mesh.to_image(physics.parameter.solve(mesh.from_image(a)))
        return (u - mu) / su

    return forward


def pde_projection(
    physics: fem.PDETask,
    mean: tuple,
    std: tuple,
    *,
    solution_operator=None,
    cg_tol: float = 1e-6,
    cg_maxiter: int = 100,
):
    """``x0 (2, g, g), normalised -> the nearest PDE-consistent pair`` (same shape and dtype).

    ``mean`` / ``std``: the prior's channel normalisation ``(a, u)``; ``solution_operator``: the dense
    ``S`` with ``u = S a`` (a linear PDE, :func:`pdegen.inverse.solution_operator`), else each
    ``F`` evaluation is an FEM solve. Works under ``jit`` and ``vmap``.
    """
    forward = normalised_solve(physics, mean, std, solution_operator=solution_operator)
    linear = solution_operator is not None or physics.parameter.linear

    g = physics.grid

    def project(x0):
        if x0.shape != (2, g, g):
            raise ValueError(
                f"pde_projection: expected a normalised (a, u) pair of shape (2, {g}, {g}), "
                f"got {x0.shape}"
            )
        x = x0.astype(jnp.float64)
        a_hat, u_hat = x[0], x[1]
        f_hat, vjp = jax.vjp(forward, a_hat)  # the FEM solve has an adjoint, not a forward mode
        if linear:  # F is affine: J v = F(v) - F(0)
            f_zero = forward(jnp.zeros_like(a_hat))
            jvp = lambda v: forward(v) - f_zero  # noqa: E731
        else:  # a finite-difference directional derivative (Gauss-Newton needs no more)
            jvp = lambda v: (forward(a_hat + _EPS * v) - f_hat) / _EPS  # noqa: E731
        normal = lambda v: v + vjp(jvp(v))[0]  # noqa: E731
        rhs = vjp(u_hat - f_hat)[0]
        da, _ = jax.scipy.sparse.linalg.cg(normal, rhs, tol=cg_tol, maxiter=cg_maxiter)
        a = a_hat + da
        return jnp.stack([a, forward(a)]).astype(x0.dtype)

    return project


class ConsistencyPenalty(eqx.Module):
    """The PDE-consistency term of physics-informed training of a joint prior.

    ``x0 (2, g, g), normalised -> weight * mean((u - F(a))^2)`` for a linear PDE, ``F`` the
    solve in normalised units: the physics term of physics-informed training
    (``pdegen.models.train(..., penalty=...)``). The exact denoiser of pairs ``(a, solve(a))``
    satisfies ``E[u | x_t] = F(E[a | x_t])`` at every noise level, so the term moves no optimum."""

    operator: jax.Array  # (g^2, g^2): normalised a -> normalised u, without the offset
    offset: jax.Array  # (g^2,)
    weight: float = eqx.field(static=True, default=1.0)

    def __call__(self, x0):
        a, u = x0[0], x0[1]
        pred = (self.operator @ a.reshape(-1) + self.offset).reshape(a.shape)
        return self.weight * jnp.mean((u - pred) ** 2)


def consistency_penalty(
    physics: fem.PDETask, mean: tuple, std: tuple, *, weight: float = 1.0, dtype="float32"
) -> ConsistencyPenalty:
    """The :class:`ConsistencyPenalty` of a linear PDE for a normalised joint prior.

    The :class:`ConsistencyPenalty` of a linear PDE on its grid, for a prior normalised by
    ``mean`` / ``std`` (channels ``(a, u)``); ``dtype`` that of the network."""
    from ._operators import solution_operator

    if not physics.parameter.linear:
        raise ValueError(
            "consistency_penalty: needs a PDE linear in a (a source); use pde_projection for others"
        )
    if not weight >= 0:
        raise ValueError(f"consistency_penalty(weight=...): must be >= 0, got {weight}")
    B, c = _normalised_operator(solution_operator(physics), mean, std)
    return ConsistencyPenalty(jnp.asarray(B, dtype), jnp.asarray(c, dtype), float(weight))


def _normalised_operator(S, mean, std):
    """``(B, c)`` with ``F(a_n) = B a_n + c``: the solve ``u = S a`` in normalised units."""
    S = np.asarray(S, np.float64)
    B = (float(std[0]) / float(std[1])) * S
    c = (S @ np.full(S.shape[1], float(mean[0])) - float(mean[1])) / float(std[1])
    return B, c


class ConsistentScore(eqx.Module):
    """A joint ``(a, u)`` score whose denoised estimate is projected onto the PDE's solutions.

    ``score(x, t)`` of a joint prior (normalised units) turned into the score whose Tweedie
    estimate is the nearest pair ``(a*, F(a*))`` to the prior's own (:func:`pde_projection`, exact
    for a linear PDE: ``a* = (I + B^T B)^-1 (a_hat + B^T (u_hat - c))`` with ``F(a) = B a + c``).
    The exact denoiser of PDE-consistent data is unchanged by it; a learned one moves towards it."""

    score: Any
    sde: Any
    operator: jax.Array  # B (g^2, g^2): normalised a -> normalised u, without the offset
    offset: jax.Array  # c (g^2,)
    gram_inverse: jax.Array  # (I + B^T B)^-1

    def project(self, d):
        """The nearest PDE-consistent pair to a joint field ``d (2, g, g)`` (normalised units)."""
        B, c, G = (v.astype(d.dtype) for v in (self.operator, self.offset, self.gram_inverse))
        a, u = d[0].reshape(-1), d[1].reshape(-1)
        a_star = G @ (a + B.T @ (u - c))
        return jnp.stack([a_star, B @ a_star + c]).reshape(d.shape)

    def denoise(self, x, t):
        """The projected Tweedie estimate ``(2, g, g)``."""
        return self.project(self.sde.tweedie_denoiser(self.score, x, t))

    def __call__(self, x, t):
        return self.sde.score_from_denoiser(x, t, self.denoise(x, t))


def consistent_prior(prior, physics: fem.PDETask | str):
    """A joint prior whose every denoised estimate solves the PDE (a :class:`FieldPrior`).

    ``prior``: a :class:`FieldPrior` over ``(a, u)``; ``physics``: its linear PDE, a
    :class:`pdegen.fem.PDETask` on the prior's grid or a name (``"poisson"``, ``"helmholtz"``). The
    score is a :class:`ConsistentScore`: the prior's Tweedie estimate replaced by the nearest
    PDE-consistent pair at every noise level, so every guidance method and sampler works with
    consistent estimates and the final samples satisfy the PDE to the network's precision. Dense
    ``(g^2, g^2)`` operators: grids up to 64 (at larger grids use ``correction=True`` of
    :func:`pdegen.inverse.sample_task_posterior`, which solves the projection by conjugate
    gradients)."""
    import dataclasses

    from ._field_prior import FieldPrior
    from ._operators import solution_operator

    if not isinstance(prior, FieldPrior) or tuple(prior.channels) != ("a", "u"):
        raise ValueError(
            "consistent_prior: needs a FieldPrior over the joint field (a, u), got "
            f"{getattr(prior, 'channels', type(prior).__name__)}"
        )
    if isinstance(physics, str):
        physics = fem.PDETask(physics, prior.grid)
    if not isinstance(physics, fem.PDETask) or not physics.parameter.linear:
        raise ValueError("consistent_prior: needs a linear PDE (a fem.PDETask or its name)")
    if physics.grid != prior.grid:
        raise ValueError(
            f"consistent_prior: the PDE is on a {physics.grid}x{physics.grid} grid, the prior on "
            f"{prior.grid}x{prior.grid}"
        )
    if prior.grid > 64:
        raise ValueError(f"consistent_prior: dense operators; grid must be <= 64, got {prior.grid}")
    B, c = _normalised_operator(solution_operator(physics), prior.mean, prior.std)
    G = np.linalg.inv(np.eye(B.shape[1]) + B.T @ B)
    dt = jnp.dtype(prior.dtype)
    score = ConsistentScore(
        prior.score, prior.sde, jnp.asarray(B, dt), jnp.asarray(c, dt), jnp.asarray(G, dt)
    )
    return dataclasses.replace(prior, score=score, name=f"{prior.name} (PDE-consistent)")
