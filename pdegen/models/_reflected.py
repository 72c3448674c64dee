"""Diffusion on a constraint set: reflected, Metropolis-corrected and mirrored samplers, reflected
denoising score matching, and an exact noised score for tests.

Every sampler here returns samples that lie in the domain exactly (to rounding), whatever the
score. The forward process is a VE-type noising (``alpha = 1``: :class:`VESDE`, :class:`EDMSDE`)
kept in the set ``K``:

- *reflected* (Lou & Ermon 2023; Fishman et al. 2023a): ``x_t`` is Brownian motion reflected at
  the boundary of ``K``; for a bounded ``K`` it tends to the uniform law on ``K`` once ``sigma(t)``
  exceeds ``K``'s width, where the reverse process starts. A reverse step is
  ``x' = R(x + d score(x, t) + sqrt(d) z)``, ``d = sigma(t)^2 - sigma(t')^2`` the noising's variance
  increment over the step (Euler-Maruyama's ``g^2 |dt|`` made exact for VE), ``R`` the domain's
  reflection;
- *Metropolis* (Fishman et al. 2023b): the same step, but a proposal outside ``K`` is rejected
  (``x' = x``); the rejected random walk has the reflected process as its limit, so the same
  score (the reflected marginals') serves both;
- *mirrored*: a standard diffusion on ``y = mirror(x)`` (the gradient of a barrier of ``K``),
  mapped back with ``mirror_inverse``, which lands in ``K`` by construction.

For a box the reflected transition density is known (the method of images,
:meth:`Box.heat_kernel_score`), so a network can be trained on data in ``K`` by reflected denoising
score matching (:func:`reflected_dsm_loss`, :func:`train_reflected`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import Array

from ._domains import AbstractDomain, Box
from ._model import DiffusionModel
from ._samplers import SAMPLERS, sample
from ._sde import EDMSDE, VESDE, AbstractSDE
from ._training import TrainConfig, make_optimizer

ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "reflected_euler_maruyama",
    "metropolis_euler_maruyama",
    "sample_constrained_domain",
    "sample_mirrored",
    "reflected_dsm_loss",
    "train_reflected",
    "TruncatedNormalScore",
]


def _check_sde(sde, caller):
    if not isinstance(sde, (VESDE, EDMSDE)):
        raise ValueError(
            f"{caller}: the constrained samplers need a variance-exploding process (VESDE or "
            f"EDMSDE), whose reflected noising tends to the uniform law on the set; got "
            f"{type(sde).__name__}"
        )


def _check_domain(domain, shape, caller):
    if not isinstance(domain, AbstractDomain):
        raise TypeError(
            f"{caller}(domain=...) must be a Box, Simplex or ConvexSet, got {type(domain).__name__}"
        )
    if tuple(shape) != domain.shape:
        raise ValueError(
            f"{caller}: shape={tuple(shape)} but the domain holds examples of shape {domain.shape}"
        )


def _start(domain, shape, key, x_init, dtype, caller):
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if x_init is None:
        return domain.uniform_sample(key=key, dtype=dtype), dtype
    x_init = jnp.asarray(x_init, dtype)
    if x_init.shape != tuple(shape):
        raise ValueError(f"{caller}: x_init has shape {x_init.shape}, expected {tuple(shape)}")
    if not isinstance(x_init, jax.core.Tracer):
        domain.check_point(x_init, "x_init")
    return x_init, dtype


def _check_steps(num_steps, corrector_steps):
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}")
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"`corrector_steps` must be an int >= 0, got {corrector_steps!r}")


def _constrained_em(
    score_fn, sde, domain, shape, key, num_steps, x_init, dtype, corrector_steps, snr, move, caller
):
    _check_sde(sde, caller)
    _check_domain(domain, shape, caller)
    _check_steps(num_steps, corrector_steps)
    init_key, key = jr.split(key)
    x, dtype = _start(domain, shape, init_key, x_init, dtype, caller)
    ts = sde.time_grid(num_steps, dtype)

    def corrector(x, inputs):
        t, step, k = inputs
        z = jr.normal(k, x.shape, dtype)
        proposal = x + domain.tangent(step * score_fn(x, t) + jnp.sqrt(2.0 * step) * z)
        return move(x, proposal), None

    def body(x, inputs):
        t, t_next, k = inputs
        pk, ck = jr.split(k)
        # the exact variance increment of the VE noising over the step (Song et al.'s reverse
        # diffusion predictor), where Euler-Maruyama's g(t)^2 |dt| overshoots on a geometric schedule
        var = (sde.sigma(t) ** 2 - sde.sigma(t_next) ** 2).astype(dtype)
        z = jr.normal(pk, x.shape, dtype)
        proposal = x + domain.tangent(var * score_fn(x, t) + jnp.sqrt(var) * z)
        x = move(x, proposal)
        if corrector_steps:
            n = corrector_steps
            step = 2.0 * (snr * sde.sigma(t_next).astype(dtype)) ** 2
            x, _ = jax.lax.scan(
                corrector, x, (jnp.full((n,), t_next), jnp.full((n,), step), jr.split(ck, n))
            )
        return x, None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], jr.split(key, num_steps)))
    return x


def reflected_euler_maruyama(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    domain: AbstractDomain,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int = 500,
    corrector_steps: int = 0,
    snr: float = 0.16,
    x_init: Array | None = None,
    dtype: Any = None,
) -> Array:
    """One sample in ``domain`` by reflected reverse Euler-Maruyama.

    Step: ``x' = R(x + T(d score(x, t) + sqrt(d) z))`` on ``sde.time_grid``, ``d = sigma(t)^2 -
    sigma(t')^2``, ``R`` =
    ``domain.reflect`` (the folding map of a box), ``T`` = ``domain.tangent``; ``corrector_steps``
    reflected Langevin steps of size ``2 (snr sigma(t'))^2`` after each step. Starts from
    ``domain.uniform_sample`` (the law of reflected noising once ``sigma(t_max)`` exceeds the set's
    width) or from ``x_init``, which must lie in the set.

    Args:
        score_fn: ``score(x, t)`` of the reflected marginals (same units as ``domain``).
        sde: a :class:`VESDE` or :class:`EDMSDE`.
        domain: the constraint set; ``shape`` must equal ``domain.shape``.
        key: PRNG key (keyword-only).

    Returns:
        One example of ``shape`` with ``domain.contains(x)`` true.

    Raises:
        ValueError: another SDE, a shape mismatch, bad step counts, ``x_init`` outside the set.
    """

    def move(x, proposal):
        return domain.reflect(proposal)

    return _constrained_em(
        score_fn,
        sde,
        domain,
        shape,
        key,
        num_steps,
        x_init,
        dtype,
        corrector_steps,
        snr,
        move,
        "reflected_euler_maruyama",
    )


def metropolis_euler_maruyama(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    domain: AbstractDomain,
    shape: tuple[int, ...],
    *,
    key: Array,
    num_steps: int = 500,
    corrector_steps: int = 0,
    snr: float = 0.16,
    x_init: Array | None = None,
    dtype: Any = None,
) -> Array:
    """One sample in ``domain`` by the Metropolis-corrected reverse sampler (Fishman et al. 2023b).

    The reflected sampler's proposal ``x + T(d score + sqrt(d) z)`` (then
    ``domain.restore``) is accepted if it lies in the set, else the chain stays at ``x``
    (``domain.metropolis_move``; a :class:`Box` accepts per entry, its factors being independent);
    the same for the ``corrector_steps`` Langevin steps. Needs only ``domain.contains`` (no projection), so
    it serves any :class:`ConvexSet`. Arguments, returns and errors as
    :func:`reflected_euler_maruyama`.
    """

    def move(x, proposal):
        return domain.metropolis_move(x, proposal)

    return _constrained_em(
        score_fn,
        sde,
        domain,
        shape,
        key,
        num_steps,
        x_init,
        dtype,
        corrector_steps,
        snr,
        move,
        "metropolis_euler_maruyama",
    )


CONSTRAINED_SAMPLERS: dict[str, Callable[..., Array]] = {
    "reflected": reflected_euler_maruyama,
    "metropolis": metropolis_euler_maruyama,
}
"""The samplers whose every state stays in a domain, by name.

The ``method=`` of :func:`sample_constrained_domain`.
"""


@eqx.filter_jit
def _batched(score_fn, sde, domain, shape, keys, x_init, sampler, options):
    if x_init is None:
        return jax.vmap(lambda k: sampler(score_fn, sde, domain, shape, key=k, **options))(keys)
    return jax.vmap(lambda k, x: sampler(score_fn, sde, domain, shape, key=k, x_init=x, **options))(
        keys, x_init
    )


def sample_constrained_domain(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    domain: AbstractDomain,
    num_samples: int,
    *,
    key: Array,
    method: str = "reflected",
    x_init: Array | None = None,
    **options,
) -> Array:
    """``num_samples`` samples ``(num_samples, *domain.shape)`` in ``domain``, one key each.

    Args:
        score_fn, sde, domain: as :func:`reflected_euler_maruyama`.
        num_samples: a positive int.
        key: PRNG key (keyword-only).
        method: ``"reflected"`` or ``"metropolis"``.
        x_init: optional starting points ``(num_samples, *domain.shape)``, all in the set.
        options: passed to the sampler (``num_steps``, ``corrector_steps``, ``snr``, ``dtype``).

    Returns:
        The samples; every one satisfies ``domain.contains``.

    Raises:
        ValueError: unknown ``method``, bad ``num_samples``, ``x_init`` of the wrong shape or outside
            the set, and the sampler's own errors.
    """
    if method not in CONSTRAINED_SAMPLERS:
        raise ValueError(
            f"sample_constrained_domain(method={method!r}): choose from {sorted(CONSTRAINED_SAMPLERS)}"
        )
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(
            f"sample_constrained_domain(num_samples=...) must be a positive int, got {num_samples!r}"
        )
    if not isinstance(domain, AbstractDomain):
        raise TypeError(
            f"sample_constrained_domain(domain=...) must be a Box, Simplex or ConvexSet, got {type(domain).__name__}"
        )
    _check_sde(sde, "sample_constrained_domain")
    if x_init is not None:
        x_init = jnp.asarray(x_init, options.get("dtype") or jnp.result_type(float))
        if x_init.shape != (num_samples,) + domain.shape:
            raise ValueError(
                f"sample_constrained_domain: x_init has shape {x_init.shape}, expected "
                f"{(num_samples,) + domain.shape}"
            )
        domain.check_point(x_init, "x_init")
    elif isinstance(domain, Box) and not domain.bounded:
        domain.uniform_sample(key=key)  # raises the clear message before tracing
    keys = jr.split(key, num_samples)
    return _batched(
        score_fn, sde, domain, domain.shape, keys, x_init, CONSTRAINED_SAMPLERS[method], options
    )


def sample_mirrored(
    score_fn: ScoreFn,
    sde: AbstractSDE,
    domain: AbstractDomain,
    num_samples: int,
    *,
    key: Array,
    method: str = "euler_maruyama",
    **options,
) -> Array:
    """Samples in ``domain`` from a diffusion on the mirror space.

    Returns ``mirror_inverse(y)``, ``y`` drawn by an ordinary sampler (:data:`SAMPLERS`) with
    ``score_fn`` the score of the law of ``y = domain.mirror(x)`` (e.g. a model trained on
    ``mirror(data)``).

    Args:
        score_fn: ``score(y, t)`` in mirror coordinates; sde: any process of :mod:`pdegen.models`.
        domain: a :class:`Box` or :class:`Simplex` (the sets with a mirror map).
        num_samples, key, method, options: as :func:`pdegen.models.sample`.

    Returns:
        ``(num_samples, *domain.shape)`` samples, all in the set.

    Raises:
        ValueError: a domain without a mirror map, and :func:`pdegen.models.sample`'s errors.
    """
    if not hasattr(domain, "mirror_inverse"):
        raise ValueError(
            f"sample_mirrored(domain=...): {type(domain).__name__} has no mirror map; use a Box or "
            "a Simplex, or the reflected / Metropolis samplers"
        )
    if isinstance(method, str) and method not in SAMPLERS:
        raise ValueError(f"sample_mirrored(method={method!r}): choose from {sorted(SAMPLERS)}")
    y = sample(score_fn, sde, domain.shape, num_samples, key=key, method=method, **options)
    return jax.jit(jax.vmap(domain.mirror_inverse))(y)


# --- training on data in a box: reflected denoising score matching --------------------------


def _check_model_domain(model, domain, caller):
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"{caller}(model=...) must be a DiffusionModel, got {type(model).__name__}")
    if not isinstance(domain, Box):
        raise TypeError(
            f"{caller}(domain=...): reflected score matching needs the box's heat kernel; got "
            f"{type(domain).__name__}"
        )
    _check_sde(model.sde, caller)
    if tuple(model.data_shape) != domain.shape:
        raise ValueError(
            f"{caller}: model.data_shape {tuple(model.data_shape)} != domain.shape {domain.shape}"
        )
    norm = model.normalisation
    if any(m != 0.0 for m in norm.mean) or any(s != 1.0 for s in norm.std):
        raise ValueError(
            f"{caller}: the model must use Normalisation.identity (the domain's units are the "
            "model's units); scale the data and the box instead"
        )


def reflected_dsm_loss(
    score_fn: ScoreFn, sde: AbstractSDE, batch: Array, domain: Box, *, key: Array
) -> Array:
    """Reflected denoising score-matching loss (Lou & Ermon 2023) on a batch in a box.

    For each example ``x0``: ``t`` from ``sde.sample_training_time``, ``s = sigma(t)``,
    ``x_t = domain.reflect(x0 + s z)`` (exactly reflected Brownian motion at variance ``s^2``), and
    the loss ``mean(s^2 |score(x_t, t) - grad log k_s(x_t | x0)|^2)`` with the box heat kernel
    ``k_s`` (:meth:`Box.heat_kernel_score`); its minimiser is the score of the reflected marginals,
    and ``loss(score) - loss(true score) = E[s^2 |score - true score|^2]``.

    Args:
        score_fn: ``score(x, t)`` (e.g. ``model.score`` of a :class:`DiffusionModel`).
        sde: a :class:`VESDE` or :class:`EDMSDE`.
        batch: ``(B, *domain.shape)`` examples in the box.
        domain: the :class:`Box`.
        key: PRNG key (keyword-only).

    Returns:
        The scalar loss (the batch mean).
    """

    def single(x0, k):
        tk, nk = jr.split(k)
        t = sde.sample_training_time(key=tk, dtype=x0.dtype)
        s = sde.sigma(t).astype(x0.dtype)
        xt = domain.reflect(x0 + s * jr.normal(nk, x0.shape, x0.dtype))
        target = jax.lax.stop_gradient(domain.heat_kernel_score(xt, x0, s))
        return jnp.mean((s * (score_fn(xt, t) - target)) ** 2)

    keys = jr.split(key, batch.shape[0])
    return jnp.mean(jax.vmap(single)(batch, keys))


class ReflectedTrainResult(NamedTuple):
    """Output of :func:`train_reflected`: the EMA model, the last model, the loss per step."""

    model: DiffusionModel
    last_model: DiffusionModel
    losses: np.ndarray


def train_reflected(
    model: DiffusionModel,
    data,
    domain: Box,
    *,
    key: Array,
    config: TrainConfig | None = None,
) -> ReflectedTrainResult:
    """Train ``model`` on data in a box by :func:`reflected_dsm_loss`.

    Adam as :func:`make_optimizer`, EMA weights as :func:`pdegen.models.train`; in memory, no
    checkpoints.

    Args:
        model: a :class:`DiffusionModel` (VE/EDM SDE, identity normalisation, ``data_shape`` =
            ``domain.shape``).
        data: ``(N, *domain.shape)`` examples, every one in the box.
        domain: the :class:`Box`.
        key: PRNG key (keyword-only); config: a :class:`TrainConfig` (steps, batch size, rates).

    Returns:
        A :class:`ReflectedTrainResult`.

    Raises:
        TypeError / ValueError: a wrong model or domain, data of the wrong shape or outside the box.
    """
    _check_model_domain(model, domain, "train_reflected")
    config = TrainConfig() if config is None else config
    data = np.asarray(data)
    if data.ndim != len(domain.shape) + 1 or data.shape[0] < 1:
        raise ValueError(f"train_reflected: data must be (N, *{domain.shape}), got {data.shape}")
    domain.check_point(data, "data")
    data = jnp.asarray(data)
    optimizer = make_optimizer(config)
    params = eqx.filter(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    @eqx.filter_jit
    def step(model, ema, opt_state, count, k):
        bk, lk = jr.split(k)
        idx = jr.randint(bk, (config.batch_size,), 0, data.shape[0])
        batch = data[idx]
        p, static = eqx.partition(model, eqx.is_inexact_array)
        loss, grads = jax.value_and_grad(
            lambda q: reflected_dsm_loss(
                eqx.combine(q, static).score, model.sde, batch, domain, key=lk
            )
        )(p)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, p)
        model = eqx.apply_updates(model, updates)
        c = count.astype(jnp.float32)
        decay = jnp.minimum(jnp.float32(config.ema_decay), (1.0 + c) / (10.0 + c))
        ema_p = jax.tree_util.tree_map(
            lambda e, q: decay.astype(q.dtype) * e + (1.0 - decay.astype(q.dtype)) * q,
            eqx.filter(ema, eqx.is_inexact_array),
            eqx.filter(model, eqx.is_inexact_array),
        )
        ema = eqx.combine(ema_p, eqx.filter(model, eqx.is_inexact_array, inverse=True))
        return model, ema, opt_state, loss

    ema = model
    losses = np.empty(config.steps)
    for i in range(config.steps):
        model, ema, opt_state, loss = step(
            model, ema, opt_state, jnp.asarray(i, jnp.int32), jr.fold_in(key, i)
        )
        losses[i] = (
            float(loss) if (i + 1) % config.log_every == 0 or i + 1 == config.steps else np.nan
        )
        if (i + 1) % config.log_every == 0 and not np.isfinite(losses[i]):
            raise FloatingPointError(f"train_reflected: non-finite loss at step {i + 1}")
    return ReflectedTrainResult(ema, model, losses)


# --- an exact noised score: a truncated Gaussian in a box ----------------------------------


def _log_diff_ndtr(a, b):
    """``log(Phi(b) - Phi(a))`` for ``a <= b``, accurate in both tails."""
    flip = a > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_hi, log_lo = jax.scipy.special.log_ndtr(hi), jax.scipy.special.log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-300)))


class TruncatedNormalScore(eqx.Module):
    """Exact score of a box-truncated diagonal Gaussian under reflected VE noising.

    ``x0 ~ N(mean, diag(std^2))`` restricted to ``box`` (bounded), noised by Brownian motion reflected
    in the box to variance ``s^2 = sigma(t)^2``. Per coordinate, with the images ``c`` of the method
    of images (``x - 2 k w`` and ``2 l + 2 k w - x``, ``|k| <= num_images``),
    ``p_t(x) ∝ sum_c N(c; m, v + s^2) [Phi((u - mu_c) / tau) - Phi((l - mu_c) / tau)]``,
    ``mu_c = (m s^2 + c v) / (v + s^2)``, ``tau^2 = v s^2 / (v + s^2)``; the score is its log-derivative
    (automatic differentiation). ``num_images`` defaults to cover ``sigma(t_max)`` (terms below 1e-16).

    Args:
        box: a bounded :class:`Box`; mean, std: arrays broadcastable to ``box.shape`` (``std > 0``).
        sde: a :class:`VESDE` or :class:`EDMSDE`.
        num_images: optional number of image pairs per side.

    Raises:
        ValueError: an unbounded box, ``std <= 0``, another SDE.
    """

    box: Box
    mean: Array
    std: Array
    sde: AbstractSDE
    num_images: int = eqx.field(static=True)

    def __init__(self, box: Box, mean, std, sde: AbstractSDE, num_images: int | None = None):
        if not isinstance(box, Box) or not box.bounded:
            raise ValueError("TruncatedNormalScore: needs a bounded Box")
        _check_sde(sde, "TruncatedNormalScore")
        mean = np.broadcast_to(np.asarray(mean, np.float64), box.shape)
        std = np.broadcast_to(np.asarray(std, np.float64), box.shape)
        if not np.all(std > 0):
            raise ValueError("TruncatedNormalScore(std=...) must be > 0")
        if num_images is None:
            width = float(np.min(np.asarray(box.upper) - np.asarray(box.lower)))
            s_max = float(sde.sigma(jnp.asarray(sde.t_max, jnp.float64)))
            num_images = int(math.ceil(4.5 * s_max / width)) + 3
        self.box, self.mean, self.std, self.sde = box, jnp.asarray(mean), jnp.asarray(std), sde
        self.num_images = int(num_images)

    def log_density(self, x: Array, t: Array) -> Array:
        """``log p_t(x)`` per coordinate, up to a constant per coordinate (shape of ``x``)."""
        log_terms, _ = self._terms(x, t)
        total = self.std.astype(x.dtype) ** 2 + self.sde.sigma(jnp.asarray(t, x.dtype)) ** 2
        return jax.scipy.special.logsumexp(log_terms, axis=0) - 0.5 * jnp.log(total)

    def __call__(self, x: Array, t: Array) -> Array:
        """The score ``grad_x log p_t(x)`` (shape of ``x``), in closed form: the image terms'
        log-derivatives averaged with their weights."""
        log_terms, slopes = self._terms(x, t)
        return jnp.sum(jax.nn.softmax(log_terms, axis=0) * slopes, axis=0)

    def _terms(self, x, t):
        """Log-weights of the image terms and their x-derivatives, ``(2 (2K + 1), *x.shape)``.

        While ``v + s^2 <= w^2`` for every coordinate the images beyond ``|k| = 6`` weigh below
        ``exp(-36)`` and are left out (a ``lax.cond`` on the noise level, cheap under ``vmap``).
        """
        lo, hi = self.box._bounds(x)
        v = self.std.astype(x.dtype) ** 2
        s2 = self.sde.sigma(jnp.asarray(t, x.dtype)).astype(x.dtype) ** 2
        if self.num_images <= 6:
            return self._image_terms(x, s2, self.num_images)
        extra = 4 * (self.num_images - 6)  # rows the short sum lacks: filled with empty images

        def short():
            log_terms, slopes = self._image_terms(x, s2, 6)
            rows = ((0, extra),) + ((0, 0),) * x.ndim
            return (
                jnp.pad(log_terms, rows, constant_values=-jnp.inf),
                jnp.pad(slopes, rows, constant_values=0.0),
            )

        few = jnp.all(v + s2 <= (hi - lo) ** 2)
        return jax.lax.cond(few, short, lambda: self._image_terms(x, s2, self.num_images))

    def _image_terms(self, x, s2, num_images):
        lo, hi = self.box._bounds(x)
        m, v = self.mean.astype(x.dtype), self.std.astype(x.dtype) ** 2
        w = (hi - lo)[None]
        ks = jnp.arange(-num_images, num_images + 1, dtype=x.dtype)
        ks = ks.reshape((-1,) + (1,) * x.ndim)
        n = ks.shape[0]
        centres = jnp.concatenate([x[None] - 2.0 * ks * w, 2.0 * lo[None] + 2.0 * ks * w - x[None]])
        sign = jnp.concatenate([jnp.ones((n,), x.dtype), -jnp.ones((n,), x.dtype)])
        sign = sign.reshape((-1,) + (1,) * x.ndim)
        total = (v + s2)[None]
        mu = (m[None] * s2 + centres * v[None]) / total
        tau = jnp.sqrt(v * s2 / (v + s2))[None]
        a, b = (lo[None] - mu) / tau, (hi[None] - mu) / tau
        log_mass = _log_diff_ndtr(a, b)
        log_terms = -((centres - m[None]) ** 2) / (2.0 * total) + log_mass
        # d/dx of log(Phi(b) - Phi(a)) with da/dx = db/dx = -sign v / (total tau)
        log_phi = lambda z: -0.5 * z**2 - 0.5 * math.log(2.0 * math.pi)  # noqa: E731
        ratio = jnp.exp(log_phi(b) - log_mass) - jnp.exp(log_phi(a) - log_mass)
        ratio = jnp.where(jnp.isfinite(log_mass), ratio, 0.0)
        slopes = sign * (-(centres - m[None]) / total - v[None] / (total * tau) * ratio)
        return log_terms, slopes

    def truncated_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact mean and variance of the truncated Gaussian (``t = 0``), from the standard
        formulas with ``alpha = (l - m)/sd``, ``beta = (u - m)/sd``."""
        from scipy.stats import truncnorm

        m, sd = np.asarray(self.mean), np.asarray(self.std)
        a = (np.asarray(self.box.lower) - m) / sd
        b = (np.asarray(self.box.upper) - m) / sd
        mean, var = truncnorm.stats(a, b, loc=m, scale=sd, moments="mv")
        return np.asarray(mean, np.float64), np.asarray(var, np.float64)
