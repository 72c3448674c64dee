"""The local search that ends an amortised run, as objects: :class:`AdamPolish` (successive
halving of projected Adam from the best points, the polish of :func:`pdegen.optimise.minimise`'s
global methods) and :class:`LBFGSPolish` (projected L-BFGS from the best points). Each appends
its best values to a trajectory and states the evaluation count of every appended entry."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._best import Best, best_init, best_update
from ._lbfgs import run_lbfgs
from ._polish import polish_appended, polish_evaluations, polish_plan


class AdamPolish(NamedTuple):
    """Successive-halving projected Adam from the best points.

    Successive-halving projected Adam from the ``num_points`` best points, ``steps`` steps
    from each in the budget (:func:`pdegen.optimise.minimise`'s polish); the first step from the
    points' spread, at most ``max_learning_rate``. Inductive bias: local descent at a step size
    set by the cloud of good points; no curvature."""

    steps: int = 20
    num_points: int = 8
    max_learning_rate: float = 2e-2

    def run(self, fz, best: Best, trajectory):
        """Polish ``best`` (its first ``num_points`` points); returns ``(best, trajectory)``."""
        best = _top(best, self.num_points)
        return polish_appended(
            fz, best, trajectory, steps=self.steps, max_learning_rate=self.max_learning_rate
        )

    def evaluations(self, start: int) -> np.ndarray:
        """Evaluation counts of the appended entries, after ``start`` evaluations."""
        plan = polish_plan(self.num_points, self.steps)
        return polish_evaluations(plan, start) if plan.sizes else np.zeros(0, dtype=int)


class LBFGSPolish(NamedTuple):
    """Projected L-BFGS from the best points.

    Projected L-BFGS (:func:`pdegen.optimise.lbfgs`) from each of the ``num_points``
    best points for ``steps`` iterations: ``2 num_points (steps + 1)`` evaluations. Inductive
    bias: a smooth basin around the start, whose curvature it learns from gradients."""

    steps: int = 40
    num_points: int = 1
    memory: int = 8

    def run(self, fz, best: Best, trajectory):
        """Polish ``best`` (its first ``num_points`` points); returns ``(best, trajectory)``."""
        if self.steps < 1:
            return best, trajectory
        dim = best.points.shape[1]
        starts = best.points[: self.num_points]

        def one(z0):
            state, traj = run_lbfgs(fz, z0, self.steps, memory=self.memory, best=best_init(8, dim))
            return state.best, traj

        runs, trajs = jax.vmap(one)(starts)
        values = runs.values.reshape(-1)  # empty slots are inf: no candidates, not counted
        merged = best_update(best, runs.points.reshape(-1, dim), values, ~jnp.isfinite(values))
        extra = jnp.sum(runs.num_nonfinite).astype(merged.num_nonfinite.dtype)
        merged = merged._replace(num_nonfinite=merged.num_nonfinite + extra)
        polished = jnp.minimum(jnp.min(trajs, axis=0), best.values[0])
        return merged, jnp.concatenate([trajectory, polished])

    def evaluations(self, start: int) -> np.ndarray:
        """Evaluation counts of the appended entries, after ``start`` evaluations."""
        if self.steps < 1:
            return np.zeros(0, dtype=int)
        return start + 2 * self.num_points * np.arange(1, self.steps + 2)


def _top(best: Best, k: int) -> Best:
    return Best(best.points[:k], best.values[:k], best.num_nonfinite)
