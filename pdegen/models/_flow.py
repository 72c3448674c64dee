"""Flow matching: the conditional flow-matching loss and the flow ODE sampler (diffrax).

A flow model is a :class:`DiffusionModel` with ``parameterisation="velocity"`` on an interpolant
(:class:`LinearInterpolant`, :class:`VPInterpolant`): it trains with :func:`pdegen.models.train`
(which uses :func:`flow_matching_loss` for such models), saves and shards like any model, and
its score and denoiser (derived from the velocity) feed every sampler and guidance method that
takes a score. :func:`solve_flow` integrates ``dx/dt = v(x, t)`` from ``t_max`` to ``t_min``
and reports the number of network evaluations; :func:`flow_ode` is the same solve with the
sampler signature of :data:`pdegen.models.SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import Array

from ._interpolants import process_rates, velocity_from_score
from ._sde import AbstractSDE


def flow_matching_loss_single(model, x0: Array, *, key: Array) -> Array:
    """Conditional flow-matching loss for one example ``x0`` (normalised units), a scalar.

    ``t`` from the interpolant's training distribution (uniform on ``[t_min, t_max]``),
    ``x_t = alpha x0 + sigma z`` and ``mean |v(x_t, t) - (alpha' x0 + sigma' z)|^2`` over the
    entries of ``x0`` (Lipman et al. 2023; rectified flow for the linear interpolant). Its
    minimiser is the marginal velocity ``E[alpha' x0 + sigma' z | x_t]``.
    """
    tkey, nkey = jr.split(key)
    t = model.sde.sample_training_time(key=tkey, dtype=x0.dtype)
    xt, z = model.sde.marginal(x0, t, key=nkey)
    _, _, alpha_rate, sigma_rate = process_rates(model.sde, t)
    target = alpha_rate.astype(x0.dtype) * x0 + sigma_rate.astype(x0.dtype) * z
    return jnp.mean((model.velocity(xt, t) - target) ** 2)


def flow_matching_loss(model, batch: Array, *, key: Array) -> Array:
    """Mean of :func:`flow_matching_loss_single` over a batch ``(B, *data_shape)``; one key each."""
    keys = jr.split(key, batch.shape[0])
    return jnp.mean(jax.vmap(lambda x, k: flow_matching_loss_single(model, x, key=k))(batch, keys))


class FlowSolution(NamedTuple):
    """Outcome of :func:`solve_flow`: the sample and its number of evaluations.

    Outcome of :func:`solve_flow`: the sample and the number of score / velocity evaluations
    (network evaluations for a model; an int32 scalar, so it batches under ``vmap``)."""

    x: Array
    num_evaluations: Array


def _evaluation_cost(solver) -> tuple[int, int]:
    """``(evaluations per step, evaluations before the first step)`` of an explicit solver."""
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    if isinstance(solver, diffrax.AbstractERK):
        tableau = solver.tableau
        fsal = int(bool(tableau.fsal))  # the last stage of a step is the first of the next
        return tableau.num_stages - fsal, fsal
    raise TypeError(
        f"solve_flow(solver=...): needs diffrax.Euler or an explicit Runge-Kutta solver "
        f"(diffrax.AbstractERK: Heun, Midpoint, Ralston, Bosh3, Tsit5, Dopri5, ...), got "
        f"{type(solver).__name__}"
    )


def solve_flow(
    score_fn: Callable[[Array, Array], Array],
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> FlowSolution:
    """Integrate the flow ``dx/dt = v(x, t)`` from ``sde.t_max`` (a prior draw) to ``sde.t_min``.

    ``v`` is the velocity of ``score_fn(x, t)`` (a model, or a guided score from
    :mod:`pdegen.inverse`): ``alpha' D + sigma' eps`` with the Tweedie denoiser ``D``, the
    probability-flow ODE of any process written in velocity form. ``num_steps=None``: adaptive
    ``solver`` (default ``diffrax.Tsit5``) with tolerances ``rtol``/``atol`` and at most
    ``max_steps`` steps; an int: fixed steps on ``sde.time_grid(num_steps)`` (uniform in ``t``) of
    ``solver`` (default ``diffrax.Heun``, 2 evaluations a step; ``diffrax.Euler()``: 1).
    ``denoise_final=True`` returns ``E[x0 | x_{t_min}]`` (one more evaluation). ``key`` draws
    the prior only. Returns a :class:`FlowSolution` with the evaluation count (rejected
    adaptive steps included).
    """
    if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(
            f"solve_flow(num_steps=...) must be a positive int or None, got {num_steps!r}"
        )
    if num_steps is None and not (rtol > 0 and atol > 0):
        raise ValueError(f"solve_flow: rtol and atol must be > 0, got {rtol}, {atol}")
    if solver is None:
        solver = diffrax.Tsit5() if num_steps is None else diffrax.Heun()
    per_step, initial = _evaluation_cost(solver)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if x_init is None:
        x = sde.prior_sample(shape, key=jr.split(key)[0], dtype=dtype)
    else:
        x = jnp.asarray(x_init, dtype)
        if x.shape != shape:
            raise ValueError(f"solve_flow: x_init has shape {x.shape}, expected shape={shape}")
    term = diffrax.ODETerm(lambda t, y, args: velocity_from_score(sde, y, t, score_fn(y, t)))
    t0 = jnp.asarray(sde.t_max, dtype)
    t1 = jnp.asarray(sde.t_min, dtype)
    if num_steps is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100
    else:
        controller = diffrax.StepTo(ts=sde.time_grid(num_steps, dtype))
        dt0 = None
        max_steps = num_steps + 1
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt0,
        x,
        stepsize_controller=controller,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    x = sol.ys[-1]
    count = sol.stats["num_steps"] * per_step + initial
    if denoise_final:
        x = sde.tweedie_denoiser(score_fn, x, t1)
        count = count + 1
    return FlowSolution(x, jnp.asarray(count, jnp.int32))


def flow_ode(
    score_fn: Callable[[Array, Array], Array],
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> Array:
    """The sample of :func:`solve_flow` alone: the flow sampler in :data:`SAMPLERS` (``"flow_ode"``).

    Example: ``models.sample_model(flow_model, 16, key=key, method="flow_ode", num_steps=20,
    solver=diffrax.Euler())``.
    """
    return solve_flow(
        score_fn,
        sde,
        shape,
        key=key,
        num_steps=num_steps,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        x_init=x_init,
        denoise_final=denoise_final,
        dtype=dtype,
    ).x
