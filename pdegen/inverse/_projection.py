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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem

__all__ = ["pde_projection", "ConsistencyPenalty", "consistency_penalty"]

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

    def project(x0):
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
    S = np.asarray(solution_operator(physics), np.float64)
    ratio = float(std[0]) / float(std[1])
    offset = (S @ np.full(S.shape[1], float(mean[0])) - float(mean[1])) / float(std[1])
    return ConsistencyPenalty(
        jnp.asarray(ratio * S, dtype), jnp.asarray(offset, dtype), float(weight)
    )
