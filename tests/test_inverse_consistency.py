"""Physics-informed training of joint priors: the consistency penalty on the denoised estimate."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import fem, inverse, models

GRID = 8


def _pairs(n, key):
    data, _ = fem.generate_dataset(
        "poisson", n, key=key, grid=GRID, progress=False, dtype=np.float64
    )
    return np.asarray(data)


def test_consistency_penalty_vanishes_on_pde_pairs_only(key):
    data = _pairs(4, key)
    norm = models.Normalisation.fit(data)
    physics = inverse.make_task("poisson-inverse", grid=GRID).physics
    penalty = inverse.consistency_penalty(physics, norm.mean, norm.std, dtype="float64")
    x = jax.vmap(norm.normalise)(jnp.asarray(data))
    values = jax.vmap(penalty)(x)
    assert float(jnp.max(values)) < 1e-20
    off = x.at[:, 1].add(0.1)  # u shifted away from solve(a)
    assert np.allclose(jax.vmap(penalty)(off), 0.01, rtol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        inverse.consistency_penalty(physics, norm.mean, norm.std, weight=-1.0)


@pytest.mark.slow  # ~40 s on two idle cores; the penalty itself is checked fast above
def test_training_with_the_penalty_makes_denoised_pairs_consistent(key):
    data = _pairs(32, key)
    norm = models.Normalisation.fit(data)
    physics = inverse.make_task("poisson-inverse", grid=GRID).physics
    penalty = inverse.consistency_penalty(physics, norm.mean, norm.std, weight=1.0)
    config = models.TrainConfig(steps=100, batch_size=16, learning_rate=3e-3, warmup_steps=10)

    def fit(penalty):
        net = models.SpectralDenoiser(2, width=8, depth=1, modes=4, key=jr.key(3))
        model = models.DiffusionModel(
            net, models.EDMSDE(), norm, (2, GRID, GRID), parameterisation="denoiser"
        )
        out = models.train(
            model, data, key=jr.key(4), config=config, progress=False, penalty=penalty
        )
        return out.state.ema_model

    fresh = jax.vmap(norm.normalise)(jnp.asarray(_pairs(32, jr.fold_in(key, 1)))).astype(
        jnp.float32
    )
    inconsistency = {}
    for label, p in (("plain", None), ("penalty", penalty)):
        model = fit(p)
        t = jnp.asarray(0.5, jnp.float32)  # noise level sigma = 0.5 in normalised units
        z = jr.normal(jr.key(5), fresh.shape, jnp.float32)
        denoised = jax.vmap(model.denoiser, in_axes=(0, None))(fresh + 0.5 * z, t)
        inconsistency[label] = float(jnp.mean(jax.vmap(penalty)(denoised)))
    assert inconsistency["penalty"] < 0.8 * inconsistency["plain"], inconsistency


def test_penalty_needs_the_denoiser_parameterisation(key):
    data = _pairs(4, key)
    net = models.UNet(2, base_channels=4, channel_mults=(1,), groups=2, key=jr.key(0))
    model = models.DiffusionModel(
        net, models.VPSDE(), models.Normalisation.fit(data), (2, GRID, GRID)
    )
    with pytest.raises(ValueError, match="denoiser parameterisation"):
        models.train(model, data, key=key, penalty=lambda d: jnp.sum(d), progress=False)
