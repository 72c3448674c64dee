"""PIS / DDS on targets with known normalisers and modes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen.models._controlled import (
    DDS,
    PIS,
    effective_sample_size,
    log_normaliser,
    sample,
    train,
)

MU = jnp.array([1.0, -0.5])
SD = jnp.array([0.5, 1.5])
LOG_Z = 3.0 + float(jnp.sum(jnp.log(jnp.sqrt(2 * jnp.pi) * SD)))


def gaussian_log_density(x):
    return -0.5 * jnp.sum(((x - MU) / SD) ** 2) + 3.0


@pytest.mark.parametrize(
    "builder,loss",
    # fast: both samplers and both losses once; slow: the other two pairings
    [
        (PIS, "log_variance"),
        (DDS, "kl"),
        pytest.param(PIS, "kl", marks=pytest.mark.slow),
        pytest.param(DDS, "log_variance", marks=pytest.mark.slow),
    ],
)
def test_gaussian_log_normaliser_and_moments(builder, loss, getkey):
    model = builder(2, key=getkey(), num_steps=16, sigma=2.0)
    model, losses = train(
        model,
        gaussian_log_density,
        key=getkey(),
        num_steps=150,
        batch_size=64,
        learning_rate=3e-3,
        loss=loss,
        progress=False,
    )
    x, log_w = sample(model, gaussian_log_density, 2000, key=getkey())
    est = log_normaliser(log_w)
    # ELBO is a lower bound (up to Monte Carlo error); IW estimate within 0.05 nats
    assert float(est.elbo) < LOG_Z + 0.02
    assert float(est.elbo) > LOG_Z - 0.6
    assert abs(float(est.importance_weighted) - LOG_Z) < 0.05
    assert float(effective_sample_size(log_w)) > 0.4
    # raw samples of a briefly trained sampler: mean within 0.15, std within 35%;
    # with self-normalised importance weights: mean within 0.08, std within 8%
    np.testing.assert_allclose(np.mean(x, 0), np.asarray(MU), atol=0.15)
    np.testing.assert_allclose(np.std(x, 0), np.asarray(SD), rtol=0.35)
    w = np.asarray(jax.nn.softmax(log_w))
    mean_w = np.sum(w[:, None] * np.asarray(x), 0)
    std_w = np.sqrt(np.sum(w[:, None] * (np.asarray(x) - mean_w[None, :]) ** 2, 0))
    np.testing.assert_allclose(mean_w, np.asarray(MU), atol=0.08)
    np.testing.assert_allclose(std_w, np.asarray(SD), rtol=0.08)
    assert np.all(np.isfinite(losses))


def test_untrained_model_is_reference(getkey):
    # zero-initialised output layers: the untrained sampler is the reference, so for the
    # reference's own terminal law the weights are exactly constant and log Z exact.
    sigma = 1.3

    def log_density(x):
        return -0.5 * jnp.sum(x**2) / sigma**2

    true = math.log(2 * math.pi * sigma**2)
    for builder in (PIS, DDS):
        model = builder(2, key=getkey(), num_steps=8, sigma=sigma)
        _, log_w = sample(model, log_density, 64, key=getkey())
        np.testing.assert_allclose(np.asarray(log_w), true, atol=1e-5)


def test_mixture_modes_found(getkey):
    centres = jnp.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])

    def log_density(x):
        d2 = jnp.sum((x[None, :] - centres) ** 2, axis=1)
        return jax.nn.logsumexp(-0.5 * d2 / 0.4**2)

    model = DDS(2, key=getkey(), num_steps=16, sigma=2.5)
    model, _ = train(
        model,
        log_density,
        key=getkey(),
        num_steps=120,
        batch_size=64,
        learning_rate=3e-3,
        loss="log_variance",
        progress=False,
    )
    x, log_w = sample(model, log_density, 1000, key=getkey())
    nearest = jnp.argmin(jnp.sum((x[:, None, :] - centres[None]) ** 2, axis=2), axis=1)
    fractions = np.bincount(np.asarray(nearest), minlength=3) / x.shape[0]
    assert np.all(fractions > 0.15), fractions


def test_bad_arguments(getkey):
    with pytest.raises(ValueError, match="dim"):
        PIS(0, key=getkey())
    with pytest.raises(ValueError, match="sigma"):
        DDS(2, key=getkey(), sigma=-1.0)
    with pytest.raises(ValueError, match="network"):
        DDS(2, key=getkey(), network="transformer")
    with pytest.raises(ValueError, match="loss"):
        train(DDS(2, key=getkey()), gaussian_log_density, key=getkey(), loss="elbo", progress=False)
    with pytest.raises(FloatingPointError, match="non-finite at step 1"):  # stopped, not NaN
        train(
            DDS(2, key=getkey()),
            lambda x: jnp.sum(x) * jnp.nan,
            key=getkey(),
            num_steps=5,
            batch_size=4,
            progress=False,
        )
