"""Nonlinear statFEM (-div((1 + alpha u^2) grad u) = f + xi): the Jacobian against autodiff, the
Newton solve, the MAP and the Laplace preconditioners against the exact linear-Gaussian posterior
at alpha = 0, and Laplace-preconditioned MALA against an independent exact-in-the-limit sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import fem, mcmc
from pdegen._errors import UserError
from pdegen.fem import statfem


def make(n=7, m=8, alpha=1.0, seed=0, **kw):
    V = fem.FunctionSpace(fem.unit_square(n), "P1")
    sensors = np.random.default_rng(seed).uniform(0.1, 0.9, size=(m, 2))
    params = dict(f=15.0, alpha=alpha, sigma_f=2.0, sigma_e=1e-2)
    params.update(kw)
    return statfem.NonlinearStatFEM(V, sensors, **params)


def test_jacobian_matches_autodiff_and_newton_solves(getkey):
    model = make()
    x = model.sample_prior(key=getkey())
    J = np.asarray(model.jacobian(x).todense())[np.ix_(model.structure.free, model.structure.free)]
    np.testing.assert_allclose(J, np.asarray(jax.jacfwd(model.residual)(x)), atol=1e-12)
    xi = jax.random.normal(getkey(), (model.dim,))
    np.testing.assert_allclose(np.asarray(model.residual(model.solve(xi))), xi, atol=1e-9)
    # alpha = 0: the linear Poisson problem
    lin = make(alpha=0.0)
    u = fem.Poisson(lin.space).solve(kappa=1.0, f=15.0)
    np.testing.assert_allclose(
        np.asarray(lin.solve()), np.asarray(u)[lin.structure.free], rtol=1e-9
    )


def test_map_and_laplace_are_the_exact_posterior_when_alpha_is_zero(getkey):
    model = make(alpha=0.0)
    x = model.sample_prior(key=getkey())
    y = model.simulate_data(x, 2, key=getkey())
    linear = statfem.StatFEM(
        fem.Poisson(model.space),
        np.asarray(model.structure.sensors),
        coefficients=dict(kappa=1.0, f=15.0),
        sigma_f=2.0,
        sigma_e=1e-2,
    )
    post = statfem.exact_posterior(linear, y)
    mp = model.map_point(y)
    np.testing.assert_allclose(np.asarray(mp.x), np.asarray(post.mean), rtol=1e-7)
    C = np.asarray(post.covariance())
    E = jnp.eye(model.dim)
    full = model.laplace_preconditioner(y, mp.x)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(full.apply)(E)), C, rtol=1e-7, atol=1e-10 * np.abs(C).max()
    )
    low = model.laplace_preconditioner(y, mp.x, rank=model.num_sensors, key=getkey())
    np.testing.assert_allclose(
        np.asarray(jax.vmap(low.preconditioner.apply)(E)), C, rtol=1e-6, atol=1e-9 * np.abs(C).max()
    )
    # draws: P^{1/2} P^{1/2 T} = P, checked through the exact second moment of many draws' map
    for pre in (full, low.preconditioner):
        draws = jax.vmap(lambda k, p=pre: p.sample(key=k))(jax.random.split(getkey(), 4000))
        emp = np.cov(np.asarray(draws).T)
        # 4000 draws: relative standard error of a variance about sqrt(2 / 4000) = 2.2%
        np.testing.assert_allclose(np.diagonal(emp), np.diagonal(C), rtol=0.12)
    # pCN with the Laplace reference: here the reference is the posterior, every move is accepted
    mean, pre, correction = model.laplace_reference(y, mp.x)
    kernel = mcmc.pcn(lambda z: model.energy(z, y) - correction(z), 0.9, prior_mean=mean, prior=pre)
    res = mcmc.run_chain(kernel, mp.x, 50, key=getkey())
    np.testing.assert_allclose(float(res.acceptance_rate), 1.0, atol=1e-8)
    # a rank below the data's: the kept eigenvalues are the leading ones
    low4 = model.laplace_preconditioner(y, mp.x, rank=4, key=getkey())
    np.testing.assert_allclose(
        np.asarray(low4.eigenvalues), np.asarray(low.eigenvalues[:4]), rtol=1e-6
    )


@pytest.mark.parametrize(
    "size",
    [
        dict(n=4, mala=1500, pcn=6000),
        pytest.param(dict(n=5, mala=3000, pcn=20000), marks=pytest.mark.slow),
    ],
)
def test_laplace_mala_matches_pcn_on_the_nonlinear_posterior(size, getkey):
    model = make(n=size["n"], m=6)
    x = model.sample_prior(key=getkey())
    y = model.simulate_data(x, key=getkey())
    energy = model.energy_fn(y)
    mp = model.map_point(y)
    pre = model.laplace_preconditioner(y, mp.x)
    x0 = jnp.tile(mp.x, (4, 1))
    a = statfem.run_chains(
        statfem.mala(energy, 0.5, preconditioner=pre), x0, 3000, 500, key=getkey()
    )
    m0, prior, prior_energy = model.linear_prior()
    kernel = statfem.pcn(lambda z: energy(z) - prior_energy(z), 0.1, prior_mean=m0, prior=prior)
    b = statfem.run_chains(kernel, x0, size["pcn"], 2000, key=getkey(), thin=10)
    ma, va = statfem.pool_chains(a)
    mb, vb = statfem.pool_chains(b)
    ess_a = np.asarray(statfem.chain_ess(a.samples))
    ess_b = np.asarray(statfem.chain_ess(b.samples))
    assert np.all(np.asarray(statfem.rhat(a.samples)) < 1.05)
    assert np.all(np.asarray(statfem.rhat(b.samples)) < 1.1)
    se = np.sqrt(np.asarray(va) / ess_a + np.asarray(vb) / ess_b)
    np.testing.assert_array_less(np.abs(np.asarray(ma - mb)), 5 * se)
    se_v = np.asarray(va) * np.sqrt(2.0 / ess_a) + np.asarray(vb) * np.sqrt(2.0 / ess_b)
    np.testing.assert_array_less(np.abs(np.asarray(va - vb)), 5 * se_v)


@pytest.mark.slow
def test_preconditioned_step_sizes_across_three_refinements(getkey):
    """MALA's adapted step size across three refinements (dims 9, 49, 225): with the Laplace
    preconditioner it shrinks only like dim^(-1/3) (MALA's own scaling, the preconditioner removes
    the mesh dependence of the curvature); with the Riesz map (lumped mass; a multiple of the
    identity on a uniform grid) it shrinks much faster, like the bi-Laplacian model energy's
    largest curvature."""
    steps, mass_steps, dims = [], [], []
    for n in (5, 9, 17):
        model = make(n=n, m=8)
        dims.append(model.dim)
        x = model.sample_prior(key=jax.random.key(1))
        y = model.simulate_data(x, key=jax.random.key(2))
        energy = model.energy_fn(y)
        mp = model.map_point(y)
        x0 = jnp.tile(mp.x, (2, 1))
        for p, out in (
            (model.laplace_preconditioner(y, mp.x), steps),
            (model.mass_preconditioner(), mass_steps),
        ):
            lam = float(mcmc.largest_curvature(energy, mp.x, preconditioner=p))
            res = mcmc.run_chains(
                mcmc.mala(energy, 1.0 / lam, preconditioner=p), x0, 200, 800, key=getkey()
            )
            out.append(float(jnp.mean(res.step_size)))
            assert abs(float(jnp.mean(res.acceptance_rate)) - 0.574) < 0.15
    scaled = np.asarray(steps) * np.asarray(dims, float) ** (1 / 3)
    assert scaled.max() / scaled.min() < 1.5, (steps, dims)
    assert mass_steps[0] / mass_steps[-1] > 10.0 * steps[0] / steps[-1], (mass_steps, steps)


def test_nonlinear_bad_input():
    model = make()
    with pytest.raises(UserError, match="sensors"):
        statfem.NonlinearStatFEM(model.space, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="sigma_f"):
        make(sigma_f=0.0)
    with pytest.raises(UserError, match="y must have shape"):
        model.map_point(jnp.zeros(3))
    with pytest.raises(UserError, match="rank"):
        model.laplace_preconditioner(
            jnp.zeros(8), jnp.zeros(model.dim), rank=0, key=jax.random.key(0)
        )
    with pytest.raises(UserError, match="key"):
        model.laplace_preconditioner(jnp.zeros(8), jnp.zeros(model.dim), rank=2)
    # the energies handed to samplers check the state's length (a longer one would run)
    with pytest.raises(ValueError, match=rf"state must have shape \({model.dim},\)"):
        model.energy_fn(jnp.zeros(8))(jnp.zeros(model.dim + 3))
    with pytest.raises(ValueError, match="solve"):
        model.solve(jnp.zeros(model.dim - 1))


def test_sparse_cholesky_of_a_float32_matrix_solves_in_float64():
    # a Gauss-Newton matrix assembled in float32 (JAX's default) is factorised in float64
    import scipy.sparse as sp

    from pdegen.fem.statfem._selected import SparseCholesky

    Q = sp.diags([np.full(5, 4.0), np.full(4, -1.0), np.full(4, -1.0)], [0, -1, 1]).astype(
        np.float32
    )
    b = np.arange(5.0)
    x = SparseCholesky(Q).solve(b)
    assert np.allclose(Q.astype(np.float64) @ x, b, rtol=1e-12)


@pytest.mark.slow
def test_laplace_mala_matches_the_stored_reference_posterior():
    """The benchmark's 32x32 nonlinear case: Laplace-preconditioned MALA (4 chains from prior draws)
    against the stored long-run reference, tolerances from both effective sample sizes."""
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks/results/statfem_nonlinear_reference_32.npz"
    ref = np.load(path)
    case = statfem.nonlinear_statfem_case(32, key=jax.random.fold_in(jax.random.key(0), 32))
    model, y = case.model, case.y
    mp = model.map_point(y)
    pre = model.laplace_preconditioner(y, mp.x)
    x0 = jnp.stack([model.sample_prior(key=k) for k in jax.random.split(jax.random.key(7), 4)])
    res = mcmc.run_chains(
        mcmc.mala(model.energy_fn(y), 0.1, preconditioner=pre), x0, 4000, 500, key=jax.random.key(8)
    )
    mean, var = mcmc.pool_chains(res)
    ess = np.asarray(mcmc.chain_ess(res.samples))
    assert np.all(np.asarray(mcmc.rhat(res.samples)) < 1.1)
    se = np.sqrt(ref["variance"] / ess + ref["variance"] / ref["ess"])
    z = np.abs(np.asarray(mean) - ref["mean"]) / se
    assert np.mean(z < 3) > 0.98 and z.max() < 6
    se_v = ref["variance"] * np.sqrt(2.0 / ess + 2.0 / ref["ess"])
    zv = np.abs(np.asarray(var) - ref["variance"]) / se_v
    assert np.mean(zv < 3) > 0.98 and zv.max() < 6
