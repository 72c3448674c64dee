"""Latent-Gaussian priors: a Gaussian random field seen through an elementwise map.

Darcy's two-valued permeability (``high`` where a GRF is ``>= 0``, else ``low``) has no score of
its own, but it is the image of a GRF ``f`` under a threshold. Its smooth surrogate

    a = low + (high - low) sigmoid(sharpness * f / sd(f))

gives a prior whose *state* is the GRF (exact noised score, white-noise coordinates) and whose
field is ``a``: :func:`threshold_prior`. Every method that moves the state (the guided samplers,
sequential Monte Carlo, MAP and pCN in white-noise coordinates) then works on the thresholded
field; the exact Gaussian posterior does not (the map to the data is nonlinear).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import numpy as np

from pdegen import fem
from pdegen.models import AbstractSDE

from ._priors import Prior, grf_prior


class SmoothThreshold(eqx.Module):
    """``v -> low + (high - low) sigmoid(v / width)``: a smooth step from ``low`` to ``high``.

    Attributes:
        low, high: the two values (``low < high``).
        width: the field change over which the step rises by ``(high - low) / 4`` near zero
            (``sd / sharpness`` for a field of standard deviation ``sd``).
    """

    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)
    width: float = eqx.field(static=True)

    def __call__(self, v):
        return self.low + (self.high - self.low) * jax.nn.sigmoid(v / self.width)


def threshold_prior(
    mesh: fem.Mesh,
    *,
    low: float = 3.0,
    high: float = 12.0,
    sharpness: float = 4.0,
    alpha: float = 2.0,
    tau: float = 3.0,
    sde: AbstractSDE | None = None,
    latent: Prior | None = None,
) -> Prior:
    """A two-valued coefficient as a prior: the task GRF through a smooth threshold.

    The field is ``low + (high - low) sigmoid(sharpness f / sd)`` with ``f`` the DCT Gaussian random
    field of :func:`grf_prior` (``alpha``, ``tau``) on the structured ``mesh`` and ``sd`` its
    pointwise standard deviation: DiffusionPDE's Darcy permeability (3 / 12) as ``sharpness`` grows.
    The sampler's state is ``f`` (exact score), so the prior is latent-Gaussian
    (:attr:`Prior.latent_gaussian`: MAP and pCN in white-noise coordinates, SMC and guidance through
    the nonlinear map; no closed-form posterior).

    Args:
        mesh: a structured grid mesh (:func:`pdegen.fem.unit_square` / ``rectangle``).
        low, high: the coefficient's two values (``0 < low < high``).
        sharpness: steepness of the threshold in units of the field's standard deviation (``> 0``).
        alpha, tau: the GRF's smoothness and inverse length scale.
        sde: the forward process of the state (default :class:`pdegen.models.VPSDE`).
        latent: another prior over the same GRF to threshold instead of the exact one, e.g. a
            learned one (:func:`learned_prior` of ``"grf-a"``): the threshold is the same (its
            width from the exact field's standard deviation), the score is the latent prior's, and
            the prior is then no longer latent-Gaussian (no MAP or pCN in white-noise coordinates;
            SMC and guidance work).

    Raises:
        ValueError: ``low`` / ``high`` out of order or not positive, ``sharpness <= 0``, a
            ``latent`` prior on another mesh or with a transform of its own.
    """
    if not (0 < low < high and np.isfinite(high)):
        raise ValueError(f"threshold_prior: need 0 < low < high < inf, got low={low}, high={high}")
    if not (sharpness > 0 and np.isfinite(sharpness)):
        raise ValueError(f"threshold_prior: sharpness must be > 0, got {sharpness}")
    base = grf_prior(mesh, alpha=alpha, tau=tau, sde=sde)
    # the state has unit pointwise RMS and the field f = scale * state: sd(f) = scale
    step = SmoothThreshold(float(low), float(high), base.scale / float(sharpness))
    if latent is not None:
        if not isinstance(latent, Prior) or latent.size != base.size:
            raise ValueError(
                f"threshold_prior: latent must be a Prior on the mesh's {base.size} nodes, got "
                f"{getattr(latent, 'size', type(latent).__name__)}"
            )
        if latent.transform is not None:
            raise ValueError(
                f"threshold_prior: latent {latent.name!r} has a transform of its own; pass the "
                "prior of the untransformed field"
            )
        base = latent
    return dataclasses.replace(
        base, transform=step, name=f"threshold({low:g}/{high:g}) of {base.name}"
    )


def latent_coefficient(physics: fem.PDETask, z, *, alpha, tau, sharpness):
    """The coefficient image of a task family for white noise ``z`` ``(g, g)``: the GRF, or for a
    two-valued permeability (Darcy) its :class:`SmoothThreshold` (the field of
    :func:`threshold_prior`)."""
    field = fem.grf_from_white_noise(z, alpha=alpha, tau=tau)
    parameter = physics.parameter
    if not isinstance(parameter, fem.ThresholdPermeability):
        return field
    sd = float(np.sqrt(np.mean(fem.grf_mode_std(z.shape, alpha=alpha, tau=tau) ** 2)))
    return SmoothThreshold(parameter.low, parameter.high, sd / sharpness)(field)


__all__ = ["SmoothThreshold", "latent_coefficient", "threshold_prior"]
