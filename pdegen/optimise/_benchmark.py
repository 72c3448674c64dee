"""Benchmark helpers: success rates, runtime-to-target (the COCO ECDF) and each method's
inductive bias, stated next to its rows."""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-3  # success: final gap f - f* below this
"""A run succeeds when its final gap ``f - f*`` is below this."""
TARGETS = (1e1, 1e0, 1e-1, 1e-2, 1e-3)  # gaps of the runtime-to-target curve
"""The gaps ``f - f*`` at which runtimes are recorded for the runtime-to-target ECDF."""

INDUCTIVE_BIAS = {
    "dds": "dense MLP drift: no structural assumption; Gaussian reference law that follows the "
    "sample cloud (adaptive frame), annealed temperature",
    "dds-coordwise": "one MLP shared by all coordinates: exact for separable targets in the "
    "box's axes, wrong once rotated",
    "dds-grad": "dense MLP fed grad log pi: uses gradients along the path",
    "dds-frame": "as dds, with a reference law that follows the sample cloud's principal axes "
    "(full covariance, as CMA-ES's): rotation aware",
    "dds-coordwise-frame": "one MLP shared by the coordinates of the sample cloud's principal "
    "axes: exact for targets separable in an estimated basis, so rotation aware",
    "pis": "as dds with a Brownian (PIS) reference instead of an OU one",
    "adam": "local gradient descent from uniform restarts: no global structure",
    "lbfgs": "local quasi-Newton (curvature from gradients) from uniform restarts: rotation and "
    "scaling invariant up to the box; finds the minimum of the basin it starts in",
    "langevin": "annealed gradient Langevin: local gradient + noise; rotation invariant up to "
    "the box",
    "random": "none: uniform search (+ polish)",
    "cmaes": "IPOP-CMA-ES: affine invariant (rotation, scaling) up to the box; restarts with "
    "growing populations smooth out multimodality",
    "coordinate": "coordinate-wise 1-D grid search: exact for separable functions in the "
    "box's axes, blind to rotation",
}
"""Per method name, the structural assumption it makes (reported beside its results)."""


def runtimes_to_targets(evaluations, best_values, minimum, targets=TARGETS):
    """The evaluation count at which each run first reaches each target gap.

    First evaluation count at which each run's gap reaches each target: ``(n, len(targets))``
    (``inf`` where never). ``evaluations`` ``(n, m)`` or ``(m,)``, ``best_values`` ``(n, m)``."""
    best_values = np.asarray(best_values, dtype=np.float64)
    evaluations = np.broadcast_to(np.asarray(evaluations, dtype=np.float64), best_values.shape)
    gaps = best_values - minimum
    out = np.full((best_values.shape[0], len(targets)), np.inf)
    for j, target in enumerate(targets):
        reached = gaps <= target
        first = np.argmax(reached, axis=1)
        hit = reached[np.arange(reached.shape[0]), first]
        out[hit, j] = evaluations[np.arange(reached.shape[0]), first][hit]
    return out


def ecdf(runtimes, grid):
    """Fraction of (run, target) pairs reached within each evaluation count of ``grid``."""
    flat = np.asarray(runtimes, dtype=np.float64).ravel()
    return np.array([np.mean(flat <= g) for g in np.asarray(grid)])
