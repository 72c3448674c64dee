"""SDE marginals, schedules, conversions and the Tweedie denoiser."""

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

from pdegen import models

SDES = [
    models.VPSDE(),
    models.VPSDE(schedule="cosine", t_max=0.999),
    models.VESDE(),
    models.EDMSDE(),
]


@pytest.mark.parametrize(
    "sde", SDES, ids=lambda s: s.config()["kind"] + s.config().get("schedule", "")
)
def test_forward_sde_matches_marginals(sde):
    # d log alpha / dt = f and d sigma^2/dt = 2 f sigma^2 + g^2 along the whole time range.
    for frac in (0.05, 0.3, 0.7, 0.95):
        t = jnp.asarray(sde.t_min + frac * (sde.t_max - sde.t_min))
        dlog_alpha = jax.grad(lambda s: jnp.log(sde.alpha(s)))(t)
        dvar = jax.grad(lambda s: sde.sigma(s) ** 2)(t)
        f, g = sde.drift_coefficient(t), sde.diffusion(t)
        assert jnp.allclose(dlog_alpha, f, rtol=1e-9, atol=1e-12)
        assert jnp.allclose(dvar, 2 * f * sde.sigma(t) ** 2 + g**2, rtol=1e-9)
        assert jnp.allclose(sde.time_from_scaled_sigma(sde.scaled_sigma(t)), t, rtol=1e-8)


def test_vp_is_variance_preserving():
    for sde in SDES[:2]:
        t = jnp.linspace(sde.t_min, sde.t_max, 7)
        assert jnp.allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, 1.0)
    assert float(SDES[0].alpha(1.0)) < 1e-2  # the prior N(0, I) is reached


@pytest.mark.parametrize(
    "sde", SDES, ids=lambda s: s.config()["kind"] + s.config().get("schedule", "")
)
def test_conversions_and_tweedie_on_gaussian(sde, getkey):
    # For x0 ~ N(mu, c^2 I): score, noise and denoiser conversions agree and Tweedie is exact.
    mu, c = jnp.array([0.7, -1.2, 0.1]), 0.8
    t = jnp.asarray(sde.t_min + 0.4 * (sde.t_max - sde.t_min))
    a, s = sde.alpha(t), sde.sigma(t)
    x = jr.normal(getkey(), (3,))

    def score_fn(y, tt):
        at, st = sde.alpha(tt), sde.sigma(tt)
        return -(y - at * mu) / (at**2 * c**2 + st**2)

    score = score_fn(x, t)
    exact_posterior_mean = mu + a * c**2 / (a**2 * c**2 + s**2) * (x - a * mu)
    assert jnp.allclose(sde.tweedie_denoiser(score_fn, x, t), exact_posterior_mean, rtol=1e-10)
    eps = sde.epsilon_from_score(x, t, score)
    den = sde.denoiser_from_epsilon(x, t, eps)
    assert jnp.allclose(sde.score_from_epsilon(x, t, eps), score)
    assert jnp.allclose(sde.score_from_denoiser(x, t, den), score)
    assert jnp.allclose(sde.epsilon_from_denoiser(x, t, den), eps)
    assert jnp.allclose(sde.denoiser_from_score(x, t, score), den)


def test_marginal_sampling_and_prior(getkey):
    sde = models.VESDE(sigma_min=0.1, sigma_max=5.0)
    x0 = jnp.full((20000,), 2.0)
    xt, z = sde.marginal(x0, 0.5, key=getkey())
    assert jnp.allclose(xt, 2.0 + sde.sigma(0.5) * z)
    assert abs(float(jnp.std(xt)) - float(sde.sigma(0.5))) < 0.03 * float(sde.sigma(0.5))
    prior = sde.prior_sample((20000,), key=getkey())
    assert abs(float(jnp.std(prior)) / float(sde.prior_std()) - 1.0) < 0.03
    grid = models.EDMSDE().time_grid(10)
    assert grid[0] == 80.0 and grid[-1] == 0.002 and bool(jnp.all(jnp.diff(grid) < 0))


def test_config_round_trip_and_bad_parameters():
    for sde in SDES:
        assert models.sde_from_config(sde.config()) == sde
    with pytest.raises(ValueError, match="schedule"):
        models.VPSDE(schedule="quadratic")
    with pytest.raises(ValueError, match="t_max < 1"):
        models.VPSDE(schedule="cosine")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        models.VESDE(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="0 < t_min"):  # sigma(0) = 0: samples would be NaN
        models.VPSDE(t_min=0.0)
    with pytest.raises(ValueError, match="kind"):
        models.sde_from_config({"kind": "nope"})
