"""``sample_posterior``: one entry point for the user's own (prior, likelihood) pairs and the
benchmark tasks."""

from __future__ import annotations

import contextlib

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

    ``progress``: ``True`` for a progress bar over the samples, ``False`` / ``None`` for none, or a
    ``tqdm``-like object (its ``update`` is called with the number of finished samples).
    """
    if isinstance(problem, (GaussianLikelihood, InverseTask)):
        sample = (
            sample_field_posterior
            if isinstance(problem, GaussianLikelihood)
            else sample_task_posterior
        )
        with _progress_bar(options.pop("progress", None), num_samples) as bar:
            return sample(
                prior,
                problem,
                method=method,
                key=key,
                num_samples=num_samples,
                progress=bar,
                **options,
            )
    raise TypeError(
        f"sample_posterior: the second argument must be a GaussianLikelihood (gaussian_likelihood) "
        f"or a benchmark InverseTask (make_task), got {type(problem).__name__}"
    )


@contextlib.contextmanager
def _progress_bar(progress, total: int):
    """``True``: a ``tqdm`` bar over ``total`` samples (closed afterwards); ``False`` / ``None``:
    none; anything else is taken to be a ``tqdm``-like object and passed on."""
    if progress is None or progress is False:
        yield None
    elif progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="sample", dynamic_ncols=True)
        try:
            yield bar
        finally:
            bar.close()
    elif not callable(getattr(progress, "update", None)):
        raise TypeError(
            f"progress must be True, False, None or a tqdm-like object with update(n), "
            f"got {type(progress).__name__}"
        )
    else:
        yield progress
