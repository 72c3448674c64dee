"""Data parallelism: a training step sharded over two (forced) CPU devices equals one device."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import jax.numpy as jnp, jax.random as jr, numpy as np
    from pdegen import models
    assert len(jax.devices()) == 2, jax.devices()
    data = np.random.default_rng(0).normal(size=(64, 3))
    net = models.ScoreMLP(3, width=16, depth=2, embed_dim=8, key=jr.key(0))
    model = models.DiffusionModel(net, models.VPSDE(), models.Normalisation.fit(data), (3,))
    config = models.TrainConfig(steps=2, batch_size=8, warmup_steps=1)
    one = models.train(model, data, key=jr.key(1), config=config, progress=False,
                       mesh=models.make_mesh(jax.devices()[:1]))
    two = models.train(model, data, key=jr.key(1), config=config, progress=False,
                       mesh=models.make_mesh())
    for a, b in zip(jax.tree_util.tree_leaves(one.state.model), jax.tree_util.tree_leaves(two.state.model)):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.losses, two.losses, rtol=1e-5)
    # Sharded sampling: an odd count is padded to the device count and trimmed.
    x = models.sample_model(two.state.ema_model, 5, key=jr.key(2), method="ddim", num_steps=4)
    assert x.shape == (5, 3) and bool(jnp.all(jnp.isfinite(x)))
    if "full" in sys.argv:
        y = models.sample_model(two.state.ema_model, 5, key=jr.key(2), method="ddim", num_steps=4,
                                mesh=models.make_mesh(jax.devices()[:1]))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    print("OK")
    """
)


@pytest.mark.parametrize(
    "mode",
    [
        "quick",
        pytest.param("full", marks=pytest.mark.slow),
    ],
)
def test_sharded_training_matches_single_device(mode, two_cpu_devices_env):
    # quick: sharded training == one device, sharded sampling runs (padding 5 -> 6, trimmed);
    # full: also sharded samples == one-device samples.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        env=two_cpu_devices_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
