"""A counter of objective evaluations that sees through ``jit``, ``vmap``, ``scan`` and ``grad``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np


class Counter:
    """The evaluations seen by a :func:`counted` objective.

    Evaluations seen by a :func:`counted` objective: ``values`` (forward calls, one per
    point) and ``gradients`` (backward passes, one per point); ``total`` their sum;
    ``smallest`` the smallest finite value returned. Second-order passes (differentiating a
    backward pass) are not seen."""

    def __init__(self):
        self.values = 0
        self.gradients = 0
        self.smallest = float("inf")
        # XLA may run host callbacks from several threads at once: updates hold the lock
        self.lock = threading.Lock()

    @property
    def total(self) -> int:
        jax.effects_barrier()  # every callback dispatched so far has run
        return self.values + self.gradients

    def reset(self):
        self.values = 0
        self.gradients = 0
        self.smallest = float("inf")


class Counted(NamedTuple):
    fn: Callable
    counter: Counter


def counted(f: Callable) -> Counted:
    """Wrap ``f`` so that its evaluations and gradients are counted.

    ``f`` (one point ``(d,)`` -> scalar) wrapped so that every value and every backward pass
    is counted on the host, per point, also under ``vmap`` and inside compiled loops.

    >>> import jax.numpy as jnp
    >>> g, counter = counted(lambda x: (x**2).sum())
    >>> values, gradients = jax.vmap(jax.value_and_grad(g))(jnp.ones((3, 2)))
    >>> counter.values, counter.gradients
    (3, 3)
    """
    counter = Counter()

    def _values(value):
        value = np.asarray(value)
        finite = value[np.isfinite(value)]
        with counter.lock:
            counter.values += int(value.size)
            if finite.size:
                counter.smallest = min(counter.smallest, float(finite.min()))

    def _gradients(token):
        with counter.lock:
            counter.gradients += int(np.size(token))

    def token(x):  # a scalar that depends on x, so that vmap batches the callback
        return (0 * x).sum()

    @jax.custom_vjp
    def fn(x):
        value = f(x)
        jax.debug.callback(_values, value)
        return value

    def fwd(x):
        value = f(x)
        jax.debug.callback(_values, value)
        return value, x

    def bwd(x, cotangent):
        jax.debug.callback(_gradients, token(x))
        _, vjp = jax.vjp(f, x)
        return vjp(cotangent)

    fn.defvjp(fwd, bwd)
    return Counted(fn, counter)
