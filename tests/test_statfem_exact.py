"""Exact linear-Gaussian statFEM results against independent dense computations; marginal
likelihood and hyperparameter estimation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from test_statfem_model import dense_parts, make_model

from pdegen import fem
from pdegen.fem import statfem


@pytest.fixture(scope="module")
def setup():
    model = make_model(n=9, m=12, mass="consistent")
    key = jax.random.key(3)
    k1, k2 = jax.random.split(key)
    x = model.sample_prior(key=k1)
    y = model.simulate_data(x, num_replicates=3, key=k2)
    return model, y


def test_exact_posterior_matches_dense_precision_form(setup):
    model, y = setup
    Af, bf, G, H, S = dense_parts(model, "consistent")
    rho = float(model.rho)
    Y = np.asarray(y)
    Q0 = Af.T @ np.linalg.solve(G, Af)
    Q = Q0 + Y.shape[0] * rho**2 * H.T @ np.linalg.solve(S, H)
    C = np.linalg.inv(Q)
    mean = C @ (Af.T @ np.linalg.solve(G, bf) + rho * H.T @ np.linalg.solve(S, Y.sum(0)))
    post = statfem.exact_posterior(model, y)
    np.testing.assert_allclose(np.asarray(post.mean), mean, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(post.covariance()), C, rtol=1e-6, atol=1e-9 * np.abs(C).max()
    )
    np.testing.assert_allclose(np.asarray(post.variance(block_size=16)), np.diagonal(C), rtol=1e-6)
    Ainv = np.linalg.inv(Af)
    np.testing.assert_allclose(
        np.asarray(post.prior_covariance()),
        Ainv @ G @ Ainv.T,
        rtol=1e-6,
        atol=1e-9 * np.abs(C).max(),
    )
    np.testing.assert_allclose(
        np.asarray(statfem.posterior_precision(model, y)), Q, rtol=1e-8, atol=1e-8 * np.abs(Q).max()
    )
    v = np.random.default_rng(0).normal(size=model.dim)
    np.testing.assert_allclose(
        np.asarray(post.cov_apply(jnp.asarray(v))),
        C @ v,
        rtol=1e-6,
        atol=1e-9 * np.abs(C @ v).max(),
    )


def test_matheron_samples_have_posterior_moments(setup, getkey):
    model, y = setup
    post = statfem.exact_posterior(model, y)
    N = 1500
    xs = np.asarray(post.sample(N, key=getkey()))
    C = np.asarray(post.covariance())
    sd = np.sqrt(np.diagonal(C))
    assert np.max(np.abs(xs.mean(0) - np.asarray(post.mean)) / (sd / np.sqrt(N))) < 5.0
    assert np.max(np.abs(xs.var(0) / sd**2 - 1)) < 5 * np.sqrt(2 / N)


def test_log_marginal_likelihood_matches_stacked_gaussian(setup):
    model, y = setup
    Af, bf, G, H, S = dense_parts(model, "consistent")
    rho = float(model.rho)
    Y = np.asarray(y)
    J, m = Y.shape
    Ainv = np.linalg.inv(Af)
    C0 = Ainv @ G @ Ainv.T
    mu = np.tile(rho * H @ Ainv @ bf, J)
    cov = np.kron(np.ones((J, J)), rho**2 * H @ C0 @ H.T) + np.kron(np.eye(J), S)
    ref = scipy.stats.multivariate_normal(mu, cov).logpdf(Y.ravel())
    assert float(statfem.log_marginal_likelihood(model, y)) == pytest.approx(ref, rel=1e-9)
    # one replicate
    ref1 = scipy.stats.multivariate_normal(mu[:m], rho**2 * H @ C0 @ H.T + S).logpdf(Y[0])
    assert float(statfem.log_marginal_likelihood(model, y[0])) == pytest.approx(ref1, rel=1e-9)


def test_log_marginal_likelihood_gradient_matches_finite_differences(setup):
    model, y = setup
    kq = model.coefficients["kappa"]

    def f(p):
        return statfem.log_marginal_likelihood(
            model.replace(rho=p[0], coefficients=dict(kappa=jnp.exp(p[1]) * kq)), y
        )

    p0 = jnp.array([float(model.rho), 0.05])
    g = np.asarray(jax.jit(jax.grad(f))(p0))
    f = jax.jit(f)
    for i in range(2):
        e = np.zeros(2)
        e[i] = 1e-6
        fd = (float(f(p0 + e)) - float(f(p0 - e))) / 2e-6
        assert abs(g[i] - fd) <= 1e-6 * max(abs(g[i]), 1.0)


def test_fit_hyperparameters_recovers_rho_and_noise(getkey):
    truth = dict(rho=1.3, sigma_e=4e-3, sigma_d=2e-3, ell_d=0.3)
    model = make_model(n=9, m=25, seed=1, sigma_f=0.02, mass="lumped", **truth)
    x = model.sample_prior(key=getkey())
    y = model.simulate_data(x, num_replicates=40, key=getkey())
    start = model.replace(rho=0.7, sigma_e=2e-2, sigma_d=1e-2, ell_d=0.15)
    fit = statfem.fit_hyperparameters(start, y, num_steps=800, learning_rate=0.05)
    lml = np.asarray(fit.log_marginal_likelihood)
    assert lml[-1] > lml[0]
    assert float(statfem.log_marginal_likelihood(fit.model, y)) == pytest.approx(
        lml[-1], rel=1e-6, abs=1e-6
    )
    assert abs(float(fit.parameters["rho"]) / truth["rho"] - 1) < 0.05
    assert abs(float(fit.parameters["sigma_e"]) / truth["sigma_e"] - 1) < 0.15
    # the fitted values are a stationary point: the gradient of the log marginal likelihood vanishes
    g = jax.grad(lambda r: statfem.log_marginal_likelihood(fit.model.replace(rho=r), y))(
        fit.model.rho
    )
    assert abs(float(g)) * float(fit.model.rho) < 1e-2


def test_ula_stationary_covariance_formula():
    # for a scalar target N(0, 1/q) ULA is the AR(1) chain x' = (1 - h q) x + sqrt(2h) z
    q, h = 4.0, 0.1
    C = statfem.ula_stationary_covariance(jnp.array([[q]]), h)
    a = 1 - h * q
    assert float(C[0, 0]) == pytest.approx(2 * h / (1 - a**2), rel=1e-12)


def test_exact_bad_input():
    model = make_model(observation=jax.nn.sigmoid)
    with pytest.raises(ValueError, match="linear observation"):
        statfem.exact_posterior(model, jnp.zeros(model.num_sensors))
    model = make_model()
    with pytest.raises(ValueError, match="parameters"):
        statfem.fit_hyperparameters(model, jnp.zeros(model.num_sensors), parameters=("kappa",))
    with pytest.raises(ValueError, match="initial sigma_d"):
        statfem.fit_hyperparameters(model.replace(sigma_d=0.0), jnp.zeros(model.num_sensors))
    with pytest.raises(TypeError, match="StatFEM"):
        statfem.exact_posterior(fem.unit_square(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="square"):
        statfem.dense_preconditioner(jnp.zeros(3))
