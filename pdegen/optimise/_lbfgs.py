"""Projected L-BFGS in the normalised box ``[-1, 1]^d``: a local quasi-Newton search that learns
the curvature from its gradients, as an ``(init, step)`` kernel.

Every iteration costs one value and one gradient (2 evaluations) at one trial point, so a run of
``n`` steps costs ``2 (n + 1)`` evaluations, whatever happens: there is no inner line search.
The trial point is ``clip(z + alpha d)`` with ``d`` the two-loop L-BFGS direction of the
projected gradient (coordinates at a bound whose gradient points out of the box are held, the
two-metric projection); an Armijo decrease accepts it and doubles ``alpha`` (at most 1), a failure
rejects it and quarters ``alpha``. With ``restart=True`` a run that has stalled (no decrease for
``patience`` iterations, or ``alpha`` below ``1e-12``) spends its next iteration's evaluation on a
uniform point and starts again from there: the multi-start baseline. Rotation and scaling invariant up to the
box (a quasi-Newton method); it finds the minimum of the basin it starts in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._best import Best, best_init, best_update
from ._box import default_dtype
from ._run import make_run

__all__ = ["LBFGS", "LBFGSState", "lbfgs", "run_lbfgs"]


class LBFGSState(NamedTuple):
    """State of :func:`lbfgs`.

    The current point ``z``, its ``value`` and ``grad``, the last ``memory`` steps ``s`` and gradient changes ``y`` (``count`` stored so far), the step factor
    ``alpha``, iterations without decrease ``stall``, and the best points seen (a
    :class:`~pdegen.optimise._best.Best`, which also counts non-finite values)."""

    z: jax.Array
    value: jax.Array
    grad: jax.Array
    s: jax.Array
    y: jax.Array
    count: jax.Array
    alpha: jax.Array
    stall: jax.Array
    best: Best


class LBFGS(NamedTuple):
    """The projected L-BFGS kernel returned by :func:`lbfgs`.

    ``init(z0, best=None) -> state`` (2 evaluations; ``best`` the :class:`Best` to continue) and
    ``step(state, key) -> state`` (2 evaluations)."""

    init: Callable
    step: Callable


def _outward(z, g):
    """Coordinates at a bound whose descent direction leaves the box."""
    return ((z <= -1.0) & (g > 0)) | ((z >= 1.0) & (g < 0))


def _two_loop(g, s, y, count):
    """``H g`` for the L-BFGS inverse Hessian ``H`` of the stored pairs (newest at ``count-1``)."""
    m = s.shape[0]
    sy = jnp.sum(s * y, axis=1)
    rho = jnp.where(sy > 0, 1.0 / jnp.where(sy > 0, sy, 1.0), 0.0)
    order = (count - 1 - jnp.arange(m)) % m  # newest first
    valid = jnp.arange(m) < jnp.minimum(count, m)

    def newest_first(q, i):
        j = order[i]
        a = jnp.where(valid[i], rho[j] * (s[j] @ q), 0.0)
        return q - a * y[j], a

    q, alphas = jax.lax.scan(newest_first, g, jnp.arange(m))
    last = order[0]
    yy = y[last] @ y[last]
    gamma = jnp.where((count > 0) & (yy > 0), sy[last] / jnp.where(yy > 0, yy, 1.0), 1.0)

    def oldest_first(r, i):
        i = m - 1 - i
        j = order[i]
        b = jnp.where(valid[i], rho[j] * (y[j] @ r), 0.0)
        return r + s[j] * (alphas[i] - b), None

    r, _ = jax.lax.scan(oldest_first, gamma * q, jnp.arange(m))
    return r


def lbfgs(
    fz: Callable,
    *,
    memory: int = 8,
    restart: bool = False,
    patience: int = 5,
    first_step: float = 0.25,
) -> LBFGS:
    """Projected L-BFGS on ``fz`` over ``[-1, 1]^d`` (see the module docstring).

    ``first_step`` bounds the first move (and every move after a reset of the memory) in the max
    norm, in normalised units; ``restart``: start again from a uniform point after ``patience``
    iterations without decrease."""
    if memory < 1:
        raise ValueError(f"lbfgs(memory=...): need at least 1, got {memory}")
    value_and_grad = jax.value_and_grad(fz)

    def fresh(z, value, grad, best):
        zeros = jnp.zeros((memory, z.shape[0]), dtype=z.dtype)
        finite = jnp.isfinite(value)
        return LBFGSState(
            z,
            value,
            jnp.where(finite, grad, 0.0),
            zeros,
            zeros,
            jnp.asarray(0),
            jnp.asarray(1.0, dtype=z.dtype),
            jnp.asarray(0),
            best,
        )

    def init(z0, best: Best | None = None):
        z0 = jnp.clip(jnp.asarray(z0, dtype=default_dtype()), -1.0, 1.0)
        value, grad = value_and_grad(z0)
        best = best_init(8, z0.shape[0]) if best is None else best
        return fresh(z0, value, grad, best_update(best, z0[None], value[None]))

    def step(state: LBFGSState, key=None) -> LBFGSState:
        z, f, g = state.z, state.value, state.grad
        held = _outward(z, g)
        pg = jnp.where(held, 0.0, g)
        d = jnp.where(held, 0.0, -_two_loop(pg, state.s, state.y, state.count))
        d = jnp.where(d @ pg < 0, d, -pg)  # a descent direction, else steepest descent
        cap = first_step / (jnp.max(jnp.abs(d)) + 1e-300)
        scale = jnp.where(state.count == 0, jnp.minimum(1.0, cap), 1.0)
        trial = jnp.clip(z + state.alpha * scale * d, -1.0, 1.0)
        if restart:  # a stalled run spends this iteration's evaluation on a new uniform start
            stalled = (state.stall >= patience) | (state.alpha < 1e-12)
            start = jr.uniform(key, z.shape, dtype=z.dtype, minval=-1.0, maxval=1.0)
            trial = jnp.where(stalled, start, trial)
        f_new, g_new = value_and_grad(trial)  # the one value and gradient of the iteration
        finite = jnp.isfinite(f_new)
        best = best_update(state.best, trial[None], f_new[None])
        accept = finite & (f_new <= f + 1e-4 * (pg @ (trial - z)))
        s_new, y_new = trial - z, g_new - g
        store = accept & (s_new @ y_new > 1e-12 * jnp.maximum(s_new @ s_new, 1e-300))
        slot = state.count % memory
        decreased = accept & (f - f_new > 1e-12 * (1.0 + jnp.abs(f)))
        new = LBFGSState(
            jnp.where(accept, trial, z),
            jnp.where(accept, f_new, f),
            jnp.where(accept, g_new, g),
            jnp.where(store, state.s.at[slot].set(s_new), state.s),
            jnp.where(store, state.y.at[slot].set(y_new), state.y),
            state.count + store.astype(state.count.dtype),
            jnp.where(accept, jnp.minimum(1.0, 2.0 * state.alpha), 0.25 * state.alpha),
            jnp.where(decreased, 0, state.stall + 1),
            best,
        )
        if not restart:
            return new
        restarted = fresh(trial, f_new, g_new, best)
        return jax.tree.map(lambda a, b: jnp.where(stalled, a, b), restarted, new)

    return LBFGS(init, step)


def run_lbfgs(fz: Callable, z0, steps: int, *, key=None, best: Best | None = None, **options):
    """``steps`` iterations of :func:`lbfgs` from ``z0`` ``(d,)``: ``2 (steps + 1)`` evaluations.

    Returns the final state and the best value after the start and after each step
    ``(steps + 1,)``; ``best`` (a :class:`Best`) is continued. ``key`` is needed with
    ``restart=True``."""
    if options.get("restart") and key is None:
        raise ValueError("run_lbfgs(restart=True) needs a key for the new starts")
    kernel = lbfgs(fz, **options)
    state = kernel.init(z0, best)
    keys = jr.split(jr.key(0) if key is None else key, steps)

    def body(state, k):
        state = kernel.step(state, k)
        return state, state.best.values[0]

    first = state.best.values[0]
    state, traj = jax.lax.scan(body, state, keys)
    return state, jnp.concatenate([first[None], traj])


def run_lbfgs_method(fz, box, keys, tasks, *, max_evaluations, memory: int = 8):
    """:func:`pdegen.optimise.minimise`'s ``"lbfgs"``: projected L-BFGS from a uniform point,
    restarted from a new one whenever it stalls, until the budget is spent (2 evaluations per
    iteration)."""
    dim = box.centre.shape[0]
    steps = max_evaluations // 2 - 1

    def one(key, task):
        k0, k1 = jr.split(key)
        z0 = jr.uniform(k0, (dim,), dtype=default_dtype(), minval=-1.0, maxval=1.0)
        state, traj = run_lbfgs(
            lambda z: fz(z, task), z0, steps, key=k1, memory=memory, restart=True
        )
        return state.best, traj

    best, traj = jax.jit(jax.vmap(one))(keys, tasks)
    n_used = 2 * (steps + 1)
    return make_run(best, [2 * np.arange(1, steps + 2)], [traj], n_used)
