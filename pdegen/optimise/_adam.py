"""Baseline: projected Adam from uniform random restarts (local search only)."""

from __future__ import annotations

import jax
import jax.random as jr
import numpy as np

from ._best import best_init
from ._box import default_dtype
from ._polish import refine
from ._run import Run, make_run


def adam_plan(max_evaluations: int, steps_per_restart: int) -> tuple[int, int]:
    """``(restarts, steps)``: as many restarts of about ``steps_per_restart`` steps as fit,
    then the steps stretched so that ``restarts * (2 steps + 1)`` uses the budget."""
    restarts = max(1, max_evaluations // (2 * steps_per_restart + 1))
    steps = (max_evaluations - restarts) // (2 * restarts)
    return restarts, steps


def run_adam(fz, box, keys, tasks, *, max_evaluations, steps_per_restart, learning_rate) -> Run:
    dim = box.centre.shape[0]
    restarts, steps = adam_plan(max_evaluations, steps_per_restart)

    def one(key, task):
        z0 = jr.uniform(key, (restarts, dim), dtype=default_dtype(), minval=-1.0, maxval=1.0)
        return refine(
            lambda z: fz(z, task), z0, best_init(8, dim), steps=steps, learning_rate=learning_rate
        )

    best, traj = jax.jit(jax.vmap(one))(keys, tasks)
    n_used = restarts * (2 * steps + 1)
    evals = np.append(2 * restarts * np.arange(1, steps + 1), n_used)
    return make_run(best, [evals], [traj, best.values[:, :1]], n_used)
