"""Local refinement by projected Adam: from many points (restarts), or by successive halving
of a few good points (the polish that ends the global methods).

Costs: a value-and-gradient counts 2 evaluations (one value, one backward pass)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._best import Best, best_update


def local_learning_rate(best: Best, max_learning_rate):
    """Initial polish step from the spread of the best points: their rms distance to the best
    one (normalised units), within ``[1e-4, max_learning_rate]``. A cloud of good points in one
    basin is refined with steps of its own size, so the first Adam steps (about the learning
    rate per coordinate) do not throw points out of a narrow basin."""
    points, values = best.points, best.values
    ok = jnp.isfinite(values)
    d2 = jnp.sum((points - points[:1]) ** 2, axis=1)
    spread = jnp.sqrt(
        jnp.sum(jnp.where(ok, d2, 0.0)) / jnp.maximum(jnp.sum(ok), 1).astype(d2.dtype)
    )
    return jnp.clip(2.0 * spread, 1e-4, max_learning_rate)


def _adam_body(fz, opt):
    vg = jax.vmap(jax.value_and_grad(fz))

    def body(carry, _):
        z, s, best, own = carry
        v, g = vg(z)
        best = best_update(best, z, v)
        own = jnp.minimum(own, jnp.where(jnp.isfinite(v), v, jnp.inf))
        with jax.numpy_dtype_promotion("standard"):
            upd, s = opt.update(g, s, z)
        z = jnp.clip(z + upd.astype(z.dtype), -1.0, 1.0)
        return (z, s, best, own), best.values[0]

    return body


def refine(fz, starts, best: Best, *, steps: int, learning_rate):
    """``steps`` projected Adam steps from each of ``starts`` ``(m, d)`` (cosine-decayed step
    size), then one value of each end point: ``m * (2 steps + 1)`` evaluations. Returns the
    updated :class:`Best` and the best value after each step."""
    # cosine decay to 1e-3 of the initial step. (Geometric decays, from the start or after a
    # constant half, were worse at 4k evaluations on 2-D Ackley and 10-D Rastrigin.)
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3))
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(starts)
    own = jnp.full(starts.shape[:1], jnp.inf, dtype=best.values.dtype)
    (z, _, best, _), traj = jax.lax.scan(
        _adam_body(fz, opt), (starts, state, best, own), None, length=steps
    )
    best = best_update(best, z, jax.vmap(fz)(z))
    return best, traj


class PolishPlan(NamedTuple):
    """Successive-halving polish: round ``r`` runs ``steps[r]`` Adam steps from ``sizes[r]``
    points; ``cost`` is the evaluations charged (value-and-gradient 2 per point and step, plus
    one value of the final point)."""

    sizes: tuple
    steps: tuple
    cost: int


def polish_plan(num_points: int, steps: int) -> PolishPlan:
    """Spend the budget of ``steps`` Adam steps from each of ``num_points`` points in rounds
    that halve the number of points (``num_points``, ..., 2, 1), each round the same share of
    evaluations, so the last point gets about ``steps * num_points / rounds`` steps."""
    if steps == 0:
        return PolishPlan((), (), 0)
    sizes = [num_points]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    share = 2 * num_points * steps // len(sizes)
    round_steps = tuple(max(share // (2 * m), 1) for m in sizes)
    cost = sum(2 * m * s for m, s in zip(sizes, round_steps)) + 1
    return PolishPlan(tuple(sizes), round_steps, cost)


def polish(fz, best: Best, *, steps: int, learning_rate):
    """Successive-halving refinement of ``best.points``: projected Adam from all ``k`` points,
    then, round after round, only from the better half (ranked by the best value along each
    point's own path), each round with an equal share of the budget of ``steps`` steps from all
    ``k`` points; one cosine-decayed step size over the last survivor's whole path. Screening
    many basins briefly and then converging one spends the budget better than ``steps`` steps
    from each (tested). Returns the updated :class:`Best` and the best value after each step."""
    plan = polish_plan(best.points.shape[0], steps)
    if not plan.sizes:
        return best, jnp.zeros((0,), dtype=best.values.dtype)
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, sum(plan.steps), alpha=1e-3))
    body = _adam_body(fz, opt)
    z = best.points
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(z)
    own = jnp.where(jnp.isfinite(best.values), best.values, jnp.inf)
    trajs = []
    for r, (size, n_steps) in enumerate(zip(plan.sizes, plan.steps)):
        if r:
            keep = jnp.argsort(own)[:size]
            before = plan.sizes[r - 1]
            z, own = z[keep], own[keep]
            state = jax.tree.map(lambda a: a[keep] if a.ndim and a.shape[0] == before else a, state)
        (z, state, best, own), traj = jax.lax.scan(
            body, (z, state, best, own), None, length=n_steps
        )
        trajs.append(traj)
    best = best_update(best, z, jax.vmap(fz)(z))
    return best, jnp.concatenate(trajs)


def polish_appended(fz, best: Best, trajectory, *, steps: int, max_learning_rate):
    """:func:`polish` at its local step size (:func:`local_learning_rate`), its values and the final
    value appended to ``trajectory``; both unchanged when ``steps`` plan no polish (a caller whose
    budget leaves no room for it passes ``steps=0``)."""
    if not polish_plan(best.points.shape[0], steps).sizes:
        return best, trajectory
    best, polished = polish(
        fz, best, steps=steps, learning_rate=local_learning_rate(best, max_learning_rate)
    )
    return best, jnp.concatenate([trajectory, polished, best.values[:1]])


def polish_evaluations(plan: PolishPlan, start: int):
    """Evaluation counts after each polish step (matching :func:`polish`'s trajectory) and
    after the final value."""
    per_step = np.concatenate([np.full(s, 2 * m) for m, s in zip(plan.sizes, plan.steps)])
    return np.append(start + np.cumsum(per_step), start + plan.cost)
