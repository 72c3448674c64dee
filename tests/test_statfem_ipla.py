"""IPLA: joint estimation of a forcing amplitude / a diffusivity scale and the latent solution,
against the truth and the maximum marginal likelihood estimate (exact, linear-Gaussian)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from test_statfem_model import make_model

from pdegen.fem import statfem


def mmle(log_lik, bracket):
    f = jax.jit(log_lik)
    res = scipy.optimize.minimize_scalar(lambda t: -float(f(t)), bracket=bracket, tol=1e-10)
    t, e = res.x, 1e-3
    curvature = (float(f(t + e)) - 2 * float(f(t)) + float(f(t - e))) / e**2
    return t, 1.0 / np.sqrt(-curvature)


@pytest.fixture(scope="module")
def forcing_problem():
    theta_true = 2.0
    model = make_model(
        n=9,
        m=20,
        sigma_f=0.05,
        sigma_e=2e-3,
        sigma_d=0.0,
        rho=1.0,
        coefficients=dict(kappa=1.0, f=theta_true),
    )
    x = model.sample_prior(key=jax.random.key(0))
    y = model.simulate_data(x, num_replicates=5, key=jax.random.key(1))
    est, sd = mmle(
        lambda t: statfem.log_marginal_likelihood(model.replace(coefficients=dict(f=t)), y),
        (1.0, 3.0),
    )
    return dict(model=model, y=y, theta_true=theta_true, mmle=est, mmle_sd=sd)


@pytest.mark.parametrize(
    "size",
    [
        dict(particles=(4, 16), steps=1200),
        pytest.param(dict(particles=(4, 40), steps=2000), marks=pytest.mark.slow),
    ],
)
def test_ipla_recovers_the_forcing_and_concentrates_at_the_mmle(forcing_problem, size):
    p = forcing_problem
    model, y = p["model"], p["y"]
    assert abs(p["mmle"] - p["theta_true"]) < 3 * p["mmle_sd"]  # the data identify theta

    # theta-independent normalisers (log det A, log det G) drop out for a forcing parameter
    def energy(theta, x):
        return model.replace(coefficients=dict(f=theta)).energy(x, y)

    pre = statfem.prior_preconditioner(model, dense=True)  # C0 does not depend on the forcing
    x_ref = model.prior_mean()
    lam = float(
        statfem.largest_curvature(lambda x: energy(jnp.asarray(2.0), x), x_ref, preconditioner=pre)
    )
    g = jax.grad(lambda t: energy(t, x_ref))
    c = float((g(2.001) - g(1.999)) / 0.002)  # curvature in theta per particle
    out = {}
    steps = size["steps"]
    for N in size["particles"]:
        particles = model.sample_prior(N, key=jax.random.key(3))
        out[N] = statfem.run_ipla(
            energy,
            1.0,
            particles,
            steps,
            0.5 / lam,
            key=jax.random.key(4),
            theta_step_size=0.5 / c,
            preconditioner=pre,
            average_fraction=0.6,
        )
    small, big = (out[N] for N in size["particles"])
    assert big.theta_trajectory.shape == (steps + 1,)
    assert float(big.theta_trajectory[0]) == 1.0
    # the stated tolerance: within 0.15 (7.5%) of the truth
    assert abs(float(big.estimate) - p["theta_true"]) < 0.15
    # theta's stationary law is proportional to p(y | theta)^N: sd ~ mmle_sd / sqrt(N)
    for N, r in out.items():
        assert 0.6 < float(r.theta_std) / (p["mmle_sd"] / np.sqrt(N)) < 1.6, (N, float(r.theta_std))
    assert float(big.theta_std) < 0.75 * float(small.theta_std)
    assert abs(float(big.estimate) - p["mmle"]) < 2.5 * float(big.theta_std)
    assert abs(float(big.estimate) - p["mmle"]) < 0.2 * p["mmle_sd"]


@pytest.mark.slow
@pytest.mark.parametrize("size", [dict(particles=10, steps=1500)])
def test_ipla_estimates_a_diffusivity_scale(size):
    # slow: the particles need ~1000 steps to follow theta from the start; the fast suite checks
    # IPLA on the forcing amplitude
    theta_true = 0.5
    model = make_model(
        n=9,
        m=20,
        sigma_f=0.05,
        sigma_e=2e-3,
        sigma_d=0.0,
        rho=1.0,
        coefficients=dict(kappa=float(np.exp(theta_true)), f=1.0),
    )
    x = model.sample_prior(key=jax.random.key(5))
    y = model.simulate_data(x, num_replicates=5, key=jax.random.key(6))
    est, sd = mmle(
        lambda t: statfem.log_marginal_likelihood(
            model.replace(coefficients=dict(kappa=jnp.exp(t))), y
        ),
        (0.0, 1.0),
    )

    # here log |det A(theta)| matters: use the normalised log joint density
    def energy(theta, x):
        return -model.replace(coefficients=dict(kappa=jnp.exp(theta))).log_joint(x, y)

    start = model.replace(coefficients=dict(kappa=1.0))
    pre = statfem.prior_preconditioner(start, dense=True)
    lam = float(
        statfem.largest_curvature(lambda x: energy(jnp.asarray(0.0), x), x, preconditioner=pre)
    )
    g = jax.grad(lambda t: energy(t, x))
    c = float((g(0.501) - g(0.499)) / 0.002)
    N = size["particles"]
    res = statfem.run_ipla(
        energy,
        0.0,
        start.sample_prior(N, key=jax.random.key(8)),
        size["steps"],
        0.2 / lam,
        key=jax.random.key(7),
        theta_step_size=0.5 / c,
        preconditioner=pre,
    )
    assert abs(float(res.estimate) - theta_true) < 0.15
    assert abs(float(res.estimate) - est) < 3 * sd / np.sqrt(N)


def test_ipla_estimates_three_parameters_and_concentrates_at_the_mmle():
    """rho, sigma_d and ell_d at once (log scale), their step preconditioned by the inverse
    Hessian of the negative log marginal likelihood at the starting point (a full matrix: sigma_d
    and ell_d trade off), the particles by the posterior covariance there. The stationary law of
    theta is proportional to p(y | theta)^N: its spread is the MMLE's asymptotic sd / sqrt(N) (within
    a factor 0.7-1.8) and the estimate lies within 3 / sqrt(N) of the MMLE in its Mahalanobis
    distance, closer at 128 particles than at 8."""
    from pdegen import mcmc

    def at(model, t):
        return model.replace(rho=jnp.exp(t[0]), sigma_d=jnp.exp(t[1]), ell_d=jnp.exp(t[2]))

    truth = jnp.log(jnp.array([0.9, 5e-3, 0.3]))
    base = make_model(n=9, m=20, sigma_f=0.05, sigma_e=2e-3)
    x = at(base, truth).sample_prior(key=jax.random.key(0))
    y = at(base, truth).simulate_data(x, num_replicates=10, key=jax.random.key(1))

    def nlml(t):
        return -statfem.log_marginal_likelihood(at(base, t), y)

    t0 = jnp.log(jnp.array([1.0, 1e-2, 0.2]))
    mmle_, _ = jax.jit(lambda t: mcmc.lbfgs_minimise(nlml, t, 200))(t0)
    L = mcmc.dense_laplace(nlml, mmle_).precision_cholesky
    cov = np.linalg.inv(np.asarray(L @ L.T))
    sd = np.sqrt(np.diagonal(cov))
    assert np.all(np.abs(np.asarray(mmle_ - truth)) < 3 * sd)  # the data identify theta

    def energy(t, x):
        return -at(base, t).log_joint(x, y)

    L0 = mcmc.dense_laplace(nlml, t0).precision_cholesky
    gamma = 0.2 * np.linalg.inv(np.asarray(L0 @ L0.T))
    start = at(base, t0)
    pre = statfem.posterior_preconditioner(start, y)
    dist = {}
    for N in (8, 32, 128):
        particles = statfem.exact_posterior(start, y).sample(N, key=jax.random.key(3))
        res = statfem.run_ipla(
            energy,
            t0,
            particles,
            1200,
            0.1,
            key=jax.random.key(4),
            theta_step_size=gamma,
            preconditioner=pre,
            average_fraction=0.5,
        )
        spread = np.asarray(res.theta_std) * np.sqrt(N) / sd
        assert np.all((spread > 0.7) & (spread < 1.8)), (N, spread)
        d = np.asarray(res.estimate - mmle_)
        dist[N] = float(np.sqrt(d @ np.linalg.solve(cov, d)))
        assert dist[N] < 3.0 / np.sqrt(N), (N, dist[N])
    assert dist[128] < dist[8], dist


@pytest.mark.slow
def test_ipla_estimates_four_parameters_along_a_ridge():
    """The forcing amplitude joins rho, sigma_d and ell_d: the data fix mostly rho * f, so the
    marginal likelihood has a ridge (its curvature there 0.5 against 300 for f given the particles)
    and the parameter step must be stable for the particles' curvature (the saddle-free inverse
    Hessian of the mean particle energy at the start). In 20000 steps the estimate still approaches
    the MMLE as the particles grow (Mahalanobis distance falling with N, below 0.3 at 128); the
    spread along the ridge stays below its stationary value (the parameter chain moves along it
    slowly, as EM does when most of the information is missing)."""
    from pdegen import mcmc

    def at(model, t):
        return model.replace(
            coefficients=dict(model.coefficients, f=t[0]),
            rho=jnp.exp(t[1]),
            sigma_d=jnp.exp(t[2]),
            ell_d=jnp.exp(t[3]),
        )

    truth = jnp.array([1.0, np.log(0.9), np.log(5e-3), np.log(0.3)])
    base = make_model(n=9, m=20, sigma_f=0.05, sigma_e=2e-3)
    x = at(base, truth).sample_prior(key=jax.random.key(0))
    y = at(base, truth).simulate_data(x, num_replicates=10, key=jax.random.key(1))

    def nlml(t):
        return -statfem.log_marginal_likelihood(at(base, t), y)

    def energy(t, x):
        return -at(base, t).log_joint(x, y)

    t0 = jnp.array([0.8, 0.0, np.log(1e-2), np.log(0.2)])
    mmle_, _ = jax.jit(lambda t: mcmc.lbfgs_minimise(nlml, t, 200))(t0)
    L = mcmc.dense_laplace(nlml, mmle_).precision_cholesky
    cov = np.linalg.inv(np.asarray(L @ L.T))
    sd = np.sqrt(np.diagonal(cov))
    start = at(base, t0)
    pre = statfem.posterior_preconditioner(start, y)
    dist = {}
    for N in (8, 32, 128):
        particles = statfem.exact_posterior(start, y).sample(N, key=jax.random.key(3))
        Lc = mcmc.dense_laplace(
            lambda t, p=particles: jnp.mean(jax.vmap(lambda x: energy(t, x))(p)), t0
        ).precision_cholesky
        res = statfem.run_ipla(
            energy,
            t0,
            particles,
            20000,
            0.1,
            key=jax.random.key(4),
            theta_step_size=0.2 * np.linalg.inv(np.asarray(Lc @ Lc.T)),
            preconditioner=pre,
            average_fraction=0.5,
        )
        spread = np.asarray(res.theta_std)[2:] * np.sqrt(N) / sd[2:]
        assert np.all((spread > 0.7) & (spread < 1.8)), (N, spread)
        d = np.asarray(res.estimate - mmle_)
        dist[N] = float(np.sqrt(d @ np.linalg.solve(cov, d)))
    assert dist[128] < dist[32] < dist[8] and dist[128] < 0.3, dist


def test_ipla_bad_input():
    with pytest.raises(ValueError, match="step_size"):
        statfem.ipla(lambda t, x: 0.0, 0.0)
    with pytest.raises(ValueError, match="symmetric"):
        statfem.ipla(lambda t, x: 0.0, 0.1, theta_step_size=np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive definite"):
        statfem.ipla(lambda t, x: 0.0, 0.1, theta_step_size=np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="theta_step_size has shape"):
        statfem.ipla(lambda t, x: 0.0, 0.1, theta_step_size=np.eye(2)).init(
            jnp.zeros(3), jnp.zeros((2, 4))
        )
    with pytest.raises(ValueError, match="theta_step_size"):
        statfem.ipla(lambda t, x: 0.0, 0.1, theta_step_size=-1.0)
    kernel = statfem.ipla(lambda t, x: jnp.sum(x**2) + t**2, 0.1)
    with pytest.raises(ValueError, match="particles"):
        kernel.init(0.0, jnp.zeros(3))
    with pytest.raises(ValueError, match="average_fraction"):
        statfem.run_ipla(
            lambda t, x: jnp.sum(x**2),
            0.0,
            jnp.zeros((2, 3)),
            10,
            0.1,
            key=jax.random.key(0),
            average_fraction=0.0,
        )
    with pytest.raises(TypeError, match="preconditioner"):
        statfem.ipla(lambda t, x: 0.0, 0.1, preconditioner=np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        statfem.run_ipla(
            lambda t, x: jnp.sum(x**2), jnp.nan, jnp.zeros((2, 3)), 10, 0.1, key=jax.random.key(0)
        )
    # a parameter step far past the curvature's stability limit: stopped, not NaN estimates
    from pdegen._errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="non-finite at step"):
        statfem.run_ipla(
            lambda t, x: jnp.sum(x**2) + 50.0 * t**2,
            1.0,
            jnp.zeros((2, 3)),
            200,
            0.01,
            key=jax.random.key(0),
            theta_step_size=1.0,
        )


def test_ipla_rejects_a_parameter_step_of_the_wrong_shape():
    with pytest.raises(ValueError, match="theta_step_size"):
        statfem.ipla(lambda t, x: jnp.sum(x**2), 0.1, theta_step_size=-1.0)
    kernel = statfem.ipla(lambda t, x: jnp.sum(x**2), 0.1, theta_step_size=jnp.ones(3))
    with pytest.raises(ValueError, match="shape"):
        kernel.init(jnp.zeros(2), jnp.zeros((4, 5)))
