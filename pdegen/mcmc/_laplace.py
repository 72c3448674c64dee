"""Dense Laplace approximations of low-dimensional targets, and pCN around them.

For a target ``exp(-U(x))`` of a few hundred dimensions at most (e.g. the coefficients of a
truncated Karhunen-Loeve expansion with the rest integrated out), the Laplace approximation
``N(x*, H^{-1})`` at the mode ``x*`` (:func:`lbfgs_minimise`) with ``H`` the Hessian of ``U``
(:func:`dense_laplace`: central differences of the gradient, ``2 n`` gradients, so it also works
through PDE solves without forward mode) is a preconditioner and, for a nearly Gaussian target, a
proposal whose draws are almost independent. :func:`laplace_pcn` is the generalised pCN of
Rudolf and Sprungk (2018) with that Gaussian as its reference measure: exact for any
approximation, the independence sampler at ``beta = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import UserError
from ._kernels import Preconditioner, SamplingAlgorithm, pcn


def lbfgs_minimise(fun: Callable, x0, max_steps: int, rtol: float = 1e-9):
    """Minimise ``fun`` with optax's L-BFGS (zoom line search), ``jit``-compatible.

    At most ``max_steps`` iterations, stopping when ``|grad| <= rtol * (1 + |grad_0|)``; ``x0``
    may be any pytree. Returns the point and the objective per iteration (``nan`` after the
    stop)."""
    # optax's L-BFGS mixes int32 / int64 indices under x64: NumPy promotion inside it only
    with jax.numpy_dtype_promotion("standard"):
        return _lbfgs(fun, x0, int(max_steps), rtol)


def _lbfgs(fun, x0, max_steps, rtol):
    import optax

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree)))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)
    g0 = norm(jax.grad(fun)(x0))

    def cond(carry):
        _, state, i, _, gnorm = carry
        return (i < max_steps) & (gnorm > rtol * (1.0 + g0))

    def body(carry):
        x, state, i, values, _ = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        values = values.at[i].set(value)
        return optax.apply_updates(x, updates), state, i + 1, values, norm(grad)

    values = jnp.full((max_steps,), jnp.nan, dtype=jnp.result_type(float))
    init = (x0, opt.init(x0), jnp.asarray(0), values, jnp.asarray(jnp.inf, values.dtype))
    x, _, _, values, _ = jax.lax.while_loop(cond, body, init)
    return x, values


class GaussianApproximation(NamedTuple):
    """``N(mean, (L L^T)^{-1})`` given by the lower Cholesky factor ``L`` of its precision.

    Attributes:
        mean: ``(n,)``.
        precision_cholesky: ``L``, ``(n, n)`` lower triangular.
    """

    mean: jax.Array
    precision_cholesky: jax.Array

    @property
    def preconditioner(self) -> Preconditioner:
        """``P = (L L^T)^{-1}`` and draws ``L^{-T} z ~ N(0, P)``."""
        L = self.precision_cholesky

        def apply(v):
            return jax.scipy.linalg.cho_solve((L, True), v)

        def sample(*, key):
            z = jax.random.normal(key, (L.shape[0],), L.dtype)
            return jax.scipy.linalg.solve_triangular(L.T, z, lower=False)

        return Preconditioner(apply, sample)

    def energy(self, x) -> jax.Array:
        """``0.5 |L^T (x - mean)|^2``: ``-log`` of its density up to a constant."""
        r = self.precision_cholesky.T @ (x - self.mean)
        return 0.5 * jnp.dot(r, r)

    def sample(self, *, key) -> jax.Array:
        """One draw."""
        return self.mean + self.preconditioner.sample(key=key)


def dense_laplace(
    energy_fn: Callable, x, *, relative_step: float = 1e-4, min_eigenvalue: float | None = None
) -> GaussianApproximation:
    """The Laplace approximation ``N(x, H^{-1})`` of ``exp(-energy_fn)`` at ``x`` (the mode).

    ``H``: the Hessian of ``energy_fn`` by central differences of its gradient (``2 n`` gradient
    evaluations, step ``relative_step * max(1, |x|_inf)``), symmetrised, its eigenvalues replaced
    by their absolute values and raised to ``min_eigenvalue`` (default ``1e-6`` times the
    largest), so that a point where the energy is not convex still gives a proper Gaussian (the
    saddle-free metric away from the mode). Dense: ``n`` up to a few hundred.
    """
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise UserError(f"dense_laplace: x must be a vector, got shape {x.shape}")
    if not relative_step > 0:
        raise UserError(f"dense_laplace: relative_step must be > 0, got {relative_step}")
    grad = jax.jit(jax.grad(energy_fn))
    h = relative_step * max(1.0, float(jnp.max(jnp.abs(x))))
    eye = np.eye(x.shape[0])
    H = np.stack(
        [(np.asarray(grad(x + h * e)) - np.asarray(grad(x - h * e))) / (2 * h) for e in eye]
    )
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        raise UserError("dense_laplace: the Hessian is not finite at x (is x a finite point?)")
    lam, W = np.linalg.eigh(H)
    lam = np.abs(lam)
    floor = 1e-6 * max(float(lam.max()), 1e-300) if min_eigenvalue is None else min_eigenvalue
    lam = np.maximum(lam, floor)
    L = np.linalg.cholesky((W * lam) @ W.T)
    return GaussianApproximation(x, jnp.asarray(L, x.dtype))


def laplace_pcn(
    energy_fn: Callable,
    approximation: GaussianApproximation,
    step_size: float = 1.0,
    *,
    target_acceptance: float = 0.25,
) -> SamplingAlgorithm:
    """pCN with ``approximation`` as its reference measure (generalised pCN).

    ``x' = m + sqrt(1 - beta^2) (x - m) + beta N(0, C)`` for ``N(m, C)`` the approximation,
    accepted with the ratio of ``exp(-U) / N(m, C)``: exact for any approximation, the
    independence sampler with proposal ``N(m, C)`` at ``beta = 1`` (where warm-up adaptation
    stops when the acceptance rate stays above ``target_acceptance``). Gradient-free.
    """
    if not isinstance(approximation, GaussianApproximation):
        raise TypeError(
            "laplace_pcn: approximation must be a GaussianApproximation (see dense_laplace), "
            f"got {type(approximation).__name__}"
        )
    kernel = pcn(
        lambda x: energy_fn(x) - approximation.energy(x),
        step_size,
        prior_mean=approximation.mean,
        prior=approximation.preconditioner,
        target_acceptance=target_acceptance,
    )
    return kernel._replace(name="pcn-laplace")
