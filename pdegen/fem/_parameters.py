"""What the unknown field of an inverse problem is in a PDE: one object per kind of unknown.

A *parameter map* says how nodal values ``a`` of an unknown field enter a problem's ``solve``
(its coefficient map), whether the solution depends linearly on ``a``, and which smooth surrogate
of the map to differentiate through. The inverse layer uses only these objects, never the name of
a PDE:

- :class:`Source`: ``a`` is the right-hand side (times ``sign``); the solution is linear in ``a``.
- :class:`LogPermeability`: ``kappa = exp(a)`` per cell (cell mean of ``a``); nonlinear.
- :class:`ThresholdPermeability`: the two-valued permeability of the DiffusionPDE Darcy task
  (``high`` where ``a >= 0``, else ``low``) with a clipped cell mean as its smooth surrogate.

Each takes and returns nodal (vertex) values of a P1 / Q1 space; ``jit``, ``vmap`` and ``grad``
work through :meth:`solve`.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp


class ParameterMap(abc.ABC):
    """Base class of the maps from an unknown field ``a`` to a problem's coefficients.

    Base class: ``problem`` (a :class:`pdegen.fem.Poisson`, ``Helmholtz`` or ``Darcy``), the
    keyword arguments held fixed (``fixed``) and the map from ``a`` to the problem's coefficients."""

    linear: bool = False

    def __init__(self, problem, **fixed):
        if not hasattr(problem, "solve") or not hasattr(problem, "space"):
            raise TypeError(
                f"{type(self).__name__}: problem must be a pdegen.fem problem, got {type(problem).__name__}"
            )
        if problem.space.mesh.npoints != problem.space.ndofs:
            raise ValueError(
                f"{type(self).__name__}: the problem's space must have one dof per mesh vertex (P1 / Q1)"
            )
        self.problem = problem
        self.fixed = dict(fixed)

    @property
    def space(self):
        return self.problem.space

    @property
    def mesh(self):
        return self.problem.space.mesh

    @property
    def size(self) -> int:
        """Number of nodal values of the unknown field."""
        return self.mesh.npoints

    @abc.abstractmethod
    def coefficients(self, a) -> dict:
        """The exact keyword arguments of ``problem.solve`` for nodal values ``a``."""

    def from_field(self, field):
        """Nodal values of the unknown made from a zero-mean Gaussian field (data generation):
        the field itself, except for maps with a discrete range."""
        return jnp.asarray(field)

    def smooth_coefficients(self, a) -> dict:
        """A differentiable surrogate of :meth:`coefficients` (the same map where it is smooth)."""
        return self.coefficients(a)

    def _check(self, a):
        a = jnp.asarray(a)
        if a.shape != (self.size,):
            raise ValueError(
                f"{type(self).__name__}: a must have shape ({self.size},) (nodal values), got {a.shape}"
            )
        return a

    def solve(self, a, *, smooth: bool = True) -> jax.Array:
        """The FEM solution (real part for a real problem) for nodal values ``a``; ``smooth=True``
        uses the differentiable surrogate of the coefficient map."""
        a = self._check(a)
        theta = self.smooth_coefficients(a) if smooth else self.coefficients(a)
        return self.problem.solve(**{**self.fixed, **theta})

    def residual(self, a, u, *, smooth: bool = False) -> jax.Array:
        """Relative FEM residual ``||A(a) u - b(a)|| / ||b(a)||`` of nodal vectors ``a``, ``u``."""
        r, b = self.residual_vector(a, u, smooth=smooth)
        return jnp.linalg.norm(r) / jnp.maximum(jnp.linalg.norm(b), 1e-300)

    def residual_vector(self, a, u, *, smooth: bool = True):
        """Weak residual and the load vector ``(r, b)``; differentiable in both with ``smooth=True``."""
        a = self._check(a)
        theta = {**self.fixed, **(self.smooth_coefficients(a) if smooth else self.coefficients(a))}
        problem = self.problem
        r = problem.residual(u, **theta)
        b = problem.rhs(**problem.split_arguments(theta)[1])
        return r, b


class Source(ParameterMap):
    """``a`` is the source: ``problem.solve(f=sign * a, **fixed)``; the solution is linear in ``a``.

    Example: ``Source(fem.Poisson(V), sign=-1.0)`` is ``Laplacian(u) = a``, ``u = 0`` on the boundary.
    """

    linear = True

    def __init__(self, problem, *, sign: float = 1.0, **fixed):
        if "f" in fixed:
            raise TypeError("Source: the source f is the unknown; do not fix it")
        super().__init__(problem, **fixed)
        self.sign = float(sign)

    def coefficients(self, a) -> dict:
        return dict(f=self.sign * a)


def _cell_mean(mesh, a):
    return jnp.mean(a[jnp.asarray(mesh.cells)], axis=1)


class LogPermeability(ParameterMap):
    """``a`` is the log-permeability: ``-div(exp(a) grad u) = f`` with ``exp`` of the cell mean."""

    def __init__(self, problem, *, f=1.0, **fixed):
        super().__init__(problem, f=f, **fixed)

    def coefficients(self, a) -> dict:
        return dict(kappa=jnp.exp(_cell_mean(self.mesh, a)))


class ThresholdPermeability(ParameterMap):
    """``a`` is thresholded into a two-valued permeability (DiffusionPDE's Darcy).

    The DiffusionPDE Darcy coefficient: cell permeability ``high`` where the cell mean of ``a`` is
    ``>= threshold`` (nodal values of a coefficient are ``low`` / ``high``, so the default threshold
    is their midpoint), else ``low``. Its smooth surrogate clips the cell mean to ``[low, high]``:
    cells with mixed corners get an intermediate value and gradients exist."""

    def __init__(
        self,
        problem,
        *,
        low: float = 3.0,
        high: float = 12.0,
        threshold: float | None = None,
        f=1.0,
        **fixed,
    ):
        if not 0 < low < high:
            raise ValueError(
                f"ThresholdPermeability: need 0 < low < high, got low={low}, high={high}"
            )
        super().__init__(problem, f=f, **fixed)
        self.low, self.high = float(low), float(high)
        self.threshold = 0.5 * (self.low + self.high) if threshold is None else float(threshold)

    def coefficients(self, a) -> dict:
        return dict(
            kappa=jnp.where(_cell_mean(self.mesh, a) >= self.threshold, self.high, self.low)
        )

    def smooth_coefficients(self, a) -> dict:
        return dict(kappa=jnp.clip(_cell_mean(self.mesh, a), self.low, self.high))

    def from_field(self, field):
        """Nodal coefficient values from a zero-mean field: ``high`` where ``field >= 0``, else ``low``."""
        return jnp.where(jnp.asarray(field) >= 0, self.high, self.low)
