"""Standard global-optimisation test functions (any dimension; jit / vmap / grad friendly).

Each function takes one point ``x`` of shape ``(d,)`` and returns a scalar; ``vmap`` for
batches. :func:`test_function` bundles a function with its domain, minimiser and minimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "ackley",
    "rastrigin",
    "levy",
    "styblinski_tang",
    "rosenbrock",
    "carrillo",
    "ellipsoid",
    "TestFunction",
    "test_function",
    "TEST_FUNCTIONS",
]

STYBLINSKI_TANG_MINIMISER = -2.903534027771177
STYBLINSKI_TANG_MINIMUM_PER_DIM = -39.16616570377142
CARRILLO_SHIFT = 1.0
CARRILLO_OFFSET = 0.0


def _check_point(x, name: str):
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(
            f"{name}(x): x must have shape (d,) with d >= 1, got shape {x.shape}; "
            "use jax.vmap for batches"
        )


def ackley(x):
    """Ackley: ``-20 exp(-0.2 sqrt(mean x^2)) - exp(mean cos 2 pi x) + 20 + e``; min 0 at 0."""
    x = jnp.asarray(x)
    _check_point(x, "ackley")
    ms = jnp.mean(x**2)
    # double-where keeps the gradient finite at the minimiser
    safe = jnp.where(ms > 0, ms, jnp.ones_like(ms))
    root = jnp.where(ms > 0, jnp.sqrt(safe), jnp.zeros_like(ms))
    return -20.0 * jnp.exp(-0.2 * root) - jnp.exp(jnp.mean(jnp.cos(2 * jnp.pi * x))) + 20.0 + math.e


def rastrigin(x):
    """Rastrigin: ``10 d + sum(x^2 - 10 cos 2 pi x)``; min 0 at 0."""
    x = jnp.asarray(x)
    _check_point(x, "rastrigin")
    return 10.0 * x.shape[0] + jnp.sum(x**2 - 10.0 * jnp.cos(2 * jnp.pi * x))


def levy(x):
    """The Levy function; minimum 0 at ``(1, ..., 1)``.

    Levy: with ``w = 1 + (x - 1)/4``, ``sin^2(pi w_1) + sum_{i<d} (w_i-1)^2 (1 + 10 sin^2(pi w_i + 1))
    + (w_d - 1)^2 (1 + sin^2(2 pi w_d))``; min 0 at ``(1, ..., 1)``."""
    x = jnp.asarray(x)
    _check_point(x, "levy")
    w = 1.0 + (x - 1.0) / 4.0
    head = jnp.sin(jnp.pi * w[0]) ** 2
    mid = jnp.sum((w[:-1] - 1.0) ** 2 * (1.0 + 10.0 * jnp.sin(jnp.pi * w[:-1] + 1.0) ** 2))
    tail = (w[-1] - 1.0) ** 2 * (1.0 + jnp.sin(2 * jnp.pi * w[-1]) ** 2)
    return head + mid + tail


def styblinski_tang(x):
    """The Styblinski-Tang function.

    Styblinski-Tang: ``0.5 sum(x^4 - 16 x^2 + 5 x)``; min ``-39.16616570377142 d`` at
    ``x_i = -2.903534027771177``."""
    x = jnp.asarray(x)
    _check_point(x, "styblinski_tang")
    return 0.5 * jnp.sum(x**4 - 16.0 * x**2 + 5.0 * x)


def rosenbrock(x):
    """The Rosenbrock function; minimum 0 at ``(1, ..., 1)``.

    Rosenbrock: ``sum_{i<d} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``; min 0 at ``(1, ..., 1)``.
    Needs ``d >= 2``."""
    x = jnp.asarray(x)
    _check_point(x, "rosenbrock")
    if x.shape[0] < 2:
        raise ValueError(f"rosenbrock(x): needs d >= 2, got shape {x.shape}")
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def carrillo(x):
    """The Carrillo function: a shifted, dimension-averaged Rastrigin.

    Shifted, dimension-averaged Rastrigin of consensus-based optimisation (Carrillo, Jin, Li,
    Zhu 2021; the "Carrillo function" of the Path Integral Optimiser paper):

        f(x) = (1/d) sum_i [ (x_i - B)^2 - 10 cos(2 pi (x_i - B)) + 10 ] + C,

    here with ``B = 1`` (``CARRILLO_SHIFT``) and ``C = 0``; min ``C`` at ``(B, ..., B)``, domain
    ``[-5.12, 5.12]^d``. The origin is a local (not global) minimiser.
    """
    x = jnp.asarray(x)
    _check_point(x, "carrillo")
    y = x - CARRILLO_SHIFT
    return jnp.mean(y**2 - 10.0 * jnp.cos(2 * jnp.pi * y) + 10.0) + CARRILLO_OFFSET


def ellipsoid(x):
    """The ellipsoid (BBOB f2), unimodal with condition number ``1e6``.

    Ellipsoid (BBOB f2): ``sum_i 10^(6 (i-1)/(d-1)) x_i^2``, condition number ``1e6``; min 0 at
    0. Unimodal and ill-conditioned: separable as written, not once rotated."""
    x = jnp.asarray(x)
    _check_point(x, "ellipsoid")
    d = x.shape[0]
    weights = 10.0 ** (6.0 * jnp.arange(d, dtype=x.dtype) / max(d - 1, 1))
    return jnp.sum(weights * x**2)


class TestFunction(NamedTuple):
    """A test problem: the function, its box and its known minimum.

    A test problem in dimension ``d``: ``fn``, box ``lower``/``upper`` ``(d,)``, known
    ``minimiser`` ``(d,)`` and ``minimum``."""

    name: str
    fn: Callable
    lower: np.ndarray
    upper: np.ndarray
    minimiser: np.ndarray
    minimum: float

    @property
    def domain(self):
        return (self.lower, self.upper)


# name -> (fn, box half-interval (lo, hi), minimiser coordinate, minimum per dimension or total)
_SPECS = {
    "ackley": (ackley, (-32.768, 32.768), 0.0, lambda d: 0.0),
    "rastrigin": (rastrigin, (-5.12, 5.12), 0.0, lambda d: 0.0),
    "levy": (levy, (-10.0, 10.0), 1.0, lambda d: 0.0),
    "styblinski_tang": (
        styblinski_tang,
        (-5.0, 5.0),
        STYBLINSKI_TANG_MINIMISER,
        lambda d: STYBLINSKI_TANG_MINIMUM_PER_DIM * d,
    ),
    "rosenbrock": (rosenbrock, (-5.0, 10.0), 1.0, lambda d: 0.0),
    "carrillo": (carrillo, (-5.12, 5.12), CARRILLO_SHIFT, lambda d: CARRILLO_OFFSET),
    "ellipsoid": (ellipsoid, (-5.0, 5.0), 0.0, lambda d: 0.0),
}

TEST_FUNCTIONS = tuple(_SPECS)
"""The names :func:`test_function` accepts."""


def test_function(name: str, dim: int) -> TestFunction:
    """The named test problem in dimension ``dim``.

    >>> prob = test_function("rastrigin", 2)
    >>> float(prob.fn(prob.minimiser))
    0.0
    """
    if name not in _SPECS:
        raise ValueError(f"test_function(name=...): unknown {name!r}; choose from {TEST_FUNCTIONS}")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"test_function(dim=...): expected a positive int, got {dim!r}")
    if name == "rosenbrock" and dim < 2:
        raise ValueError("test_function(dim=...): rosenbrock needs dim >= 2")
    fn, (lo, hi), xstar, fstar = _SPECS[name]
    dim = int(dim)
    return TestFunction(
        name, fn, np.full(dim, lo), np.full(dim, hi), np.full(dim, xstar), float(fstar(dim))
    )


test_function.__test__ = False  # not a pytest test
TestFunction.__test__ = False
