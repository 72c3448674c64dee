"""What every method's driver returns to :func:`pdegen.optimise.minimise`, and the shared
start (the initial uniform sample that sets the temperature scale)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._best import Best
from ._box import default_dtype


class Run(NamedTuple):
    """``best`` (leading run axis), the convergence trajectory ``evaluations`` ``(m,)`` /
    ``best_values`` ``(n, m)`` (best value after that many evaluations), ``num_evaluations``
    used and method-specific ``extras``."""

    best: Best
    evaluations: np.ndarray
    best_values: np.ndarray
    num_evaluations: int
    extras: dict


def make_run(best, eval_pieces, traj_pieces, num_evaluations, extras=None) -> Run:
    traj = np.minimum.accumulate(
        np.concatenate([np.asarray(t) for t in traj_pieces], axis=1), axis=1
    )
    evals = np.concatenate([np.atleast_1d(np.asarray(e)) for e in eval_pieces])
    assert evals.shape[0] == traj.shape[1], (evals.shape, traj.shape)
    return Run(best, evals, traj, int(num_evaluations), extras or {})


def initial_sample(fz, dim, key, n):
    """``n`` uniform points in ``[-1, 1]^d``, their values and the temperature scale ``T_0``
    (the spread of the values)."""
    z = jr.uniform(key, (n, dim), dtype=default_dtype(), minval=-1.0, maxval=1.0)
    v = jax.vmap(fz)(z)
    finite = jnp.isfinite(v)
    count = jnp.maximum(jnp.sum(finite), 1).astype(v.dtype)
    mean = jnp.sum(jnp.where(finite, v, 0.0)) / count
    std = jnp.sqrt(jnp.sum(jnp.where(finite, (v - mean) ** 2, 0.0)) / count)
    return jnp.maximum(std, 1e-8 * (1.0 + jnp.abs(mean))), z, v
