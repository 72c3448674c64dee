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
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr

from .. import models
from ._guidance import energy_guidance

__all__ = ["sample_constrained"]


def sample_constrained(model, constraint: Callable, *, beta: float, num_samples: int, key,
                       num_steps: int = 200, corrector_steps: int = 1, langevin_steps: int = 200,
                       langevin_step_size: float = 1e-3, guidance_start: float = 0.5):
    """Samples ``(num_samples, *model.data_shape)`` (physical units) of ``p_data exp(-beta h)``.

    ``model`` is a trained :class:`pdegen.models.DiffusionModel`; ``constraint`` ``h(x)`` takes
    one example in physical units and returns a scalar (differentiable). ``beta >= 0``
    (``beta = 0`` samples the model). ``num_steps`` predictor-corrector steps (Euler-Maruyama
    and ``corrector_steps`` Langevin steps, both with the guided score) of the reverse
    SDE (guidance active for ``t <= guidance_start``: near ``t = 1`` the Tweedie estimate is
    divided by ``alpha(t) ~ 0`` and its gradient is useless), then ``langevin_steps`` unadjusted
    Langevin steps of size ``langevin_step_size`` (normalised units) at ``t = sde.t_min``.
    """
    if not beta >= 0:
        raise ValueError(f"sample_constrained(beta=...): must be >= 0, got {beta}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"sample_constrained(num_samples=...): must be a positive int, got {num_samples!r}")
    if langevin_steps < 0 or not langevin_step_size > 0:
        raise ValueError("sample_constrained: need langevin_steps >= 0 and langevin_step_size > 0")
    norm = model.normalisation
    sde = model.sde

    def energy(z):  # h in normalised units, times beta
        return beta * jnp.asarray(constraint(norm.unnormalise(z)))

    test = jax.eval_shape(constraint, jax.ShapeDtypeStruct(model.data_shape, jnp.float64))
    if test.shape != ():
        raise ValueError(f"sample_constrained(constraint=...): h must return a scalar for one "
                         f"example of shape {model.data_shape}, got shape {test.shape}")
    score = model.score
    guided = energy_guidance(score, sde, energy, weight=1.0, start=guidance_start)
    k1, k2 = jr.split(key)
    dtype = jnp.zeros((), dtype=float).dtype
    z = models.sample(guided, sde, model.data_shape, num_samples, key=k1,
                      method="predictor_corrector", num_steps=num_steps,
                      corrector_steps=corrector_steps, dtype=dtype)
    t_min = jnp.asarray(sde.t_min, dtype=dtype)

    def drift(x):
        return score(x, t_min) - jax.grad(energy)(x)

    def langevin(x, k):
        def body(x, kk):
            noise = jr.normal(kk, x.shape, dtype=x.dtype)
            return x + langevin_step_size * drift(x) + jnp.sqrt(2 * langevin_step_size) * noise, None

        return jax.lax.scan(body, x, jr.split(k, langevin_steps))[0]

    if langevin_steps:
        z = jax.jit(jax.vmap(langevin))(z, jr.split(k2, num_samples))
    return jax.vmap(norm.unnormalise)(z)
