"""The exact Gaussian posterior of linear-Gaussian inverse problems (the Bayes-optimal baseline).

Prior ``x = mean + L z`` with ``z ~ N(0, I)`` (so ``C = L L^T``), data ``y = G x + e`` with a
linear forward map ``G`` (a matrix, a sparse matrix, or a linear function such as
"solve the PDE, then observe at sensors") and ``e ~ N(0, noise_std^2 I)``. Everything is done
in observation space: ``m`` applications of ``G^T`` (VJPs) and an ``m x m`` Cholesky factor, so
fields with many thousands of unknowns are cheap when ``m`` is a few hundred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _linear_fn(op, in_shape, name):
    if callable(op) and not hasattr(op, "__matmul__"):
        return op
    if hasattr(op, "shape") and len(op.shape) == 2:
        size = 1
        for s in in_shape:
            size *= s
        if op.shape[1] != size:
            raise ValueError(
                f"{name} has {op.shape[1]} columns, expected {size} (input shape {in_shape})"
            )
        return lambda v: op @ jnp.ravel(v)
    raise TypeError(f"{name} must be a matrix, a sparse matrix with @, or a linear function")


class GaussianPosterior(NamedTuple):
    """Posterior of a linear-Gaussian problem.

    Attributes:
        mean: posterior mean (shape of the field).
        std: pointwise posterior standard deviation.
        prior_std: pointwise prior standard deviation.
        log_evidence: ``log p(y)``.
        cross: ``C G^T`` as a ``(field size, m)`` matrix.
        chol: Cholesky factor of ``S = G C G^T + noise_std^2 I``.
    """

    mean: jax.Array
    std: jax.Array
    prior_std: jax.Array
    log_evidence: jax.Array
    cross: jax.Array
    chol: jax.Array
    prior_mean: jax.Array
    prior_sqrt: Callable
    forward: Callable
    y: jax.Array
    noise_std: float
    z_shape: tuple

    def sample(self, key, num_samples: int) -> jax.Array:
        """Exact posterior samples by Matheron's rule (perturb a prior draw with its own data)."""
        z_shape = tuple(self.z_shape)
        kz, ke = jax.random.split(key)
        z = jax.random.normal(kz, (num_samples,) + z_shape, self.mean.dtype)
        e = self.noise_std * jax.random.normal(ke, (num_samples, self.y.size), self.mean.dtype)

        def one(z_, e_):
            x = self.prior_mean + self.prior_sqrt(z_)
            r = self.y - self.forward(x) - e_
            w = jax.scipy.linalg.cho_solve((self.chol, True), r)
            return x + (self.cross @ w).reshape(self.mean.shape)

        return jax.vmap(one)(z, e)

    def credible_interval_coverage(self, truth, level: float = 0.9) -> jax.Array:
        """Fraction of entries of ``truth`` inside the central ``level`` pointwise credible interval."""
        from jax.scipy.stats import norm

        half = norm.ppf(0.5 + level / 2.0) * self.std
        return jnp.mean(jnp.abs(truth - self.mean) <= half)


def gaussian_posterior(
    prior_mean,
    prior_sqrt,
    forward,
    y,
    *,
    noise_std: float,
    z_shape: tuple[int, ...] | None = None,
    prior_variance=None,
) -> GaussianPosterior:
    """Exact posterior of ``x = prior_mean + L z``, ``y = G x + N(0, noise_std^2 I)``.

    Args:
        prior_mean: the prior mean, any shape (the field's shape).
        prior_sqrt: ``L`` as a linear function ``z -> x - prior_mean`` or a matrix ``(d, k)``.
        forward: ``G`` as a linear function ``x -> y`` or a matrix ``(m, d)``.
        y: observations ``(m,)``.
        noise_std: observation noise standard deviation (``> 0``, or tiny for noise-free data).
        z_shape: shape of ``z`` (default: the field's shape, or ``(k,)`` for a matrix ``L``).
        prior_variance: ``diag(L L^T)`` (the field's shape) where it is known in closed form;
            default: computed row by row, one VJP of ``L`` per entry of the field.
    """
    prior_mean = jnp.asarray(prior_mean)
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"gaussian_posterior: y must be a vector, got shape {y.shape}")
    if not isinstance(noise_std, jax.core.Tracer) and not noise_std > 0:
        raise ValueError(f"gaussian_posterior: noise_std must be > 0, got {noise_std}")
    if z_shape is None:
        z_shape = (prior_sqrt.shape[1],) if hasattr(prior_sqrt, "shape") else prior_mean.shape
    L = (
        prior_sqrt
        if callable(prior_sqrt) and not hasattr(prior_sqrt, "shape")
        else (lambda z: (prior_sqrt @ z).reshape(prior_mean.shape))
    )
    G = _linear_fn(forward, prior_mean.shape, "gaussian_posterior: forward")
    dtype = prior_mean.dtype
    z0 = jnp.zeros(z_shape, dtype)
    y0 = G(prior_mean)
    if y0.shape != y.shape:
        raise ValueError(
            f"gaussian_posterior: forward maps to shape {y0.shape}, but y has shape {y.shape}"
        )

    # Columns of L^T G^T: one VJP each (G and L are linear, so VJPs at any point are exact).
    _, vjp_G = jax.vjp(G, prior_mean)
    _, vjp_L = jax.vjp(L, z0)
    eye = jnp.eye(y.size, dtype=dtype)
    LtGt = jax.vmap(lambda e: jnp.ravel(vjp_L(vjp_G(e)[0])[0]))(eye)  # (m, k)
    cross = jax.vmap(lambda r: jnp.ravel(L(r.reshape(z_shape))))(LtGt).T  # C G^T: (d, m)
    S = LtGt @ LtGt.T + noise_std**2 * eye
    chol = jnp.linalg.cholesky(0.5 * (S + S.T))
    r = y - y0
    w = jax.scipy.linalg.cho_solve((chol, True), r)
    mean = prior_mean + (cross @ w).reshape(prior_mean.shape)
    # Prior variance diag(L L^T): given in closed form, or exact through the rows of L (k VJPs
    # would be costly for big fields): diag(L L^T)_i = ||L^T e_i||^2 batched over e_i.
    d = prior_mean.size
    if prior_variance is None:
        prior_var = _diag_LLt(L, z_shape, prior_mean.shape, d, dtype)
    else:
        prior_var = jnp.asarray(prior_variance, dtype).reshape(-1)
        if prior_var.size != d:
            raise ValueError(
                f"gaussian_posterior: prior_variance has {prior_var.size} entries, the field {d}"
            )
    Sinv_crossT = jax.scipy.linalg.cho_solve((chol, True), cross.T)  # (m, d)
    post_var = prior_var - jnp.sum(cross.T * Sinv_crossT, axis=0)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    log_evidence = -0.5 * (r @ w) - 0.5 * logdet - 0.5 * y.size * jnp.log(2.0 * jnp.pi)
    post = GaussianPosterior(
        mean=mean,
        std=jnp.sqrt(jnp.maximum(post_var, 0.0)).reshape(prior_mean.shape),
        prior_std=jnp.sqrt(prior_var).reshape(prior_mean.shape),
        log_evidence=log_evidence,
        cross=cross,
        chol=chol,
        prior_mean=prior_mean,
        prior_sqrt=L,
        forward=G,
        y=y,
        noise_std=noise_std if isinstance(noise_std, jax.core.Tracer) else float(noise_std),
        z_shape=tuple(z_shape),
    )
    return post


def _diag_LLt(L, z_shape, x_shape, d, dtype, chunk: int = 512):
    _, vjp_L = jax.vjp(L, jnp.zeros(z_shape, dtype))

    def row_norms(idx):
        e = jax.nn.one_hot(idx, d, dtype=dtype).reshape((-1,) + tuple(x_shape))
        rows = jax.vmap(lambda v: jnp.ravel(vjp_L(v)[0]))(e)
        return jnp.sum(rows**2, axis=1)

    out = [row_norms(jnp.arange(s, min(s + chunk, d))) for s in range(0, d, chunk)]
    return jnp.concatenate(out)
