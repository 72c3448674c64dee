"""statFEM-likelihood guidance, the model-error-aware exact posterior and the MAP baseline,
against dense textbook computations on tiny grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from pdegen import fem
from pdegen.fem.statfem import StatFEM
from pdegen.inverse import (
    StatFEMLikelihood,
    bayes_posterior,
    default_likelihood,
    evaluate,
    fit_likelihood,
    gaussian_prior,
    make_task,
    map_estimate,
    relative_l2,
    sample_posterior,
    statfem_guidance,
    tmpd,
)
from pdegen.inverse import noise_floor as _noise_floor
from pdegen.models import VPSDE

GRID = 8


def _dense(task, likelihood=None):
    """Posterior mean and covariance of ``a`` for ``y = rho G a + d + e`` by the textbook formulas."""
    g = task.grid
    d = g * g
    std = fem.grf_mode_std((g, g)).reshape(-1)
    basis = np.stack(
        [scipy.fft.idctn(e.reshape(g, g), type=2, norm="ortho").reshape(-1) for e in np.eye(d)],
        axis=1,
    )
    C = (basis * std) @ (basis * std).T
    problem, theta = task.physics.problem, task.physics.theta
    S = np.stack([np.asarray(problem.solve(**theta(jnp.asarray(e)))) for e in np.eye(d)], axis=1)
    G = S[task.sensors] if task.observed == "u" else np.eye(d)[task.sensors]
    m = len(task.sensors)
    if likelihood is None:
        rho, Sigma = 1.0, _noise_floor(task) ** 2 * np.eye(m)
    else:
        rho = likelihood.rho
        pts = np.asarray(task.points)
        r2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
        Sigma = likelihood.sigma_d**2 * np.exp(
            -0.5 * r2 / likelihood.ell_d**2
        ) + likelihood.sigma_e**2 * np.eye(m)
    K = rho * C @ G.T @ np.linalg.inv(rho**2 * G @ C @ G.T + Sigma)
    return K @ np.asarray(task.y), C - rho * K @ G @ C


@pytest.mark.parametrize("name", ["poisson-inverse", "poisson-forward"])
def test_bayes_with_statfem_likelihood_matches_dense(name, key):
    task = make_task(
        name, grid=GRID, sensor_fraction=0.2, noise=0.02, discrepancy=0.3, discrepancy_length=0.3
    )
    lik = StatFEMLikelihood(
        rho=1.3, sigma_d=2 * task.discrepancy_std, ell_d=0.25, sigma_e=task.noise_std
    )
    mean, cov = _dense(task, lik)
    post = bayes_posterior(task, key=key, num_samples=4, likelihood=lik)
    assert np.allclose(np.asarray(post.mean[0]).reshape(-1), mean, atol=1e-8 * np.abs(mean).max())
    assert np.allclose(
        np.asarray(post.std[0]).reshape(-1), np.sqrt(np.diag(cov)), rtol=1e-6, atol=1e-12
    )
    # The model error changes the answer (so the comparison above can fail).
    plain_mean, _ = _dense(task)
    assert np.linalg.norm(plain_mean - mean) > 0.05 * np.linalg.norm(mean)


def test_statfem_guidance_reproduces_the_model_error_posterior(key):
    """TMPD under the statFEM likelihood with the exact GRF score is exact up to sampling errors."""
    task = make_task(
        "poisson-inverse",
        grid=GRID,
        sensor_fraction=0.2,
        noise=0.05,
        discrepancy=0.5,
        discrepancy_length=0.3,
    )
    lik = default_likelihood(task)
    assert lik.sigma_d == task.discrepancy_std > 0
    mean, cov = _dense(task, lik)
    plain_mean, _ = _dense(task)
    n = 256
    post = sample_posterior(
        gaussian_prior(GRID),
        task,
        method="statfem",
        key=key,
        num_samples=n,
        num_steps=200,
        batch_size=n,
    )
    a = np.asarray(post.samples[:, 0]).reshape(n, -1)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(a.mean(0) - mean) < 4 * sd / np.sqrt(n) + 0.05 * sd)
    assert np.allclose(a.std(0), sd, rtol=0.2)
    # ... and not the posterior that ignores the model error.
    assert np.linalg.norm(a.mean(0) - mean) < 0.5 * np.linalg.norm(a.mean(0) - plain_mean)


def test_statfem_guidance_without_model_error_is_tmpd(key):
    sde = VPSDE()
    score = lambda x, t: -x / (sde.alpha(t) ** 2 * 0.5 + sde.sigma(t) ** 2)  # noqa: E731
    pts = jax.random.uniform(key, (5, 2))
    A = jax.random.normal(jax.random.fold_in(key, 1), (5, 16))
    y = jax.random.normal(jax.random.fold_in(key, 2), (5,))
    x = jax.random.normal(jax.random.fold_in(key, 3), (4, 4))
    t = jnp.asarray(0.4)
    plain = tmpd(score, sde, A, y, noise_std=0.1)(x, t)
    same = statfem_guidance(
        score, sde, A, y, sensors=pts, likelihood=StatFEMLikelihood(sigma_e=0.1)
    )(x, t)
    assert np.allclose(plain, same, rtol=1e-6, atol=1e-8)
    other = statfem_guidance(
        score,
        sde,
        A,
        y,
        sensors=pts,
        likelihood=StatFEMLikelihood(sigma_d=0.5, ell_d=0.3, sigma_e=0.1),
    )(x, t)
    assert not np.allclose(plain, other, rtol=1e-3)
    # The observation part of a statFEM model is taken as it is.
    V = fem.FunctionSpace(fem.unit_square(5), "P1")
    model = StatFEM(
        fem.Poisson(V),
        pts * 0.8 + 0.1,
        coefficients=dict(kappa=1.0, f=1.0),
        rho=0.9,
        sigma_d=0.5,
        ell_d=0.3,
        sigma_e=0.1,
    )
    assert StatFEMLikelihood.from_model(model) == pytest.approx((0.9, 0.5, 0.3, 0.1))


@pytest.mark.parametrize("name", ["poisson-inverse", "helmholtz-forward"])
def test_map_equals_the_posterior_mean_for_linear_tasks(name, key):
    task = make_task(name, grid=GRID, sensor_fraction=0.2, noise=0.02, discrepancy=0.3)
    for lik in (None, default_likelihood(task)):
        post = bayes_posterior(task, key=key, num_samples=2, likelihood=lik)
        res = map_estimate(task, likelihood=lik, steps=200)
        assert float(relative_l2(res.field[0], post.mean[0])) < 1e-4
        assert float(relative_l2(res.field[1], post.mean[1])) < 1e-4
        values = np.asarray(res.objective)[np.isfinite(res.objective)]
        assert values[-1] < values[0]


def test_map_for_darcy_fits_the_data_and_beats_the_prior(key):
    task = make_task("darcy-inverse", grid=12, sensor_fraction=0.3)
    res = map_estimate(task, steps=60)
    a, u = res.field
    assert float(jnp.min(a)) >= 3.0 and float(jnp.max(a)) <= 12.0
    misfit = float(jnp.linalg.norm(task.observe(res.field) - task.y) / jnp.linalg.norm(task.y))
    prior_a = jnp.full_like(a, 7.5)
    prior_misfit = float(
        jnp.linalg.norm(task.observe(jnp.stack([prior_a, task.solve(prior_a)])) - task.y)
        / jnp.linalg.norm(task.y)
    )
    assert misfit < 0.3 * prior_misfit, (misfit, prior_misfit)
    assert float(relative_l2(a, task.truth[0])) < float(relative_l2(prior_a, task.truth[0]))
    row = evaluate(sample_posterior(None, task, method="map", key=key), task)
    assert row["method"] == "map" and np.isnan(row["coverage90"])


def test_fit_likelihood_recovers_the_discrepancy(key):
    sizes = []
    for index in range(3):
        task = make_task(
            "poisson-inverse",
            grid=12,
            sensor_fraction=0.6,
            noise=0.01,
            discrepancy=0.5,
            discrepancy_length=0.3,
            index=index,
        )
        fitted = fit_likelihood(task, fit=("sigma_d",))
        sizes.append(fitted.sigma_d / task.discrepancy_std)
    # Three draws of an 86-sensor data set pin the discrepancy's size down to a factor of about 2.
    assert 0.5 < np.exp(np.mean(np.log(sizes))) < 2.0, sizes


def test_bad_statfem_input():
    with pytest.raises(ValueError, match="sigma_e"):
        StatFEMLikelihood(sigma_e=-1.0).check()
    with pytest.raises(ValueError, match="rho"):
        StatFEMLikelihood(rho=0.0).check()
    with pytest.raises(ValueError, match="discrepancy"):
        make_task("poisson-inverse", grid=GRID, discrepancy=-0.1)
    with pytest.raises(ValueError, match="exactly one"):
        statfem_guidance(
            lambda x, t: x, VPSDE(), jnp.eye(2), jnp.ones(2), sensors=jnp.zeros((2, 2))
        )
    with pytest.raises(ValueError, match="points"):
        StatFEMLikelihood().covariance(jnp.zeros(3))
    with pytest.raises(ValueError, match="fit"):
        fit_likelihood(make_task("poisson-inverse", grid=GRID), fit=("nu",))


def test_invert_cli_with_model_error(tmp_path, capsys):
    import json

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
            "map",
            "statfem",
            "--samples",
            "2",
            "--steps",
            "5",
            "--sensors",
            "0.2",
            "--discrepancy",
            "0.3",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    assert "statfem" in capsys.readouterr().out
    rows = json.loads((tmp_path / "poisson-inverse.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["bayes", "map", "statfem"]
    # The MAP point of a linear task is the posterior mean.
    assert abs(rows[1]["ratio_to_bayes"] - 1.0) < 1e-3
