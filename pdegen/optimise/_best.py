"""The best ``k`` points seen so far, and a count of non-finite objective values."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._box import default_dtype


class Best(NamedTuple):
    """``points`` ``(k, d)`` (normalised) sorted by ``values`` ``(k,)`` (``inf`` where empty);
    ``num_nonfinite`` counts the evaluations where the objective was NaN / inf."""

    points: jax.Array
    values: jax.Array
    num_nonfinite: jax.Array


def best_init(num_best: int, dim: int) -> Best:
    dt = default_dtype()
    return Best(
        jnp.zeros((num_best, dim), dtype=dt),
        jnp.full((num_best,), jnp.inf, dtype=dt),
        jnp.zeros((), dtype=jnp.int32),
    )


def best_update(best: Best, new_points, new_values, exclude=None) -> Best:
    """Merges ``new_points`` ``(m, d)`` with values ``(m,)``; ``exclude`` ``(m,)`` marks points
    that are no candidates (not counted as non-finite)."""
    finite = jnp.isfinite(new_values)
    bad = ~finite if exclude is None else (~finite & ~exclude)
    keep = finite if exclude is None else (finite & ~exclude)
    new_values = jnp.where(keep, new_values, jnp.inf)
    k = best.values.shape[0]
    all_v = jnp.concatenate([best.values, new_values])
    all_p = jnp.concatenate([best.points, new_points], axis=0)
    idx = jnp.argsort(all_v)[:k]
    return Best(all_p[idx], all_v[idx], best.num_nonfinite + jnp.sum(bad).astype(jnp.int32))
