"""Constrained optimisation with a learned prior (Kong et al. 2024, arXiv 2402.18012).

To favour points that satisfy a constraint ``h(x) ~ 0`` (or minimise an objective ``h``) while
staying on the support of a data distribution known only through a trained diffusion model,
sample the tilted density

    p_beta(x) ∝ p_data(x) exp(-beta h(x)).

As ``beta`` grows the samples concentrate on the minimisers of ``h`` *within* the data support.
Two stages: (1) reverse diffusion with energy guidance ``score(x, t) - beta grad_x
h(E[x_0 | x_t])`` (:func:`pdegen.inverse.energy_guidance`), which moves mass towards the
low-``h`` part of the support; (2) Langevin correction at the smallest noise level with
drift ``score(x, t_min) - beta grad h(x)``, which targets ``p_beta`` up to the ``t_min``
smoothing and removes the bias of the Tweedie approximation in stage 1.

Fields: for a prior over joint fields such as ``(a, u)`` pairs where ``u`` solves a PDE given
``a`` (``pdegen.models.load_pretrained("poisson-joint-32")``), the data lie on a
lower-dimensional set and the score at ``t_min`` is stiff across it (of order ``1/sigma_min^2``),
so a fixed Langevin step there is unstable: use ``langevin_steps=0`` (the guided
predictor-corrector steps then do the tilting) and ``denoise_final=True`` (the Tweedie estimate
at ``t_min``, without the residual noise that a PDE residual amplifies).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .. import models
from ._guidance import energy_guidance

__all__ = ["sample_constrained"]


def sample_constrained(
    model,
    constraint: Callable,
    *,
    beta: float,
    num_samples: int,
    key,
    num_steps: int = 200,
    corrector_steps: int = 1,
    langevin_steps: int = 200,
    langevin_step_size: float = 1e-3,
    guidance_start: float | None = None,
    denoise_final: bool = False,
    sampler: str = "predictor_corrector",
):
    """Samples ``(num_samples, *model.data_shape)`` (physical units) of ``p_data exp(-beta h)``.

    ``model`` is a trained :class:`pdegen.models.DiffusionModel`; ``constraint`` ``h(x)`` takes
    one example in physical units and returns a scalar (differentiable). ``beta >= 0``
    (``beta = 0`` samples the model). ``num_steps`` predictor-corrector steps (Euler-Maruyama
    and ``corrector_steps`` Langevin steps, both with the guided score) of the reverse
    SDE (guidance active for ``t <= guidance_start``, in the SDE's time units; default: while
    the noise-to-signal ratio ``sigma(t) / alpha(t)`` is at most 4, i.e. ``t <= 0.53`` for the
    VP SDE and noise levels up to 4 for the EDM schedule; near ``t_max`` of the VP SDE the
    Tweedie estimate is divided by ``alpha(t) ~ 0`` and its gradient is useless, while a tilt
    that has to move large-scale features of a field needs guidance from about that noise level
    on), then ``langevin_steps`` unadjusted
    Langevin steps of size ``langevin_step_size`` (normalised units) at ``t = sde.t_min``;
    ``denoise_final=True`` returns the model's Tweedie estimate ``E[x_0 | x_{t_min}]`` of the
    final state. ``beta = 0`` skips the guidance gradients (plain sampling). ``sampler`` names
    the reverse sampler of stage 1 (:data:`pdegen.models.SAMPLERS`; ``"ddim"`` takes one guided
    score per step where the predictor-corrector takes ``1 + corrector_steps``). With a
    deterministic sampler (``ddim`` at ``eta = 0``, ``probability_flow``, ``edm_heun``,
    ``flow_ode``) and ``langevin_steps=0`` the guidance moves the samples but nothing restores
    the tilted law's spread: where ``beta`` times the curvature of ``h`` (normalised units)
    exceeds about 2 the samples collapse past the minimiser of ``h`` (a Gaussian tilted by
    ``beta = 2`` with curvature 4: variance 0.002 for 0.44). The stochastic samplers, or
    Langevin steps, keep it; a flow prior (ODE samplers only) needs the Langevin steps.
    """
    if not beta >= 0:
        raise ValueError(f"sample_constrained(beta=...): must be >= 0, got {beta}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(
            f"sample_constrained(num_samples=...): must be a positive int, got {num_samples!r}"
        )
    if sampler not in models.SAMPLERS:
        raise ValueError(
            f"sample_constrained(sampler=...): expected one of "
            f"{sorted(models.SAMPLERS)}, got {sampler!r}"
        )
    if langevin_steps < 0 or not langevin_step_size > 0:
        raise ValueError("sample_constrained: need langevin_steps >= 0 and langevin_step_size > 0")
    sde = model.sde
    test = jax.eval_shape(constraint, jax.ShapeDtypeStruct(model.data_shape, jnp.float64))
    if test.shape != ():
        raise ValueError(
            f"sample_constrained(constraint=...): h must return a scalar for one "
            f"example of shape {model.data_shape}, got shape {test.shape}"
        )
    dtype = jnp.zeros((), dtype=float).dtype
    # beta is an array inside a pytree: a sweep over beta compiles the samplers once
    energy = _TiltEnergy(constraint, model.normalisation, jnp.asarray(beta, dtype))
    score = model.score
    if guidance_start is None:
        guidance_start = float(sde.time_from_scaled_sigma(jnp.asarray(4.0)))
    if beta == 0:
        guided = score
    else:
        guided = energy_guidance(score, sde, energy, weight=1.0, start=guidance_start)
    k1, k2 = jr.split(key)
    options = {"corrector_steps": corrector_steps} if sampler == "predictor_corrector" else {}
    z = models.sample(
        guided,
        sde,
        model.data_shape,
        num_samples,
        key=k1,
        method=sampler,
        num_steps=num_steps,
        dtype=dtype,
        **options,
    )
    t_min = jnp.asarray(sde.t_min, dtype=dtype)
    if langevin_steps:
        z = _langevin(
            score, energy, z, jr.split(k2, num_samples), t_min, langevin_steps, langevin_step_size
        )
    if denoise_final:
        z = _denoise(score, sde, z, t_min)
    return jax.vmap(model.normalisation.unnormalise)(z)


class _TiltEnergy(eqx.Module):
    """``beta h(x)`` of a normalised example ``z`` (``x`` its physical units)."""

    constraint: Callable = eqx.field(static=True)
    normalisation: models.Normalisation
    beta: jax.Array

    def __call__(self, z):
        return self.beta * jnp.asarray(self.constraint(self.normalisation.unnormalise(z)))


@eqx.filter_jit
def _langevin(score, energy, z, keys, t_min, steps: int, step_size: float):
    """``steps`` unadjusted Langevin steps on ``score(x, t_min) - grad energy(x)`` per sample."""

    def drift(x):
        return score(x, t_min) - jax.grad(energy)(x)

    def one(x, k):
        def body(x, kk):
            noise = jr.normal(kk, x.shape, dtype=x.dtype)
            return x + step_size * drift(x) + jnp.sqrt(2 * step_size) * noise, None

        return jax.lax.scan(body, x, jr.split(k, steps))[0]

    return jax.vmap(one)(z, keys)


@eqx.filter_jit
def _denoise(score, sde, z, t_min):
    return jax.vmap(lambda x: sde.tweedie_denoiser(score, x, t_min))(z)
