"""PDE problems: Poisson (with reaction), Helmholtz (Dirichlet or impedance), Darcy.

Each problem exposes ``operator(...)`` (the sparse system matrix, before boundary conditions),
``rhs(...)``, ``residual(u, ...)``, ``solve(...)`` and ``residual_energy(u, ...)``. All
coefficients are keyword arguments and may be traced, so ``jit``, ``vmap`` and ``grad`` work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._assembly import (
    DirichletBC,
    _boundary_values,
    boundary_load,
    boundary_mass,
    load,
    mass,
    stiffness,
)
from ._solve import _is_traced, linear_solve, solver_errors
from ._space import FunctionSpace
from ._sparse import result_dtype


def _concrete(x):
    if isinstance(x, jax.core.Tracer) or callable(x):
        return None
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - exotic array types
        return None


def _check_finite(name, x):
    v = _concrete(x)
    if v is not None and not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or inf")


def _check_positive(name, x, space=None):
    v = _concrete(x)
    if v is None:
        return
    _check_finite(name, v)
    if np.iscomplexobj(v) or np.any(v <= 0):
        raise ValueError(
            f"{name} must be real and positive everywhere; min is {np.min(np.real(v)):g}"
        )
    if space is not None and space.ndofs != space.mesh.npoints and v.shape == (space.ndofs,):
        # higher-order shape functions dip below zero: positive nodal values need not give a
        # positive field where the integrals use it
        q = np.asarray(space.at_quadrature(v))
        if np.any(q <= 0):
            raise ValueError(
                f"{name} is positive at the nodes but not at every quadrature point of the "
                f"{space.element} space (min {q.min():g}): its interpolant dips below zero; give "
                "vertex values, a callable of x or values at the quadrature points"
            )


class _Problem:
    space: FunctionSpace
    bc: DirichletBC | None
    symmetric_positive_definite = False

    def __init__(
        self,
        space: FunctionSpace,
        *,
        dirichlet=0.0,
        dirichlet_where=None,
        method: str = "auto",
        rtol: float = 1e-10,
        maxiter: int | None = None,
    ):
        if not isinstance(space, FunctionSpace):
            raise TypeError(
                f"{type(self).__name__}: space must be a FunctionSpace, got {type(space).__name__}"
            )
        self.space = space
        self.bc = (
            None if dirichlet is None else DirichletBC(space, dirichlet, where=dirichlet_where)
        )
        self.solver_options = dict(method=method, rtol=rtol, maxiter=maxiter)

    @property
    def ndofs(self) -> int:
        return self.space.ndofs

    @property
    def operator_arguments(self) -> tuple[str, ...]:
        """Names of the keyword arguments of :meth:`operator` (the coefficients of the matrix)."""
        return tuple(self._operator_args)

    @property
    def rhs_arguments(self) -> tuple[str, ...]:
        """Names of the keyword arguments of :meth:`rhs` (a name may be in both, e.g. Helmholtz ``k``)."""
        return tuple(self._rhs_args)

    def split_arguments(self, theta: dict) -> tuple[dict, dict]:
        """Split ``solve``-style keyword arguments into ``(operator_kwargs, rhs_kwargs)``.

        ``A = problem.operator(**op); b = problem.rhs(**rhs)`` then assembles the system without
        boundary conditions. Names that are neither raise ``TypeError``.
        """
        unknown = set(theta) - set(self._operator_args) - set(self._rhs_args)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unexpected arguments {sorted(unknown)}; "
                f"expected {sorted(set(self._operator_args) | set(self._rhs_args))}"
            )
        op = {k: v for k, v in theta.items() if k in self._operator_args}
        rhs = {k: v for k, v in theta.items() if k in self._rhs_args}
        return op, rhs

    def _system(self, g=None, **theta):
        op, rhs = self.split_arguments(theta)
        A = self.operator(**op)
        b = self.rhs(**rhs)
        if self.bc is not None:
            A, b = self.bc.apply(A, b, g)
        return A, b

    def residual(self, u, *, g=None, **theta) -> jax.Array:
        """Algebraic weak residual ``A(theta) u - b(theta)``; constrained rows hold ``u - g``."""
        u = jnp.asarray(u)
        if u.shape != (self.ndofs,):
            raise ValueError(f"residual: u must have shape ({self.ndofs},), got {u.shape}")
        op, rhs = self.split_arguments(theta)
        A = self.operator(**op)
        b = self.rhs(**rhs)
        r = A @ u - b
        if self.bc is not None:
            r = self.bc.residual_rows(r, u, g)
        return r

    def residual_energy(self, u, *, tau: float = 1.0, g=None, **theta) -> jax.Array:
        """``0.5 * ||residual(u, theta)||^2 / tau^2`` (a negative log-density up to a constant)."""
        r = self.residual(u, g=g, **theta)
        return 0.5 * jnp.sum(jnp.abs(r) ** 2) / tau**2

    _positive_args: tuple = ()
    _boundary_args: tuple = ()

    def _prepare(self, g, theta):
        """Check argument names and values eagerly; evaluate callables to arrays.

        Callables become values at the quadrature points (boundary data at the facet quadrature
        points, Dirichlet data at the boundary dofs), so the jitted core sees only arrays and
        user callables written with NumPy still work.
        """
        unknown = set(theta) - set(self._operator_args) - set(self._rhs_args)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.solve got unexpected arguments {sorted(unknown)}; "
                f"expected {sorted(set(self._operator_args) | set(self._rhs_args))}"
            )
        out = {}
        for name, value in theta.items():
            if callable(value):
                if name in self._boundary_args:
                    q = self.space.boundary_quadrature(self.impedance_where)
                    value = _boundary_values(self.space, q, value, f"{type(self).__name__}: {name}")
                else:
                    value = self.space.at_quadrature(value, f"{type(self).__name__}: {name}")
            out[name] = jnp.asarray(value)
            if name in self._positive_args:
                _check_positive(f"{type(self).__name__}: {name}", value, self.space)
            else:
                _check_finite(f"{type(self).__name__}: {name}", value)
        if self.bc is not None:
            g = self.bc.values(g)
            _check_finite(f"{type(self).__name__}: g (Dirichlet values)", g)
        elif g is not None:
            raise TypeError(
                f"{type(self).__name__}.solve got Dirichlet values g, but the problem has no "
                "Dirichlet boundary (built with dirichlet=None or an impedance boundary)"
            )
        return g, out

    def _solve_arrays(self, g, theta):
        A, b = self._system(g=g, **theta)
        return linear_solve(
            A,
            b,
            symmetric_positive_definite=self.symmetric_positive_definite,
            **self.solver_options,
        )

    def solve(self, *, g=None, **theta) -> jax.Array:
        """The finite-element solution, shape ``(ndofs,)``; gradients by one adjoint solve.

        Compiled once per problem and argument shapes; works inside ``jit``, ``vmap`` and ``grad``
        (reverse mode only: not ``jax.jvp`` / ``jacfwd`` / ``hessian``).

        Raises:
            LinearSolveError: (a ``ValueError``) if the solve fails (singular system, Krylov
                non-convergence); inside your own ``jit``, and for the adjoint solve of
                ``jax.grad``, see :func:`solver_errors`.
        """
        g, theta = self._prepare(g, theta)
        if getattr(self, "_jitted_solve", None) is None:
            self._jitted_solve = jax.jit(self._solve_arrays)
        with solver_errors():  # a failed solve is a one-line LinearSolveError
            u = self._jitted_solve(g, theta)
            if not _is_traced(u):
                u = jax.block_until_ready(u)
        return u


class Poisson(_Problem):
    """``-div(kappa grad u) + reaction * u = f`` with ``u = g`` on the (selected) boundary.

    Args:
        space: a :class:`FunctionSpace`.
        dirichlet: boundary values (scalar, callable ``g(x)``, or array; may be overridden per call
            with ``g=``), or ``None`` for a natural (zero-flux) boundary, which needs ``reaction > 0``.
        dirichlet_where: boundary part for the Dirichlet condition (default: all of it).
        method: linear solver (see :func:`linear_solve`; ``"auto"``: its default).
        rtol: relative tolerance of a Krylov solver (see :func:`linear_solve`).
        maxiter: iteration limit of a Krylov solver (see :func:`linear_solve`).

    Example::

        mesh = fem.unit_square(33)
        V = fem.FunctionSpace(mesh, "P1")
        u = fem.Poisson(V).solve(kappa=1.0, f=1.0)
    """

    _operator_args = ("kappa", "reaction")
    _rhs_args = ("f",)
    _positive_args = ("kappa",)
    symmetric_positive_definite = True

    def operator(self, kappa=1.0, reaction=0.0):
        """Stiffness with diffusivity ``kappa`` plus mass with ``reaction`` (no boundary conditions)."""
        _check_positive("Poisson: kappa", kappa, self.space)
        _check_finite("Poisson: reaction", reaction)
        A = stiffness(self.space, kappa)
        if not (isinstance(reaction, (int, float)) and reaction == 0):
            A = A + mass(self.space, reaction)
        return A

    def rhs(self, f=0.0):
        _check_finite("Poisson: f", f)
        return load(self.space, f)


class Darcy(Poisson):
    """The Darcy flow problem of DiffusionPDE: ``-div(a grad u) = f``.

    ``-div(a grad u) = f`` (default ``f = 1``) with ``u = 0`` on the boundary and a
    piecewise-constant permeability ``a``, as in the DiffusionPDE Darcy task.

    Use :meth:`permeability` to turn a field into cell values ``high`` where the field is ``>= 0``
    and ``low`` elsewhere, then ``solve(kappa=a)``.
    """

    def rhs(self, f=1.0):
        return super().rhs(f)

    def permeability(self, field, *, high: float = 12.0, low: float = 3.0) -> jax.Array:
        """Cell values ``(ncells,)``: ``high`` where the cell-mean of the vertex ``field`` is >= 0."""
        field = jnp.asarray(field)
        mesh = self.space.mesh
        if field.shape != (mesh.npoints,):
            raise ValueError(
                f"Darcy.permeability: field must have shape ({mesh.npoints},), got {field.shape}"
            )
        cell_mean = jnp.mean(field[mesh.cells], axis=1)
        return jnp.where(cell_mean >= 0, high, low)


class Helmholtz(_Problem):
    """``-Laplacian(u) - k^2 (1 + q) u = f`` with either boundary condition:

    - ``boundary='dirichlet'``: ``u = g`` (real arithmetic);
    - ``boundary='impedance'``: the absorbing condition ``du/dn - i k u = h`` (complex solution).

    ``k`` (wavenumber, scalar) and ``q`` (contrast field) may be traced.
    """

    _operator_args = ("k", "q")
    _rhs_args = ("f", "h", "k")
    _boundary_args = ("h",)

    def __init__(
        self,
        space: FunctionSpace,
        *,
        boundary: str = "dirichlet",
        dirichlet=0.0,
        dirichlet_where=None,
        impedance_where=None,
        method: str = "auto",
        rtol: float = 1e-10,
        maxiter: int | None = None,
    ):
        if boundary not in ("dirichlet", "impedance"):
            raise ValueError(
                f"Helmholtz: boundary must be 'dirichlet' or 'impedance', got {boundary!r}"
            )
        self.boundary = boundary
        self.impedance_where = impedance_where
        super().__init__(
            space,
            dirichlet=dirichlet if boundary == "dirichlet" else None,
            dirichlet_where=dirichlet_where,
            method=method,
            rtol=rtol,
            maxiter=maxiter,
        )
        if method == "cg":
            raise ValueError(
                "Helmholtz: the system is indefinite; use method='direct', 'gmres' or 'bicgstab'"
            )

    def operator(self, k=1.0, q=0.0):
        _check_finite("Helmholtz: k", k)
        _check_finite("Helmholtz: q", q)
        k = jnp.asarray(k)
        if k.ndim != 0:
            raise ValueError(f"Helmholtz: k must be a scalar wavenumber, got shape {k.shape}")
        A = stiffness(self.space) - mass(
            self.space, (1.0 + self.space.at_quadrature(q, "q")) * k**2
        )
        if self.boundary == "impedance":
            ck = k.astype(result_dtype(k.dtype, np.complex64))
            A = A + boundary_mass(self.space, -1j * ck, where=self.impedance_where)
        return A

    def rhs(self, f=0.0, h=0.0, k=1.0):
        _check_finite("Helmholtz: f", f)
        b = load(self.space, f)
        if self.boundary == "impedance":
            bh = boundary_load(self.space, h, where=self.impedance_where)
            dtype = result_dtype(b.dtype, bh.dtype, jnp.complex64)
            b = b.astype(dtype) + bh.astype(dtype)
        return b
