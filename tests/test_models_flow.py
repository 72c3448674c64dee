"""Flow matching on Gaussian data, where the exact velocity, score and posterior are closed forms.

The interpolants' coefficients, the velocity of a Gaussian law and the exact posterior are written
here from their formulas (not from pdegen), so the tests check pdegen against the truth.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import inverse, models

D, M, NOISE = 4, 2, 0.1


def _closed_form(kind):
    """``t -> (alpha, sigma, alpha', sigma')`` of an interpolant, from its definition."""
    if kind == "linear":
        return lambda t: (1.0 - t, t, -1.0, 1.0)
    h = 0.5 * math.pi
    return lambda t: (jnp.cos(h * t), jnp.sin(h * t), -h * jnp.sin(h * t), h * jnp.cos(h * t))


PROCESSES = {"linear": models.LinearInterpolant(), "vp": models.VPInterpolant()}


def _gaussian(seed=0):
    rng = np.random.default_rng(seed)
    L = 0.5 * rng.normal(size=(D, D))
    return jnp.asarray(rng.normal(size=D)), jnp.asarray(L @ L.T + 0.2 * np.eye(D))


def _exact_velocity(kind, mean, cov):
    """``E[alpha' x0 + sigma' z | x_t = x]`` of ``x0 ~ N(mean, cov)``: ``alpha' D + sigma' eps``."""
    coeffs = _closed_form(kind)

    def velocity(x, t):
        a, s, da, ds = coeffs(t)
        gain = a * cov @ jnp.linalg.inv(a**2 * cov + s**2 * jnp.eye(D))
        denoised = mean + gain @ (x - a * mean)
        return da * denoised + ds * (x - a * denoised) / s

    return velocity


def _exact_score(kind, mean, cov):
    coeffs = _closed_form(kind)

    def score(x, t):
        a, s, *_ = coeffs(t)
        return -jnp.linalg.solve(a**2 * cov + s**2 * jnp.eye(D), x - a * mean)

    return score


class _ExactVelocityNetwork(eqx.Module):
    """The exact velocity of ``N(mean, cov)`` behind ``DiffusionModel``'s preconditioning: it reads
    ``t`` from the noise label ``log(sigma/alpha)/4`` and ``x`` from ``c_in x / alpha``."""

    mean: jax.Array
    cov: jax.Array
    kind: str = eqx.field(static=True)

    def __call__(self, x_in, noise_label):
        s = jnp.exp(4.0 * noise_label)  # sigma / alpha
        t = s / (1.0 + s) if self.kind == "linear" else jnp.arctan(s) * 2.0 / math.pi
        a, _, da, ds = _closed_form(self.kind)(t)
        x = x_in * jnp.sqrt(s**2 + 1.0) * a  # sigma_data = 1
        return _exact_velocity(self.kind, self.mean, self.cov)(x, t) / jnp.sqrt(da**2 + ds**2)


def _exact_flow_model(kind, mean, cov):
    net = _ExactVelocityNetwork(mean, cov, kind)
    norm = models.Normalisation.identity(D)
    return models.DiffusionModel(net, PROCESSES[kind], norm, (D,), parameterisation="velocity")


# --- interpolants -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "vp"])
def test_interpolant_coefficients_and_marginal_preserving_sde(kind):
    sde = PROCESSES[kind]
    for t in (0.01, 0.3, 0.7, 0.99):
        t = jnp.asarray(t)
        a, s, da, ds = _closed_form(kind)(t)
        np.testing.assert_allclose(
            [sde.alpha(t), sde.sigma(t), sde.alpha_rate(t), sde.sigma_rate(t)],
            [a, s, da, ds],
            rtol=1e-13,
        )
        # dx = f x dt + g dW keeps the marginals: f = alpha'/alpha, d(sigma^2)/dt = 2 f sigma^2 + g^2.
        f, g = sde.drift_coefficient(t), sde.diffusion(t)
        np.testing.assert_allclose(f, da / a, rtol=1e-12)
        np.testing.assert_allclose(2 * s * ds, 2 * f * s**2 + g**2, rtol=1e-12)
        np.testing.assert_allclose(sde.time_from_scaled_sigma(s / a), t, rtol=1e-12)
    assert models.sde_from_config(sde.config()) == sde
    # The rates of the SDEs come from jax.jvp: the VP cosine SDE without offset is the VP interpolant.
    vp = models.VPSDE(schedule="cosine", cosine_offset=0.0, t_max=0.999)
    rates = models.process_rates(vp, jnp.asarray(0.4))
    np.testing.assert_allclose(rates, _closed_form("vp")(jnp.asarray(0.4)), rtol=1e-10)


@pytest.mark.parametrize("bad", [dict(t_max=1.0), dict(t_min=0.0), dict(t_min=0.5, t_max=0.4)])
def test_interpolant_rejects_times_where_the_score_is_undefined(bad):
    with pytest.raises(ValueError, match="0 < t_min < t_max < 1"):
        models.LinearInterpolant(**bad)
    with pytest.raises(ValueError, match="time_spacing"):
        models.VPInterpolant(time_spacing="log")


@pytest.mark.parametrize("spacing", ["noise", "uniform"])
def test_interpolant_time_grid(spacing):
    sde = models.LinearInterpolant(time_spacing=spacing)
    ts = np.asarray(sde.time_grid(12))
    assert ts.shape == (13,) and ts[0] == sde.t_max and ts[-1] == sde.t_min
    assert np.all(np.diff(ts) < 0)
    noise = ts / (1 - ts)  # sigma / alpha
    if spacing == "uniform":
        np.testing.assert_allclose(np.diff(ts), (sde.t_min - sde.t_max) / 12, rtol=1e-12)
    else:  # Karras et al.: noise^(1/7) uniform
        np.testing.assert_allclose(
            np.diff(noise ** (1 / 7)), np.diff(noise ** (1 / 7))[0], rtol=1e-9
        )


@pytest.mark.parametrize("kind", ["linear", "vp"])
def test_velocity_model_gives_the_exact_denoiser_and_score(kind, getkey):
    mean, cov = _gaussian()
    model = _exact_flow_model(kind, mean, cov)
    score = _exact_score(kind, mean, cov)

    @jax.jit
    def values(x, t):
        exact = _exact_velocity(kind, mean, cov)(x, t), score(x, t)
        got = model.velocity(x, t), model.score(x, t), model.denoiser(x, t)
        return exact, got, models.velocity_from_score(model.sde, x, t, score(x, t))

    for t in (0.02, 0.5, 0.95):
        t = jnp.asarray(t)
        x = jax.random.normal(getkey(), (D,))
        (v, sc), (v_model, sc_model, d_model), v_from_score = values(x, t)
        np.testing.assert_allclose(v_model, v, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sc_model, sc, rtol=1e-8, atol=1e-10)
        a, s, *_ = _closed_form(kind)(t)
        np.testing.assert_allclose(d_model, (x + s**2 * sc) / a, rtol=1e-8)
        if kind == "linear":  # the rectified-flow x0-prediction
            np.testing.assert_allclose(d_model, x - t * v, rtol=1e-10)
        np.testing.assert_allclose(v_from_score, v, rtol=1e-8, atol=1e-10)


# --- the flow ODE ---------------------------------------------------------------------------


def _transport(velocity_or_score, sde, start_mean, start_cov, **options):
    """The flow map is affine for Gaussian data: push the start law's mean and covariance through it
    exactly (images of the mean and of the mean plus each basis vector)."""
    points = jnp.concatenate([start_mean[None], start_mean[None] + jnp.eye(D)])
    solve = jax.vmap(
        lambda x0: (
            models.solve_flow(
                velocity_or_score, sde, (D,), key=jax.random.key(0), x_init=x0, **options
            ).x
        )
    )
    out = solve(points)
    J = (out[1:] - out[:1]).T
    return out[0], J @ start_cov @ J.T


def _marginal(kind, mean, cov, t):
    a, s, *_ = _closed_form(kind)(jnp.asarray(t))
    return a * mean, a**2 * cov + s**2 * jnp.eye(D)


@pytest.mark.parametrize("kind", ["linear", pytest.param("vp", marks=pytest.mark.slow)])
def test_flow_ode_with_the_exact_score_carries_each_marginal_to_the_next(kind):
    mean, cov = _gaussian()
    sde = PROCESSES[kind]
    score = _exact_score(kind, mean, cov)
    start = _marginal(kind, mean, cov, sde.t_max)
    target_mean, target_cov = _marginal(kind, mean, cov, sde.t_min)
    m, C = _transport(score, sde, *start, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m, target_mean, atol=1e-6)
    np.testing.assert_allclose(C, target_cov, atol=1e-6)


@pytest.mark.slow
def test_fixed_step_flow_solvers_converge_at_their_order():
    """Euler (order 1) and Heun (order 2): the error ratio at twice the steps is 2^order."""
    mean, cov = _gaussian()
    sde = PROCESSES["linear"]
    score = _exact_score("linear", mean, cov)
    start = _marginal("linear", mean, cov, sde.t_max)
    _, target_cov = _marginal("linear", mean, cov, sde.t_min)
    for solver, order in ((diffrax.Euler(), 1), (diffrax.Heun(), 2)):
        errors = []
        for n in (40, 80):
            _, C = _transport(score, sde, *start, num_steps=n, solver=solver)
            errors.append(float(jnp.max(jnp.abs(C - target_cov))))
        rate = math.log2(errors[0] / errors[1])
        assert abs(rate - order) < 0.25, (type(solver).__name__, errors, rate)


def test_solve_flow_reports_the_number_of_evaluations():
    mean, cov = _gaussian()
    score = _exact_score("linear", mean, cov)
    sde = PROCESSES["linear"]
    calls = [0]

    def counted(x, t):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return score(x, t)

    cases = [
        dict(num_steps=9, solver=diffrax.Euler()),
        dict(num_steps=9, solver=diffrax.Heun(), denoise_final=True),
        dict(num_steps=None),  # adaptive Tsit5, rejected steps included
    ]
    counts = []
    for options in cases:
        calls[0] = 0
        sol = models.solve_flow(counted, sde, (D,), key=jax.random.key(3), **options)
        jax.block_until_ready(sol.x)
        assert int(sol.num_evaluations) == calls[0], options
        counts.append(calls[0])
    assert counts[:2] == [9, 19]


# --- training ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_flow_matching_learns_the_exact_gaussian_velocity(tmp_path):
    """Trained through models.train (checkpointed, reloaded), the velocity is within 10% RMS of the
    exact one over x_t ~ p_t, t on a grid; the velocity of a law with 1.5x the covariance is not."""
    mean, cov = _gaussian(1)
    rng = np.random.default_rng(2)
    data = rng.multivariate_normal(np.asarray(mean), np.asarray(cov), size=4096)
    norm = models.Normalisation.fit(data)
    net = models.ScoreMLP(D, width=128, depth=2, embed_dim=16, key=jax.random.key(0))
    model = models.DiffusionModel(
        net, models.LinearInterpolant(), norm, (D,), parameterisation="velocity"
    )
    config = models.TrainConfig(
        steps=2000, batch_size=256, learning_rate=2e-3, warmup_steps=50, ema_decay=0.99,
        checkpoint_every=2000, log_every=500,
    )  # fmt: skip
    models.train(
        model, data, key=jax.random.key(1), config=config, out_dir=tmp_path, progress=False
    )
    learned = models.load_checkpoint(tmp_path).model
    assert learned.parameterisation == "velocity" and learned.sde == models.LinearInterpolant()

    # The exact velocity in the model's normalised units.
    m_n = (mean - jnp.asarray(norm.mean)) / jnp.asarray(norm.std)
    c_n = cov / jnp.outer(jnp.asarray(norm.std), jnp.asarray(norm.std))
    exact = _exact_velocity("linear", m_n, c_n)
    wrong = _exact_velocity("linear", m_n, 1.5 * c_n)

    def relative_rms(velocity):
        num, den = 0.0, 0.0
        for i, t in enumerate(np.linspace(0.02, 0.98, 9)):
            z = jax.random.normal(jax.random.key(10 + i), (512, D))
            x0 = jax.random.multivariate_normal(jax.random.key(50 + i), m_n, c_n, (512,))
            xt = (1 - t) * x0 + t * z
            tt = jnp.asarray(t)
            ref = jax.vmap(lambda x: exact(x, tt))(xt)
            got = jax.vmap(lambda x: velocity(x, tt))(xt)
            num += float(jnp.mean((got - ref) ** 2))
            den += float(jnp.mean(ref**2))
        return math.sqrt(num / den)

    err = relative_rms(lambda x, t: learned.velocity(x.astype(jnp.float32), t).astype(x.dtype))
    assert err < 0.10, err
    assert relative_rms(wrong) > 0.10  # the tolerance separates a wrong Gaussian law


def test_train_rejects_a_penalty_for_a_flow_model():
    net = models.ScoreMLP(D, width=8, depth=1, embed_dim=4, key=jax.random.key(0))
    model = models.DiffusionModel(
        net, models.LinearInterpolant(), models.Normalisation.identity(D), (D,), "velocity"
    )
    with pytest.raises(ValueError, match="denoiser parameterisation"):
        models.train(model, np.zeros((8, D)), key=jax.random.key(0), penalty=lambda d: 0.0)


# --- guidance on a flow prior -----------------------------------------------------------------


def _observation(mean, cov):
    rng = np.random.default_rng(7)
    H = jnp.asarray(rng.normal(size=(M, D)))
    y = H @ (mean + 0.7) + 0.05
    K = cov @ H.T @ jnp.linalg.inv(H @ cov @ H.T + NOISE**2 * jnp.eye(M))
    return H, y, mean + K @ (y - H @ mean), cov - K @ H @ cov


@pytest.mark.parametrize("kind", ["linear", pytest.param("vp", marks=pytest.mark.slow)])
def test_tmpd_on_a_flow_prior_reproduces_the_exact_posterior(kind):
    """TMPD is exact for a Gaussian prior and a linear map: the flow ODE with the TMPD-guided score
    of the exact-velocity flow model carries the posterior's marginal at t_max to the one at t_min."""
    mean, cov = _gaussian()
    H, y, post_mean, post_cov = _observation(mean, cov)
    model = _exact_flow_model(kind, mean, cov)
    guided = inverse.tmpd(model, model.sde, H, y, noise_std=NOISE, variant="full")
    start = _marginal(kind, post_mean, post_cov, model.sde.t_max)
    target_mean, target_cov = _marginal(kind, post_mean, post_cov, model.sde.t_min)
    m, C = _transport(guided, model.sde, *start, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(m, target_mean, atol=1e-5)
    np.testing.assert_allclose(C, target_cov, atol=1e-5)
    # The prior's marginal is far from the posterior's: the test can fail.
    assert (
        float(jnp.max(jnp.abs(_marginal(kind, mean, cov, model.sde.t_min)[0] - target_mean))) > 0.1
    )


@pytest.mark.slow
def test_every_guidance_method_runs_on_a_flow_prior_and_fits_the_data():
    """PiGDM, DPS and energy (residual / statFEM-style) guidance, unchanged, on the flow ODE: the
    data misfit of the samples drops below a quarter of the prior samples'."""
    mean, cov = _gaussian()
    H, y, post_mean, _ = _observation(mean, cov)
    model = _exact_flow_model("linear", mean, cov)
    sde = model.sde
    energy = lambda x0: 0.5 * jnp.sum((H @ x0 - y) ** 2)  # noqa: E731
    guided = {
        "pigdm": inverse.pigdm(model, sde, H, y, noise_std=NOISE, data_variance=1.0),
        "dps": inverse.dps(model, sde, H, y, noise_std=NOISE, scale=1.0),
        "energy": inverse.energy_guidance(model, sde, energy, weight=1.0, start=1.0),
    }

    def misfit(score):
        xs = models.sample(score, sde, (D,), 32, key=jax.random.key(4), method="flow_ode",
                           num_steps=40, solver=diffrax.Euler())  # fmt: skip
        return float(jnp.mean(jnp.sum((xs @ H.T - y[None]) ** 2, axis=1)))

    prior_misfit = misfit(model)
    for name, score in guided.items():
        assert misfit(score) < 0.25 * prior_misfit, name


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["euler_maruyama", "predictor_corrector"])
def test_sde_only_samplers_reject_a_flow_model(method):
    mean, cov = _gaussian()
    model = _exact_flow_model("linear", mean, cov)
    with pytest.raises(ValueError, match="flow_ode"):
        models.sample_model(model, 2, key=jax.random.key(0), method=method, num_steps=10)


def test_solve_flow_rejects_bad_options():
    mean, cov = _gaussian()
    score, sde = _exact_score("linear", mean, cov), PROCESSES["linear"]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_steps"):
        models.solve_flow(score, sde, (D,), key=key, num_steps=0)
    with pytest.raises(TypeError, match="explicit Runge-Kutta"):
        models.solve_flow(score, sde, (D,), key=key, num_steps=4, solver=diffrax.ImplicitEuler())
    with pytest.raises(ValueError, match="x_init"):
        models.solve_flow(score, sde, (D,), key=key, x_init=jnp.zeros(D + 1))


# --- benchmarks/train_prior.py --flow ---------------------------------------------------------


def _train_prior_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_prior.py"
    spec = importlib.util.spec_from_file_location("train_prior_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_train_prior_flow_rejects_the_spectral_network(tmp_path):
    script = _train_prior_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--flow", "linear", "--network", "spectral", "--out", str(tmp_path)])


@pytest.mark.slow
def test_train_prior_trains_and_exports_a_flow_model(tmp_path):
    script = _train_prior_script()
    args = ["--data", "a", "--grid", "8", "--flow", "vp", "--steps", "2", "--n-train", "8"]
    args += ["--batch-size", "4", "--base-channels", "4", "--channel-mults", "1,2", "--quiet"]
    assert script.main([*args, "--name", "tiny-flow", "--out", str(tmp_path / "run")]) == 0
    ckpt = models.load_checkpoint(tmp_path / "run" / "model")
    assert ckpt.model.parameterisation == "velocity"
    assert isinstance(ckpt.model.sde, models.VPInterpolant)
    assert ckpt.metadata["recommended_sampler"]["method"] == "flow_ode"


def test_sample_posterior_picks_the_flow_ode_for_a_flow_prior():
    """A flow prior in the inverse API needs no sampler argument (the ODE is the default), and SMC,
    which runs the reverse SDE, refuses it with a message naming the way out."""
    mean, cov = _gaussian()
    H, y, post_mean, _ = _observation(mean, cov)
    model = _exact_flow_model("linear", mean, cov)
    assert models.default_sampler(model.sde) == "flow_ode"
    assert models.default_sampler(models.VPSDE()) == "euler_maruyama"
    prior = inverse.Prior(model, model.sde, jnp.zeros(D), 1.0, None, (D,), 0, name="flow")
    lik = inverse.gaussian_likelihood(H, y, noise_std=NOISE)
    post = inverse.sample_posterior(prior, lik, method="tmpd", key=jax.random.key(0), num_steps=40)
    assert lik.misfit(post.mean) < 0.25 * lik.misfit(mean)
    with pytest.raises(ValueError, match="singular"):
        inverse.sample_posterior(prior, lik, method="smc", key=jax.random.key(0), num_steps=10)
