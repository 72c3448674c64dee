"""Low-temperature diffusion optimisation, baselines, test functions and input checks."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen.inverse import TEST_FUNCTIONS, minimise, test_function


@pytest.mark.parametrize("name", TEST_FUNCTIONS)
@pytest.mark.parametrize("dim", [2, 5])
def test_known_minima(name, dim):
    prob = test_function(name, dim)
    f = jax.jit(prob.fn)
    x = jnp.asarray(prob.minimiser)
    np.testing.assert_allclose(float(f(x)), prob.minimum, atol=1e-8)
    # the minimiser is a stationary point and nearby random points are not better
    assert float(jnp.max(jnp.abs(jax.grad(prob.fn)(x)))) < 1e-5
    pert = x[None, :] + 1e-2 * jr.normal(jr.key(0), (64, dim), dtype=x.dtype)
    assert float(jnp.min(jax.vmap(prob.fn)(pert))) >= prob.minimum - 1e-9
    assert np.all(prob.lower <= prob.minimiser) and np.all(prob.minimiser <= prob.upper)


def test_optimiser_finds_global_minimum_2d():
    keys = jr.split(jr.key(0), 6)
    for name in ("rastrigin", "ackley"):
        prob = test_function(name, 2)
        res = minimise(prob.fn, prob.domain, key=keys, method="dds", max_evaluations=6000,
                       batch_size=32, num_steps=12, gradient_informed=False, num_temperatures=4)
        gaps = np.abs(res.value - prob.minimum)
        assert np.mean(gaps < 1e-2) >= 4 / 6, (name, gaps)
        assert np.all(res.num_evaluations <= 6000)
        # trajectory: nonincreasing best values at increasing evaluation counts
        assert np.all(np.diff(res.best_values, axis=1) <= 0)
        assert np.all(np.diff(res.evaluations, axis=1) > 0)


def test_lower_temperature_concentrates():
    prob = test_function("rastrigin", 2)
    res, extras = minimise(prob.fn, prob.domain, key=jr.key(3), method="dds",
                           max_evaluations=6000, batch_size=32, num_steps=16,
                           gradient_informed=False, num_temperatures=4, refine_steps=0,
                           return_extras=True)
    means = extras["stage_mean_values"]
    spreads = extras["stage_spreads"]
    assert np.all(np.diff(extras["temperatures"]) < 0)
    assert means[-1] < means[0] and spreads[-1] < spreads[0]
    assert np.sum(np.diff(means) < 0) >= 2


@pytest.mark.parametrize(
    "method", [pytest.param("pis", marks=pytest.mark.slow), "adam", "langevin", "random", "cmaes"]
)
def test_other_methods_run_within_budget(method):
    prob = test_function("styblinski_tang", 2)
    res = minimise(prob.fn, prob.domain, key=jr.key(1), method=method, max_evaluations=3000,
                   batch_size=16, num_steps=4, num_temperatures=2, refine_steps=50, width=16,
                   adam_steps_per_restart=50)
    assert res.num_evaluations <= 3000
    assert res.x.shape == (2,) and np.isfinite(res.value)
    assert np.all(prob.lower <= res.x) and np.all(res.x <= prob.upper)
    assert res.value <= float(prob.fn(jnp.zeros(2)))


def test_bad_input():
    prob = test_function("rastrigin", 2)
    with pytest.raises(ValueError, match="domain"):
        minimise(prob.fn, (np.zeros(2), np.zeros(3)), key=jr.key(0))
    with pytest.raises(ValueError, match="domain"):
        minimise(prob.fn, (np.ones(2), np.zeros(2)), key=jr.key(0))
    with pytest.raises(ValueError, match="f="):
        minimise(lambda x: jnp.sum(x[:3] ** 2) * jnp.ones(2), prob.domain, key=jr.key(0))
    with pytest.raises(ValueError, match="f="):
        minimise(lambda x: jnp.sum(x) * jnp.nan, prob.domain, key=jr.key(0))
    with pytest.raises(ValueError, match="method"):
        minimise(prob.fn, prob.domain, key=jr.key(0), method="sgd")
    with pytest.raises(ValueError, match="max_evaluations"):
        minimise(prob.fn, prob.domain, key=jr.key(0), method="random")
    with pytest.raises(ValueError, match="max_evaluations"):
        minimise(prob.fn, prob.domain, key=jr.key(0), method="dds", max_evaluations=10)
    with pytest.raises(TypeError, match="key"):
        minimise(prob.fn, prob.domain, key=0)
    with pytest.raises(ValueError, match="name"):
        test_function("sphere", 2)
    with pytest.raises(ValueError, match="dim"):
        test_function("rosenbrock", 1)
    with pytest.raises(ValueError, match="shape"):
        prob.fn(jnp.zeros((2, 2)))
