"""Low-temperature diffusion optimisation, baselines and test functions."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen.optimise import TEST_FUNCTIONS, minimise, test_function

# A small diffusion optimiser (cheap to compile) used by the fast tests.
SMALL = dict(
    method="dds", batch_size=32, num_steps=12, num_temperatures=4, gradient_informed=False, width=32
)


@pytest.mark.parametrize("name", TEST_FUNCTIONS)
def test_known_minima(name):
    for dim in (2, 5):
        prob = test_function(name, dim)
        x = jnp.asarray(prob.minimiser)
        pert = x[None, :] + 1e-2 * jr.normal(jr.key(0), (64, dim), dtype=x.dtype)
        value, grad, nearby = jax.jit(
            lambda x, p: (prob.fn(x), jax.grad(prob.fn)(x), jax.vmap(prob.fn)(p))
        )(x, pert)
        np.testing.assert_allclose(float(value), prob.minimum, atol=1e-8)
        # the minimiser is a stationary point and nearby random points are not better
        assert float(jnp.max(jnp.abs(grad))) < 1e-5
        assert float(jnp.min(nearby)) >= prob.minimum - 1e-9
        assert np.all(prob.lower <= prob.minimiser) and np.all(prob.minimiser <= prob.upper)


@pytest.fixture(scope="module")
def rastrigin_runs():
    prob = test_function("rastrigin", 2)
    res, extras = minimise(
        prob.fn,
        prob.domain,
        key=jr.split(jr.key(0), 4),
        max_evaluations=4000,
        return_extras=True,
        **SMALL,
    )
    return prob, res, extras


def _check_success(prob, res, budget, min_successes):
    gaps = np.abs(res.value - prob.minimum)
    assert np.sum(gaps < 1e-2) >= min_successes, (prob.name, gaps)
    assert np.all(res.num_evaluations <= budget)
    # trajectory: nonincreasing best values at increasing evaluation counts, ending at the result
    assert np.all(np.diff(res.best_values, axis=1) <= 0)
    assert np.all(np.diff(res.evaluations, axis=1) > 0)
    np.testing.assert_allclose(res.best_values[:, -1], res.value)
    assert np.all(res.evaluations[:, -1] <= budget)


def test_optimiser_finds_rastrigin_minimum_2d(rastrigin_runs):
    prob, res, _ = rastrigin_runs
    _check_success(prob, res, 4000, 3)


def test_optimiser_finds_ackley_minimum_2d():
    prob = test_function("ackley", 2)
    res = minimise(prob.fn, prob.domain, key=jr.split(jr.key(1), 4), max_evaluations=4000, **SMALL)
    _check_success(prob, res, 4000, 3)


def test_lower_temperature_concentrates(rastrigin_runs):
    _, _, extras = rastrigin_runs
    temps = extras["temperatures"]
    means = np.median(extras["stage_mean_values"], axis=0)
    spreads = np.median(extras["stage_spreads"], axis=0)
    assert np.all(np.diff(temps, axis=1) < 0)
    # every lower temperature gives a lower typical objective value and a tighter sample cloud
    assert np.all(np.diff(means) < 0), means
    assert np.all(np.diff(spreads) < 0), spreads


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rastrigin", "ackley"])
def test_optimiser_succeeds_on_most_seeds_2d(name):
    prob = test_function(name, 2)
    res = minimise(
        prob.fn, prob.domain, key=jr.split(jr.key(2026), 20), max_evaluations=4000, **SMALL
    )
    _check_success(prob, res, 4000, 17)


def test_polish_converges_one_basin_and_counts_its_evaluations():
    from pdegen.optimise._best import best_init, best_update
    from pdegen.optimise._box import make_box, objective_z
    from pdegen.optimise._polish import polish, polish_evaluations, polish_plan, refine

    prob = test_function("rastrigin", 10)
    box = make_box(prob.domain)
    fz = objective_z(prob.fn, box)
    # 8 points in the global basin (|x_i| <= 0.15), one with a coordinate in the next basin
    x = 0.15 * jr.uniform(jr.key(3), (8, 10), minval=-1.0, maxval=1.0)
    x = x.at[0, 0].set(1.0)
    z = jax.vmap(box.to_z)(x)
    best = best_update(best_init(8, 10), z, jax.vmap(fz)(z))
    plan = polish_plan(8, 40)
    assert plan.sizes == (8, 4, 2, 1) and plan.steps == (10, 20, 40, 80)
    assert plan.cost <= 2 * 8 * 40 + 8
    out, traj = jax.jit(lambda b: polish(fz, b, steps=40, learning_rate=0.02))(best)
    evals = polish_evaluations(plan, 0)
    assert traj.shape[0] + 1 == evals.shape[0] and evals[-1] == plan.cost
    assert np.all(np.diff(np.asarray(traj)) <= 0)
    assert float(out.values[0]) < 1e-6, out.values
    np.testing.assert_allclose(
        float(prob.fn(box.to_x(out.points[0]))), float(out.values[0]), atol=1e-12
    )
    # the same budget as 40 steps from each point stops short of the tolerance
    parallel, _ = jax.jit(lambda b: refine(fz, b.points, b, steps=40, learning_rate=0.02))(best)
    assert float(parallel.values[0]) > 10 * float(out.values[0])


@pytest.mark.parametrize(
    "method",
    [pytest.param("pis", marks=pytest.mark.slow), "adam", "lbfgs", "langevin", "random", "cmaes"],
)
def test_other_methods_run_within_budget(method):
    prob = test_function("styblinski_tang", 2)
    res = minimise(
        prob.fn,
        prob.domain,
        key=jr.key(1),
        method=method,
        max_evaluations=800,
        batch_size=16,
        num_steps=4,
        num_temperatures=2,
        refine_steps=10,
        width=16,
        adam_steps_per_restart=20,
        num_initial=64,
        num_chains=8,
    )
    assert res.num_evaluations <= 800
    assert res.x.shape == (2,) and np.isfinite(res.value)
    assert np.all(prob.lower <= res.x) and np.all(res.x <= prob.upper)
    assert res.value <= float(prob.fn(jnp.zeros(2)))
    np.testing.assert_allclose(float(prob.fn(jnp.asarray(res.x))), res.value, rtol=1e-6, atol=1e-9)


def test_random_search_small_budget_skips_the_polish():
    prob = test_function("rastrigin", 2)
    res = minimise(prob.fn, prob.domain, key=jr.key(0), method="random", max_evaluations=300)
    assert 0 < res.num_evaluations <= 300 and np.isfinite(res.value)
    res = minimise(prob.fn, prob.domain, key=jr.key(0), method="random", max_evaluations=100)
    assert res.num_evaluations == 100


def test_test_function_bad_input():
    prob = test_function("rastrigin", 2)
    with pytest.raises(ValueError, match="name"):
        test_function("sphere", 2)
    with pytest.raises(ValueError, match="dim"):
        test_function("rosenbrock", 1)
    with pytest.raises(ValueError, match="shape"):
        prob.fn(jnp.zeros((2, 2)))
