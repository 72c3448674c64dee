"""Training: learned scores on Gaussian and mixture data, checkpoints, exact resume, bad input."""

import functools
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import models

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


def mlp_model(data, *, key, sde=None, parameterisation="epsilon", width=64):
    net = models.ScoreMLP(data.shape[1], width=width, depth=3, embed_dim=16, key=key)
    return models.DiffusionModel(
        net,
        sde or models.VPSDE(),
        models.Normalisation.fit(data),
        (data.shape[1],),
        parameterisation=parameterisation,
    )


@functools.lru_cache(maxsize=1)
def _tiny_unet(channels):
    # Abstract (shapes and dtypes only): eager initialisation compiles many small kernels.
    return eqx.filter_eval_shape(
        models.UNet, channels, base_channels=4, channel_mults=(1, 2), key=jr.key(0)
    )


def tiny_unet_model(channels=2, size=8, *, key):
    net = _tiny_unet(channels)
    return models.DiffusionModel(
        net, models.VPSDE(), models.Normalisation.identity(channels), (channels, size, size)
    )


def test_parameters_are_float32_under_x64(key):
    model = tiny_unet_model(key=key)
    assert 1_000 < models.count_parameters(model.network) < 20_000
    dtypes = {a.dtype for a in jax.tree_util.tree_leaves(model.network) if hasattr(a, "dtype")}
    assert dtypes == {jnp.dtype("float32")}
    # Output dtype follows the input (shape/dtype propagation only: nothing is compiled).
    score = lambda m, y: m.score(y, jnp.asarray(0.5, y.dtype))  # noqa: E731
    assert eqx.filter_eval_shape(score, model, jnp.ones((2, 8, 8))).dtype == jnp.float64
    out = eqx.filter_eval_shape(score, model, jnp.ones((2, 8, 8), jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == (2, 8, 8)
    with pytest.raises(ValueError, match="data"):
        model.check_compatible((3, 8, 8))


@pytest.mark.parametrize(
    "steps, score_tol, cov_tol",
    [
        pytest.param(1500, 0.1, 0.15, marks=pytest.mark.slow),
        (300, 0.2, 0.25),
    ],
    ids=["full", "quick"],
)
def test_gaussian_score_learned(steps, score_tol, cov_tol, key):
    # Data N(mu, Sigma): the exact score of p_t is known; the trained network must match it.
    data = np.random.default_rng(0).multivariate_normal(MU, COV, size=4096)
    model = mlp_model(data, key=key)
    config = models.TrainConfig(
        steps=steps, batch_size=256, learning_rate=3e-3, warmup_steps=50, ema_decay=0.99
    )
    result = models.train(model, data, key=key, config=config, progress=False)
    trained = result.state.ema_model
    norm = trained.normalisation
    std = np.asarray(norm.std)
    cov_n = COV / np.outer(std, std)  # covariance in normalised units (mean ~ 0 there)
    mean_n = (MU - np.asarray(norm.mean)) / std
    sde = trained.sde
    ts = jnp.linspace(0.05, 1.0, 20)
    xs = jr.normal(jr.key(3), (20, 64, 2))
    num, den = 0.0, 0.0
    for t, x in zip(ts, xs):
        a, s = sde.alpha(t), sde.sigma(t)
        c = a**2 * jnp.asarray(cov_n) + s**2 * jnp.eye(2)
        x = a * jnp.asarray(mean_n)[None, :] + x @ jnp.linalg.cholesky(c).T
        exact = -jnp.linalg.solve(c, (x - a * jnp.asarray(mean_n)[None, :]).T).T
        learned = jax.vmap(lambda y: trained.score(y, t))(x)
        num += float(jnp.sum((s * (learned - exact)) ** 2))
        den += float(jnp.sum((s * exact) ** 2))
    rel = np.sqrt(num / den)
    assert rel < score_tol, rel
    num = 2000 if steps > 1000 else 1000
    samples = np.asarray(
        models.sample_model(trained, num, key=key, method="edm_heun", num_steps=20)
    )
    assert np.linalg.norm(np.cov(samples.T) - COV) / np.linalg.norm(COV) < cov_tol
    assert np.linalg.norm(samples.mean(0) - MU) < 0.1


def gmm(n, rng):
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    weights = np.array([0.5, 0.3, 0.2])
    labels = rng.choice(3, size=n, p=weights)
    return centres[labels] + 0.3 * rng.standard_normal((n, 2)), centres, weights


def mmd(x, y, bandwidth=0.5):
    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / (2 * bandwidth**2))

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


@pytest.mark.parametrize(
    "steps, width, weight_tol, mmd_factor",
    [
        pytest.param(2000, 128, 0.06, 3.0, marks=pytest.mark.slow),
        (500, 64, 0.1, 6.0),
    ],
    ids=["full", "quick"],
)
def test_gaussian_mixture_modes_and_mmd(steps, width, weight_tol, mmd_factor, key):
    rng = np.random.default_rng(1)
    data, centres, weights = gmm(8192, rng)
    model = mlp_model(data, key=key, sde=models.EDMSDE(), parameterisation="denoiser", width=width)
    config = models.TrainConfig(
        steps=steps, batch_size=256, learning_rate=2e-3, warmup_steps=100, ema_decay=0.995
    )
    trained = models.train(model, data, key=key, config=config, progress=False).state.ema_model
    samples = np.asarray(
        models.sample_model(trained, 1000, key=jr.key(7), method="edm_heun", num_steps=40)
    )
    labels = np.argmin(((samples[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    found = np.bincount(labels, minlength=3) / len(labels)
    assert np.max(np.abs(found - weights)) < weight_tol, found
    fresh, fresh2 = gmm(1000, rng)[0], gmm(1000, rng)[0]
    baseline = mmd(fresh, fresh2)  # sampling noise of MMD itself at n = 1000
    assert mmd(samples, fresh) < mmd_factor * baseline + 0.01, (mmd(samples, fresh), baseline)


def small_setup(key):
    data = np.random.default_rng(2).normal(size=(32, 3)) * np.array([[1.0, 2.0, 0.5]])
    model = mlp_model(data, key=key, width=16)
    config = models.TrainConfig(
        steps=6, batch_size=4, warmup_steps=2, checkpoint_every=3, log_every=2
    )
    return data, model, config


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jr.key_data(x), jr.key_data(y)
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_round_trip_and_exact_resume(key, tmp_path):
    data, model, config = small_setup(key)
    full = models.train(
        model, data, key=key, config=config, out_dir=tmp_path / "full", progress=False
    )
    # Interrupted after 3 steps (a checkpoint is written), then resumed from the folder.
    part = models.train(
        model, data, key=key, config=config, out_dir=tmp_path / "part", progress=False, stop_after=3
    )
    assert int(part.state.step) == 3
    resumed = models.train(
        model, data, key=jr.key(999), config=config, out_dir=tmp_path / "part", progress=False
    )
    assert int(resumed.state.step) == 6
    assert_trees_equal(eqx_params(full.state), eqx_params(resumed.state))
    assert np.array_equal(full.losses, resumed.losses)
    loaded = models.load_checkpoint(tmp_path / "full")
    assert loaded.step == 6
    assert_trees_equal(eqx_params(loaded.model), eqx_params(full.state.ema_model))
    assert loaded.model.config() == full.state.model.config()
    assert (tmp_path / "full" / "loss.png").stat().st_size > 0
    leftovers = [p for p in os.listdir(tmp_path / "full") if p.endswith(".tmp")]
    assert not leftovers and len(list((tmp_path / "full").glob("state-*.eqx"))) == 1
    loaded.model.check_compatible((5, 3))
    # Inference-only export (how shipped priors are stored): EMA weights, no optimiser state.
    models.export_model(tmp_path / "exported", full.state.ema_model, {"note": "x"}, step=6)
    exported = models.load_checkpoint(tmp_path / "exported")
    assert exported.step == 6 and exported.metadata["note"] == "x"
    assert_trees_equal(eqx_params(exported.model), eqx_params(full.state.ema_model))
    assert sorted(os.listdir(tmp_path / "exported")) == ["metadata.json", "model-000000006.eqx"]
    with pytest.raises(ValueError, match="ema=False"):
        models.load_checkpoint(tmp_path / "exported", ema=False)
    with pytest.raises(ValueError, match="resumable training run"):  # it would delete the state
        models.export_model(tmp_path / "full", full.state.ema_model, {}, step=6)
    assert len(list((tmp_path / "full").glob("state-*.eqx"))) == 1
    with pytest.raises(ValueError, match=r"`data`.*\(3,\)"):
        loaded.model.check_compatible((5, 4))


def eqx_params(tree):
    import equinox as eqx

    return eqx.filter(tree, eqx.is_array)


def test_bad_inputs(key, tmp_path):
    data, model, config = small_setup(key)
    bad = data.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`data` contains 1 NaN"):
        models.train(model, bad, key=key, config=config, progress=False)
    with pytest.raises(ValueError, match=r"`data` has shape \(32, 2\).*\(3,\)"):
        models.train(model, data[:, :2], key=key, config=config, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        models.TrainConfig(batch_size=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        models.load_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="load_pretrained.*available"):
        models.load_pretrained("no-such-model")
    with pytest.raises(TypeError, match=r"jax.random.key\(seed\)"):
        models.train(model, data, key=0, config=config, progress=False)
    with pytest.raises(ValueError, match="channel_mults of ints >= 1"):
        models.UNet(1, base_channels=4, channel_mults=(1, 0), key=key)
    out = tmp_path / "ck"
    models.train(
        model,
        data,
        key=key,
        config=models.TrainConfig(steps=2, batch_size=4, warmup_steps=1),
        out_dir=out,
        progress=False,
    )
    with pytest.raises(models.CheckpointMismatch, match="different model"):
        other = models.DiffusionModel(
            models.ScoreMLP(3, width=8, key=key), model.sde, model.normalisation, (3,)
        )
        models.train(other, data, key=key, config=config, out_dir=out, progress=False)
    state_file = next(out.glob("state-*.eqx"))
    raw = bytearray(state_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    state_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        models.load_checkpoint(out)
    (out / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        models.load_checkpoint(out)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    meta_ok = {"format": "other"}
    (out / "metadata.json").write_text(json.dumps(meta_ok))
    with pytest.raises(ValueError, match="metadata"):
        models.load_checkpoint(out)


def test_npz_loading(tmp_path):
    arr = np.arange(12.0).reshape(3, 4)
    np.savez(tmp_path / "d.npz", fields=arr, other=arr + 1)
    assert np.array_equal(models.load_data(tmp_path / "d.npz"), arr)
    assert np.array_equal(models.load_data(tmp_path / "d.npz", key="other"), arr + 1)
    with pytest.raises(ValueError, match="key='nope'.*other"):
        models.load_data(tmp_path / "d.npz", key="nope")
