"""The benchmark tasks as (prior, likelihood) pairs of the general API."""

from __future__ import annotations

from pdegen import fem

from ._likelihood import GaussianLikelihood, gaussian_likelihood, pde_forward
from ._operators import noise_floor
from ._priors import Prior, grf_prior
from ._tasks import InverseTask


def task_problem(
    task: InverseTask,
    *,
    prior: Prior | None = None,
    noise_std: float | None = None,
    alpha: float = 2.0,
    tau: float = 3.0,
) -> tuple[Prior, GaussianLikelihood]:
    """``(prior, likelihood)`` of a benchmark task for :func:`sample_posterior`: the unknown is the
    task's ``a`` (nodal values on its grid; ``task.truth[0]`` flattened), observed directly
    (forward tasks) or through the FEM solve (inverse tasks); the prior defaults to the tasks' GRF
    (:func:`grf_prior`, exact score) and the noise to the level the task-mode methods assume."""
    if not isinstance(task, InverseTask):
        raise TypeError(
            f"task_problem: task must be an InverseTask (make_task), got {type(task).__name__}"
        )
    physics = task.physics
    H = fem.node_observation(physics.space, task.sensors)
    forward = H if task.observed == "a" else pde_forward(physics.parameter, H)
    noise = noise_floor(task) if noise_std is None else float(noise_std)
    likelihood = gaussian_likelihood(
        forward,
        task.y,
        noise_std=noise,
        points=task.points,
        linear=task.observed == "a" or task.linear,
    )
    prior = grf_prior(task.mesh, alpha=alpha, tau=tau) if prior is None else prior
    return prior, likelihood
