"""Assembly in JAX: element integrals as einsums over quadrature data, scattered into a fixed pattern.

Every coefficient may be a traced array (see :meth:`FunctionSpace.at_quadrature`), so the
assembled values are ``jit``-, ``vmap``- and ``grad``-able.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._space import FunctionSpace, _evaluate
from ._sparse import SparseMatrix, as_inexact, result_dtype


def _check_space(space, fn):
    if not isinstance(space, FunctionSpace):
        raise TypeError(f"{fn}: space must be a FunctionSpace, got {type(space).__name__}")


def assemble_local(space: FunctionSpace, local: jax.Array) -> SparseMatrix:
    """Sum local matrices ``(ncells, nb, nb)`` into the space's sparse pattern."""
    nb = space.element_dofs.shape[1]
    if local.shape != (space.mesh.ncells, nb, nb):
        raise ValueError(
            f"assemble_local: local matrices must have shape ({space.mesh.ncells}, {nb}, {nb}), "
            f"got {local.shape}"
        )
    data = _scatter_sum(local.reshape(-1), space._coo_to_slot, space.pattern.nnz)
    return SparseMatrix(data, space.pattern)


def stiffness(space: FunctionSpace, kappa=1.0) -> SparseMatrix:
    """``K_ij = int kappa grad(phi_j) . grad(phi_i) dx``; ``kappa`` a scalar field (see module doc)."""
    _check_space(space, "stiffness")
    k = space.at_quadrature(kappa, "stiffness(kappa=...)")
    dtype = result_dtype(k.dtype, space.dx.dtype)
    w = k.astype(dtype) * space.dx.astype(dtype)
    G = space._constant_gradient_products
    if G is not None:  # affine elements: one weight per cell times precomputed gradient products
        local = jnp.sum(w, axis=1)[:, None, None] * jnp.asarray(G, dtype=dtype)
    else:
        local = jnp.einsum(
            "eq,eidq,ejdq->eij", w, space.dphi.astype(dtype), space.dphi.astype(dtype)
        )
    return assemble_local(space, local)


def mass(space: FunctionSpace, coefficient=1.0) -> SparseMatrix:
    """``M_ij = int c phi_j phi_i dx``."""
    _check_space(space, "mass")
    c = space.at_quadrature(coefficient, "mass(coefficient=...)")
    dtype = result_dtype(c.dtype, space.dx.dtype)
    w = c.astype(dtype) * space.dx.astype(dtype)
    local = jnp.einsum("eq,eiq,ejq->eij", w, space.phi.astype(dtype), space.phi.astype(dtype))
    return assemble_local(space, local)


def lumped_mass(space: FunctionSpace, coefficient=1.0) -> jax.Array:
    """Row sums of the mass matrix, shape ``(ndofs,)`` (P1/Q1: positive; use with care for P2)."""
    _check_space(space, "lumped_mass")
    c = space.at_quadrature(coefficient, "lumped_mass(coefficient=...)")
    dtype = result_dtype(c.dtype, space.dx.dtype)
    local = jnp.einsum(
        "eq,eiq->ei", c.astype(dtype) * space.dx.astype(dtype), space.phi.astype(dtype)
    )
    return _scatter_sum(local.reshape(-1), space.element_dofs.reshape(-1), space.ndofs)


def load(space: FunctionSpace, f=1.0) -> jax.Array:
    """Load vector ``b_i = int f phi_i dx``, shape ``(ndofs,)``."""
    _check_space(space, "load")
    fq = space.at_quadrature(f, "load(f=...)")
    dtype = result_dtype(fq.dtype, space.dx.dtype)
    local = jnp.einsum(
        "eq,eiq->ei", fq.astype(dtype) * space.dx.astype(dtype), space.phi.astype(dtype)
    )
    return _gather_sum(space, local)


def _gather_sum(space: FunctionSpace, local: jax.Array) -> jax.Array:
    """Assemble local vectors ``(ncells, nb)`` into ``(ndofs,)`` by a padded gather and a sum."""
    return _padded_gather_sum(local, space._dof_gather)


# Compiled once per shape with the mesh's index arrays as arguments, as the sparse products are
# (see ``_sparse._matvec``).
@functools.partial(jax.jit, static_argnums=2)
def _scatter_sum(values: jax.Array, ids, num_segments: int) -> jax.Array:
    return jax.ops.segment_sum(values, ids, num_segments=num_segments)


@jax.jit
def _padded_gather_sum(local: jax.Array, gather) -> jax.Array:
    flat = jnp.concatenate([local.reshape(-1), jnp.zeros(1, local.dtype)])
    return jnp.sum(flat[gather], axis=1)


def _boundary_values(space, q, c, name):
    nf, nq = q.dx.shape
    if callable(c):
        try:
            vals = c(jnp.asarray(q.x), jnp.asarray(q.normals))
        except TypeError:
            vals = c(jnp.asarray(q.x))
        vals = as_inexact(vals)
    else:
        vals = as_inexact(c)
    if vals.ndim == 0:
        return jnp.broadcast_to(vals, (nf, nq))
    if vals.shape == (space.ndofs,):
        return jnp.einsum("ebq,eb->eq", jnp.asarray(q.phi).astype(vals.dtype), vals[q.element_dofs])
    if vals.shape == (nf, nq):
        return vals
    raise ValueError(
        f"{name}: expected a scalar, nodal values ({space.ndofs},), facet quadrature values "
        f"({nf}, {nq}) or a callable f(x) / f(x, normal); got shape {vals.shape}"
    )


def boundary_mass(space: FunctionSpace, coefficient=1.0, *, where=None) -> SparseMatrix:
    """``B_ij = int_Gamma c phi_j phi_i ds`` over the boundary (or the part selected by ``where``).

    Used for Robin (``c = alpha``) and impedance (``c = -i k``) terms.
    """
    _check_space(space, "boundary_mass")
    q = space.boundary_quadrature(where)
    c = _boundary_values(space, q, coefficient, "boundary_mass(coefficient=...)")
    dx = jnp.asarray(q.dx)
    dtype = result_dtype(c.dtype, dx.dtype)
    phi = jnp.asarray(q.phi).astype(dtype)
    local = jnp.einsum("eq,eiq,ejq->eij", c.astype(dtype) * dx.astype(dtype), phi, phi)
    data = _scatter_sum(local.reshape(-1), q.slots, space.pattern.nnz)
    return SparseMatrix(data, space.pattern)


def boundary_load(space: FunctionSpace, g=1.0, *, where=None) -> jax.Array:
    """``b_i = int_Gamma g phi_i ds``; ``g`` may be a callable ``g(x)`` or ``g(x, normal)``."""
    _check_space(space, "boundary_load")
    q = space.boundary_quadrature(where)
    gq = _boundary_values(space, q, g, "boundary_load(g=...)")
    dx = jnp.asarray(q.dx)
    dtype = result_dtype(gq.dtype, dx.dtype)
    local = jnp.einsum(
        "eq,eiq->ei", gq.astype(dtype) * dx.astype(dtype), jnp.asarray(q.phi).astype(dtype)
    )
    return _scatter_sum(local.reshape(-1), q.element_dofs.reshape(-1), space.ndofs)


class DirichletBC:
    """Dirichlet data on a fixed set of dofs, applied by symmetric elimination.

    Args:
        space: the function space.
        value: boundary values: a scalar, a callable ``g(x)`` (``x`` of shape ``(2, n)``), an array of
            shape ``(len(dofs),)`` or a full nodal vector ``(ndofs,)``. Arrays may be traced.
        where: boundary part (a callable on facet midpoints ``x`` of shape ``(2, n)``, or facet
            indices); all of the boundary by default.
    """

    def __init__(self, space: FunctionSpace, value=0.0, *, where=None, dofs=None):
        _check_space(space, "DirichletBC")
        self.space = space
        self.dofs = np.asarray(dofs, np.int64) if dofs is not None else space.boundary_dofs(where)
        self.value = value
        p = space.pattern
        on = np.zeros(space.ndofs, bool)
        on[self.dofs] = True
        self._keep = ~(on[p.rows] | on[p.cols])
        self._diag = p.diagonal[self.dofs]
        self._free = np.flatnonzero(~on)

    def values(self, value=None) -> jax.Array:
        """Boundary values at ``self.dofs``, shape ``(len(dofs),)``."""
        value = self.value if value is None else value
        n = self.dofs.size
        if callable(value):
            v = _evaluate(value, jnp.asarray(self.space.dof_coordinates[self.dofs].T))
        else:
            v = jnp.asarray(value)
        if v.ndim == 0:
            return jnp.broadcast_to(v, (n,))
        if v.shape == (n,):
            return v
        if v.shape == (self.space.ndofs,):
            return v[self.dofs]
        raise ValueError(
            f"DirichletBC: value must be a scalar, a callable, shape ({n},) or ({self.space.ndofs},); "
            f"got {v.shape}"
        )

    def lift(self, value=None, dtype=None) -> jax.Array:
        """A nodal vector equal to the boundary values on ``dofs`` and zero elsewhere."""
        g = self.values(value)
        dtype = dtype or g.dtype
        return jnp.zeros(self.space.ndofs, result_dtype(dtype, g.dtype)).at[self.dofs].set(g)

    def apply(self, A: SparseMatrix, b: jax.Array, value=None) -> tuple[SparseMatrix, jax.Array]:
        """Eliminate the constrained dofs: returns ``(A_bc, b_bc)`` with the same solution on free dofs,
        unit rows/columns on constrained dofs and ``b_bc[dofs] = g``."""
        g = self.lift(value, dtype=result_dtype(A.dtype, b.dtype))
        dtype = result_dtype(A.dtype, b.dtype, g.dtype)
        b = b.astype(dtype) - (A @ g).astype(dtype)
        b = b.at[self.dofs].set(g[self.dofs].astype(dtype))
        data = jnp.where(jnp.asarray(self._keep), A.data, 0).astype(A.dtype)
        data = data.at[self._diag].set(1)
        return SparseMatrix(data, A.pattern), b

    def residual_rows(self, r: jax.Array, u: jax.Array, value=None) -> jax.Array:
        """Replace the constrained rows of a residual ``r`` by ``u[dofs] - g``."""
        g = self.values(value)
        return r.at[self.dofs].set((u[self.dofs] - g).astype(r.dtype))
