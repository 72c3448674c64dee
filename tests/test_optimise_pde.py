"""PDE-constrained global optimisation: Poisson source inversion through pdegen.fem."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen.inverse import source_inversion
from pdegen.optimise import minimise


@pytest.fixture(scope="module")
def task():
    return source_inversion(num_sources=2, grid=13, num_sensors=25, known_strengths=True, seed=0)


def test_objective_matches_full_solve(task):
    truth = jnp.asarray(task.true_parameters)
    assert float(task.relative_misfit(truth)) < 1e-20
    assert abs(float(task.objective(truth))) < 1e-8
    assert task.parameter_error(task.true_parameters) == 0.0
    # the strengths differ and are known: swapping the positions is not a minimiser
    swapped = np.concatenate([task.true_parameters[2:], task.true_parameters[:2]])
    assert task.parameter_error(swapped) > 0.1
    assert float(task.relative_misfit(jnp.asarray(swapped))) > 1e-3
    # the precomputed sensor response equals the misfit through a full FE solve
    theta = truth + 0.05
    np.testing.assert_allclose(
        float(task.relative_misfit(theta)), float(task.misfit_energy(theta)), rtol=1e-8
    )
    assert float(task.relative_misfit(theta)) > 1e-4 and float(task.objective(theta)) > 5


def test_gradient_descent_gets_stuck_where_diffusion_optimiser_succeeds(task):
    # gradient descent: one projected Adam run (200 steps) from each of 4 random starts
    gd = minimise(
        task.objective,
        task.domain,
        key=jr.split(jr.key(0), 4),
        method="adam",
        max_evaluations=401,
        adam_steps_per_restart=200,
    )
    gd_err = task.parameter_error(gd.x)
    assert np.any(gd_err > 0.1), gd_err
    dds = minimise(
        task.objective,
        task.domain,
        key=jr.split(jr.key(1), 2),
        method="dds",
        max_evaluations=2000,
        batch_size=16,
        width=32,
        num_steps=12,
    )
    dds_err = task.parameter_error(dds.x)
    assert np.all(dds_err < 0.05), dds_err


@pytest.mark.slow
def test_diffusion_optimiser_beats_gradient_descent(task):
    keys = jr.split(jr.key(0), 8)
    gd = minimise(
        task.objective,
        task.domain,
        key=keys,
        method="adam",
        max_evaluations=401,
        adam_steps_per_restart=200,
    )
    dds = minimise(
        task.objective,
        task.domain,
        key=keys,
        method="dds",
        max_evaluations=4000,
        width=32,
        num_steps=12,
    )
    gd_success = np.mean(task.parameter_error(gd.x) < 0.05)
    dds_success = np.mean(task.parameter_error(dds.x) < 0.05)
    assert dds_success >= 7 / 8, task.parameter_error(dds.x)
    assert dds_success > gd_success, (gd_success, dds_success)


def test_bad_arguments(task):
    with pytest.raises(ValueError, match="num_sources"):
        source_inversion(num_sources=0)
    with pytest.raises(ValueError, match="true_parameters"):
        source_inversion(num_sources=2, true_parameters=np.zeros(5))
    with pytest.raises(ValueError, match="theta"):
        task.objective(jnp.zeros(3))
