"""Reliability of the fem layer: solver failures as one-line errors, true Krylov iteration counts,
the content-keyed LU cache, mesh files of any element, keyword-only keys, problem arguments."""

import logging
import warnings

import jax
import jax.numpy as jnp
import meshio
import numpy as np
import pytest

from pdegen import fem
from pdegen.fem import statfem
from pdegen.fem._sparse import default_float_dtype


def _singular_system(n=9):
    """The pure-Neumann Laplacian (singular to working precision) and a right-hand side."""
    V = fem.FunctionSpace(fem.unit_square(n), "P1")
    return fem.stiffness(V), jnp.ones(V.ndofs)


def _zero_row_matrix():
    """An exactly singular matrix: the identity with its last diagonal entry zero."""
    n = 4
    pattern = fem.SparsityPattern(np.arange(n), np.arange(n), (n, n))
    return fem.SparseMatrix(jnp.array([1.0, 2.0, 3.0, 0.0]), pattern)


def _one_line(err):
    text = str(err)
    assert len(text.splitlines()) == 1, text
    return text


# ---------------------------------------------------------------------------- direct solve errors


@pytest.mark.parametrize("which", ["exact", "working_precision"])
def test_singular_direct_solve_is_a_one_line_value_error(which, caplog):
    A, b = (_zero_row_matrix(), jnp.ones(4)) if which == "exact" else _singular_system()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ValueError) as info:
            fem.linear_solve(A, b, method="direct")
    assert isinstance(info.value, fem.LinearSolveError)
    assert not isinstance(info.value, jax.errors.JaxRuntimeError)
    text = _one_line(info.value)
    assert text.startswith("linear_solve(method='direct'): the matrix is singular")
    assert "boundary conditions" in text
    # JAX's traceback log of the failed callback is not shown for these errors
    assert not [r for r in caplog.records if "pure_callback failed" in r.getMessage()]


def test_singular_direct_solve_under_jit_and_grad():
    A, b = _singular_system()

    @jax.jit
    def solve(data):
        return fem.linear_solve(fem.SparseMatrix(data, A.pattern), b, method="direct")

    # Under your own jit JAX wraps the host error; the one-line message is its last line ...
    with pytest.raises(jax.errors.JaxRuntimeError) as raw:
        jax.block_until_ready(solve(A.data))
    assert "LinearSolveError: linear_solve(method='direct'): the matrix is singular" in str(
        raw.value
    )
    # ... and fem.solver_errors() (context manager or decorator) re-raises it as such.
    with pytest.raises(fem.LinearSolveError, match="the matrix is singular") as info:
        with fem.solver_errors():
            jax.block_until_ready(solve(A.data))
    _one_line(info.value)
    with pytest.raises(fem.LinearSolveError):
        fem.solver_errors()(lambda d: jax.block_until_ready(solve(d)))(A.data)
    # Gradients (one adjoint solve) of an eager call: the same clean error.
    with pytest.raises(fem.LinearSolveError, match="singular"):
        jax.grad(lambda d: jnp.sum(fem.linear_solve(fem.SparseMatrix(d, A.pattern), b)))(A.data)


def test_problem_solve_reports_a_singular_system_cleanly():
    V = fem.FunctionSpace(fem.unit_square(7), "P1")
    P = fem.Poisson(V, dirichlet=None)  # natural boundary and no reaction: singular
    with pytest.raises(fem.LinearSolveError, match="singular") as info:
        P.solve(kappa=1.0, f=1.0)
    _one_line(info.value)
    with pytest.raises(ValueError, match="singular"):  # under grad too (Problem.solve is jitted)
        jax.grad(lambda k: jnp.sum(P.solve(kappa=k, f=1.0)))(jnp.ones(V.ndofs))
    # a well-posed solve after a failure still works, and other errors pass through unchanged
    assert jnp.all(
        jnp.isfinite(fem.Poisson(V, dirichlet=None).solve(kappa=1.0, reaction=1.0, f=1.0))
    )
    with pytest.raises(KeyError):
        with fem.solver_errors():
            raise KeyError("unrelated")


def test_statfem_reports_a_singular_model_cleanly():
    V = fem.FunctionSpace(fem.unit_square(6), "P1")
    model = statfem.StatFEM(
        fem.Poisson(V, dirichlet=None),
        np.array([[0.5, 0.5]]),
        coefficients={"kappa": 1.0, "f": 1.0},
    )
    for call in (
        model.prior_mean,
        lambda: model.sample_prior(2, key=jax.random.key(0)),
        lambda: statfem.exact_posterior(model, jnp.zeros((1, 1))),
    ):
        with pytest.raises(fem.LinearSolveError, match="singular") as info:
            call()
        _one_line(info.value)


def test_non_finite_right_hand_side_is_reported():
    V = fem.FunctionSpace(fem.unit_square(5), "P1")
    A = fem.stiffness(V) + fem.mass(V)
    with pytest.raises(
        fem.LinearSolveError, match="non-finite solution: the right-hand side"
    ) as info:
        fem.linear_solve(A, jnp.full(V.ndofs, jnp.nan), method="direct")
    _one_line(info.value)


# ---------------------------------------------------------------------------- Krylov


def test_krylov_non_convergence_reports_maxiter_and_residual():
    V = fem.FunctionSpace(fem.unit_square(17), "P1")
    for method in ("cg", "bicgstab", "gmres"):
        P = fem.Poisson(V, method=method, maxiter=3)
        with pytest.raises(fem.LinearSolveError) as info:
            P.solve(kappa=1.0, f=1.0)
        text = _one_line(info.value)
        assert text.startswith(
            f"linear_solve(method={method!r}) did not converge: relative residual"
        )
        assert "after maxiter=3 iterations" in text


def test_krylov_breakdown_reports_the_iterations_actually_run():
    # CG on an indefinite diagonal matrix: with Jacobi preconditioning p0 = D^-1 b and
    # p0^T A p0 = sum(1 / d_i) = 0, so CG cannot take a single step.
    n = 4
    pattern = fem.SparsityPattern(np.arange(n), np.arange(n), (n, n))
    A = fem.SparseMatrix(jnp.array([1.0, -1.0, 2.0, -2.0]), pattern)
    with pytest.raises(fem.LinearSolveError) as info:
        fem.linear_solve(A, jnp.ones(n), method="cg", maxiter=50)
    text = _one_line(info.value)
    assert "stopped after 0 of maxiter=50 iterations" in text
    assert "not symmetric positive definite" in text and "'gmres'" in text
    # the same system is fine for GMRES and BiCGSTAB
    for method in ("gmres", "bicgstab"):
        x = fem.linear_solve(A, jnp.ones(n), method=method, maxiter=50)
        assert jnp.allclose(x, 1.0 / A.data, atol=1e-12)


def test_krylov_failure_under_vmap_and_user_jit():
    V = fem.FunctionSpace(fem.unit_square(9), "P1")
    P = fem.Poisson(V, method="cg", maxiter=4)
    f = jnp.stack([jnp.zeros(V.ndofs), jnp.ones(V.ndofs)])  # the first member converges at once
    with pytest.raises(fem.LinearSolveError, match="after maxiter=4 iterations"):
        with fem.solver_errors():
            jax.block_until_ready(jax.jit(jax.vmap(lambda s: P.solve(kappa=1.0, f=s)))(f))
    ok = jax.vmap(lambda s: fem.Poisson(V, method="cg").solve(kappa=1.0, f=s))(f)
    assert jnp.all(ok[0] == 0) and jnp.all(jnp.isfinite(ok[1]))


def test_bicgstab_solves_the_l_shape_p2_poisson_system():
    # jax.scipy's BiCGSTAB stopped early on this system (f = 1) and reported non-convergence
    V = fem.FunctionSpace(fem.l_shaped(5), "P2")
    ref = fem.Poisson(V, method="direct").solve(kappa=1.0, f=1.0)
    for method in ("bicgstab", "cg", "gmres"):
        u = fem.Poisson(V, method=method, rtol=1e-10).solve(kappa=1.0, f=1.0)
        assert float(jnp.max(jnp.abs(u - ref)) / jnp.max(jnp.abs(ref))) < 1e-8, method


@pytest.mark.parametrize("method", ["bicgstab", "gmres"])
def test_complex_krylov_matches_direct(method):
    V = fem.FunctionSpace(fem.unit_square(13), "P1")
    H = fem.Helmholtz(V, boundary="impedance", method=method, rtol=1e-12)
    ref = fem.Helmholtz(V, boundary="impedance", method="direct").solve(k=6.0, f=1.0, h=0.5)
    assert float(jnp.max(jnp.abs(H.solve(k=6.0, f=1.0, h=0.5) - ref))) < 1e-9


# ---------------------------------------------------------------------------- LU cache


def test_lu_cache_is_keyed_by_content():
    fem.clear_solver_cache()
    V = fem.FunctionSpace(fem.unit_square(7), "P1")
    P = fem.Poisson(V)
    A1, b = P._system(kappa=1.0, f=1.0)
    A2, _ = P._system(kappa=2.0, f=1.0)
    assert A1.pattern is A2.pattern
    u1 = fem.linear_solve(A1, b, method="direct")
    u2 = fem.linear_solve(A2, b, method="direct")
    assert fem.solver_cache_info()["misses"] == 2
    assert not jnp.allclose(u1, u2)
    # the same matrix re-created (new arrays, a new space and pattern object) reuses the LU
    A1b, bb = fem.Poisson(fem.FunctionSpace(fem.unit_square(7), "P1"))._system(kappa=1.0, f=1.0)
    assert A1b.pattern is not A1.pattern
    assert jnp.array_equal(fem.linear_solve(A1b, bb, method="direct"), u1)
    info = fem.solver_cache_info()
    assert (info["misses"], info["hits"], info["entries"]) == (2, 1, 2)
    # and so does the adjoint (a transposed solve with the same factorisation)
    jax.grad(lambda d: jnp.sum(fem.linear_solve(fem.SparseMatrix(d, A1.pattern), b)))(A1.data)
    assert fem.solver_cache_info()["misses"] == 2


def test_lu_cache_separates_patterns_with_equal_values():
    fem.clear_solver_cache()
    n = 3
    data = jnp.array([2.0, 1.0, 3.0, 4.0, 5.0])
    # two patterns with the same number of entries and the same values, different structure
    p1 = fem.SparsityPattern([0, 0, 1, 2, 2], [0, 1, 1, 0, 2], (n, n))
    p2 = fem.SparsityPattern([0, 1, 1, 2, 2], [0, 0, 1, 1, 2], (n, n))
    b = jnp.array([1.0, 2.0, 3.0])
    for p in (p1, p2):
        A = fem.SparseMatrix(data, p)
        x = fem.linear_solve(A, b, method="direct")
        assert jnp.allclose(A.todense() @ x, b, atol=1e-12)
    assert fem.solver_cache_info()["misses"] == 2


def test_lu_cache_is_bounded():
    fem.clear_solver_cache()
    V = fem.FunctionSpace(fem.unit_square(5), "P1")
    P = fem.Poisson(V)
    for i in range(12):
        P.solve(kappa=1.0 + i, f=1.0)
    info = fem.solver_cache_info()
    assert info["entries"] == info["maxsize"] < 12 and info["misses"] == 12


# ---------------------------------------------------------------------------- mesh files


def _quadratic(x):
    return x[0] ** 2 - x[0] * x[1] + 0.5 * x[1] ** 2 + 1.0


@pytest.mark.parametrize("ext", [".msh", ".xdmf", ".vtu"])
@pytest.mark.parametrize("element", ["P1", "P2"])
def test_write_mesh_round_trips_fields_of_any_element(tmp_path, ext, element):
    mesh = fem.l_shaped(2)
    V = fem.FunctionSpace(mesh, element)
    u = np.asarray(V.interpolate(_quadratic))  # exact at the dofs
    lin = mesh.points[:, 0] + 2 * mesh.points[:, 1]  # vertex values of a linear field
    cells = np.arange(mesh.ncells, dtype=float)
    path = tmp_path / f"field{ext}"
    fem.write_mesh(
        path, V, point_data={"u": u, "lin": lin, "w": u * (1 + 2j)}, cell_data={"c": cells}
    )
    back = meshio.read(path)
    pts = back.points[:, :2]
    kind = "triangle6" if element == "P2" else "triangle"
    assert [c.type for c in back.cells if c.type.startswith("triangle")] == [kind]
    assert len(pts) == V.ndofs
    np.testing.assert_allclose(back.point_data["u"], _quadratic(pts.T), atol=1e-12)
    np.testing.assert_allclose(back.point_data["lin"], pts[:, 0] + 2 * pts[:, 1], atol=1e-12)
    np.testing.assert_allclose(back.point_data["w_imag"], 2 * _quadratic(pts.T), atol=1e-12)
    np.testing.assert_allclose(back.cell_data["c"][0], cells)
    if element == "P2":  # VTK node order: corners, then the midpoints of edges 01, 12, 20
        c = back.cells[0].data
        for i in range(3):
            np.testing.assert_allclose(
                pts[c[:, 3 + i]], 0.5 * (pts[c[:, i]] + pts[c[:, (i + 1) % 3]])
            )
    m2 = fem.read_mesh(path)  # the linear mesh, either way
    assert np.allclose(m2.points, mesh.points) and np.array_equal(m2.cells, mesh.cells)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_msh_is_gmsh_41_and_p2_fields_go_to_vertices_elsewhere(tmp_path):
    mesh = fem.unit_square(4, cell_type="quad")
    V = fem.FunctionSpace(mesh, "Q2")
    u = np.asarray(V.interpolate(_quadratic))
    fem.write_mesh(tmp_path / "plain.msh", mesh)
    assert (tmp_path / "plain.msh").read_text().splitlines()[1].startswith("4.1 0 ")  # ASCII 4.1
    fem.write_mesh(tmp_path / "q2.msh", V, point_data={"u": u})
    assert (tmp_path / "q2.msh").read_bytes().splitlines()[1].startswith(b"4.1 1 ")  # binary 4.1
    back = meshio.read(tmp_path / "q2.msh")
    assert back.cells[0].type == "quad9"
    np.testing.assert_allclose(back.point_data["u"], _quadratic(back.points[:, :2].T), atol=1e-12)
    # a format without higher-order support (or higher_order=False): vertex values, linear cells
    for path, kw in ((tmp_path / "q2.vtk", {}), (tmp_path / "lin.vtu", {"higher_order": False})):
        fem.write_mesh(path, V, point_data={"u": u}, **kw)
        back = meshio.read(path)
        assert back.cells[0].type == "quad" and len(back.points) == mesh.npoints
        np.testing.assert_allclose(back.point_data["u"], _quadratic(mesh.points.T), atol=1e-12)
    with pytest.raises(ValueError, match="pass the FunctionSpace"):
        fem.write_mesh(tmp_path / "bad.vtu", mesh, point_data={"u": u})
    with pytest.raises(ValueError, match="1 \\(scalar\\), 2 or 3"):
        fem.write_mesh(tmp_path / "bad.msh", mesh, point_data={"t": np.zeros((mesh.npoints, 5))})


def test_unreadable_mesh_files_give_clear_errors(tmp_path):
    for ext in (".msh", ".vtu", ".xdmf"):
        empty = tmp_path / f"empty{ext}"
        empty.write_text("")
        with pytest.raises(
            ValueError, match=r"read_mesh: '.*empty\..*' is empty \(0 bytes\)"
        ) as info:
            fem.read_mesh(empty)
        _one_line(info.value)
    nodes = tmp_path / "nodes.msh"
    nodes.write_text(
        "$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n3\n1 0 0 0\n2 1 0 0\n3 0 1 0\n"
        "$EndNodes\n$Elements\n0\n$EndElements\n"
    )
    with pytest.raises(ValueError, match=r"nodes\.msh' contains no cells \(only 3 points\)"):
        fem.read_mesh(nodes)
    lines = tmp_path / "lines.vtu"
    meshio.write(
        lines,
        meshio.Mesh(
            np.random.default_rng(0).random((3, 3)), [("line", np.array([[0, 1], [1, 2]]))]
        ),
    )
    with pytest.raises(ValueError, match=r"has no triangle or quad cells \(found \['line'\]\)"):
        fem.read_mesh(lines)
    for name, text in (
        ("junk.msh", "$MeshFormat\n4.1 0 8\n$EndMeshFormat\n$Nodes\nfoo\n"),
        ("junk.vtu", "<VTKFile>nonsense"),
        ("junk.xdmf", "not xml"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match="is not a readable mesh file") as info:
            fem.read_mesh(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError):
        fem.read_mesh(tmp_path / "missing.msh")


# ---------------------------------------------------------------------------- API consistency


def test_keys_are_keyword_only(key):
    mesh = fem.unit_square(5)
    V = fem.FunctionSpace(mesh, "P1")
    assert fem.gaussian_random_field(mesh, key=key).shape == (mesh.npoints,)
    assert fem.matern_field(V, key=key, length_scale=0.3).shape == (V.ndofs,)
    assert fem.random_sensors(mesh, key=key, count=3).shape == (3,)
    assert fem.add_noise(jnp.zeros(3), 0.1, key=key).shape == (3,)
    calls = [
        lambda: fem.gaussian_random_field(key, mesh),
        lambda: fem.matern_field(key, V, length_scale=0.3),
        lambda: fem.random_sensors(key, mesh, count=3),
        lambda: fem.add_noise(key, jnp.zeros(3), 0.1),
        lambda: statfem.ula_statfem_case(key, 5),
        lambda: statfem.run_chain(statfem.ula(lambda x: jnp.sum(x**2), 0.1), key, jnp.zeros(2), 10),
    ]
    for call in calls:  # the old positional form fails loudly (Python's or pdegen's TypeError)
        with pytest.raises(TypeError, match="key|positional"):
            call()
    with pytest.raises(TypeError, match="key"):
        fem.gaussian_random_field((4, 4))


def test_problem_argument_accessors():
    V = fem.FunctionSpace(fem.unit_square(5), "P1")
    H = fem.Helmholtz(V, boundary="impedance")
    assert H.operator_arguments == ("k", "q") and H.rhs_arguments == ("f", "h", "k")
    op, rhs = H.split_arguments(dict(k=2.0, f=1.0, q=0.1))
    assert op == dict(k=2.0, q=0.1) and rhs == dict(k=2.0, f=1.0)
    A, b = H.operator(**op), H.rhs(**rhs)
    assert A.shape == (V.ndofs, V.ndofs) and b.shape == (V.ndofs,)
    assert fem.Poisson(V).operator_arguments == ("kappa", "reaction")
    assert fem.Poisson(V)._rhs_args == ("f",)  # the private names keep working
    with pytest.raises(TypeError, match="unexpected arguments"):
        H.split_arguments(dict(kk=1.0))
    with pytest.raises(TypeError, match="unexpected arguments"):
        fem.Poisson(V).residual(jnp.zeros(V.ndofs), kapa=1.0)


def test_default_float_dtype():
    assert default_float_dtype() == jnp.float64  # the tests run with float64
    assert fem.gaussian_random_field((4, 4), key=jax.random.key(0)).dtype == default_float_dtype()


def test_direct_solves_in_compiled_loops_do_not_leak_memory():
    """Thousands of direct solves of different matrices inside a compiled, vmapped loop (as in an
    MCMC run): the peak memory stops growing after the first run (SciPy's SuperLU objects are
    made, used and freed in one thread; freed in another thread they leaked ~0.1 MB each)."""
    import resource

    V = fem.FunctionSpace(fem.unit_square(16), "P1")
    problem = fem.Darcy(V, method="direct")

    @jax.jit
    def run(c):
        def body(c, k):
            u = jax.vmap(lambda kappa: problem.solve(kappa=kappa, f=1.0))(3.0 + c**2)
            return c + 1e-3 * jax.random.normal(k, c.shape), jnp.sum(u)

        return jax.lax.scan(body, c, jax.random.split(jax.random.key(0), 500))

    c0 = jnp.zeros((8, V.mesh.ncells))
    jax.block_until_ready(run(c0))
    first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    for _ in range(3):
        jax.block_until_ready(run(c0))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - first) / 1024
    assert grown_mb < 150, f"peak memory grew by {grown_mb:.0f} MB over 12000 more solves"


@pytest.mark.parametrize("element", ["P1", "P2"])
def test_integer_and_boolean_coefficients_are_real_numbers(element):
    # Integer values must not truncate the shape functions nor booleans round them.
    V = fem.FunctionSpace(fem.unit_square(6), element)
    P = fem.Poisson(V)
    n = V.ndofs
    u = P.solve(kappa=1.0, f=np.ones(n))
    assert float(jnp.max(u)) > 0.05
    assert jnp.allclose(P.solve(kappa=np.ones(n, np.int32), f=np.ones(n, np.int64)), u)
    assert jnp.allclose(P.solve(kappa=1.0, f=V.interpolate(lambda x: 1)), u)
    right = V.interpolate(lambda x: x[0] > 0.5)
    assert jnp.issubdtype(right.dtype, jnp.floating)
    assert jnp.allclose(
        P.solve(kappa=1.0, f=right),
        P.solve(kappa=1.0, f=V.interpolate(lambda x: jnp.where(x[0] > 0.5, 1.0, 0.0))),
    )
    assert float(fem.load(V, np.ones(n, int)).sum()) == pytest.approx(1.0)


def test_lumped_mass_constructions_refuse_p2():
    # P2 vertex shape functions integrate to zero: a lumped forcing covariance would be singular.
    V2 = fem.FunctionSpace(fem.unit_square(4), "P2")
    sensors = np.array([[0.3, 0.4], [0.6, 0.7]])
    with pytest.raises(ValueError, match="lumped mass of a P2 space.*mass='consistent'"):
        statfem.StatFEM(fem.Poisson(V2), sensors, mass="lumped")
    model = statfem.StatFEM(fem.Poisson(V2), sensors, mass="consistent")
    assert np.isfinite(float(model.log_prior(model.prior_mean())))
    with pytest.raises(ValueError, match="lumped mass of a P2 space"):
        fem.matern_field(V2, key=jax.random.key(0), length_scale=0.3)
    V1 = fem.FunctionSpace(fem.unit_square(4), "P1")
    assert bool(
        jnp.all(jnp.isfinite(fem.matern_field(V1, key=jax.random.key(0), length_scale=0.3)))
    )


def test_coefficients_are_checked_where_they_are_used():
    V2 = fem.FunctionSpace(fem.unit_square(4), "P2")
    # positive at every node, negative between them: the P2 interpolant dips below zero
    kappa = jnp.where(jnp.arange(V2.ndofs) < V2.mesh.npoints, 1.0, 0.01)
    with pytest.raises(ValueError, match="not at every quadrature point of the P2 space"):
        fem.Poisson(V2).solve(kappa=kappa, f=1.0)
    sensors = np.array([[0.3, 0.4], [0.6, 0.7]])
    V1 = fem.FunctionSpace(fem.unit_square(4), "P1")
    with pytest.raises(ValueError, match=r"coefficients\['kappa'\] must be real and positive"):
        statfem.StatFEM(fem.Poisson(V1), sensors, coefficients=dict(kappa=-1.0))
    with pytest.raises(ValueError, match=r"coefficients\['kappa'\]: expected a scalar"):
        statfem.StatFEM(fem.Poisson(V1), sensors, coefficients=dict(kappa=jnp.ones(7)))


def test_ignored_inputs_are_refused():
    V = fem.FunctionSpace(fem.unit_square(4), "P1")
    with pytest.raises(ValueError, match="no points"):
        V.point_observation(np.zeros((0, 2)))
    natural = fem.Poisson(V, dirichlet=None)
    with pytest.raises(TypeError, match="no Dirichlet boundary"):
        natural.solve(kappa=1.0, reaction=1.0, f=1.0, g=5.0)
    # the boundary quadrature is keyed by the facets selected, not by the selection object
    left = V.boundary_quadrature(lambda x: x[0] < 1e-9)
    assert V.boundary_quadrature(lambda x: x[0] < 1e-9) is left
    facets = np.array(V.boundary_facets(lambda x: x[0] < 1e-9))
    assert V.boundary_quadrature(facets) is left
    facets[:] = V.boundary_facets(lambda x: x[1] < 1e-9)
    assert float(jnp.sum(jnp.asarray(V.boundary_quadrature(facets).dx))) == pytest.approx(1.0)
    assert V.boundary_quadrature(facets) is not left


def test_read_mesh_warns_of_unmerged_duplicate_points(tmp_path):
    left = fem.rectangle(3, 3, x1=0.5)
    right = fem.rectangle(3, 3, x0=0.5, x1=1.0)
    pts = np.concatenate([left.points, right.points])
    cells = np.concatenate([left.cells, right.cells + left.npoints])
    path = tmp_path / "seam.vtu"
    meshio.write(path, meshio.Mesh(np.c_[pts, np.zeros(len(pts))], [("triangle", cells)]))
    with pytest.warns(UserWarning, match="3 points that repeat"):
        fem.read_mesh(path)
    fem.write_mesh(tmp_path / "one.vtu", fem.unit_square(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fem.read_mesh(tmp_path / "one.vtu")
