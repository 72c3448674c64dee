"""Forward noising processes: VP (linear / cosine), VE and the EDM sigma schedule.

Every process here has Gaussian marginals ``x_t = alpha(t) x_0 + sigma(t) z``, ``z ~ N(0, I)``,
and is described by the scalar functions ``alpha(t)`` (mean coefficient) and ``sigma(t)``
(marginal standard deviation), plus the forward SDE ``dx = f(t) x dt + g(t) dW``.
Times are scalars; ``x`` is one example of any shape (``vmap`` for batches).

The noise level the networks see is the *scaled* noise ``sigma(t) / alpha(t)`` (the EDM
"sigma" of ``x / alpha``), so every process shares one network conditioning and one
preconditioning.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jax import Array


def _as_float(t: Any, like: Array | None = None) -> Array:
    """``t`` as a floating array: in ``like``'s dtype if given, else its own float dtype."""
    if like is not None:
        return jnp.asarray(t, dtype=like.dtype)
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


class AbstractSDE(eqx.Module):
    """Abstract forward process with Gaussian marginals ``N(alpha(t) x0, sigma(t)^2 I)``.

    Subclasses provide ``t_min`` and ``t_max`` (floats, fields or properties): samplers run
    from ``t_max`` down to ``t_min``.
    """

    @abc.abstractmethod
    def alpha(self, t: Array) -> Array:
        """Mean coefficient ``alpha(t)`` (scalar)."""

    @abc.abstractmethod
    def sigma(self, t: Array) -> Array:
        """Marginal standard deviation ``sigma(t)`` (scalar)."""

    @abc.abstractmethod
    def drift_coefficient(self, t: Array) -> Array:
        """``f(t)`` in the forward SDE ``dx = f(t) x dt + g(t) dW`` (scalar)."""

    @abc.abstractmethod
    def diffusion(self, t: Array) -> Array:
        """``g(t)`` in the forward SDE (scalar)."""

    @abc.abstractmethod
    def time_from_scaled_sigma(self, scaled_sigma: Array) -> Array:
        """Inverse of ``t -> sigma(t) / alpha(t)`` (scalar)."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-serialisable description; ``sde_from_config`` rebuilds the process."""

    def prior_std(self) -> Array:
        """Standard deviation of the Gaussian prior used at ``t_max`` (data of unit scale)."""
        t = _as_float(self.t_max)
        return jnp.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2)

    def scaled_sigma(self, t: Array) -> Array:
        """``sigma(t) / alpha(t)``: the noise level of ``x_t / alpha(t)``."""
        return self.sigma(t) / self.alpha(t)

    def drift(self, x: Array, t: Array) -> Array:
        """Forward drift ``f(t) x``; ``x`` any shape."""
        return self.drift_coefficient(_as_float(t, x)) * x

    def marginal(self, x0: Array, t: Array, *, key: Array) -> tuple[Array, Array]:
        """Draw ``x_t ~ p(x_t | x0)``; returns ``(x_t, z)`` with ``z`` the standard noise."""
        t = _as_float(t, x0)
        z = jr.normal(key, x0.shape, x0.dtype)
        return self.alpha(t) * x0 + self.sigma(t) * z, z

    def prior_sample(self, shape: tuple[int, ...], *, key: Array, dtype: Any = None) -> Array:
        """One draw from the prior ``N(0, prior_std^2 I)`` at ``t_max``, of the given shape."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.prior_std().astype(dtype) * jr.normal(key, shape, dtype)

    def sample_training_time(self, *, key: Array, dtype: Any = None) -> Array:
        """Training time distribution (uniform on ``[t_min, t_max]`` unless overridden)."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jr.uniform(key, (), dtype, self.t_min, self.t_max)

    def time_grid(self, num_steps: int, dtype: Any = None) -> Array:
        """Decreasing sampler times ``t_max = t_0 > ... > t_N = t_min``, shape ``(num_steps + 1,)``."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jnp.linspace(self.t_max, self.t_min, num_steps + 1, dtype=dtype)

    # --- conversions between score, noise and denoiser (Tweedie) -------------------------
    def denoiser_from_score(self, x: Array, t: Array, score: Array) -> Array:
        """Tweedie: ``E[x0 | x_t] = (x_t + sigma^2 score) / alpha``."""
        t = _as_float(t, x)
        return (x + self.sigma(t) ** 2 * score) / self.alpha(t)

    def score_from_denoiser(self, x: Array, t: Array, denoised: Array) -> Array:
        """Inverse Tweedie: ``score = (alpha D - x_t) / sigma^2``."""
        t = _as_float(t, x)
        return (self.alpha(t) * denoised - x) / self.sigma(t) ** 2

    def score_from_epsilon(self, x: Array, t: Array, epsilon: Array) -> Array:
        """``score = -epsilon / sigma``."""
        return -epsilon / self.sigma(_as_float(t, x))

    def epsilon_from_score(self, x: Array, t: Array, score: Array) -> Array:
        """``epsilon = -sigma score``."""
        return -self.sigma(_as_float(t, x)) * score

    def denoiser_from_epsilon(self, x: Array, t: Array, epsilon: Array) -> Array:
        """``D = (x_t - sigma epsilon) / alpha``."""
        t = _as_float(t, x)
        return (x - self.sigma(t) * epsilon) / self.alpha(t)

    def epsilon_from_denoiser(self, x: Array, t: Array, denoised: Array) -> Array:
        """``epsilon = (x_t - alpha D) / sigma``."""
        t = _as_float(t, x)
        return (x - self.alpha(t) * denoised) / self.sigma(t)

    def tweedie_denoiser(self, score_fn, x: Array, t: Array) -> Array:
        """``E[x0 | x_t]`` from a score function ``score_fn(x, t)``."""
        return self.denoiser_from_score(x, t, score_fn(x, t))

    def reverse_drift(
        self, score_fn, x: Array, t: Array, *, probability_flow: bool = False
    ) -> Array:
        """Drift of the reverse-time SDE (or of the probability-flow ODE)."""
        t = _as_float(t, x)
        g2 = self.diffusion(t) ** 2
        factor = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - factor * g2 * score_fn(x, t)


class VPSDE(AbstractSDE):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``.

    ``schedule="linear"``: ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021).
    ``schedule="cosine"``: ``alpha(t)^2 = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)``
    (Nichol & Dhariwal 2021), with ``t_max < 1`` so that ``alpha(t_max) > 0``.
    """

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=20.0)
    schedule: str = eqx.field(static=True, default="linear")
    cosine_offset: float = eqx.field(static=True, default=0.008)
    t_min: float = eqx.field(static=True, default=1e-3)
    t_max: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(
                f"VPSDE(schedule=...) must be 'linear' or 'cosine', got {self.schedule!r}"
            )
        # sigma(0) = 0: the score and the final denoising step divide by it
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ValueError(f"VPSDE needs 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.schedule == "cosine" and self.t_max >= 1.0:
            raise ValueError("VPSDE(schedule='cosine') needs t_max < 1 (alpha(1) = 0); try 0.999")
        if not 0.0 < self.beta_min < self.beta_max:
            raise ValueError(
                f"VPSDE needs 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}"
            )

    def _theta(self, t):
        s = self.cosine_offset
        return (t + s) / (1.0 + s) * (math.pi / 2)

    def log_alpha(self, t: Array) -> Array:
        """``log alpha(t)`` (scalar)."""
        t = _as_float(t)
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return jnp.log(jnp.cos(self._theta(t))) - math.log(math.cos(self._theta(0.0)))

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def beta(self, t: Array) -> Array:
        """``beta(t) = -2 d log alpha / dt`` (scalar)."""
        t = _as_float(t)
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        return math.pi / (1.0 + self.cosine_offset) * jnp.tan(self._theta(t))

    def drift_coefficient(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))

    def prior_std(self) -> Array:
        return jnp.ones(())

    def time_from_scaled_sigma(self, scaled_sigma):
        log_alpha_sq = -jnp.log1p(scaled_sigma**2)  # alpha^2 = 1 / (1 + sigma_tilde^2)
        if self.schedule == "linear":
            b0, b1 = self.beta_min, self.beta_max - self.beta_min
            return (-b0 + jnp.sqrt(b0**2 - 2.0 * b1 * log_alpha_sq)) / b1
        c0 = math.cos(self._theta(0.0))
        theta = jnp.arccos(jnp.exp(0.5 * log_alpha_sq) * c0)
        return theta * 2.0 * (1.0 + self.cosine_offset) / math.pi - self.cosine_offset

    def config(self):
        return {
            "kind": "vp",
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "schedule": self.schedule,
            "cosine_offset": self.cosine_offset,
            "t_min": self.t_min,
            "t_max": self.t_max,
        }


class VESDE(AbstractSDE):
    """Variance-exploding SDE ``dx = g(t) dW``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``."""

    sigma_min: float = eqx.field(static=True, default=0.01)
    sigma_max: float = eqx.field(static=True, default=50.0)
    t_min: float = eqx.field(static=True, default=0.0)
    t_max: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"VESDE needs 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _as_float(t)

    def drift_coefficient(self, t):
        return jnp.zeros_like(_as_float(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def time_from_scaled_sigma(self, scaled_sigma):
        return jnp.log(scaled_sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def config(self):
        return {
            "kind": "ve",
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "t_min": self.t_min,
            "t_max": self.t_max,
        }


class EDMSDE(AbstractSDE):
    """EDM schedule (Karras et al. 2022): ``x_t = x0 + t z``, time *is* the noise level.

    ``t`` runs over ``[sigma_min, sigma_max]``; the forward SDE is ``dx = sqrt(2t) dW``.
    Training draws ``log t ~ N(p_mean, p_std^2)``.
    """

    sigma_min: float = eqx.field(static=True, default=0.002)
    sigma_max: float = eqx.field(static=True, default=80.0)
    p_mean: float = eqx.field(static=True, default=-1.2)
    p_std: float = eqx.field(static=True, default=1.2)

    def __check_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"EDMSDE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def alpha(self, t):
        return jnp.ones_like(_as_float(t))

    def sigma(self, t):
        return _as_float(t)

    def drift_coefficient(self, t):
        return jnp.zeros_like(_as_float(t))

    def diffusion(self, t):
        return jnp.sqrt(2.0 * _as_float(t))

    def time_from_scaled_sigma(self, scaled_sigma):
        return scaled_sigma

    def time_grid(self, num_steps: int, dtype: Any = None, rho: float = 7.0) -> Array:
        """Karras et al. spacing ``(t_max^(1/rho) + i/N (t_min^(1/rho) - t_max^(1/rho)))^rho``."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        frac = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
        lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
        grid = (hi + frac * (lo - hi)) ** rho
        return grid.at[0].set(self.sigma_max).at[-1].set(self.sigma_min)  # exact end points

    def sample_training_time(self, *, key, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        return jnp.exp(self.p_mean + self.p_std * jr.normal(key, (), dtype))

    def config(self):
        return {
            "kind": "edm",
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "p_mean": self.p_mean,
            "p_std": self.p_std,
        }


_SDE_KINDS = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}


def sde_from_config(config: dict) -> AbstractSDE:
    """Rebuild an SDE (or a flow-matching interpolant) from ``sde.config()``."""
    from ._interpolants import INTERPOLANT_KINDS  # they subclass AbstractSDE: imported here

    kinds = {**_SDE_KINDS, **INTERPOLANT_KINDS}
    if not isinstance(config, dict) or config.get("kind") not in kinds:
        raise ValueError(
            f"sde_from_config(config=...) needs a dict with 'kind' in {sorted(kinds)}, got {config!r}"
        )
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    return kinds[config["kind"]](**kwargs)
