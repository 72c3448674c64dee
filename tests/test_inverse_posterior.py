"""Posterior sampling on the benchmark tasks, against exact Gaussian posteriors on tiny grids."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.fft

from pdegen import fem
from pdegen.inverse import (
    bayes_posterior,
    dense_gaussian_prior,
    evaluate,
    gaussian_prior,
    make_task,
    prior_from_model,
    sample_posterior,
)
from pdegen.inverse import noise_floor as _noise_floor

GRID = 8


def _dense_reference(task):
    """Prior covariance, solution operator and posterior by plain dense linear algebra.

    Independent of the library's route: the DCT basis from scipy, ``S`` column by column from
    FEM solves, the posterior from the textbook formulas.
    """
    g = task.grid
    d = g * g
    std = fem.grf_mode_std((g, g)).reshape(-1)
    basis = np.stack(
        [scipy.fft.idctn(e.reshape(g, g), type=2, norm="ortho").reshape(-1) for e in np.eye(d)],
        axis=1,
    )
    L = basis * std  # a = L z
    C = L @ L.T
    problem, theta = task.physics.problem, task.physics.theta
    S = np.stack([np.asarray(problem.solve(**theta(jnp.asarray(e)))) for e in np.eye(d)], axis=1)
    G = S[task.sensors] if task.observed == "u" else np.eye(d)[task.sensors]
    s2 = _noise_floor(task) ** 2
    K = C @ G.T @ np.linalg.inv(G @ C @ G.T + s2 * np.eye(len(task.sensors)))
    mean = K @ np.asarray(task.y)
    cov = C - K @ G @ C
    return mean, cov, S


@pytest.mark.parametrize("name", ["poisson-inverse", "poisson-forward"])
def test_bayes_posterior_matches_dense_computation(name, key):
    task = make_task(name, grid=GRID, sensor_fraction=0.15, noise=0.02)
    mean, cov, S = _dense_reference(task)
    post = bayes_posterior(task, key=key, num_samples=4)
    assert np.allclose(np.asarray(post.mean[0]).reshape(-1), mean, atol=1e-8 * np.abs(mean).max())
    assert np.allclose(
        np.asarray(post.std[0]).reshape(-1), np.sqrt(np.diag(cov)), rtol=1e-6, atol=1e-12
    )
    assert np.allclose(np.asarray(post.mean[1]).reshape(-1), S @ mean, rtol=1e-6, atol=1e-12)
    if task.target == "u":  # exact std of u = S a
        std_u = np.sqrt(np.maximum(np.diag(S @ cov @ S.T), 0))
        assert np.allclose(np.asarray(post.std[1]).reshape(-1), std_u, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method", ["tmpd", "tmpd-cached"])
def test_tmpd_full_reproduces_exact_posterior(key, method):
    """With the exact GRF score TMPD (full, and with its covariance cached, which is exact for a
    Gaussian prior) is exact up to discretisation and Monte Carlo error."""
    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, noise=0.05)
    mean, cov, _ = _dense_reference(task)
    n = 256
    post = sample_posterior(
        gaussian_prior(GRID),
        task,
        method=method,
        key=key,
        num_samples=n,
        num_steps=200,
        batch_size=n,
    )
    # the one-off work before sampling is reported beside the time per sample
    assert 0.0 <= post.info["setup_seconds"] < float("inf")
    a = np.asarray(post.samples[:, 0]).reshape(n, -1)
    sd = np.sqrt(np.diag(cov))
    # Mean: within 4 Monte Carlo standard errors plus 5% of the posterior std (discretisation).
    assert np.all(np.abs(a.mean(0) - mean) < 4 * sd / np.sqrt(n) + 0.05 * sd)
    # Covariance: relative Frobenius error (Monte Carlo alone gives about sqrt(d / n) ~ 0.3 of it
    # in the worst direction; the norm-wise error is smaller).
    emp = np.cov(a.T)
    assert np.linalg.norm(emp - cov) / np.linalg.norm(cov) < 0.2
    assert np.allclose(a.std(0), sd, rtol=0.2)
    # Unguided prior samples are far from the posterior (the test can fail).
    prior_sd = np.sqrt(np.diag(_prior_cov(GRID)))
    assert np.mean(sd) < 0.8 * np.mean(prior_sd)


def _prior_cov(g):
    d = g * g
    std = fem.grf_mode_std((g, g)).reshape(-1)
    basis = np.stack(
        [scipy.fft.idctn(e.reshape(g, g), type=2, norm="ortho").reshape(-1) for e in np.eye(d)],
        axis=1,
    )
    return (basis * std) @ (basis * std).T


def test_dps_and_pigdm_reduce_the_data_misfit(key):
    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, noise=0.05)
    prior = gaussian_prior(GRID)
    kw = dict(key=key, num_samples=8, num_steps=100, batch_size=8)
    base = evaluate(sample_posterior(prior, task, method="unguided", **kw), task)
    for method, options in (("dps", {"scale": 1.0}), ("pigdm", {})):
        row = evaluate(sample_posterior(prior, task, method=method, **kw, **options), task)
        assert row["data_misfit"] < 0.5 * base["data_misfit"], (method, row, base)
        assert row["rel_l2"] < base["rel_l2"], (method, row, base)


@pytest.mark.parametrize("name", ["poisson-inverse", "poisson-forward"])
def test_dps_default_step_fits_the_data_to_the_noise_level(name, key):
    task = make_task(name, grid=GRID, sensor_fraction=0.3, noise=0.05)
    prior = gaussian_prior(GRID)
    noise = _noise_floor(task) * np.sqrt(task.num_sensors) / float(jnp.linalg.norm(task.y))
    kw = dict(key=key, num_samples=8, num_steps=100, batch_size=8)
    bayes = evaluate(sample_posterior(prior, task, method="bayes", **kw), task)
    row = evaluate(sample_posterior(prior, task, method="dps", **kw), task)
    assert row["data_misfit"] < 2 * noise, (row["data_misfit"], noise)
    assert row["rel_l2"] < 2.0 * bayes["rel_l2"], (row["rel_l2"], bayes["rel_l2"])


def test_method_objects_carry_their_options_on_the_tasks(key):
    """A method object runs as its name with the same options: the same samples for the same key;
    an object with options of its own on the joint route is a clear error."""
    from pdegen.inverse import DPS, MAP, PiGDM

    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, noise=0.05)
    prior = gaussian_prior(GRID)
    kw = dict(key=key, num_samples=4, num_steps=20, batch_size=4)
    by_name = sample_posterior(prior, task, method="dps", scale=0.5, **kw)
    by_object = sample_posterior(prior, task, method=DPS(scale=0.5), **kw)
    assert by_object.method == "dps"
    np.testing.assert_array_equal(by_object.samples, by_name.samples)
    default = sample_posterior(prior, task, method="dps", **kw)
    assert not np.allclose(default.samples, by_object.samples)  # the object's scale was used
    matched = sample_posterior(prior, task, method=PiGDM(matched=True), **kw)
    assert matched.method == "pigdm-matched"
    np.testing.assert_array_equal(
        matched.samples, sample_posterior(prior, task, method="pigdm-matched", **kw).samples
    )
    point = sample_posterior(prior, task, method=MAP(steps=5), **kw)
    assert point.method == "map" and point.samples.shape[0] == 1
    with pytest.raises(ValueError, match="solve"):
        sample_posterior(prior, task, method=DPS(scale=0.5), route="joint", **kw)
    with pytest.raises(ValueError, match="method object"):
        sample_posterior(prior, task, method="dsp", **kw)


@pytest.mark.parametrize("route", ["solve", "joint"])
def test_sampler_may_be_a_function(route, key):
    """``sampler`` takes a sampler function as well as a name: the named sampler's function with
    its defaults spelled out gives the same samples (its final denoising step left to the route,
    which takes its own), another option changes them, and an unknown name is a clear error."""
    import functools

    from pdegen import models

    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, noise=0.05)
    prior = gaussian_prior(GRID) if route == "solve" else _imperfect_joint_prior(task)
    kw = dict(key=key, num_samples=4, num_steps=10, batch_size=4, route=route, method="unguided")
    by_name = sample_posterior(prior, task, sampler="edm_heun", **kw).samples
    same = functools.partial(models.edm_heun, rho=7.0, denoise_final=True)  # the route's own
    np.testing.assert_array_equal(
        sample_posterior(prior, task, sampler=same, **kw).samples, by_name
    )
    other = functools.partial(models.edm_heun, rho=12.0)
    assert not np.allclose(sample_posterior(prior, task, sampler=other, **kw).samples, by_name)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_posterior(prior, task, sampler="heun", **kw)


def test_progress_takes_a_bool_or_a_bar(key, capsys):
    """``progress=True`` draws a bar over the samples, ``False`` none, a tqdm-like object is
    updated with the samples finished; anything else is a clear error before sampling."""
    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, noise=0.05)
    prior = gaussian_prior(GRID)
    kw = dict(method="dps", key=key, num_samples=4, num_steps=5, batch_size=2)
    quiet = sample_posterior(prior, task, progress=False, **kw)
    assert "sample" not in capsys.readouterr().err
    shown = sample_posterior(prior, task, progress=True, **kw)
    assert "4/4" in capsys.readouterr().err
    np.testing.assert_array_equal(quiet.samples, shown.samples)

    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    counter = Counter()
    sample_posterior(prior, task, progress=counter, **kw)
    assert counter.n == 4
    with pytest.raises(TypeError, match="progress"):
        sample_posterior(prior, task, progress="yes", **kw)


def _imperfect_joint_prior(task, inflation=0.5):
    """A joint Gaussian prior over (a, u) that knows the physics only approximately:
    the exact joint covariance plus independent noise on u (normalised units)."""
    g = task.grid
    d = g * g
    L = np.linalg.cholesky(_prior_cov(g) + 1e-12 * np.eye(d))
    from pdegen.inverse import solution_operator

    S = solution_operator(task.physics)
    J = np.concatenate([L, S @ L])
    sd = np.sqrt(np.sum(J**2, axis=1).reshape(2, d).mean(axis=1))
    J = J / np.repeat(sd, d)[:, None]
    cov = J @ J.T + np.diag(np.concatenate([np.zeros(d), np.full(d, inflation**2)]))
    prior = dense_gaussian_prior(cov, g, name="imperfect joint")
    return dataclasses.replace(prior, std=tuple(float(s) for s in sd))


def test_physics_guidance_lowers_the_pde_residual(key):
    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15)
    prior = _imperfect_joint_prior(task)
    kw = dict(key=key, num_samples=8, num_steps=100, batch_size=8, route="joint")
    plain = sample_posterior(prior, task, method="unguided", **kw)
    guided = sample_posterior(
        prior, task, method="unguided", physics_weight=1.0, physics_fraction=0.3, **kw
    )
    r_plain = evaluate(plain, task)["pde_residual"]
    r_guided = evaluate(guided, task)["pde_residual"]
    assert r_guided < 0.3 * r_plain, (r_guided, r_plain)
    # The weight is relative to the energy's curvature: even near the stability limit (2) the
    # fields keep their prior scale instead of blowing up.
    strong = sample_posterior(
        prior, task, method="unguided", physics_weight=1.8, physics_fraction=0.3, **kw
    )
    spread = lambda post: float(jnp.std(post.samples[:, 0]))  # noqa: E731
    assert 0.5 < spread(strong) / spread(plain) < 2.0, (spread(strong), spread(plain))
    # Projection: u <- solve(a) makes the residual vanish and reports the state before it.
    projected = sample_posterior(
        prior, task, method="unguided", physics_weight=1.0, physics_fraction=0.3, project=True, **kw
    )
    row = evaluate(projected, task)
    assert row["pde_residual"] < 1e-8
    assert row["before_projection"]["pde_residual"] == pytest.approx(r_guided, rel=1e-6)


@pytest.mark.parametrize("name", ["poisson-inverse", "helmholtz-inverse"])
def test_pde_projection_is_the_nearest_consistent_pair(name, key):
    from pdegen.inverse import pde_projection, solution_operator

    task = make_task(name, grid=GRID)
    S = solution_operator(task.physics)
    mean, std = (0.1, -0.02), (1.3, 0.05)
    x0 = jr.normal(key, (2, GRID, GRID))
    # Closed form of argmin_a ||a - a_hat||^2 + ||F(a) - u_hat||^2, F(a) = (S (sa a + ma) - mu) / su
    B = S * std[0] / std[1]
    c = (S @ np.full(GRID * GRID, mean[0]) - mean[1]) / std[1]
    a_hat, u_hat = np.asarray(x0[0]).reshape(-1), np.asarray(x0[1]).reshape(-1)
    a = np.linalg.solve(np.eye(GRID * GRID) + B.T @ B, a_hat + B.T @ (u_hat - c))
    for operator in (S, None):  # dense solution operator, or FEM solves with adjoint products
        project = jax.jit(pde_projection(task.physics, mean, std, solution_operator=operator))
        p = np.asarray(project(x0))
        assert np.allclose(p[0].reshape(-1), a, atol=1e-5 * np.abs(a).max())
        assert np.allclose(p[1].reshape(-1), B @ p[0].reshape(-1) + c, atol=1e-10)
        assert np.allclose(np.asarray(project(jnp.asarray(p))), p, atol=1e-5)  # a fixed point
    with pytest.raises(ValueError, match=rf"pair of shape \(2, {GRID}, {GRID}\)"):
        project(x0[:1])  # one channel: x[1] would be x[0], silently


def test_physics_correction_generates_pairs_that_solve_the_pde(key):
    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15)
    prior = _imperfect_joint_prior(task)
    kw = dict(key=key, num_samples=8, num_steps=60, batch_size=8, route="joint")
    plain = sample_posterior(prior, task, method="unguided", **kw)
    assert evaluate(plain, task)["pde_residual"] > 0.1
    spread = lambda post: float(jnp.std(post.samples[:, 0]))  # noqa: E731
    corrected = sample_posterior(
        prior, task, method="unguided", correction=True, physics_fraction=0.2, **kw
    )
    assert evaluate(corrected, task)["pde_residual"] < 1e-8
    # a keeps the prior's scale (the projection moves it by the least that fits u)
    assert 0.7 < spread(corrected) / spread(plain) < 1.3, (spread(corrected), spread(plain))
    # Conditioned on observations of u, the correction carries them into a at every step.
    guided = sample_posterior(prior, task, method="tmpd", **kw)
    both = sample_posterior(prior, task, method="tmpd", correction=True, physics_fraction=1.0, **kw)
    assert evaluate(both, task)["pde_residual"] < 1e-8
    assert evaluate(both, task)["rel_l2"] < 1.1 * evaluate(guided, task)["rel_l2"]


def test_consistent_prior_projects_every_denoised_estimate(key):
    from pdegen.inverse import consistent_prior, pde_projection, solution_operator

    task = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15)
    x = jr.normal(key, (2, GRID, GRID))
    t = jnp.asarray(0.3)
    # The exact joint prior's denoiser already solves the PDE: the projection leaves it unchanged.
    exact = gaussian_prior(GRID, channels=("a", "u"))
    d = exact.sde.tweedie_denoiser(exact.score, x, t)
    cd = consistent_prior(exact, "poisson").score.denoise(x, t)
    np.testing.assert_allclose(cd, d, atol=1e-8 * float(jnp.abs(d).max()))
    # An imperfect prior's estimate moves to the nearest consistent pair, at every noise level.
    prior = _imperfect_joint_prior(task)
    consistent = consistent_prior(prior, task.physics)
    project = pde_projection(
        task.physics, prior.mean, prior.std, solution_operator=solution_operator(task.physics)
    )
    raw = prior.sde.tweedie_denoiser(prior.score, x, t)
    np.testing.assert_allclose(consistent.score.denoise(x, t), project(raw), atol=1e-6)
    assert float(jnp.abs(consistent.score.denoise(x, t) - raw).max()) > 1e-2
    kw = dict(key=key, num_samples=4, num_steps=40, batch_size=4, route="joint")
    assert (
        evaluate(sample_posterior(prior, task, method="unguided", **kw), task)["pde_residual"] > 0.1
    )
    post = sample_posterior(consistent, task, method="tmpd", **kw)
    assert evaluate(post, task)["pde_residual"] < 1e-8
    with pytest.raises(ValueError, match="joint field"):
        consistent_prior(gaussian_prior(GRID), "poisson")
    with pytest.raises(ValueError, match="grid"):
        consistent_prior(prior, fem.PDETask("poisson", 2 * GRID))
    with pytest.raises(ValueError, match="linear PDE"):
        consistent_prior(prior, "darcy")


def _tiny_model(channels, grid):
    """An untrained micro U-Net with the EDM process of the shipped prior."""
    from pdegen.models import EDMSDE, DiffusionModel, Normalisation, UNet

    net = UNet(channels, base_channels=4, channel_mults=(1,), groups=2, key=jr.key(0))
    norm = Normalisation(
        (0.0,) * channels, (0.05, 0.002)[:channels] if channels <= 2 else (1.0,) * channels
    )
    return DiffusionModel(net, EDMSDE(), norm, (channels, grid, grid))


def test_priors_that_do_not_fit_the_task_are_rejected(key):
    task = make_task("poisson-inverse", grid=GRID)
    with pytest.raises(
        ValueError,
        match=r"prior: generates 4x4 fields and is not resolution-free, but task poisson-inverse is on a 8x8 grid",
    ):
        sample_posterior(prior_from_model(_tiny_model(2, 4)), task, method="dps", key=key)
    with pytest.raises(ValueError, match="route='joint' needs a joint prior"):
        sample_posterior(
            prior_from_model(_tiny_model(1, GRID)), task, method="dps", route="joint", key=key
        )
    with pytest.raises(ValueError, match="3 channels"):
        prior_from_model(_tiny_model(3, GRID))
    with pytest.raises(ValueError, match="y must have shape"):
        sample_posterior(gaussian_prior(GRID), task, method="tmpd", key=key, y=jnp.zeros(3))
    with pytest.raises(ValueError, match="method must be one of"):
        sample_posterior(gaussian_prior(GRID), task, method="magic", key=key)
    with pytest.raises(ValueError, match="no exact Gaussian posterior"):
        bayes_posterior(make_task("darcy-inverse", grid=GRID), key=key)


def test_invert_cli_runs(tmp_path, capsys):
    from pdegen.cli import main

    rc = main(
        [
            "invert",
            "--task",
            "poisson-inverse",
            "--prior",
            "exact",
            "--grid",
            str(GRID),
            "--method",
            "bayes",
            "tmpd-rowsum",
            "--samples",
            "2",
            "--steps",
            "5",
            "--sensors",
            "0.15",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "tmpd-rowsum" in out and "rel L2" in out
    rows = json.loads((tmp_path / "poisson-inverse.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["bayes", "tmpd-rowsum"]
    assert rows[0]["ratio_to_bayes"] == 1.0
    assert (tmp_path / "poisson-inverse.png").stat().st_size > 1000


def test_demo_needs_the_shipped_prior(monkeypatch, capsys, tmp_path):
    import pdegen.models
    from pdegen.cli import main

    monkeypatch.setattr(pdegen.models, "available_pretrained", lambda: [])
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "available_pretrained()" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The demo on a (tiny, untrained) checkpoint in a fast setting: table, figure, JSON."""
    from pdegen.cli import main
    from pdegen.models import TrainConfig, init_train_state, make_optimizer, save_checkpoint

    config = TrainConfig(steps=1, batch_size=2, warmup_steps=0, checkpoint_every=1, log_every=1)
    state = init_train_state(_tiny_model(2, GRID), make_optimizer(config))
    save_checkpoint(
        tmp_path / "ckpt", state, {"train": dataclasses.asdict(config), "losses": [], "key": [0, 0]}
    )
    rc = main(
        [
            "demo",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "demo"),
            "--samples",
            "2",
            "--steps",
            "3",
            "--sensors",
            "0.15",
            "--methods",
            "bayes",
            "diffusionpde",
            "--quiet",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "bayes" in out and "diffusionpde" in out
    payload = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert payload["grid"] == GRID and len(payload["rows"]) == 2
    assert all(np.isfinite(r["rel_l2"]) for r in payload["rows"])
    assert (tmp_path / "demo" / "demo.png").is_file()
    _ = jax  # the strict conftest is active
