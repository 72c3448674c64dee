"""Baseline for learning to learn: the coordinate-wise LSTM optimiser of Andrychowicz et al.
(2016), in equinox + optax. One two-layer LSTM (20 hidden units) is shared by all coordinates;
it reads each coordinate's preprocessed gradient (``(log|g| / p, sign g)``, ``p = 10``) and
proposes that coordinate's update; it is trained by backpropagation through unrolled
trajectories (truncated, second derivatives dropped) on the sum of the objective along them."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ._box import default_dtype, make_box, objective_z
from ._family import Family

_P = 10.0
_DT = jnp.float32


def _preprocess(g):
    g = g.astype(_DT)
    big = jnp.abs(g) >= jnp.exp(-_P)
    a = jnp.where(big, jnp.log(jnp.abs(g) + 1e-30) / _P, -1.0)
    b = jnp.where(big, jnp.sign(g), jnp.exp(_P) * g)
    return jnp.stack([a, b], axis=-1)


class CoordinatewiseLSTM(eqx.Module):
    """The coordinate-wise LSTM optimiser of Andrychowicz et al. (2016).

    The learned optimiser of Andrychowicz et al. (2016): a two-layer LSTM applied to each
    coordinate separately (shared weights), mapping the preprocessed gradient to an update.

    Args:
        hidden: Hidden units of each LSTM layer.
        key: PRNG key for the initial weights (keyword-only).
    """

    cell1: eqx.nn.LSTMCell
    cell2: eqx.nn.LSTMCell
    out: eqx.nn.Linear
    hidden: int = eqx.field(static=True)

    def __init__(self, hidden: int = 20, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.cell1 = eqx.nn.LSTMCell(2, hidden, key=k1, dtype=_DT)
        self.cell2 = eqx.nn.LSTMCell(hidden, hidden, key=k2, dtype=_DT)
        self.out = eqx.nn.Linear(hidden, 1, key=k3, dtype=_DT)
        self.hidden = hidden

    def init_state(self, dim):
        z = jnp.zeros((dim, self.hidden), dtype=_DT)
        return ((z, z), (z, z))

    def __call__(self, g, state):
        """Updates ``(d,)`` for gradients ``g`` ``(d,)``; ``state`` per coordinate."""
        (s1, s2) = state

        def one(inp, a, b):
            a = self.cell1(inp, a)
            b = self.cell2(a[0], b)
            return self.out(b[0])[0], a, b

        u, s1, s2 = jax.vmap(one)(_preprocess(g), s1, s2)
        return 0.1 * u, (s1, s2)


class LSTMOptimiser(NamedTuple):
    """A trained coordinate-wise LSTM optimiser (the result of :func:`train_lstm`).

    Attributes:
        model: The trained :class:`CoordinatewiseLSTM`.
        dim: The problem dimension it was trained in.
        training_evaluations: Objective evaluations spent on training.
        training_seconds: Wall time of training.
        losses: The meta-training loss per iteration.
    """

    model: Any
    dim: int
    training_evaluations: int
    training_seconds: float
    losses: np.ndarray


def _run(model, fz, z, state, steps):
    """``steps`` steps from ``z``: returns the final (z, state) and the values along the way."""
    vg = jax.value_and_grad(fz)

    def body(carry, _):
        z, state = carry
        v, g = vg(z)
        u, state = model(jax.lax.stop_gradient(g), state)
        z = jnp.clip(z + u.astype(z.dtype), -1.0, 1.0)
        return (z, state), v

    return jax.lax.scan(body, (z, state), None, length=steps)


def train_lstm(
    family: Family,
    *,
    key,
    iterations: int = 1000,
    tasks_per_iteration: int = 8,
    unroll: int = 20,
    horizon: int = 100,
    learning_rate: float = 1e-3,
) -> LSTMOptimiser:
    """Train the coordinate-wise LSTM optimiser on a family of problems.

    Trains on fresh tasks of ``family``: episodes of ``horizon`` steps from uniform starts,
    cut into unrolls of ``unroll`` steps (one optimiser step per unroll); the loss is the mean
    of ``f / f(start)`` along the unroll. Cost: ``2 * unroll`` evaluations per task and
    iteration (value and gradient)."""
    t_start = time.perf_counter()
    box = make_box(family.domain, caller="train_lstm")
    fz = objective_z(family.fn, box)
    dim = family.dim
    k_model, k_train = jr.split(key)
    model = CoordinatewiseLSTM(key=k_model)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    opt_state = optimiser.init(params)

    def fresh(key):
        k_task, k_z = jr.split(key)
        tasks = family.sample(k_task, tasks_per_iteration)
        z = jr.uniform(k_z, (tasks_per_iteration, dim), dtype=default_dtype(), minval=-1, maxval=1)
        scale = jax.vmap(fz)(z, tasks)
        states = jax.vmap(lambda _: model.init_state(dim))(jnp.arange(tasks_per_iteration))
        return tasks, z, states, scale

    @jax.jit
    def step(params, opt_state, tasks, z, states, scale):
        def loss(p):
            m = eqx.combine(p, static)

            def one(task, z0, s0, sc):
                (z1, s1), values = _run(m, lambda zz: fz(zz, task), z0, s0, unroll)
                return jnp.mean(values) / sc, (z1, s1)

            values, (z1, s1) = jax.vmap(one)(tasks, z, states, scale)
            return jnp.mean(values), (z1, s1)

        (value, (z1, s1)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grads, opt_state, params)
        z1 = jax.lax.stop_gradient(z1)
        s1 = jax.lax.stop_gradient(s1)
        return eqx.apply_updates(params, updates), opt_state, value, z1, s1

    segments = max(horizon // unroll, 1)
    losses = []
    tasks = z = states = scale = None
    for i in range(iterations):
        if i % segments == 0:
            tasks, z, states, scale = fresh(jr.fold_in(k_train, i))
        params, opt_state, value, z, states = step(params, opt_state, tasks, z, states, scale)
        losses.append(float(value))
    evaluations = (
        iterations * tasks_per_iteration * (2 * unroll)
        + (-(-iterations // segments)) * tasks_per_iteration
    )
    return LSTMOptimiser(
        eqx.combine(params, static),
        dim,
        evaluations,
        time.perf_counter() - t_start,
        np.asarray(losses),
    )


def apply_lstm(lstm: LSTMOptimiser, family: Family, tasks, *, key, steps: int = 100):
    """Apply a trained LSTM optimiser to tasks.

    Runs the trained optimiser ``steps`` steps from a uniform start on each task: returns
    (evaluations ``(steps,)``, best values ``(n, steps)``, final points ``(n, d)``)."""
    if family.dim != lstm.dim:
        raise ValueError(
            f"apply_lstm(family=...): the optimiser was trained on d={lstm.dim}, the family has "
            f"d={family.dim}"
        )
    box = make_box(family.domain, caller="apply_lstm")
    fz = objective_z(family.fn, box)
    n = jax.tree.leaves(tasks)[0].shape[0]
    z0 = jr.uniform(key, (n, family.dim), dtype=default_dtype(), minval=-1, maxval=1)

    def one(task, z):
        (z1, _), values = _run(
            lstm.model, lambda zz: fz(zz, task), z, lstm.model.init_state(family.dim), steps
        )
        return z1, values

    z1, values = jax.jit(jax.vmap(one))(tasks, z0)
    evals = 2 * np.arange(1, steps + 1)
    best = np.minimum.accumulate(np.asarray(values), axis=1)
    return evals, best, np.asarray(jax.vmap(box.to_x)(z1))
