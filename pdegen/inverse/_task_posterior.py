"""Posterior sampling on the benchmark tasks: the joint field ``(a, u)`` from a grid prior.

Two ways for the physics to enter (the ``route``):

- ``"solve"``: the prior is over the coefficient ``a`` (a one-channel prior, or channel ``a`` of a
  joint prior); the data are predicted through the FEM solve, ``y = H solve(a) + e``. This is the
  general path (:func:`pdegen.inverse.sample_posterior` with the task's (prior, likelihood) pair,
  :func:`task_problem`); ``u = solve(a)`` is added to every sample.
- ``"joint"``: the prior is over the pair ``(a, u)``; the data see one channel and the PDE enters
  as an energy of the denoised estimate (physics guidance, switched on for the last part of
  sampling), or through the DiffusionPDE recipe.

Methods: ``"dps"``, ``"pigdm"``, ``"tmpd"`` (full), ``"tmpd-cached"``, ``"tmpd-diagonal"``, ``"tmpd-rowsum"``,
``"statfem"`` / ``"statfem-pigdm"`` (TMPD / PiGDM under the model-error-aware statFEM likelihood
``y = rho H u + d + e``, :class:`StatFEMLikelihood`), ``"diffusionpde"`` (DPS-type observation misfit
plus the PDE residual in the last 20% of the steps), ``"unguided"`` (prior samples), ``"map"`` (MAP
under the GRF prior, :func:`map_estimate`), ``"mcmc"`` / ``"pcn"`` (long-run MCMC under the GRF prior,
the reference where no closed form exists: :class:`MCMC`), ``"smc"`` / ``"smc-tmpd"`` (twisted sequential Monte Carlo
with the PiGDM / TMPD twist, route ``solve``, ``num_particles`` particles; :class:`SMC`) and
``"bayes"``: the exact Gaussian posterior under the true GRF prior (linear PDEs only), the
Bayes-optimal floor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem
from pdegen._errors import as_count, as_key
from pdegen.models import SAMPLERS as MODEL_SAMPLERS
from pdegen.models import AbstractSDE, default_sampler, sampler_function

from ._field_posterior import observed_prior_variance, sample_field_posterior, sample_in_batches
from ._field_prior import (
    CHANNELS,
    ROUTES,
    FieldPrior,
    as_mesh_prior,
    check_prior_fits,
    prior_at_grid,
)
from ._guidance import StatFEMLikelihood, tweedie_mean
from ._methods import (
    DPS,
    FIELD_METHODS,
    MAP,
    SMC,
    TMPD,
    GuidanceProblem,
    Method,
    PiGDM,
    Unguided,
    step_weight,
)
from ._metrics import summarise
from ._operators import channel_rms, noise_floor, solution_operator, solve_columns
from ._priors import Prior
from ._projection import normalised_solve, pde_projection
from ._results import Posterior
from ._task_exact import bayes_posterior, default_likelihood
from ._task_problem import task_likelihood
from ._tasks import InverseTask

POSTERIOR_METHODS = (
    "bayes",
    "map",
    "mcmc",
    "pcn",
    "tmpd",
    "tmpd-diagonal",
    "tmpd-rowsum",
    "tmpd-cached",
    "statfem",
    "statfem-pigdm",
    "dps",
    "pigdm",
    "pigdm-matched",
    "diffusionpde",
    "unguided",
    "smc",
    "smc-tmpd",
)
"""The method names of the benchmark-task route.

The ``method=`` names of :func:`sample_task_posterior` (and ``pdegen invert --method``).
"""
METHODS = POSTERIOR_METHODS
STATFEM_METHODS = ("statfem", "statfem-pigdm")
SAMPLERS = tuple(MODEL_SAMPLERS)
SMC_METHODS = ("smc", "smc-tmpd")


def _method_object(
    method: str, *, scale: float, data_variance: float | None, num_particles: int = 64
):
    """The :mod:`pdegen.inverse` method object of a task-mode method name (statFEM methods are
    TMPD / PiGDM; the likelihood carries the model error)."""
    if method in SMC_METHODS:
        proposal = PiGDM(data_variance) if method == "smc" else TMPD()
        return SMC(proposal, num_particles=num_particles)
    return {
        "tmpd": TMPD(),
        "tmpd-diagonal": TMPD("diagonal"),
        "tmpd-rowsum": TMPD("rowsum"),
        "tmpd-cached": TMPD("cached"),
        "statfem": TMPD(),
        "pigdm": PiGDM(data_variance),
        "pigdm-matched": PiGDM(data_variance, matched=True),
        "statfem-pigdm": PiGDM(data_variance),
        "dps": DPS(float(scale)),
        # on the solve route the PDE is exact: DPS, with the recipe's step rule
        "diffusionpde": DPS(float(scale), step="normalised"),
        "unguided": Unguided(),
    }[method]


def _solve_batch(task: InverseTask, a):
    if task.linear:
        flat = np.asarray(a, np.float64).reshape(a.shape[0], -1)
        return jnp.asarray(solve_columns(task.physics, flat.T).T).reshape(a.shape)
    return jnp.stack([task.solve(ai) for ai in a])


def _solve_route(
    prior: FieldPrior,
    task: InverseTask,
    method: str,
    y,
    likelihood,
    *,
    key,
    num_samples,
    num_steps,
    sampler,
    scale,
    batch_size,
    data_variance,
    progress,
    num_particles=64,
    method_object=None,
) -> Posterior:
    field_prior = as_mesh_prior(prior, task)
    model_error = likelihood if method in STATFEM_METHODS else None
    lik = task_likelihood(task, y=y, model_error=model_error)
    if method_object is None:
        method_object = _method_object(
            method, scale=scale, data_variance=data_variance, num_particles=num_particles
        )
    post = sample_field_posterior(
        field_prior,
        lik,
        method=method_object,
        key=key,
        num_samples=num_samples,
        num_steps=num_steps,
        sampler=sampler,
        batch_size=batch_size,
        progress=progress,
        data_scale=channel_rms(task.pde, task.grid, task.observed),
    )
    a = task.mesh.to_image(post.samples)
    samples = jnp.stack([a, _solve_batch(task, a)], axis=1)
    mean = samples.mean(0)
    std = samples.std(0, ddof=1) if num_samples > 1 else jnp.zeros(samples.shape[1:])
    info = {"steady_state_timing": not np.isnan(post.compile_seconds), **post.info}
    if "particles" in info:  # SMC: the weighted estimates over all particles
        a_all = task.mesh.to_image(info.pop("particles"))
        w = jnp.asarray(info.pop("weights"))
        joint = jnp.stack([a_all, _solve_batch(task, a_all)], axis=1)
        mean = jnp.tensordot(w, joint, 1)
        var = jnp.tensordot(w, (joint - mean[None]) ** 2, 1) / max(1.0 - float(w @ w), 1e-12)
        std = jnp.sqrt(jnp.maximum(var, 0.0))
    return Posterior(
        samples,
        mean,
        std,
        method,
        "solve",
        post.seconds_per_sample,
        post.compile_seconds,
        info,
    )


# ------------------------------------------------------------------------------ joint route
@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about a joint-route sampler (hashable: compiled code is reused across draws)."""

    method: str
    sampler: str | Callable
    num_steps: int
    shape: tuple
    dtype: str
    noise_std: float
    scale: float
    physics_weight: float
    physics_start: float
    physics: Any  # fem.PDETask (shared by the draws of a family)
    mean: tuple
    std: tuple
    residual_lambda: float = 1.0
    physics_precondition: tuple = (1.0, 1.0)
    data_variance: float = 1.0
    correction: bool = False


def _residual_function(physics, mean, std):
    """``x0 (normalised joint field) -> R(a, u)``: the FEM weak residual (constrained rows hold ``u - g``)."""
    mesh = physics.mesh
    m = jnp.asarray(mean, jnp.float64).reshape(-1, 1, 1)
    s = jnp.asarray(std, jnp.float64).reshape(-1, 1, 1)

    def residual(x0):
        phys = x0.astype(jnp.float64) * s + m
        r, _ = physics.parameter.residual_vector(
            mesh.from_image(phys[0]), mesh.from_image(phys[1]), smooth=True
        )
        return r.real if jnp.iscomplexobj(r) else r

    return residual


@functools.lru_cache(maxsize=32)
def residual_curvature(
    physics: fem.PDETask, mean: tuple, std: tuple, iterations: int = 30
) -> float:
    """Largest eigenvalue of ``J^T J`` (``J`` the Jacobian of the residual in normalised units, at the
    channel means) by power iteration: it makes the physics energy's step size grid-independent."""
    residual = _residual_function(physics, mean, std)
    shape = (2, physics.grid, physics.grid)
    x0 = jnp.zeros(shape)
    _, jvp = jax.linearize(residual, x0)
    vjp = jax.linear_transpose(jvp, x0)
    v = jax.random.normal(jax.random.key(0), shape)
    normal = jax.jit(lambda v: vjp(jvp(v))[0])
    lam = 1.0
    for _ in range(iterations):
        w = normal(v)
        lam = float(jnp.linalg.norm(w))
        v = w / lam
    return lam


@functools.lru_cache(maxsize=32)
def physics_preconditioner(
    physics: fem.PDETask, mean: tuple, std: tuple, iterations: int = 30
) -> tuple:
    """Per-channel step sizes ``(p_a, p_u)`` for the gradient of ``E = 0.5 ||u - solve(a)||^2`` (normalised units).

    With ``B = (std_a / std_u) d solve / d a`` the gradient is ``(-B^T e, e)``; scaled by
    ``p_a = 1 / (2 ||B||^2)`` and ``p_u = 1/2`` the largest curvature of the step is exactly 1
    (``p_a ||B||^2 + p_u``), so guidance weights below 2 are stable on every task and grid, while ``u``
    is still pulled at half the full rate (one global scale ``1 / (1 + ||B||^2)`` would slow it down
    by ``||B||^2``, about 14 for the 32x32 Poisson prior). ``||B||`` by power iteration (nonlinear
    maps: at the channel means, forward products by finite differences)."""
    ratio = std[0] / std[1]
    g = physics.grid
    if physics.parameter.linear:
        S = solution_operator(physics)
        matvec = lambda v: S @ v  # noqa: E731
        rmatvec = lambda w: S.T @ w  # noqa: E731
    else:
        mesh = physics.mesh

        def solve(a_img):
            return physics.parameter.solve(mesh.from_image(a_img))

        a0 = jnp.full((g, g), mean[0], jnp.float64)
        u0, vjp = jax.vjp(solve, a0)
        eps = 1e-6 * max(abs(mean[0]), 1.0)
        matvec = lambda v: np.asarray((solve(a0 + eps * jnp.asarray(v).reshape(g, g)) - u0) / eps)  # noqa: E731
        rmatvec = lambda w: np.asarray(vjp(jnp.asarray(w))[0]).reshape(-1)  # noqa: E731
    v = np.random.default_rng(0).standard_normal(g * g)
    v /= np.linalg.norm(v)
    sigma2 = 0.0
    for _ in range(iterations):
        w = rmatvec(matvec(v))
        sigma2 = float(np.linalg.norm(w))
        v = w / sigma2
    b2 = max(ratio**2 * sigma2, 1e-12)
    return (0.5 / b2, 0.5)


def _residual_energy(spec: _Spec):
    """The DiffusionPDE recipe's PDE term: ``zeta_pde`` times the FEM residual energy
    ``0.5 ||R(D(x))||^2 / lambda`` of the Tweedie mean, in the last steps only."""
    residual = _residual_function(spec.physics, spec.mean, spec.std)

    def energy(m, t):
        w = jnp.where(t <= spec.physics_start, spec.physics_weight, 0.0)
        return w * (0.5 * jnp.sum(residual(m) ** 2) / spec.residual_lambda)

    return energy


def _with_physics(guided, score, sde, spec: _Spec, S):
    """Add physics-residual guidance: the gradient of ``0.5 ||u - solve(a)||^2`` (the FEM residual
    preconditioned by the FEM operator; ``S`` the dense solution operator of a linear PDE, else the
    solve) of the Tweedie estimate, scaled per channel by :func:`physics_preconditioner`; an x-step of
    ``physics_weight`` times it per sampler step, in the last ``physics_fraction`` of the steps."""
    step = step_weight(sde, spec.num_steps)
    pre = np.asarray(spec.physics_precondition, np.float64).reshape(-1, 1, 1)  # (a, u) channels
    forward = normalised_solve(spec.physics, spec.mean, spec.std, solution_operator=S)

    def energy(x0):
        x = x0.astype(jnp.float64)
        return 0.5 * jnp.sum((x[1] - forward(x[0])) ** 2)

    def guided_with_physics(x, t):
        g = jax.grad(lambda x_: energy(tweedie_mean(score, sde, x_, t)))(x)
        w = jnp.where(t <= spec.physics_start, spec.physics_weight * step(t), 0.0)
        return guided(x, t) - (w * jnp.asarray(pre, g.dtype) * g).astype(x.dtype)

    return guided_with_physics


def _joint_guided(score, sde, A, y, W, S, spec: _Spec):
    """The guided score of the joint route, built as a plain function of its inputs (inside ``jit``)."""
    if W is None:
        observe = lambda x: A @ x.reshape(-1)  # noqa: E731
        target, noise = y, spec.noise_std
    else:  # whitened statFEM likelihood: W (rho A x - y), unit noise
        observe = lambda x: W @ (A @ x.reshape(-1))  # noqa: E731
        target, noise = W @ y, jnp.asarray(1.0, y.dtype)
    problem = GuidanceProblem(
        score,
        sde,
        observe,
        target,
        noise,
        spec.data_variance,
        step_weight(sde, spec.num_steps),
        spec.shape,
    )
    if spec.method == "diffusionpde":  # DPS with the PDE residual in the same objective
        energy = _residual_energy(spec) if spec.physics_weight > 0 else None
        guided = DPS(spec.scale, step="normalised").guide(problem, energy=energy)
    else:
        guided = _method_object(spec.method, scale=spec.scale, data_variance=None).guide(problem)
        if spec.physics_weight > 0:
            guided = _with_physics(guided, score, sde, spec, S)
    if spec.correction:
        guided = _with_correction(guided, sde, spec, S)
    return guided


def _projection(spec: _Spec, S):
    return pde_projection(spec.physics, spec.mean, spec.std, solution_operator=S)


def _with_correction(guided, sde, spec: _Spec, S):
    """Physics correction: in the last ``physics_fraction`` of the steps the score is replaced by
    the one whose Tweedie estimate is the projection of the (guided) estimate onto the PDE's
    solution set (:func:`pde_projection`), so every step moves towards a consistent pair."""
    project = _projection(spec, S)

    def corrected(x, t):
        g = guided(x, t)

        def shift(g):
            d = sde.denoiser_from_score(x, t, g)
            return sde.score_from_denoiser(x, t, project(d)).astype(g.dtype)

        return jax.lax.cond(t <= spec.physics_start, shift, lambda g: g, g)

    return corrected


@eqx.filter_jit
def _sample_joint_batch(score, sde, A, y, W, S, keys, spec: _Spec):
    guided = _joint_guided(score, sde, A, y, W, S, spec)
    run = sampler_function(spec.sampler)
    dtype = jnp.dtype(spec.dtype)
    x = jax.vmap(
        lambda k: run(
            guided,
            sde,
            spec.shape,
            key=k,
            num_steps=spec.num_steps,
            dtype=dtype,
            denoise_final=False,  # the Tweedie estimate below is the final one
        )
    )(keys)
    t = jnp.asarray(sde.t_min, x.dtype)
    x0 = jax.vmap(lambda xi: sde.tweedie_denoiser(score, xi, t))(x)  # the prior's Tweedie estimate
    if spec.correction:
        x0 = jax.vmap(_projection(spec, S))(x0)
    return x0


def switch_time(sde: AbstractSDE, num_steps: int, fraction: float) -> float:
    """The time after which the last ``fraction`` of ``num_steps`` steps on the SDE's time grid are
    taken (the grid of the time-stepping samplers; EDM's samplers space noise levels by ``rho``)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"physics_fraction must lie in [0, 1], got {fraction}")
    ts = np.asarray(sde.time_grid(num_steps, jnp.float64))
    i = min(int(round((1.0 - fraction) * num_steps)), num_steps)
    return float(ts[i])


def _joint_observation(prior: FieldPrior, task: InverseTask):
    """Dense ``A`` (m, 2 g^2) and offset with ``y = A x_normalised + offset``: the observed channel at the sensors."""
    g2 = task.grid**2
    m = task.num_sensors
    c = task.observed_index
    A = np.zeros((m, len(prior.channels) * g2))
    A[np.arange(m), c * g2 + task.sensors] = prior.std[c]
    return A, np.full(m, prior.mean[c])


def _joint_data_variance(prior: FieldPrior, A_n, *, sampler, num_steps) -> float:
    """PiGDM's data variance along the rows of ``A_n`` (normalised joint state), from prior
    samples drawn with a fixed key, so they are reused for the prior's next data set."""
    as_prior = Prior(
        prior.score, prior.sde, jnp.zeros(1), 1.0, None, prior.data_shape, 0, dtype=prior.dtype
    )
    An = jnp.asarray(A_n, jnp.dtype(prior.dtype))
    return observed_prior_variance(
        as_prior,
        lambda x: An @ x.reshape(-1),
        prior.data_shape,
        sampler=sampler,
        num_steps=num_steps,
    )


def _joint_route(
    prior: FieldPrior,
    task: InverseTask,
    method: str,
    y,
    likelihood,
    *,
    key,
    num_samples,
    num_steps,
    sampler,
    scale,
    physics_weight,
    physics_fraction,
    project,
    correction,
    batch_size,
    data_variance,
    progress,
) -> Posterior:
    dtype = prior.dtype
    obs_scale = channel_rms(task.pde, task.grid, task.observed)  # guidance steps are unit-free
    A, offset = _joint_observation(prior, task)
    rho, W = 1.0, None
    if method in STATFEM_METHODS:
        rho = float(likelihood.rho)
        W = jnp.asarray(likelihood.whitener(task.points, scale=obs_scale), jnp.dtype(dtype))
    A_n = rho * A / obs_scale
    if data_variance is None and method in ("pigdm", "statfem-pigdm"):
        key, _ = jax.random.split(key)  # (the sampler's keys as before)
        data_variance = _joint_data_variance(
            prior,
            A_n if W is None else np.asarray(W, np.float64) @ A_n,
            sampler=sampler,
            num_steps=num_steps,
        )
    mean, std = tuple(float(v) for v in prior.mean), tuple(float(v) for v in prior.std)
    spec = _Spec(
        method=method,
        sampler=sampler,
        num_steps=num_steps,
        shape=prior.data_shape,
        dtype=dtype,
        noise_std=noise_floor(task) / obs_scale,
        scale=float(scale),
        physics_weight=float(physics_weight),
        physics_start=switch_time(prior.sde, num_steps, physics_fraction),
        physics=task.physics,
        mean=mean,
        std=std,
        data_variance=1.0 if data_variance is None else float(data_variance),
        correction=bool(correction),
    )
    S = None
    if correction and task.linear:
        S = jnp.asarray(solution_operator(task.physics))
    if physics_weight > 0:
        spec = dataclasses.replace(
            spec,
            residual_lambda=residual_curvature(task.physics, mean, std),
            physics_precondition=physics_preconditioner(task.physics, mean, std),
        )
        if task.linear and method != "diffusionpde":
            S = jnp.asarray(solution_operator(task.physics))
    jd = jnp.dtype(dtype)
    A_j = jnp.asarray(A_n, jd)
    y_j = jnp.asarray((np.asarray(y) - rho * offset) / obs_scale, jd)
    run = lambda kb: _sample_joint_batch(prior.score, prior.sde, A_j, y_j, W, S, kb, spec)  # noqa: E731
    x, seconds_per_sample, compile_seconds = sample_in_batches(
        run, key, num_samples, batch_size, progress
    )
    if not np.all(np.isfinite(x)):
        hint = (
            "TMPD's covariance is the denoiser's Jacobian, which a learned joint prior need not "
            "make positive definite (the shipped joint priors' is indefinite at the sensors): use "
            "pigdm or dps on the joint route, or the solve route"
            if method.startswith(("tmpd", "statfem-tmpd"))
            else "lower physics_weight (stable below 2) or the observation step, or use more "
            "num_steps"
        )
        raise FloatingPointError(
            f"sample_posterior: {method} (joint route) produced non-finite fields; {hint}"
        )
    x = jnp.asarray(x)
    phys = jax.vmap(prior.to_physical)(x)
    a, u = phys[:, 0], phys[:, 1]
    info: dict = {"steady_state_timing": not np.isnan(compile_seconds)}
    if project:
        info["before_projection"] = summarise(jnp.stack([a, u], axis=1), task)
        u = _solve_batch(task, a)
    samples = jnp.stack([a, u], axis=1)
    mean_ = samples.mean(0)
    std_ = samples.std(0, ddof=1) if num_samples > 1 else jnp.zeros_like(mean_)
    return Posterior(
        samples,
        mean_,
        std_,
        method,
        "joint",
        float(seconds_per_sample),
        float(compile_seconds),
        info,
    )


def sample_task_posterior(
    prior: FieldPrior,
    task: InverseTask,
    *,
    method: str | Method = "tmpd",
    key,
    num_samples: int = 8,
    route: str | None = None,
    num_steps: int = 200,
    sampler: str | Callable | None = None,
    scale: float = 1.0,
    physics_weight: float | None = None,
    physics_fraction: float = 0.2,
    project: bool = False,
    correction: bool = False,
    batch_size: int | None = None,
    likelihood: StatFEMLikelihood | None = None,
    data_variance: float | None = None,
    progress=None,
    y=None,
    num_particles: int = 64,
) -> Posterior:
    """Posterior samples of the joint field ``(a, u)`` for a benchmark ``task`` under a grid ``prior``.

    Args:
        prior: a :class:`FieldPrior` on the task's grid, or a resolution-free one (``bayes`` and ``map`` use the GRF of an
            exact prior (:func:`gaussian_prior`), else the GRF the task's data were drawn from).
        task: an :class:`InverseTask` (its observations ``task.y`` unless ``y`` is given).
        method: one of ``METHODS``, or a method object (:class:`TMPD`, :class:`PiGDM`,
            :class:`DPS`, :class:`SMC`, :class:`MCMC`, :class:`MAP`, :class:`Exact`, ...) whose
            own fields set its options (``scale``, ``data_variance`` and ``num_particles`` are
            for names). A guidance object other than a name's default runs on the ``"solve"``
            route.
        key: PRNG key; sample ``i`` uses ``split(key, num_samples)[i]``.
        route: ``"solve"`` (the default, except ``diffusionpde`` with a joint prior) or ``"joint"``.
        num_steps, sampler: reverse-time sampler (a name in :data:`pdegen.models.SAMPLERS` or a
            sampler function such as ``models.recommended_sampler(metadata)``; default
            ``"flow_ode"`` for a flow prior, else ``"euler_maruyama"``) and its steps.
        scale: DPS's step (:class:`DPS`: the fraction of the excess misfit removed per step, stable
            below 2) / the DiffusionPDE recipe's ``zeta``.
        physics_weight: weight of the physics-residual energy (route ``joint``); default 0, and
            1 for ``diffusionpde``. ``physics_fraction``: it acts in the last fraction of the steps.
            Its gradient is preconditioned per channel (:func:`physics_preconditioner`), so the weight
            is a step size relative to the stiffest direction: stable below 2 with Euler-Maruyama.
        project: replace ``u`` by ``solve(a)`` in every sample (route ``joint``); the metrics before
            projection go to ``info``.
        correction: physics correction (route ``joint``): in the last ``physics_fraction`` of the
            steps, and on the final sample, the denoised estimate is replaced by the nearest pair
            that solves the PDE (:func:`pde_projection`: ``a`` moves by the least that makes the
            generated ``u`` consistent, in normalised units; ``u = solve(a)``). Every sample then
            satisfies the PDE to solver precision; ``physics_fraction=1`` lets observations of
            ``u`` inform ``a`` at every step.
        batch_size: samples per compiled batch (default: ``min(num_samples, 4)``).
        likelihood: the statFEM observation model of ``statfem`` / ``statfem-pigdm`` (and of
            ``bayes`` and ``map`` when given): a :class:`StatFEMLikelihood` in physical units
            (default :func:`default_likelihood`: the task's own discrepancy and noise level).
        data_variance: PiGDM's prior variance of the field along the observed directions
            (normalised units). Default: exact for Gaussian priors, estimated from 64 prior samples
            for learned ones (:func:`observed_prior_variance`).
        progress: a ``tqdm``-like object updated with the number of finished samples, or
            ``None`` / ``False`` for none (:func:`sample_posterior` also takes ``True``).
        num_particles: the particle count of ``smc`` / ``smc-tmpd`` (:class:`SMC`, route ``solve``);
            ``num_samples`` of its weighted particles are returned, mean and std are the weighted
            estimates over all of them, ``info["log_evidence"]`` the evidence estimate.
    """
    progress = None if progress is False else progress
    method_object = None
    if isinstance(method, Method):
        method_object, method = method, method.label
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or a method object, got {method!r}")
    num_samples = as_count(num_samples, "num_samples")
    key = as_key(key, "sample_posterior(key=...)")
    if method in SMC_METHODS:
        SMC(num_particles=num_particles)  # checks the particle count before any work
    y = task.y if y is None else task.check_observations(y)
    if likelihood is not None:
        likelihood = StatFEMLikelihood(*likelihood).check()
    elif method in STATFEM_METHODS:
        likelihood = default_likelihood(task)
    # the closed forms and the MCMC reference use the GRF of an exact prior, else the task data's
    grf = (
        dict(zip(("alpha", "tau"), prior.grf))
        if isinstance(prior, FieldPrior) and prior.grf
        else {}
    )
    if method in ("mcmc", "pcn"):
        if likelihood is not None:
            raise ValueError(
                f"{method}: runs under the task's Gaussian noise model; likelihood= (a statFEM "
                f"model error) is for 'bayes', 'map', 'statfem' and 'statfem-pigdm'"
            )
        from ._mcmc_reference import task_mcmc_posterior

        post = task_mcmc_posterior(
            task,
            method_object or FIELD_METHODS[method],
            key=key,
            num_samples=num_samples,
            y=y,
            **grf,
        )
        if progress is not None:
            progress.update(num_samples)
        return post
    if method in ("bayes", "map"):
        if method == "bayes":
            post = bayes_posterior(
                task, key=key, num_samples=num_samples, y=y, likelihood=likelihood, **grf
            )
        else:
            from ._map import map_posterior

            steps = method_object.steps if isinstance(method_object, MAP) else None
            post = map_posterior(task, y=y, likelihood=likelihood, steps=steps, **grf)
        if progress is not None:
            progress.update(num_samples)
        return post
    if route is None:
        route = (
            "joint" if tuple(prior.channels) == CHANNELS and method == "diffusionpde" else "solve"
        )
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if route != "solve" and method_object not in (None, FIELD_METHODS.get(method)):
        raise ValueError(
            f"method={method_object!r}: a method object with its own options runs on the 'solve' "
            f"route; on route={route!r} give its name {method!r} (with scale= / data_variance=)"
        )
    if method == "pigdm-matched" and route != "solve":
        raise ValueError(
            f"pigdm-matched: its variance table is computed on the 'solve' route only; use "
            f"'pigdm' on route={route!r}"
        )
    if method in SMC_METHODS and route != "solve":
        raise ValueError(
            f"{method}: sequential Monte Carlo runs on the 'solve' route only (a one-channel "
            f"prior over a, or channel a of a joint prior), got route={route!r}"
        )
    prior = prior_at_grid(prior, task.grid)
    check_prior_fits(prior, task, route)
    if sampler is None:
        sampler = default_sampler(prior.sde)
    sampler_function(sampler)  # a name in models.SAMPLERS or a sampler function
    num_steps = as_count(num_steps, "num_steps", 2)
    if physics_weight is None:
        physics_weight = 1.0 if method == "diffusionpde" else 0.0
    if physics_weight < 0:
        raise ValueError(f"physics_weight must be >= 0, got {physics_weight}")
    common = dict(
        key=key,
        num_samples=num_samples,
        num_steps=num_steps,
        sampler=sampler,
        scale=scale,
        batch_size=batch_size,
        data_variance=data_variance,
        progress=progress,
    )
    if route == "solve":
        return _solve_route(
            prior,
            task,
            method,
            y,
            likelihood,
            num_particles=num_particles,
            method_object=method_object,
            **common,
        )
    return _joint_route(
        prior,
        task,
        method,
        y,
        likelihood,
        physics_weight=physics_weight,
        physics_fraction=physics_fraction,
        project=project,
        correction=correction,
        **common,
    )
