"""Constrained optimisation with a learned prior: samples of p_data(x) exp(-beta h(x))."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import models
from pdegen.inverse import sample_constrained

CENTRE = np.array([0.3, 0.3])  # h's unconstrained minimiser: inside the ring, off the data


def h(x):
    return jnp.sum((x - jnp.asarray(CENTRE, dtype=x.dtype)) ** 2)


@pytest.fixture(scope="module")
def ring_model():
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 2048)
    data = np.stack([np.cos(angle), np.sin(angle)], 1) + 0.03 * rng.normal(size=(2048, 2))
    net = models.ScoreMLP(2, width=64, depth=3, embed_dim=16, key=jr.key(0))
    model = models.DiffusionModel(net, models.VPSDE(), models.Normalisation.fit(data), (2,))
    config = models.TrainConfig(steps=800, batch_size=128, learning_rate=3e-3, warmup_steps=50,
                                ema_decay=0.99)
    return models.train(model, data, key=jr.key(1), config=config, progress=False).state.ema_model


def test_constraint_tightens_with_beta_on_the_data_support(ring_model):
    means, radial = [], []
    for beta in (0.0, 3.0, 30.0):
        x = np.asarray(sample_constrained(ring_model, h, beta=beta, num_samples=256,
                                          key=jr.key(2), num_steps=100, langevin_steps=100))
        assert x.shape == (256, 2) and np.all(np.isfinite(x))
        means.append(np.mean(np.sum((x - CENTRE) ** 2, axis=1)))
        radial.append(np.median(np.abs(np.linalg.norm(x, axis=1) - 1.0)))
    # on the ring h ranges over [0.58, 1.78] (mean 1.18 for uniform angles)
    assert abs(means[0] - 1.18) < 0.15, means
    assert means[0] > means[1] > means[2], means
    assert means[2] < 0.75, means
    # samples stay near the ring (data noise 0.03; h's own minimiser is 0.58 away)
    assert max(radial) < 0.2, radial


def test_bad_arguments(ring_model):
    with pytest.raises(ValueError, match="beta"):
        sample_constrained(ring_model, h, beta=-1.0, num_samples=4, key=jr.key(0))
    with pytest.raises(ValueError, match="scalar"):
        sample_constrained(ring_model, lambda x: x, beta=1.0, num_samples=4, key=jr.key(0))
