"""Learning to learn: task families, the amortised (task-conditioned) diffusion optimiser and
the coordinate-wise LSTM optimiser."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen.optimise import (
    AdamPolish,
    AmortisedOptimiser,
    LSTMOptimiser,
    QuadraticTask,
    apply_amortised,
    apply_lstm,
    minimise,
    quadratic_family,
    runtimes_to_targets,
    stack_tasks,
    train_amortised,
    train_lstm,
)


def test_quadratic_family_minimum_is_the_box_constrained_least_squares():
    family = quadratic_family(3)
    # W = I: the minimiser is y clipped to the box, the minimum the clipped-off part squared
    task = QuadraticTask(jnp.eye(3), jnp.array([7.0, -1.0, 0.5]))
    assert family.minimum(task) == pytest.approx(4.0, abs=1e-10)
    assert float(family.fn(jnp.array([5.0, -1.0, 0.5]), task)) == pytest.approx(4.0)
    # a random member whose unconstrained minimiser lies inside the box: minimum 0
    tasks = family.sample(jr.key(0), 16)
    for i in range(16):
        t = jax.tree.map(lambda a, i=i: a[i], tasks)
        xstar = np.linalg.solve(np.asarray(t.W), np.asarray(t.y))
        if np.all(np.abs(xstar) < 5):
            assert family.minimum(t) == pytest.approx(0.0, abs=1e-10)


def test_family_members_with_different_dimensions_are_an_error():
    family = quadratic_family(3)
    good = QuadraticTask(jnp.eye(3), jnp.zeros(3))
    bad = QuadraticTask(jnp.eye(4), jnp.zeros(4))
    stacked = stack_tasks(family, [good, good])
    assert stacked.W.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="member 1"):
        stack_tasks(family, [good, bad])
    with pytest.raises(ValueError, match="at least one"):
        stack_tasks(family, [])


def test_trained_optimisers_refuse_a_family_of_another_dimension():
    # the check comes before any use of the trained model
    am = AmortisedOptimiser(None, 1.0, 3, 0, 0.0, np.zeros(0))
    lstm = LSTMOptimiser(None, 3, 0, 0.0, np.zeros(0))
    other = quadratic_family(4)
    tasks = other.sample(jr.key(1), 2)
    with pytest.raises(ValueError, match="trained on d=3"):
        apply_amortised(am, other, tasks, key=jr.key(2))
    with pytest.raises(ValueError, match="trained on d=3"):
        apply_lstm(lstm, other, tasks, key=jr.key(2))


def test_training_costs_are_counted():
    family = quadratic_family(3)
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
    lstm = train_lstm(family, key=jr.key(0), iterations=2, tasks_per_iteration=2, unroll=3)
    # T_0 probe (8 tasks x 256 points) + iterations x tasks x batch (one value per path)
    assert am.training_evaluations == 8 * 256 + 4 * 2 * 4
    # iterations x tasks x unroll value-and-gradients + one start value per task and episode
    assert lstm.training_evaluations == 2 * 2 * (2 * 3) + 1 * 2


def _evaluations_to_gap(evaluations, best_values, minima, gap):
    return runtimes_to_targets(evaluations, best_values - minima[:, None], 0.0, targets=(gap,))[
        :, 0
    ]


def test_amortised_reaches_the_gap_in_fewer_evaluations_than_per_instance_training():
    """Trained once on the quadratic family (d = 3), applied to 8 unseen members without
    further training (16 samples, then the polish): the gap 1e-3 is reached on every one, each
    time in fewer evaluations than the per-instance diffusion optimiser needs on the same member
    (which trains its sampler first; fixed seeds)."""
    family = quadratic_family(3)
    am = train_amortised(
        family,
        key=jr.key(0),
        iterations=200,
        tasks_per_iteration=4,
        batch_size=8,
        num_steps=8,
        width=32,
        depth=2,
        final_temperature_ratio=1e-2,
    )
    tasks = family.sample(jr.key(99), 8)
    minima = np.array([family.minimum(jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(8)])
    amortised = apply_amortised(
        am, family, tasks, key=jr.key(1), num_samples=16, polish=AdamPolish(steps=80)
    )
    per_instance = minimise(
        family.fn,
        family.domain,
        key=jr.split(jr.key(1), 8),
        task=tasks,
        method="dds",
        max_evaluations=2000,
        num_steps=8,
        width=32,
    )
    gap = 1e-3
    a = _evaluations_to_gap(amortised.evaluations, amortised.best_values, minima, gap)
    p = _evaluations_to_gap(per_instance.evaluations, per_instance.best_values, minima, gap)
    assert np.all(np.isfinite(a)) and np.all(a < p), (a, p)
