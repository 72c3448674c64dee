"""Finite-element spaces: reference data from scikit-fem, held as JAX arrays."""

from __future__ import annotations

from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import skfem

from ._mesh import Mesh
from ._sparse import SparseMatrix, SparsityPattern, as_inexact, result_dtype

_POINT_CHUNK = 1024  # points located per call of skfem's element finder

ELEMENTS = {
    ("triangle", "P1"): skfem.ElementTriP1,
    ("triangle", "P2"): skfem.ElementTriP2,
    ("quad", "Q1"): skfem.ElementQuad1,
    ("quad", "Q2"): skfem.ElementQuad2,
}
DEGREE = {"P1": 1, "P2": 2, "Q1": 1, "Q2": 2}


def _evaluate(fn, x):
    """``fn(x)`` compiled as one program (fast on new shapes); eagerly if ``fn`` needs NumPy."""
    if isinstance(x, jax.core.Tracer):
        return as_inexact(fn(x))
    try:
        return as_inexact(jax.jit(fn)(x))
    except (
        jax.errors.TracerArrayConversionError,
        jax.errors.ConcretizationTypeError,
        jax.errors.TracerBoolConversionError,
    ):
        return as_inexact(fn(x))


class _QuadratureData:
    """Shape functions of one basis evaluated at quadrature points (cells or boundary facets)."""

    def __init__(self, basis):
        self.phi = np.stack([b[0].value for b in basis.basis], axis=1)  # (ne, nb, nq)
        # skfem grad has shape (2, ne, nq) per basis function -> (ne, nb, 2, nq)
        self.dphi = np.transpose(np.stack([b[0].grad for b in basis.basis], axis=0), (2, 0, 1, 3))
        self.dx = np.asarray(basis.dx)  # (ne, nq)
        self.element_dofs = np.asarray(basis.element_dofs.T, dtype=np.int64)  # (ne, nb)
        self.x = np.asarray(basis.global_coordinates().value)  # (2, ne, nq)


class FunctionSpace:
    """A Lagrange finite-element space on a :class:`Mesh`.

    Args:
        mesh: the mesh.
        element: ``'P1'`` or ``'P2'`` on triangles, ``'Q1'`` (or ``'Q2'``) on quadrilaterals.
        quadrature_order: exactness degree of the cell quadrature (default ``2 * degree + 1``, so
            a linearly varying coefficient times a mass or stiffness integrand is integrated exactly).

    Coefficient fields (diffusivity, reaction, sources) can be given to assembly as any of
    (see :meth:`at_quadrature`): a scalar; nodal values ``(ndofs,)`` in this space; vertex
    values ``(npoints,)`` (linear interpolation); cell values ``(ncells,)``; values at the
    quadrature points ``(ncells, nquad)``; or a callable ``f(x)`` of coordinates ``x`` of shape
    ``(2, ...)``. Arrays may be traced.
    """

    def __init__(self, mesh: Mesh, element: str = "P1", *, quadrature_order: int | None = None):
        if not isinstance(mesh, Mesh):
            raise TypeError(f"FunctionSpace: mesh must be a pdegen Mesh, got {type(mesh).__name__}")
        key = (mesh.cell_type, element)
        if key not in ELEMENTS:
            allowed = [e for (c, e) in ELEMENTS if c == mesh.cell_type]
            raise ValueError(
                f"FunctionSpace: element {element!r} is not available on {mesh.cell_type} meshes; "
                f"choose one of {allowed}"
            )
        self.mesh = mesh
        self.element = element
        self.degree = DEGREE[element]
        self.quadrature_order = int(quadrature_order or 2 * self.degree + 1)
        self._skfem_element = ELEMENTS[key]()
        self.basis = skfem.Basis(mesh.skfem, self._skfem_element, intorder=self.quadrature_order)
        q = _QuadratureData(self.basis)
        self.ndofs = int(self.basis.N)
        self.nquad = q.dx.shape[1]
        self.element_dofs = q.element_dofs
        self.dof_coordinates = np.asarray(self.basis.doflocs.T)  # (ndofs, 2)
        # JAX copies used by assembly.
        self.phi = jnp.asarray(q.phi)
        self.dphi = jnp.asarray(q.dphi)
        self.dx = jnp.asarray(q.dx)
        self.quadrature_points = q.x  # (2, ncells, nquad), host
        rows = np.repeat(self.element_dofs[:, :, None], self.element_dofs.shape[1], axis=2)
        cols = np.repeat(self.element_dofs[:, None, :], self.element_dofs.shape[1], axis=1)
        self.pattern, self._coo_to_slot = SparsityPattern.from_coo(
            rows, cols, (self.ndofs, self.ndofs)
        )

    def __repr__(self):
        return f"FunctionSpace({self.element}, ndofs={self.ndofs}, mesh={self.mesh!r})"

    @cached_property
    def _dof_gather(self):
        """``(ndofs, k)`` indices into the flattened ``(ncells * nb)`` local vectors (padded with
        ``ncells * nb``): summing gathered local values assembles a vector. A gather batches well
        under ``vmap``; a batched scatter (``segment_sum``) is much slower on CPU."""
        ed = np.asarray(self.element_dofs).reshape(-1)
        order = np.argsort(ed, kind="stable")
        counts = np.bincount(ed, minlength=self.ndofs)
        width = int(counts.max()) if counts.size else 0
        pos = np.arange(ed.size) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.full((self.ndofs, width), ed.size, dtype=np.int32)
        idx[ed[order], pos] = order
        return idx

    @cached_property
    def _constant_gradient_products(self):
        """``G_e = grad(phi_i) . grad(phi_j)`` per cell when shape gradients are constant on each
        cell (P1 on triangles), else ``None``. Then ``K_e = (int kappa dx) G_e`` exactly."""
        d = np.asarray(self.dphi)
        scale = np.max(np.abs(d)) if d.size else 1.0
        if np.max(np.ptp(d, axis=-1), initial=0.0) > 1e-12 * scale:
            return None
        d0 = d[..., 0]
        return np.einsum("eid,ejd->eij", d0, d0)  # host array: safe to cache across traces

    # -- coefficients -----------------------------------------------------------------
    @cached_property
    def _vertex_phi(self):
        """P1/Q1 shape values at this space's quadrature points (for vertex-valued fields)."""
        if self.degree == 1:
            return self.phi, self.element_dofs
        lin = skfem.ElementTriP1() if self.mesh.cell_type == "triangle" else skfem.ElementQuad1()
        b = skfem.Basis(self.mesh.skfem, lin, quadrature=self.basis.quadrature)
        q = _QuadratureData(b)
        return jnp.asarray(q.phi), q.element_dofs

    def at_quadrature(self, c, name: str = "coefficient") -> jax.Array:
        """Values of a coefficient at the cell quadrature points, shape ``(ncells, nquad)``."""
        ne, nq = self.mesh.ncells, self.nquad
        if callable(c):
            vals = _evaluate(c, jnp.asarray(self.quadrature_points))
            if vals.shape == ():
                vals = jnp.full((ne, nq), vals)
            if vals.shape != (ne, nq):
                raise ValueError(
                    f"{name}: a callable must map x of shape (2, {ne}, {nq}) to values of shape "
                    f"({ne}, {nq}), got {vals.shape}"
                )
            return vals
        c = as_inexact(c)
        if c.ndim == 0:
            return jnp.broadcast_to(c, (ne, nq))
        if c.shape == (self.ndofs,):
            return jnp.einsum("ebq,eb->eq", self.phi.astype(c.dtype), c[self.element_dofs])
        if c.shape == (self.mesh.npoints,):
            phi, edofs = self._vertex_phi
            return jnp.einsum("ebq,eb->eq", phi.astype(c.dtype), c[edofs])
        if c.shape == (ne,):
            return jnp.broadcast_to(c[:, None], (ne, nq))
        if c.shape == (ne, nq):
            return c
        raise ValueError(
            f"{name}: expected a scalar, nodal values ({self.ndofs},), vertex values "
            f"({self.mesh.npoints},), cell values ({ne},), quadrature values ({ne}, {nq}) or a "
            f"callable of x; got an array of shape {c.shape}"
        )

    def interpolate(self, fn) -> jax.Array:
        """Nodal interpolant of ``fn(x)`` (``x`` of shape ``(2, ndofs)``), shape ``(ndofs,)``."""
        vals = _evaluate(fn, jnp.asarray(self.dof_coordinates.T))
        if vals.shape == ():
            vals = jnp.full((self.ndofs,), vals)
        if vals.shape != (self.ndofs,):
            raise ValueError(
                f"interpolate: fn must map x of shape (2, {self.ndofs}) to shape ({self.ndofs},), "
                f"got {vals.shape}"
            )
        return vals

    # -- boundary ---------------------------------------------------------------------
    def boundary_facets(self, where=None) -> np.ndarray:
        """Indices of boundary facets; ``where(x) -> bool`` (x of shape ``(2, n)``) selects a part."""
        facets = np.asarray(self.mesh.skfem.boundary_facets())
        if where is None:
            return facets
        if callable(where):
            mid = self.mesh.skfem.p[:, self.mesh.skfem.facets[:, facets]].mean(axis=1)
            keep = np.asarray(where(mid), dtype=bool)
            if keep.shape != facets.shape:
                raise ValueError(
                    f"boundary: where(x) must return {facets.size} booleans, got {keep.shape}"
                )
            return facets[keep]
        sel = np.asarray(where, dtype=np.int64)
        if not np.isin(sel, facets).all():
            raise ValueError("boundary: facet indices must be boundary facets")
        return sel

    def boundary_dofs(self, where=None) -> np.ndarray:
        """Sorted indices of the dofs on the (selected) boundary."""
        facets = self.boundary_facets(where)
        return np.sort(np.asarray(self.basis.get_dofs(facets).all(), dtype=np.int64))

    @cached_property
    def _boundary_cache(self):
        return {}

    def boundary_quadrature(self, where=None):
        """Facet quadrature data of the selected boundary (cached per set of selected facets, so a
        new ``lambda`` selecting the same facets reuses it and an edited index array does not)."""
        facets = self.boundary_facets(where)
        if facets.size == 0:
            raise ValueError("boundary: the selection contains no boundary facets")
        key = np.asarray(facets, np.int64).tobytes()
        cache = self._boundary_cache
        if key not in cache:
            fb = skfem.FacetBasis(
                self.mesh.skfem, self._skfem_element, facets=facets, intorder=self.quadrature_order
            )
            q = _QuadratureData(fb)
            q.normals = np.asarray(fb.normals.value if hasattr(fb.normals, "value") else fb.normals)
            rows = np.repeat(q.element_dofs[:, :, None], q.element_dofs.shape[1], axis=2)
            cols = np.repeat(q.element_dofs[:, None, :], q.element_dofs.shape[1], axis=1)
            q.slots = self.pattern.locate(rows.ravel(), cols.ravel())
            cache[key] = q
        return cache[key]

    # -- observation and errors -------------------------------------------------------
    def point_observation(self, points) -> SparseMatrix:
        """The sparse matrix ``H`` (shape ``(m, ndofs)``) with ``H @ u`` = values of ``u`` at ``points``.

        Raises:
            ValueError: if ``points`` is not of shape ``(m, 2)`` with ``m >= 1``, is not finite, or a point lies
                outside the mesh.
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"point_observation: points must have shape (m, 2), got {pts.shape}")
        if pts.shape[0] == 0:
            raise ValueError("point_observation: no points (shape (0, 2)); give at least one")
        if not np.all(np.isfinite(pts)):
            raise ValueError("point_observation: points contain NaN or inf")
        finder = self.mesh.skfem.element_finder()
        # skfem locates a batch of points among the union of the elements near any of them, a
        # (points x elements) array: in chunks, so that many points on a large mesh stay cheap
        chunks = [pts[i : i + _POINT_CHUNK] for i in range(0, pts.shape[0], _POINT_CHUNK)]
        try:
            cells = np.concatenate([np.asarray(finder(*c.T)) for c in chunks])
        except ValueError:
            cells = None
        if cells is None or np.any(cells < 0):
            outside = []
            for i, p in enumerate(pts):
                try:
                    c = finder(np.array([p[0]]), np.array([p[1]]))
                    if np.any(np.asarray(c) < 0):
                        outside.append(i)
                except ValueError:
                    outside.append(i)
            raise ValueError(
                f"point_observation: {len(outside)} points lie outside the domain, e.g. index "
                f"{outside[0]} at {pts[outside[0]].tolist()}"
            )
        P = sp.vstack([self.basis.probes(c.T) for c in chunks]).tocoo()
        P.sum_duplicates()
        keep = P.data != 0
        pattern = SparsityPattern(P.row[keep], P.col[keep], P.shape)
        order = np.lexsort((P.col[keep], P.row[keep]))
        return SparseMatrix(jnp.asarray(P.data[keep][order]), pattern)

    @cached_property
    def _error_quadrature(self):
        b = skfem.Basis(self.mesh.skfem, self._skfem_element, intorder=self.quadrature_order + 3)
        return _QuadratureData(b)

    def errors(self, u, exact, exact_grad=None) -> tuple[jax.Array, jax.Array | None]:
        """``(||u - exact||_L2, |u - exact|_H1)`` by higher-order quadrature.

        ``exact(x)`` and ``exact_grad(x)`` take ``x`` of shape ``(2, ...)``; the gradient returns
        shape ``(2, ...)``. The H1 seminorm is ``None`` without ``exact_grad``.
        """
        u = jnp.asarray(u)
        if u.shape != (self.ndofs,):
            raise ValueError(f"errors: u must have shape ({self.ndofs},), got {u.shape}")
        try:
            return jax.jit(lambda u_: self._errors(u_, exact, exact_grad))(u)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            return self._errors(u, exact, exact_grad)  # NumPy-only callables: evaluate eagerly

    def _errors(self, u, exact, exact_grad):
        q = self._error_quadrature
        u = as_inexact(u)
        x = jnp.asarray(q.x)
        dx = jnp.asarray(q.dx)
        uq = jnp.einsum("ebq,eb->eq", jnp.asarray(q.phi).astype(u.dtype), u[q.element_dofs])
        ex = jnp.asarray(exact(x))
        dtype = result_dtype(uq.dtype, ex.dtype)
        diff = uq.astype(dtype) - ex.astype(dtype)
        l2 = jnp.sqrt(jnp.sum(jnp.abs(diff) ** 2 * dx))
        if exact_grad is None:
            return l2, None
        guq = jnp.einsum("ebdq,eb->deq", jnp.asarray(q.dphi).astype(u.dtype), u[q.element_dofs])
        gex = jnp.asarray(exact_grad(x))
        dtype = result_dtype(guq.dtype, gex.dtype)
        gdiff = guq.astype(dtype) - gex.astype(dtype)
        h1 = jnp.sqrt(jnp.sum(jnp.sum(jnp.abs(gdiff) ** 2, axis=0) * dx))
        return l2, h1
