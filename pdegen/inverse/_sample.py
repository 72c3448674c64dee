"""``sample_posterior``: one entry point for the user's own (prior, likelihood) pairs and the
benchmark tasks."""

from __future__ import annotations

from ._field_posterior import sample_field_posterior
from ._likelihood import GaussianLikelihood
from ._task_posterior import sample_task_posterior
from ._tasks import InverseTask


def sample_posterior(prior, likelihood, *, method="tmpd", key, num_samples: int = 8, **options):
    """Posterior samples of an unknown field under ``prior`` given the data of ``likelihood``.

    Two kinds of problem:

    - the user's own: ``prior`` a :class:`Prior` (:func:`matern_prior`, :func:`grf_prior`,
      :func:`learned_prior`) and ``likelihood`` a :class:`GaussianLikelihood`
      (:func:`gaussian_likelihood`, any PDE, mesh, sensors and noise). ``method``: an object
      (:class:`TMPD`, :class:`PiGDM`, :class:`DPS`, :class:`Unguided`, :class:`Exact`, :class:`MAP`)
      or its name (``"tmpd"``, ``"pigdm"``, ``"dps"``, ``"unguided"``, ``"bayes"``, ``"map"``, ...).
      Options: ``num_steps``, ``sampler``, ``batch_size``, ``progress``, ``data_scale``. Returns a
      :class:`FieldPosterior` of nodal values.
    - a benchmark :class:`InverseTask` (``make_task``) with a :class:`FieldPrior` on its grid: the
      joint ``(a, u)`` fields, with the options of :func:`sample_task_posterior`.
    """
    if isinstance(likelihood, GaussianLikelihood):
        return sample_field_posterior(
            prior, likelihood, method=method, key=key, num_samples=num_samples, **options
        )
    if isinstance(likelihood, InverseTask):
        return sample_task_posterior(
            prior, likelihood, method=method, key=key, num_samples=num_samples, **options
        )
    raise TypeError(
        f"sample_posterior: likelihood must be a GaussianLikelihood (gaussian_likelihood) or a benchmark "
        f"InverseTask (make_task), got {type(likelihood).__name__}"
    )
