"""``minimise``: one entry point for the diffusion optimisers and their baselines, with honest
budget accounting.

Every value of ``f`` counts one evaluation and every backward pass one more (a value and
gradient costs 2). The check of ``f`` at the box centre counts 1 (and is a candidate). The
reported ``num_evaluations`` is what a counter wrapped around ``f`` sees
(:func:`pdegen.optimise.counted` does that; the tests check every method with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import NonFiniteError, UserError
from ._adam import run_adam
from ._annealing import run_diffusion
from ._box import check_objective, make_box, objective_z
from ._budget import CENTRE, METHODS, describe_minimum, minimum_budget
from ._cmaes import run_cmaes
from ._coordinate import run_coordinate
from ._langevin import run_langevin
from ._lbfgs import run_lbfgs_method
from ._random import run_random


class OptimiseResult(NamedTuple):
    """Result of :func:`minimise` (leading run axis when ``key`` held several keys).

    ``x`` best point ``(d,)``, ``value`` its objective; ``points`` ``(k, d)`` and ``values``
    ``(k,)`` the best ``k`` points found; ``evaluations`` ``(m,)`` and ``best_values`` ``(m,)``
    the convergence trajectory (best value after that many function evaluations, the first
    entry the box centre); ``num_evaluations`` the total used.
    """

    x: Any
    value: Any
    points: Any
    values: Any
    evaluations: Any
    best_values: Any
    num_evaluations: int
    method: str


def _thin(evals, traj, max_points=400):
    m = evals.shape[-1]
    if m <= max_points:
        return evals, traj
    idx = np.unique(np.concatenate([np.linspace(0, m - 1, max_points).astype(int), [m - 1]]))
    return evals[..., idx], traj[..., idx]


def _check_key(key):
    keys = jnp.asarray(key)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise TypeError(
            "minimise(key=...): expected a typed PRNG key from jax.random.key, "
            f"got dtype {keys.dtype}"
        )
    if keys.ndim > 1:
        raise ValueError(
            f"minimise(key=...): expected one key or a 1-D array of keys, got shape {keys.shape}"
        )
    return keys


def minimise(
    f: Callable,
    domain,
    *,
    key,
    method: str = "dds",
    max_evaluations: int | None = None,
    num_temperatures: int = 4,
    final_temperature_ratio: float = 1e-3,
    iterations_per_temperature: int | None = None,
    batch_size: int = 32,
    num_steps: int = 16,
    network: str = "mlp",
    gradient_informed: bool = False,
    loss: str = "log_variance",
    width: int = 64,
    depth: int = 2,
    sigma: float = 0.6,
    learning_rate: float = 1e-2,
    refine_steps: int = 40,
    refine_learning_rate: float = 2e-2,
    num_initial: int = 256,
    num_chains: int = 32,
    langevin_step_size: float = 1e-3,
    langevin_stages: int = 8,
    adam_steps_per_restart: int = 200,
    coordinate_grid_size: int = 41,
    adaptive_frame: bool = True,
    full_frame: bool = False,
    task=None,
    progress: bool = False,
    return_extras: bool = False,
):
    """Minimise ``f`` over a box within a budget of evaluations.

    Minimise ``f`` over the box ``domain = (lower, upper)`` (arrays of shape ``(d,)``) with
    at most ``max_evaluations`` evaluations (required unless ``iterations_per_temperature`` is
    given for DDS / PIS).

    ``method``: ``"dds"`` / ``"pis"`` (annealed low-temperature controlled diffusion;
    ``network`` ``"mlp"`` or ``"coordinatewise"``, ``gradient_informed``, ``loss``
    ``"log_variance"`` or ``"kl"``, ``adaptive_frame``, ``full_frame``: the frame follows the
    sample cloud's principal axes, not only its per-coordinate spread), or the baselines ``"adam"`` (random
    restarts of about ``adam_steps_per_restart`` projected Adam steps), ``"lbfgs"`` (projected
    L-BFGS, one value and gradient per iteration, restarted from a uniform point when it
    stalls), ``"langevin"`` (annealed
    ULA, the kernel of :mod:`pdegen.mcmc`, with ``num_chains`` chains at ``langevin_stages``
    temperatures), ``"random"`` (uniform search), ``"cmaes"`` (IPOP-CMA-ES,
    the ``cma`` package) and ``"coordinate"`` (cyclic 1-D grid search: for separable
    functions). DDS/PIS, Langevin and random search end with the same polish of their 8 best
    points (``refine_steps``; 0 turns it off). Below :func:`minimum_budget` a ``UserError``
    states the minimum; non-finite values of ``f`` anywhere raise ``NonFiniteError``.

    ``key`` is one PRNG key, or an array of ``n`` keys for ``n`` independent runs (every field
    of the result then has a leading axis of size ``n``). With ``task`` (a pytree; with ``n``
    keys, leading axis ``n``), ``f(x, task)`` is minimised, one task per run: many instances of
    a family in one compiled run.

    Example (about a minute on two CPU cores, so shown rather than run as a doctest):

    ```python
    prob = test_function("rastrigin", 2)
    res = minimise(prob.fn, prob.domain, key=jax.random.key(0), max_evaluations=4000)
    res.value  # 0.0 (the global minimum of Rastrigin)
    ```
    """
    if method not in METHODS:
        raise ValueError(f"minimise(method=...): expected one of {METHODS}, got {method!r}")
    if not 0 < final_temperature_ratio <= 1:
        raise ValueError(
            "minimise(final_temperature_ratio=...): must be in (0, 1], got "
            f"{final_temperature_ratio}"
        )
    keys = _check_key(key)
    settings = dict(
        batch_size=batch_size,
        num_steps=num_steps,
        num_temperatures=num_temperatures,
        num_initial=num_initial,
        refine_steps=refine_steps,
        num_chains=num_chains,
        langevin_stages=langevin_stages,
        gradient_informed=gradient_informed,
        loss=loss,
        coordinate_grid_size=coordinate_grid_size,
    )
    if max_evaluations is not None:
        budget = float(max_evaluations)
        if not (math.isfinite(budget) and budget == int(budget)):
            raise UserError(
                f"minimise(max_evaluations={max_evaluations!r}): the budget must be a whole "
                "number of evaluations"
            )
        max_evaluations = int(budget)  # 1e4 and np.int64(10000) read as 10000
    if max_evaluations is None:
        if method not in ("dds", "pis") or iterations_per_temperature is None:
            raise UserError(
                f"minimise(method={method!r}) needs max_evaluations (at least "
                f"{describe_minimum(method, **settings)})"
            )
    elif max_evaluations < minimum_budget(method, **settings):
        raise UserError(
            f"minimise(max_evaluations={max_evaluations}): too small for method {method!r}; "
            f"the minimum budget is {describe_minimum(method, **settings)}"
        )
    box = make_box(domain)
    single = keys.ndim == 0
    keys = keys[None] if single else keys
    n = keys.shape[0]
    if task is None:
        objective, tasks = (lambda x, _: f(x)), jnp.zeros((n,))
    else:
        objective = f
        tasks = jax.tree.map(lambda a: jnp.asarray(a)[None], task) if single else task
        for leaf in jax.tree.leaves(tasks):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
                raise ValueError(
                    f"minimise(task=...): every leaf needs a leading axis of {n} (one task per "
                    f"key), got shape {jnp.shape(leaf)}"
                )
    centre_values = check_objective(objective, box, tasks)
    fz = objective_z(objective, box)
    budget = None if max_evaluations is None else max_evaluations - CENTRE
    polish = dict(refine_steps=refine_steps, refine_learning_rate=refine_learning_rate)
    if method in ("dds", "pis"):
        run = run_diffusion(
            fz,
            box,
            keys,
            tasks,
            method=method,
            max_evaluations=budget,
            num_temperatures=num_temperatures,
            final_temperature_ratio=final_temperature_ratio,
            iterations_per_temperature=iterations_per_temperature,
            num_initial=num_initial,
            progress=progress,
            batch_size=batch_size,
            num_steps=num_steps,
            network=network,
            gradient_informed=gradient_informed,
            loss=loss,
            width=width,
            depth=depth,
            sigma=sigma,
            learning_rate=learning_rate,
            adaptive_frame=adaptive_frame,
            full_frame=full_frame,
            **polish,
        )
    elif method == "adam":
        run = run_adam(
            fz,
            box,
            keys,
            tasks,
            max_evaluations=budget,
            steps_per_restart=adam_steps_per_restart,
            learning_rate=refine_learning_rate,
        )
    elif method == "lbfgs":
        run = run_lbfgs_method(fz, box, keys, tasks, max_evaluations=budget)
    elif method == "random":
        run = run_random(fz, box, keys, tasks, max_evaluations=budget, **polish)
    elif method == "langevin":
        run = run_langevin(
            fz,
            box,
            keys,
            tasks,
            max_evaluations=budget,
            num_chains=num_chains,
            final_temperature_ratio=final_temperature_ratio,
            num_initial=num_initial,
            step_size=langevin_step_size,
            stages=langevin_stages,
            **polish,
        )
    elif method == "cmaes":
        run = run_cmaes(fz, box, keys, tasks, max_evaluations=budget)
    else:
        run = run_coordinate(
            fz, box, keys, tasks, max_evaluations=budget, grid_size=coordinate_grid_size
        )
    return _result(run, box, centre_values, method, single, return_extras)


def _result(run, box, centre_values, method, single, return_extras):
    bad = np.asarray(run.best.num_nonfinite)
    if np.any(bad > 0):
        raise NonFiniteError(
            f"minimise(f=...): the objective returned NaN / inf at {int(bad.max())} of "
            f"{run.num_evaluations} evaluated points (method {method!r}); f must be finite on "
            "the whole domain (clip, or add a finite penalty where it is undefined)"
        )
    values = np.array(run.best.values)
    points = np.array(jax.vmap(jax.vmap(box.to_x))(run.best.points))
    centre = np.asarray(box.centre)
    # the centre's evaluation is a candidate like any other
    for i in np.flatnonzero(centre_values < values[:, 0]):
        points[i] = np.concatenate([centre[None], points[i, :-1]])
        values[i] = np.concatenate([[centre_values[i]], values[i, :-1]])
    evals = np.concatenate([[CENTRE], CENTRE + run.evaluations])
    traj = np.minimum.accumulate(
        np.concatenate([centre_values[:, None], run.best_values], axis=1), axis=1
    )
    evals, traj = _thin(np.broadcast_to(evals, traj.shape), traj)
    res = OptimiseResult(
        points[:, 0],
        values[:, 0],
        points,
        values,
        evals,
        traj,
        CENTRE + run.num_evaluations,
        method,
    )
    extras = run.extras
    if single:
        res = OptimiseResult(*(v[0] if isinstance(v, np.ndarray) else v for v in res))
        extras = {k: v[0] for k, v in extras.items()}
    return (res, extras) if return_extras else res
