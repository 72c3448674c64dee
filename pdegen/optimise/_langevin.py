"""Baseline: annealed unadjusted Langevin on ``f / T + wall`` with the shared ULA kernel of
:mod:`pdegen.mcmc`, then the same polish as the global methods.

The temperature falls geometrically from ``T_0`` to ``T_0 * final_temperature_ratio`` in
``stages`` levels; each level is a ULA chain (``pdegen.mcmc.ula``) on ``f / T_k + wall`` with
step ``h_k = step_size * T_k / T_0`` (the drift on ``f`` is then a T-independent gradient step and
the noise shrinks like ``sqrt(T)``), started where the previous level ended. Each ULA step and
each level's start cost one value and gradient per chain (2 evaluations)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import mcmc
from ._best import best_init, best_update
from ._box import default_dtype, wall
from ._polish import polish_appended, polish_evaluations, polish_plan
from ._run import Run, initial_sample, make_run


def langevin_steps(max_evaluations, *, num_initial, num_chains, refine_steps, stages) -> int:
    """ULA steps per level that fit the budget (each level also pays one start per chain)."""
    avail = max_evaluations - num_initial - polish_plan(8, refine_steps).cost
    return avail // (2 * num_chains * stages) - 1


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
    stages,
) -> Run:
    dim = box.centre.shape[0]
    plan = polish_plan(8, refine_steps)
    steps = langevin_steps(
        max_evaluations,
        num_initial=num_initial,
        num_chains=num_chains,
        refine_steps=refine_steps,
        stages=stages,
    )
    ratios = final_temperature_ratio ** (np.arange(stages) / max(stages - 1, 1))

    def one(key, task):
        f1 = partial(fz, task=task)
        k_t, k_z, k_run = jr.split(key, 3)
        t0, zi, vi = initial_sample(f1, dim, k_t, num_initial)
        best = best_update(best_init(8, dim), zi, vi)
        z = jr.uniform(k_z, (num_chains, dim), dtype=default_dtype(), minval=-1.0, maxval=1.0)
        trajs = []
        for k, ratio in enumerate(ratios):
            temperature = t0 * ratio

            def energy(zz, temperature=temperature):
                return f1(zz) / temperature + wall(zz)

            kernel = mcmc.ula(energy, float(step_size * ratio))

            def record(best, state, temperature=temperature):
                walls = jax.vmap(wall)(state.position)
                values = (state.energy - walls) * temperature
                # outside the box or diverged: no candidates (not the objective's fault)
                return best_update(
                    best, jnp.clip(state.position, -1.0, 1.0), values, exclude=~(walls == 0)
                )

            states = jax.vmap(kernel.init)(z)
            best = record(best, states)

            def body(carry, k_step, kernel=kernel, record=record):
                states, best = carry
                states, _ = jax.vmap(lambda s, kk: kernel.step(s, key=kk))(
                    states, jr.split(k_step, num_chains)
                )
                best = record(best, states)
                return (states, best), best.values[0]

            (states, best), traj = jax.lax.scan(
                body, (states, best), jr.split(jr.fold_in(k_run, k), steps)
            )
            trajs += [best.values[:1], traj]  # after the level's start, after each step
            z = states.position
        return polish_appended(
            f1,
            best,
            jnp.concatenate(trajs),
            steps=refine_steps if plan.sizes else 0,
            max_learning_rate=refine_learning_rate,
        )

    best, traj = jax.jit(jax.vmap(one))(keys, tasks)
    per_level = 2 * num_chains * np.arange(1, steps + 2)
    evals = [num_initial + 2 * num_chains * (steps + 1) * k + per_level for k in range(stages)]
    n_used = num_initial + 2 * num_chains * (steps + 1) * stages
    if plan.sizes:
        evals.append(polish_evaluations(plan, n_used))
        n_used += plan.cost
    return make_run(best, evals, [traj], n_used)
