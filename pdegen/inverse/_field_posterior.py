"""Posterior sampling for any (prior, likelihood) pair: the user's own PDE, mesh, sensors and data.

``sample_posterior(prior, likelihood, method=...)`` runs a guided diffusion sampler (TMPD, PiGDM,
DPS, unguided) over the prior's state, twisted sequential Monte Carlo (:class:`SMC`, with a log
evidence), or the closed forms under a Gaussian prior: the exact posterior (linear forward maps)
and the MAP estimate. The observation is whitened by the
likelihood's noise model and scaled to unit RMS data, so guidance is unit-free; compiled samplers
are reused across data sets of the same problem (``likelihood.with_data(y)``).
"""

from __future__ import annotations

import collections
import math
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import models
from pdegen._errors import as_count, as_key

from ._gaussian import gaussian_posterior
from ._guidance import matched_variance_table
from ._likelihood import GaussianLikelihood, LinearForward
from ._methods import (
    MAP,
    MCMC,
    SMC,
    Exact,
    GuidanceProblem,
    Method,
    PiGDM,
    as_method,
    step_weight,
)
from ._metrics import interval_std
from ._priors import Prior
from ._smc import systematic_resample, twisted_smc
from ._tasks import credible_interval_coverage, relative_l2


class FieldPosterior(NamedTuple):
    """Posterior samples of the unknown field (nodal values, physical units).

    Attributes:
        samples: ``(num_samples, n)``.
        mean, std: ``(n,)`` mean and pointwise standard deviation (``bayes``: exact).
        method: the method's label.
        seconds_per_sample: wall time per sample, compilation excluded where it can be measured.
        compile_seconds: the first batch's extra time (``nan`` with a single batch).
        info: extra results (the MAP objective, the exact posterior's log evidence, PiGDM's
            ``data_variance`` as used, ...).
    """

    samples: jax.Array
    mean: jax.Array
    std: jax.Array
    method: str
    seconds_per_sample: float
    compile_seconds: float
    info: dict


def check_problem(prior, likelihood) -> None:
    """Raise a clear error if ``prior`` and ``likelihood`` do not describe the same unknown field."""
    if not isinstance(prior, Prior):
        raise TypeError(
            f"prior must be a pdegen.inverse.Prior (matern_prior, grf_prior, learned_prior), "
            f"got {type(prior).__name__}"
        )
    if not isinstance(likelihood, GaussianLikelihood):
        raise TypeError(
            f"likelihood must be a pdegen.inverse.GaussianLikelihood (gaussian_likelihood), "
            f"got {type(likelihood).__name__}"
        )
    if prior.size != likelihood.size:
        raise ValueError(
            f"prior: its field has {prior.size} nodal values but the likelihood's forward map takes "
            f"{likelihood.size}; build the prior on the likelihood's mesh"
        )


class _Observe(eqx.Module):
    """``x -> factor * W G(field(x))`` in the sampler's dtype."""

    prior: Prior
    likelihood: GaussianLikelihood
    factor: jax.Array

    def __call__(self, x):
        a = self.prior.to_field(x)
        pred = self.likelihood.whitener @ self.likelihood.forward(a).astype(
            self.likelihood.whitener.dtype
        )
        return (self.factor * pred).astype(x.dtype)


def _guidance_problem(
    observe, y, noise_std, data_variance, variance, states, num_steps, precomputed=None
):
    prior = observe.prior
    return GuidanceProblem(
        prior.score,
        prior.sde,
        observe,
        y,
        noise_std,
        data_variance,
        step_weight(prior.sde, num_steps),
        prior.shape,
        variance,
        states,
        precomputed,
    )


@eqx.filter_jit
def _precompute(method, observe, y, noise_std, data_variance, variance, states, num_steps):
    return method.precompute(
        _guidance_problem(observe, y, noise_std, data_variance, variance, states, num_steps)
    )


@eqx.filter_jit
def _sample_batch(
    method,
    observe,
    y,
    noise_std,
    data_variance,
    variance,
    states,
    precomputed,
    keys,
    num_steps,
    sampler,
):
    prior = observe.prior
    sde = prior.sde
    dtype = jnp.dtype(prior.dtype)
    problem = _guidance_problem(
        observe, y, noise_std, data_variance, variance, states, num_steps, precomputed
    )
    guided = method.guide(problem)
    run = models.sampler_function(sampler)
    # (the final Tweedie estimate below, not the sampler's: a sampler function may set it)
    x = jax.vmap(
        lambda k: run(
            guided, sde, prior.shape, key=k, num_steps=num_steps, dtype=dtype, denoise_final=False
        )
    )(keys)
    t = jnp.asarray(sde.t_min, dtype)
    # The prior's Tweedie estimate at the last time.
    x = jax.vmap(lambda xi: sde.tweedie_denoiser(prior.score, xi, t))(x)
    return jax.vmap(prior.to_field)(x)


DIVERGED_MISFIT = 10.0
"""A guided posterior mean whose normalised data misfit exceeds this many times the data's RMS (or
the noise level, if larger) fits the data far worse than the zero field does: the guidance
diverged."""


def warn_if_diverged(observe: _Observe, y, field, label: str) -> float:
    """Warn (``RuntimeWarning``) when the posterior mean ``field`` predicts the normalised data
    ``y`` worse than :data:`DIVERGED_MISFIT` times their RMS; returns that ratio. A guided sampler
    can overshoot the data without producing non-finite values (e.g. PiGDM, whose isotropic
    covariance ignores the correlation of many nearby sensors)."""
    pred = observe.factor * (observe.likelihood.whitener @ observe.likelihood.forward(field))
    y = np.asarray(y, np.float64)
    misfit = float(np.sqrt(np.mean((np.asarray(pred, np.float64) - y) ** 2)))
    # whitened noise has unit std, ``factor`` in these units: data below the noise level are
    # measured against the noise, which any fit reaches
    scale = max(float(np.sqrt(np.mean(y**2))), float(observe.factor), 1e-300)
    ratio = misfit / scale
    if not ratio <= DIVERGED_MISFIT:
        warnings.warn(
            f"sample_posterior: the {label} posterior mean misses the data by {ratio:.3g} times "
            "their RMS or the noise level, whichever is larger (the zero field misses by about "
            "1): the guidance diverged. With many "
            "correlated sensors try 'tmpd' / 'tmpd-cached' or 'dps', or more num_steps.",
            RuntimeWarning,
            stacklevel=4,
        )
    return ratio


PRIOR_SAMPLES = 64
"""Unguided prior samples behind a learned prior's PiGDM data variance and SMC twist variances."""

MATCH_PROBES = 16
"""Orthonormal probes per state for the trace in a learned prior's matched variances: the ``2 m``
network VJPs per state and time become ``m`` observation VJPs and this many network ones."""


def observed_prior_variance(
    prior: Prior,
    observe,
    shape,
    *,
    key=None,
    num_samples: int = PRIOR_SAMPLES,
    sampler: str | Callable = "euler_maruyama",
    num_steps: int = 100,
) -> float:
    """The prior variance of the state along the observed directions.

    ``tr(J C J^T) / tr(J J^T)``: the prior variance of the state along the rows of ``J``, the
    Jacobian of ``observe``, with ``C`` the prior covariance of the state (PiGDM's data variance).

    Exact for Gaussian priors (``J`` at the zero state). For learned priors ``C`` is estimated
    from ``num_samples`` unguided prior samples (``sampler``, ``num_steps``; ``key``, default key 0)
    and ``J`` taken at their mean. The samples are kept for the next call with the same score,
    SDE, shape, key and sampler settings (the last few such sets), so a prior used on many data
    sets (``key=None``: the same fixed key every time) draws them once."""
    if prior.gaussian:
        x0 = jnp.zeros(shape, jnp.float64)
        J = jax.jacrev(observe)(x0).reshape(-1, x0.size)
        _, vjp = jax.vjp(prior.score.sqrt, jnp.zeros(prior.z_shape, jnp.float64))
        JL = jax.vmap(lambda r: jnp.ravel(vjp(r.reshape(shape))[0]))(J)
        return float(jnp.sum(JL**2) / jnp.maximum(jnp.sum(J**2), 1e-300))
    if num_samples < 2:
        raise ValueError(f"observed_prior_variance: num_samples must be >= 2, got {num_samples}")
    states = _cached_prior_states(prior, shape, key, num_samples, sampler, num_steps)
    centre = states.mean(0)
    J = jax.jacrev(observe)(centre).reshape(-1, centre.size).astype(jnp.float64)
    D = (states - centre[None]).reshape(num_samples, -1).astype(jnp.float64)
    spread = jnp.sum((D @ J.T) ** 2) / (num_samples - 1)
    return float(spread / jnp.maximum(jnp.sum(J**2), 1e-300))


_PRIOR_STATES: collections.OrderedDict = collections.OrderedDict()
_PRIOR_STATES_KEPT = 4


def _cached_prior_states(prior: Prior, shape, key, num_samples, sampler, num_steps):
    """:func:`_prior_states`, kept for the last few (score, SDE, settings) it was asked for."""
    key = jax.random.key(0) if key is None else key
    settings = (
        tuple(shape),
        np.asarray(jax.random.key_data(key)).tobytes(),
        int(num_samples),
        sampler,
        int(num_steps),
        str(jnp.dtype(prior.dtype)),
    )
    ident = (id(prior.score), id(prior.sde), settings)
    hit = _PRIOR_STATES.get(ident)
    if hit is not None and hit[0] is prior.score and hit[1] is prior.sde:
        _PRIOR_STATES.move_to_end(ident)
        return hit[2]
    states = _prior_states(prior, shape, key, num_samples, sampler, num_steps)
    _PRIOR_STATES[ident] = (prior.score, prior.sde, states)  # the references keep the ids valid
    while len(_PRIOR_STATES) > _PRIOR_STATES_KEPT:
        _PRIOR_STATES.popitem(last=False)
    return states


@eqx.filter_jit
def _prior_states(prior: Prior, shape, key, num_samples, sampler, num_steps):
    dtype = jnp.dtype(prior.dtype)
    run = models.sampler_function(sampler)
    t = jnp.asarray(prior.sde.t_min, dtype)

    def one(k):
        x = run(
            prior.score,
            prior.sde,
            shape,
            key=k,
            num_steps=num_steps,
            dtype=dtype,
            denoise_final=False,
        )
        return prior.sde.tweedie_denoiser(prior.score, x, t)

    return jax.vmap(one)(jax.random.split(key, num_samples))


def sample_in_batches(run, key, num_samples: int, batch_size: int | None, progress):
    """``run(keys)`` over ``split(key, num_samples)`` in batches of one compiled size (the last one
    padded). Returns the samples (host float64), the seconds per sample of the steady-state batches
    and the first batch's extra (compilation) time (``nan`` with a single batch)."""
    batch_size = min(num_samples, 4) if batch_size is None else as_count(batch_size, "batch_size")
    keys = jax.random.split(key, num_samples)
    batches, times = [], []
    for start in range(0, num_samples, batch_size):
        kb = keys[start : start + batch_size]
        n = kb.shape[0]
        if n < batch_size:  # pad to the compiled batch size
            kb = jnp.concatenate([kb, keys[: batch_size - n]])
        t0 = time.perf_counter()
        out = jax.block_until_ready(run(kb))
        times.append((time.perf_counter() - t0, n))
        batches.append(np.asarray(out[:n], np.float64))
        if progress is not None:
            progress.update(n)
    steady = times[1:] if len(times) > 1 else times
    per_sample = sum(t for t, _ in steady) / sum(n for _, n in steady)
    compile_s = max(times[0][0] - per_sample * times[0][1], 0.0) if len(times) > 1 else float("nan")
    return np.concatenate(batches), float(per_sample), float(compile_s)


def sample_field_posterior(
    prior: Prior,
    likelihood: GaussianLikelihood,
    *,
    method="tmpd",
    key,
    num_samples: int = 8,
    num_steps: int = 200,
    sampler: str | Callable | None = None,
    batch_size: int | None = None,
    progress=None,
    data_scale: float | None = None,
) -> FieldPosterior:
    """Posterior of the unknown field for a (prior, likelihood) pair; see :func:`sample_posterior`.

    ``data_scale`` (data units) sets the unit in which guidance measures the data (DPS's step is
    taken in it): by default the RMS of the whitened data, so steps are unit-free. ``sampler``:
    a name in :data:`pdegen.models.SAMPLERS` or a sampler function (default
    :func:`pdegen.models.default_sampler` of the prior's process: ``"flow_ode"`` for a flow prior,
    else ``"euler_maruyama"``)."""
    check_problem(prior, likelihood)
    method = as_method(method)
    if sampler is None:
        sampler = models.default_sampler(prior.sde)
    num_samples = as_count(num_samples, "num_samples")
    key = as_key(key, "sample_posterior(key=...)")
    if isinstance(method, Exact):
        post = exact_posterior(prior, likelihood, key=key, num_samples=num_samples)
    elif isinstance(method, MAP):
        post = map_posterior(prior, likelihood, steps=method.steps)
    elif isinstance(method, MCMC):
        from ._mcmc_reference import mcmc_posterior  # it builds on this module's FieldPosterior

        post = mcmc_posterior(prior, likelihood, method, key=key, num_samples=num_samples)
    elif isinstance(method, SMC):
        post = smc_posterior(
            prior,
            likelihood,
            method,
            key=key,
            num_samples=num_samples,
            num_steps=num_steps,
            sampler=sampler,
            data_scale=data_scale,
        )
    else:
        return _guided_posterior(
            prior,
            likelihood,
            method,
            key=key,
            num_samples=num_samples,
            num_steps=num_steps,
            sampler=sampler,
            batch_size=batch_size,
            progress=progress,
            data_scale=data_scale,
        )
    if progress is not None:
        progress.update(num_samples)
    return post


def _normalised_problem(
    prior, likelihood, method: Method, *, key, num_steps, sampler, data_scale, needs_variance=None
):
    """The guidance problem in normalised units: ``(observe, y_n, noise, data_variance, variance,
    key)``.

    The observation is whitened by the likelihood's noise model and scaled by ``factor`` (the data
    to unit RMS, or to units of ``data_scale``); ``noise = factor`` is the noise level in those units.
    PiGDM's ``data_variance`` and its ``variance`` table matched to the prior are computed when the
    method needs them (``needs_variance``; else ``1.0`` and ``None``)."""
    models.sampler_function(sampler)  # a name in models.SAMPLERS or a sampler function
    num_steps = as_count(num_steps, "num_steps", 2)
    dtype = jnp.dtype(prior.dtype)
    yw = np.asarray(likelihood.whitener @ likelihood.y, np.float64)
    if data_scale is None:
        factor = 1.0 / max(
            float(np.sqrt(np.mean(yw**2))), 1e-12
        )  # whitened data scaled to unit RMS
    elif float(data_scale) > 0 and math.isfinite(float(data_scale)):
        factor = likelihood.noise_std / float(data_scale)  # the data in units of data_scale
    else:
        raise ValueError(f"data_scale must be > 0 and finite, got {data_scale}")
    observe = _Observe(prior, likelihood, jnp.asarray(factor, jnp.float64))
    if needs_variance is None:
        needs_variance = isinstance(method, PiGDM) and method.data_variance is None
    data_variance, variance = 1.0, None
    if needs_variance:
        key, _ = jax.random.split(key)  # (the sampler's keys as before)
        data_variance = observed_prior_variance(  # fixed key: the prior's samples are reused
            prior, observe, prior.shape, sampler=sampler, num_steps=num_steps
        )
        if isinstance(method, PiGDM) and method.matched:
            variance = _matched_table(
                prior, observe, _matching_states(prior, sampler, num_steps), _probes(prior)
            )
    y_n = jnp.asarray(factor * yw, dtype)
    noise = jnp.asarray(factor, dtype)
    return observe, y_n, noise, data_variance, variance, key


def _matching_states(prior: Prior, sampler, num_steps):
    """Clean states at which PiGDM's variance is matched to the prior: the zero state of a Gaussian
    prior (exact there), the cached unguided samples of a learned one."""
    if prior.gaussian:
        return jnp.zeros((1, *prior.shape), jnp.dtype(prior.dtype))
    return _cached_prior_states(prior, prior.shape, None, PRIOR_SAMPLES, sampler, num_steps)


def _probes(prior: Prior) -> int | None:
    """Probes of the matched variance's trace: ``None`` (exact, ``m`` VJPs) for a Gaussian prior,
    ``MATCH_PROBES`` for a learned one, whose VJPs are network evaluations."""
    return None if prior.gaussian else MATCH_PROBES


@eqx.filter_jit
def _matched_table(prior, observe, states, probes):
    return matched_variance_table(
        prior.score, prior.sde, observe, states, key=jax.random.key(0), probes=probes
    )


def _guided_posterior(
    prior,
    likelihood,
    method: Method,
    *,
    key,
    num_samples,
    num_steps,
    sampler,
    batch_size,
    progress,
    data_scale,
) -> FieldPosterior:
    t_setup = time.perf_counter()
    observe, y_n, noise, data_variance, variance, key = _normalised_problem(
        prior,
        likelihood,
        method,
        key=key,
        num_steps=num_steps,
        sampler=sampler,
        data_scale=data_scale,
    )
    dtype = jnp.dtype(prior.dtype)
    dv = jnp.asarray(data_variance, dtype)
    # a learned prior's Tweedie covariance where the sampler goes, not at the zero state
    states = None
    if method.uses_prior_states and not prior.gaussian:
        states = _matching_states(prior, sampler, num_steps)
    # built once for every batch (e.g. cached TMPD's covariances: num_times x m network VJPs)
    precomputed = _precompute(method, observe, y_n, noise, dv, variance, states, num_steps)
    jax.block_until_ready(precomputed)
    # prior samples, matched variances, cached covariances (their compilation included)
    setup_s = time.perf_counter() - t_setup
    run = lambda kb: _sample_batch(  # noqa: E731
        method, observe, y_n, noise, dv, variance, states, precomputed, kb, num_steps, sampler
    )
    samples, per_sample, compile_s = sample_in_batches(run, key, num_samples, batch_size, progress)
    if not np.all(np.isfinite(samples)):
        raise FloatingPointError(
            f"sample_posterior: {method.label} produced non-finite fields; try more num_steps "
            f"or another method"
        )
    samples = jnp.asarray(samples)
    warn_if_diverged(observe, y_n, samples.mean(0), method.label)
    std = samples.std(0, ddof=1) if num_samples > 1 else jnp.zeros(samples.shape[1])
    return FieldPosterior(
        samples,
        samples.mean(0),
        std,
        method.label,
        float(per_sample),
        float(compile_s),
        {
            "data_variance": _used_data_variance(method, data_variance),
            "prior": prior.name,
            "setup_seconds": setup_s,
        },
    )


def _used_data_variance(method: Method, estimated: float) -> float | None:
    """PiGDM's prior variance along the observed rows as used (given, or estimated from the prior);
    ``None`` for the methods that do not use one."""
    if not isinstance(method, PiGDM):
        return None
    return float(method.data_variance if method.data_variance is not None else estimated)


def smc_posterior(
    prior: Prior,
    likelihood: GaussianLikelihood,
    method: SMC | None = None,
    *,
    key,
    num_samples: int = 8,
    num_steps: int = 200,
    sampler: str | Callable | None = None,
    data_scale: float | None = None,
) -> FieldPosterior:
    """The sequential Monte Carlo posterior of a (prior, likelihood) pair.

    Sequential Monte Carlo posterior (:class:`SMC`, :func:`twisted_smc`) of a (prior, likelihood)
    pair: one particle system of ``method.num_particles`` particles on the ``num_steps`` reverse
    Euler-Maruyama steps.

    ``mean`` and ``std`` are the weighted particle estimates (``std`` with the unbiased weighted
    correction ``1 / (1 - sum W^2)``); ``samples`` are ``num_samples`` systematic resamples of the
    weighted particles (repeats possible). ``info``: ``log_evidence`` (the estimate of ``log p(W y)``
    for the whitened data, the units of :func:`exact_posterior`'s), ``ess`` (effective sample size
    after each reweighting), ``resampling_steps``, ``num_particles``, ``seconds`` (whole run,
    compilation included on a first call), ``data_variance`` (``PiGDM(data_variance=...)`` when
    given, else ``nan``: the twist's variances are matched to the prior) and the
    weighted particle system itself: ``particles`` ``(N, n)`` fields and normalised ``weights``."""
    check_problem(prior, likelihood)
    method = SMC() if method is None else method
    if not isinstance(method, SMC):
        raise TypeError(f"smc_posterior: method must be an SMC object, got {type(method).__name__}")
    num_samples = as_count(num_samples, "num_samples")
    if isinstance(prior.sde, models.AbstractInterpolant):
        raise ValueError(
            f"sample_posterior: {method.label} runs the prior's reverse SDE, which is singular for "
            f"the flow interpolant {type(prior.sde).__name__}; use a guided method (tmpd, pigdm, "
            f"dps) with the flow's ODE sampler, or a diffusion prior"
        )
    sampler = "euler_maruyama" if sampler is None else sampler
    if sampler != "euler_maruyama":
        raise ValueError(
            f"sample_posterior: {method.label} runs its own Euler-Maruyama particle chain; "
            f"sampler must be 'euler_maruyama', got {sampler!r}"
        )
    proposal = method.proposal
    given = getattr(proposal, "data_variance", None)
    observe, y_n, noise, data_variance, _, key = _normalised_problem(
        prior,
        likelihood,
        method,
        key=key,
        num_steps=num_steps,
        sampler=sampler,
        data_scale=data_scale,
        needs_variance=False,
    )
    dtype = jnp.dtype(prior.dtype)
    twist_states = None
    if given is not None:  # PiGDM's closed form for white data of this variance
        data_variance = float(given)
    elif method.twist == "pigdm":  # the isotropic twist as sharp as the prior
        data_variance = float("nan")
        twist_states = _matching_states(prior, sampler, num_steps)
    elif not prior.gaussian:  # the TMPD twist's covariance where the particles go
        twist_states = _matching_states(prior, sampler, num_steps)
    # the twist's covariance shared by the particles: exact for an affine map from state to
    # data with the PiGDM twist (and TMPD with a Gaussian prior, at the zero state); otherwise
    # (TMPD("cached")'s average over noised prior samples for a learned prior, a nonlinear PDE or
    # prior transform) an approximation whose error the weights correct, unless the method asks
    # for the per-particle linearisation
    shared = (
        bool(method.shared_covariance)
        if method.shared_covariance is not None
        else bool(likelihood.linear) and prior.transform is None
    )
    transition = method.transition
    if transition is None:
        transition = "conditional" if shared and method.twist == "tmpd" else "gradient"
    k_run, k_out = jax.random.split(key)
    t0 = time.perf_counter()
    res = twisted_smc(
        prior.score,
        prior.sde,
        observe,
        y_n,
        noise_std=noise,
        shape=prior.shape,
        key=k_run,
        num_particles=method.num_particles,
        num_steps=num_steps,
        twist=method.twist,
        data_variance=jnp.asarray(data_variance, dtype),
        ess_threshold=float(method.ess_threshold),
        shared_covariance=shared,
        time_grid=method.time_grid,
        twist_states=twist_states,
        twist_probes=_probes(prior),
        transition=transition,
        dtype=dtype,
    )
    fields = jax.block_until_ready(jax.vmap(prior.to_field)(res.particles))
    seconds = time.perf_counter() - t0
    if not bool(jnp.all(jnp.isfinite(fields))) or not bool(jnp.isfinite(res.log_evidence)):
        raise FloatingPointError(
            f"sample_posterior: {method.label} produced non-finite particles or weights; try more "
            f"num_steps"
        )
    fields = fields.astype(jnp.float64)
    w = jax.nn.softmax(res.log_weights.astype(jnp.float64))
    mean = w @ fields
    sum_w2 = float(jnp.sum(w**2))
    var = (w @ (fields - mean[None]) ** 2) / max(1.0 - sum_w2, 1e-12)
    idx = systematic_resample(k_out, res.log_weights.astype(jnp.float64), num_samples)
    samples = fields[idx]
    # evidence of the whitened data W y: the scaled data y_n = factor W y add m log(factor)
    factor = float(noise)
    log_evidence = float(res.log_evidence) + y_n.shape[0] * math.log(factor)
    ess = np.asarray(res.ess, np.float64)
    return FieldPosterior(
        samples,
        mean,
        jnp.sqrt(jnp.maximum(var, 0.0)),
        method.label,
        float(seconds / method.num_particles),
        float("nan"),
        {
            "log_evidence": log_evidence,
            "ess": ess.tolist(),
            "final_ess": float(ess[-1]),
            "resampling_steps": int(np.sum(np.asarray(res.resampled))),
            "transition": transition,
            "num_particles": method.num_particles,
            "std_draws": method.num_particles,  # mean and std are the weighted particles'
            "seconds": float(seconds),
            "data_variance": float(data_variance),
            "prior": prior.name,
            "particles": fields,
            "weights": w,
        },
    )


def _whitened_linear(likelihood: GaussianLikelihood):
    if not likelihood.linear or not isinstance(likelihood.forward, LinearForward):
        raise ValueError(
            "the exact Gaussian posterior needs a linear forward map (this likelihood's is nonlinear; "
            "use method='map', 'dps' or 'pigdm')"
        )
    W = likelihood.whitener
    G = likelihood.forward
    return (lambda a: W @ G(a)), W @ likelihood.y


def exact_posterior(
    prior: Prior, likelihood: GaussianLikelihood, *, key, num_samples: int = 8
) -> FieldPosterior:
    """The exact posterior of a Gaussian prior and a linear forward map (the Bayes floor).

    The exact posterior of a Gaussian prior and a linear forward map (Matheron samples, exact
    mean and pointwise std): the Bayes-optimal floor every method is measured against."""
    check_problem(prior, likelihood)
    if not prior.gaussian:
        kind = (
            "latent-Gaussian (its field is a nonlinear map of a Gaussian state)"
            if prior.latent_gaussian
            else "learned"
        )
        advice = (
            "method='map', 'pcn' or 'smc'"
            if prior.latent_gaussian
            else "method='smc' or a guided method ('tmpd', 'pigdm', 'dps')"
        )
        raise ValueError(
            f"the exact posterior needs a Gaussian prior (matern_prior, grf_prior); {prior.name!r} is "
            f"{kind}: use {advice}"
        )
    forward_w, y_w = _whitened_linear(likelihood)
    t0 = time.perf_counter()
    post = gaussian_posterior(
        prior.offset,
        prior.sqrt,
        forward_w,
        y_w,
        noise_std=1.0,
        z_shape=prior.z_shape,
        prior_variance=prior._closed_form_variance(),
    )
    samples = jax.block_until_ready(post.sample(key, num_samples))
    seconds = (time.perf_counter() - t0) / num_samples
    return FieldPosterior(
        samples,
        post.mean,
        post.std,
        "bayes",
        float(seconds),
        0.0,
        {"log_evidence": float(post.log_evidence), "prior_std": post.prior_std},
    )


@eqx.filter_jit
def _map_run(prior, likelihood, steps):
    """L-BFGS on the MAP objective (compiled once per problem structure; data are arguments)."""
    from ..mcmc import lbfgs_minimise

    def objective(z):
        return 0.5 * jnp.sum(z**2) + likelihood.energy(prior.from_noise(z))

    return lbfgs_minimise(objective, jnp.zeros(prior.z_shape, jnp.float64), steps)


def map_posterior(
    prior: Prior, likelihood: GaussianLikelihood, *, steps: int = 2000
) -> FieldPosterior:
    """The MAP estimate under a Gaussian prior, as a one-sample posterior.

    The MAP estimate under a Gaussian prior: ``argmin 0.5 ||z||^2 + 0.5 ||W (y - G(F(z)))||^2`` by
    L-BFGS (optax) in white-noise coordinates (``F = prior.from_noise``: ``m + L z``, or its
    elementwise ``transform`` for a latent-Gaussian prior such as :func:`threshold_prior`); any
    differentiable forward map (a nonlinear PDE solve differentiates by adjoint solves). A point
    estimate: one sample, zero spread."""
    check_problem(prior, likelihood)
    if not prior.latent_gaussian:
        raise ValueError(
            f"MAP needs a Gaussian or latent-Gaussian prior (matern_prior, grf_prior, "
            f"threshold_prior); {prior.name!r} is learned"
        )
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"map: steps must be a positive int, got {steps!r}")

    t0 = time.perf_counter()
    z, values = _map_run(prior, likelihood, steps)
    z = jax.block_until_ready(z)
    seconds = time.perf_counter() - t0
    if not bool(jnp.all(jnp.isfinite(z))):
        raise FloatingPointError("map: the optimisation diverged (non-finite estimate)")
    a = prior.from_noise(z)
    return FieldPosterior(
        a[None], a, jnp.zeros_like(a), "map", float(seconds), 0.0, {"objective": np.asarray(values)}
    )


def field_metrics(
    post: FieldPosterior, truth, *, likelihood: GaussianLikelihood | None = None, level: float = 0.9
) -> dict:
    """Accuracy and calibration of a field posterior against the truth.

    ``rel_l2`` of the posterior mean, ``coverage90`` of the central ``level`` interval (``nan`` for a
    point estimate), ``data_misfit`` (RMS whitened residual of the mean: about 1 at the noise
    level) and ``seconds_per_sample``."""
    truth = jnp.asarray(truth)
    if truth.shape != post.mean.shape:
        raise ValueError(f"truth must have shape {post.mean.shape}, got {truth.shape}")
    out = {
        "method": post.method,
        "rel_l2": float(relative_l2(post.mean, truth)),
        "coverage90": (
            float("nan")
            if post.method == "map"
            else float(
                credible_interval_coverage(post.mean, interval_std(post, level), truth, level)
            )
        ),
        "seconds_per_sample": post.seconds_per_sample,
        "num_samples": int(post.samples.shape[0]),
    }
    if likelihood is not None:
        out["data_misfit"] = likelihood.misfit(post.mean)
    return out
