"""Projected L-BFGS (``pdegen.optimise.lbfgs``): exact box-constrained minima, restarts out of a
local basin, its evaluations counted, and the polish objects of the amortised optimiser."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen.optimise import (
    AdamPolish,
    LBFGSPolish,
    counted,
    lbfgs,
    quadratic_family,
    run_lbfgs,
)
from pdegen.optimise._best import best_init, best_update
from pdegen.optimise._box import make_box, objective_z


@pytest.mark.parametrize("half_width", [5.0, 0.3])
def test_box_constrained_least_squares_to_its_exact_minimum(half_width):
    """Random ||W x - y||^2 in [-w, w]^10 (the learning-to-learn family, w = 5: minimisers inside;
    w = 0.3: on the boundary, where the projection matters; the minimum by SciPy's bounded least
    squares): every member to 1e-8 within 150 iterations from a uniform start, the best value
    never rising."""
    family = quadratic_family(10, half_width=half_width)
    box = make_box(family.domain)
    fz = objective_z(family.fn, box)
    tasks = family.sample(jr.key(4), 8)
    minima = np.array([family.minimum(jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(8)])
    z0 = jr.uniform(jr.key(5), (8, 10), minval=-1.0, maxval=1.0, dtype=jnp.float64)
    run = jax.jit(jax.vmap(lambda t, z: run_lbfgs(lambda p: fz(p, t), z, 150)))
    state, traj = run(tasks, z0)
    traj = np.asarray(traj)
    assert traj.shape == (8, 151)
    assert np.all(np.diff(traj, axis=1) <= 0)
    assert np.all(np.abs(traj[:, -1] - minima) <= 1e-8 * (1 + np.abs(minima))), traj[:, -1] - minima
    # the reported best point has the reported value
    x = jax.vmap(box.to_x)(state.best.points[:, 0])
    values = jax.vmap(family.fn)(x, tasks)
    np.testing.assert_allclose(values, traj[:, -1], rtol=1e-10, atol=1e-12)
    if half_width < 1:
        assert np.all(minima > 1e-2)  # constrained minima
        assert np.all(np.sum(np.abs(state.best.points[:, 0]) > 1 - 1e-9, axis=1) >= 1)


def test_restarts_leave_a_local_basin_and_every_iteration_costs_two_evaluations():
    """A double well whose start lies in the worse basin: without restarts L-BFGS stays there;
    with them a stalled run starts again from a uniform point and finds the global minimum.
    A counter sees one value and one gradient per iteration, restarts included."""

    def f(z):  # minima near z = -0.72 (global) and z = +0.68
        return jnp.sum((z**2 - 0.5) ** 2 + 0.05 * z)

    g, counter = counted(f)
    z0 = jnp.array([0.9])
    _, stay = jax.jit(lambda z: run_lbfgs(g, z, 60))(z0)
    assert counter.values == counter.gradients == 61
    counter.reset()
    state, go = jax.jit(lambda z: run_lbfgs(g, z, 60, key=jr.key(0), restart=True))(z0)
    assert counter.values == counter.gradients == 61
    assert float(stay[-1]) > 0.03  # the local minimum f(0.68) = 0.034
    assert float(go[-1]) < -0.03 and float(state.best.points[0, 0]) < 0  # f(-0.72) = -0.036


def test_polish_objects_count_what_they_spend():
    """Each polish object's ``evaluations`` ends at what a counter sees; L-BFGS from the best
    of a few points converges a smooth basin that Adam's fixed budget does not finish."""
    a = jnp.diag(jnp.array([1.0, 100.0, 1e4]))

    def f(z):
        return (z - 0.3) @ a @ (z - 0.3)

    g, counter = counted(f)
    z = jr.uniform(jr.key(0), (8, 3), minval=-1.0, maxval=1.0, dtype=jnp.float64)
    best = best_update(best_init(8, 3), z, jax.vmap(f)(z))
    results = {}
    for polish in (
        AdamPolish(steps=20),
        LBFGSPolish(steps=30),
        LBFGSPolish(steps=30, num_points=2),
    ):
        counter.reset()
        out, traj = jax.jit(lambda b, p=polish: p.run(g, b, b.values[:1]))(best)
        evals = polish.evaluations(0)
        assert counter.total == evals[-1]
        assert traj.shape[0] == evals.shape[0] + 1
        assert np.all(np.diff(np.asarray(traj)) <= 0)
        results[polish] = float(out.values[0])
    lbfgs_value = results[LBFGSPolish(steps=30)]
    assert lbfgs_value < 1e-12 and results[AdamPolish(steps=20)] > 1e3 * lbfgs_value, results


def test_bad_input():
    with pytest.raises(ValueError, match="memory"):
        lbfgs(lambda z: jnp.sum(z**2), memory=0)
    with pytest.raises(ValueError, match="needs a key"):
        run_lbfgs(lambda z: jnp.sum(z**2), jnp.zeros(2), 3, restart=True)
