"""Baseline: IPOP-CMA-ES (the ``cma`` package; restarts with doubling population) that stops
exactly at the budget: the last generation is evaluated only up to the budget and the best
value comes from counted evaluations only."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._best import Best
from ._box import default_dtype
from ._run import Run, make_run


def run_cmaes(fz, box, keys, tasks, *, max_evaluations, sigma0: float = 0.6) -> Run:
    """In normalised coordinates (box ``[-1, 1]^d``, initial step ``sigma0``), uniform random
    starts, population ``4 + 3 ln d`` doubled at each restart."""
    try:
        import cma
    except ImportError as err:  # pragma: no cover
        raise ImportError("method='cmaes' needs the `cma` package: pip install cma") from err
    dim = box.centre.shape[0]
    dt = default_dtype()
    batched = jax.jit(jax.vmap(fz, in_axes=(0, None)))
    # the cma package needs two coordinates or more: in 1-D it searches a second, ignored one
    search_dim = max(dim, 2)
    lower, upper = -np.ones(search_dim), np.ones(search_dim)
    out_x, out_v, trajs, bad = [], [], [], []
    for i, key in enumerate(keys):
        task = jax.tree.map(lambda a: a[i], tasks)
        rng = np.random.default_rng(int(jr.randint(key, (), 1, 2**30)))
        history: list[float] = []
        best = [np.inf, np.zeros(dim)]
        nonfinite = 0

        def evaluate(X):
            nonlocal nonfinite
            X = np.clip(np.asarray(X, dtype=np.float64), lower, upper)[:, :dim]
            v = np.asarray(batched(jnp.asarray(X, dtype=dt), task), dtype=np.float64)
            nonfinite += int(np.sum(~np.isfinite(v)))
            v = np.where(np.isfinite(v), v, np.inf)
            i = int(np.argmin(v))
            if v[i] < best[0]:
                best[0], best[1] = float(v[i]), X[i].copy()
            history.extend(np.minimum.accumulate(np.minimum(v, best[0])).tolist())
            return v

        popsize = 4 + int(3 * math.log(dim))
        while len(history) < max_evaluations:  # IPOP restarts until the budget is spent
            es = cma.CMAEvolutionStrategy(
                rng.uniform(lower, upper),
                sigma0,
                {
                    "bounds": [lower.tolist(), upper.tolist()],
                    "popsize": popsize,
                    "verbose": -9,
                    "seed": int(rng.integers(1, 2**30)),
                    "tolfun": 1e-12,
                    "tolx": 1e-12,
                },
            )
            while not es.stop() and len(history) < max_evaluations:
                X = es.ask()
                remaining = max_evaluations - len(history)
                if len(X) > remaining:  # the last generation: only what the budget allows
                    evaluate(X[:remaining])
                    break
                es.tell(X, evaluate(X).tolist())
            popsize *= 2
        trajs.append(np.asarray(history))
        out_x.append(best[1])
        out_v.append(best[0])
        bad.append(nonfinite)
    traj = np.stack(trajs)
    best = Best(
        jnp.asarray(np.stack(out_x), dtype=dt)[:, None, :],
        jnp.asarray(np.asarray(out_v), dtype=dt)[:, None],
        jnp.asarray(np.asarray(bad), dtype=jnp.int32),
    )
    return make_run(best, [np.arange(1, max_evaluations + 1)], [traj], max_evaluations)
