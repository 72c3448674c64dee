"""Annealed low-temperature sampling with a controlled diffusion: the driver of methods
``"dds"`` / ``"pis"``.

The temperature falls geometrically from ``T_0`` (the spread of ``f`` on a uniform initial
sample) to ``T_0 * final_temperature_ratio``; the sampler's network is fine-tuned from one
temperature to the next. After each temperature the sampler's reference law is moved onto the
sample cloud (``z = c + s u``: ``c`` the mean of the latest samples, ``s`` their spread, never
growing; with ``full_frame`` ``z = c + S u``, ``S`` the cloud's principal axes scaled by their
spread), so the learned drift only has to resolve the next, finer scale. The best points seen
are finally polished (:func:`pdegen.optimise._polish.polish`)."""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from ._best import best_update
from ._diffusion import diffusion_optimiser
from ._polish import local_learning_rate, polish, polish_evaluations, polish_plan
from ._run import Run, initial_sample, make_run


def run_diffusion(
    fz,
    box,
    keys,
    tasks,
    *,
    method,
    max_evaluations,
    num_temperatures,
    final_temperature_ratio,
    iterations_per_temperature,
    refine_steps,
    refine_learning_rate,
    num_initial,
    progress,
    adaptive_frame,
    full_frame=False,
    **cfg,
) -> Run:
    dim = box.centre.shape[0]
    sigma = cfg["sigma"]
    domain = (np.asarray(box.centre - box.half), np.asarray(box.centre + box.half))

    def f(x, task):  # fz maps normalised points; the optimiser normalises with the same box
        return fz(box.to_z(x), task)

    init, step, per_step = diffusion_optimiser(
        f, domain, method=method, full_frame=full_frame, **cfg
    )
    num_best = cfg.get("num_best", 8)
    plan = polish_plan(num_best, refine_steps)
    if iterations_per_temperature is None:
        avail = max_evaluations - num_initial - plan.cost
        iterations_per_temperature = avail // (per_step * num_temperatures)

    def start(key, task):
        k_t, k_init = jr.split(key)
        t0, z0, v0 = initial_sample(partial(fz, task=task), dim, k_t, num_initial)
        state = init(k_init, t0, task=task)
        state = state._replace(
            best=best_update(state.best, z0, v0),
            num_evaluations=state.num_evaluations + num_initial,
        )
        return state, t0

    def stage(state, key, temperature):
        state = state._replace(temperature=temperature.astype(state.temperature.dtype))

        def body(s, k):
            s, info = step(k, s)
            return s, (
                info.best_value,
                info.mean_value,
                info.spread,
                info.sample_mean,
                info.sample_std,
                info.sample_cov,
            )

        state, (bv, mv, sp, mean, std, cov) = jax.lax.scan(
            body, state, jr.split(key, iterations_per_temperature)
        )
        if adaptive_frame:
            # next temperature: reference law N(c, S S^T) of the last samples (averaged over the
            # last quarter of the stage), never growing and never below 1e-4 of the box; S the
            # per-coordinate spread, or (full frame) the principal axes scaled by their spread,
            # none longer than the previous frame's longest
            q = max(iterations_per_temperature // 4, 1)
            centre = jnp.mean(mean[-q:], axis=0)
            shift = mean[-q:] - centre[None, :]
            if full_frame:
                cov_q = jnp.mean(cov[-q:] + shift[:, :, None] * shift[:, None, :], axis=0)
                evals, evecs = jnp.linalg.eigh(0.5 * (cov_q + cov_q.T))
                longest = jnp.linalg.norm(state.frame_scale, ord=2)
                widths = jnp.clip(jnp.sqrt(jnp.maximum(evals, 0.0)) / sigma, 1e-4, longest)
                scale = evecs * widths[None, :]
            else:
                width = jnp.sqrt(jnp.mean(std[-q:] ** 2 + shift**2, axis=0))
                scale = jnp.clip(width / sigma, 1e-4, state.frame_scale)
            state = state._replace(frame_centre=centre, frame_scale=scale)
        return state, (bv, mv, sp)

    states, t0 = jax.jit(jax.vmap(start))(keys, tasks)
    stage_b = jax.jit(jax.vmap(stage))
    ratios = final_temperature_ratio ** (np.arange(num_temperatures) / max(num_temperatures - 1, 1))
    best_traj = [np.asarray(states.best.values[:, 0])[:, None]]
    eval_traj = [np.array([num_initial])]
    stage_means, stage_spreads = [], []
    bar = tqdm(range(num_temperatures), disable=not progress, desc=f"{method} annealing")
    stage_keys = jax.vmap(lambda k: jr.split(jr.fold_in(k, 1), num_temperatures))(keys)
    for i in bar:
        temps = t0 * jnp.asarray(ratios[i], dtype=t0.dtype)
        states, (bv, mv, sp) = stage_b(states, stage_keys[:, i], temps)
        best_traj.append(np.asarray(bv))
        eval_traj.append(
            num_initial
            + per_step
            * (i * iterations_per_temperature + np.arange(1, iterations_per_temperature + 1))
        )
        stage_means.append(np.asarray(mv[:, -1]))
        stage_spreads.append(np.asarray(sp[:, -1]))
        bar.set_postfix(
            T=f"{float(jnp.median(temps)):.3g}",
            best=f"{float(np.median(np.asarray(bv[:, -1]))):.4g}",
        )
    best = states.best
    n_used = num_initial + per_step * iterations_per_temperature * num_temperatures
    if refine_steps:
        if progress:
            tqdm.write(f"{method}: polishing the {num_best} best points ({plan.cost} evaluations)")
        t_polish = time.perf_counter()
        best, rtraj = jax.jit(
            jax.vmap(
                lambda b, task: polish(
                    partial(fz, task=task),
                    b,
                    steps=refine_steps,
                    learning_rate=local_learning_rate(b, refine_learning_rate),
                )
            )
        )(best, tasks)
        best_traj += [np.asarray(rtraj), np.asarray(best.values[:, :1])]
        eval_traj.append(polish_evaluations(plan, n_used))
        if progress:
            tqdm.write(f"{method}: polish done in {time.perf_counter() - t_polish:.1f} s")
        n_used += plan.cost
    extras = {
        "stage_mean_values": np.stack(stage_means, 1),
        "stage_spreads": np.stack(stage_spreads, 1),
        "temperatures": np.asarray(t0)[:, None] * ratios[None, :],
        "frame_centre": np.asarray(states.frame_centre),
        "frame_scale": np.asarray(states.frame_scale),
    }
    return make_run(best, eval_traj, best_traj, n_used, extras)
