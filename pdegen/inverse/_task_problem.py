"""The benchmark tasks as (prior, likelihood) pairs of the general API."""

from __future__ import annotations

from pdegen import fem

from ._guidance import StatFEMLikelihood
from ._latent_priors import threshold_prior
from ._likelihood import GaussianLikelihood, gaussian_likelihood, pde_forward
from ._operators import noise_floor
from ._priors import Prior, grf_prior
from ._tasks import InverseTask


def task_likelihood(
    task: InverseTask,
    *,
    y=None,
    noise_std: float | None = None,
    model_error: StatFEMLikelihood | None = None,
) -> GaussianLikelihood:
    """The likelihood of a benchmark task.

    The likelihood of a benchmark task: its unknown ``a`` (nodal values on its grid) observed
    directly (forward tasks) or through the FEM solve (inverse tasks), with Gaussian noise at the
    level the task-mode methods assume (or ``noise_std``), or the statFEM ``model_error``."""
    if not isinstance(task, InverseTask):
        raise TypeError(f"task must be an InverseTask (make_task), got {type(task).__name__}")
    physics = task.physics
    H = fem.node_observation(physics.space, task.sensors)
    forward = H if task.observed == "a" else pde_forward(physics.parameter, H)
    y = task.y if y is None else y
    noise = (
        dict(model_error=model_error)
        if model_error is not None
        else dict(noise_std=noise_floor(task) if noise_std is None else float(noise_std))
    )
    linear = task.observed == "a" or task.linear
    return gaussian_likelihood(forward, y, points=task.points, linear=linear, **noise)


def task_problem(
    task: InverseTask,
    *,
    prior: Prior | None = None,
    noise_std: float | None = None,
    alpha: float | None = None,
    tau: float | None = None,
) -> tuple[Prior, GaussianLikelihood]:
    """The ``(prior, likelihood)`` pair of a benchmark task.

    ``(prior, likelihood)`` of a benchmark task for :func:`sample_posterior`: the likelihood of
    :func:`task_likelihood`; the prior defaults to the GRF the task's data were drawn from
    (:func:`grf_prior`, exact score; or ``alpha``, ``tau``), for Darcy through the smooth threshold
    of its two-valued coefficient (:func:`threshold_prior`)."""
    likelihood = task_likelihood(task, noise_std=noise_std)
    if prior is None:
        alpha = task.physics.alpha if alpha is None else alpha
        tau = task.physics.tau if tau is None else tau
        parameter = task.physics.parameter
        if isinstance(parameter, fem.ThresholdPermeability):  # Darcy's two-valued coefficient
            prior = threshold_prior(
                task.mesh, low=parameter.low, high=parameter.high, alpha=alpha, tau=tau
            )
        else:
            prior = grf_prior(task.mesh, alpha=alpha, tau=tau)
    return prior, likelihood
