"""Chain diagnostics: effective sample size and R-hat of MCMC draws (not the importance-weight
ESS of ``pdegen.models``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _autocovariance(x, axis):
    """Biased autocovariance along ``axis`` by FFT (zero padded)."""
    n = x.shape[axis]
    m = 2 ** int(np.ceil(np.log2(2 * n)))
    xc = x - jnp.mean(x, axis=axis, keepdims=True)
    f = jnp.fft.rfft(xc, n=m, axis=axis)
    ac = jnp.fft.irfft(f * jnp.conj(f), n=m, axis=axis)
    ac = lax.slice_in_dim(ac, 0, n, axis=axis)
    return ac / n


def chain_ess(samples) -> jax.Array:
    """Effective sample size per coordinate, ``samples`` of shape ``(num_chains, num_draws, ...)``.

    Multi-chain autocorrelations (Stan's definition) summed with Geyer's initial monotone sequence
    estimator. For one chain pass ``samples[None]``.
    """
    x = jnp.asarray(samples)
    if x.ndim < 2:
        raise ValueError(
            f"chain_ess: samples must have shape (num_chains, num_draws, ...), got {x.shape}"
        )
    if x.shape[1] < 4:
        raise ValueError(f"chain_ess: need at least 4 draws per chain, got {x.shape[1]}")
    return _chain_ess(x)


@jax.jit
def _chain_ess(x):
    C, N = x.shape[0], x.shape[1]
    gamma = _autocovariance(x, axis=1)  # (C, N, ...)
    within = jnp.mean(gamma[:, 0] * N / (N - 1.0), axis=0)
    var_plus = within * (N - 1.0) / N
    if C > 1:
        var_plus = var_plus + jnp.var(jnp.mean(x, axis=1), axis=0, ddof=1)
    var_plus = jnp.where(var_plus > 0, var_plus, 1.0)
    rho = 1.0 - (within[None] - jnp.mean(gamma, axis=0)) / var_plus[None]  # (N, ...)
    rho = rho.at[0].set(1.0)
    K = N // 2
    pairs = rho[0 : 2 * K : 2] + rho[1 : 2 * K : 2]  # (K, ...)
    positive = jnp.cumprod((pairs > 0).astype(pairs.dtype), axis=0)
    pairs = pairs * positive
    pairs = lax.cummin(pairs, axis=0)
    tau = -1.0 + 2.0 * jnp.sum(pairs, axis=0)
    tau = jnp.maximum(tau, 1.0 / math.log10(max(C * N, 10)))
    return C * N / tau


def rhat(samples) -> jax.Array:
    """Split R-hat per coordinate, from several chains.

    Split R-hat per coordinate (Gelman et al., BDA3), ``samples`` of shape
    ``(num_chains, num_draws, ...)``: each chain is split in halves, and the pooled variance
    estimate is compared with the within-chain variance. Near 1 (say < 1.01) when the chains agree.
    """
    x = jnp.asarray(samples)
    if x.ndim < 2:
        raise ValueError(
            f"rhat: samples must have shape (num_chains, num_draws, ...), got {x.shape}"
        )
    if x.shape[1] < 4:
        raise ValueError(f"rhat: need at least 4 draws per chain, got {x.shape[1]}")
    return _rhat(x)


@jax.jit
def _rhat(x):
    half = x.shape[1] // 2
    x = jnp.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)  # (2C, half, ...)
    n = x.shape[1]
    means = jnp.mean(x, axis=1)
    within = jnp.mean(jnp.var(x, axis=1, ddof=1), axis=0)
    between = n * jnp.var(means, axis=0, ddof=1)
    var_plus = (n - 1.0) / n * within + between / n
    return jnp.sqrt(var_plus / jnp.where(within > 0, within, jnp.finfo(x.dtype).tiny))
