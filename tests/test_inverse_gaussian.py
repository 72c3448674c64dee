"""The exact-posterior baseline against an independent dense computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen.inverse._gaussian import gaussian_posterior


def _dense_problem(seed=0, d=12, k=12, m=4):
    rng = np.random.default_rng(seed)
    L = jnp.asarray(rng.normal(size=(d, k)) * 0.5)
    mean = jnp.asarray(rng.normal(size=d))
    G = jnp.asarray(rng.normal(size=(m, d)))
    y = jnp.asarray(rng.normal(size=m))
    return L, mean, G, y


def test_matches_dense_formulas():
    L, mean, G, y = _dense_problem()
    s = 0.3
    post = gaussian_posterior(mean, L, G, y, noise_std=s)
    C = L @ L.T
    S = G @ C @ G.T + s**2 * jnp.eye(y.size)
    K = C @ G.T @ jnp.linalg.inv(S)
    assert jnp.allclose(post.mean, mean + K @ (y - G @ mean), atol=1e-10)
    assert jnp.allclose(post.std**2, jnp.diag(C - K @ G @ C), atol=1e-10)
    assert jnp.allclose(post.prior_std**2, jnp.diag(C), atol=1e-10)
    logev = jax.scipy.stats.multivariate_normal.logpdf(y, G @ mean, S)
    assert jnp.allclose(post.log_evidence, logev, atol=1e-10)


def test_functional_operators_and_field_shapes():
    L, mean, G, y = _dense_problem()
    post_m = gaussian_posterior(mean, L, G, y, noise_std=0.2)
    post_f = gaussian_posterior(
        mean.reshape(3, 4),
        lambda z: (L @ z).reshape(3, 4),
        lambda x: G @ x.ravel(),
        y,
        noise_std=0.2,
        z_shape=(12,),
    )
    assert post_f.mean.shape == (3, 4)
    assert jnp.allclose(post_f.mean.ravel(), post_m.mean, atol=1e-10)
    assert jnp.allclose(post_f.std.ravel(), post_m.std, atol=1e-10)


def test_given_prior_variance_is_used_and_checked():
    L, mean, G, y = _dense_problem()
    post = gaussian_posterior(mean, L, G, y, noise_std=0.2)
    given = gaussian_posterior(mean, L, G, y, noise_std=0.2, prior_variance=jnp.diag(L @ L.T))
    assert jnp.allclose(given.std, post.std, atol=1e-12)
    assert jnp.allclose(given.prior_std, post.prior_std, atol=1e-12)
    doubled = gaussian_posterior(mean, L, G, y, noise_std=0.2, prior_variance=2 * jnp.diag(L @ L.T))
    assert jnp.allclose(doubled.prior_std, jnp.sqrt(2.0) * post.prior_std, atol=1e-12)
    with pytest.raises(ValueError, match="prior_variance has 11 entries"):
        gaussian_posterior(mean, L, G, y, noise_std=0.2, prior_variance=jnp.ones(11))


def _dense_variance(prior):
    """diag(L L^T) of a Gaussian prior from the columns of its square root."""
    eye = jnp.eye(int(np.prod(prior.z_shape))).reshape((-1,) + tuple(prior.z_shape))
    cols = jax.vmap(prior.sqrt)(eye)
    return jnp.sum(cols**2, axis=0)


def test_closed_form_prior_variances_match_the_square_roots():
    from pdegen import fem, inverse

    mesh = fem.rectangle(nx=7, ny=5)
    grf = inverse.grf_prior(mesh, alpha=2.5, tau=2.0)
    assert jnp.allclose(grf._closed_form_variance(), _dense_variance(grf), rtol=1e-12)
    V = fem.FunctionSpace(fem.unit_square(6), "P1")
    for rank in (None, 5):
        matern = inverse.matern_prior(V, length_scale=0.3, sigma=2.0, rank=rank)
        assert jnp.allclose(matern._closed_form_variance(), _dense_variance(matern), rtol=1e-10)


def test_matheron_samples_have_posterior_moments(key):
    L, mean, G, y = _dense_problem()
    post = gaussian_posterior(mean, L, G, y, noise_std=0.3)
    xs = post.sample(key, 20000)
    se = post.std / jnp.sqrt(20000.0)
    assert jnp.all(jnp.abs(xs.mean(0) - post.mean) < 5 * se)
    assert jnp.allclose(xs.std(0), post.std, rtol=0.05)


def test_coverage_of_truth_drawn_from_prior(getkey):
    L, mean, G, _ = _dense_problem(d=40, k=40, m=10)
    covs = []
    for _ in range(40):
        x = mean + L @ jax.random.normal(getkey(), (40,))
        y = G @ x + 0.3 * jax.random.normal(getkey(), (10,))
        covs.append(
            gaussian_posterior(mean, L, G, y, noise_std=0.3).credible_interval_coverage(x, 0.9)
        )
    assert abs(float(jnp.mean(jnp.stack(covs))) - 0.9) < 0.04


def test_bad_input():
    L, mean, G, y = _dense_problem()
    with pytest.raises(ValueError, match="noise_std"):
        gaussian_posterior(mean, L, G, y, noise_std=0.0)
    with pytest.raises(ValueError, match="y must be a vector"):
        gaussian_posterior(mean, L, G, y[:, None], noise_std=0.1)
    with pytest.raises(ValueError, match="columns"):
        gaussian_posterior(mean, L, G[:, :-1], y, noise_std=0.1)
    with pytest.raises(ValueError, match="shape"):
        gaussian_posterior(mean, L, G, y[:-1], noise_std=0.1)
