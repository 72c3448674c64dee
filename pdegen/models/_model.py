"""A score model: network + SDE + parameterisation + per-channel data normalisation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._interpolants import denoiser_from_velocity, process_rates, velocity_from_denoiser
from ._sde import AbstractSDE

PARAMETERISATIONS = ("epsilon", "denoiser", "velocity")


class Normalisation(eqx.Module):
    """Per-channel affine normalisation ``(x - mean) / std`` along axis 0 of one example.

    For fields ``(C, H, W)`` the channel axis is 0; for vectors ``(D,)`` each coordinate is a
    channel. ``mean`` and ``std`` are stored as tuples of floats (static, never trained).
    """

    mean: tuple = eqx.field(static=True)
    std: tuple = eqx.field(static=True)

    def __check_init__(self):
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"Normalisation: mean and std lengths differ ({len(self.mean)} vs {len(self.std)})"
            )
        if any(not (s > 0 and math.isfinite(s)) for s in self.std):
            raise ValueError(f"Normalisation(std=...) must be positive and finite, got {self.std}")

    @classmethod
    def identity(cls, channels: int) -> Normalisation:
        return cls(tuple([0.0] * channels), tuple([1.0] * channels))

    @classmethod
    def fit(cls, data, *, min_std: float = 1e-8) -> Normalisation:
        """Per-channel mean/std of a data set of shape ``(N, C, ...)``."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim < 2:
            raise ValueError(
                f"Normalisation.fit(data=...) needs shape (N, C, ...), got {data.shape}"
            )
        axes = (0,) + tuple(range(2, data.ndim))
        mean = data.mean(axis=axes)
        std = np.maximum(data.std(axis=axes), min_std)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _coeffs(self, x: Array):
        extra = (1,) * (x.ndim - 1)
        mean = jnp.asarray(self.mean, x.dtype).reshape((-1,) + extra)
        std = jnp.asarray(self.std, x.dtype).reshape((-1,) + extra)
        return mean, std

    def normalise(self, x: Array) -> Array:
        """Physical units -> normalised; ``x`` one example ``(C, ...)``."""
        mean, std = self._coeffs(x)
        return (x - mean) / std

    def unnormalise(self, x: Array) -> Array:
        """Normalised -> physical units; ``x`` one example ``(C, ...)``."""
        mean, std = self._coeffs(x)
        return x * std + mean

    def config(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


class DiffusionModel(eqx.Module):
    """A network wrapped as a denoiser / score / noise predictor for one SDE.

    The network sees ``c_in * x / alpha`` and the noise label ``log(sigma / alpha) / 4``
    (EDM preconditioning, Karras et al. 2022, applied to ``x / alpha`` so that VP, VE and EDM
    share it). ``parameterisation="epsilon"``: the network predicts the noise;
    ``"denoiser"``: ``D = c_skip x~ + c_out F(c_in x~)``; ``"velocity"`` (flow matching, with an
    interpolant such as :class:`LinearInterpolant` as ``sde``): the network predicts the velocity
    ``v = c_v F`` of ``x_t = alpha x0 + sigma z``, ``c_v = sqrt(alpha'^2 sigma_data^2 + sigma'^2)``
    (unit-variance target), and the denoiser, noise and score follow from ``v``, so a flow model
    serves every score-based sampler and guidance method. All methods work in *normalised*
    units on one example of shape ``data_shape`` and return ``x``'s dtype.
    """

    network: eqx.Module
    sde: AbstractSDE
    normalisation: Normalisation
    data_shape: tuple = eqx.field(static=True)
    parameterisation: str = eqx.field(static=True, default="epsilon")
    sigma_data: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"DiffusionModel(parameterisation=...) must be one of {PARAMETERISATIONS}, got {self.parameterisation!r}"
            )
        if self.normalisation.channels != self.data_shape[0]:
            raise ValueError(
                f"DiffusionModel: normalisation has {self.normalisation.channels} channels but data_shape "
                f"{self.data_shape} has {self.data_shape[0]}"
            )
        net_sd = getattr(self.network, "sigma_data", None)
        if net_sd is not None and (
            self.parameterisation != "denoiser" or float(net_sd) != float(self.sigma_data)
        ):
            raise ValueError(
                f"DiffusionModel: the network assumes the denoiser parameterisation with sigma_data="
                f"{net_sd}; got parameterisation={self.parameterisation!r}, sigma_data={self.sigma_data}"
            )

    @property
    def resolution_free(self) -> bool:
        """Whether the network's weights serve any grid (e.g. :class:`SpectralDenoiser`)."""
        return bool(getattr(self.network, "resolution_free", False))

    def at_shape(self, shape: Sequence[int]) -> DiffusionModel:
        """The same model for examples of ``shape`` (``(C, H, W)`` with the same channels); only
        for resolution-free networks, otherwise a ``ValueError``.

        The noise is white per pixel, so a field's largest modes carry a pixel-level variance that
        grows with the number of pixels; an SDE with a ``sigma_max`` (EDM, VE) has it scaled by
        ``sqrt(H W / (H0 W0))``, which keeps the largest noise level per unit area (what the
        sampler must exceed to start from the prior's noise) the same on every grid."""
        shape = tuple(int(s) for s in shape)
        if shape == tuple(self.data_shape):
            return self
        if not self.resolution_free:
            raise ValueError(
                f"this model's network ({type(self.network).__name__}) was built for examples of shape "
                f"{tuple(self.data_shape)} and is not resolution-free; got {shape}"
            )
        if len(shape) != len(self.data_shape) or shape[0] != self.data_shape[0] or min(shape) < 1:
            raise ValueError(
                f"at_shape: need ({self.data_shape[0]}, H, W) with H, W >= 1, got {shape}"
            )
        sde = self.sde
        if hasattr(sde, "sigma_max"):
            factor = math.sqrt(math.prod(shape[1:]) / math.prod(self.data_shape[1:]))
            sde = dataclasses.replace(sde, sigma_max=float(sde.sigma_max) * factor)
        return dataclasses.replace(self, data_shape=shape, sde=sde)

    def _precondition(self, x: Array, t: Array):
        t = jnp.asarray(t, x.dtype)
        alpha = self.sde.alpha(t).astype(x.dtype)
        sigma_t = (self.sde.sigma(t) / alpha).astype(x.dtype)
        x_scaled = x / alpha
        sd2 = self.sigma_data**2
        c_in = 1.0 / jnp.sqrt(sigma_t**2 + sd2)
        raw = self.network(c_in * x_scaled, jnp.log(sigma_t) / 4.0).astype(x.dtype)
        return t, alpha, sigma_t, x_scaled, raw

    def denoiser(self, x: Array, t: Array) -> Array:
        """``E[x0 | x_t]`` (normalised units)."""
        if self.parameterisation == "velocity":
            return denoiser_from_velocity(self.sde, x, t, self.velocity(x, t))
        t, alpha, sigma_t, x_scaled, raw = self._precondition(x, t)
        if self.parameterisation == "epsilon":
            return x_scaled - sigma_t * raw
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma_t**2 + sd2)
        c_out = sigma_t * self.sigma_data / jnp.sqrt(sigma_t**2 + sd2)
        return c_skip * x_scaled + c_out * raw

    def epsilon(self, x: Array, t: Array) -> Array:
        """Predicted standard noise ``z`` in ``x_t = alpha x0 + sigma z``."""
        if self.parameterisation == "epsilon":
            return self._precondition(x, t)[-1]
        return self.sde.epsilon_from_denoiser(x, t, self.denoiser(x, t))

    def velocity(self, x: Array, t: Array) -> Array:
        """Marginal velocity ``E[alpha' x0 + sigma' z | x_t = x]`` (normalised units): the vector
        field whose ODE carries noise at ``t_max`` to data at ``t_min`` (any parameterisation)."""
        if self.parameterisation != "velocity":
            return velocity_from_denoiser(self.sde, x, t, self.denoiser(x, t))
        raw = self._precondition(x, t)[-1]
        _, _, alpha_rate, sigma_rate = process_rates(self.sde, jnp.asarray(t, x.dtype))
        scale = jnp.sqrt(alpha_rate**2 * self.sigma_data**2 + sigma_rate**2).astype(x.dtype)
        return scale * raw

    def score(self, x: Array, t: Array) -> Array:
        """``grad log p_t(x)`` (normalised units)."""
        return self.sde.score_from_epsilon(x, t, self.epsilon(x, t))

    def __call__(self, x: Array, t: Array) -> Array:
        """Alias of :meth:`score`, so a model can be passed where ``score_fn(x, t)`` is expected."""
        return self.score(x, t)

    def check_compatible(self, shape: Sequence[int], *, name: str = "data") -> None:
        """Raise ``ValueError`` naming ``name`` unless one example has shape ``data_shape`` (any
        ``(C, H, W)`` with the same channels for resolution-free networks).

        ``shape`` may include a leading batch axis.
        """
        shape = tuple(int(s) for s in shape)
        want = tuple(self.data_shape)
        if self.resolution_free and len(shape) in (len(want), len(want) + 1):
            if shape[-len(want)] == want[0] and min(shape) >= 1:
                return
        if shape[-len(want) :] != want or len(shape) not in (len(want), len(want) + 1):
            chan = (
                f"{want[0]} channel(s) of shape {want[1:]}"
                if len(want) > 1
                else f"vectors of length {want[0]}"
            )
            raise ValueError(
                f"`{name}` has shape {shape} but this model expects examples of shape {want} "
                f"({chan}), optionally with a leading batch axis"
            )

    def config(self) -> dict:
        return {
            "network": self.network.config(),
            "sde": self.sde.config(),
            "normalisation": self.normalisation.config(),
            "data_shape": list(self.data_shape),
            "parameterisation": self.parameterisation,
            "sigma_data": self.sigma_data,
        }


def model_from_config(config: dict, *, key: Array | None = None) -> DiffusionModel:
    """Rebuild a :class:`DiffusionModel` (random weights) from ``model.config()``."""
    from ._networks import network_from_config
    from ._sde import sde_from_config

    try:
        norm = Normalisation(
            tuple(config["normalisation"]["mean"]), tuple(config["normalisation"]["std"])
        )
        return DiffusionModel(
            network=network_from_config(config["network"], key=key),
            sde=sde_from_config(config["sde"]),
            normalisation=norm,
            data_shape=tuple(int(s) for s in config["data_shape"]),
            parameterisation=config["parameterisation"],
            sigma_data=float(config["sigma_data"]),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"model_from_config(config=...): malformed model config ({err!r})"
        ) from err
