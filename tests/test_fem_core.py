"""FEM core against truth: manufactured solutions (fitted rates), scikit-fem matrices,
finite-difference gradients, vmap, recompilation, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skfem
from skfem.helpers import dot, grad

from pdegen import fem

pi = jnp.pi


def _rate(hs, errs):
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


# ---------------------------------------------------------------------------- convergence


def _poisson_case():
    exact = lambda x: jnp.sin(pi * x[0]) * jnp.exp(x[1]) + x[0] * x[1]  # noqa: E731
    kappa = lambda x: 1.0 + 0.5 * x[0] + x[1] ** 2  # noqa: E731

    def exact_grad(x):
        return jnp.stack(
            [
                pi * jnp.cos(pi * x[0]) * jnp.exp(x[1]) + x[1],
                jnp.sin(pi * x[0]) * jnp.exp(x[1]) + x[0],
            ]
        )

    def f(x):
        # -div(kappa grad u) = -(dk/dx u_x + dk/dy u_y) - kappa lap u
        ux, uy = exact_grad(x)
        lap = (1.0 - pi**2) * jnp.sin(pi * x[0]) * jnp.exp(x[1])
        return -(0.5 * ux + 2 * x[1] * uy) - kappa(x) * lap

    return exact, exact_grad, kappa, f


@pytest.mark.parametrize(
    "element,cell_type,sizes",
    [
        ("P1", "triangle", (9, 17, 33)),
        ("P2", "triangle", (5, 9, 17)),
        ("Q1", "quad", (9, 17, 33)),
    ],
)
def test_poisson_variable_coefficient_rates(element, cell_type, sizes):
    exact, exact_grad, kappa, f = _poisson_case()
    hs, l2, h1 = [], [], []
    for n in sizes:
        V = fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)
        u = fem.Poisson(V, dirichlet=exact).solve(kappa=kappa, f=f)
        e0, e1 = V.errors(u, exact, exact_grad)
        hs.append(1.0 / (n - 1))
        l2.append(float(e0))
        h1.append(float(e1))
    degree = 2 if element == "P2" else 1
    assert abs(_rate(hs, l2) - (degree + 1)) < 0.1
    assert abs(_rate(hs, h1) - degree) < 0.1


@pytest.mark.parametrize(
    "element,cell_type,sizes",
    [
        ("P1", "triangle", (9, 17, 33)),
        ("P2", "triangle", (5, 9, 17)),
        ("Q1", "quad", (9, 17, 33)),
    ],
)
def test_helmholtz_dirichlet_with_contrast_rates(element, cell_type, sizes):
    k = 3.0
    exact = lambda x: jnp.sin(2 * x[0]) * jnp.cos(x[1])  # noqa: E731
    q = lambda x: 0.5 * x[0] * x[1]  # noqa: E731
    f = lambda x: (5.0 - k**2 * (1 + q(x))) * exact(x)  # noqa: E731
    hs, l2 = [], []
    for n in sizes:
        V = fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)
        u = fem.Helmholtz(V, dirichlet=exact).solve(k=k, q=q, f=f)
        hs.append(1.0 / (n - 1))
        l2.append(float(V.errors(u, exact)[0]))
    degree = 2 if element == "P2" else 1
    assert abs(_rate(hs, l2) - (degree + 1)) < 0.1


@pytest.mark.parametrize(
    "element,cell_type,sizes",
    [
        ("P1", "triangle", (17, 33, 65)),
        ("P2", "triangle", (9, 17, 33)),
        ("Q1", "quad", (17, 33, 65)),
    ],
)
def test_helmholtz_impedance_plane_wave_rates(element, cell_type, sizes):
    k, d = 5.0, (0.6, 0.8)
    c = lambda v: v.astype(jnp.complex128)  # noqa: E731  (strict promotion: cast before i*)
    exact = lambda x: jnp.exp(1j * k * c(d[0] * x[0] + d[1] * x[1]))  # noqa: E731

    def exact_grad(x):
        return jnp.stack([1j * k * d[0] * exact(x), 1j * k * d[1] * exact(x)])

    h = lambda x, n: 1j * k * c(d[0] * n[0] + d[1] * n[1]) * exact(x) - 1j * k * exact(x)  # noqa: E731
    hs, l2, h1 = [], [], []
    for n in sizes:
        V = fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)
        u = fem.Helmholtz(V, boundary="impedance").solve(k=k, h=h)
        assert jnp.iscomplexobj(u)
        e0, e1 = V.errors(u, exact, exact_grad)
        hs.append(1.0 / (n - 1))
        l2.append(float(e0))
        h1.append(float(e1))
    degree = 2 if element == "P2" else 1
    assert abs(_rate(hs, l2) - (degree + 1)) < 0.1
    assert abs(_rate(hs, h1) - degree) < 0.1


def test_l_shaped_singular_solution_rates():
    # Domain (-1, 1)^2 without the quadrant x > 0, y > 0: the re-entrant corner at the origin
    # spans theta in [pi/2, 2 pi]; u = r^(2/3) sin(2 phi / 3), phi = theta - pi/2, is harmonic.
    def angles(x):
        theta = jnp.arctan2(x[1], x[0])
        return theta, jnp.mod(theta - pi / 2, 2 * pi)

    def exact(x):
        r = jnp.sqrt(x[0] ** 2 + x[1] ** 2)
        return r ** (2 / 3) * jnp.sin(2 * angles(x)[1] / 3)

    def exact_grad(x):
        r = jnp.sqrt(x[0] ** 2 + x[1] ** 2)
        theta, phi = angles(x)
        ur = (2 / 3) * r ** (-1 / 3) * jnp.sin(2 * phi / 3)
        ut = (2 / 3) * r ** (-1 / 3) * jnp.cos(2 * phi / 3)  # (1/r) du/dphi
        return jnp.stack(
            [ur * jnp.cos(theta) - ut * jnp.sin(theta), ur * jnp.sin(theta) + ut * jnp.cos(theta)]
        )

    hs, l2, h1 = [], [], []
    for refinements in (2, 3, 4, 5):
        mesh = fem.l_shaped(refinements)
        V = fem.FunctionSpace(mesh, "P1")
        u = fem.Poisson(V, dirichlet=exact).solve(kappa=1.0, f=0.0)
        e0, e1 = V.errors(u, exact, exact_grad)
        hs.append(mesh.h)
        l2.append(float(e0))
        h1.append(float(e1))
    # The corner singularity limits the rates to 2/3 (H1) and 4/3 (L2) under uniform refinement.
    assert abs(_rate(hs[1:], h1[1:]) - 2 / 3) < 0.1
    assert abs(_rate(hs[1:], l2[1:]) - 4 / 3) < 0.15


# ---------------------------------------------------------------------------- scikit-fem


@pytest.mark.parametrize(
    "element,cell_type", [("P1", "triangle"), ("P2", "triangle"), ("Q1", "quad")]
)
def test_matrices_equal_scikit_fem(element, cell_type):
    mesh = fem.unit_square(7, cell_type=cell_type)
    V = fem.FunctionSpace(mesh, element)
    kfun = lambda x: 1.0 + x[0] ** 2 + jnp.sin(3 * x[1])  # noqa: E731
    basis = V.basis

    @skfem.BilinearForm
    def a(u, v, w):
        return (1.0 + w.x[0] ** 2 + np.sin(3 * w.x[1])) * dot(grad(u), grad(v))

    @skfem.BilinearForm
    def m(u, v, w):
        return (2.0 + w.x[1]) * u * v

    @skfem.LinearForm
    def lf(v, w):
        return np.cos(w.x[0]) * v

    K_ref = a.assemble(basis).toarray()
    M_ref = m.assemble(basis).toarray()
    b_ref = lf.assemble(basis)
    assert np.allclose(fem.stiffness(V, kfun).todense(), K_ref, atol=1e-12, rtol=0)
    assert np.allclose(fem.mass(V, lambda x: 2.0 + x[1]).todense(), M_ref, atol=1e-12, rtol=0)
    assert np.allclose(fem.load(V, lambda x: jnp.cos(x[0])), b_ref, atol=1e-12, rtol=0)
    # A nodal coefficient (traced array) gives the matrix of its interpolant.
    kn = V.interpolate(kfun)

    @skfem.BilinearForm
    def a_nodal(u, v, w):
        return w.k * dot(grad(u), grad(v))

    K_nodal = a_nodal.assemble(basis, k=basis.interpolate(np.asarray(kn))).toarray()
    assert np.allclose(fem.stiffness(V, kn).todense(), K_nodal, atol=1e-12, rtol=0)
    # Boundary mass against a FacetBasis on all boundary facets.
    fb = skfem.FacetBasis(
        mesh.skfem,
        V._skfem_element,
        facets=mesh.skfem.boundary_facets(),
        intorder=V.quadrature_order,
    )

    @skfem.BilinearForm
    def bm(u, v, w):
        return (1.0 + w.x[0]) * u * v

    B_ref = bm.assemble(fb).toarray()
    assert np.allclose(
        fem.boundary_mass(V, lambda x: 1.0 + x[0]).todense(), B_ref, atol=1e-12, rtol=0
    )


# ---------------------------------------------------------------------------- gradients


def _fd_check(fun, x, direction, eps=1e-6):
    g = jax.grad(fun)(x)
    analytic = jnp.vdot(g, direction)
    fd = (fun(x + eps * direction) - fun(x - eps * direction)) / (2 * eps)
    return float(abs(analytic - fd) / max(abs(fd), 1e-12))


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_gradients_match_finite_differences(method, getkey):
    V = fem.FunctionSpace(fem.unit_square(9), "P1")
    P = fem.Poisson(V, method=method, rtol=1e-13)
    kappa = 1.0 + 0.5 * jax.random.uniform(getkey(), (V.ndofs,))
    f = jax.random.normal(getkey(), (V.ndofs,))
    H = V.point_observation(jnp.array([[0.3, 0.3], [0.6, 0.7], [0.45, 0.2]]))
    obj_k = lambda k: jnp.sum((H @ P.solve(kappa=k, f=f)) ** 2)  # noqa: E731
    obj_f = lambda s: jnp.sum((H @ P.solve(kappa=kappa, f=s)) ** 3)  # noqa: E731
    obj_g = lambda g: jnp.sum(P.solve(kappa=kappa, f=f, g=g) ** 2)  # noqa: E731
    assert _fd_check(obj_k, kappa, jax.random.normal(getkey(), kappa.shape)) < 1e-6
    assert _fd_check(obj_f, f, jax.random.normal(getkey(), f.shape)) < 1e-6
    assert _fd_check(obj_g, jnp.asarray(0.3), jnp.asarray(1.0)) < 1e-6


@pytest.mark.parametrize(
    "boundary,method",
    [
        ("dirichlet", "direct"),
        ("dirichlet", "gmres"),
        ("impedance", "direct"),
        ("impedance", "bicgstab"),
    ],
)
def test_helmholtz_gradients_wavenumber_and_contrast(boundary, method, getkey):
    V = fem.FunctionSpace(fem.unit_square(9), "P1")
    Hh = fem.Helmholtz(V, boundary=boundary, method=method, rtol=1e-13)
    q = 0.2 * jax.random.uniform(getkey(), (V.ndofs,))
    obj_k = lambda k: jnp.sum(jnp.abs(Hh.solve(k=k, q=q, f=1.0, h=0.5)) ** 2)  # noqa: E731
    obj_q = lambda q_: jnp.sum(jnp.abs(Hh.solve(k=2.5, q=q_, f=1.0, h=0.5)) ** 2)  # noqa: E731
    assert _fd_check(obj_k, jnp.asarray(2.5), jnp.asarray(1.0)) < 1e-6
    assert _fd_check(obj_q, q, jax.random.normal(getkey(), q.shape)) < 1e-6


# ---------------------------------------------------------------------------- batching, jit


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_vmap_equals_loop(method, getkey):
    V = fem.FunctionSpace(fem.unit_square(9), "P1")
    P = fem.Poisson(V, method=method, rtol=1e-12)
    fs = jax.random.normal(getkey(), (5, V.ndofs))
    ks = 1.0 + jax.random.uniform(getkey(), (4, V.ndofs))
    batched_f = jax.vmap(lambda f: P.solve(kappa=ks[0], f=f))(fs)
    batched_k = jax.vmap(lambda k: P.solve(kappa=k, f=fs[0]))(ks)
    for i in range(5):
        assert jnp.allclose(batched_f[i], P.solve(kappa=ks[0], f=fs[i]), atol=1e-10)
    for i in range(4):
        assert jnp.allclose(batched_k[i], P.solve(kappa=ks[i], f=fs[0]), atol=1e-10)
    g_batched = jax.vmap(jax.grad(lambda k: jnp.sum(P.solve(kappa=k, f=fs[0]) ** 2)))(ks)
    g1 = jax.grad(lambda k: jnp.sum(P.solve(kappa=k, f=fs[0]) ** 2))(ks[1])
    assert jnp.allclose(g_batched[1], g1, atol=1e-10)


def test_batched_matrices_with_many_right_hand_sides_factorise_each_matrix_once(
    getkey, monkeypatch
):
    """Chains x sensors: a vmap over matrices of a vmap over right-hand sides equals the loop and
    factorises each distinct matrix once (not once per right-hand side)."""
    from pdegen.fem import _solve

    V = fem.FunctionSpace(fem.unit_square(7), "P1")
    P = fem.Poisson(V)
    fs = jax.random.normal(getkey(), (5, V.ndofs))
    ks = 1.0 + jax.random.uniform(getkey(), (3, V.ndofs))
    calls = []
    factorise = _solve._factorise
    monkeypatch.setattr(_solve, "_factorise", lambda *a: calls.append(1) or factorise(*a))
    out = jax.vmap(lambda k: jax.vmap(lambda f: P.solve(kappa=k, f=f))(fs))(ks)
    assert len(calls) == 3
    for i in range(3):
        for j in range(5):
            assert jnp.allclose(out[i, j], P.solve(kappa=ks[i], f=fs[j]), atol=1e-10)


def test_jitted_solve_does_not_recompile(getkey):
    V = fem.FunctionSpace(fem.unit_square(9), "P1")
    P = fem.Poisson(V)
    traces = []

    @jax.jit
    def solve(kappa, f):
        traces.append(1)
        return P.solve(kappa=kappa, f=f)

    k1 = 1.0 + jax.random.uniform(getkey(), (V.ndofs,))
    u1 = solve(k1, 1.0)
    u2 = solve(2.0 * k1, 3.0)
    assert len(traces) == 1
    assert jnp.allclose(u2, 1.5 * u1, atol=1e-12)


def test_krylov_non_convergence_raises():
    V = fem.FunctionSpace(fem.unit_square(17), "P1")
    P = fem.Poisson(V, method="cg", maxiter=2)
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(P.solve(kappa=1.0, f=1.0))


# ---------------------------------------------------------------------------- observation


@pytest.mark.parametrize(
    "element,cell_type,fn",
    [
        ("P1", "triangle", lambda x: 1.0 + 2 * x[0] - 3 * x[1]),
        ("P2", "triangle", lambda x: x[0] ** 2 - x[0] * x[1] + 0.5 * x[1] ** 2),
        ("Q1", "quad", lambda x: 1.0 + x[0] + x[1] + x[0] * x[1]),
    ],
)
def test_point_observation_is_exact_for_the_element_space(element, cell_type, fn, getkey):
    V = fem.FunctionSpace(fem.unit_square(6, cell_type=cell_type), element)
    pts = jax.random.uniform(getkey(), (20, 2))
    H = V.point_observation(pts)
    assert H.shape == (20, V.ndofs)
    assert jnp.allclose(H @ V.interpolate(fn), fn(pts.T), atol=1e-12)


def test_point_observation_of_many_points_on_a_large_mesh():
    """The nodes of a 255x255 grid observed on a 128x128 one (65k points, 32k triangles: located
    in chunks; at once it needed 31 GB): exact for a linear function, rows in the points' order;
    a point outside in a later chunk is still named."""
    from pdegen.fem._space import _POINT_CHUNK

    V = fem.FunctionSpace(fem.unit_square(128), "P1")
    fine = fem.unit_square(255)
    assert fine.points.shape[0] > 16 * _POINT_CHUNK
    H = V.point_observation(fine.points)
    fn = lambda x: 0.5 + 2 * x[0] - 3 * x[1]  # noqa: E731
    np.testing.assert_allclose(H @ V.interpolate(fn), fn(fine.points.T), atol=1e-12)
    pts = np.concatenate([fine.points[: 2 * _POINT_CHUNK], [[1.5, 0.5]]])
    with pytest.raises(ValueError, match=f"index {2 * _POINT_CHUNK}"):
        V.point_observation(pts)


# ---------------------------------------------------------------------------- meshes


def test_grid_node_order_and_image_round_trip():
    mesh = fem.rectangle(5, 3, x1=2.0)
    assert mesh.grid_shape == (3, 5)
    j, i = 2, 3
    assert np.allclose(mesh.points[j * 5 + i], [i * 0.5, j * 0.5])
    img = np.arange(15.0).reshape(3, 5)
    assert np.array_equal(mesh.to_image(mesh.from_image(img)), img)
    assert np.all(mesh.cell_areas > 0)
    assert np.isclose(mesh.cell_areas.sum(), 2.0)
    quad = fem.unit_square(4, cell_type="quad")
    assert quad.ncells == 9 and np.isclose(quad.cell_areas.sum(), 1.0)


def test_from_skfem_meshes():
    m = fem.Mesh.from_skfem(skfem.MeshTri().refined(3))
    assert m.ncells == skfem.MeshTri().refined(3).t.shape[1]
    lshape = fem.l_shaped(2)
    assert np.isclose(lshape.cell_areas.sum(), 3.0)
    with pytest.raises(TypeError, match="MeshTri"):
        fem.Mesh.from_skfem("not a mesh")


@pytest.mark.parametrize("ext", [".vtu", ".xdmf", ".msh"])
def test_meshio_round_trip(tmp_path, ext):
    import meshio

    mesh = fem.unit_square(5)
    u = np.sin(mesh.points[:, 0])
    c = np.arange(mesh.ncells, dtype=float)
    path = tmp_path / f"m{ext}"
    if ext == ".msh":
        meshio.write(
            path,
            meshio.Mesh(np.c_[mesh.points, np.zeros(mesh.npoints)], [("triangle", mesh.cells)]),
            file_format="gmsh",
        )
    else:
        fem.write_mesh(path, mesh, point_data={"u": u}, cell_data={"c": c})
        back = meshio.read(path)
        assert np.allclose(back.point_data["u"], u)
        assert np.allclose(back.cell_data["c"][0], c)
    m2 = fem.read_mesh(path)
    assert np.allclose(m2.points, mesh.points) and np.array_equal(m2.cells, mesh.cells)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


# ---------------------------------------------------------------------------- bad input


def test_bad_meshes_are_rejected():
    pts = np.array([[0.0, 0], [1, 0], [0, 1], [1, 1]])
    with pytest.raises(ValueError, match="inverted"):
        fem.Mesh(pts, [[0, 2, 1], [1, 2, 3]])
    assert fem.Mesh(pts[:3], [[0, 2, 1]], reorient=True).cell_areas[0] > 0
    with pytest.raises(ValueError, match="zero area"):
        fem.Mesh(np.array([[0.0, 0], [1, 0], [2, 0]]), [[0, 1, 2]])
    with pytest.raises(ValueError, match="repeat a vertex"):
        fem.Mesh(pts, [[0, 1, 1], [1, 3, 2]])
    with pytest.raises(ValueError, match="NaN"):
        fem.Mesh(np.array([[0.0, 0], [1, np.nan], [0, 1]]), [[0, 1, 2]])
    with pytest.raises(ValueError, match="used by no cell"):
        fem.Mesh(pts, [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"points must have shape \(npoints, 2\)"):
        fem.Mesh(np.zeros((4, 3)), [[0, 1, 2]])
    with pytest.raises(ValueError, match="cells must have shape"):
        fem.Mesh(pts, [[0, 1]])
    with pytest.raises(ValueError, match="cell indices"):
        fem.Mesh(pts, [[0, 1, 7]])
    with pytest.raises(ValueError, match="not convex"):
        fem.Mesh(np.array([[0.0, 0], [1, 0], [0.2, 0.2], [0, 1]]), [[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="nx must be an integer >= 2"):
        fem.unit_square(1)


def test_bad_problem_input():
    mesh = fem.unit_square(5)
    with pytest.raises(ValueError, match="not available on triangle"):
        fem.FunctionSpace(mesh, "Q1")
    V = fem.FunctionSpace(mesh, "P1")
    P = fem.Poisson(V)
    with pytest.raises(ValueError, match="kappa must be real and positive"):
        P.solve(kappa=-1.0, f=1.0)
    with pytest.raises(ValueError, match="f contains NaN"):
        P.solve(kappa=1.0, f=jnp.full(V.ndofs, jnp.nan))
    with pytest.raises(ValueError, match=r"expected a scalar, nodal values \(25,\)"):
        P.solve(kappa=jnp.ones(7), f=1.0)
    with pytest.raises(TypeError, match="unexpected arguments"):
        P.solve(kappa=1.0, source=1.0)
    with pytest.raises(ValueError, match="outside the domain"):
        V.point_observation(jnp.array([[0.5, 0.5], [1.5, 0.5]]))
    with pytest.raises(ValueError, match=r"points must have shape \(m, 2\)"):
        V.point_observation(jnp.array([0.5, 0.5]))
    A = fem.stiffness(V)
    with pytest.raises(ValueError, match=r"b must have shape \(25,\)"):
        fem.linear_solve(A, jnp.ones(24))
    with pytest.raises(ValueError, match="method must be one of"):
        fem.linear_solve(A, jnp.ones(25), method="lu")
    with pytest.raises(ValueError, match="indefinite"):
        fem.Helmholtz(V, method="cg")
