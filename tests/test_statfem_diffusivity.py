"""statFEM with the diffusivity unknown alongside u (statfem.DiffusivityStatFEM): gradients against
finite differences, the state's fields against the PDE, the known-diffusivity limit against the
exact linear posterior, Laplace-preconditioned MALA against pCN, the collapsed form against
quadrature, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import fem, mcmc
from pdegen._errors import UserError
from pdegen.fem import statfem

PCN_STEPS = 8000


def _base(x):
    return jnp.log(1.0 + 0.3 * jnp.sin(jnp.pi * (x[0] + x[1])))


def _case(grid=9, sigma_e=1e-3, num_sensors=24):
    return statfem.ula_statfem_case(
        grid, key=jax.random.key(0), num_sensors=num_sensors, sigma_e=sigma_e
    )


def _chains(dm, y, *, steps, warmup, key, chains=4, thin=5, centred=False):
    """Laplace-preconditioned MALA chains from Laplace draws at the MAP point, tracing
    ``(log kappa, x)``."""
    r = dm.num_modes
    if centred:
        mp = dm.centred_map_point(y)
        pre = dm.centred_laplace_preconditioner(y, mp.x)
        energy = dm.centred_energy_fn(y)

        def trace(s):
            return jnp.concatenate([dm.log_kappa_mean + dm.modes @ s[:r], s[r:]])
    else:
        mp = dm.map_point(y)
        pre = dm.laplace_preconditioner(y, mp.x, key=jax.random.fold_in(key, 1)).preconditioner
        energy = dm.energy_fn(y)

        def trace(z):
            return jnp.concatenate([dm.log_diffusivity(z), dm.solution(z)])

    kernel = statfem.mala(energy, 0.5, preconditioner=pre)
    keys = jax.random.split(jax.random.fold_in(key, 2), chains)
    x0 = jnp.stack([mp.x + pre.sample(key=k) for k in keys])
    return statfem.run_chains(
        kernel, x0, steps, warmup, key=jax.random.fold_in(key, 3), thin=thin, trace_fn=trace
    )


def test_energy_gradient_and_fields_solve_the_pde():
    case = _case()
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=_base)
    assert 0.999 <= dm.variance_kept <= 1.0 and dm.dim == dm.num_modes + case.model.dim
    energy = jax.jit(dm.energy_fn(case.y))
    z = 0.5 * dm.sample_prior(key=jax.random.key(1))
    d = jax.random.normal(jax.random.key(2), z.shape)
    h = 1e-6
    fd = (energy(z + h * d) - energy(z - h * d)) / (2 * h)
    assert float(jax.grad(energy)(z) @ d) == pytest.approx(float(fd), rel=1e-6)
    assert float(dm.energy(z, case.y)) == pytest.approx(float(energy(z)), rel=1e-12)
    # the fields of a state: -div(kappa grad u) = 1 + xi with xi = G^{1/2} eta
    kappa, u = dm.fields(z)
    model = case.model.replace(coefficients=dict(kappa=kappa))
    sys = model.system()
    xi = sys.forcing_from_noise(z[dm.num_modes :])
    x = model.restrict(u)
    assert np.allclose(sys.apply_A(x), sys.b + xi, atol=1e-10 * float(jnp.abs(sys.b).max()))
    assert np.allclose(jnp.log(kappa), dm.log_diffusivity(z))
    # the centred form: s = (v, x) with the same fields; its energy's gradient (the
    # log-determinant's by selected inversion) against finite differences
    s = dm.centred_state(z)
    kappa_c, u_c = dm.centred_fields(s)
    assert np.allclose(kappa_c, kappa) and np.allclose(u_c, u)
    centred = jax.jit(dm.centred_energy_fn(case.y))
    d = jax.random.normal(jax.random.key(3), s.shape)
    fd = (centred(s + h * d) - centred(s - h * d)) / (2 * h)
    assert float(jax.grad(centred)(s) @ d) == pytest.approx(float(fd), rel=1e-5)
    # the collapsed form (u integrated out): its gradient through the marginal likelihood
    collapsed = jax.jit(dm.collapsed_energy_fn(case.y))
    v, dv = z[: dm.num_modes], d[: dm.num_modes]
    fd = (collapsed(v + h * dv) - collapsed(v - h * dv)) / (2 * h)
    assert float(jax.grad(collapsed)(v) @ dv) == pytest.approx(float(fd), rel=1e-5)


@pytest.mark.parametrize(
    "centred", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["centred", "white"]
)
def test_known_diffusivity_limit_matches_the_exact_posterior(centred):
    """With a vanishing prior on w the model is the linear statFEM with kappa = exp(m): the
    chains' mean of u within 5 / sqrt(ESS) posterior stds of the closed form, the median
    variance within 15% (both forms of the state)."""
    case = _case()
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=_base, sigma=1e-9)
    exact = statfem.exact_posterior(dm.model, case.y)
    res = _chains(dm, case.y, steps=600, warmup=200, key=jax.random.key(4), centred=centred)
    x = res.samples[..., dm.model.structure.ndofs :]
    assert float(jnp.max(statfem.rhat(x))) < 1.1
    ess = float(jnp.min(statfem.chain_ess(x)))
    mean = jnp.mean(x, axis=(0, 1))
    var = jnp.var(x, axis=(0, 1))
    exact_var = exact.variance()
    z = np.abs(np.asarray(mean - exact.mean)) / np.sqrt(np.asarray(exact_var))
    assert z.max() < 5.0 / np.sqrt(ess), (z.max(), ess)
    assert abs(np.median(np.asarray(var / exact_var)) - 1.0) < 0.15


@pytest.mark.slow
def test_laplace_mala_agrees_with_pcn_on_the_joint_posterior():
    """Unknown diffusivity, noisier data (sigma_e = 3e-3) so that pCN mixes: the two samplers'
    posterior means of log kappa and u agree within their Monte Carlo errors, and the data
    narrow the diffusivity's spread."""
    case = _case(grid=7, sigma_e=3e-3, num_sensors=16)
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=_base, variance_fraction=0.99)
    laplace = _chains(dm, case.y, steps=1000, warmup=300, key=jax.random.key(5))
    pcn = statfem.pcn(
        dm.misfit_fn(case.y), 0.3, prior_mean=jnp.zeros(dm.dim), prior=dm.prior_preconditioner()
    )
    x0 = dm.sample_prior(4, key=jax.random.key(6))
    res = statfem.run_chains(
        pcn,
        x0,
        PCN_STEPS,
        1000,
        key=jax.random.key(7),
        thin=10,
        trace_fn=lambda z: jnp.concatenate([dm.log_diffusivity(z), dm.solution(z)]),
    )
    for r in (laplace, res):
        print(
            float(jnp.max(statfem.rhat(r.samples))),
            float(jnp.min(statfem.chain_ess(r.samples))),
            r.acceptance_rate,
        )
    for r in (laplace, res):
        assert float(jnp.max(statfem.rhat(r.samples))) < 1.15
    ess = min(float(jnp.min(statfem.chain_ess(r.samples))) for r in (laplace, res))
    m1, m2 = (jnp.mean(r.samples, axis=(0, 1)) for r in (laplace, res))
    sd = jnp.std(laplace.samples, axis=(0, 1))
    n = dm.model.structure.ndofs
    z = np.asarray(jnp.abs(m1 - m2) / jnp.maximum(sd, 1e-12))
    assert np.median(z) < 3.0 / np.sqrt(ess) and z.max() < 7.0 / np.sqrt(ess), (z, ess)
    # the data inform log kappa (prior sd 0.2 at every node): measured mean sd 0.186 (the forcing
    # noise explains much of the data, so the diffusivity is only weakly identified)
    assert float(jnp.mean(sd[:n])) < 0.195


def test_bad_input():
    case = _case(grid=5, num_sensors=4)
    with pytest.raises(TypeError, match="StatFEM"):
        statfem.DiffusivityStatFEM("not a model")
    with pytest.raises(UserError, match="sigma"):
        statfem.DiffusivityStatFEM(case.model, sigma=0.0)
    with pytest.raises(UserError, match="variance_fraction"):
        statfem.DiffusivityStatFEM(case.model, variance_fraction=1.5)
    with pytest.raises(UserError, match="log_kappa_mean"):
        statfem.DiffusivityStatFEM(case.model, log_kappa_mean=np.zeros(3))
    with pytest.raises(UserError, match="kernel"):
        statfem.DiffusivityStatFEM(case.model, kernel="gaussian")
    V = case.space
    helm = statfem.StatFEM(fem.Helmholtz(V), case.sensors, coefficients=dict(f=1.0))
    with pytest.raises(UserError, match="kappa"):
        statfem.DiffusivityStatFEM(helm)
    dm = statfem.DiffusivityStatFEM(case.model)
    with pytest.raises(UserError, match="shape"):
        dm.energy(jnp.zeros(dm.dim + 1), case.y)
    with pytest.raises(ValueError, match="y must have shape"):
        dm.energy_fn(jnp.zeros(3))
    with pytest.raises(UserError, match="shape"):
        dm.centred_laplace_preconditioner(case.y, jnp.zeros(dm.centred_dim - 1))
    with pytest.raises(UserError, match="v0 must have shape"):
        dm.collapsed_map_point(case.y, v0=jnp.zeros(dm.num_modes + 1))
    with pytest.raises(UserError, match="max_iterations"):
        dm.collapsed_map_point(case.y, max_iterations=0)
    with pytest.raises(UserError, match="v must have shape"):
        dm.collapsed_laplace(case.y, jnp.zeros(dm.dim))
    consistent = statfem.DiffusivityStatFEM(case.model.replace(mass="consistent"))
    with pytest.raises(UserError, match="lumped"):
        consistent.centred_laplace_preconditioner(case.y, jnp.zeros(consistent.centred_dim))


@pytest.mark.slow  # 45 s; the fast suite checks the centred form against the exact posterior and
# the collapsed form against quadrature
def test_centred_and_white_noise_forms_sample_the_same_posterior():
    """The two states are one posterior (the centred energy's log-determinant is the Jacobian of
    eta -> x): Laplace-MALA in each form gives the same means of log kappa and u within their
    Monte Carlo errors and the same spreads within 10%."""
    case = _case(grid=7, sigma_e=3e-3, num_sensors=16)
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=_base, variance_fraction=0.99)
    white = _chains(dm, case.y, steps=800, warmup=200, key=jax.random.key(5))
    centred = _chains(dm, case.y, steps=800, warmup=200, key=jax.random.key(6), centred=True)
    ess = min(float(jnp.min(statfem.chain_ess(r.samples))) for r in (white, centred))
    assert ess > 100 and all(
        float(jnp.max(statfem.rhat(r.samples))) < 1.05 for r in (white, centred)
    )
    m1, m2 = (jnp.mean(r.samples, axis=(0, 1)) for r in (white, centred))
    s1, s2 = (jnp.std(r.samples, axis=(0, 1)) for r in (white, centred))
    z = np.asarray(jnp.abs(m1 - m2) / s1)
    assert np.median(z) < 2.0 / np.sqrt(ess) and z.max() < 6.0 / np.sqrt(ess), (z.max(), ess)
    assert abs(float(jnp.median(s2 / s1)) - 1.0) < 0.1


def test_forms_agree_with_dirichlet_values():
    """With non-zero boundary values b carries the lift through A(kappa): along eta at fixed v the
    centred energy changes exactly as the white-noise one (the Jacobian term depends on v only)."""
    case = _case(grid=6, num_sensors=8)
    V = case.space
    lifted = statfem.StatFEM(
        fem.Poisson(V, dirichlet=lambda x: 0.5 + 0.2 * x[0]),
        case.sensors,
        coefficients=dict(f=1.0),
        sigma_f=0.1,
        sigma_e=1e-2,
    )
    dm = statfem.DiffusivityStatFEM(lifted, log_kappa_mean=_base)
    y = jnp.full_like(case.y, 0.6)
    white, centred = jax.jit(dm.energy_fn(y)), jax.jit(dm.centred_energy_fn(y))
    z1 = dm.sample_prior(key=jax.random.key(1))
    z2 = z1.at[dm.num_modes :].set(dm.sample_prior(key=jax.random.key(2))[dm.num_modes :])
    d_white = float(white(z1) - white(z2))
    d_centred = float(centred(dm.centred_state(z1)) - centred(dm.centred_state(z2)))
    assert d_centred == pytest.approx(d_white, rel=1e-8, abs=1e-8)
    kappa, u = dm.fields(z1)
    assert np.allclose(
        np.asarray(u)[lifted.structure.dirichlet],
        0.5 + 0.2 * np.asarray(V.dof_coordinates)[lifted.structure.dirichlet, 0],
    )


@pytest.mark.slow
def test_collapsed_form_samples_the_same_posterior():
    """MALA on the diffusivity alone (u integrated out exactly) with u drawn exactly given each
    kept state: the same means and spreads of log kappa and u as Laplace-MALA in the white-noise
    form, within their Monte Carlo errors."""
    case = _case(grid=7, sigma_e=3e-3, num_sensors=16)
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=_base, variance_fraction=0.99)
    white = _chains(dm, case.y, steps=800, warmup=200, key=jax.random.key(5))
    kernel = statfem.mala(dm.collapsed_energy_fn(case.y), 0.3)
    res = statfem.run_chain(kernel, jnp.zeros(dm.num_modes), 800, 200, key=jax.random.key(8))
    v = res.samples[::4]
    keys = jax.random.split(jax.random.key(9), v.shape[0])
    x = jnp.stack([dm.sample_solution(vi, case.y, key=k) for vi, k in zip(v, keys)])
    collapsed = jnp.concatenate([jax.vmap(dm._log_kappa)(v), x], axis=1)[None]
    ess = min(
        float(jnp.min(statfem.chain_ess(white.samples))),
        float(jnp.min(statfem.chain_ess(collapsed))),
    )
    assert ess > 30
    m1, m2 = jnp.mean(white.samples, axis=(0, 1)), jnp.mean(collapsed, axis=(0, 1))
    s1, s2 = jnp.std(white.samples, axis=(0, 1)), jnp.std(collapsed, axis=(0, 1))
    z = np.asarray(jnp.abs(m1 - m2) / s1)
    assert np.median(z) < 2.0 / np.sqrt(ess) and z.max() < 6.0 / np.sqrt(ess), (z.max(), ess)
    assert abs(float(jnp.median(s2 / s1)) - 1.0) < 0.15


def test_collapsed_laplace_pcn_matches_quadrature_of_the_diffusivity_posterior():
    """Two Karhunen-Loeve modes: the collapsed posterior of v by quadrature on a grid is the truth.
    The L-BFGS mode is the grid's, the Laplace-pCN chains' mean of v lies within 5 / sqrt(ESS)
    posterior stds of it and their variances within 15%."""
    case = _case(grid=7, sigma_e=3e-3, num_sensors=16)
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=_base, sigma=0.5, max_modes=2)
    energy = dm.collapsed_energy_fn(case.y)
    t = jnp.linspace(-5.0, 5.0, 61)
    grid = jnp.stack(jnp.meshgrid(t, t, indexing="ij"), axis=-1).reshape(-1, 2)
    e = jax.jit(jax.vmap(energy))(grid)
    w = np.exp(-(np.asarray(e) - float(jnp.min(e))))
    w /= w.sum()
    g = np.asarray(grid)
    mean = w @ g
    var = w @ (g - mean) ** 2
    assert np.all(var > 1e-3) and np.all(var < 0.9)  # the data inform both modes
    mp = dm.collapsed_map_point(case.y)
    assert mp.gradient_norm < 1e-6
    assert np.max(np.abs(np.asarray(mp.x) - g[np.argmax(w)])) <= float(t[1] - t[0])
    la = dm.collapsed_laplace(case.y, mp.x)
    kernel = mcmc.laplace_pcn(energy, la)
    x0 = jnp.stack([la.sample(key=k) for k in jax.random.split(jax.random.key(3), 4)])
    res = statfem.run_chains(kernel, x0, 1000, 100, key=jax.random.key(4))
    ess = np.asarray(statfem.chain_ess(res.samples))
    assert ess.min() > 200
    m, v = (np.asarray(a) for a in statfem.pool_chains(res))
    np.testing.assert_array_less(np.abs(m - mean) / np.sqrt(var), 5.0 / np.sqrt(ess))
    np.testing.assert_array_less(np.abs(v / var - 1.0), 0.15)
