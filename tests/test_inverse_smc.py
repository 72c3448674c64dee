"""Sequential Monte Carlo posterior sampling (twisted SMC) checked against the exact Gaussian
posterior and its closed-form evidence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import fem, inverse


def _grf_problem(grid=8, fraction=0.1, noise_rel=0.1, seed=0):
    """A GRF prior on a ``grid x grid`` square, point observations of the field at a fraction of
    the nodes with Gaussian noise: a small linear-Gaussian problem with a closed form."""
    mesh = fem.unit_square(grid)
    prior = inverse.grf_prior(mesh)
    truth = prior.sample(jax.random.key(seed), 1)[0]
    rng = np.random.default_rng(seed)
    m = max(4, int(fraction * mesh.npoints))
    nodes = rng.choice(mesh.npoints, m, replace=False)
    H = np.zeros((m, mesh.npoints))
    H[np.arange(m), nodes] = 1.0
    clean = H @ np.asarray(truth)
    noise = noise_rel * float(np.sqrt(np.mean(clean**2)))
    y = clean + noise * rng.standard_normal(m)
    lik = inverse.gaussian_likelihood(jnp.asarray(H), y, noise_std=noise)
    return prior, lik, truth


@pytest.fixture(scope="module")
def problem():
    prior, lik, truth = _grf_problem()
    exact = inverse.exact_posterior(prior, lik, key=jax.random.key(1), num_samples=2)
    return prior, lik, truth, exact


def test_smc_mean_converges_to_the_exact_posterior(problem):
    """With the TMPD twist, the squared distance of the SMC mean from the exact posterior mean, in
    units of the exact posterior variance, falls with the particle count at the Monte Carlo rate
    (fitted log-log slope near -1: the time discretisation leaves no visible floor at 30 steps), and
    the mean's error against the truth approaches the exact posterior's."""
    prior, lik, truth, exact = problem
    counts = (8, 32, 128)
    reps = 3
    scale = float(jnp.sum(exact.std**2))
    bayes = float(inverse.relative_l2(exact.mean, truth))
    mse, ratio = [], []
    for n in counts:
        method = inverse.SMC(inverse.TMPD(), num_particles=n)
        d, r = [], []
        for rep in range(reps):
            post = inverse.sample_posterior(
                prior, lik, method=method, key=jax.random.key(10 * n + rep), num_steps=30
            )
            d.append(float(jnp.sum((post.mean - exact.mean) ** 2)) / scale)
            r.append(float(inverse.relative_l2(post.mean, truth)) / bayes)
        mse.append(np.mean(d))
        ratio.append(np.mean(r))
    slope = np.polyfit(np.log(counts), np.log(mse), 1)[0]
    assert slope < -0.7, (slope, mse)
    assert mse[-1] < 0.1, mse
    assert abs(ratio[-1] - 1.0) < min(0.1, abs(ratio[0] - 1.0)), ratio


def _chain_log_evidence(prior, lik, num_steps):
    """The closed-form evidence of the model that SMC with the TMPD twist samples, for the DCT GRF
    prior: per DCT mode (variance ``c``) the unguided Euler-Maruyama chain on the SMC time grid is
    linear, ``x' = (1 - h f - h g^2 / (alpha^2 c + sigma^2)) x + g sqrt(h) eps`` from ``N(0, 1)``, and
    the denoising kernel ``N(D(x), c sigma^2 / (alpha^2 c + sigma^2))`` at ``t_min``; its prior
    variance per mode, then the Gaussian evidence of the whitened data."""
    sde = prior.sde
    c = np.asarray(prior.score.mode_std, np.float64) ** 2
    ts = np.asarray(inverse.smc_time_grid(sde, num_steps))
    v = np.full_like(c, float(sde.prior_std()) ** 2)
    for t, t_next in zip(ts[:-1], ts[1:]):
        h, g2, f = t - t_next, float(sde.diffusion(t)) ** 2, float(sde.drift_coefficient(t))
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        v = (1.0 - h * f - h * g2 / (a**2 * c + s**2)) ** 2 * v + g2 * h
    a, s = float(sde.alpha(ts[-1])), float(sde.sigma(ts[-1]))
    gain = a * c / (a**2 * c + s**2)
    root = jnp.asarray(np.sqrt(gain**2 * v + c * s**2 / (a**2 * c + s**2)))

    def sqrt(z):
        return prior.scale * jax.scipy.fft.idctn(root * z, type=2, norm="ortho").reshape(-1)

    W = lik.whitener
    post = inverse.gaussian_posterior(
        prior.offset,
        sqrt,
        lambda a_: W @ lik.forward(a_),
        W @ lik.y,
        noise_std=1.0,
        z_shape=c.shape,
    )
    return float(post.log_evidence)


def test_smc_evidence_is_unbiased(problem):
    """``exp(log Z_hat - log Z)`` averages to 1 within three standard errors over independent runs
    (the SMC estimate of ``Z``, not of ``log Z``, is unbiased), with a standard error small enough
    to detect a 7% bias. ``Z`` is the closed-form evidence of the model SMC samples (the prior's
    Euler-Maruyama chain and the final denoising kernel); it converges to the GRF's closed form as
    the steps grow (the time discretisation is the only gap)."""
    prior, lik, _, exact = problem
    steps = 30  # the largest configuration of the convergence test (compiled once)
    log_z = _chain_log_evidence(prior, lik, steps)
    method = inverse.SMC(inverse.TMPD(), num_particles=128)
    ratios = []
    for rep in range(60):
        post = inverse.sample_posterior(
            prior,
            lik,
            method=method,
            key=jax.random.key(1000 + rep),
            num_samples=1,
            num_steps=steps,
        )
        ratios.append(np.exp(post.info["log_evidence"] - log_z))
    ratios = np.asarray(ratios)
    se = ratios.std(ddof=1) / np.sqrt(ratios.size)
    assert se < 0.025, se
    assert abs(ratios.mean() - 1.0) < 3 * se, (ratios.mean(), se)
    exact_log_z = exact.info["log_evidence"]
    gaps = [abs(_chain_log_evidence(prior, lik, k) - exact_log_z) for k in (steps, 160, 640)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01, gaps


def test_smc_outputs_and_names(problem):
    """The method names, the result's fields and the diagnostics: weights normalised, ESS within
    [1, N], samples drawn from the particles."""
    prior, lik, _, exact = problem
    assert inverse.FIELD_METHODS["smc"].label == "smc"
    assert inverse.FIELD_METHODS["smc-tmpd"].label == "smc-tmpd"
    assert isinstance(inverse.FIELD_METHODS["smc-tmpd"].proposal, inverse.TMPD)
    post = inverse.sample_posterior(
        prior,
        lik,
        method=inverse.SMC(inverse.TMPD(), num_particles=8),
        key=jax.random.key(3),
        num_samples=5,
        num_steps=30,
    )
    assert post.method == "smc-tmpd"
    assert post.samples.shape == (5, prior.size) and post.mean.shape == (prior.size,)
    assert bool(jnp.all(post.std > 0))
    info = post.info
    assert info["particles"].shape == (8, prior.size)
    assert float(jnp.sum(info["weights"])) == pytest.approx(1.0)
    assert len(info["ess"]) == 31 and all(1.0 - 1e-9 <= e <= 8 + 1e-9 for e in info["ess"])
    assert np.isfinite(info["log_evidence"])
    rows = np.asarray(info["particles"])
    assert all(np.any(np.all(rows == np.asarray(s)[None], axis=1)) for s in post.samples)
    np.testing.assert_allclose(post.mean, np.asarray(info["weights"]) @ rows, rtol=1e-12)
    metrics = inverse.field_metrics(post, exact.mean)
    assert np.isfinite(metrics["coverage90"])


def test_systematic_resampling_is_unbiased():
    """Ancestor counts of systematic resampling average to ``N W_i``, each within one of it."""
    logw = jnp.log(jnp.asarray([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    counts = []
    for i in range(200):
        idx = inverse.systematic_resample(jax.random.key(i), logw, 16)
        counts.append(np.bincount(np.asarray(idx), minlength=5))
    counts = np.asarray(counts)
    expected = 16 * np.exp(np.asarray(logw))
    assert np.all(np.abs(counts - expected[None]) < 1.0 + 1e-12)
    np.testing.assert_allclose(counts.mean(0), expected, atol=0.1)
    assert float(inverse.effective_sample_size(jnp.zeros(7))) == pytest.approx(7.0)


def test_smc_bad_input(problem):
    """Fewer than two particles, an ESS threshold outside [0, 1], a proposal without a Gaussian
    twist, another sampler or the joint route: clear errors before any sampling."""
    prior, lik, _, _ = problem
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_particles"):
            inverse.SMC(num_particles=bad)
    with pytest.raises(ValueError, match="ess_threshold"):
        inverse.SMC(ess_threshold=1.5)
    with pytest.raises(TypeError, match="proposal"):
        inverse.SMC(inverse.DPS())
    with pytest.raises(TypeError, match="proposal"):
        inverse.SMC(inverse.TMPD("diagonal"))
    with pytest.raises(ValueError, match="sampler must be 'euler_maruyama'"):
        inverse.sample_posterior(
            prior, lik, method="smc", key=jax.random.key(0), sampler="predictor_corrector"
        )
    task = inverse.make_task("poisson-forward", grid=8, index=0)
    with pytest.raises(ValueError, match="num_particles"):
        inverse.sample_posterior(
            inverse.gaussian_prior(8), task, method="smc", key=jax.random.key(0), num_particles=1
        )
    with pytest.raises(ValueError, match="solve"):
        inverse.sample_posterior(
            inverse.gaussian_prior(8), task, method="smc", key=jax.random.key(0), route="joint"
        )
    with pytest.raises(ValueError, match="pigdm-matched.*solve"):
        inverse.sample_posterior(
            inverse.gaussian_prior(8),
            task,
            method="pigdm-matched",
            key=jax.random.key(0),
            route="joint",
        )


@pytest.mark.slow
def test_smc_task_route_converges_to_the_exact_posterior():
    """The benchmark-task route (poisson-inverse, 16x16, noise-free data with the task's noise
    floor, 256 particles, TMPD twist): the weighted mean of ``a`` is within a tenth of the exact
    posterior variance of the exact mean (squared distance), the coverage of the weighted std is
    within 0.1 of the exact posterior's, and the evidence is within 0.5 of the closed form."""
    task = inverse.make_task("poisson-inverse", grid=16, index=0)
    prior = inverse.gaussian_prior(16)
    bayes = inverse.sample_posterior(prior, task, method="bayes", key=jax.random.key(0))
    post = inverse.sample_posterior(
        prior,
        task,
        method="smc-tmpd",
        key=jax.random.key(1),
        num_samples=256,
        num_steps=100,
        num_particles=256,
    )
    d = float(jnp.sum((post.mean[0] - bayes.mean[0]) ** 2) / jnp.sum(bayes.std[0] ** 2))
    assert d < 0.1, d
    row, exact_row = inverse.evaluate(post, task), inverse.evaluate(bayes, task)
    assert abs(row["coverage90"] - exact_row["coverage90"]) < 0.1, (row, exact_row)
    field_prior, lik = inverse.task_problem(task)
    exact = inverse.exact_posterior(field_prior, lik, key=jax.random.key(2), num_samples=2)
    assert abs(post.info["log_evidence"] - exact.info["log_evidence"]) < 0.5


def test_matched_twist_variances_are_the_kl_projection_of_the_tweedie_covariance(problem):
    """The PiGDM twist's matched variance at each time is ``tr((H H^T)^{-1} H C_t H^T) / m`` with
    the Gaussian prior's Tweedie covariance ``C_t = sigma^2 C (alpha^2 C + sigma^2 I)^{-1}``
    (dense here): for point observations (``H H^T = I``) and for dense random rows. For point
    observations it lies below PiGDM's white-data closed form once noise is added (smooth prior)."""
    prior, lik, _, _ = problem
    sde = prior.sde
    z = jnp.zeros(prior.z_shape, jnp.float64)
    L = jax.jacfwd(lambda z_: prior.score.sqrt(z_).ravel())(z).reshape(prior.size, -1)
    C = L @ L.T
    ts = jnp.asarray([sde.t_max, 0.5, 0.1, 0.01, sde.t_min])
    dense = jnp.asarray(np.random.default_rng(0).standard_normal((5, prior.size)))
    for H in (jnp.asarray(lik.forward.matrix), dense):
        r2 = inverse.matched_twist_variances(
            prior.score,
            sde,
            lambda x, H=H: H @ x.ravel(),
            ts,
            jnp.zeros((1, *prior.shape)),
            key=jax.random.key(0),
        )
        G = H @ H.T
        expected = []
        for t in ts:
            a, s = sde.alpha(t), sde.sigma(t)
            Ct = s**2 * C @ jnp.linalg.inv(a**2 * C + s**2 * jnp.eye(prior.size))
            expected.append(jnp.trace(jnp.linalg.solve(G, H @ Ct @ H.T)) / H.shape[0])
        np.testing.assert_allclose(r2, jnp.asarray(expected), rtol=1e-8)
        m = H.shape[0]
        exact_probes = inverse.matched_twist_variances(
            prior.score,
            sde,
            lambda x, H=H: H @ x.ravel(),
            ts,
            jnp.zeros((1, *prior.shape)),
            key=jax.random.key(1),
            probes=m,
        )
        np.testing.assert_allclose(exact_probes, jnp.asarray(expected), rtol=1e-8)
        # two probes per state, 32 states: unbiased within its Monte Carlo error over 8 keys
        estimates = jnp.stack(
            [
                inverse.matched_twist_variances(
                    prior.score,
                    sde,
                    lambda x, H=H: H @ x.ravel(),
                    ts,
                    jnp.zeros((32, *prior.shape)),
                    key=jax.random.key(k),
                    max_states=32,
                    probes=2,
                )
                for k in range(8)
            ]
        )
        mc = jnp.std(estimates, axis=0) / np.sqrt(8)
        assert bool(jnp.all(jnp.abs(jnp.mean(estimates, 0) - jnp.asarray(expected)) < 4 * mc))
        assert bool(jnp.all(mc > 0))
    H = jnp.asarray(lik.forward.matrix)
    r2 = inverse.matched_twist_variances(
        prior.score,
        sde,
        lambda x: H @ x.ravel(),
        ts,
        jnp.zeros((1, *prior.shape)),
        key=jax.random.key(0),
    )
    v = jnp.trace(H @ C @ H.T) / H.shape[0]
    closed = jnp.asarray(
        [v * sde.sigma(t) ** 2 / (sde.alpha(t) ** 2 * v + sde.sigma(t) ** 2) for t in ts]
    )
    assert bool(jnp.all(r2[1:] < closed[1:])), (r2, closed)


def _shared_tmpd_smc(prior, lik, **options):
    """:func:`inverse.twisted_smc` on a point-observation problem (shared TMPD twist by default)."""
    H = jnp.asarray(lik.forward.matrix)
    options = {"twist": "tmpd", "shared_covariance": True, **options}
    return inverse.twisted_smc(
        prior.score,
        prior.sde,
        lambda x: H @ x.ravel(),
        jnp.asarray(lik.y),
        noise_std=lik.noise_std,
        shape=prior.shape,
        key=jax.random.key(0),
        **options,
    )


def test_tmpd_twist_over_noised_prior_states_is_the_zero_states_for_a_gaussian_prior(problem):
    """The shared TMPD twist averaged over noised prior samples (the route for a learned prior)
    is, for a Gaussian prior whose Tweedie covariance does not depend on the state, the twist at
    the zero state: the same particles and evidence."""
    prior, lik, _, _ = problem
    states = prior.sample(jax.random.key(5), 4).reshape(4, *prior.shape)
    runs = [
        _shared_tmpd_smc(prior, lik, num_particles=8, num_steps=10, twist_states=s)
        for s in (None, states)
    ]
    np.testing.assert_allclose(runs[1].particles, runs[0].particles, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(runs[1].log_evidence, runs[0].log_evidence, rtol=1e-8)


def test_conditional_transition_draws_the_gaussian_conditional_with_its_density_ratio():
    """The conditional move ``q(x' | x) ∝ N(x'; m, v I) N(y; y_hat + J (x' - m), Sigma)``: draws
    whose mean and covariance are the dense Gaussian conditional's (within Monte Carlo error over
    20000 draws), and a returned ``log p(x' | x) - log q(x' | x)`` equal to the dense densities'."""
    from scipy.stats import multivariate_normal

    from pdegen.inverse._smc import _conditional_step

    rng = np.random.default_rng(0)
    d, k, v = 6, 2, 0.3
    J = rng.standard_normal((k, d))
    B = rng.standard_normal((k, k))
    Sigma = B @ B.T + 0.2 * np.eye(k)
    m, y_hat, y = rng.standard_normal(d), rng.standard_normal(k), rng.standard_normal(k)
    S = v * J @ J.T + Sigma
    q_mean = m + v * J.T @ np.linalg.solve(S, y - y_hat)
    Q = v * np.eye(d) - v**2 * J.T @ np.linalg.solve(S, J)
    args = tuple(jnp.asarray(a) for a in (m, v, J, Sigma, y_hat, y))
    draws, ratios = jax.vmap(lambda key: _conditional_step(key, *args))(
        jax.random.split(jax.random.key(0), 20000)
    )
    draws = np.asarray(draws)
    se = np.sqrt(np.diag(Q) / draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - q_mean) < 4 * se)
    np.testing.assert_allclose(np.cov(draws.T), Q, atol=0.03)
    for x_new, ratio in zip(draws[:5], np.asarray(ratios[:5])):
        dense = multivariate_normal(m, v * np.eye(d)).logpdf(x_new) - multivariate_normal(
            q_mean, Q
        ).logpdf(x_new)
        assert ratio == pytest.approx(dense, rel=1e-9, abs=1e-9)


def test_conditional_transition_leaves_only_the_discretisation_to_the_weights(problem):
    """With a Gaussian prior, a linear map and the TMPD twist the conditional move is the locally
    optimal proposal: on the small problem (64 particles, 30 steps) it never resamples where the
    gradient move (TDS) does, and its effective sample size stays higher; the
    default SMC(TMPD()) uses it; linearised per particle it still resamples less than the gradient
    move; the PiGDM twist refuses it."""
    prior, lik, _, _ = problem

    def run(transition, steps):
        return _shared_tmpd_smc(
            prior, lik, num_particles=64, num_steps=steps, transition=transition
        )

    cond, gradient = run("conditional", 30), run("gradient", 30)
    assert int(jnp.sum(cond.resampled)) == 0 < int(jnp.sum(gradient.resampled))
    assert float(jnp.min(cond.ess)) > float(jnp.min(gradient.ess))
    post = inverse.sample_posterior(
        prior,
        lik,
        method=inverse.SMC(inverse.TMPD(), num_particles=8),
        key=jax.random.key(3),
        num_steps=30,
    )
    assert post.info["transition"] == "conditional"
    with pytest.raises(ValueError, match="transition"):
        inverse.SMC(inverse.TMPD(), transition="exact")
    with pytest.raises(ValueError, match="TMPD twist"):
        inverse.SMC(transition="conditional")
    # linearised at each particle's own state (the route of a nonlinear map): the same proposal
    # up to taking the Jacobian and covariance at t_k rather than t_{k+1}, which costs some weight
    # variance at 30 steps (2 resamplings here) but less than the gradient move (7)
    per_particle = _shared_tmpd_smc(
        prior,
        lik,
        num_particles=64,
        num_steps=30,
        transition="conditional",
        shared_covariance=False,
    )
    assert int(jnp.sum(per_particle.resampled)) < int(jnp.sum(gradient.resampled))
    assert float(jnp.min(per_particle.ess)) > float(jnp.min(gradient.ess))
    with pytest.raises(ValueError, match="transition"):
        run("bogus", 10)
    with pytest.raises(ValueError, match="twist='tmpd'"):
        _shared_tmpd_smc(
            prior, lik, num_particles=4, num_steps=3, twist="pigdm", transition="conditional"
        )
