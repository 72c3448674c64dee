"""Samplers on a Gaussian target with the exact analytic score (no network).

For data ``N(mu, Sigma)`` the score of ``p_t`` is known in closed form, and so is the exact
probability-flow map, so deterministic samplers are checked sample by sample (no Monte
Carlo floor) and stochastic samplers by the moments of ``p_{t_min}``.
"""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import models

MU = jnp.array([1.0, -0.5])
COV = jnp.array([[1.0, 0.6], [0.6, 0.5]])


def gaussian_score(sde):
    lam, vec = np.linalg.eigh(np.asarray(COV))
    lam, vec = jnp.asarray(lam), jnp.asarray(vec)

    def score(x, t):
        # -(a^2 Sigma + s^2 I)^{-1} (x - a mu), through the eigen-decomposition of Sigma.
        a, s = sde.alpha(t), sde.sigma(t)
        return -vec @ ((vec.T @ (x - a * MU)) / (a**2 * lam + s**2))

    return score


def exact_flow(sde, x_start):
    """Exact probability-flow map from t_max to t_min, for one start point."""
    s0 = sde.scaled_sigma(jnp.asarray(sde.t_max))
    s1 = sde.scaled_sigma(jnp.asarray(sde.t_min))
    lam, vec = jnp.linalg.eigh(COV)
    gain = vec @ jnp.diag(jnp.sqrt((lam + s1**2) / (lam + s0**2))) @ vec.T
    y = x_start / sde.alpha(jnp.asarray(sde.t_max))
    return sde.alpha(jnp.asarray(sde.t_min)) * (MU + gain @ (y - MU))


def run(sampler, sde, num_steps, n, key, **options):
    init_key, run_key = jr.split(key)
    x_init = jax.vmap(lambda k: sde.prior_sample((2,), key=k))(jr.split(init_key, n))
    fn = functools.partial(sampler, gaussian_score(sde), sde, (2,), num_steps=num_steps, **options)
    out = jax.jit(jax.vmap(lambda k, x0: fn(key=k, x_init=x0)))(jr.split(run_key, n), x_init)
    return x_init, out


def slope(steps, errors):
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


DETERMINISTIC = [
    pytest.param("probability_flow", models.VPSDE(), {}, 1.8, marks=pytest.mark.slow),
    ("edm_heun", models.VPSDE(), {}, 1.8),
    pytest.param("edm_heun", models.VESDE(), {}, 1.8, marks=pytest.mark.slow),
    ("edm_heun", models.EDMSDE(), {}, 1.8),
    pytest.param(
        "ddim", models.VPSDE(schedule="cosine", t_max=0.999), {}, 0.9, marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize(
    "name, sde, options, order",
    DETERMINISTIC,
    ids=["pf-vp", "heun-vp", "heun-ve", "heun-edm", "ddim-vpcos"],
)
def test_deterministic_sampler_converges_to_exact_flow(name, sde, options, order, key):
    steps = [8, 16, 32, 64]
    errors = []
    for n in steps:
        x_init, out = run(models.SAMPLERS[name], sde, n, 64, key, **options)
        exact = jax.vmap(lambda x0: exact_flow(sde, x0))(x_init)
        errors.append(float(jnp.sqrt(jnp.mean(jnp.sum((out - exact) ** 2, axis=1)))))
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
    assert slope(steps, errors) < -order, (errors, slope(steps, errors))
    assert errors[-1] < 0.05


def moment_error(sde, samples):
    t = jnp.asarray(sde.t_min)
    a, s = sde.alpha(t), sde.sigma(t)
    cov = a**2 * COV + s**2 * jnp.eye(2)
    mean_err = jnp.linalg.norm(jnp.mean(samples, axis=0) - a * MU) / jnp.linalg.norm(a * MU)
    cov_err = jnp.linalg.norm(jnp.cov(samples.T) - cov) / jnp.linalg.norm(cov)
    return float(mean_err + cov_err)


STOCHASTIC = [
    ("euler_maruyama", models.VPSDE(), {}),
    pytest.param("euler_maruyama", models.VESDE(sigma_max=20.0), {}, marks=pytest.mark.slow),
    pytest.param("predictor_corrector", models.VPSDE(), {"snr": 0.1}, marks=pytest.mark.slow),
    pytest.param("ddim", models.VPSDE(), {"eta": 1.0}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    "name, sde, options", STOCHASTIC, ids=["em-vp", "em-ve", "pc-vp", "ddpm-vp"]
)
def test_stochastic_sampler_moments_improve_with_steps(name, sde, options, key):
    # 8000 samples: Monte Carlo error of the moments ~0.03, below the 64-step tolerance.
    errors = [
        moment_error(sde, run(models.SAMPLERS[name], sde, n, 8000, key, **options)[1])
        for n in (4, 16, 64)
    ]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[1] and errors[2] < 0.15, errors


def test_sample_batches_and_denoise_final(key):
    sde = models.VPSDE()
    x = models.sample(gaussian_score(sde), sde, (2,), 5, key=key, method="edm_heun", num_steps=8)
    assert x.shape == (5, 2) and x.dtype == jnp.float64
    # Different keys give different samples; the same key reproduces them.
    assert float(jnp.min(jnp.abs(x[:1] - x[1:]))) > 0
    x2 = models.sample(gaussian_score(sde), sde, (2,), 5, key=key, method="edm_heun", num_steps=8)
    assert jnp.array_equal(x, x2)
    d = models.sample(
        gaussian_score(sde), sde, (2,), 3, key=key, method="ddim", num_steps=8, denoise_final=True
    )
    assert d.shape == (3, 2) and bool(jnp.all(jnp.isfinite(d)))
    x = models.sample(gaussian_score(sde), sde, (2,), 2, key=key, method="probability_flow")
    assert bool(jnp.all(jnp.isfinite(x)))


def test_default_batches_on_cpus_fit_the_caches_and_do_not_change_the_samples(key):
    """On CPUs the default splits the samples into batches of about 65,536 numbers; sample ``i``
    is the same as from one batch."""
    from pdegen.models._samplers import _default_batch_size

    mesh = models.make_mesh()
    if any(d.platform != "cpu" for d in mesh.devices.flat):
        pytest.skip("the CPU default only")
    assert _default_batch_size(mesh, (2, 32, 32)) == 32
    assert _default_batch_size(mesh, (2, 256, 256)) == 1
    assert _default_batch_size(mesh, (2,)) == 32_768
    sde = models.VPSDE()

    def score(x, t):  # standard normal data
        return -x / (sde.alpha(t) ** 2 + sde.sigma(t) ** 2)

    shape = (1, 128, 128)  # 4 per default batch
    x = models.sample(score, sde, shape, 6, key=key, method="ddim", num_steps=3)
    one = models.sample(score, sde, shape, 6, key=key, method="ddim", num_steps=3, batch_size=6)
    assert x.shape == (6, *shape)
    np.testing.assert_array_equal(x, one)


def test_sampler_bad_arguments(key):
    sde = models.VPSDE()
    with pytest.raises(ValueError, match="method"):
        models.sample(gaussian_score(sde), sde, (2,), 2, key=key, method="magic")
    with pytest.raises(ValueError, match="num_samples"):
        models.sample(gaussian_score(sde), sde, (2,), 0, key=key)
    with pytest.raises(ValueError, match="num_steps"):
        models.euler_maruyama(gaussian_score(sde), sde, (2,), key=key, num_steps=0)
    with pytest.raises(ValueError, match="x_init"):
        models.ddim(gaussian_score(sde), sde, (2,), key=key, x_init=jnp.zeros(3))
