"""Baseline for separable functions: cyclic coordinate-wise 1-D grid search with a shrinking
window. Exact up to the grid for additively separable objectives, blind to rotations."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._best import best_init, best_update
from ._box import default_dtype
from ._run import Run, make_run


def run_coordinate(fz, box, keys, tasks, *, max_evaluations, grid_size=41, shrink=0.5) -> Run:
    """Start at a uniform random point (1 evaluation); then, coordinate after coordinate, try
    ``grid_size`` values of that coordinate (the whole interval in the first sweep, then
    ``x_i + w [-1, 1]`` with ``w`` halved every sweep) and keep the best."""
    dim = box.centre.shape[0]
    dt = default_dtype()
    pairs = (max_evaluations - 1) // grid_size
    coordinate = np.arange(pairs) % dim
    sweep = np.arange(pairs) // dim
    widths = jnp.asarray(shrink**sweep, dtype=dt)
    grid = jnp.linspace(-1.0, 1.0, grid_size, dtype=dt)

    def one(key, task):
        f1 = partial(fz, task=task)
        x = jr.uniform(key, (dim,), dtype=dt, minval=-1.0, maxval=1.0)
        v0 = f1(x)
        best = best_update(best_init(8, dim), x[None], v0[None])
        v = jnp.where(jnp.isfinite(v0), v0, jnp.inf)

        def body(carry, inp):
            x, v, best = carry
            i, s, w = inp
            values_i = jnp.where(s == 0, grid, jnp.clip(x[i] + w * grid, -1.0, 1.0))
            X = jnp.tile(x, (grid_size, 1)).at[:, i].set(values_i)
            vals = jax.vmap(f1)(X)
            best = best_update(best, X, vals)
            vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
            j = jnp.argmin(vals)
            better = vals[j] < v
            x = jnp.where(better, X[j], x)
            v = jnp.where(better, vals[j], v)
            return (x, v, best), best.values[0]

        inputs = (jnp.asarray(coordinate), jnp.asarray(sweep), widths)
        (_, _, best), traj = jax.lax.scan(body, (x, v, best), inputs)
        return best, jnp.concatenate([v[None], traj])

    best, traj = jax.jit(jax.vmap(one))(keys, tasks)
    evals = np.append(1, 1 + grid_size * np.arange(1, pairs + 1))
    return make_run(best, [evals], [traj], 1 + grid_size * pairs)
