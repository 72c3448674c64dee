"""The resolution-free SpectralDenoiser and the exact-denoiser training metric, against truth."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.fft as sf

from pdegen import fem, inverse, models


def _grf(grid, n, seed):
    keys = jr.split(jr.key(seed), n)
    fields = jax.vmap(lambda k: fem.gaussian_random_field((grid, grid), key=k))(keys)
    return np.asarray(fields, np.float32)[:, None]


def _model(data, depth=0, **kw):
    net = models.SpectralDenoiser(data.shape[1], depth=depth, key=jr.key(1), **kw)
    return models.DiffusionModel(
        net, models.EDMSDE(), models.Normalisation.fit(data), data.shape[1:], "denoiser"
    )


def test_gaussian_denoiser_cosine_equals_dense_posterior_mean():
    rng = np.random.default_rng(0)
    g = 6
    mode_std = rng.uniform(0.1, 2.0, (1, g, g))
    mean = 0.3
    den = models.GaussianDenoiser.cosine(mode_std, [mean])
    # dense: the orthonormal DCT basis as a matrix
    B = sf.idctn(np.eye(g * g).reshape(g * g, g, g), type=2, norm="ortho", axes=(1, 2))
    B = B.reshape(g * g, g * g).T  # columns = basis vectors
    C = B @ np.diag(mode_std.ravel() ** 2) @ B.T
    x = rng.standard_normal((1, g, g))
    s = 0.7
    want = mean + C @ np.linalg.solve(C + s**2 * np.eye(g * g), x.ravel() - mean)
    np.testing.assert_allclose(np.asarray(den(jnp.asarray(x), s)).ravel(), want, atol=1e-10)
    eig = models.GaussianDenoiser.eigen(B, mode_std.ravel() ** 2, np.full((1, g, g), mean))
    np.testing.assert_allclose(np.asarray(eig(jnp.asarray(x), s)).ravel(), want, atol=1e-10)


def test_exact_denoiser_matches_the_exact_prior_score():
    """The floor of the training metric is the Tweedie mean of the exact GRF score of the tasks."""
    g = 8
    prior = inverse.gaussian_prior(g, sde=models.EDMSDE())
    net = models.SpectralDenoiser(1, depth=0, key=jr.key(1))
    norm = models.Normalisation((0.0,), prior.std)  # the prior's units
    model = models.DiffusionModel(net, prior.sde, norm, (1, g, g), "denoiser")
    den = inverse.exact_denoiser(model)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, g, g)))
    t = jnp.asarray(0.5)
    a, sig = model.sde.alpha(t), model.sde.sigma(t)
    tweedie = (x + sig**2 * prior.score(x, t)) / a
    np.testing.assert_allclose(den(x / a, sig / a), tweedie, rtol=1e-9, atol=1e-12)


def test_spectral_denoiser_reaches_the_floor_on_grf_data():
    """Trained briefly on GRF fields, the Wiener head's loss is within 5% of the exact denoiser's."""
    data = _grf(16, 2000, 0)
    model = _model(data)
    config = models.TrainConfig(
        steps=200, batch_size=32, learning_rate=3e-3, warmup_steps=20, ema_decay=0.99
    )
    res = models.train(model, data, key=jr.key(2), config=config, progress=False)
    test = _grf(16, 128, 7)
    out = models.denoising_loss(
        res.state.ema_model,
        test,
        key=jr.key(3),
        reference=inverse.exact_denoiser(res.state.ema_model),
        num_draws=512,
    )
    assert out["floor"] < out["loss"] < 1.05 * out["floor"], out


def test_one_prior_for_every_grid():
    """Trained on 16 x 16 and 32 x 32 fields, the same weights reach the floor at 64 x 64."""
    d16, d32 = _grf(16, 1500, 0), _grf(32, 1500, 1)
    model = _model(d32)
    config = models.TrainConfig(
        steps=200, batch_size=32, learning_rate=3e-3, warmup_steps=20, ema_decay=0.99
    )
    res = models.train(model, [d16, d32], key=jr.key(2), config=config, progress=False)
    trained = res.state.ema_model
    test = _grf(64, 64, 9)
    assert trained.resolution_free
    out = models.denoising_loss(
        trained,
        test,
        key=jr.key(3),
        reference=inverse.exact_denoiser(trained, grid=64),
        num_draws=256,
    )
    assert out["excess"] < 0.1, out


def test_residual_layers_run_on_any_grid_and_start_at_zero():
    data = _grf(16, 8, 0)
    model = _model(data, depth=2, width=8, modes=6)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 24, 20)), jnp.float32)
    denoise = eqx.filter_jit(lambda m: m.at_shape((1, 24, 20)).denoiser(x, jnp.asarray(1.0)))
    out = denoise(model)
    assert out.shape == (1, 24, 20) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, denoise(_model(data, depth=0)), atol=1e-6)
    cfg = model.network.config()
    assert models.network_from_config(cfg).config() == cfg


def test_trained_grids_hold_the_residual_labels_beyond_the_finest_grid():
    """With ``trained_grids``, a finer grid's residual is conditioned on the label pair of the
    finest trained grid (same per-pixel noise); the trained and coarser grids are unchanged."""
    free = models.SpectralDenoiser(1, width=4, depth=1, modes=3, density_width=8, key=jr.key(1))
    free = eqx.tree_at(  # a residual that does something (it starts at zero)
        lambda n: n.project.weight,
        free,
        jr.normal(jr.key(2), free.project.weight.shape, free.project.weight.dtype),
    )
    held = free.with_config(trained_grids=[8, 4])
    assert held.trained_grids == (4, 8)
    assert models.network_from_config(held.config()).trained_grids == (4, 8)
    label = jnp.asarray(0.3, jnp.float32)
    for shape in ((3, 3), (4, 4), (6, 5), (8, 8)):
        np.testing.assert_array_equal(
            held._noise_embedding(label, shape), free._noise_embedding(label, shape)
        )
    np.testing.assert_array_equal(
        held._noise_embedding(label, (16, 12)), free._noise_embedding(label, (8, 8))
    )
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 16, 16)), jnp.float32)
    run = eqx.filter_jit(lambda net, x: net(x, label))
    assert not np.allclose(run(held, x), run(free, x), atol=1e-4)
    np.testing.assert_array_equal(run(held, x[:, :6, :6]), run(free, x[:, :6, :6]))
    for bad in ([], [0, 8]):
        with pytest.raises(ValueError, match="trained_grids"):
            models.SpectralDenoiser(1, trained_grids=bad, key=jr.key(0))


def test_mode_transforms_and_small_solves_match_their_references():
    """The blocks' truncated transforms are the orthonormal DCT-II (cosine) and DST-I on the
    interior nodes (sine, zero on the boundary) of scipy; the head's closed-form 2 x 2 and 1 x 1
    solves equal ``numpy.linalg.solve``."""
    from pdegen.models._spectral import _cosine_matrix, _sine_matrix, _solve_small

    rng = np.random.default_rng(0)
    for n in (3, 8, 17):
        eye = np.eye(n)
        np.testing.assert_allclose(
            _cosine_matrix(n, jnp.float64), sf.dct(eye, type=2, norm="ortho", axis=0), atol=1e-12
        )
        sine = np.asarray(_sine_matrix(n, jnp.float64))
        np.testing.assert_allclose(sine[:, [0, -1]], 0.0)
        np.testing.assert_allclose(
            sine[:, 1:-1], sf.dst(np.eye(n - 2), type=1, norm="ortho", axis=0), atol=1e-12
        )
    for c in (1, 2, 3):
        L = rng.standard_normal((5, 4, c, c))
        A = L @ np.swapaxes(L, -1, -2) + 0.1 * np.eye(c)
        b = rng.standard_normal((5, 4, c, 1))
        np.testing.assert_allclose(
            _solve_small(jnp.asarray(A), jnp.asarray(b)),
            np.linalg.solve(A, b),
            rtol=1e-10,
            atol=1e-12,
        )


def test_uncoupled_head_denoises_each_channel_by_its_own_spectrum():
    """``coupled=False``: the head's density is diagonal per mode, so with no residual layers the
    first channel's estimate does not depend on the second channel; the default couples them."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16)), jnp.float32)
    y = x.at[1].set(-x[1])
    for coupled in (True, False):
        net = models.SpectralDenoiser(2, depth=0, coupled=coupled, key=jr.key(1))
        density = net.spectral_density((16, 16))
        assert bool(jnp.all(density[..., 0, 1] == 0)) != coupled
        same = bool(jnp.allclose(net(x, 0.0)[0], net(y, 0.0)[0], atol=1e-6))
        assert same != coupled
        assert models.network_from_config(net.config()).config() == net.config()


def test_resolution_errors():
    data = _grf(16, 8, 0)
    unet = models.DiffusionModel(
        models.UNet(1, base_channels=4, channel_mults=(1, 2), key=jr.key(0)),
        models.EDMSDE(),
        models.Normalisation.fit(data),
        (1, 16, 16),
        "denoiser",
    )
    with pytest.raises(ValueError, match="not resolution-free"):
        unet.at_shape((1, 32, 32))
    with pytest.raises(ValueError, match="expects examples of shape"):
        models.train(unet, [data, _grf(8, 8, 1)], key=jr.key(0), progress=False)
    spectral = _model(data)
    with pytest.raises(ValueError, match="channels|shape"):
        spectral.at_shape((2, 16, 16))
    with pytest.raises(ValueError, match="sigma_data"):
        models.DiffusionModel(
            spectral.network, models.EDMSDE(), spectral.normalisation, (1, 16, 16), "epsilon"
        )


def test_at_shape_scales_the_largest_noise_level_per_unit_area():
    """White pixel noise: on a grid with 4x the pixels the largest modes have 4x the pixel-level
    variance, so sigma_max doubles (and halves on a quarter of the pixels)."""
    data = _grf(16, 8, 0)
    model = _model(data)
    assert model.at_shape((1, 32, 32)).sde.sigma_max == pytest.approx(2 * model.sde.sigma_max)
    assert model.at_shape((1, 8, 8)).sde.sigma_max == pytest.approx(0.5 * model.sde.sigma_max)
    assert model.at_shape((1, 32, 32)).at_shape((1, 16, 16)).sde.sigma_max == model.sde.sigma_max


def _band_ratio(model, grid):
    """The head's density over the exact GRF's, mean per band of ``|k|`` on a ``grid`` grid."""
    S = np.asarray(model.network.spectral_density((grid, grid)), np.float64)[..., 0, 0] * grid**2
    true = fem.grf_mode_std((grid, grid)) ** 2 / float(np.asarray(model.normalisation.std)[0]) ** 2
    ky, kx = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    r = np.hypot(ky, kx)
    bands = ((1, 4), (4, 16), (16, 32), (32, 64), (64, 128))
    return {
        b: float(np.mean(S[(r >= b[0]) & (r < b[1])] / true[(r >= b[0]) & (r < b[1])]))
        for b in bands
    }


def test_fitted_density_matches_the_grf_and_continues_to_finer_grids():
    """Fitted to 16 x 16 and 32 x 32 GRF fields, the head's density is the exact GRF's within 5%
    in every band on a 64 x 64 grid, half of whose modes lie beyond the fitted ones (the
    power-law continuation); without it the network's own extrapolation is off by far more."""
    d16, d32 = _grf(16, 1000, 0), _grf(32, 1000, 1)
    model = _model(d32)
    fitted, divergence = models.fit_spectral_density(model, [d16, d32], steps=1500)
    assert fitted.network.trained_modes == 31 and model.network.trained_modes is None
    assert 0 <= divergence < 0.01
    ratios = _band_ratio(fitted, 64)
    assert all(abs(v - 1) < 0.05 for v in ratios.values()), ratios
    untailed = models.network_from_config({**fitted.network.config(), "trained_modes": None})
    untailed = jax.tree.unflatten(jax.tree.structure(untailed), jax.tree.leaves(fitted.network))
    S_fit = fitted.network.spectral_density((32, 32))
    np.testing.assert_array_equal(S_fit, untailed.spectral_density((32, 32)))
    # the finer grid keeps the fitted modes' values and only continues beyond them
    np.testing.assert_allclose(
        fitted.network.spectral_density((64, 64))[:32, :32], S_fit, rtol=1e-6
    )
    beyond = _band_ratio(fitted.at_shape((1, 64, 64)), 64)[(32, 64)]
    raw = untailed.spectral_density((64, 64))[..., 0, 0] * 64**2
    true = fem.grf_mode_std((64, 64)) ** 2 / float(np.asarray(model.normalisation.std)[0]) ** 2
    corner = np.asarray(raw)[48:, 48:] / true[48:, 48:]
    assert abs(beyond - 1) < abs(np.mean(corner) - 1), (beyond, np.mean(corner))


def test_fitted_density_is_held_fixed_in_training_and_stays_positive_definite():
    rng = np.random.default_rng(0)
    base = _grf(16, 400, 0)[:, 0]
    data = np.stack([base, 0.5 * base + 0.1 * rng.standard_normal(base.shape)], 1).astype(
        np.float32
    )
    model = _model(data, depth=1, width=4, modes=4)
    fitted, _ = models.fit_spectral_density(model, data, steps=50)
    S = np.asarray(fitted.network.spectral_density((40, 40)), np.float64)
    assert np.linalg.eigvalsh(S).min() > 0  # the continuation keeps S = D S(e) D positive definite
    x = jnp.asarray(rng.standard_normal((2, 16, 16)), jnp.float32)

    def loss(net):
        return jnp.sum(net(x, jnp.asarray(0.1)) ** 2)

    for net, frozen in ((model.network, False), (fitted.network, True)):
        grads = eqx.filter_grad(loss)(net)
        density = jax.tree.leaves(grads.density)
        assert all(bool(jnp.all(g == 0)) for g in density) == frozen
        assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads.project))
    cfg = fitted.network.config()
    assert models.network_from_config(cfg).config() == cfg


def test_fit_spectral_density_errors():
    data = _grf(8, 16, 0)
    unet = models.UNet(1, base_channels=4, channel_mults=(1,), key=jr.key(0))
    plain = models.DiffusionModel(unet, models.EDMSDE(), models.Normalisation.fit(data), (1, 8, 8))
    with pytest.raises(TypeError, match="SpectralDenoiser"):
        models.fit_spectral_density(plain, data)
    with pytest.raises(ValueError, match=r"\(N >= 2, 1, H, W\)"):
        models.fit_spectral_density(_model(data), np.concatenate([data, data], 1))
    with pytest.raises(ValueError, match="steps >= 1"):
        models.fit_spectral_density(_model(data), data, steps=0)
    with pytest.raises(ValueError, match="trained_modes"):
        models.SpectralDenoiser(1, trained_modes=1, key=jr.key(0))
