"""Learning-to-learn families beyond the quadratic one: rotated-shifted instances of a multimodal
test function and a PDE-constrained family (source placement for the Poisson equation)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen import fem
from pdegen.optimise import (
    AdamPolish,
    SourceTask,
    apply_amortised,
    instance_family,
    instances_family,
    minimise,
    poisson_source_family,
    sample_instances,
    train_amortised,
)


def _member(tasks, i):
    return jax.tree.map(lambda a: a[i], tasks)


def test_instances_family_is_the_benchmark_instances_with_their_features():
    family = instances_family("rastrigin", 4)
    tasks = family.sample(jr.key(3), 5)
    # the same members as the benchmark's instances drawn from the same key
    same = sample_instances(instance_family("rastrigin", 4), 5, key=jr.key(3))
    np.testing.assert_array_equal(tasks.shift, same.shift)
    x = jr.uniform(jr.key(4), (4,), minval=-5.12, maxval=5.12)
    for i in range(5):
        t = _member(tasks, i)
        assert float(family.fn(t.shift, t)) == pytest.approx(0.0, abs=1e-12)  # the minimiser
        assert float(family.fn(x, t)) > family.minimum(t)
        f = family.features(t)
        assert f.shape == (4 * 4 + 4,) and float(jnp.max(jnp.abs(f))) <= 1.0 + 1e-12
    assert instances_family("rastrigin", 4, kind="separable").name == "rastrigin-separable"
    with pytest.raises(ValueError, match="unknown"):
        instances_family("nope", 4)


def test_poisson_source_family_is_the_fem_solution_and_vanishes_at_the_drawn_sources():
    family = poisson_source_family(2, grid=9, width=0.1)
    assert family.dim == 4 and family.name == "poisson-sources-2"
    tasks = family.sample(jr.key(0), 3)
    assert tasks.target.shape == (3, 81) and tasks.centres.shape == (3, 4)
    centres = np.asarray(tasks.centres)
    assert np.all(centres >= family.lower) and np.all(centres <= family.upper)
    # the target is the finite-element solution for the drawn sources (a direct solve)
    mesh = fem.unit_square(9)
    problem = fem.Poisson(fem.FunctionSpace(mesh, "P1"), dirichlet=0.0)
    c = np.asarray(tasks.centres[0]).reshape(2, 2)
    d2 = ((np.asarray(mesh.points)[:, None, :] - c[None]) ** 2).sum(-1)
    f = np.exp(-d2 / (2 * 0.1**2)).sum(1)
    u = np.asarray(problem.solve(f=jnp.asarray(f)))
    np.testing.assert_allclose(tasks.target[0], u, rtol=1e-10, atol=1e-14)
    t = _member(tasks, 0)
    assert float(family.fn(t.centres, t)) < 1e-20
    swapped = t.centres.reshape(2, 2)[::-1].ravel()  # the sources are interchangeable
    assert float(family.fn(swapped, t)) < 1e-20
    assert float(family.fn(jnp.full(4, 0.5), t)) > 1e-2
    assert family.features(t).shape == (25,) and float(jnp.max(jnp.abs(family.features(t)))) == 1.0
    assert family.minimum(t) == 0.0
    for bad in (dict(num_sources=0), dict(grid=3), dict(width=0.0), dict(margin=0.5)):
        with pytest.raises(ValueError, match="poisson_source_family"):
            poisson_source_family(**bad)


def test_families_run_through_the_optimisers_and_the_amortised_training():
    family = poisson_source_family(1, grid=9)
    tasks = family.sample(jr.key(1), 2)
    res = minimise(
        family.fn,
        family.domain,
        key=jr.split(jr.key(2), 2),
        task=tasks,
        method="cmaes",
        max_evaluations=600,
    )
    assert np.all(np.asarray(res.best_values)[:, -1] < 1e-6)
    am = train_amortised(
        family,
        key=jr.key(0),
        iterations=4,
        tasks_per_iteration=2,
        batch_size=4,
        num_steps=4,
        width=16,
        depth=1,
    )
    assert am.family == family.name
    out = apply_amortised(
        am, family, tasks, key=jr.key(3), num_samples=8, polish=AdamPolish(steps=10)
    )
    assert out.best_values.shape[0] == 2 and np.all(np.isfinite(out.best_values))
    assert isinstance(tasks, SourceTask)
