"""Reverse-time samplers driven by a score function ``score_fn(x, t)`` for one example.

Every sampler has the signature ``sampler(score_fn, sde, shape, *, key, num_steps, ...)`` and
returns one sample of shape ``shape`` (use :func:`sample` for batches). Because the score is
an argument, guided scores (e.g. from :mod:`pdegen.inverse`) plug in unchanged. Samplers
integrate from ``sde.t_max`` to ``sde.t_min`` (on ``sde.time_grid``) and target ``p_{t_min}``; pass
``denoise_final=True`` to return the Tweedie estimate ``E[x0 | x_{t_min}]`` instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import Array

from .._errors import as_count, as_key
from ._distributed import batch_sharding, make_mesh, replicate
from ._flow import flow_ode
from ._interpolants import AbstractInterpolant
from ._sde import AbstractSDE

ScoreFn = Callable[[Array, Array], Array]


def _start(sde: AbstractSDE, shape, key, x_init, dtype):
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if x_init is not None:
        x_init = jnp.asarray(x_init, dtype)
        if x_init.shape != tuple(shape):
            raise ValueError(f"x_init has shape {x_init.shape}, expected shape={tuple(shape)}")
        return x_init, dtype
    return sde.prior_sample(tuple(shape), key=key, dtype=dtype), dtype


def _check_steps(num_steps, name="num_steps"):
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`{name}` must be a positive int, got {num_steps!r}")


def _check_reverse_sde(sde, name):
    """Stochastic samplers of the reverse SDE need a process whose SDE is regular on its grid."""
    if isinstance(sde, AbstractInterpolant):
        raise ValueError(
            f"{name} integrates the reverse SDE, which for the flow interpolant {type(sde).__name__} "
            f"is singular at t = 1 (drift f = alpha'/alpha and g^2 blow up as alpha -> 0) and unstable "
            f"on its time grid; sample a flow with an ODE sampler: 'flow_ode', 'probability_flow', "
            f"'edm_heun' or 'ddim'"
        )


def _finish(score_fn, sde, x, t, denoise_final):
    return sde.tweedie_denoiser(score_fn, x, t) if denoise_final else x


def euler_maruyama(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int = 500,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> Array:
    """Euler–Maruyama on the reverse SDE ``dx = [f x - g^2 score] dt + g dW``, on ``sde.time_grid``."""
    _check_reverse_sde(sde, "euler_maruyama")
    _check_steps(num_steps)
    init_key, key = jr.split(key)
    x, dtype = _start(sde, shape, init_key, x_init, dtype)
    ts = sde.time_grid(num_steps, dtype)

    def body(x, inputs):
        t, t_next, k = inputs
        dt = t_next - t
        drift = sde.reverse_drift(score_fn, x, t)
        noise = jr.normal(k, x.shape, dtype)
        return x + drift * dt + sde.diffusion(t) * jnp.sqrt(-dt) * noise, None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], jr.split(key, num_steps)))
    return _finish(score_fn, sde, x, ts[-1], denoise_final)


def predictor_corrector(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int = 500,
    corrector_steps: int = 1,
    snr: float = 0.16,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> Array:
    """Euler–Maruyama predictor + Langevin corrector (Song et al. 2021, Algorithms 2-3).

    The corrector step size is ``2 r (snr sigma(t'))^2`` with ``r = alpha(t')^2/alpha(t)^2``:
    Song et al.'s rule ``2 r (snr |z| / |score|)^2`` with the norm ratio replaced by its typical
    value ``sigma(t')``, which keeps the step bounded for a single low-dimensional example.
    """
    _check_reverse_sde(sde, "predictor_corrector")
    _check_steps(num_steps)
    if corrector_steps < 0:
        raise ValueError(f"`corrector_steps` must be >= 0, got {corrector_steps}")
    init_key, key = jr.split(key)
    x, dtype = _start(sde, shape, init_key, x_init, dtype)
    ts = sde.time_grid(num_steps, dtype)

    def corrector(x, inputs):
        t, step, k = inputs
        z = jr.normal(k, x.shape, dtype)
        return x + step * score_fn(x, t) + jnp.sqrt(2.0 * step) * z, None

    def body(x, inputs):
        t, t_next, k = inputs
        pk, ck = jr.split(k)
        dt = t_next - t
        x = (
            x
            + sde.reverse_drift(score_fn, x, t) * dt
            + sde.diffusion(t) * jnp.sqrt(-dt) * jr.normal(pk, x.shape, dtype)
        )
        ratio = (sde.alpha(t_next) / sde.alpha(t)).astype(dtype) ** 2
        step = 2.0 * ratio * (snr * sde.sigma(t_next).astype(dtype)) ** 2
        if corrector_steps:
            n = corrector_steps
            x, _ = jax.lax.scan(
                corrector, x, (jnp.full((n,), t_next), jnp.full((n,), step), jr.split(ck, n))
            )
        return x, None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], jr.split(key, num_steps)))
    return _finish(score_fn, sde, x, ts[-1], denoise_final)


def probability_flow(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: diffrax.AbstractSolver | None = None,
    max_steps: int = 4096,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> Array:
    """Probability-flow ODE ``dx/dt = f x - g^2 score / 2`` solved with diffrax.

    ``num_steps=None``: adaptive ``Tsit5`` with tolerances ``rtol``/``atol``; otherwise a fixed
    grid ``sde.time_grid(num_steps)`` of ``solver`` (default ``Heun``). ``key`` draws the prior only.
    """
    init_key, _ = jr.split(key)
    x, dtype = _start(sde, shape, init_key, x_init, dtype)
    term = diffrax.ODETerm(
        lambda t, y, args: sde.reverse_drift(score_fn, y, t, probability_flow=True)
    )
    t0 = jnp.asarray(sde.t_max, dtype)
    t1 = jnp.asarray(sde.t_min, dtype)
    if num_steps is None:
        solver = diffrax.Tsit5() if solver is None else solver
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100
    else:
        _check_steps(num_steps)
        solver = diffrax.Heun() if solver is None else solver
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
    return _finish(score_fn, sde, sol.ys[-1], t1, denoise_final)


def ddim(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int = 100,
    eta: float = 0.0,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> Array:
    """DDIM (Song, Meng, Ermon 2021) for any SDE, written for ``x / alpha`` with noise ``s = sigma/alpha``.

    ``x'/alpha' = D + sqrt(s'^2 - c^2) eps_hat + c z``, ``c = eta s' sqrt(1 - s'^2/s^2)``;
    ``eta=0`` is deterministic, ``eta=1`` the DDPM ancestral sampler.
    """
    _check_steps(num_steps)
    init_key, key = jr.split(key)
    x, dtype = _start(sde, shape, init_key, x_init, dtype)
    ts = sde.time_grid(num_steps, dtype)

    def body(x, inputs):
        t, t_next, k = inputs
        s, s_next = sde.scaled_sigma(t).astype(dtype), sde.scaled_sigma(t_next).astype(dtype)
        denoised = sde.tweedie_denoiser(score_fn, x, t)
        eps = (x / sde.alpha(t).astype(dtype) - denoised) / s
        c = eta * s_next * jnp.sqrt(jnp.maximum(1.0 - (s_next / s) ** 2, 0.0))
        x_scaled = denoised + jnp.sqrt(s_next**2 - c**2) * eps + c * jr.normal(k, x.shape, dtype)
        return sde.alpha(t_next).astype(dtype) * x_scaled, None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], jr.split(key, num_steps)))
    return _finish(score_fn, sde, x, ts[-1], denoise_final)


def edm_noise_levels(
    sde: AbstractSDE, num_steps: int, rho: float = 7.0, dtype: Any = None
) -> Array:
    """Karras et al. noise levels ``s_0 > ... > s_N`` of ``x/alpha`` from ``t_max`` to ``t_min``."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    s_max = sde.scaled_sigma(jnp.asarray(sde.t_max, dtype))
    s_min = sde.scaled_sigma(jnp.asarray(sde.t_min, dtype))
    frac = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
    return (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


def edm_heun(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int = 18,
    rho: float = 7.0,
    s_churn: float = 0.0,
    x_init: Array | None = None,
    denoise_final: bool = False,
    dtype: Any = None,
) -> Array:
    """EDM Heun sampler (Karras et al. 2022, Algorithm 2) on ``x/alpha`` for any SDE.

    Deterministic for ``s_churn=0`` (2 score evaluations per step); ``s_churn > 0`` adds noise.
    """
    _check_steps(num_steps)
    init_key, key = jr.split(key)
    x, dtype = _start(sde, shape, init_key, x_init, dtype)
    levels = edm_noise_levels(sde, num_steps, rho, dtype)
    gamma = min(s_churn / num_steps, 2**0.5 - 1)

    def slope(y, s):
        t = sde.time_from_scaled_sigma(s).astype(dtype)
        alpha = sde.alpha(t).astype(dtype)
        return (y - sde.tweedie_denoiser(score_fn, alpha * y, t)) / s

    def body(y, inputs):
        s, s_next, k = inputs
        s_hat = s * (1.0 + gamma)
        if gamma > 0:
            y = y + jnp.sqrt(s_hat**2 - s**2) * jr.normal(k, y.shape, dtype)
        d = slope(y, s_hat)
        y_euler = y + (s_next - s_hat) * d
        return y + (s_next - s_hat) * 0.5 * (d + slope(y_euler, s_next)), None

    y = x / sde.alpha(jnp.asarray(sde.t_max, dtype)).astype(dtype)
    y, _ = jax.lax.scan(body, y, (levels[:-1], levels[1:], jr.split(key, num_steps)))
    t_end = jnp.asarray(sde.t_min, dtype)
    x = sde.alpha(t_end).astype(dtype) * y
    return _finish(score_fn, sde, x, t_end, denoise_final)


SAMPLERS: dict[str, Callable[..., Array]] = {
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "probability_flow": probability_flow,
    "ddim": ddim,
    "edm_heun": edm_heun,
    "flow_ode": flow_ode,
}
"""The reverse-time samplers by name.

The ``method=`` of :func:`sample` and the ``pdegen sample --method`` choices.
"""


def sampler_function(sampler: str | Callable[..., Array], where: str = "sampler") -> Callable:
    """The sampler function of a name in :data:`SAMPLERS`, or ``sampler`` itself if it is one.

    A sampler function has the samplers' signature, e.g. ``functools.partial(edm_heun, rho=12.0)``.
    ``where`` names the argument in the error raised for anything else."""
    if callable(sampler):
        return sampler
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(
            f"{where}: unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)} or pass a "
            f"sampler function"
        )
    return SAMPLERS[sampler]


def recommended_sampler(metadata: dict) -> Callable[..., Array]:
    """The sampler a checkpoint's metadata recommends, as one sampler function.

    ``metadata["recommended_sampler"]`` holds a method name and its options; EDM-Heun with its
    defaults where none is recorded. Options given at the call (e.g. ``num_steps``) override the
    recorded ones."""
    options = dict(metadata.get("recommended_sampler") or {})
    method = options.pop("method", "edm_heun")
    try:
        return _sampler_with(method, tuple(sorted(options.items())))
    except TypeError:  # an option value that cannot be hashed: a fresh function object
        return _sampler_with.__wrapped__(method, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=32)
def _sampler_with(method: str, options: tuple) -> Callable[..., Array]:
    """One function object per (method, options): compiled samplers keyed on it are reused."""
    run = sampler_function(method, "recommended_sampler")
    return functools.partial(run, **dict(options)) if options else run


def default_sampler(sde) -> str:
    """The guided samplers' default for a process: ``"flow_ode"`` for a flow, else Euler-Maruyama.

    ``"flow_ode"`` for a flow interpolant (its reverse SDE is singular at ``t = 1``),
    ``"euler_maruyama"`` for a diffusion SDE: the name in :data:`SAMPLERS` that
    :func:`pdegen.inverse.sample_posterior` uses when no ``sampler`` is given."""
    return "flow_ode" if isinstance(sde, AbstractInterpolant) else "euler_maruyama"


# On CPUs a batch of about this many numbers (32 fields of 2 x 32 x 32) keeps a network's
# activations in the caches: sampling a joint prior with 256 fields of 2 x 32 x 32 ran 1.9x faster
# in batches of 32 than in one batch (one core), 2 x 64 x 64 fields 1.4x faster in batches of 4.
_CPU_BATCH_NUMBERS = 2**16


def _default_batch_size(mesh, shape: tuple[int, ...]) -> int | None:
    """One batch on accelerators; on CPUs, batches of about ``_CPU_BATCH_NUMBERS`` numbers."""
    if any(d.platform != "cpu" for d in mesh.devices.flat):
        return None
    return max(1, _CPU_BATCH_NUMBERS // max(1, math.prod(shape)))


@eqx.filter_jit
def _batched(score_fn, sde, shape, keys, sampler, options):
    return jax.vmap(lambda k: sampler(score_fn, sde, shape, key=k, **options))(keys)


def sample(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    num_samples: int,
    *,
    key: Array,
    method: str | Callable[..., Array] = "euler_maruyama",
    mesh=None,
    batch_size: int | None = None,
    progress: bool = False,
    **options,
) -> Array:
    """``num_samples`` independent samples ``(num_samples, *shape)``, one key each.

    ``method`` names a sampler in ``SAMPLERS`` or is a sampler function; ``options`` go to it.
    The batch is sharded over the devices of ``mesh`` (default: all devices). ``batch_size``
    splits the work into batches of that size (rounded up to a multiple of the device count),
    compiled once; sample ``i`` is the same whatever the batching. Default: one batch on
    accelerators; on CPUs, batches of about 65,536 numbers (32 fields of 2 x 32 x 32), which
    keep the activations in the caches (1.4-2x faster than one batch of 64-256 fields).
    ``progress=True`` shows a progress bar (tqdm) over the batches.
    """
    method = sampler_function(method, "sample(method=...)")
    num_samples = as_count(num_samples, "sample(num_samples=...)")
    key = as_key(key, "sample(key=...)")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(
            f"sample(batch_size=...) must be a positive int or None, got {batch_size!r}"
        )
    mesh = make_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    shape = tuple(int(s) for s in shape)
    if batch_size is None:
        batch_size = _default_batch_size(mesh, shape)
    size = num_samples if batch_size is None else min(batch_size, num_samples)
    size = -(-size // n_dev) * n_dev
    keys = jr.split(key, num_samples)  # key i does not depend on num_samples' padding or batching
    score_fn = replicate(score_fn, mesh)  # arrays held by the score (e.g. network weights)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_samples, desc="sample", unit="sample", dynamic_ncols=True)
    outs = []
    try:
        for start in range(0, num_samples, size):
            chunk = keys[start : start + size]
            m = chunk.shape[0]
            if (
                m < size
            ):  # pad the last batch (results dropped) so that one compiled program serves all
                chunk = jnp.concatenate([chunk, jnp.repeat(chunk[:1], size - m, axis=0)])
            chunk = jax.device_put(chunk, batch_sharding(mesh))
            out = _batched(score_fn, sde, shape, chunk, method, options)
            outs.append(out[:m])
            if bar is not None:
                jax.block_until_ready(outs[-1])
                bar.update(m)
    finally:
        if bar is not None:
            bar.close()
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs)


def sample_model(
    model,
    num_samples: int,
    *,
    key: Array,
    method: str | Callable[..., Array] = "edm_heun",
    mesh=None,
    dtype: Any = "float32",
    batch_size: int | None = None,
    progress: bool = False,
    **options,
) -> Array:
    """Samples in physical units ``(num_samples, *model.data_shape)`` from a :class:`DiffusionModel`.

    ``batch_size`` and ``progress`` as in :func:`sample`; ``options`` go to the sampler.
    """
    x = sample(
        model,
        model.sde,
        model.data_shape,
        num_samples,
        key=key,
        method=method,
        mesh=mesh,
        dtype=dtype,
        batch_size=batch_size,
        progress=progress,
        **options,
    )
    return jax.vmap(model.normalisation.unnormalise)(x)
