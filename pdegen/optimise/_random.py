"""Baseline: uniform random search, then the same polish as the global methods."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.random as jr
import numpy as np

from ._best import best_init, best_update
from ._box import default_dtype
from ._polish import polish_appended, polish_evaluations, polish_plan
from ._run import Run, make_run


def random_plan(max_evaluations: int, refine_steps: int, chunk: int = 256):
    """``(polish plan, chunk size, number of chunks)``: a budget below twice the polish's cost
    is spent on the search alone; chunks are sized so that they use the rest."""
    plan = polish_plan(8, refine_steps)
    if max_evaluations < 2 * plan.cost:
        plan = polish_plan(8, 0)
    avail = max_evaluations - plan.cost
    n_chunks = math.ceil(avail / min(chunk, avail))
    return plan, avail // n_chunks, n_chunks


def run_random(fz, box, keys, tasks, *, max_evaluations, refine_steps, refine_learning_rate) -> Run:
    dim = box.centre.shape[0]
    plan, chunk, n_chunks = random_plan(max_evaluations, refine_steps)

    def one(key, task):
        f1 = partial(fz, task=task)

        def body(best, k):
            z = jr.uniform(k, (chunk, dim), dtype=default_dtype(), minval=-1.0, maxval=1.0)
            best = best_update(best, z, jax.vmap(f1)(z))
            return best, best.values[0]

        best, traj = jax.lax.scan(body, best_init(8, dim), jr.split(key, n_chunks))
        return polish_appended(
            f1,
            best,
            traj,
            steps=refine_steps if plan.sizes else 0,
            max_learning_rate=refine_learning_rate,
        )

    best, traj = jax.jit(jax.vmap(one))(keys, tasks)
    evals = [chunk * np.arange(1, n_chunks + 1)]
    n_used = chunk * n_chunks
    if plan.sizes:
        evals.append(polish_evaluations(plan, n_used))
        n_used += plan.cost
    return make_run(best, evals, [traj], n_used)
