"""Controlled diffusions for unnormalised densities: PIS and DDS.

A sampler for a target ``pi(x) = exp(log_density(x)) / Z`` on ``R^d`` is a discrete-time
controlled Markov chain

    x_{k+1} = a_k x_k + b_k u_theta(t_k, x_k) + s_k eps_k,     eps_k ~ N(0, I),

whose *reference* (``u = 0``) chain has Gaussian marginals known in closed form:

- PIS (Zhang & Chen 2022): Brownian motion from 0, Euler steps on ``t in [0, 1]``:
  ``a = 1, b = dt, s = sigma sqrt(dt)``; ``x_0 = 0``, reference marginal at the end ``N(0, sigma^2)``.
- DDS (Vargas, Grathwohl, Doucet 2023): Ornstein-Uhlenbeck process started at its stationary
  law ``N(0, sigma^2)``, exponential-integrator steps ``a = exp(-int beta)``,
  ``s = sigma sqrt(1 - a^2)``, ``b = 2 sigma^2 (1 - a)``; every reference marginal is ``N(0, sigma^2)``.

Both share one path-space importance weight (exact for the discrete chains)

    log w = log_density(x_N) - log p_ref_N(x_N) - sum_k [ ||b_k u_k||^2 / (2 s_k^2) + b_k u_k . eps_k / s_k ],

so ``E[log w] <= log Z`` (ELBO), ``logmeanexp(log w) -> log Z`` (importance weighted), the
reverse-KL loss is ``-E[log w]`` and the log-variance loss (Richter & Berner) is
``Var[log w]`` along detached paths.

Networks keep float32 parameters; the state and the weights are computed in the dtype of the
default float (float64 when x64 is enabled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from .._errors import NonFiniteError

__all__ = [
    "BrownianReference",
    "OrnsteinUhlenbeckReference",
    "ControlMLP",
    "CoordinatewiseControl",
    "ControlledDiffusion",
    "PIS",
    "DDS",
    "Paths",
    "LogNormaliserEstimate",
    "simulate",
    "sample",
    "kl_loss",
    "log_variance_loss",
    "path_log_weights",
    "log_normaliser",
    "effective_sample_size",
    "training_step",
    "train",
]

GRADIENT_CLIP = 100.0
_PARAM_DTYPE = jnp.float32


def _state_dtype():
    return jnp.zeros((), dtype=float).dtype


# --------------------------------------------------------------------------- references


class BrownianReference(eqx.Module):
    """PIS reference: ``dX = sigma dW`` from ``X_0 = 0`` on ``[0, 1]``, Euler steps."""

    sigma: float = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)

    def coefficients(self):
        """Arrays ``(a, b, s, t)`` each of shape ``(num_steps,)``: step ``k`` maps ``x_k -> x_{k+1}``."""
        n = self.num_steps
        dt = 1.0 / n
        dtype = _state_dtype()
        a = np.ones(n)
        b = np.full(n, dt)
        s = np.full(n, self.sigma * math.sqrt(dt))
        t = np.arange(n) * dt
        return tuple(jnp.asarray(v, dtype=dtype) for v in (a, b, s, t))

    def initial_sample(self, dim: int, *, key):
        del key
        return jnp.zeros((dim,), dtype=_state_dtype())

    def terminal_log_prob(self, x):
        """Log density of the reference marginal at the final time, ``N(0, sigma^2 I)``."""
        return _normal_log_prob(x, self.sigma)


class OrnsteinUhlenbeckReference(eqx.Module):
    """DDS reference: OU process ``N(0, sigma^2)``-stationary, exponential-integrator steps.

    In noising time ``s in [0, 1]`` the OU rate is ``beta(s) = beta_min + (beta_max - beta_min) s``;
    the sampler runs from ``s = 1`` (noise) to ``s = 0`` (target), so steps shrink near the target.
    """

    sigma: float = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=10.0)

    def coefficients(self):
        n = self.num_steps
        s_grid = 1.0 - np.arange(n + 1) / n

        def integral(s):
            return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2

        rate = integral(s_grid[:-1]) - integral(s_grid[1:])
        a = np.exp(-rate)
        b = 2.0 * self.sigma**2 * (1.0 - a)
        s = self.sigma * np.sqrt(1.0 - a**2)
        t = np.arange(n) / n
        dtype = _state_dtype()
        return tuple(jnp.asarray(v, dtype=dtype) for v in (a, b, s, t))

    def initial_sample(self, dim: int, *, key):
        dtype = _state_dtype()
        return self.sigma * jr.normal(key, (dim,), dtype=dtype)

    def terminal_log_prob(self, x):
        return _normal_log_prob(x, self.sigma)


def _normal_log_prob(x, sigma):
    d = x.shape[-1]
    return -0.5 * jnp.sum(x**2, axis=-1) / sigma**2 - 0.5 * d * math.log(2 * math.pi * sigma**2)


# --------------------------------------------------------------------------- networks


def _time_embedding(t, num_frequencies: int = 4):
    """Fourier features of ``t in [0, 1]``, float32, shape ``(2 * num_frequencies + 1,)``."""
    t = jnp.asarray(t, dtype=_PARAM_DTYPE)
    k = jnp.arange(1, num_frequencies + 1, dtype=_PARAM_DTYPE)
    angles = jnp.pi * k * t
    return jnp.concatenate([t[None], jnp.sin(angles), jnp.cos(angles)])


def _zero_last_layer(mlp: eqx.nn.MLP) -> eqx.nn.MLP:
    last = mlp.layers[-1]
    return eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        mlp,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )


def _clip_gradient(g):
    return jnp.clip(g, -GRADIENT_CLIP, GRADIENT_CLIP)


class ControlMLP(eqx.Module):
    """Dense control ``u(t, x) = NN(x, emb(t)) [+ NN(emb(t)) * clip(grad log pi(x), +-100)]``.

    With ``gradient_informed=True`` this is the PIS-Grad / DDS network; otherwise a plain MLP.
    Both output layers start at zero, so an untrained model is the reference process.
    """

    drift: eqx.nn.MLP
    gradient_scale: eqx.nn.MLP | None
    dim: int = eqx.field(static=True)
    gradient_informed: bool = eqx.field(static=True)

    def __init__(
        self, dim: int, *, width: int = 64, depth: int = 2, gradient_informed: bool = True, key
    ):
        k1, k2 = jr.split(key)
        emb = _time_embedding(0.0).shape[0]
        self.dim = dim
        self.gradient_informed = gradient_informed
        self.drift = _zero_last_layer(
            eqx.nn.MLP(
                dim + emb, dim, width, depth, activation=jax.nn.gelu, key=k1, dtype=_PARAM_DTYPE
            )
        )
        if gradient_informed:
            self.gradient_scale = _zero_last_layer(
                eqx.nn.MLP(
                    emb, dim, width, depth, activation=jax.nn.gelu, key=k2, dtype=_PARAM_DTYPE
                )
            )
        else:
            self.gradient_scale = None

    def __call__(self, t, x, grad_log_density=None):
        """Drift for one point: ``t`` scalar in [0, 1], ``x`` shape ``(dim,)``."""
        emb = _time_embedding(t)
        xf = x.astype(_PARAM_DTYPE)
        out = self.drift(jnp.concatenate([xf, emb]))
        if self.gradient_informed:
            g = _clip_gradient(grad_log_density).astype(_PARAM_DTYPE)
            out = out + self.gradient_scale(emb) * g
        return out.astype(x.dtype)


class CoordinatewiseControl(eqx.Module):
    """Permutation-equivariant control: one small MLP shared by every coordinate.

    Coordinate ``i`` sees ``(x_i, log-scaled grad_i, emb(t))`` and permutation-invariant
    summaries ``(mean x, mean x^2, mean log-scaled grad)``; it outputs a drift and (when
    gradient-informed) a gain for ``clip(grad_i)``. This is the coordinate-wise network of
    learning-to-learn (Andrychowicz et al. 2016) as a diffusion control, exact for separable
    targets in the sense that the optimal control of a product density is coordinate-wise.
    Works for any dimension with the same parameters.
    """

    mlp: eqx.nn.MLP
    gradient_informed: bool = eqx.field(static=True)

    def __init__(self, *, width: int = 32, depth: int = 2, gradient_informed: bool = True, key):
        emb = _time_embedding(0.0).shape[0]
        self.gradient_informed = gradient_informed
        n_in = emb + (6 if gradient_informed else 3)
        n_out = 2 if gradient_informed else 1
        self.mlp = _zero_last_layer(
            eqx.nn.MLP(
                n_in, n_out, width, depth, activation=jax.nn.gelu, key=key, dtype=_PARAM_DTYPE
            )
        )

    def __call__(self, t, x, grad_log_density=None):
        d = x.shape[0]
        emb = jnp.broadcast_to(_time_embedding(t)[None, :], (d, _time_embedding(t).shape[0]))
        xf = x.astype(_PARAM_DTYPE)
        feats = [
            xf[:, None],
            jnp.broadcast_to(jnp.mean(xf)[None, None], (d, 1)),
            jnp.broadcast_to(jnp.mean(xf**2)[None, None], (d, 1)),
        ]
        if self.gradient_informed:
            g = _clip_gradient(grad_log_density).astype(_PARAM_DTYPE)
            gl = jnp.sign(g) * jnp.log1p(jnp.abs(g))
            feats += [
                gl[:, None],
                jnp.broadcast_to(jnp.mean(gl)[None, None], (d, 1)),
                jnp.broadcast_to(jnp.mean(jnp.abs(gl))[None, None], (d, 1)),
            ]
        out = jax.vmap(self.mlp)(jnp.concatenate(feats + [emb], axis=1))
        drift = out[:, 0]
        if self.gradient_informed:
            drift = drift + out[:, 1] * g
        return drift.astype(x.dtype)


# --------------------------------------------------------------------------- model


class ControlledDiffusion(eqx.Module):
    """A reference process plus a control network; build with :func:`PIS` or :func:`DDS`."""

    reference: BrownianReference | OrnsteinUhlenbeckReference
    network: eqx.Module
    dim: int = eqx.field(static=True)

    @property
    def gradient_informed(self) -> bool:
        return bool(getattr(self.network, "gradient_informed", False))


def _make_network(dim, network, gradient_informed, width, depth, key):
    if network == "mlp":
        return ControlMLP(
            dim, width=width, depth=depth, gradient_informed=gradient_informed, key=key
        )
    if network == "coordinatewise":
        return CoordinatewiseControl(
            width=width, depth=depth, gradient_informed=gradient_informed, key=key
        )
    raise ValueError(f"network must be 'mlp' or 'coordinatewise', got {network!r}")


def _check_common(dim, num_steps, sigma):
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")


def PIS(
    dim: int,
    *,
    key,
    sigma: float = 1.0,
    num_steps: int = 64,
    network: str = "mlp",
    gradient_informed: bool = True,
    width: int = 64,
    depth: int = 2,
) -> ControlledDiffusion:
    """Path Integral Sampler: Brownian reference from 0 with a learned drift.

    ``network`` is ``"mlp"`` (dense) or ``"coordinatewise"`` (shared per-coordinate MLP).

    >>> model = PIS(2, key=jax.random.key(0), num_steps=32)
    """
    _check_common(dim, num_steps, sigma)
    ref = BrownianReference(sigma=float(sigma), num_steps=num_steps)
    return ControlledDiffusion(
        ref, _make_network(dim, network, gradient_informed, width, depth, key), dim
    )


def DDS(
    dim: int,
    *,
    key,
    sigma: float = 1.0,
    num_steps: int = 64,
    network: str = "mlp",
    gradient_informed: bool = True,
    width: int = 64,
    depth: int = 2,
    beta_min: float = 0.1,
    beta_max: float = 10.0,
) -> ControlledDiffusion:
    """Denoising Diffusion Sampler: OU reference from ``N(0, sigma^2)``, exponential integrator."""
    _check_common(dim, num_steps, sigma)
    if not 0 <= beta_min <= beta_max or beta_max <= 0:
        raise ValueError(
            f"need 0 <= beta_min <= beta_max, beta_max > 0; got {beta_min}, {beta_max}"
        )
    ref = OrnsteinUhlenbeckReference(
        sigma=float(sigma), num_steps=num_steps, beta_min=float(beta_min), beta_max=float(beta_max)
    )
    return ControlledDiffusion(
        ref, _make_network(dim, network, gradient_informed, width, depth, key), dim
    )


# --------------------------------------------------------------------------- simulation


class Paths(NamedTuple):
    """Simulated paths (leading axis: samples).

    ``positions`` ``(n, N+1, d)``; ``gradients`` ``(n, N, d)`` of ``log_density`` along the path
    (zeros for plain networks); ``log_density`` at the endpoints ``(n,)``; ``running_cost`` and
    ``martingale`` ``(n,)``; ``log_weights`` ``(n,)`` as in the module docstring.
    """

    positions: jax.Array
    gradients: jax.Array
    log_density: jax.Array
    running_cost: jax.Array
    martingale: jax.Array
    log_weights: jax.Array

    @property
    def samples(self):
        return self.positions[:, -1, :]


def _simulate_one(model: ControlledDiffusion, log_density: Callable, key, stop_path_gradient: bool):
    a, b, s, t = model.reference.coefficients()
    k0, key = jr.split(key)
    x0 = model.reference.initial_sample(model.dim, key=k0)
    eps = jr.normal(key, (a.shape[0], model.dim), dtype=x0.dtype)
    informed = model.gradient_informed
    grad_fn = jax.grad(log_density)

    def body(carry, inputs):
        x, cost, mart = carry
        a_k, b_k, s_k, t_k, e_k = inputs
        if stop_path_gradient:
            x = jax.lax.stop_gradient(x)
        g = grad_fn(x) if informed else jnp.zeros_like(x)
        u = model.network(t_k, x, g)
        bu = b_k * u
        x_next = a_k * x + bu + s_k * e_k
        cost = cost + jnp.sum(bu**2) / (2 * s_k**2)
        mart = mart + jnp.sum(bu * e_k) / s_k
        return (x_next, cost, mart), (x_next, g)

    zero = jnp.zeros((), dtype=x0.dtype)
    (x_n, cost, mart), (xs, gs) = jax.lax.scan(body, (x0, zero, zero), (a, b, s, t, eps))
    if stop_path_gradient:
        x_n = jax.lax.stop_gradient(x_n)
    positions = jnp.concatenate([x0[None, :], xs], axis=0)
    logp = jnp.asarray(log_density(x_n), dtype=x0.dtype)
    log_w = logp - model.reference.terminal_log_prob(x_n) - cost - mart
    return Paths(positions, gs, logp, cost, mart, log_w)


def simulate(
    model: ControlledDiffusion,
    log_density: Callable,
    num_samples: int,
    *,
    key,
    stop_path_gradient: bool = False,
) -> Paths:
    """Simulate ``num_samples`` controlled paths targeting ``exp(log_density)``.

    ``log_density(x)`` takes one point of shape ``(dim,)`` and returns a scalar; it must be
    differentiable when the network is gradient-informed.
    """
    keys = jr.split(key, num_samples)
    return jax.vmap(lambda k: _simulate_one(model, log_density, k, stop_path_gradient))(keys)


def sample(model: ControlledDiffusion, log_density: Callable, num_samples: int, *, key):
    """Endpoints ``(num_samples, dim)`` and their log importance weights ``(num_samples,)``."""
    paths = simulate(model, log_density, num_samples, key=key, stop_path_gradient=True)
    return paths.samples, paths.log_weights


def path_log_weights(model: ControlledDiffusion, paths: Paths):
    """Log weights of *fixed* paths under the current control (differentiable in ``model``).

    Uses the stored gradients and endpoint densities, so it costs no target evaluations.
    """
    a, b, s, t = model.reference.coefficients()

    def one(xs, gs, logp):
        x, x_next = xs[:-1], xs[1:]
        u = jax.vmap(model.network)(t, x, gs)
        bu = b[:, None] * u
        innov = x_next - a[:, None] * x
        per_step = (jnp.sum(bu**2, axis=1) - 2 * jnp.sum(bu * innov, axis=1)) / (2 * s**2)
        return logp - model.reference.terminal_log_prob(xs[-1]) + jnp.sum(per_step)

    return jax.vmap(one)(paths.positions, paths.gradients, paths.log_density)


def kl_loss(model: ControlledDiffusion, log_density: Callable, num_samples: int, *, key):
    """Reverse-KL loss ``E[cost + log p_ref_N(x_N) - log_density(x_N)] = log Z - ELBO``.

    Differentiates through the simulated paths (reparameterisation); the zero-mean
    martingale term is left out of the loss (lower variance, same expectation).
    """
    paths = simulate(model, log_density, num_samples, key=key)
    return jnp.mean(paths.log_weights + paths.martingale) * -1.0, paths


def log_variance_loss(model: ControlledDiffusion, log_density: Callable, num_samples: int, *, key):
    """Log-variance loss: variance of the log weights of detached on-policy paths."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    frozen = eqx.combine(jax.lax.stop_gradient(params), static)
    paths = simulate(frozen, log_density, num_samples, key=key, stop_path_gradient=True)
    log_w = path_log_weights(model, paths)
    return jnp.var(log_w), paths


# --------------------------------------------------------------------------- estimates


class LogNormaliserEstimate(NamedTuple):
    """``elbo = mean(log w)`` (a lower bound in expectation) and the importance-weighted
    ``logmeanexp(log w)`` (consistent, biased low for finite samples)."""

    elbo: jax.Array
    importance_weighted: jax.Array


def log_normaliser(log_weights) -> LogNormaliserEstimate:
    """Estimates of ``log Z`` from the log importance weights of samples of a controlled diffusion.

    Args:
        log_weights: ``log w_i = log (target / path law)`` of ``n`` samples, shape ``(n,)``.

    Returns:
        A :class:`LogNormaliserEstimate`: ``elbo`` (the mean log weight, a lower bound in
        expectation) and ``importance_weighted`` (``log mean w_i``, consistent as ``n`` grows).

    Example:
        >>> import jax.numpy as jnp
        >>> est = log_normaliser(jnp.log(jnp.array([1.0, 3.0])))
        >>> round(float(est.importance_weighted), 4), round(float(est.elbo), 4)
        (0.6931, 0.5493)
    """
    log_weights = jnp.asarray(log_weights)
    n = log_weights.shape[0]
    iw = jax.nn.logsumexp(log_weights) - math.log(n)
    return LogNormaliserEstimate(jnp.mean(log_weights), iw)


def effective_sample_size(log_weights, *, normalised: bool = True):
    """Kish ESS ``(sum w)^2 / sum w^2``, divided by the number of samples if ``normalised``."""
    log_weights = jnp.asarray(log_weights)
    ess = jnp.exp(2 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2 * log_weights))
    return ess / log_weights.shape[0] if normalised else ess


# --------------------------------------------------------------------------- training


_LOSSES = {"kl": kl_loss, "log_variance": log_variance_loss}


def _get_loss(loss: str):
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}")
    return _LOSSES[loss]


def training_step(
    model, opt_state, *, key, log_density, optimiser, batch_size: int, loss: str = "kl"
):
    """One optimisation step; pure, jittable. Returns ``(model, opt_state, loss, paths)``."""
    loss_fn = _get_loss(loss)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def objective(p):
        value, paths = loss_fn(eqx.combine(p, static), log_density, batch_size, key=key)
        return value, paths

    (value, paths), grads = jax.value_and_grad(objective, has_aux=True)(params)
    # optax mixes Python floats with int32 step counts; let it, whatever the caller's config.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimiser.update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    return eqx.combine(params, static), opt_state, value, paths


def train(
    model: ControlledDiffusion,
    log_density: Callable,
    *,
    key,
    num_steps: int = 1000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    loss: str = "kl",
    optimiser: optax.GradientTransformation | None = None,
    progress: bool = True,
):
    """Fit the control with optax (Adam by default); tqdm progress bar.

    Returns ``(model, losses)`` with ``losses`` a NumPy array of shape ``(num_steps,)``.
    """
    _get_loss(loss)
    if num_steps < 1 or batch_size < 1:
        raise ValueError(f"num_steps and batch_size must be >= 1, got {num_steps}, {batch_size}")
    if optimiser is None:
        optimiser = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))
    opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, key):
        model, opt_state, value, _ = training_step(
            model,
            opt_state,
            key=key,
            log_density=log_density,
            optimiser=optimiser,
            batch_size=batch_size,
            loss=loss,
        )
        return model, opt_state, value

    losses = np.empty(num_steps)
    bar = tqdm(range(num_steps), disable=not progress, desc=f"train ({loss})")
    for i in bar:
        key, sub = jr.split(key)
        model, opt_state, value = step(model, opt_state, sub)
        losses[i] = float(value)
        if not np.isfinite(losses[i]):
            raise NonFiniteError(
                f"train: the {loss} loss turned non-finite at step {i + 1}; lower learning_rate "
                "or the reference's sigma (DDS / PIS with network='mlp' is the steadier control)"
            )
        if i % 50 == 0:
            bar.set_postfix(loss=f"{losses[i]:.4g}")
    return model, losses
