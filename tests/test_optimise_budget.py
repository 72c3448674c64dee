"""Budget accounting checked by a counter wrapped around the objective, and bad input."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen._errors import NonFiniteError
from pdegen.optimise import METHODS, counted, minimise, minimum_budget, test_function

# small settings that still run every phase of every method (initial sample, annealing,
# polish, restarts)
SMALL = dict(
    num_temperatures=2,
    num_steps=4,
    batch_size=16,
    width=16,
    num_initial=64,
    refine_steps=10,
    adam_steps_per_restart=20,
    num_chains=16,
)


def test_counter_sees_values_and_gradients_through_vmap_jit_and_scan():
    g, counter = counted(lambda x: jnp.sum(x**2))
    x = jnp.ones((7, 3))
    jax.jit(jax.vmap(g))(x)
    assert (counter.values, counter.gradients) == (7, 0)
    jax.jit(jax.vmap(jax.value_and_grad(g)))(x)
    assert (counter.values, counter.gradients) == (14, 7)
    jax.jit(lambda: jax.lax.scan(lambda c, _: (c, jax.vmap(g)(x)), 0.0, None, length=5))()
    assert counter.values == 14 + 35 and counter.smallest == 3.0


@pytest.mark.parametrize(
    "method,options",
    [
        *[(m, {}) for m in METHODS if m != "pis"],
        *[
            pytest.param(m, o, marks=pytest.mark.slow)
            for m, o in [
                ("pis", {}),
                ("dds", dict(gradient_informed=True)),
                ("dds", dict(loss="kl")),
                ("dds", dict(network="coordinatewise")),
            ]
        ],
    ],
)
def test_reported_evaluations_equal_the_counter(method, options):
    prob = test_function("styblinski_tang", 2)
    budget = 1499  # not a multiple of any batch, population or chunk
    g, counter = counted(prob.fn)
    res = minimise(
        g, prob.domain, key=jr.key(1), method=method, max_evaluations=budget, **SMALL, **options
    )
    assert res.num_evaluations == counter.total <= budget
    # the whole budget is used, up to less than one iteration / restart / grid line
    assert res.num_evaluations >= budget - 160, res.num_evaluations
    assert res.evaluations[-1] == res.num_evaluations and res.evaluations[0] == 1
    # the best value comes from counted evaluations, and is f at the reported point
    assert res.value >= counter.smallest - 1e-9 * (1 + abs(counter.smallest))
    np.testing.assert_allclose(float(prob.fn(jnp.asarray(res.x))), res.value, rtol=1e-9)
    np.testing.assert_allclose(res.best_values[-1], res.value)


def test_cmaes_last_generation_stops_at_the_budget():
    prob = test_function("rastrigin", 3)
    for budget in (101, 777):
        g, counter = counted(prob.fn)
        res = minimise(
            g, prob.domain, key=jr.split(jr.key(0), 2), method="cmaes", max_evaluations=budget
        )
        assert counter.total == 2 * (budget - 1) + 1  # without a task the runs share the centre
        assert np.all(res.num_evaluations == budget)
        assert np.min(res.value) == pytest.approx(counter.smallest, rel=1e-12, abs=1e-12)


def test_cmaes_in_one_dimension_and_budgets_written_as_floats():
    f = lambda x: jnp.sum((x - 0.77) ** 2)  # noqa: E731
    res = minimise(f, ([0.1], [2.5]), key=jr.key(0), method="cmaes", max_evaluations=3e2)
    assert res.num_evaluations == 300
    assert float(res.x[0]) == pytest.approx(0.77, abs=1e-4)
    with pytest.raises(ValueError, match="whole number"):
        minimise(f, ([0.1], [2.5]), key=jr.key(0), method="cmaes", max_evaluations=300.5)


def test_box_centre_is_counted_and_a_candidate():
    # the minimiser is the box centre: the centre check alone finds it
    prob = test_function("rastrigin", 2)
    g, counter = counted(prob.fn)
    res = minimise(g, prob.domain, key=jr.key(0), method="random", max_evaluations=2)
    assert counter.total == 2 == res.num_evaluations
    assert res.value == 0.0 and np.all(res.x == 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_budget_too_small_states_the_minimum(method):
    prob = test_function("rastrigin", 2)
    minimum = minimum_budget(method, **SMALL)
    with pytest.raises(ValueError, match=f"minimum budget is {minimum} evaluations"):
        minimise(
            prob.fn, prob.domain, key=jr.key(0), method=method, max_evaluations=minimum - 1, **SMALL
        )


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("dds", marks=pytest.mark.slow),
        "random",
        "langevin",
        "adam",
        "lbfgs",
        "cmaes",
        "coordinate",
    ],
)
def test_non_finite_values_are_an_error(method):
    # finite at the centre, NaN on a quarter of the box
    def f(x):
        return jnp.where(x[0] + x[1] > 5.0, jnp.nan, jnp.sum(x**2))

    with pytest.raises(NonFiniteError, match="NaN / inf at"):
        minimise(
            f,
            (-5.12 * np.ones(2), 5.12 * np.ones(2)),
            key=jr.key(0),
            method=method,
            max_evaluations=1500,
            **SMALL,
        )


def test_bad_input():
    prob = test_function("rastrigin", 2)
    with pytest.raises(ValueError, match="domain"):
        minimise(prob.fn, (np.zeros(2), np.zeros(3)), key=jr.key(0), max_evaluations=2000)
    with pytest.raises(ValueError, match="domain"):
        minimise(prob.fn, (np.ones(2), np.zeros(2)), key=jr.key(0), max_evaluations=2000)
    with pytest.raises(ValueError, match="f="):
        minimise(
            lambda x: jnp.sum(x[:3] ** 2) * jnp.ones(2),
            prob.domain,
            key=jr.key(0),
            max_evaluations=2000,
        )
    with pytest.raises(NonFiniteError, match="centre"):
        minimise(lambda x: jnp.sum(x) * jnp.nan, prob.domain, key=jr.key(0), max_evaluations=2000)
    with pytest.raises(ValueError, match="method"):
        minimise(prob.fn, prob.domain, key=jr.key(0), method="sgd")
    with pytest.raises(ValueError, match="max_evaluations"):
        minimise(prob.fn, prob.domain, key=jr.key(0), method="random")
    with pytest.raises(TypeError, match="key"):
        minimise(prob.fn, prob.domain, key=0, max_evaluations=2000)
