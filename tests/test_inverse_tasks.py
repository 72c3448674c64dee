"""Benchmark tasks (fixed seeds, sensors, noise) and metrics."""

import jax.numpy as jnp
import numpy as np
import pytest

from pdegen.inverse import (
    credible_interval_coverage,
    empirical_coverage,
    make_task,
    relative_l2,
)

GRID = 8


def test_tasks_are_reproducible_and_share_sensors():
    t1 = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, seed=3, index=0)
    t2 = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, seed=3, index=0)
    t3 = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, seed=3, index=1)
    t4 = make_task("poisson-inverse", grid=GRID, sensor_fraction=0.15, seed=4, index=0)
    assert np.array_equal(t1.sensors, t2.sensors) and jnp.array_equal(t1.truth, t2.truth)
    assert np.array_equal(t1.sensors, t3.sensors)  # one mask per seed
    assert not jnp.allclose(t1.truth, t3.truth)  # another draw
    assert not np.array_equal(t1.sensors, t4.sensors)
    assert t1.num_sensors == round(0.15 * GRID**2)
    assert t1.truth.shape == (2, GRID, GRID)
    assert (t1.observed, t1.target) == ("u", "a")


@pytest.mark.parametrize("name", ["poisson-forward", "helmholtz-inverse", "darcy-inverse"])
def test_observations_and_physics_of_the_truth(name):
    task = make_task(name, grid=GRID, sensor_fraction=0.2)
    assert jnp.allclose(task.observe(task.truth), task.y)  # noise-free
    assert float(task.residual(task.truth[0], task.truth[1])) < 1e-8
    # A perturbed u violates the PDE: the residual can fail.
    assert float(task.residual(task.truth[0], 1.1 * task.truth[1] + 1e-3)) > 1e-3
    if name.startswith("darcy"):
        assert set(np.unique(np.asarray(task.truth[0]))) <= {3.0, 12.0}


@pytest.mark.parametrize("name", ["poisson-inverse", "helmholtz-inverse", "poisson-forward"])
def test_sparse_solves_match_the_dense_solution_operator(name):
    from pdegen.inverse import solution_operator
    from pdegen.inverse._operators import sensor_operator, solve_columns

    task = make_task(name, grid=GRID, sensor_fraction=0.2)
    S = solution_operator(task.physics)
    # u = S a reproduces the task's own FEM solve
    assert np.allclose(S @ np.asarray(task.truth[0]).ravel(), np.asarray(task.truth[1]).ravel())
    a = np.random.default_rng(0).normal(size=(GRID**2, 3))
    assert np.allclose(solve_columns(task.physics, a), S @ a, rtol=1e-12, atol=1e-14)
    rows = S[task.sensors] if task.observed == "u" else np.eye(GRID**2)[task.sensors]
    assert np.allclose(sensor_operator(task), rows, rtol=1e-12, atol=1e-14)


def test_noisy_variant():
    clean = make_task("poisson-forward", grid=16, sensor_fraction=0.5)
    noisy = make_task("poisson-forward", grid=16, sensor_fraction=0.5, noise=0.1)
    assert jnp.array_equal(clean.truth, noisy.truth)
    rms = float(jnp.sqrt(jnp.mean(clean.y**2)))
    assert noisy.noise_std == pytest.approx(0.1 * rms)
    resid = noisy.y - clean.y
    assert 0.6 * noisy.noise_std < float(jnp.std(resid)) < 1.4 * noisy.noise_std


def test_sensors_as_points_snap_to_nodes():
    task = make_task(
        "poisson-inverse", grid=GRID, sensors=np.array([[0.5, 0.5], [0.0, 0.0], [0.99, 0.3]])
    )
    assert task.num_sensors == 3
    assert np.allclose(task.points[0], [0.0, 0.0])


def test_metrics():
    truth = jnp.ones((4, 4))
    assert float(relative_l2(truth, truth)) == 0.0
    assert float(relative_l2(1.5 * truth, truth)) == pytest.approx(0.5)
    batch = jnp.stack([truth, 2 * truth])
    assert np.allclose(relative_l2(batch, truth), [0.0, 1.0])
    std = jnp.full((4, 4), 1.0)
    assert float(credible_interval_coverage(truth, std, truth)) == 1.0
    assert float(credible_interval_coverage(truth + 1.0, std, truth)) == 1.0  # 1 < 1.645
    assert float(credible_interval_coverage(truth + 2.0, std, truth)) == 0.0
    rng = np.random.default_rng(0)
    samples = jnp.asarray(rng.normal(size=(4000, 50)))
    cov = float(empirical_coverage(samples, jnp.asarray(rng.normal(size=50))))
    assert 0.7 < cov <= 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("poisson-sideways", grid=GRID)
    with pytest.raises(ValueError, match="sensors.*outside the domain"):
        make_task("poisson-inverse", grid=GRID, sensors=np.array([[0.5, 0.5], [1.5, 0.5]]))
    with pytest.raises(ValueError, match="sensor_fraction"):
        make_task("poisson-inverse", grid=GRID, sensor_fraction=0.0)
    task = make_task("poisson-inverse", grid=GRID)
    with pytest.raises(ValueError, match=r"fields must have shape \(\.\.\., 2, 8, 8\)"):
        task.observe(jnp.zeros((2, 9, 9)))
    with pytest.raises(ValueError, match="y must have shape"):
        task.check_observations(jnp.zeros(task.num_sensors + 1))
    with pytest.raises(ValueError, match="truth shape"):
        relative_l2(jnp.zeros((3, 3)), jnp.ones((4, 4)))


def test_interval_scale_counts_the_draws_behind_the_std():
    from pdegen.inverse import FieldPosterior
    from pdegen.inverse._metrics import interval_std

    std = jnp.ones(5)
    few = FieldPosterior(jnp.zeros((2, 5)), jnp.zeros(5), std, "smc", 0.0, 0.0, {})
    # two samples: the Student-t predictive interval is much wider than the normal one
    assert float(interval_std(few)[0]) > 3.0
    # the same std estimated from 1000 particles: essentially the normal interval
    many = few._replace(info={"std_draws": 1000})
    assert float(interval_std(many)[0]) == pytest.approx(1.0, abs=2e-3)
    exact = few._replace(method="bayes")
    assert float(interval_std(exact)[0]) == 1.0


def test_coloured_tabulation_of_sparse_maps_and_its_fallback():
    from pdegen import fem
    from pdegen.inverse._operators import _sparse_matrix

    V = fem.FunctionSpace(fem.unit_square(5), "P1")
    P = fem.SparseMatrix(jnp.ones(V.pattern.nnz), V.pattern).to_scipy()
    d = V.ndofs
    rng = np.random.default_rng(1)
    inside = P.multiply(rng.standard_normal((d, d))).toarray()  # nonzeros on the pattern
    got = _sparse_matrix(lambda v: jnp.asarray(inside) @ v, d, P)
    assert np.allclose(got.toarray(), inside, rtol=0, atol=1e-14)
    dense = rng.standard_normal((d, d))  # leaves the pattern: tabulated column by column
    got = _sparse_matrix(lambda v: jnp.asarray(dense) @ v, d, P)
    assert np.allclose(got.toarray(), dense, rtol=0, atol=1e-14)
