"""pdegen <-> jax-fem: the same Poisson residual on the same mesh, and its derivatives.

jax-fem is an optional extra (``pip install pdegen[jaxfem]``), so these tests skip where it is
missing; CI installs the extra, so they run there.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jax_fem.problem")

from pdegen import fem  # noqa: E402
from pdegen.fem._jaxfem import jaxfem_poisson, jaxfem_residual, to_jaxfem_mesh  # noqa: E402


def _g(x):
    return 1.0 + x[0] * x[1]


def _setup(cell_type, element, n=5):
    mesh = fem.unit_square(n, cell_type=cell_type)
    V = fem.FunctionSpace(mesh, element)
    x = V.dof_coordinates
    u = jnp.asarray(np.sin(3.0 * x[:, 0]) * np.cos(2.0 * x[:, 1]) + x[:, 0])
    kappa = V.interpolate(lambda x: 1.0 + x[0] ** 2 + 0.5 * x[1])
    return V, u, kappa


def _source(x):
    return jnp.exp(x[1]) - x[0]


@pytest.mark.parametrize(
    "cell_type,element",
    [
        ("triangle", "P1"),
        ("quad", "Q1"),
        pytest.param("triangle", "P2", marks=pytest.mark.slow),
    ],
)
def test_poisson_residual_matches_pdegen(cell_type, element):
    V, u, kappa = _setup(cell_type, element, n=4 if element == "P2" else 5)
    f = V.interpolate(_source)
    reaction = 0.7
    problem = jaxfem_poisson(V, dirichlet=_g)
    theta = problem.coefficients(kappa=kappa, f=f, reaction=reaction)
    pde = fem.Poisson(V, dirichlet=_g)

    # Raw weak residuals A u - b on every row (no boundary treatment on either side).
    raw = jaxfem_residual(problem, V)(u, theta)
    A = pde.operator(kappa=kappa, reaction=reaction)
    expected_raw = A @ u - pde.rhs(f=f)
    scale = float(jnp.max(jnp.abs(expected_raw)))
    assert scale > 0.1
    np.testing.assert_allclose(raw, expected_raw, rtol=0, atol=1e-10 * scale)

    # Dirichlet rows: jax-fem's own bc info (u - value) against pdegen's (u - g).
    with_bc = jaxfem_residual(problem, V, dirichlet="problem")(u, theta)
    expected = pde.residual(u, kappa=kappa, f=f, reaction=reaction)
    np.testing.assert_allclose(with_bc, expected, rtol=0, atol=1e-10 * scale)
    dofs = V.boundary_dofs()
    assert not np.allclose(expected[dofs], expected_raw[dofs])  # the rows really were replaced

    # A pdegen DirichletBC with a per-call value g.
    bc = fem.DirichletBC(V, _g)
    g2 = 2.0 * bc.values()
    wrapped = jaxfem_residual(problem, V, dirichlet=bc)(u, theta, g=g2)
    np.testing.assert_allclose(
        wrapped,
        pde.residual(u, kappa=kappa, f=f, reaction=reaction, g=g2),
        rtol=0,
        atol=1e-10 * scale,
    )


def test_node_ordering_is_mapped():
    """A jax-fem problem on a renumbered copy of the mesh gives the same pdegen-ordered residual."""
    V, u, kappa = _setup("quad", "Q1")
    problem = jaxfem_poisson(V)
    jmesh = to_jaxfem_mesh(V)
    perm = np.random.default_rng(0).permutation(
        V.ndofs
    )  # jax-fem node i sits at pdegen dof perm[i]
    inverse = np.argsort(perm)
    shuffled = type(jmesh)(jmesh.points[perm], inverse[jmesh.cells], ele_type=jmesh.ele_type)
    renumbered = type(problem)(
        mesh=shuffled, vec=1, dim=2, ele_type=jmesh.ele_type, gauss_order=V.quadrature_order
    )
    kappa_fn = lambda x: 1.0 + x[0] ** 2 + 0.5 * x[1]  # noqa: E731  (ordering-free coefficients)
    r = jaxfem_residual(renumbered, V)(u, renumbered.coefficients(kappa=kappa_fn, f=_source))
    pde = fem.Poisson(V, dirichlet=None)
    expected = pde.operator(kappa=kappa_fn) @ u - pde.rhs(f=_source)
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(r, expected, rtol=0, atol=1e-10 * scale)
    # Without the mapping the residual would differ: the renumbering is not the identity.
    assert np.abs(np.asarray(r)[perm] - np.asarray(r)).max() > 1e-3 * scale


def test_wrapped_residual_is_differentiable():
    V, u, kappa = _setup("triangle", "P1")
    f = 1.0
    problem = jaxfem_poisson(V)
    residual = jaxfem_residual(problem, V)
    pde = fem.Poisson(V, dirichlet=None)

    # d residual / du is the stiffness matrix.
    theta = problem.coefficients(kappa=kappa, f=f)
    J = jax.jit(jax.jacfwd(residual))(u, theta)
    K = fem.stiffness(V, kappa).todense()
    np.testing.assert_allclose(J, K, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(K))))

    # Gradient with respect to the (nodal) diffusivity, through jax-fem's internal variables.
    w = jnp.asarray(np.random.default_rng(1).normal(size=V.ndofs))

    def objective_jaxfem(k):
        return jnp.sum(w * residual(u, problem.coefficients(kappa=k, f=f)))

    def objective_pdegen(k):
        return jnp.sum(w * pde.residual(u, kappa=k, f=f))

    grad_jaxfem = jax.grad(objective_jaxfem)(kappa)
    grad_pdegen = jax.grad(objective_pdegen)(kappa)
    assert float(jnp.max(jnp.abs(grad_pdegen))) > 1e-3
    np.testing.assert_allclose(
        grad_jaxfem, grad_pdegen, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(grad_pdegen)))
    )


def test_errors():
    V, u, _ = _setup("triangle", "P1", n=3)
    problem = jaxfem_poisson(V.mesh)  # a Mesh means P1 here
    residual = jaxfem_residual(problem, V)
    with pytest.raises(ValueError, match="shape"):
        residual(u[:-1])
    with pytest.raises(ValueError, match="no Dirichlet rows"):
        residual(u, g=0.0)
    with pytest.raises(ValueError, match="same nodes"):
        jaxfem_residual(problem, fem.FunctionSpace(fem.unit_square(4), "P1"))
    moved = fem.Mesh(V.mesh.points * 2.0, V.mesh.cells)
    with pytest.raises(ValueError, match="not dofs"):
        jaxfem_residual(problem, fem.FunctionSpace(moved, "P1"))
    with pytest.raises(TypeError, match="dirichlet"):
        jaxfem_residual(problem, V, dirichlet="all")
    with pytest.raises(TypeError, match="Problem"):
        jaxfem_residual(object(), V)
    with pytest.raises(ValueError, match="no jax-fem element"):
        to_jaxfem_mesh(fem.FunctionSpace(fem.unit_square(3, cell_type="quad"), "Q2"))
    with pytest.raises(ValueError, match="kappa"):
        problem.coefficients(kappa=jnp.ones(7))
    with pytest.raises(TypeError, match="Mesh or FunctionSpace"):
        jaxfem_poisson(np.zeros((3, 2)))


def test_missing_jax_fem_gives_install_hint(monkeypatch):
    import pdegen.fem._jaxfem as interop

    monkeypatch.setitem(sys.modules, "jax_fem.problem", None)
    with pytest.raises(ImportError, match=r"pip install 'pdegen\[jaxfem\]'"):
        interop._jax_fem()


def test_import_is_quiet_and_restores_global_state():
    code = (
        "import logging, numpy as np\n"
        "before = (np.get_printoptions(), logging.getLogger('jax').level)\n"
        "from pdegen.fem._jaxfem import _jax_fem\n"
        "_jax_fem()\n"
        "assert (np.get_printoptions(), logging.getLogger('jax').level) == before\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
