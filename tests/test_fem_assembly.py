"""Assembly by pdegen.fem equals scikit-fem's BilinearForm/LinearForm assembly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skfem
from skfem.helpers import dot, grad

from pdegen import fem

CASES = [("P1", "triangle"), ("P2", "triangle"), ("Q1", "quad")]


def _coef_np(x):
    return 1.5 + np.sin(3.0 * x[0]) * x[1] ** 2


def _coef_jnp(x):
    return 1.5 + jnp.sin(3.0 * x[0]) * x[1] ** 2


def _space(element, cell_type, n=6):
    return fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)


def _close(a, b, tol=1e-12):
    a = np.asarray(a)
    b = np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)


@skfem.BilinearForm
def _sk_stiffness(u, v, w):
    return w.c * dot(grad(u), grad(v))


@skfem.BilinearForm
def _sk_mass(u, v, w):
    return w.c * u * v


@skfem.LinearForm
def _sk_load(v, w):
    return w.c * v


@skfem.BilinearForm
def _sk_bmass(u, v, w):
    return _coef_np(w.x) * u * v


@skfem.LinearForm
def _sk_bload(v, w):
    return (_coef_np(w.x) + w.n[0]) * v


@pytest.mark.parametrize("element,cell_type", CASES)
@pytest.mark.parametrize("kind", ["nodal", "callable", "cell"])
def test_stiffness_mass_load_match_skfem(element, cell_type, kind):
    V = _space(element, cell_type)
    basis = V.basis
    if kind == "nodal":
        c_nodal = _coef_np(V.dof_coordinates.T)
        ours = jnp.asarray(c_nodal)
        cq = basis.interpolate(c_nodal)
    elif kind == "callable":
        ours = _coef_jnp
        cq = _coef_np(basis.global_coordinates().value)
    else:
        c_cell = _coef_np(V.mesh.points[V.mesh.cells].mean(axis=1).T)
        ours = jnp.asarray(c_cell)
        cq = np.broadcast_to(c_cell[:, None], V.dx.shape)
    K = skfem.asm(_sk_stiffness, basis, c=cq).toarray()
    M = skfem.asm(_sk_mass, basis, c=cq).toarray()
    b = skfem.asm(_sk_load, basis, c=cq)
    assert np.abs(K).max() > 0.1 and np.abs(M).max() > 1e-3
    _close(fem.stiffness(V, ours).todense(), K)
    _close(fem.mass(V, ours).todense(), M)
    _close(fem.load(V, ours), b)
    # lumped mass = row sums of the consistent mass matrix
    _close(fem.lumped_mass(V, ours), M.sum(axis=1))


@pytest.mark.parametrize("element,cell_type", CASES)
def test_boundary_mass_and_load_match_skfem(element, cell_type):
    V = _space(element, cell_type)
    fb = skfem.FacetBasis(V.mesh.skfem, V.basis.elem, intorder=V.quadrature_order)
    B = skfem.asm(_sk_bmass, fb).toarray()
    g = skfem.asm(_sk_bload, fb)
    _close(fem.boundary_mass(V, _coef_jnp).todense(), B)
    _close(fem.boundary_load(V, lambda x, n: _coef_jnp(x) + n[0]), g)
    # only part of the boundary: the left side x = 0
    left = lambda x: x[0] < 1e-12  # noqa: E731
    facets = V.boundary_facets(left)
    assert 0 < facets.size < V.boundary_facets().size
    fbl = skfem.FacetBasis(V.mesh.skfem, V.basis.elem, facets=facets, intorder=V.quadrature_order)
    _close(
        fem.boundary_mass(V, _coef_jnp, where=left).todense(), skfem.asm(_sk_bmass, fbl).toarray()
    )


def test_stiffness_symmetric_with_constant_kernel():
    V = _space("P2", "triangle")
    K = fem.stiffness(V, _coef_jnp)
    dense = np.asarray(K.todense())
    np.testing.assert_allclose(dense, dense.T, atol=1e-13)
    np.testing.assert_allclose(np.asarray(K @ jnp.ones(V.ndofs)), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(jnp.sum(fem.mass(V, 1.0).data)), 1.0, atol=1e-12)


def test_assembly_is_traceable():
    V = _space("P1", "triangle")
    kappa = jnp.asarray(_coef_np(V.dof_coordinates.T))
    f = jax.jit(lambda k: fem.stiffness(V, k).data)
    np.testing.assert_allclose(
        np.asarray(f(kappa)), np.asarray(fem.stiffness(V, kappa).data), atol=1e-14
    )
    # stiffness is linear in kappa: d/dkappa of sum(data) is the linear map's row sums
    g = jax.grad(lambda k: jnp.sum(fem.stiffness(V, k).data ** 2))(kappa)
    assert g.shape == kappa.shape and bool(jnp.all(jnp.isfinite(g)))


def test_sparse_matrix_operations():
    V = _space("P1", "triangle", n=4)
    K = fem.stiffness(V, 2.0)
    M = fem.mass(V, 1.0)
    Kd = np.asarray(K.todense())
    Md = np.asarray(M.todense())
    x = jnp.arange(V.ndofs, dtype=jnp.float64)
    X = jnp.stack([x, x**2], axis=1)
    np.testing.assert_allclose(np.asarray(K @ x), Kd @ np.asarray(x), atol=1e-12)
    np.testing.assert_allclose(np.asarray(K @ X), Kd @ np.asarray(X), atol=1e-12)
    np.testing.assert_allclose(np.asarray((K + M).todense()), Kd + Md, atol=1e-14)
    np.testing.assert_allclose(np.asarray((K * 3.0).todense()), 3.0 * Kd, atol=1e-14)
    np.testing.assert_allclose(np.asarray(K.T.todense()), Kd.T, atol=1e-14)
    np.testing.assert_allclose(np.asarray(K.diagonal()), np.diag(Kd), atol=1e-14)
    np.testing.assert_allclose(K.to_scipy().toarray(), Kd, atol=1e-14)


@pytest.mark.parametrize(
    "coef,match",
    [
        (jnp.ones(7), "coefficient|kappa|expected"),
        (jnp.ones((3, 3)), "coefficient|kappa|expected"),
    ],
)
def test_coefficient_wrong_shape(coef, match):
    V = _space("P1", "triangle", n=4)
    with pytest.raises(ValueError, match=match):
        fem.stiffness(V, coef)
    with pytest.raises(ValueError, match="expected a scalar"):
        fem.mass(V, coef)
    with pytest.raises(ValueError, match="expected a scalar"):
        fem.load(V, coef)


def test_callable_coefficient_wrong_output_shape():
    V = _space("P1", "triangle", n=4)
    with pytest.raises(ValueError, match="callable must map x"):
        fem.stiffness(V, lambda x: jnp.ones(3))


def test_boundary_coefficient_wrong_shape():
    V = _space("P1", "triangle", n=4)
    with pytest.raises(ValueError, match=r"boundary_mass\(coefficient"):
        fem.boundary_mass(V, jnp.ones(5))


def test_assembly_needs_a_function_space():
    with pytest.raises(TypeError, match="space must be a FunctionSpace"):
        fem.stiffness(fem.unit_square(3), 1.0)


def test_dirichlet_bc_apply_lift_residual():
    V = _space("P1", "triangle", n=5)
    bc = fem.DirichletBC(V, lambda x: x[0] + 2.0 * x[1])
    assert np.array_equal(bc.dofs, V.boundary_dofs())
    A, b = bc.apply(fem.stiffness(V, 1.0), fem.load(V, 0.0))
    u = fem.linear_solve(A, b, method="direct")
    # x + 2y is harmonic and linear: P1 reproduces it exactly
    np.testing.assert_allclose(np.asarray(u), V.dof_coordinates @ np.array([1.0, 2.0]), atol=1e-12)
    Ad = np.asarray(A.todense())
    np.testing.assert_allclose(Ad, Ad.T, atol=1e-14)  # symmetric elimination
    lifted = np.asarray(bc.lift())
    interior = np.setdiff1d(np.arange(V.ndofs), bc.dofs)
    np.testing.assert_allclose(lifted[interior], 0.0)
    r = bc.residual_rows(jnp.zeros(V.ndofs), u)
    np.testing.assert_allclose(np.asarray(r)[bc.dofs], 0.0, atol=1e-12)
