"""The generic MCMC package: kernels on a Gaussian target against its closed form, the chain
diagnostics on chains with known answers, divergence and bad-input errors, and its layer rule."""

import ast
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import mcmc
from pdegen._errors import NonFiniteError, UserError

MEAN = jnp.array([1.0, -2.0, 0.5])
COV = jnp.array([[1.0, 0.6, 0.0], [0.6, 2.0, 0.3], [0.0, 0.3, 0.5]])
PREC = jnp.linalg.inv(COV)


def energy(x):
    r = x - MEAN
    return 0.5 * r @ PREC @ r


def dense(P):
    L = jnp.linalg.cholesky(P)
    return mcmc.Preconditioner(
        apply=lambda v: P @ v,
        sample=lambda *, key: L @ jax.random.normal(key, (L.shape[0],), L.dtype),
    )


@pytest.mark.parametrize("preconditioned", [False, True])
def test_mala_chains_match_the_gaussian_and_pass_the_diagnostics(preconditioned, getkey):
    pre = dense(COV) if preconditioned else None
    kernel = mcmc.mala(energy, 0.3, preconditioner=pre)
    x0 = jax.random.normal(getkey(), (4, 3))
    res = mcmc.run_chains(kernel, x0, 4000, 500, key=getkey())
    mean, var = mcmc.pool_chains(res)
    ess = np.asarray(mcmc.chain_ess(res.samples))
    assert np.all(ess > 400)
    # tolerances from the effective sample size: 5 standard errors
    se = np.sqrt(np.diagonal(COV) / ess)
    np.testing.assert_array_less(np.abs(np.asarray(mean) - np.asarray(MEAN)), 5 * se)
    se_var = np.diagonal(COV) * np.sqrt(2.0 / ess)
    np.testing.assert_array_less(np.abs(np.asarray(var) - np.diagonal(COV)), 5 * se_var)
    r = np.asarray(mcmc.rhat(res.samples))
    assert np.all(r < 1.02)
    assert abs(float(jnp.mean(res.acceptance_rate)) - 0.574) < 0.1


def test_chains_continue_at_their_adapted_step_size(getkey):
    kernel = mcmc.mala(energy, 0.01)  # far from the adapted step
    x0 = jax.random.normal(getkey(), (3, 3))
    first = mcmc.run_chains(kernel, x0, 200, 300, key=getkey())
    assert np.all(np.asarray(first.step_size) > 0.1)
    more = mcmc.run_chains(
        kernel, first.state.position, 200, key=getkey(), step_size=first.step_size
    )
    np.testing.assert_allclose(more.step_size, first.step_size)  # no warm-up: kept as given
    assert abs(float(jnp.mean(more.acceptance_rate)) - 0.574) < 0.15
    np.testing.assert_allclose(
        mcmc.run_chains(kernel, x0, 10, key=getkey(), step_size=0.2).step_size, 0.2
    )
    for bad in (-1.0, jnp.ones(2), float("nan")):
        with pytest.raises(ValueError, match="step_size"):
            mcmc.run_chains(kernel, x0, 10, key=getkey(), step_size=bad)


def test_rhat_flags_chains_that_disagree(getkey):
    z = jax.random.normal(getkey(), (4, 2000, 2))
    assert np.all(np.abs(np.asarray(mcmc.rhat(z)) - 1.0) < 0.01)
    shifted = z + jnp.arange(4.0)[:, None, None]
    assert np.all(np.asarray(mcmc.rhat(shifted)) > 1.5)
    # a drifting chain (non-stationary): split halves disagree
    drift = z[:1] + jnp.linspace(0.0, 6.0, 2000)[None, :, None]
    assert np.all(np.asarray(mcmc.rhat(drift)) > 1.5)


def test_a_diverging_chain_stops_with_a_non_finite_error(getkey):
    kernel = mcmc.ula(energy, 1e6)
    with pytest.raises(NonFiniteError, match="ula chain diverged.*smaller step size"):
        mcmc.run_chains(kernel, jnp.zeros((2, 3)), 500, key=getkey(), block_size=100)
    with pytest.raises(NonFiniteError, match="diverged"):
        mcmc.run_chain(kernel, jnp.zeros(3), 500, key=getkey())
    with pytest.raises(NonFiniteError, match="after 0 steps"):
        mcmc.run_chains(mcmc.ula(energy, 0.1), jnp.full((2, 3), jnp.nan), 10, key=getkey())
    # a jitted chain is pure: no error can be raised inside, the caller checks the result
    out = jax.jit(lambda k: mcmc.run_chain(kernel, jnp.zeros(3), 200, key=k).state.position)(
        getkey()
    )
    assert not np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("h", [0.0, -1.0, float("nan"), float("inf")])
def test_step_size_must_be_positive_and_finite(h):
    for make in (
        lambda: mcmc.ula(energy, h),
        lambda: mcmc.mala(energy, h),
        lambda: mcmc.pcn(energy, h, prior_mean=MEAN, prior=dense(COV)),
    ):
        with pytest.raises(UserError, match="step_size must be finite and > 0"):
            make()


def test_a_preconditioner_of_the_wrong_size_fails_before_sampling(getkey):
    wrong = dense(jnp.eye(4))
    calls = []

    def counted(x):
        calls.append(1)
        return energy(x)

    for kernel in (
        mcmc.ula(counted, 0.1, preconditioner=wrong),
        mcmc.mala(counted, 0.1, preconditioner=wrong),
        mcmc.pcn(counted, 0.1, prior_mean=MEAN, prior=wrong),
    ):
        with pytest.raises(UserError, match=r"preconditioner.*\(3,\)"):
            mcmc.run_chains(kernel, jnp.zeros((2, 3)), 10, key=getkey())
        with pytest.raises(UserError, match="preconditioner"):
            kernel.init(jnp.zeros(3))
    assert not calls  # the energy was never evaluated
    with pytest.raises(UserError, match="sample"):
        half = mcmc.Preconditioner(apply=lambda v: v, sample=lambda *, key: jnp.zeros(2))
        mcmc.mala(energy, 0.1, preconditioner=half).init(jnp.zeros(3))


def test_mcmc_imports_nothing_else_from_pdegen():
    code = (
        "import sys, pdegen.mcmc; print(sorted(m for m in sys.modules if m.startswith('pdegen')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout.strip())
    others = [m for m in loaded if m not in ("pdegen", "pdegen._errors", "pdegen.mcmc")]
    assert others and all(m.startswith("pdegen.mcmc._") for m in others), loaded


def test_statfem_reexports_the_generic_kernels():
    from pdegen.fem import statfem

    assert statfem.mala is mcmc.mala and statfem.Preconditioner is mcmc.Preconditioner
    assert statfem.effective_sample_size is mcmc.chain_ess and statfem.rhat is mcmc.rhat


def test_largest_curvature_without_forward_mode():
    """An energy with a custom VJP (like one through a PDE solve) has no forward mode: the
    curvature comes from differences of the gradient and still finds the largest eigenvalue."""
    Q = jnp.diag(jnp.array([1.0, 4.0, 25.0]))

    @jax.custom_vjp
    def energy(x):
        return 0.5 * x @ Q @ x

    energy.defvjp(lambda x: (energy(x), x), lambda x, g: (g * (Q @ x),))
    x = jnp.array([0.3, -0.2, 0.1])
    with pytest.raises(TypeError):
        jax.jvp(jax.grad(energy), (x,), (x,))
    assert float(mcmc.largest_curvature(energy, x, num_iterations=60)) == pytest.approx(
        25.0, rel=1e-6
    )


def test_lbfgs_and_dense_laplace_recover_a_gaussian():
    """The mode by L-BFGS, the precision by central differences of the gradient (exact for a
    quadratic up to rounding), the preconditioner applying the covariance; a point where the
    energy is not convex still gives a proper Gaussian (eigenvalues floored)."""
    x, _ = jax.jit(lambda x0: mcmc.lbfgs_minimise(energy, x0, 100))(jnp.zeros(3))
    np.testing.assert_allclose(x, MEAN, atol=1e-7)
    la = mcmc.dense_laplace(energy, x)
    L = la.precision_cholesky
    np.testing.assert_allclose(L @ L.T, PREC, rtol=1e-7, atol=1e-8)
    v = jnp.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(la.preconditioner.apply(v), COV @ v, rtol=1e-7)
    saddle = mcmc.dense_laplace(lambda x: x[0] ** 2 - x[1] ** 2, jnp.zeros(2))
    lam = np.linalg.eigvalsh(np.asarray(saddle.precision_cholesky @ saddle.precision_cholesky.T))
    np.testing.assert_allclose(np.sort(lam), [2.0, 2.0], rtol=1e-6)  # |eigenvalues|
    with pytest.raises(UserError, match="vector"):
        mcmc.dense_laplace(energy, jnp.zeros((3, 1)))


@pytest.mark.parametrize("exact", [True, False], ids=["exact-approximation", "wrong-approximation"])
def test_laplace_pcn_is_exact_for_any_approximation(exact, getkey):
    """pCN around a Gaussian approximation: with the exact one every proposal is accepted; with a
    shifted, too narrow one the chains still match the target within their Monte Carlo errors."""
    if exact:
        approx = mcmc.GaussianApproximation(MEAN, jnp.linalg.cholesky(PREC))
    else:
        approx = mcmc.GaussianApproximation(MEAN + 0.4, jnp.linalg.cholesky(1.6 * PREC))
    kernel = mcmc.laplace_pcn(energy, approx)
    assert kernel.name == "pcn-laplace" and kernel.gradients_per_step == 0
    x0 = jnp.stack([approx.sample(key=k) for k in jax.random.split(getkey(), 4)])
    res = mcmc.run_chains(kernel, x0, 3000, 300, key=getkey())
    if exact:
        assert float(jnp.min(res.acceptance_rate)) > 0.999
    mean, var = mcmc.pool_chains(res)
    ess = np.asarray(mcmc.chain_ess(res.samples))
    assert np.all(ess > 300)
    se = np.sqrt(np.diagonal(COV) / ess)
    np.testing.assert_array_less(np.abs(np.asarray(mean) - np.asarray(MEAN)), 5 * se)
    se_var = np.diagonal(COV) * np.sqrt(2.0 / ess)
    np.testing.assert_array_less(np.abs(np.asarray(var) - np.diagonal(COV)), 5 * se_var)
    with pytest.raises(TypeError, match="GaussianApproximation"):
        mcmc.laplace_pcn(energy, dense(COV))
