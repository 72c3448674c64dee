"""Langevin kernels on the linear-Gaussian statFEM posterior: moments against exact values with
tolerances from the effective sample size; ULA against its own (biased) stationary law;
step-size adaptation; ESS on a chain with known autocorrelation; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_statfem_model import make_model

from pdegen.fem import statfem


@pytest.fixture(scope="module")
def problem():
    model = make_model(n=9, m=12, sigma_f=0.2, sigma_e=5e-3)
    x = model.sample_prior(key=jax.random.key(0))
    y = model.simulate_data(x, num_replicates=2, key=jax.random.key(1))
    post = statfem.exact_posterior(model, y)
    Q = np.asarray(statfem.posterior_precision(model, y))
    return dict(
        model=model,
        y=y,
        post=post,
        C=np.asarray(post.covariance()),
        Q=Q,
        C0=np.asarray(post.prior_covariance()),
        U=model.energy_fn(y),
    )


def check_moments(result, ref_mean, ref_var, k=5.0):
    """|mean error| < k sd / sqrt(ESS) and |variance ratio - 1| < k sqrt(2 / ESS), per coordinate."""
    mean, var = statfem.pool_chains(result)
    ess = np.asarray(statfem.effective_sample_size(result.samples))
    assert ess.min() > 50, f"chain too short for a meaningful check (min ESS {ess.min():.1f})"
    z = (np.asarray(mean) - ref_mean) / np.sqrt(ref_var / ess)
    rel = np.abs(np.asarray(var) / ref_var - 1.0)
    assert np.abs(z).max() < k, f"mean off by {np.abs(z).max():.2f} Monte Carlo standard errors"
    assert np.all(rel < k * np.sqrt(2.0 / ess)), (
        f"variance off by {rel.max():.3f} (ESS {ess.min():.0f})"
    )
    return ess


def start(problem, key, n=8):
    return problem["post"].sample(n, key=key)


def test_ula_matches_its_own_stationary_law(problem):
    Q = problem["Q"]
    h = 1.0 / np.linalg.eigvalsh(Q).max()
    kernel = statfem.ula(problem["U"], h)
    res = statfem.run_chains(
        kernel, start(problem, jax.random.key(3)), 1500, 100, key=jax.random.key(2), thin=5
    )
    S = np.asarray(statfem.ula_stationary_covariance(jnp.asarray(Q), h))
    check_moments(res, np.asarray(problem["post"].mean), np.diagonal(S))
    # ...and the ULA bias at this step size is real: the chain's variance exceeds the posterior's
    _, var = statfem.pool_chains(res)
    predicted = np.mean(np.diagonal(S) / np.diagonal(problem["C"])) - 1
    assert predicted > 0.05
    assert np.mean(np.asarray(var) / np.diagonal(problem["C"])) - 1 > 0.5 * predicted
    np.testing.assert_array_equal(np.asarray(res.acceptance_rate), 1.0)
    assert int(res.num_gradient_evaluations[0]) == 1601


def test_prior_preconditioned_ula_matches_its_stationary_law(problem):
    pre = statfem.prior_preconditioner(problem["model"])
    C0, Q = problem["C0"], problem["Q"]
    lam = float(statfem.largest_curvature(problem["U"], problem["post"].mean, preconditioner=pre))
    assert lam == pytest.approx(np.linalg.eigvals(C0 @ Q).real.max(), rel=1e-3)
    h = 1.0 / lam
    kernel = statfem.ula(problem["U"], h, preconditioner=pre)
    assert kernel.name == "pula"
    res = statfem.run_chains(
        kernel, start(problem, jax.random.key(5)), 1500, 50, key=jax.random.key(4), thin=5
    )
    S = np.asarray(statfem.ula_stationary_covariance(jnp.asarray(Q), h, jnp.asarray(C0)))
    check_moments(res, np.asarray(problem["post"].mean), np.diagonal(S))


def test_posterior_preconditioned_ula_has_the_predicted_bias(problem):
    pre = statfem.posterior_preconditioner(problem["model"], problem["y"])
    h = 0.3
    kernel = statfem.ula(problem["U"], h, preconditioner=pre)
    res = statfem.run_chains(
        kernel, start(problem, jax.random.key(7)), 400, 20, key=jax.random.key(6), thin=2
    )
    # with P = C the stationary covariance is C / (1 - h/2)
    check_moments(res, np.asarray(problem["post"].mean), np.diagonal(problem["C"]) / (1 - h / 2))


def test_woodbury_posterior_preconditioner_equals_dense(problem, getkey):
    dense = statfem.posterior_preconditioner(problem["model"], problem["y"], dense=True)
    wood = statfem.posterior_preconditioner(problem["model"], problem["y"], dense=False)
    v = jax.random.normal(getkey(), (problem["model"].dim,))
    np.testing.assert_allclose(
        np.asarray(wood.apply(v)),
        np.asarray(dense.apply(v)),
        rtol=1e-7,
        atol=1e-10 * float(jnp.abs(dense.apply(v)).max()),
    )
    draws = np.asarray(jax.vmap(lambda k: wood.sample(key=k))(jax.random.split(getkey(), 1500)))
    rel = np.abs(draws.var(0) / np.diagonal(problem["C"]) - 1)
    assert rel.max() < 5 * np.sqrt(2 / 1500)


def test_mala_adapts_to_its_target_and_matches_the_posterior(problem):
    Q = problem["Q"]
    h0 = 0.1 / np.linalg.eigvalsh(Q).max()
    kernel = statfem.mala(problem["U"], h0)
    res = statfem.run_chains(
        kernel, start(problem, jax.random.key(9)), 2000, 500, key=jax.random.key(8), thin=5
    )
    acc = np.asarray(res.acceptance_rate)
    assert np.all((acc > 0.45) & (acc < 0.70)), acc
    assert np.all(np.asarray(res.step_size) > 2 * h0)  # adaptation moved the step up
    check_moments(res, np.asarray(problem["post"].mean), np.diagonal(problem["C"]))


@pytest.mark.parametrize("which", ["prior", "posterior"])
def test_preconditioned_mala_matches_the_posterior(problem, which):
    if which == "prior":
        pre = statfem.prior_preconditioner(problem["model"])
    else:
        pre = statfem.posterior_preconditioner(problem["model"], problem["y"])
    kernel = statfem.mala(problem["U"], 0.05, preconditioner=pre)
    # the prior preconditioner leaves the data-informed directions stiff: a longer chain
    steps = 2000 if which == "prior" else 600
    res = statfem.run_chains(
        kernel,
        start(problem, jax.random.key(11)),
        steps,
        200,
        key=jax.random.key(10),
        thin=5 if which == "prior" else 2,
    )
    acc = np.asarray(res.acceptance_rate)
    assert np.all((acc > 0.4) & (acc < 0.75)), acc
    check_moments(res, np.asarray(problem["post"].mean), np.diagonal(problem["C"]))


def test_pcn_matches_the_posterior(problem):
    model = problem["model"]
    kernel = statfem.pcn(
        model.likelihood_energy_fn(problem["y"]),
        0.3,
        prior_mean=model.prior_mean(),
        prior=statfem.prior_preconditioner(model, dense=True),
    )
    res = statfem.run_chains(
        kernel, start(problem, jax.random.key(13)), 2000, 300, key=jax.random.key(12), thin=5
    )
    acc = np.asarray(res.acceptance_rate)
    assert np.all((acc > 0.15) & (acc < 0.35)), acc
    assert int(res.num_gradient_evaluations[0]) == 0
    check_moments(res, np.asarray(problem["post"].mean), np.diagonal(problem["C"]))


def test_run_chain_is_pure_and_vmappable():
    # a correlated 2-D Gaussian; the chain is jitted and vmapped as one program
    Q = jnp.array([[2.0, 0.8], [0.8, 1.0]])
    kernel = statfem.mala(lambda x: 0.5 * x @ Q @ x, 0.5)
    x0 = jnp.zeros((3, 2))
    keys = jax.random.split(jax.random.key(15), 3)
    run = jax.jit(jax.vmap(lambda k, x: statfem.run_chain(kernel, x, 2000, 300, key=k, thin=5)))
    res = run(keys, x0)
    assert res.samples.shape == (3, 400, 2)
    acc = np.asarray(res.acceptance_rate)
    assert np.all((acc > 0.45) & (acc < 0.7)), acc
    check_moments(res, np.zeros(2), np.diagonal(np.linalg.inv(np.asarray(Q))))
    single = statfem.run_chain(kernel, x0[1], 2000, 300, key=keys[1], thin=5)
    np.testing.assert_allclose(
        np.asarray(res.mean[1]), np.asarray(single.mean), rtol=1e-8, atol=1e-12
    )


def test_effective_sample_size_of_ar1_chains():
    phi, N, C = 0.8, 10000, 4
    key = jax.random.key(16)
    z = jax.random.normal(key, (C, N, 3))

    def ar(x, e):
        x = phi * x + jnp.sqrt(1 - phi**2) * e
        return x, x

    _, xs = jax.lax.scan(ar, jnp.zeros((C, 3)), jnp.swapaxes(z, 0, 1))
    xs = jnp.swapaxes(xs, 0, 1)
    ess = np.asarray(statfem.effective_sample_size(xs))
    expected = C * N * (1 - phi) / (1 + phi)
    np.testing.assert_allclose(ess, expected, rtol=0.15)
    iid = np.asarray(statfem.effective_sample_size(z))
    np.testing.assert_allclose(iid, C * N, rtol=0.15)


@pytest.mark.parametrize(
    "size",
    [
        dict(n=5, m=6, steps=1500, thin=5),
        pytest.param(dict(n=7, m=10, steps=3000, thin=10), marks=pytest.mark.slow),
    ],
)
def test_nonlinear_observation_chains_agree(size):
    # sigmoid observations: no exact posterior, so gradient-based pMALA (autodiff through the
    # nonlinearity) must agree with gradient-free pCN
    model = make_model(
        n=size["n"], m=size["m"], sigma_f=0.2, sigma_e=2e-2, observation=jax.nn.sigmoid
    )
    x = model.sample_prior(key=jax.random.key(17))
    y = model.simulate_data(x, num_replicates=2, key=jax.random.key(18))
    U = model.energy_fn(y)
    pre = statfem.prior_preconditioner(model, dense=True)
    x0 = jnp.tile(model.prior_mean()[None], (8, 1))
    steps, thin = size["steps"], size["thin"]
    a = statfem.run_chains(
        statfem.mala(U, 0.2, preconditioner=pre), x0, steps, 500, key=jax.random.key(19), thin=thin
    )
    b = statfem.run_chains(
        statfem.pcn(model.likelihood_energy_fn(y), 0.5, prior_mean=model.prior_mean(), prior=pre),
        x0,
        steps,
        500,
        key=jax.random.key(20),
        thin=thin,
    )
    ma, va = statfem.pool_chains(a)
    mb, vb = statfem.pool_chains(b)
    ess = np.minimum(
        np.asarray(statfem.effective_sample_size(a.samples)),
        np.asarray(statfem.effective_sample_size(b.samples)),
    )
    assert ess.min() > 50
    sd = np.sqrt(np.asarray(va + vb) / 2)
    assert np.max(np.abs(np.asarray(ma - mb)) / (sd * np.sqrt(2 / ess))) < 5


def test_kernel_bad_input(problem):
    U = problem["U"]
    with pytest.raises(ValueError, match="step_size"):
        statfem.ula(U, 0.0)
    with pytest.raises(ValueError, match="step_size"):
        statfem.pcn(
            U, 1.5, prior_mean=jnp.zeros(3), prior=statfem.prior_preconditioner(problem["model"])
        )
    with pytest.raises(TypeError, match="preconditioner"):
        statfem.mala(U, 0.1, preconditioner=np.eye(3))
    with pytest.raises(ValueError, match="target_acceptance"):
        statfem.mala(U, 0.1, target_acceptance=1.5)
    kernel = statfem.ula(U, 1e-6)
    x0 = problem["post"].mean
    with pytest.raises(ValueError, match="thin"):
        statfem.run_chain(kernel, x0, 10, key=jax.random.key(0), thin=3)
    with pytest.raises(ValueError, match="num_steps"):
        statfem.run_chain(kernel, x0, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="x0"):
        statfem.run_chains(kernel, x0, 10, key=jax.random.key(0))
    with pytest.raises(TypeError, match="SamplingAlgorithm"):
        statfem.run_chain(U, x0, 10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="draws"):
        statfem.effective_sample_size(jnp.zeros((1, 2, 3)))
