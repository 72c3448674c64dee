"""Baseline: annealed unadjusted Langevin on ``f / T + wall``, then the same polish as the
global methods."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._best import best_init, best_update
from ._box import default_dtype, wall
from ._polish import local_learning_rate, polish, polish_evaluations, polish_plan
from ._run import Run, initial_sample, make_run


def langevin_steps(max_evaluations, *, num_initial, num_chains, refine_steps) -> int:
    return (max_evaluations - num_initial - polish_plan(8, refine_steps).cost) // (2 * num_chains)


def run_langevin(
    fz,
    box,
    keys,
    tasks,
    *,
    max_evaluations,
    num_chains,
    final_temperature_ratio,
    refine_steps,
    refine_learning_rate,
    num_initial,
    step_size,
) -> Run:
    """Normalised coordinates; the step is ``h = step_size * T / T_0`` (so the drift is a
    T-independent clipped gradient step and the noise shrinks like ``sqrt(T)``)."""
    dim = box.centre.shape[0]
    plan = polish_plan(8, refine_steps)
    steps = langevin_steps(
        max_evaluations, num_initial=num_initial, num_chains=num_chains, refine_steps=refine_steps
    )
    ratios = jnp.asarray(
        final_temperature_ratio ** (np.arange(steps) / max(steps - 1, 1)), dtype=default_dtype()
    )

    def one(key, task):
        f1 = partial(fz, task=task)
        vg = jax.vmap(jax.value_and_grad(f1))
        k_t, k_z, k_run = jr.split(key, 3)
        t0, zi, vi = initial_sample(f1, dim, k_t, num_initial)
        best = best_update(best_init(8, dim), zi, vi)
        z = jr.uniform(k_z, (num_chains, dim), dtype=default_dtype(), minval=-1.0, maxval=1.0)

        def body(carry, inp):
            z, best = carry
            k, r = inp
            v, g = vg(z)
            best = best_update(best, jnp.clip(z, -1.0, 1.0), v)
            h = step_size * r
            drift = -(step_size / t0) * g - h * jax.vmap(jax.grad(wall))(z)
            drift = jnp.clip(drift, -0.1, 0.1)
            z = z + drift + jnp.sqrt(2 * h) * jr.normal(k, z.shape, dtype=z.dtype)
            return (z, best), best.values[0]

        (z, best), traj = jax.lax.scan(body, (z, best), (jr.split(k_run, steps), ratios))
        if plan.sizes:
            best, rtraj = polish(
                f1,
                best,
                steps=refine_steps,
                learning_rate=local_learning_rate(best, refine_learning_rate),
            )
            traj = jnp.concatenate([traj, rtraj, best.values[:1]])
        return best, traj

    best, traj = jax.jit(jax.vmap(one))(keys, tasks)
    evals = [num_initial + 2 * num_chains * np.arange(1, steps + 1)]
    n_used = num_initial + 2 * num_chains * steps
    if plan.sizes:
        evals.append(polish_evaluations(plan, n_used))
        n_used += plan.cost
    return make_run(best, evals, [traj], n_used)
