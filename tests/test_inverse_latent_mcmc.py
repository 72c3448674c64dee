"""Latent-Gaussian priors (Darcy's thresholded field) and the long-run MCMC reference posterior:
MCMC against the exact Gaussian posterior, the threshold prior against the task MAP, SMC through a
nonlinear PDE solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import fem, inverse


def _linear_problem(grid=8, fraction=0.15, noise_rel=0.2, seed=0):
    """GRF prior, noisy point observations of the field: a closed-form posterior."""
    mesh = fem.unit_square(grid)
    prior = inverse.grf_prior(mesh)
    truth = prior.sample(jax.random.key(seed), 1)[0]
    rng = np.random.default_rng(seed)
    m = max(4, int(fraction * mesh.npoints))
    nodes = rng.choice(mesh.npoints, m, replace=False)
    H = np.zeros((m, mesh.npoints))
    H[np.arange(m), nodes] = 1.0
    clean = H @ np.asarray(truth)
    noise = noise_rel * float(np.sqrt(np.mean(clean**2)))
    y = clean + noise * rng.standard_normal(m)
    return prior, inverse.gaussian_likelihood(jnp.asarray(H), y, noise_std=noise)


@pytest.mark.parametrize("laplace", [True, False], ids=["laplace-mala", "pcn"])
def test_mcmc_matches_the_exact_posterior(laplace):
    """Mean and std of the chains against the closed form, within their Monte Carlo error: the
    mean's error in units of the posterior std is bounded by a multiple of 1 / sqrt(ESS)."""
    prior, lik = _linear_problem()
    exact = inverse.exact_posterior(prior, lik, key=jax.random.key(1), num_samples=2)
    # pCN's chains mix ~10x slower (ESS ~60 of 20000 steps x 4 chains at R-hat 1.07)
    steps = 1000 if laplace else 20000
    method = inverse.MCMC(
        laplace=laplace, num_chains=4, num_steps=steps, num_warmup=300, thin=4, map_steps=50
    )
    post = inverse.sample_posterior(prior, lik, method=method, key=jax.random.key(2))
    info = post.info
    assert info["rhat_max"] < 1.1, info["rhat_max"]
    z = np.abs(np.asarray(post.mean - exact.mean)) / np.asarray(exact.std)
    bound = 5.0 / np.sqrt(info["ess_min"])
    assert np.max(z) < bound, (np.max(z), bound, info["ess_min"])
    rel_std = np.abs(np.asarray(post.std) / np.asarray(exact.std) - 1.0)
    assert np.median(rel_std) < 0.1, np.median(rel_std)
    assert info["kernel"] == ("pmala" if laplace else "pcn")
    assert post.samples.shape == (8, prior.size)


def test_threshold_prior_field_and_draws():
    mesh = fem.unit_square(12)
    prior = inverse.threshold_prior(mesh, low=3.0, high=12.0)
    assert prior.latent_gaussian and not prior.gaussian
    draws = np.asarray(prior.sample(jax.random.key(0), 64))
    assert draws.min() > 3.0 and draws.max() < 12.0
    # about half of the area above the midpoint (the GRF is symmetric), most values near 3 or 12
    above = np.mean(draws > 7.5)
    assert 0.35 < above < 0.65, above
    assert np.mean((draws < 4.5) | (draws > 10.5)) > 0.6
    # the field is the smooth threshold of the GRF of the same white noise
    z = jax.random.normal(jax.random.key(1), prior.z_shape)
    grf = inverse.grf_prior(mesh).from_noise(z)
    sd = inverse.grf_prior(mesh).scale
    np.testing.assert_allclose(
        prior.from_noise(z), 3.0 + 9.0 * jax.nn.sigmoid(4.0 * grf / sd), rtol=1e-12
    )
    with pytest.raises(ValueError, match="low < high"):
        inverse.threshold_prior(mesh, low=5.0, high=2.0)
    with pytest.raises(ValueError, match="sharpness"):
        inverse.threshold_prior(mesh, sharpness=0.0)


def test_threshold_prior_of_another_latent_prior():
    """The task's threshold over a learned prior of the GRF: the same map of that prior's field
    (its width from the exact field's std), no longer latent-Gaussian; bad latents are refused."""
    from pdegen import models

    task = inverse.make_task("darcy-inverse", grid=8, sensor_fraction=0.2, noise=0.02)
    mesh = task.mesh
    latent = inverse.learned_prior(models.load_pretrained("grf-a"), mesh, grid=8)
    prior = inverse.threshold_prior(mesh, low=3.0, high=12.0, latent=latent)
    assert not prior.latent_gaussian and prior.score is latent.score and prior.sde is latent.sde
    x = jax.random.normal(jax.random.key(0), latent.shape)
    sd = inverse.grf_prior(mesh).scale
    np.testing.assert_allclose(
        prior.to_field(x), 3.0 + 9.0 * jax.nn.sigmoid(4.0 * latent.to_field(x) / sd), rtol=1e-12
    )
    # the exact GRF as the latent is the default prior
    exact = inverse.threshold_prior(mesh, latent=inverse.grf_prior(mesh))
    z = jax.random.normal(jax.random.key(1), exact.z_shape)
    np.testing.assert_allclose(exact.from_noise(z), inverse.threshold_prior(mesh).from_noise(z))
    with pytest.raises(ValueError, match="latent must be a Prior on the mesh's"):
        inverse.threshold_prior(mesh, latent=inverse.grf_prior(fem.unit_square(4)))
    with pytest.raises(ValueError, match="transform of its own"):
        inverse.threshold_prior(mesh, latent=prior)


def test_threshold_prior_map_is_the_task_map():
    """The general MAP with the task's (prior, likelihood) pair is the task MAP of Darcy."""
    task = inverse.make_task("darcy-inverse", grid=10, sensor_fraction=0.2, noise=0.02)
    prior, lik = inverse.task_problem(task)
    assert isinstance(prior.transform, inverse.SmoothThreshold)
    general = inverse.map_posterior(prior, lik, steps=200)
    task_map = inverse.map_estimate(task, steps=200)
    a = task.mesh.from_image(task_map.field[0])
    np.testing.assert_allclose(general.mean, a, rtol=1e-6, atol=1e-6)


def test_latent_prior_refuses_the_closed_form():
    task = inverse.make_task("darcy-forward", grid=8, sensor_fraction=0.2)
    prior, lik = inverse.task_problem(task)
    with pytest.raises(ValueError, match="latent-Gaussian"):
        inverse.exact_posterior(prior, lik, key=jax.random.key(0))


def test_smc_through_a_nonlinear_pde_solve():
    """Darcy's u observed: the forward map is a FEM solve with a custom VJP (no forward mode);
    SMC with either twist runs on reverse-mode products only and fits the data."""
    task = inverse.make_task("darcy-inverse", grid=6, sensor_fraction=0.25, noise=0.05)
    prior, lik = inverse.task_problem(task)
    # per-particle PiGDM twist (and its exact final draw), TMPD's twist shared at the zero state
    for proposal, shared in ((inverse.PiGDM(), False), (inverse.TMPD(), True)):
        method = inverse.SMC(proposal, num_particles=8, shared_covariance=shared)
        post = inverse.sample_posterior(
            prior, lik, method=method, key=jax.random.key(0), num_steps=12
        )
        assert np.all(np.isfinite(post.mean)) and np.isfinite(post.info["log_evidence"])
        assert lik.misfit(post.mean) < lik.misfit(prior.from_noise(jnp.zeros(prior.z_shape)))


def test_mcmc_bad_input():
    task = inverse.make_task("darcy-inverse", grid=8, sensor_fraction=0.2, noise=0.05)
    prior, lik = inverse.task_problem(task)
    with pytest.raises(ValueError, match="num_chains"):
        inverse.MCMC(num_chains=1)
    with pytest.raises(ValueError, match="keep >= 4 draws"):
        inverse.MCMC(num_steps=10, thin=5)
    with pytest.raises(ValueError, match="target_acceptance"):
        inverse.MCMC(target_acceptance=1.5)
    with pytest.raises(TypeError, match="laplace"):
        inverse.MCMC(laplace="yes")
    method = inverse.MCMC(num_chains=2, num_steps=8, num_warmup=0, thin=2)
    with pytest.raises(ValueError, match="num_samples"):
        inverse.mcmc_posterior(prior, lik, method, key=jax.random.key(0), num_samples=100)
    with pytest.raises(ValueError, match="likelihood="):
        inverse.sample_task_posterior(
            inverse.gaussian_prior(8),
            task,
            method="mcmc",
            key=jax.random.key(0),
            likelihood=inverse.default_likelihood(task),
        )
