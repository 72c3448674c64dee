"""Guidance on Gaussian data, where the exact score and the exact posterior are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen.inverse._guidance import dps, energy_guidance, pigdm, tmpd, tweedie_mean


class _VP:
    """Linear-beta VP SDE (analytic marginals), independent of pdegen.models."""

    bmin, bmax = 0.1, 20.0

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.bmax - self.bmin) - 0.5 * t * self.bmin

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(1.0 - jnp.exp(2.0 * self.log_alpha(t)))

    def beta(self, t):
        return self.bmin + t * (self.bmax - self.bmin)


SDE = _VP()
D, M, NOISE = 5, 3, 0.1


def _problem():
    rng = np.random.default_rng(0)
    L = 0.4 * rng.normal(size=(D, D))
    Sigma = jnp.asarray(L @ L.T + 0.3 * np.eye(D))
    mu = jnp.asarray(rng.normal(size=D))
    H = jnp.asarray(rng.normal(size=(M, D)))
    y = H @ (mu + 0.5) + 0.05

    def score(x, t):
        a, s = SDE.alpha(t), SDE.sigma(t)
        return -jnp.linalg.solve(a**2 * Sigma + s**2 * jnp.eye(D), x - a * mu)

    K = Sigma @ H.T @ jnp.linalg.inv(H @ Sigma @ H.T + NOISE**2 * jnp.eye(M))
    return score, H, y, mu, Sigma, mu + K @ (y - H @ mu), Sigma - K @ H @ Sigma


def _reverse_sde(score_fn, key, n, steps=300):
    ts = jnp.linspace(1.0, 1e-3, steps + 1)

    def one(k):
        x = jax.random.normal(k, (D,))

        def body(x, i):
            t, dt = ts[i], ts[i] - ts[i + 1]
            b = SDE.beta(t)
            z = jax.random.normal(jax.random.fold_in(k, i), (D,))
            return x + (0.5 * b * x + b * score_fn(x, t)) * dt + jnp.sqrt(b * dt) * z, None

        return jax.lax.scan(body, x, jnp.arange(steps))[0]

    return jax.jit(jax.vmap(one))(jax.random.split(key, n))


def test_tmpd_full_reproduces_exact_gaussian_posterior(key):
    score, H, y, *_, post_mean, post_cov = _problem()
    n = 2000
    xs = _reverse_sde(tmpd(score, SDE, H, y, noise_std=NOISE, variant="full"), key, n)
    # Monte Carlo standard error of the mean is sqrt(var / n); allow 5 of them plus discretisation.
    se = jnp.sqrt(jnp.diag(post_cov) / n)
    assert jnp.all(jnp.abs(xs.mean(0) - post_mean) < 5 * se + 0.02)
    assert jnp.max(jnp.abs(jnp.cov(xs.T) - post_cov)) < 0.08
    # Unguided samples are far from the posterior: the test can fail.
    xu = _reverse_sde(score, key, n)
    assert jnp.max(jnp.abs(xu.mean(0) - post_mean)) > 0.2


@pytest.mark.parametrize(
    "make",
    [
        lambda s, H, y: dps(s, SDE, H, y, scale=1.0),
        lambda s, H, y: pigdm(s, SDE, H, y, noise_std=NOISE),
        lambda s, H, y: tmpd(s, SDE, H, y, noise_std=NOISE, variant="diagonal"),
        lambda s, H, y: tmpd(s, SDE, H, y, noise_std=NOISE, variant="rowsum"),
    ],
)
def test_guidance_reduces_data_misfit(make, key):
    score, H, y, *_ = _problem()
    misfit = lambda xs: float(jnp.mean(jnp.sum((xs @ H.T - y[None, :]) ** 2, axis=1)))  # noqa: E731
    guided = _reverse_sde(make(score, H, y), key, 500)
    plain = _reverse_sde(score, key, 500)
    assert misfit(guided) < 0.5 * misfit(plain)


def test_callable_observation_matches_matrix(key):
    score, H, y, *_ = _problem()
    x = jax.random.normal(key, (D,))
    g1 = tmpd(score, SDE, H, y, noise_std=NOISE)(x, 0.5)
    g2 = tmpd(score, SDE, lambda x0: H @ x0, y, noise_std=NOISE)(x, 0.5)
    assert jnp.allclose(g1, g2, atol=1e-10)


def test_energy_guidance_switches_on_late(key):
    score, *_ = _problem()
    energy = lambda x0: 0.5 * jnp.sum(x0**2)  # noqa: E731
    g = energy_guidance(score, SDE, energy, weight=3.0, start=0.2)
    x = jax.random.normal(key, (D,))
    assert jnp.allclose(g(x, 0.5), score(x, 0.5))
    grad = jax.grad(lambda x_: energy(tweedie_mean(score, SDE, x_, 0.1)))(x)
    assert jnp.allclose(g(x, 0.1), score(x, 0.1) - 3.0 * grad)


def test_bad_observations_are_rejected():
    score, H, y, *_ = _problem()
    with pytest.raises(ValueError, match="y must be a vector"):
        tmpd(score, SDE, H, y[:, None])
    with pytest.raises(ValueError, match="NaN"):
        dps(score, SDE, H, y.at[0].set(jnp.nan))
    with pytest.raises(ValueError, match="columns"):
        tmpd(score, SDE, H[:, :-1], y)(jnp.zeros(D), 0.5)
    with pytest.raises(ValueError, match="variant"):
        tmpd(score, SDE, H, y, variant="nope")


def test_pigdm_with_the_matched_variance_table_is_tmpd_for_one_observation(key):
    """For one observed direction the Kullback-Leibler projection onto ``r^2 H H^T`` is exact, so
    PiGDM with the matched variance table is TMPD (exact for a Gaussian prior): equal at the
    table's times (to rounding) and within its log-linear interpolation error between them."""
    from pdegen.inverse import matched_variance_table
    from pdegen.models import VPSDE

    sde = VPSDE()
    _, H, y, mu, Sigma, *_ = _problem()

    def score(x, t):
        a, s = sde.alpha(t), sde.sigma(t)
        return -jnp.linalg.solve(a**2 * Sigma + s**2 * jnp.eye(D), x - a * mu)

    H1, y1 = H[:1], y[:1]
    table = matched_variance_table(score, sde, lambda x: H1 @ x, jnp.zeros((1, D)), key=key)
    guided = pigdm(score, sde, H1, y1, noise_std=NOISE, variance=table)
    exact = tmpd(score, sde, H1, y1, noise_std=NOISE)
    nodes = jax.vmap(sde.time_from_scaled_sigma)(jnp.exp(table.log_ratio))
    x = jax.random.normal(key, (D,))
    for t in nodes[1:-1:6]:
        np.testing.assert_allclose(guided(x, t), exact(x, t), rtol=1e-6)
    for t in 0.5 * (nodes[1:-1:6] + nodes[2::6]):
        np.testing.assert_allclose(guided(x, t), exact(x, t), rtol=1e-2)
    # the closed form differs: the test can fail
    v = float((H1 @ Sigma @ H1.T)[0, 0] / (H1 @ H1.T)[0, 0])
    closed = pigdm(score, sde, H1, y1, noise_std=NOISE, data_variance=v)
    gaps = [
        float(
            jnp.linalg.norm(closed(x, t) - exact(x, t)) / jnp.linalg.norm(exact(x, t) - score(x, t))
        )
        for t in nodes[1:-1:6]
    ]
    assert max(gaps) > 0.05, gaps


def test_matched_variances_do_not_shrink_as_noise_grows(key):
    """``E[Cov(x_0 | x_t)]`` cannot shrink as noise is added. A score whose Tweedie covariance
    collapses at high noise (as a network's can) gets, there, the largest value met at lower noise,
    while a Gaussian prior's exact values (non-decreasing already) are left as they are."""
    from pdegen.inverse import matched_twist_variances
    from pdegen.models import VPSDE

    sde = VPSDE()
    Sigma = _problem()[4]
    ts = jnp.linspace(sde.t_min, sde.t_max, 12)
    observe = lambda x: x[:2]  # noqa: E731

    def score_for(scale):
        def score(x, t):
            a, s = sde.alpha(t), sde.sigma(t)
            return -jnp.linalg.solve(a**2 * scale(t) * Sigma + s**2 * jnp.eye(D), x)

        return score

    states = jnp.zeros((1, D))
    exact = matched_twist_variances(score_for(lambda t: 1.0), sde, observe, ts, states, key=key)
    assert bool(jnp.all(jnp.diff(exact) > 0)), exact
    # the Tweedie covariance of the collapsing score: s^2 c(t) H Sigma H^T / (a^2 c(t) Sigma + s^2)
    collapse = lambda t: jnp.where(t > 0.5, 1e-3, 1.0)  # noqa: E731
    r2 = matched_twist_variances(score_for(collapse), sde, observe, ts, states, key=key)
    low = ts <= 0.5
    np.testing.assert_allclose(r2[low], exact[low], rtol=1e-10)
    np.testing.assert_allclose(r2[~low], jnp.max(exact[low]), rtol=1e-10)


def test_loewner_envelope_is_non_decreasing_above_its_input():
    """Each matrix of the envelope lies above its input and above the one before (differences
    positive semi-definite); a non-decreasing input comes back unchanged."""
    from pdegen.inverse._guidance import _loewner_envelope

    rng = np.random.default_rng(3)
    B = rng.normal(size=(6, 4, 4))
    M = jnp.asarray(B @ np.swapaxes(B, 1, 2))  # PSD, in no order
    E = _loewner_envelope(M)
    tol = 1e-10 * float(jnp.max(jnp.abs(M)))
    assert float(jnp.min(jnp.linalg.eigvalsh(E - M))) > -tol
    assert float(jnp.min(jnp.linalg.eigvalsh(E[1:] - E[:-1]))) > -tol
    assert float(jnp.max(jnp.abs(E - M))) > 1.0  # the input was not ordered: the test can fail
    increasing = jnp.cumsum(M, axis=0)
    np.testing.assert_allclose(_loewner_envelope(increasing), increasing, atol=tol)


def test_tmpd_cached_at_noised_prior_states_is_tmpd_for_a_gaussian_prior(key):
    """A Gaussian prior's Tweedie covariance does not depend on the state, so the covariance
    averaged over noised prior samples (the route for a learned prior) is TMPD's at the cached
    noise levels; states of the wrong shape are a clear error."""
    from pdegen.inverse import tmpd_cached
    from pdegen.models import VPSDE

    sde = VPSDE()
    _, H, y, mu, Sigma, *_ = _problem()

    def score(x, t):
        a, s = sde.alpha(t), sde.sigma(t)
        return -jnp.linalg.solve(a**2 * Sigma + s**2 * jnp.eye(D), x - a * mu)

    states = mu[None] + jax.random.normal(key, (6, D)) @ jnp.linalg.cholesky(Sigma).T
    guided = tmpd_cached(score, sde, H, y, shape=(D,), noise_std=NOISE, states=states, num_times=8)
    exact = tmpd(score, sde, H, y, noise_std=NOISE)
    x = jax.random.normal(jax.random.fold_in(key, 1), (D,))
    for t in sde.time_grid(7, jnp.float64)[1:-1]:
        np.testing.assert_allclose(guided(x, t), exact(x, t), rtol=1e-6)
    with pytest.raises(ValueError, match="states"):
        tmpd_cached(score, sde, H, y, shape=(D,), states=jnp.zeros((2, D + 1)))


def test_tmpd_cached_reuses_a_prebuilt_table(key):
    """The covariance table built once (what ``sample_posterior`` does for all its batches) gives
    the same guidance as one built inside ``tmpd_cached``; a table for another sensor count is a
    clear error."""
    from pdegen.inverse import CovarianceTable, projected_covariance_table, tmpd_cached
    from pdegen.models import VPSDE

    sde = VPSDE()
    _, H, y, mu, Sigma, *_ = _problem()

    def score(x, t):
        a, s = sde.alpha(t), sde.sigma(t)
        return -jnp.linalg.solve(a**2 * Sigma + s**2 * jnp.eye(D), x - a * mu)

    table = projected_covariance_table(score, sde, H, shape=(D,), num_times=8)
    assert isinstance(table, CovarianceTable) and table.matrices.shape == (8, M, M)
    inline = tmpd_cached(score, sde, H, y, shape=(D,), noise_std=NOISE, num_times=8)
    reused = tmpd_cached(score, sde, H, y, shape=(D,), noise_std=NOISE, table=table)
    x = jax.random.normal(key, (D,))
    for t in sde.time_grid(5, jnp.float64)[1:-1]:
        np.testing.assert_allclose(reused(x, t), inline(x, t), rtol=1e-12)
    with pytest.raises(ValueError, match="table"):
        tmpd_cached(score, sde, H[:2], y[:2], shape=(D,), table=table)


def test_a_diverged_guided_mean_is_reported():
    """The divergence guard: a posterior mean that predicts the data far worse than the zero field
    raises a RuntimeWarning naming the method; a mean that fits them does not."""
    import warnings

    from pdegen import fem, inverse
    from pdegen.inverse._field_posterior import DIVERGED_MISFIT, _Observe, warn_if_diverged

    mesh = fem.unit_square(4)
    prior = inverse.grf_prior(mesh)
    truth = prior.sample(jax.random.key(0), 1)[0]
    H = jnp.eye(mesh.npoints)[::3]
    noise = 0.01
    lik = inverse.gaussian_likelihood(H, H @ truth, noise_std=noise)
    observe = _Observe(prior, lik, jnp.asarray(noise))  # the data in units of their own scale
    y_n = noise * (lik.whitener @ lik.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_diverged(observe, y_n, truth, "pigdm") < 1e-12
        assert warn_if_diverged(observe, y_n, jnp.zeros_like(truth), "pigdm") == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning, match="pigdm posterior mean misses the data"):
        ratio = warn_if_diverged(observe, y_n, -50.0 * truth, "pigdm")
    assert ratio > DIVERGED_MISFIT
    # data below the noise level are measured against the noise: a mean within a few noise
    # stds of zero data is no divergence
    quiet = inverse.gaussian_likelihood(H, jnp.zeros(H.shape[0]), noise_std=noise)
    y_q = noise * (quiet.whitener @ quiet.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            warn_if_diverged(_Observe(prior, quiet, jnp.asarray(noise)), y_q, 0.02 * truth, "pigdm")
            < 3.0
        )
