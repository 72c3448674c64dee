"""Constraint sets for hard-constrained diffusion: a box, a fixed-sum simplex, a general convex set.

A *domain* is the closed set ``K`` every sample must lie in. Each domain acts on one example of
its ``shape`` (``vmap`` for batches) and offers what the constrained samplers of
:mod:`pdegen.models._reflected` need:

- ``contains(x, atol)``: whether ``x`` lies in ``K`` (a boolean scalar, jit-friendly);
- ``project(x)``: the Euclidean projection onto ``K``;
- ``reflect(x)``: a point of ``K`` reached by mirroring ``x`` at the boundary (exact for a box:
  the folding map, under which Brownian motion becomes reflected Brownian motion);
- ``tangent(v)``: ``v`` with the components that would leave ``K``'s affine hull removed (the
  identity unless ``K`` has equality constraints, as the fixed-sum simplex does);
- ``restore(x)``: ``x`` put back on the affine hull (rounding drift of a long chain);
- ``uniform_sample``: the uniform law on ``K``, the limit of reflected noising (bounded sets);
- ``mirror`` / ``mirror_inverse`` (box and simplex): the gradient of a barrier (entropy) and its
  inverse, a bijection between the interior of ``K`` and an unconstrained space.

Bad input (an empty set, a degenerate box, shapes that do not broadcast) raises ``ValueError`` at
construction, before any sampling.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import Array

__all__ = ["AbstractDomain", "Box", "Simplex", "ConvexSet"]


def _shape_of(shape, caller: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as err:
        raise TypeError(f"{caller}(shape=...) must be a tuple of ints, got {shape!r}") from err
    if len(shape) == 0 or min(shape) < 1:
        raise ValueError(
            f"{caller}(shape=...) must be a non-empty tuple of positive ints, got {shape}"
        )
    return shape


class AbstractDomain(eqx.Module):
    """A closed constraint set ``K`` for examples of a fixed ``shape`` (see the module docstring)."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""

    @abc.abstractmethod
    def contains(self, x: Array, atol: float = 0.0) -> Array:
        """Whether ``x`` (one example) lies in the set, violations up to ``atol`` allowed (bool)."""

    @abc.abstractmethod
    def project(self, x: Array) -> Array:
        """Euclidean projection of ``x`` onto the set."""

    def reflect(self, x: Array, num_reflections: int = 2) -> Array:
        """A point of the set: ``x`` mirrored through its projection (``2 P(x) - x``)
        ``num_reflections`` times, then projected (so the result always lies in the set)."""
        x = self.restore(x)
        for _ in range(num_reflections):
            x = self.restore(2.0 * self.project(x) - x)
        return self.project(x)

    def metropolis_move(self, x: Array, proposal: Array) -> Array:
        """The Metropolis step of a constrained random walk: ``proposal`` (put back on the affine
        hull by :meth:`restore`) if it lies in the set, else ``x``. A product set may accept per
        factor (:class:`Box`: per entry), which has the same limit and does not stall as the
        dimension grows."""
        proposal = self.restore(proposal)
        return jnp.where(self.contains(proposal), proposal, x)

    def tangent(self, v: Array) -> Array:
        """``v`` restricted to the directions along the set's affine hull (identity here)."""
        return v

    def restore(self, x: Array) -> Array:
        """``x`` moved onto the set's affine hull (identity here)."""
        return x

    def uniform_sample(self, *, key: Array, dtype: Any = None) -> Array:
        """One draw from the uniform law on the set (bounded sets with a known sampler only)."""
        raise ValueError(
            f"{type(self).__name__} has no uniform sampler: pass a starting point x_init that lies "
            "in the set"
        )

    def check_point(self, x, name: str = "x", atol: float = 0.0) -> None:
        """Raise ``ValueError`` naming ``name`` unless the concrete array ``x`` (one example, or a
        batch with a leading axis) has the right shape and lies in the set."""
        x = np.asarray(x)
        if x.shape != self.shape and x.shape[1:] != self.shape:
            raise ValueError(
                f"`{name}` has shape {x.shape}; the domain holds examples of shape {self.shape} "
                "(optionally with a leading batch axis)"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError(f"`{name}` holds NaN or infinite values")
        batch = x.reshape((-1,) + self.shape)
        inside = np.asarray(jax.vmap(lambda y: self.contains(y, atol))(jnp.asarray(batch)))
        if not inside.all():
            bad = np.flatnonzero(~inside)
            raise ValueError(
                f"`{name}` lies outside the constraint set {self!r} ({bad.size} of {inside.size} "
                f"example(s), first index {int(bad[0])}); start from a feasible point, e.g. "
                "domain.project(x)"
            )


class Box(AbstractDomain):
    """The box ``lower <= x <= upper`` (elementwise; bounds may be ``-inf`` / ``+inf``).

    Args:
        lower, upper: scalars or arrays broadcastable to ``shape`` (per-pixel bounds allowed).
        shape: shape of one example (default: the broadcast shape of the bounds).

    Raises:
        ValueError: a bound is NaN, ``lower >= upper`` anywhere (an empty or degenerate box), or
            the bounds do not broadcast to ``shape``.
    """

    lower: Array
    upper: Array
    _bounded: bool = eqx.field(static=True)

    def __init__(self, lower, upper, shape=None):
        lo = np.asarray(lower, dtype=np.float64)
        hi = np.asarray(upper, dtype=np.float64)
        try:
            target = np.broadcast_shapes(lo.shape, hi.shape)
            if shape is not None:
                target = np.broadcast_shapes(target, _shape_of(shape, "Box"))
                if target != tuple(shape):
                    raise ValueError
        except ValueError as err:
            raise ValueError(
                f"Box: lower {lo.shape} and upper {hi.shape} do not broadcast to shape={shape}"
            ) from err
        if len(target) == 0:
            raise ValueError("Box: give shape=... for scalar bounds (the shape of one example)")
        if np.isnan(lo).any() or np.isnan(hi).any():
            raise ValueError("Box: lower and upper must not hold NaN")
        lo, hi = np.broadcast_to(lo, target), np.broadcast_to(hi, target)
        if not np.all(lo < hi):
            i = np.unravel_index(int(np.flatnonzero(~(lo < hi))[0]), target)
            raise ValueError(
                f"Box: the set is empty or degenerate, need lower < upper everywhere; at index {i} "
                f"lower={lo[i]!r}, upper={hi[i]!r}"
            )
        if np.isposinf(lo).any() or np.isneginf(hi).any():
            raise ValueError("Box: lower must be < +inf and upper > -inf")
        self.lower = jnp.asarray(lo)
        self.upper = jnp.asarray(hi)
        self._bounded = bool(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape)

    @property
    def bounded(self) -> bool:
        """Whether every bound is finite."""
        return self._bounded

    def _bounds(self, x: Array):
        return self.lower.astype(x.dtype), self.upper.astype(x.dtype)

    def __repr__(self) -> str:
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        return f"Box(lower in [{lo.min():g}, {lo.max():g}], upper in [{hi.min():g}, {hi.max():g}], shape={self.shape})"

    def contains(self, x, atol=0.0):
        lo, hi = self._bounds(x)
        return jnp.all((x >= lo - atol) & (x <= hi + atol))

    def project(self, x):
        lo, hi = self._bounds(x)
        return jnp.clip(x, lo, hi)

    def metropolis_move(self, x, proposal):
        """Per entry: the box is a product of intervals and the noise isotropic, so the constrained
        random walk factorises and each entry is accepted or rejected on its own."""
        lo, hi = self._bounds(x)
        return jnp.where((proposal >= lo) & (proposal <= hi), proposal, x)

    def reflect(self, x, num_reflections: int = 2):
        """The folding map: ``x`` mirrored at the faces as often as needed (any distance), so that
        Brownian motion folded this way is reflected Brownian motion in the box; exact in ``[lower,
        upper]`` (a final clip removes rounding). ``num_reflections`` is not used."""
        lo, hi = self._bounds(x)
        lo_f, hi_f = jnp.isfinite(lo), jnp.isfinite(hi)
        both = lo_f & hi_f
        width = jnp.where(both, hi - lo, 1.0)
        ref = jnp.where(lo_f, lo, jnp.where(hi_f, hi, 0.0))
        y = jnp.mod(jnp.where(both, x - ref, 0.0), 2.0 * width)
        folded = ref + jnp.where(y > width, 2.0 * width - y, y)
        one_sided = jnp.where(lo_f, ref + jnp.abs(x - ref), ref - jnp.abs(ref - x))
        out = jnp.where(both, folded, jnp.where(lo_f | hi_f, one_sided, x))
        inside = (x >= lo) & (x <= hi)  # exactly the identity there (no rounding of the fold)
        return jnp.where(inside, x, jnp.clip(out, lo, hi))

    def uniform_sample(self, *, key, dtype=None):
        if not self.bounded:
            raise ValueError(
                "Box.uniform_sample: the box is unbounded (an infinite bound); pass x_init instead"
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        lo, hi = self.lower.astype(dtype), self.upper.astype(dtype)
        return jnp.clip(lo + (hi - lo) * jr.uniform(key, self.shape, dtype), lo, hi)

    def mirror(self, x):
        """The entropic mirror map ``log(x - lower) - log(upper - x)`` (the gradient of the barrier
        ``sum (x-l) log(x-l) + (u-x) log(u-x)``); one-sided bounds give ``log(x - lower)`` or
        ``-log(upper - x)``. Maps the interior onto ``R^shape``."""
        lo, hi = self._bounds(x)
        lo_f, hi_f = jnp.isfinite(lo), jnp.isfinite(hi)
        a = jnp.where(lo_f, jnp.log(jnp.where(lo_f, x - lo, 1.0)), 0.0)
        b = jnp.where(hi_f, jnp.log(jnp.where(hi_f, hi - x, 1.0)), 0.0)
        return jnp.where(lo_f | hi_f, a - b, x)

    def mirror_inverse(self, y):
        """Inverse of :meth:`mirror`: ``lower + (upper - lower) sigmoid(y)`` (two-sided), ``lower +
        exp(y)`` / ``upper - exp(-y)`` (one-sided); always in the box (clipped against rounding)."""
        lo, hi = self._bounds(y)
        lo_f, hi_f = jnp.isfinite(lo), jnp.isfinite(hi)
        both = lo_f & hi_f
        width = jnp.where(both, hi - lo, 1.0)
        two = jnp.where(both, lo, 0.0) + width * jax.nn.sigmoid(y)
        one = jnp.where(
            lo_f, jnp.where(lo_f, lo, 0.0) + jnp.exp(y), jnp.where(hi_f, hi, 0.0) - jnp.exp(-y)
        )
        return jnp.clip(jnp.where(both, two, jnp.where(lo_f | hi_f, one, y)), lo, hi)

    def heat_kernel_score(self, x: Array, x0: Array, s) -> Array:
        """``grad_x log k_s(x | x0)``: the score of reflected Brownian motion in the box started at
        ``x0`` with variance ``s^2`` (the target of reflected denoising score matching).

        Per coordinate: by the method of images, ``k = sum_k N(x; x0 + 2 k w, s^2) + N(x; 2 l - x0 +
        2 k w, s^2)`` (``w = u - l``), summed over ``|k| <= 4`` while ``s <= w``; for ``s > w`` the
        cosine series ``1 + 2 sum_n q^(n^2) cos(n pi xi) cos(n pi xi0)``, ``q = exp(-pi^2 s^2 / (2
        w^2))``, ``n <= 6``; both truncations are below 1e-15 relative in their ranges. One-sided
        bounds: the two images ``x0`` and ``2 l - x0``; no bound: the Gaussian score.
        """
        lo, hi = self._bounds(x)
        s = jnp.asarray(s, x.dtype)
        lo_f, hi_f = jnp.isfinite(lo), jnp.isfinite(hi)
        both = lo_f & hi_f
        width = jnp.where(both, hi - lo, 1.0)
        ref = jnp.where(lo_f, lo, jnp.where(hi_f, hi, 0.0))
        ks = jnp.arange(-4, 5, dtype=x.dtype).reshape((-1,) + (1,) * x.ndim)
        shift = 2.0 * ks * width[None]
        # images k != 0 only for two-sided bounds, mirror images only for a finite bound
        periodic = jnp.where(both[None] | (ks == 0), 1.0, 0.0)
        mirrored = jnp.where((lo_f | hi_f)[None], periodic, 0.0)
        centres = jnp.concatenate([x0[None] + shift, 2.0 * ref[None] - x0[None] + shift])
        mask = jnp.concatenate([periodic, mirrored])
        logits = jnp.where(mask > 0, -((x[None] - centres) ** 2) / (2.0 * s**2), -jnp.inf)
        weights = jax.nn.softmax(logits, axis=0)
        image_score = -jnp.sum(weights * (x[None] - centres), axis=0) / s**2
        # cosine series for s > w (two-sided bounds): smooth, far from the images' range
        s_big = jnp.maximum(s, width)
        xi, xi0 = (x - ref) / width, (x0 - ref) / width
        ns = jnp.arange(1, 7, dtype=x.dtype).reshape((-1,) + (1,) * x.ndim)
        q = jnp.exp(-(ns**2) * (math.pi**2) * (s_big / width)[None] ** 2 / 2.0)
        cos0 = jnp.cos(ns * math.pi * xi0[None])
        dens = 1.0 + 2.0 * jnp.sum(q * jnp.cos(ns * math.pi * xi[None]) * cos0, 0)
        freq = ns * math.pi / width[None]
        slope = -2.0 * jnp.sum(q * freq * jnp.sin(ns * math.pi * xi[None]) * cos0, 0)
        series_score = slope / dens
        return jnp.where(both & (s > width), series_score, image_score)


class Simplex(AbstractDomain):
    """The scaled simplex ``{x >= 0, sum(x) = mass}`` over all entries of an example of ``shape``.

    A non-negative field with a fixed total (e.g. a source of given mass). The equality holds to
    rounding: :meth:`contains` accepts ``|sum(x) - mass| <= atol + n eps mass`` (``n`` entries,
    ``eps`` the dtype's machine epsilon: the rounding bound of a sum of ``n`` non-negative terms).

    Args:
        shape: shape of one example.
        mass: the fixed total, ``> 0``.

    Raises:
        ValueError: ``mass <= 0`` or not finite (the set is empty, or the single point 0), or a
            shape with fewer than 2 entries.
    """

    mass: float = eqx.field(static=True)
    _shape: tuple = eqx.field(static=True)

    def __init__(self, shape, mass: float = 1.0):
        shape = _shape_of(shape, "Simplex")
        if math.prod(shape) < 2:
            raise ValueError(f"Simplex: needs at least 2 entries, got shape={shape}")
        mass = float(mass)
        if not (math.isfinite(mass) and mass > 0):
            raise ValueError(
                f"Simplex(mass=...): must be finite and > 0 (mass < 0 is an empty set, mass = 0 the "
                f"single point 0), got {mass}"
            )
        self.mass = mass
        self._shape = shape

    @property
    def shape(self):
        return self._shape

    @property
    def size(self) -> int:
        """Number of entries of one example."""
        return math.prod(self._shape)

    def __repr__(self) -> str:
        return f"Simplex(shape={self.shape}, mass={self.mass:g})"

    def contains(self, x, atol=0.0):
        eps = float(jnp.finfo(x.dtype).eps)
        sum_tol = atol + self.size * eps * self.mass
        return jnp.all(x >= -atol) & (jnp.abs(jnp.sum(x) - self.mass) <= sum_tol)

    def project(self, x):
        """Euclidean projection onto the simplex (sort-based, Duchi et al. 2008)."""
        v = x.reshape(-1)
        n = v.shape[0]
        u = jnp.sort(v)[::-1]
        css = jnp.cumsum(u) - self.mass
        idx = jnp.arange(1, n + 1, dtype=x.dtype)
        cond = u - css / idx > 0
        rho = jnp.max(jnp.where(cond, jnp.arange(n), -1))
        theta = css[rho] / (rho + 1).astype(x.dtype)
        return jnp.maximum(v - theta, 0.0).reshape(x.shape)

    def tangent(self, v):
        return v - jnp.mean(v)

    def restore(self, x):
        return x + (self.mass - jnp.sum(x)) / self.size

    def uniform_sample(self, *, key, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        e = jr.exponential(key, self.shape, dtype)
        return self.mass * e / jnp.sum(e)

    def mirror(self, x):
        """The centred log-ratio ``log x - mean(log x)`` (the entropic mirror map on the sum-zero
        plane); maps the interior ``x > 0`` onto the plane ``sum(y) = 0``."""
        logs = jnp.log(x)
        return logs - jnp.mean(logs)

    def mirror_inverse(self, y):
        """Inverse of :meth:`mirror`: ``mass softmax(y)`` over all entries (any ``y``: the mean of
        ``y`` is ignored); in the simplex to rounding."""
        flat = jax.nn.softmax(y.reshape(-1))
        return self.mass * flat.reshape(y.shape)


class ConvexSet(AbstractDomain):
    """A general closed convex set given by a projection and/or inequality constraints.

    Args:
        shape: shape of one example.
        project: ``P(x) -> x'`` the Euclidean projection onto the set (needed by the reflected
            sampler; the Metropolis sampler needs only membership).
        constraint: ``g(x) -> array``; the set is ``{g(x) <= 0}`` (every entry). Without it
            membership is ``|x - P(x)| <= atol``.
        name: a label for messages.

    Raises:
        ValueError: neither ``project`` nor ``constraint`` given; ``project`` returns the wrong
            shape; ``project(0)`` violates ``constraint`` or is not a fixed point of ``project``
            (the set looks empty or the two disagree).
    """

    _shape: tuple = eqx.field(static=True)
    projection: Callable | None = eqx.field(static=True)
    constraint: Callable | None = eqx.field(static=True)
    name: str = eqx.field(static=True)

    def __init__(self, shape, *, project=None, constraint=None, name: str = "convex set"):
        shape = _shape_of(shape, "ConvexSet")
        if project is None and constraint is None:
            raise ValueError("ConvexSet: give project=..., constraint=... or both")
        for label, fn in (("project", project), ("constraint", constraint)):
            if fn is not None and not callable(fn):
                raise TypeError(f"ConvexSet({label}=...) must be callable, got {type(fn).__name__}")
        self._shape, self.projection, self.constraint, self.name = shape, project, constraint, name
        if project is not None:
            probe = jnp.zeros(shape)
            p = jnp.asarray(project(probe))
            if p.shape != shape:
                raise ValueError(
                    f"ConvexSet(project=...): returns shape {p.shape}, expected {shape}"
                )
            scale = 1.0 + float(jnp.max(jnp.abs(p)))
            if not bool(jnp.all(jnp.isfinite(p))):
                raise ValueError(
                    "ConvexSet(project=...): project(0) is not finite; is the set empty?"
                )
            if float(jnp.max(jnp.abs(jnp.asarray(project(p)) - p))) > 1e-8 * scale:
                raise ValueError(
                    "ConvexSet(project=...): project(project(0)) != project(0); not a projection, or "
                    "the set is empty"
                )
            if constraint is not None and not bool(self.contains(p, 1e-8 * scale)):
                raise ValueError(
                    "ConvexSet: project(0) violates constraint(x) <= 0: the set is empty or the "
                    "projection and the constraints describe different sets"
                )

    @property
    def shape(self):
        return self._shape

    def __repr__(self) -> str:
        return f"ConvexSet({self.name!r}, shape={self.shape})"

    def contains(self, x, atol=0.0):
        if self.constraint is not None:
            return jnp.all(jnp.asarray(self.constraint(x)) <= atol)
        return jnp.max(jnp.abs(x - self.projection(x))) <= atol

    def project(self, x):
        if self.projection is None:
            raise ValueError(
                f"{self!r} was built without project=...: the reflected sampler needs the "
                "projection; use the Metropolis sampler, which needs only the constraints"
            )
        return self.projection(x)
