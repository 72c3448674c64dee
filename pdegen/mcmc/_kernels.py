"""Langevin kernels in the ``(init, step)`` form: ULA, MALA (both optionally preconditioned), pCN,
and the chain drivers :func:`run_chain` / :func:`run_chains`.

``state = kernel.init(x0)``, ``state, info = kernel.step(state, key=key)``; states are NamedTuples
that carry their step size, so chains ``scan``, ``vmap`` and ``jit``, and warm-up can adapt it
(dual averaging toward a target acceptance rate for the Metropolis-adjusted kernels).
A preconditioner ``P`` is given by its action ``apply(v) = P v`` and a draw ``sample(key=key) ~ N(0, P)``;
``P^{-1}`` is never needed (the MALA correction below is written without it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._errors import NonFiniteError, UserError


class Preconditioner(NamedTuple):
    """A symmetric positive definite preconditioner ``P`` with its Gaussian draws.

    A symmetric positive definite ``P``: ``apply(v) = P v`` and ``sample(*, key) ~ N(0, P)``
    (the key is keyword-only, as everywhere in ``fem`` and ``statfem``)."""

    apply: Callable
    sample: Callable


class SamplingAlgorithm(NamedTuple):
    """A kernel: ``init(x0) -> state``, ``step(state, *, key) -> (state, info)``.

    Attributes:
        name: kernel name (``'ula'``, ``'mala'``, ``'pcn'``, with ``'p'`` prefix when preconditioned).
        target_acceptance: acceptance rate targeted by warm-up adaptation (``None``: unadjusted).
        gradients_per_step: gradient evaluations per step (pCN: 0; it evaluates the energy once).
        max_step_size: upper bound for adaptation (pCN's ``beta <= 1``).
    """

    init: Callable
    step: Callable
    name: str
    target_acceptance: float | None
    gradients_per_step: int
    max_step_size: float


class LangevinState(NamedTuple):
    """The state of a ULA or MALA chain (:func:`ula`, :func:`mala`).

    Attributes:
        position: The current point ``x``, shape ``(dim,)``.
        energy: ``U(x)``, a scalar.
        gradient: ``grad U(x)``, shape ``(dim,)``.
        preconditioned_gradient: ``P grad U(x)`` (``grad U(x)`` without a preconditioner).
        step_size: The step size ``h`` the next step uses (adapted during warm-up).
    """

    position: jax.Array
    energy: jax.Array
    gradient: jax.Array
    preconditioned_gradient: jax.Array  # P grad U (grad U without preconditioner)
    step_size: jax.Array


class PCNState(NamedTuple):
    """The state of a pCN chain (:func:`pcn`).

    Attributes:
        position: The current point ``x``, shape ``(dim,)``.
        energy: The likelihood energy ``Phi(x)`` (not the prior part), a scalar.
        step_size: ``beta`` in ``(0, 1]``, the weight of the fresh prior draw.
    """

    position: jax.Array
    energy: jax.Array  # likelihood energy
    step_size: jax.Array  # beta


class SamplerInfo(NamedTuple):
    """What one step of a kernel reports (the second output of ``step``).

    Attributes:
        acceptance_probability: The Metropolis-Hastings acceptance probability of the proposal
            (1 for ULA, which accepts every proposal).
        is_accepted: Whether the proposal was accepted (a boolean scalar).
        energy: The energy at the state after the step.
    """

    acceptance_probability: jax.Array
    is_accepted: jax.Array
    energy: jax.Array


def _check_step_size(name, step_size):
    if isinstance(step_size, jax.core.Tracer):
        return
    if not float(step_size) > 0 or not math.isfinite(float(step_size)):
        raise UserError(f"{name}: step_size must be finite and > 0, got {step_size}")


def _check_preconditioner(name, preconditioner):
    if preconditioner is not None and not isinstance(preconditioner, Preconditioner):
        hint = (
            " (pass its .preconditioner)"
            if isinstance(getattr(preconditioner, "preconditioner", None), Preconditioner)
            else ""
        )
        raise TypeError(
            f"{name}: preconditioner must be a Preconditioner (apply, sample) or None, "
            f"got {type(preconditioner).__name__}{hint}"
        )


def check_preconditioner_size(name: str, preconditioner: Preconditioner, x) -> None:
    """A :class:`UserError` unless ``preconditioner`` acts on and draws vectors of ``x``'s shape.

    Shapes only (``jax.eval_shape``): nothing is computed."""
    x = jnp.asarray(x) if not isinstance(x, jax.ShapeDtypeStruct) else x
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    try:
        out = jax.eval_shape(preconditioner.apply, spec)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{name}: the preconditioner does not apply to a state of shape {x.shape} ({err}); "
            "build it for this model"
        ) from None
    try:
        draw = jax.eval_shape(lambda: preconditioner.sample(key=jax.random.key(0)))
    except (TypeError, ValueError) as err:
        raise UserError(f"{name}: the preconditioner's sample(key=...) failed ({err})") from None
    for what, got in (("apply(v)", out), ("sample(key=...)", draw)):
        if getattr(got, "shape", None) != x.shape:
            raise UserError(
                f"{name}: the preconditioner's {what} has shape {getattr(got, 'shape', None)} but "
                f"the state has shape {x.shape}; build the preconditioner for this model"
            )


def _langevin_parts(energy_fn, preconditioner, name="init"):
    value_and_grad = jax.value_and_grad(energy_fn)

    def precondition(g):
        return g if preconditioner is None else preconditioner.apply(g)

    def noise(key, x):
        if preconditioner is None:
            return jax.random.normal(key, x.shape, x.dtype)
        return preconditioner.sample(key=key).astype(x.dtype)

    def init(x0):
        x0 = jnp.asarray(x0)
        if x0.ndim != 1:
            raise ValueError(f"{name}: x0 must be a vector (dim,), got shape {x0.shape}")
        if preconditioner is not None:
            check_preconditioner_size(name, preconditioner, x0)
        e, g = value_and_grad(x0)
        return e, g, precondition(g)

    return value_and_grad, precondition, noise, init


def ula(
    energy_fn: Callable, step_size: float, *, preconditioner: Preconditioner | None = None
) -> SamplingAlgorithm:
    """The unadjusted Langevin algorithm ``x' = x - h P grad U(x) + sqrt(2 h) N(0, P)``.

    ``energy_fn(x) -> scalar`` is ``U = -log target``; ``P = I`` without a preconditioner. Stable for
    ``h < 2 / lambda_max(P hess U)``; biased for ``h > 0`` (see :func:`pdegen.fem.statfem.ula_stationary_covariance`).
    """
    _check_step_size("ula", step_size)
    _check_preconditioner("ula", preconditioner)
    value_and_grad, precondition, noise, init_parts = _langevin_parts(
        energy_fn, preconditioner, "ula"
    )

    def init(x0):
        e, g, pg = init_parts(x0)
        return LangevinState(
            jnp.asarray(x0), e, g, pg, jnp.asarray(step_size, jnp.asarray(x0).dtype)
        )

    def step(state, *, key):
        h = state.step_size
        x = (
            state.position
            - h * state.preconditioned_gradient
            + jnp.sqrt(2.0 * h) * noise(key, state.position)
        )
        e, g = value_and_grad(x)
        new = LangevinState(x, e, g, precondition(g), h)
        one = jnp.ones((), x.dtype)
        return new, SamplerInfo(one, jnp.ones((), bool), e)

    name = "ula" if preconditioner is None else "pula"
    return SamplingAlgorithm(init, step, name, None, 1, math.inf)


def mala(
    energy_fn: Callable,
    step_size: float,
    *,
    preconditioner: Preconditioner | None = None,
    target_acceptance: float = 0.574,
) -> SamplingAlgorithm:
    """Metropolis-adjusted Langevin with the proposal of :func:`ula` (preconditioned if given).

    The log proposal ratio is ``-0.5 (x - x')^T (g + g') - h/4 (g'^T P g' - g^T P g)``, which needs
    only ``P g`` (never ``P^{-1}``).
    """
    _check_step_size("mala", step_size)
    _check_preconditioner("mala", preconditioner)
    if not 0 < target_acceptance < 1:
        raise ValueError(f"mala: target_acceptance must lie in (0, 1), got {target_acceptance}")
    value_and_grad, precondition, noise, init_parts = _langevin_parts(
        energy_fn, preconditioner, "mala"
    )

    def init(x0):
        e, g, pg = init_parts(x0)
        return LangevinState(
            jnp.asarray(x0), e, g, pg, jnp.asarray(step_size, jnp.asarray(x0).dtype)
        )

    def step(state, *, key):
        k_prop, k_acc = jax.random.split(key)
        h = state.step_size
        x = state.position
        xp = x - h * state.preconditioned_gradient + jnp.sqrt(2.0 * h) * noise(k_prop, x)
        ep, gp = value_and_grad(xp)
        pgp = precondition(gp)
        log_ratio = (
            state.energy
            - ep
            - 0.5 * jnp.dot(x - xp, state.gradient + gp)
            - 0.25 * h * (jnp.dot(gp, pgp) - jnp.dot(state.gradient, state.preconditioned_gradient))
        )
        log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
        prob = jnp.minimum(1.0, jnp.exp(log_ratio))
        accept = jnp.log(jax.random.uniform(k_acc, (), x.dtype)) < log_ratio
        new = LangevinState(
            jnp.where(accept, xp, x),
            jnp.where(accept, ep, state.energy),
            jnp.where(accept, gp, state.gradient),
            jnp.where(accept, pgp, state.preconditioned_gradient),
            h,
        )
        return new, SamplerInfo(prob, accept, new.energy)

    name = "mala" if preconditioner is None else "pmala"
    return SamplingAlgorithm(init, step, name, float(target_acceptance), 1, math.inf)


def pcn(
    likelihood_energy_fn: Callable,
    step_size: float,
    *,
    prior_mean,
    prior: Preconditioner,
    target_acceptance: float = 0.25,
) -> SamplingAlgorithm:
    """Preconditioned Crank-Nicolson for a Gaussian prior ``N(prior_mean, C)`` times a likelihood.

    ``x' = m + sqrt(1 - beta^2) (x - m) + beta N(0, C)``, accepted with probability
    ``min(1, exp(Phi(x) - Phi(x')))`` where ``Phi = likelihood_energy_fn``; ``step_size`` is
    ``beta`` in ``(0, 1]``. ``prior.sample(key=key)`` draws ``N(0, C)`` (e.g. :func:`pdegen.fem.statfem.prior_preconditioner`).
    Gradient-free.
    """
    _check_step_size("pcn", step_size)
    if not isinstance(step_size, jax.core.Tracer) and float(step_size) > 1:
        raise ValueError(f"pcn: step_size (beta) must lie in (0, 1], got {step_size}")
    _check_preconditioner("pcn", prior)
    if prior is None:
        raise TypeError("pcn: prior must be a Preconditioner giving draws from N(0, C)")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"pcn: target_acceptance must lie in (0, 1), got {target_acceptance}")
    m = jnp.asarray(prior_mean)

    def init(x0):
        x0 = jnp.asarray(x0)
        if x0.shape != m.shape:
            raise ValueError(f"pcn: x0 must have the shape of prior_mean {m.shape}, got {x0.shape}")
        check_preconditioner_size("pcn", prior, x0)
        return PCNState(x0, likelihood_energy_fn(x0), jnp.asarray(step_size, x0.dtype))

    def step(state, *, key):
        k_prop, k_acc = jax.random.split(key)
        beta = jnp.minimum(state.step_size, 1.0)
        x = state.position
        xp = m + jnp.sqrt(1.0 - beta**2) * (x - m) + beta * prior.sample(key=k_prop).astype(x.dtype)
        ep = likelihood_energy_fn(xp)
        log_ratio = state.energy - ep
        log_ratio = jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)
        prob = jnp.minimum(1.0, jnp.exp(log_ratio))
        accept = jnp.log(jax.random.uniform(k_acc, (), x.dtype)) < log_ratio
        new = PCNState(
            jnp.where(accept, xp, x), jnp.where(accept, ep, state.energy), state.step_size
        )
        return new, SamplerInfo(prob, accept, new.energy)

    return SamplingAlgorithm(init, step, "pcn", float(target_acceptance), 0, 1.0)


def largest_curvature(
    energy_fn: Callable,
    x,
    *,
    preconditioner: Preconditioner | None = None,
    num_iterations: int = 100,
    key=None,
) -> jax.Array:
    """Largest eigenvalue of ``P hess U(x)`` by power iteration (Hessian-vector products).

    ULA/MALA are stable for step sizes below ``2 / largest_curvature``. The products are
    forward-over-reverse; for an energy without forward mode (through a PDE solve with a custom
    VJP) they are central differences of the gradient (relative step ``1e-5``).
    """
    args = (int(num_iterations), jnp.asarray(x), jax.random.key(0) if key is None else key)
    try:
        return _largest_curvature(energy_fn, preconditioner, False, *args)
    except (TypeError, ValueError) as err:
        if "jvp" not in str(err).lower():
            raise
    return _largest_curvature(energy_fn, preconditioner, True, *args)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _largest_curvature(energy_fn, preconditioner, differences, num_iterations, x, key):
    grad = jax.grad(energy_fn)
    eps = 1e-5 * (1.0 + jnp.linalg.norm(x))

    def op(v):
        if differences:
            hv = (grad(x + eps * v) - grad(x - eps * v)) / (2.0 * eps)
        else:
            hv = jax.jvp(grad, (x,), (v,))[1]
        return hv if preconditioner is None else preconditioner.apply(hv)

    v0 = jax.random.normal(key, x.shape, x.dtype)

    def body(v, _):
        w = op(v)
        return w / jnp.linalg.norm(w), None

    v, _ = lax.scan(body, v0 / jnp.linalg.norm(v0), None, length=num_iterations)
    return jnp.linalg.norm(op(v))


# ---------------------------------------------------------------------------- adaptation


class DualAveragingState(NamedTuple):
    """The state of step-size adaptation by dual averaging (:func:`dual_averaging_update`).

    Attributes:
        log_step: The log step size to use next.
        log_step_average: The running average of the log step size (the step size kept after
            warm-up).
        error_average: The running average of ``target - acceptance``.
        iteration: The number of updates so far.
        mu: The point the log step size is shrunk towards, ``log(10 h0)``.
    """

    log_step: jax.Array
    log_step_average: jax.Array
    error_average: jax.Array
    iteration: jax.Array
    mu: jax.Array


def dual_averaging_init(step_size) -> DualAveragingState:
    """Nesterov dual averaging of the log step size (Hoffman and Gelman 2014)."""
    ls = jnp.log(jnp.asarray(step_size))
    z = jnp.zeros_like(ls)
    return DualAveragingState(ls, ls, z, z, ls + math.log(10.0))


def dual_averaging_update(
    state: DualAveragingState,
    acceptance,
    target,
    *,
    gamma=0.05,
    t0=10.0,
    kappa=0.75,
    max_step_size=math.inf,
) -> DualAveragingState:
    """One dual-averaging update of the log step size towards a target acceptance rate.

    Args:
        state: The adaptation state (from :func:`dual_averaging_init` or a previous update).
        acceptance: The acceptance probability of the step just taken.
        target: The acceptance rate aimed at (e.g. 0.574 for MALA).
        gamma: Shrinkage towards ``state.mu`` (Hoffman and Gelman's ``gamma``).
        t0: Iteration offset that damps the first updates.
        kappa: Decay exponent of the weights of the running average.
        max_step_size: Upper bound on the step size (a stability limit), ``inf`` for none.

    Returns:
        The updated state; ``exp(state.log_step)`` is the step size to try next and
        ``exp(state.log_step_average)`` the one to keep after warm-up.
    """
    t = state.iteration + 1.0
    eta = 1.0 / (t + t0)
    err = (1.0 - eta) * state.error_average + eta * (target - acceptance)
    log_step = state.mu - jnp.sqrt(t) / gamma * err
    log_step = (
        jnp.minimum(log_step, math.log(max_step_size)) if math.isfinite(max_step_size) else log_step
    )
    w = t ** (-kappa)
    avg = w * log_step + (1.0 - w) * state.log_step_average
    return DualAveragingState(log_step, avg, err, t, state.mu)


# ---------------------------------------------------------------------------- chains


class ChainResult(NamedTuple):
    """Output of :func:`run_chain` (leading chain axis for :func:`run_chains`).

    Attributes:
        samples: ``trace_fn(x)`` every ``thin`` steps after warm-up, ``(num_steps // thin, ...)``.
        mean, variance: running moments of the position over all post-warm-up steps.
        acceptance_rate: mean acceptance probability after warm-up (1 for ULA).
        step_size: the step size used after warm-up.
        state: final kernel state.
        num_gradient_evaluations: gradient evaluations spent, warm-up included.
    """

    samples: jax.Array
    mean: jax.Array
    variance: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    state: NamedTuple
    num_gradient_evaluations: jax.Array


class _Moments(NamedTuple):
    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    acceptance: jax.Array


def _moments_init(x):
    return _Moments(
        jnp.zeros((), x.dtype), jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros((), x.dtype)
    )


def _moments_update(mom, x, acc):
    n = mom.count + 1.0
    delta = x - mom.mean
    mean = mom.mean + delta / n
    return _Moments(n, mean, mom.m2 + delta * (x - mean), mom.acceptance + acc.astype(x.dtype))


def _warmup_scan(kernel, target, key, state, da, n):
    def body(carry, k):
        st, d = carry
        st, info = kernel.step(st, key=k)
        if target is not None:
            d = dual_averaging_update(
                d, info.acceptance_probability, target, max_step_size=kernel.max_step_size
            )
            st = st._replace(step_size=jnp.exp(d.log_step).astype(st.step_size.dtype))
        return (st, d), None

    (state, da), _ = lax.scan(body, (state, da), jax.random.split(key, n))
    return state, da


def _sample_scan(kernel, trace_fn, thin, key, state, mom, n):
    def inner(carry, k):
        st, mo = carry
        st, info = kernel.step(st, key=k)
        return (st, _moments_update(mo, st.position, info.acceptance_probability)), None

    def outer(carry, k):
        carry, _ = lax.scan(inner, carry, jax.random.split(k, thin))
        return carry, trace_fn(carry[0].position)

    (state, mom), trace = lax.scan(outer, (state, mom), jax.random.split(key, n // thin))
    return state, mom, trace


def _resolve(kernel, target_acceptance, num_steps, num_warmup, thin, fn):
    if not isinstance(kernel, SamplingAlgorithm):
        raise TypeError(
            f"{fn}: kernel must be a SamplingAlgorithm (ula, mala, pcn), got {type(kernel).__name__}"
        )
    if int(num_steps) < 1 or int(num_steps) != num_steps:
        raise ValueError(f"{fn}: num_steps must be a positive integer, got {num_steps}")
    if int(num_warmup) < 0 or int(num_warmup) != num_warmup:
        raise ValueError(f"{fn}: num_warmup must be a non-negative integer, got {num_warmup}")
    if int(thin) < 1 or num_steps % thin:
        raise ValueError(
            f"{fn}: thin must be a positive divisor of num_steps={num_steps}, got {thin}"
        )
    target = kernel.target_acceptance if target_acceptance is None else float(target_acceptance)
    if target_acceptance is not None and not 0 < target < 1:
        raise ValueError(f"{fn}: target_acceptance must lie in (0, 1), got {target_acceptance}")
    return target


def _finish(kernel, state, mom, trace, num_steps, num_warmup):
    var = mom.m2 / jnp.maximum(mom.count, 1.0)
    ngrad = kernel.gradients_per_step * (num_steps + num_warmup) + (
        1 if kernel.gradients_per_step else 0
    )
    return ChainResult(
        trace,
        mom.mean,
        var,
        mom.acceptance / jnp.maximum(mom.count, 1.0),
        state.step_size,
        state,
        jnp.asarray(ngrad),
    )


def _after_warmup(state, da, target, num_warmup):
    if target is not None and num_warmup > 0:
        state = state._replace(step_size=jnp.exp(da.log_step_average).astype(state.step_size.dtype))
    return state


def run_chain(
    kernel: SamplingAlgorithm,
    x0,
    num_steps: int,
    num_warmup: int = 0,
    *,
    key,
    target_acceptance: float | None = None,
    thin: int = 1,
    trace_fn: Callable | None = None,
) -> ChainResult:
    """Run one chain with ``lax.scan``: ``num_warmup`` adaptation steps, then ``num_steps``.

    Metropolis-adjusted kernels adapt their step size toward ``target_acceptance`` (default: the
    kernel's) by dual averaging during warm-up; ULA only burns in. Pure: ``jit`` and ``vmap`` it
    (or use :func:`run_chains`). ``key`` (keyword-only) is the PRNG key of the chain. Called
    eagerly, a chain that ends NaN / inf raises :class:`pdegen._errors.NonFiniteError`.
    """
    target = _resolve(kernel, target_acceptance, num_steps, num_warmup, thin, "run_chain")
    trace_fn = (lambda x: x) if trace_fn is None else trace_fn
    k_warm, k_run = jax.random.split(key)
    state = kernel.init(x0)
    da = dual_averaging_init(state.step_size)
    if num_warmup:
        state, da = _warmup_scan(kernel, target, k_warm, state, da, int(num_warmup))
    state = _after_warmup(state, da, target, num_warmup)
    state, mom, trace = _sample_scan(
        kernel, trace_fn, int(thin), k_run, state, _moments_init(state.position), int(num_steps)
    )
    _check_finite("run_chain", kernel, state, int(num_warmup) + int(num_steps))
    return _finish(kernel, state, mom, trace, num_steps, num_warmup)


def _check_finite(fn, kernel, state, num_done):
    """Raise :class:`NonFiniteError` if a (concrete) chain state is NaN / inf: the chain diverged."""
    if isinstance(state.position, jax.core.Tracer):
        return
    finite = jnp.all(jnp.isfinite(state.position)) & jnp.all(jnp.isfinite(state.energy))
    if bool(finite):
        return
    h = np.asarray(state.step_size, dtype=float)
    hs = f"{float(np.nanmax(h)):.3g}" if h.size and not np.all(np.isnan(h)) else "nan"
    raise NonFiniteError(
        f"{fn}: the {kernel.name} chain diverged (its state is NaN or inf after {num_done} steps, "
        f"step size {hs}); use a smaller step size (Langevin steps are stable below "
        "2 / largest_curvature) or a preconditioner"
    )


def _identity(x):
    return x


@functools.lru_cache(maxsize=32)
def _block_function(kernel, target, thin, block, trace_fn, adapted):
    """One compiled block of ``block`` steps serving warm-up and sampling (vmapped over chains).

    ``sampling`` and ``active`` (the number of steps to take, <= block) are traced, so every block
    of a run, full or partial, warm-up or not, reuses one compilation.
    """

    def one_chain(key, state, da, mom, sampling, active):
        # entering the sampling phase: switch to the averaged adapted step size
        first = jnp.logical_and(sampling, mom.count == 0)
        if adapted:
            averaged = jnp.exp(da.log_step_average).astype(state.step_size.dtype)
            state = state._replace(step_size=jnp.where(first, averaged, state.step_size))

        def do_step(i, carry, k):
            st, d, mo = carry
            new, info = kernel.step(st, key=k)
            if target is not None:
                d_new = dual_averaging_update(
                    d, info.acceptance_probability, target, max_step_size=kernel.max_step_size
                )
                adapt = jnp.logical_not(sampling)
                d = jax.tree.map(lambda a, b: jnp.where(adapt, a, b), d_new, d)
                new = new._replace(
                    step_size=jnp.where(
                        adapt, jnp.exp(d_new.log_step).astype(new.step_size.dtype), new.step_size
                    )
                )
            mo_new = _moments_update(mo, new.position, info.acceptance_probability)
            mo = jax.tree.map(lambda a, b: jnp.where(sampling, a, b), mo_new, mo)
            return new, d, mo

        def inner(carry, ik):
            i, k = ik
            carry = lax.cond(i < active, lambda c: do_step(i, c, k), lambda c: c, carry)
            return carry, None

        def outer(carry, jk):
            j, k = jk
            idx = j * thin + jnp.arange(thin)
            carry, _ = lax.scan(inner, carry, (idx, jax.random.split(k, thin)))
            return carry, trace_fn(carry[0].position)

        nouter = block // thin
        (state, da, mom), trace = lax.scan(
            outer, (state, da, mom), (jnp.arange(nouter), jax.random.split(key, nouter))
        )
        return state, da, mom, trace

    return jax.jit(jax.vmap(one_chain, in_axes=(0, 0, 0, 0, None, None)))


def run_chains(
    kernel: SamplingAlgorithm,
    x0,
    num_steps: int,
    num_warmup: int = 0,
    *,
    key,
    target_acceptance: float | None = None,
    thin: int = 1,
    trace_fn: Callable | None = None,
    progress: bool = False,
    block_size: int = 250,
    step_size=None,
) -> ChainResult:
    """Run ``x0.shape[0]`` independent chains with ``vmap`` (fields get a leading chain axis).

    The chains advance in jitted blocks of about ``block_size`` steps (rounded to a multiple of
    ``thin``; one compilation per kernel, reused across calls), so a tqdm bar can show progress
    (``progress=True``). Same algorithm as :func:`run_chain`.
    Pool the chains with :func:`pool_chains`. ``key`` (keyword-only) is the PRNG key of the run.
    ``step_size`` (a scalar or one per chain) replaces the kernel's initial step size: to continue
    chains from ``result.state.position`` at ``result.step_size`` of an earlier run (a long run
    in resumable pieces) without a second warm-up.
    A chain whose state becomes NaN / inf stops the run at the end of its block with
    :class:`pdegen._errors.NonFiniteError` (a diverged sampler never returns NaN moments).
    """
    target = _resolve(kernel, target_acceptance, num_steps, num_warmup, thin, "run_chains")
    x0 = jnp.asarray(x0)
    if x0.ndim != 2:
        raise ValueError(f"run_chains: x0 must have shape (num_chains, dim), got {x0.shape}")
    trace_fn = _identity if trace_fn is None else trace_fn
    C = x0.shape[0]
    thin = int(thin)
    num_steps, num_warmup = int(num_steps), int(num_warmup)
    if int(block_size) < 1:
        raise ValueError(f"run_chains: block_size must be >= 1, got {block_size}")
    block = max(1, int(round(int(block_size) / thin))) * thin
    fn = _block_function(
        kernel, target, thin, block, trace_fn, target is not None and num_warmup > 0
    )
    if step_size is not None:
        step_size = jnp.asarray(step_size, x0.dtype)
        if step_size.shape not in ((), (C,)) or not bool(
            jnp.all(jnp.isfinite(step_size) & (step_size > 0))
        ):
            raise ValueError(
                f"run_chains: step_size must be positive and finite, a scalar or one per chain "
                f"({C}), got shape {step_size.shape}"
            )
        step_size = jnp.broadcast_to(step_size, (C,))
    state, da, mom = _init_chains(kernel, x0, step_size)
    _check_finite("run_chains", kernel, state, 0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_warmup + num_steps, desc=kernel.name, unit="step", dynamic_ncols=True)
    k_warm, k_run = jax.random.split(key)
    i = done = 0
    for left in range(num_warmup, 0, -block):
        n = min(block, left)
        keys = jax.random.split(jax.random.fold_in(k_warm, i), C)
        state, da, mom, _ = fn(keys, state, da, mom, jnp.asarray(False), jnp.asarray(n))
        done += n
        _check_finite("run_chains", kernel, state, done)
        i += 1
        if bar is not None:
            bar.update(n)
    traces = []
    i = 0
    for left in range(num_steps, 0, -block):
        n = min(block, left)
        keys = jax.random.split(jax.random.fold_in(k_run, i), C)
        state, da, mom, trace = fn(keys, state, da, mom, jnp.asarray(True), jnp.asarray(n))
        done += n
        _check_finite("run_chains", kernel, state, done)
        traces.append(jax.tree.map(lambda t: t[:, : n // thin], trace))
        i += 1
        if bar is not None:
            bar.update(n)
            bar.set_postfix(acceptance=f"{float(jnp.mean(mom.acceptance / mom.count)):.2f}")
    if bar is not None:
        bar.close()
    trace = jax.tree.map(lambda *t: jnp.concatenate(t, axis=1), *traces)
    return _finish_chains(kernel, state, mom, trace, num_steps, num_warmup)


@functools.partial(jax.jit, static_argnums=0)
def _init_chains(kernel, x0, step_size=None):
    """The chains' initial states (``step_size``: one per chain in place of the kernel's)."""
    state = jax.vmap(kernel.init)(x0)
    if step_size is not None:
        state = state._replace(step_size=step_size.astype(state.step_size.dtype))
    da = jax.vmap(dual_averaging_init)(state.step_size)
    return state, da, jax.vmap(_moments_init)(state.position)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _finish_chains(kernel, state, mom, trace, num_steps, num_warmup):
    return jax.vmap(lambda s, m, t: _finish(kernel, s, m, t, num_steps, num_warmup))(
        state, mom, trace
    )


def pool_chains(result: ChainResult) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of the position pooled over the chains of :func:`run_chains`."""
    return _pool(result.mean, result.variance)


@jax.jit
def _pool(means, variances):
    mean = jnp.mean(means, axis=0)
    second = jnp.mean(variances + means**2, axis=0)
    return mean, jnp.maximum(second - mean**2, 0.0)
