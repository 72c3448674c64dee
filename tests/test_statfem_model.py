"""statFEM model: energies and densities against independent dense computations, finite-difference
gradients (in the state and in every parameter), prior sampling, Dirichlet handling, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from pdegen import fem
from pdegen.fem import statfem


def kappa_fn(x):
    return 1.0 + 0.3 * jnp.sin(3.0 * x[0]) * jnp.cos(2.0 * x[1])


def make_model(n=9, m=12, seed=0, **kw):
    V = fem.FunctionSpace(fem.unit_square(n), "P1")
    rng = np.random.default_rng(seed)
    sensors = rng.uniform(0.1, 0.9, size=(m, 2))
    params = dict(
        coefficients=dict(kappa=kappa_fn, f=1.0),
        sigma_f=0.2,
        sigma_e=2e-3,
        sigma_d=3e-3,
        ell_d=0.3,
        rho=0.9,
    )
    params.update(kw)
    return statfem.StatFEM(fem.Poisson(V), sensors, **params)


def dense_parts(model, mass_kind="lumped"):
    """A_ff, b_f, G_ff, H_f, S from the core assembly, by hand (NumPy)."""
    V = model.problem.space
    free = model.free_dofs
    kq = V.at_quadrature(kappa_fn)
    A = np.asarray(fem.stiffness(V, kq).todense())
    b = np.asarray(fem.load(V, model.coefficients["f"]))
    Af, bf = A[np.ix_(free, free)], b[free]
    s2 = float(model.sigma_f) ** 2
    if mass_kind == "lumped":
        G = s2 * np.diag(np.asarray(fem.lumped_mass(V))[free])
    else:
        G = s2 * np.asarray(fem.mass(V).todense())[np.ix_(free, free)]
    H = np.asarray(V.point_observation(np.asarray(model.sensors)).todense())[:, free]
    pts = np.asarray(model.sensors)
    r2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    S = float(model.sigma_d) ** 2 * np.exp(-0.5 * r2 / float(model.ell_d) ** 2) + float(
        model.sigma_e
    ) ** 2 * np.eye(len(pts))
    return Af, bf, G, H, S


@pytest.mark.parametrize("mass_kind", ["lumped", "consistent"])
def test_log_densities_match_dense_gaussians(mass_kind, getkey):
    model = make_model(mass=mass_kind)
    Af, bf, G, H, S = dense_parts(model, mass_kind)
    m0 = np.linalg.solve(Af, bf)
    Ainv = np.linalg.inv(Af)
    C0 = Ainv @ G @ Ainv.T
    x = np.asarray(model.sample_prior(key=getkey()))
    y = np.asarray(model.simulate_data(jnp.asarray(x), num_replicates=3, key=getkey()))
    lp = float(model.log_prior(jnp.asarray(x)))
    assert lp == pytest.approx(
        scipy.stats.multivariate_normal(m0, C0).logpdf(x), rel=1e-9, abs=1e-7
    )
    ll = float(model.log_likelihood(jnp.asarray(x), jnp.asarray(y)))
    ref = sum(scipy.stats.multivariate_normal(float(model.rho) * H @ x, S).logpdf(yj) for yj in y)
    assert ll == pytest.approx(ref, rel=1e-9)
    # the energy is the negative log posterior up to a constant
    r = Af @ x - bf
    phi = 0.5 * r @ np.linalg.solve(G, r) + sum(
        0.5 * (yj - float(model.rho) * H @ x) @ np.linalg.solve(S, yj - float(model.rho) * H @ x)
        for yj in y
    )
    assert float(model.energy(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(phi, rel=1e-9)
    np.testing.assert_allclose(np.asarray(model.prior_mean()), m0, rtol=1e-9, atol=1e-12)


def _fd_check(f, x, v, eps=1e-6):
    g = jax.grad(f)(x)
    exact = float(jnp.vdot(g, v))
    fd = (float(f(x + eps * v)) - float(f(x - eps * v))) / (2 * eps)
    return exact, fd


@pytest.mark.parametrize(
    "variant",
    [
        dict(mass="lumped"),
        dict(mass="consistent"),
        dict(mass="lumped", kernel="matern32", ell_f=0.3),
        dict(observation=jax.nn.sigmoid),
    ],
)
def test_energy_gradient_in_state_matches_finite_differences(variant, getkey):
    model = make_model(**variant)
    x = model.prior_mean() + 0.01 * jax.random.normal(getkey(), (model.dim,))
    y = model.simulate_data(x, num_replicates=2, key=getkey())
    U = model.energy_fn(y)
    for _ in range(3):
        v = jax.random.normal(getkey(), (model.dim,))
        exact, fd = _fd_check(U, x, v, eps=1e-5)
        assert abs(exact - fd) <= 1e-6 * max(abs(exact), 1e-3)


NAMES = ("rho", "sigma_d", "ell_d", "sigma_e", "sigma_f", "ell_f", "kappa_scale", "forcing")


def test_log_joint_gradient_in_parameters_matches_finite_differences(getkey):
    model = make_model(kernel="matern32", ell_f=0.3)
    x = model.sample_prior(key=getkey())
    y = model.simulate_data(x, num_replicates=2, key=getkey())
    kq = model.coefficients["kappa"]

    @jax.jit
    def f(p):
        named = dict(zip(NAMES, p))
        mod = model.replace(
            coefficients=dict(kappa=jnp.exp(named["kappa_scale"]) * kq, f=named["forcing"]),
            **{k: named[k] for k in NAMES[:6]},
        )
        return mod.log_joint(x, y)

    p0 = jnp.array([float(getattr(model, k)) for k in NAMES[:6]] + [0.1, 1.3])
    g = np.asarray(jax.jit(jax.grad(f))(p0))
    for i, name in enumerate(NAMES):
        eps = 1e-6 * max(abs(float(p0[i])), 1.0)
        e = jnp.zeros(len(NAMES)).at[i].set(eps)
        fd = (float(f(p0 + e)) - float(f(p0 - e))) / (2 * eps)
        assert abs(g[i] - fd) <= 1e-6 * max(abs(g[i]), 1.0), (name, g[i], fd)


@pytest.mark.parametrize(
    "variant",
    [dict(mass="lumped"), dict(mass="consistent"), dict(kernel="squared_exponential", ell_f=0.25)],
)
def test_prior_samples_have_the_prior_covariance(variant, getkey):
    model = make_model(n=7, **variant)
    N = 1500
    xs = np.asarray(model.sample_prior(N, key=getkey()))
    post = statfem.exact_posterior(model, jnp.zeros(model.num_sensors))
    C0 = np.asarray(post.prior_covariance())
    if "kernel" in variant:
        # independent construction of G = sigma_f^2 M K M on the free dofs
        V = model.problem.space
        free = model.free_dofs
        Mdiag = np.asarray(fem.lumped_mass(V))[free]
        pts = V.dof_coordinates[free]
        r2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
        K = np.exp(-0.5 * r2 / 0.25**2)
        Af = np.asarray(fem.stiffness(V, V.at_quadrature(kappa_fn)).todense())[np.ix_(free, free)]
        G = float(model.sigma_f) ** 2 * (Mdiag[:, None] * K * Mdiag[None, :])
        Ainv = np.linalg.inv(Af)
        np.testing.assert_allclose(C0, Ainv @ G @ Ainv.T, rtol=1e-6, atol=1e-8 * np.abs(C0).max())
    var = np.var(xs, axis=0)
    rel = np.abs(var / np.diagonal(C0) - 1.0)
    assert rel.max() < 5 * np.sqrt(2.0 / N)
    mean_err = np.abs(xs.mean(0) - np.asarray(model.prior_mean())) / np.sqrt(np.diagonal(C0) / N)
    assert mean_err.max() < 5.0


def test_dirichlet_dofs_are_fixed_and_lifted():
    V = fem.FunctionSpace(fem.unit_square(8), "P1")
    problem = fem.Poisson(V, dirichlet=lambda x: x[0] + 2 * x[1])
    model = statfem.StatFEM(
        problem,
        np.array([[0.3, 0.4], [0.6, 0.7]]),
        coefficients=dict(kappa=1.0, f=1.0),
        sigma_f=0.1,
    )
    assert model.dim == V.ndofs - V.boundary_dofs().size
    u = model.embed(model.prior_mean())
    ref = problem.solve(kappa=1.0, f=1.0)
    np.testing.assert_allclose(np.asarray(u), np.asarray(ref), atol=1e-10)
    np.testing.assert_allclose(np.asarray(model.restrict(u)), np.asarray(model.prior_mean()))


def test_sparse_logabsdet_and_gradient(getkey):
    V = fem.FunctionSpace(fem.unit_square(6), "P1")
    A = fem.stiffness(V) + fem.mass(V, 3.0)
    dense = np.asarray(A.todense())
    assert float(statfem.sparse_logabsdet(A)) == pytest.approx(
        np.linalg.slogdet(dense)[1], rel=1e-12
    )
    g = jax.grad(lambda d: statfem.sparse_logabsdet(fem.SparseMatrix(d, A.pattern)))(A.data)
    inv = np.linalg.inv(dense)
    np.testing.assert_allclose(np.asarray(g), inv[A.pattern.cols, A.pattern.rows], rtol=1e-10)


def test_kernel_matrix_values():
    pts = jnp.array([[0.0, 0.0], [0.3, 0.4]])
    r = 0.5
    for kind, ref in [
        ("squared_exponential", np.exp(-0.5 * r**2 / 0.2**2)),
        ("matern12", np.exp(-r / 0.2)),
        ("matern32", (1 + np.sqrt(3) * r / 0.2) * np.exp(-np.sqrt(3) * r / 0.2)),
        (
            "matern52",
            (1 + np.sqrt(5) * r / 0.2 + 5 * r**2 / (3 * 0.04)) * np.exp(-np.sqrt(5) * r / 0.2),
        ),
    ]:
        K = statfem.kernel_matrix(pts, pts, sigma=2.0, length=0.2, kind=kind)
        assert float(K[0, 1]) == pytest.approx(4.0 * ref, rel=1e-12)
        assert float(K[0, 0]) == pytest.approx(4.0)


def test_bad_input_errors():
    V = fem.FunctionSpace(fem.unit_square(6), "P1")
    P = fem.Poisson(V)
    good = np.array([[0.5, 0.5]])
    with pytest.raises(TypeError, match="problem"):
        statfem.StatFEM(V, good)
    with pytest.raises(ValueError, match="sensors"):
        statfem.StatFEM(P, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="outside"):
        statfem.StatFEM(P, np.array([[1.5, 0.5]]))
    with pytest.raises(ValueError, match="sigma_e"):
        statfem.StatFEM(P, good, sigma_e=0.0)
    with pytest.raises(ValueError, match="sigma_d"):
        statfem.StatFEM(P, good, sigma_d=-1.0)
    with pytest.raises(ValueError, match="mass"):
        statfem.StatFEM(P, good, mass="diagonal")
    with pytest.raises(ValueError, match="kernel"):
        statfem.StatFEM(P, good, kernel="gauss")
    with pytest.raises(ValueError, match="unknown coefficients"):
        statfem.StatFEM(P, good, coefficients=dict(k=1.0))
    with pytest.raises(ValueError, match="NaN"):
        statfem.StatFEM(P, good, coefficients=dict(f=jnp.full(V.ndofs, jnp.nan)))
    model = statfem.StatFEM(P, good, coefficients=dict(f=1.0))
    with pytest.raises(ValueError, match="x must have shape"):
        model.energy(jnp.zeros(3), jnp.zeros(1))
    with pytest.raises(ValueError, match="y must have shape"):
        model.energy(jnp.zeros(model.dim), jnp.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        model.energy(jnp.zeros(model.dim), jnp.array([jnp.nan]))
    with pytest.raises(ValueError, match="unknown fields"):
        model.replace(sigma=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample_prior(0, key=jax.random.key(0))
    H = fem.Helmholtz(V, boundary="impedance")
    with pytest.raises(TypeError, match="complex"):
        statfem.StatFEM(H, good)
