"""Hard-constrained diffusion: constraint sets, reflected / Metropolis / mirrored samplers.

Truth: a box-truncated diagonal Gaussian, whose reflected-noised score is exact
(:class:`pdegen.models.TruncatedNormalScore`) and whose moments scipy's ``truncnorm`` gives; the
uniform law on a simplex (Dirichlet(1) moments), which reflected noising leaves unchanged; a
logit-normal law on a box (a Gaussian in mirror coordinates), with moments by quadrature.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import inverse, models
from pdegen.models import Box, ConvexSet, Simplex


def _vmapped(fn):
    """``fn`` mapped over a leading batch axis and compiled (faster than op-by-op dispatch)."""
    return jax.jit(jax.vmap(fn))


def _moment_z_scores(samples, mean, var):
    """(mean error, variance error) in standard errors estimated from the samples, per coordinate."""
    n = samples.shape[0]
    centred = samples - samples.mean(0)
    m4 = np.mean(centred**4, 0)
    var_hat = samples.var(0)
    z_mean = (samples.mean(0) - mean) / np.sqrt(var_hat / n)
    z_var = (var_hat - var) / np.sqrt((m4 - var_hat**2) / n)
    return z_mean, z_var


# --- domains ---------------------------------------------------------------------------------


def test_box_reflect_is_exact_folding(getkey):
    box = Box([-1.0, 0.0, 0.5, 0.0, -np.inf], [1.0, 2.0, 3.0, np.inf, 4.0])
    x = 30.0 * jr.normal(getkey(), (500, 5))
    y = _vmapped(box.reflect)(x)
    assert bool(_vmapped(box.contains)(y).all())  # atol = 0: exactly inside
    inside = _vmapped(box.project)(x)
    np.testing.assert_array_equal(_vmapped(box.reflect)(inside), inside)
    # one mirror image a little outside each face; folding is 2w-periodic and even about a face
    np.testing.assert_allclose(
        box.reflect(jnp.array([-1.3, 2.4, 0.1, -0.7, 4.2])), [-0.7, 1.6, 0.9, 0.7, 3.8]
    )
    np.testing.assert_allclose(
        box.reflect(jnp.array([-1.3 + 4.0, 2.4 - 4.0, 0.0, 0.0, 0.0]))[:2], [-0.7, 1.6]
    )


def test_box_heat_kernel_score_matches_image_sum():
    box = Box([-1.0, 0.0, 0.5], [1.0, 2.0, 3.0])
    x = np.array([0.3, 1.7, 0.6])
    x0 = np.array([-0.9, 0.2, 2.9])
    lo, hi = np.asarray(box.lower), np.asarray(box.upper)
    ks = np.arange(-300, 301)[:, None]
    for s in (0.05, 0.5, 1.9, 2.1, 5.0, 30.0):
        w = hi - lo
        centres = np.concatenate([x0 + 2 * ks * w, 2 * lo - x0 + 2 * ks * w])
        logits = -((x - centres) ** 2) / (2 * s**2)
        weights = np.exp(logits - logits.max(0))
        weights /= weights.sum(0)
        want = -np.sum(weights * (x - centres), 0) / s**2
        got = np.asarray(box.heat_kernel_score(jnp.asarray(x), jnp.asarray(x0), s))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 / s**2)
    # one-sided bounds: the images x0 and 2 l - x0 (about the finite bound); no bound: Gaussian
    half = Box([0.0, -np.inf, -np.inf], [np.inf, 1.0, np.inf])
    x, x0, s = np.array([0.2, 0.7, 0.3]), np.array([0.5, 0.9, -0.4]), 0.6
    ref = np.array([0.0, 1.0, 0.0])
    c = np.stack([x0, 2 * ref - x0])
    w = np.exp(-((x - c) ** 2) / (2 * s**2))
    w[1, 2] = 0.0
    want = -np.sum(w * (x - c), 0) / w.sum(0) / s**2
    got = np.asarray(half.heat_kernel_score(jnp.asarray(x), jnp.asarray(x0), s))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_truncated_normal_score_against_quadrature():
    box = Box([-1.0, 0.0], [1.0, 2.0])
    sde = models.VESDE(sigma_min=1e-3, sigma_max=5.0)
    truth = models.TruncatedNormalScore(box, [0.3, 0.0], [0.5, 1.0], sde)
    score = jax.jit(lambda x, t: truth(x, t))
    grid = np.linspace(0, 1, 4001)
    for t in (0.3, 0.7, 1.0):
        s = float(sde.sigma(jnp.asarray(t)))
        x = np.array([0.9, 0.15])
        want = []
        for i in range(2):
            lo, hi = float(box.lower[i]), float(box.upper[i])
            x0 = lo + (hi - lo) * grid
            dens0 = np.exp(-((x0 - [0.3, 0.0][i]) ** 2) / (2 * [0.5, 1.0][i] ** 2))

            def log_p(y, x0=x0, dens0=dens0, i=i):
                ks = np.arange(-12, 13)[:, None]
                w = box.upper[i] - box.lower[i]
                c = np.concatenate(
                    [x0 + 2 * ks * float(w), 2 * float(box.lower[i]) - x0 + 2 * ks * float(w)]
                )
                k = np.exp(-((y - c) ** 2) / (2 * s**2)).sum(0)
                return np.log(np.trapezoid(dens0 * k, x0))

            h = 1e-5
            want.append((log_p(x[i] + h) - log_p(x[i] - h)) / (2 * h))
        np.testing.assert_allclose(score(jnp.asarray(x), t), want, rtol=1e-5, atol=1e-8)


def test_simplex_projection_and_reflection(getkey):
    simplex = Simplex((4, 5), mass=3.0)
    x = 2.0 * jr.normal(getkey(), (200, 4, 5))
    p = _vmapped(simplex.project)(x)
    assert bool(_vmapped(simplex.contains)(p).all())
    # KKT of the projection: p = max(x - theta, 0) with one theta per example
    theta = np.array([np.median((xi - pi)[pi > 0]) for xi, pi in zip(np.asarray(x), np.asarray(p))])
    np.testing.assert_allclose(
        np.asarray(p), np.maximum(np.asarray(x) - theta[:, None, None], 0), atol=1e-12
    )
    r = _vmapped(simplex.reflect)(x)
    assert bool(_vmapped(simplex.contains)(r).all())
    inside = _vmapped(lambda k: simplex.uniform_sample(key=k))(jr.split(getkey(), 50))
    np.testing.assert_allclose(_vmapped(simplex.project)(inside), inside, atol=1e-14)
    np.testing.assert_allclose(
        _vmapped(simplex.mirror_inverse)(_vmapped(simplex.mirror)(inside)), inside, rtol=1e-12
    )


def test_box_mirror_round_trip(getkey):
    box = Box([-1.0, 0.0, -np.inf], [1.0, np.inf, 2.0])
    x = _vmapped(box.project)(jr.normal(getkey(), (100, 3)))
    x = jnp.clip(x, jnp.array([[-0.99, 1e-3, -5.0]]), jnp.array([[0.99, 5.0, 1.99]]))
    np.testing.assert_allclose(
        _vmapped(box.mirror_inverse)(_vmapped(box.mirror)(x)), x, rtol=1e-12, atol=1e-14
    )
    big = _vmapped(box.mirror_inverse)(60.0 * jr.normal(getkey(), (100, 3)))
    assert bool(_vmapped(box.contains)(big).all())
    simplex = Simplex((5,), mass=2.0)
    sde = models.VESDE(sigma_max=10.0)
    xs = models.sample_mirrored(
        lambda y, t: -y / (4.0 + sde.sigma(t) ** 2), sde, simplex, 16, key=getkey(), num_steps=10
    )
    assert bool(_vmapped(simplex.contains)(xs).all())


# --- samplers against truth ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["reflected", "metropolis"])
def test_sampler_matches_truncated_normal_moments(method):
    box = Box([-1.0, 0.0], [1.0, 2.0])
    sde = models.VESDE(sigma_min=1e-3, sigma_max=5.0)
    truth = models.TruncatedNormalScore(box, [0.3, 0.0], [0.5, 1.0], sde)
    xs = models.sample_constrained_domain(
        truth, sde, box, 1500, key=jr.key(7), method=method, num_steps=250
    )
    assert bool(_vmapped(box.contains)(xs).all())
    mean, var = truth.truncated_moments()
    z_mean, z_var = _moment_z_scores(np.asarray(xs), mean, var)
    assert np.all(np.abs(z_mean) < 4.0), z_mean
    assert np.all(np.abs(z_var) < 4.0), z_var


@pytest.mark.parametrize("method", ["reflected", "metropolis"])
def test_simplex_sampler_keeps_uniform_law(method):
    """The uniform law on the simplex is invariant under reflected noising, so the zero score is
    its exact score at every noise level: the samplers must return Dirichlet(1) samples."""
    n, mass = 6, 2.0
    simplex = Simplex((n,), mass=mass)
    sde = models.VESDE(sigma_min=1e-3, sigma_max=4.0)
    xs = models.sample_constrained_domain(
        lambda x, t: jnp.zeros_like(x),
        sde,
        simplex,
        3000,
        key=jr.key(3),
        method=method,
        num_steps=100,
    )
    assert bool(_vmapped(simplex.contains)(xs).all())
    mean = np.full(n, mass / n)
    var = np.full(n, mass**2 * (n - 1) / (n**2 * (n + 1)))
    z_mean, z_var = _moment_z_scores(np.asarray(xs), mean, var)
    assert np.all(np.abs(z_mean) < 4.0), z_mean
    assert np.all(np.abs(z_var) < 4.0), z_var


def test_mirrored_sampler_matches_logit_normal_moments():
    """In mirror coordinates the law is Gaussian N(m, v), so its VE score is exact; mapped back
    with ``l + w sigmoid(y)`` the samples have logit-normal moments (Gauss-Hermite quadrature)."""
    box = Box([0.0, -2.0], [1.0, 3.0])
    m, v = np.array([0.5, -1.0]), np.array([0.64, 2.25])
    sde = models.VESDE(sigma_min=1e-3, sigma_max=30.0)

    def score(y, t):
        s2 = sde.sigma(t) ** 2
        return -(y - jnp.asarray(m)) / (jnp.asarray(v) + s2)

    xs = np.asarray(models.sample_mirrored(score, sde, box, 3000, key=jr.key(11), num_steps=300))
    assert bool(_vmapped(box.contains)(jnp.asarray(xs)).all())
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    lo, hi = np.asarray(box.lower), np.asarray(box.upper)
    vals = lo + (hi - lo) / (1 + np.exp(-(m + np.sqrt(v) * nodes[:, None])))
    mean = weights @ vals
    var = weights @ (vals - mean) ** 2
    z_mean, z_var = _moment_z_scores(xs, mean, var)
    assert np.all(np.abs(z_mean) < 4.0), z_mean
    assert np.all(np.abs(z_var) < 4.0), z_var


def test_convex_set_ball_samplers_stay_inside():
    radius = 1.5

    def project(x):
        return x * jnp.minimum(1.0, radius / jnp.maximum(jnp.linalg.norm(x), 1e-300))

    ball = ConvexSet(
        (3,), project=project, constraint=lambda x: jnp.sum(x**2) - radius**2, name="ball"
    )
    sde = models.VESDE(sigma_min=1e-2, sigma_max=5.0)
    start = jnp.zeros((16, 3))
    score = lambda x, t: -x / (0.25 + sde.sigma(t) ** 2)  # noqa: E731
    for method in ("reflected", "metropolis"):
        xs = models.sample_constrained_domain(
            score, sde, ball, 16, key=jr.key(0), method=method, num_steps=20, x_init=start
        )
        norms = np.linalg.norm(np.asarray(xs), axis=1)
        assert np.all(norms <= radius * (1 + 4 * np.finfo(float).eps)), norms.max()
    only_g = ConvexSet((3,), constraint=lambda x: jnp.sum(x**2) - radius**2)
    xs = models.sample_constrained_domain(
        score,
        sde,
        only_g,
        8,
        key=jr.key(1),
        method="metropolis",
        num_steps=20,
        x_init=jnp.zeros((8, 3)),
    )
    assert bool(_vmapped(only_g.contains)(xs).all())


def test_reflected_dsm_loss_identity():
    """``loss(score + d) - loss(true score) = E[s^2 |d|^2] = 0.25`` for ``d = 0.5 / s``: holds only
    if the heat-kernel target is right (the cross term ``E[s (true score - target)]`` must vanish);
    the same key gives the same ``(t, x_t)`` in both losses, so the gap has a small spread."""
    from scipy.stats import truncnorm

    box = Box([-1.0, 0.0], [1.0, 2.0])
    sde = models.VESDE(sigma_min=1e-2, sigma_max=5.0)
    m, sd = np.array([0.3, 0.0]), np.array([0.5, 1.0])
    truth = models.TruncatedNormalScore(box, m, sd, sde)
    lo, hi = np.asarray(box.lower), np.asarray(box.upper)
    data = truncnorm.rvs(
        (lo - m) / sd, (hi - m) / sd, loc=m, scale=sd, size=(10, 2000, 2), random_state=1
    )

    def shifted(x, t):
        return truth(x, t) + 0.5 / sde.sigma(t)

    @jax.jit
    def gap(batch, key):
        return models.reflected_dsm_loss(
            shifted, sde, batch, box, key=key
        ) - models.reflected_dsm_loss(truth, sde, batch, box, key=key)

    gaps = [float(gap(batch, jr.key(100 + i))) for i, batch in enumerate(jnp.asarray(data))]
    gap, se = np.mean(gaps), np.std(gaps, ddof=1) / np.sqrt(len(gaps))
    assert se < 0.01  # the test can see a wrong target
    assert abs(gap - 0.25) < 4 * se, (gap, se)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_errors():
    with pytest.raises(ValueError, match="empty or degenerate"):
        Box([0.0, 1.0], [1.0, 0.5])
    with pytest.raises(ValueError, match="empty or degenerate"):
        Box(1.0, 1.0, shape=(3,))
    with pytest.raises(ValueError, match="NaN"):
        Box([0.0, np.nan], 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        Box(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="shape"):
        Box(0.0, 1.0)
    with pytest.raises(ValueError, match="empty set"):
        Simplex((4,), mass=-1.0)
    with pytest.raises(ValueError, match="single point"):
        Simplex((4,), mass=0.0)
    with pytest.raises(ValueError, match="give project"):
        ConvexSet((2,))
    with pytest.raises(ValueError, match="empty"):  # the projection lands outside {g <= 0}
        ConvexSet((2,), project=lambda x: x, constraint=lambda x: 1.0 - jnp.sum(x**2) * 0.0)
    box = Box(0.0, 1.0, shape=(2,))
    sde = models.VESDE(sigma_max=3.0)
    score = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="outside the constraint set"):
        models.sample_constrained_domain(
            score, sde, box, 2, key=jr.key(0), x_init=jnp.array([[0.5, 0.5], [0.5, 1.2]])
        )
    with pytest.raises(ValueError, match="outside the constraint set"):
        models.reflected_euler_maruyama(
            score, sde, box, (2,), key=jr.key(0), x_init=jnp.array([-0.1, 0.5])
        )
    with pytest.raises(ValueError, match="x_init has shape"):
        models.sample_constrained_domain(
            score, sde, box, 2, key=jr.key(0), x_init=jnp.zeros((2, 3))
        )
    with pytest.raises(ValueError, match="shape"):
        models.reflected_euler_maruyama(score, sde, box, (3,), key=jr.key(0))
    with pytest.raises(ValueError, match="variance-exploding"):
        models.sample_constrained_domain(score, models.VPSDE(), box, 2, key=jr.key(0))
    with pytest.raises(ValueError, match="method"):
        models.sample_constrained_domain(score, sde, box, 2, key=jr.key(0), method="bogus")
    with pytest.raises(ValueError, match="unbounded"):
        models.sample_constrained_domain(score, sde, Box(0.0, np.inf, shape=(2,)), 2, key=jr.key(0))
    with pytest.raises(ValueError, match="no mirror map"):
        models.sample_mirrored(score, sde, ConvexSet((2,), project=lambda x: x), 2, key=jr.key(0))
    with pytest.raises(TypeError, match="domain"):
        models.sample_constrained_domain(score, sde, "box", 2, key=jr.key(0))
    net = models.ScoreMLP(2, width=8, depth=1, key=jr.key(0))
    model = models.DiffusionModel(net, sde, models.Normalisation.identity(2), (2,))
    with pytest.raises(ValueError, match="outside the constraint set"):
        models.train_reflected(model, np.array([[0.5, 0.5], [1.5, 0.5]]), box, key=jr.key(0))
    shifted = models.DiffusionModel(net, sde, models.Normalisation((0.5, 0.5), (1.0, 1.0)), (2,))
    with pytest.raises(ValueError, match="identity"):
        models.train_reflected(shifted, np.full((4, 2), 0.5), box, key=jr.key(0))


# --- physical examples (pdegen.inverse) -------------------------------------------------------


def test_hard_constrained_field_priors_are_feasible():
    g = 8
    darcy = inverse.bounded_diffusivity_prior(g, a_min=0.2, a_max=4.0)
    source = inverse.fixed_mass_source_prior(g, mass=2.0, std=0.8)
    x = darcy.sample(6, key=jr.key(1), method="reflected", num_steps=20)
    assert x.shape == (6, 1, g, g) and bool(_vmapped(darcy.domain.contains)(x).all())
    a = np.asarray(_vmapped(darcy.to_field)(x))
    assert a.min() >= 0.2 * (1 - 1e-15) and a.max() <= 4.0 * (1 + 1e-15)
    x = source.sample(6, key=jr.key(2), method="metropolis", num_steps=20)
    assert bool(_vmapped(source.domain.contains)(x).all())
    f = np.asarray(_vmapped(source.to_field)(x))
    assert f.min() >= 0.0
    np.testing.assert_allclose(f.sum((1, 2)) / g**2, 2.0, rtol=g * g * np.finfo(float).eps)
    with pytest.raises(ValueError, match="a_min < median < a_max"):
        inverse.bounded_diffusivity_prior(g, a_min=2.0, a_max=1.0)
    with pytest.raises(ValueError, match="mass"):
        inverse.fixed_mass_source_prior(g, mass=-1.0, std=1.0)
    with pytest.raises(ValueError, match="outside the constraint set"):
        darcy.pcn_correct(jnp.full((2, 1, g, g), 10.0), key=jr.key(0), num_steps=2)


def test_pcn_correction_reaches_the_restricted_prior():
    """From a poor start (the constant centre field), pCN with the set's indicator must reach the
    restricted prior: its pointwise variance against exact rejection samples."""
    g = 8
    prior = inverse.bounded_diffusivity_prior(
        g, a_min=float(np.exp(-1.5)), a_max=float(np.exp(1.5))
    )
    ref, acceptance = prior.rejection_sample(2000, key=jr.key(5))
    assert 0.05 < acceptance < 0.95  # the constraint binds
    start = jnp.zeros((300, 1, g, g))
    x = np.asarray(prior.pcn_correct(start, key=jr.key(6), num_steps=250, beta=0.5))
    want, got = ref.var(0).mean(), x.var(0).mean()
    # the unconstrained pointwise variance is 1; the restriction lowers it clearly
    assert want < 0.8
    assert abs(got / want - 1) < 0.08, (got, want)


# --- a network trained on constrained data -----------------------------------------------------


@pytest.mark.slow
def test_trained_reflected_model_matches_truncated_moments():
    box = Box([-1.0, 0.0], [1.0, 2.0])
    sde = models.VESDE(sigma_min=1e-3, sigma_max=5.0)
    truth = models.TruncatedNormalScore(box, [0.3, 0.0], [0.5, 1.0], sde)
    from scipy.stats import truncnorm

    lo, hi, m, sd = (
        np.asarray(box.lower),
        np.asarray(box.upper),
        np.array([0.3, 0.0]),
        np.array([0.5, 1.0]),
    )
    data = truncnorm.rvs(
        (lo - m) / sd, (hi - m) / sd, loc=m, scale=sd, size=(20000, 2), random_state=0
    )
    net = models.ScoreMLP(2, width=64, depth=3, key=jr.key(0))
    model = models.DiffusionModel(net, sde, models.Normalisation.identity(2), (2,))
    config = models.TrainConfig(
        steps=20000, batch_size=256, learning_rate=2e-3, warmup_steps=100, log_every=100
    )
    result = models.train_reflected(model, data, box, key=jr.key(1), config=config)
    trained = result.model
    xs = models.sample_constrained_domain(
        trained.score, sde, box, 3000, key=jr.key(2), num_steps=300
    )
    assert bool(_vmapped(box.contains)(xs).all())
    mean, var = truth.truncated_moments()
    xs = np.asarray(xs)
    # a learned score is not exact: the means within 0.08 standard deviations (the Monte Carlo
    # standard error is 0.018), the variances within 10% (standard error about 2.5%)
    assert np.all(np.abs(xs.mean(0) - mean) < 0.08 * np.sqrt(var)), (xs.mean(0), mean)
    assert np.all(np.abs(xs.var(0) / var - 1) < 0.10), (xs.var(0), var)
