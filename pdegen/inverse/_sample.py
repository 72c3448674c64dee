"""``sample_posterior``: one entry point for the user's own (prior, likelihood) pairs and the
benchmark tasks."""

from __future__ import annotations

from ._field_posterior import sample_field_posterior
from ._likelihood import GaussianLikelihood
from ._task_posterior import sample_task_posterior
from ._tasks import InverseTask


def sample_posterior(prior, problem, /, *, method="tmpd", key, num_samples: int = 8, **options):
    """Posterior samples of an unknown field under ``prior`` given the data of ``problem``.

    Two kinds of problem:

    - the user's own: ``prior`` a :class:`Prior` (:func:`matern_prior`, :func:`grf_prior`,
      :func:`learned_prior`) and ``problem`` a :class:`GaussianLikelihood`
      (:func:`gaussian_likelihood`, any PDE, mesh, sensors and noise). ``method``: an object
      (:class:`TMPD`, :class:`PiGDM`, :class:`DPS`, :class:`SMC`, :class:`Unguided`,
      :class:`Exact`, :class:`MAP`) or its name (``"tmpd"``, ``"pigdm"``, ``"dps"``, ``"smc"``,
      ``"smc-tmpd"``, ``"unguided"``, ``"bayes"``, ``"map"``, ...; :data:`FIELD_METHODS`).
      Options: ``num_steps``, ``sampler`` (a flow prior needs an ODE sampler such as
      ``"flow_ode"``), ``batch_size``, ``progress``, ``data_scale``. Returns a
      :class:`FieldPosterior` of nodal values (SMC adds ``info["log_evidence"]``).
    - a benchmark :class:`InverseTask` (``make_task``) with a :class:`FieldPrior` on its grid: the
      joint ``(a, u)`` fields, with the options of :func:`sample_task_posterior` (among them
      ``likelihood=``, the statFEM observation model of the ``statfem`` methods, and
      ``num_particles=`` of ``"smc"`` / ``"smc-tmpd"``).
    """
    if isinstance(problem, GaussianLikelihood):
        return sample_field_posterior(
            prior, problem, method=method, key=key, num_samples=num_samples, **options
        )
    if isinstance(problem, InverseTask):
        return sample_task_posterior(
            prior, problem, method=method, key=key, num_samples=num_samples, **options
        )
    raise TypeError(
        f"sample_posterior: the second argument must be a GaussianLikelihood (gaussian_likelihood) "
        f"or a benchmark InverseTask (make_task), got {type(problem).__name__}"
    )
