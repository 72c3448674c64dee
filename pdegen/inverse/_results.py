"""The result type of task-mode posterior sampling."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Posterior(NamedTuple):
    """Posterior samples of the joint field and their summaries (physical units).

    Attributes:
        samples: ``(n, 2, g, g)`` samples of ``(a, u)``.
        mean, std: ``(2, g, g)`` mean and pointwise standard deviation (``bayes``: exact).
        method, route: how they were made.
        seconds_per_sample: sampling wall time per sample, compilation excluded.
        compile_seconds: time spent compiling (first batch minus a steady-state batch).
        info: extra diagnostics (e.g. the effect of the final projection).
    """

    samples: jax.Array
    mean: jax.Array
    std: jax.Array
    method: str
    route: str
    seconds_per_sample: float
    compile_seconds: float
    info: dict
