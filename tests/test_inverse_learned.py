"""Guidance that uses the prior honestly: PiGDM's data variance from the prior (closed form for
Gaussian priors, prior samples for learned ones), DPS's default step, resolution-free priors."""

from __future__ import annotations

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import fem, inverse, models


class _Opaque(eqx.Module):
    """The exact score behind a wrapper, so the prior counts as learned (no closed forms)."""

    score: inverse.GaussianScore

    def __call__(self, x, t):
        return self.score(x, t)


def _matern_problem(noise_rel, *, n=9, sensors=10, seed=0):
    mesh = fem.unit_square(n)
    V = fem.FunctionSpace(mesh, "P1")
    prior = inverse.matern_prior(V, length_scale=0.3)
    truth = prior.sample(jr.key(seed), 1)[0]
    rng = np.random.default_rng(seed)
    points = rng.uniform(0.15, 0.85, (sensors, 2))
    forward = inverse.pde_forward(fem.Source(fem.Poisson(V)), points)
    clean = forward(truth)
    noise = noise_rel * float(jnp.sqrt(jnp.mean(clean**2)))
    y = clean + noise * jr.normal(jr.key(seed + 1), clean.shape)
    return prior, inverse.gaussian_likelihood(forward, y, noise_std=noise)


def test_pigdm_data_variance_closed_form_and_from_prior_samples():
    prior, lik = _matern_problem(0.01)
    J = np.asarray(
        jax.jacrev(lambda x: lik.whitener @ lik.forward(prior.to_field(x)))(jnp.zeros(prior.shape))
    ).reshape(lik.num_data, -1)
    L = np.asarray(jax.jacrev(prior.score.sqrt)(jnp.zeros(prior.score.z_shape))).reshape(
        J.shape[1], -1
    )
    closed = np.sum((J @ L) ** 2) / np.sum(J**2)  # tr(J C J^T) / tr(J J^T), C = L L^T

    def observe(x):
        return lik.whitener @ lik.forward(prior.to_field(x))

    exact = inverse.observed_prior_variance(prior, observe, prior.shape)
    assert exact == pytest.approx(closed, rel=1e-10)
    learned = dataclasses.replace(prior, score=_Opaque(prior.score))
    assert not learned.gaussian
    estimates = [
        inverse.observed_prior_variance(learned, observe, prior.shape, key=jr.key(k))
        for k in range(3)
    ]
    # 64 samples: the estimate of a trace is within ~25% (a chi-square over a few effective directions)
    for est in estimates:
        assert est == pytest.approx(closed, rel=0.25), (estimates, closed)
    assert np.std(estimates) > 0  # an estimate, not a constant
    # the posterior reports the value it used: the closed form, the given one, none for DPS
    for method, expected in [
        (inverse.PiGDM(), closed),
        (inverse.PiGDM(data_variance=0.3), 0.3),
        (inverse.DPS(), None),
    ]:
        with warnings.catch_warnings():  # four steps need not fit the data: only the value counts
            warnings.simplefilter("ignore", RuntimeWarning)
            post = inverse.sample_posterior(
                prior, lik, method=method, key=jr.key(0), num_samples=1, num_steps=4
            )
        used = post.info["data_variance"]
        assert used is None if expected is None else used == pytest.approx(expected, rel=1e-10)


def test_dps_default_step_fits_noisy_data():
    """With the default step, the posterior mean fits data with 5% noise to within twice the noise."""
    prior, lik = _matern_problem(0.05, seed=2)
    post = inverse.sample_posterior(
        prior, lik, method="dps", key=jr.key(0), num_samples=8, num_steps=100
    )
    unguided = inverse.sample_posterior(
        prior, lik, method="unguided", key=jr.key(0), num_samples=8, num_steps=100
    )
    assert lik.misfit(post.mean) <= 2.0 < lik.misfit(unguided.mean), (
        lik.misfit(post.mean),
        lik.misfit(unguided.mean),
    )


@pytest.fixture(scope="module")
def spectral_a_prior():
    """A small resolution-free source prior trained on 16x16 GRF fields (shared by the tests)."""
    grid = 16
    keys = jr.split(jr.key(0), 1000)
    data = np.asarray(
        jax.vmap(lambda k: fem.gaussian_random_field((grid, grid), key=k))(keys), np.float32
    )[:, None]
    net = models.SpectralDenoiser(1, depth=0, key=jr.key(1))
    model = models.DiffusionModel(
        net, models.EDMSDE(), models.Normalisation.fit(data), (1, grid, grid), "denoiser"
    )
    cfg = models.TrainConfig(steps=150, batch_size=32, learning_rate=3e-3, warmup_steps=10)
    return models.train(model, data, key=jr.key(2), config=cfg, progress=False).state.ema_model


def test_resolution_free_prior_on_another_grid_and_unfit_priors(spectral_a_prior):
    prior = inverse.prior_from_model(spectral_a_prior, name="spectral-16")
    task = inverse.make_task("poisson-inverse", grid=24, sensor_fraction=0.05)
    post = inverse.sample_task_posterior(
        prior, task, method="pigdm", key=jr.key(0), num_samples=2, num_steps=30
    )
    assert post.samples.shape[-2:] == (24, 24) and np.all(np.isfinite(post.samples))
    moved = inverse.prior_at_grid(prior, 24)
    assert moved.grid == 24 and tuple(moved.score.data_shape) == (1, 24, 24)
    # not resolution-free: a clear error before sampling
    unet = models.load_pretrained("poisson-joint-32")
    with pytest.raises(ValueError, match="not resolution-free"):
        inverse.sample_task_posterior(
            inverse.prior_from_model(unet), task, method="pigdm", key=jr.key(0), num_samples=1
        )
    with pytest.raises(ValueError, match="joint prior"):
        inverse.sample_task_posterior(
            prior, task, method="tmpd", route="joint", key=jr.key(0), num_samples=1
        )


def test_learned_prior_on_a_mesh_at_another_grid(spectral_a_prior):
    mesh = fem.l_shaped(2)
    prior = inverse.learned_prior(spectral_a_prior, mesh, grid=24)
    assert prior.shape == (1, 24, 24) and prior.size == mesh.npoints
    unet = models.load_pretrained("poisson-joint-32")
    with pytest.raises(ValueError, match="not resolution-free"):
        inverse.learned_prior(unet, mesh, grid=24)


def test_pigdm_data_variance_draws_the_prior_samples_once(monkeypatch):
    """A learned prior's samples for PiGDM's data variance are drawn once per (score, settings):
    a second call, with other observations, reuses them; another key or score draws anew."""
    from pdegen.inverse import _field_posterior

    prior, lik = _matern_problem(0.01)
    learned = dataclasses.replace(prior, score=_Opaque(prior.score))
    calls = []
    real = _field_posterior._prior_states
    monkeypatch.setattr(_field_posterior, "_prior_states", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_field_posterior, "_PRIOR_STATES", type(_field_posterior._PRIOR_STATES)())

    def observe(x):
        return lik.whitener @ lik.forward(prior.to_field(x))

    first = inverse.observed_prior_variance(learned, observe, prior.shape, num_samples=8)
    again = inverse.observed_prior_variance(learned, observe, prior.shape, num_samples=8)
    half = inverse.observed_prior_variance(
        learned, lambda x: 0.5 * observe(x), prior.shape, num_samples=8
    )
    assert len(calls) == 1
    assert again == first
    assert half == pytest.approx(first, rel=1e-12)  # a scale of the rows cancels in the ratio
    inverse.observed_prior_variance(learned, observe, prior.shape, num_samples=8, key=jr.key(1))
    other = dataclasses.replace(prior, score=_Opaque(prior.score))
    inverse.observed_prior_variance(other, observe, prior.shape, num_samples=8)
    assert len(calls) == 3
