"""The search box, the objective in normalised coordinates and the wall outside the box."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

WALL_WIDTH = 0.05  # width (in normalised units) of the Gaussian wall outside the box


class Box(NamedTuple):
    """The box ``centre +- half`` (arrays ``(d,)``); normalised coordinates ``z`` in ``[-1, 1]^d``."""

    centre: jax.Array
    half: jax.Array

    def to_x(self, z):
        return self.centre + self.half * jnp.clip(z, -1.0, 1.0)

    def to_z(self, x):
        return (x - self.centre) / self.half


def default_dtype():
    """The default float dtype (float64 when x64 is on)."""
    return jnp.zeros((), dtype=float).dtype


def make_box(domain, *, caller: str = "minimise") -> Box:
    """A :class:`Box` from ``(lower, upper)`` arrays of shape ``(d,)`` (or an object with
    ``lower`` / ``upper``); ``ValueError`` naming ``caller(domain=...)`` otherwise."""
    if hasattr(domain, "lower") and hasattr(domain, "upper"):
        domain = (domain.lower, domain.upper)
    if not (isinstance(domain, (tuple, list)) and len(domain) == 2):
        raise ValueError(
            f"{caller}(domain=...): expected (lower, upper) arrays of shape (d,), "
            f"got {type(domain).__name__}"
        )
    lower = np.atleast_1d(np.asarray(domain[0], dtype=np.float64))
    upper = np.atleast_1d(np.asarray(domain[1], dtype=np.float64))
    if lower.ndim != 1 or upper.ndim != 1 or lower.shape != upper.shape:
        raise ValueError(
            f"{caller}(domain=...): lower and upper must both have shape (d,), got "
            f"{lower.shape} and {upper.shape}"
        )
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise ValueError(f"{caller}(domain=...): bounds must be finite")
    if not np.all(upper > lower):
        raise ValueError(f"{caller}(domain=...): need upper > lower in every coordinate")
    dt = default_dtype()
    return Box(
        jnp.asarray(0.5 * (lower + upper), dtype=dt), jnp.asarray(0.5 * (upper - lower), dtype=dt)
    )


def check_objective(f, box: Box, tasks, *, caller: str = "minimise"):
    """Checks that ``f(x, task)`` maps a point ``(d,)`` to a finite scalar for every task (a
    pytree with a leading run axis); returns ``f(centre, task)`` ``(n,)`` (one evaluation per
    run, which the caller counts)."""
    if not callable(f):
        raise TypeError(f"{caller}(f=...): expected a callable, got {type(f).__name__}")
    try:
        one_task = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tasks)
        out = jax.eval_shape(f, jax.ShapeDtypeStruct(box.centre.shape, box.centre.dtype), one_task)
    except Exception as err:  # noqa: BLE001 -- re-raised with context
        raise ValueError(
            f"{caller}(f=...): f failed on a point of shape {box.centre.shape} "
            f"(the domain's dimension): {err}"
        ) from err
    if out.shape != ():
        raise ValueError(
            f"{caller}(f=...): f must return a scalar for one point of shape "
            f"{box.centre.shape}, got shape {out.shape}"
        )
    values = np.asarray(jax.vmap(f, in_axes=(None, 0))(box.centre, tasks))
    if not np.all(np.isfinite(values)):
        value = values[~np.isfinite(values)][0]
        from .._errors import NonFiniteError

        raise NonFiniteError(
            f"{caller}(f=...): f is not finite at the domain centre ({value}); "
            "the objective must be finite on the whole domain"
        )
    return values


def objective_z(f, box: Box):
    """``f`` in normalised coordinates (clipped to the box), in the default dtype; ``f(x)`` or
    ``f(x, task)`` (then ``fz(z, task)``)."""
    dt = default_dtype()

    def fz(z, task=None):
        x = box.to_x(z)
        return jnp.asarray(f(x) if task is None else f(x, task), dtype=dt)

    return fz


def wall(z):
    """Quadratic penalty outside ``[-1, 1]^d`` (zero inside)."""
    excess = z - jnp.clip(z, -1.0, 1.0)
    return 0.5 * jnp.sum(excess**2) / WALL_WIDTH**2
