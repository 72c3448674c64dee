"""Field priors restricted to hard constraints, sampled so that every sample satisfies them exactly.

Two physical examples on a ``g x g`` grid of the unit square, both built on the DCT Gaussian random
field of the benchmark tasks (:func:`pdegen.fem.gaussian_random_field`, exact noised score), with
the constraint set handled by :mod:`pdegen.models`' reflected / Metropolis samplers:

- :func:`bounded_diffusivity_prior`: a log-normal diffusivity ``a = median exp(log_std x)`` (``x``
  the GRF scaled to unit pointwise standard deviation) restricted to ``a_min <= a <= a_max`` at every
  pixel: a :class:`pdegen.models.Box` on ``x``;
- :func:`fixed_mass_source_prior`: a source ``f = mass + std x`` (pixel area ``1/g^2``, so the total
  mass is the mean of ``f``; the GRF has no constant mode, so every draw has exactly this mass)
  restricted to ``f >= 0``: a :class:`pdegen.models.Simplex` on ``f``.

The score is that of the *unconstrained* field (noised by the VE process): inside the set and at
small noise it is the restricted prior's score, and the samplers' reflection / rejection supply the
boundary. The restricted prior itself (the unconstrained law conditioned on the set) can be drawn
exactly by rejection (:meth:`HardConstrainedPrior.rejection_sample`), the reference against which
the benchmark measures the samplers.

Measured (``benchmarks/constrained.py``, 32 x 32, 10 seeds x 30 samples, 300 steps): every sample is
feasible, but the reverse samplers alone, driven by the *unconstrained* score, miss most of the
power of the largest scales (octave 1-2 of the wavenumber at 0.04-0.07 of the restricted prior's,
2-4 at 0.23-0.34): above the set's width the unconstrained noised score is not the score of the
reflected-noised restricted prior, and the reverse process started from the uniform law never
grows those scales. The Metropolis sampler on the simplex (one acceptance for all 1024 entries)
also keeps excess small-scale roughness (octaves 4-16 at 3-4x). 500 steps of
:meth:`HardConstrainedPrior.pcn_correct` (exact MCMC for the restricted prior) bring every octave
within 4% on average; after them the starting states are forgotten (reflected and Metropolis
starts give the same numbers), so here the diffusion serves as a feasible initialisation. A
score trained on constrained data (:func:`pdegen.models.train_reflected`) is what the samplers
need to be exact on their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from pdegen import fem
from pdegen._dct import idct2
from pdegen._errors import as_count
from pdegen.models import VESDE, AbstractDomain, Box, Simplex, sample_constrained_domain

from ._priors import GaussianScore

__all__ = ["HardConstrainedPrior", "bounded_diffusivity_prior", "fixed_mass_source_prior"]


def _identity(v):
    return v


class HardConstrainedPrior(eqx.Module):
    """A grid Gaussian random field restricted to a constraint set on its state.

    The state ``x`` (shape ``(1, g, g)``) is what the sampler moves; the field is
    ``to_field(x) = transform(offset + scale * x)`` with ``transform`` an elementwise map
    (``jnp.exp`` for a log-normal field, the identity otherwise).
    Unconstrained, ``(x - centre) `` has independent orthonormal-DCT modes of variances ``mode_var``.

    Attributes:
        score: ``score(x, t)`` of the unconstrained state noised by ``sde`` (exact).
        sde: a :class:`pdegen.models.VESDE`.
        domain: the constraint set on the state (a Box or a Simplex).
        mode_var: ``(g, g)`` DCT mode variances of the unconstrained state.
        centre: the unconstrained state's mean (a constant field).
        offset, scale, transform: the state-to-field map.
        name: a label for tables.
    """

    score: GaussianScore
    sde: VESDE
    domain: AbstractDomain
    mode_var: jax.Array
    centre: float = eqx.field(static=True)
    offset: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    transform: Callable[[jax.Array], jax.Array] = eqx.field(static=True)
    name: str = eqx.field(static=True)

    def score_fn(self, x, t):
        """The unconstrained noised score at state ``x`` (one example ``(1, g, g)``)."""
        return self.score(x - jnp.asarray(self.centre, x.dtype), t)

    def to_field(self, x) -> jax.Array:
        """The physical field ``(g, g)`` of one state ``(1, g, g)``."""
        return self.transform(self.offset + self.scale * x[0])

    def sample(
        self,
        num_samples: int,
        *,
        key,
        method: str = "reflected",
        num_steps: int = 500,
        corrector_steps: int = 1,
        snr: float = 0.16,
        pcn_steps: int = 0,
        pcn_beta: float = 0.3,
    ) -> jax.Array:
        """States ``(num_samples, 1, g, g)`` in the constraint set.

        First the reflected or Metropolis reverse sampler of
        :func:`pdegen.models.sample_constrained_domain` (``method``) with the unconstrained score
        (``corrector_steps`` constrained Langevin steps per noise level); then ``pcn_steps`` steps
        of :meth:`pcn_correct` from those states. Every returned state lies in the set.
        """
        if not isinstance(pcn_steps, int) or pcn_steps < 0:
            raise ValueError(f"sample(pcn_steps=...) must be an int >= 0, got {pcn_steps!r}")
        key, pcn_key = jr.split(key)
        x = sample_constrained_domain(
            self.score_fn,
            self.sde,
            self.domain,
            num_samples,
            key=key,
            method=method,
            num_steps=num_steps,
            corrector_steps=corrector_steps,
            snr=snr,
        )
        if pcn_steps:
            x = self.pcn_correct(x, key=pcn_key, num_steps=pcn_steps, beta=pcn_beta)
        return x

    def pcn_correct(self, states, *, key, num_steps: int, beta: float = 0.3) -> jax.Array:
        """``num_steps`` preconditioned Crank-Nicolson steps with the set's indicator as likelihood,
        from each of ``states`` ``(N, 1, g, g)`` (all in the set).

        Proposal ``x' = c + sqrt(1 - beta^2) (x - c) + beta xi``, ``xi`` an unconstrained prior draw
        (centred), accepted iff ``x'`` lies in the set: reversible with respect to the restricted
        prior, so it removes the sampler's bias as the steps grow; every state stays in the set.
        (The proposal keeps the sum of a fixed-mass source: ``xi`` has no constant mode.)

        Raises:
            ValueError: ``beta`` outside ``(0, 1]``, a state outside the set.
        """
        if not 0 < beta <= 1:
            raise ValueError(f"pcn_correct(beta=...) must lie in (0, 1], got {beta}")
        self.domain.check_point(np.asarray(states), "states")
        std = jnp.sqrt(self.mode_var)
        c = self.centre
        rho = math.sqrt(1.0 - beta**2)

        def chain(x, k):
            def body(x, kk):
                xi = idct2(std * jr.normal(kk, std.shape, x.dtype))
                prop = self.domain.restore(c + rho * (x - c) + beta * xi[None])
                ok = self.domain.contains(prop)
                return jnp.where(ok, prop, x), ok

            return jax.lax.scan(body, x, jr.split(k, num_steps))

        run = jax.jit(jax.vmap(chain))
        out, _ = run(jnp.asarray(states), jr.split(key, states.shape[0]))
        return out

    def sample_unconstrained(self, num_samples: int, *, key) -> jax.Array:
        """Exact draws ``(num_samples, 1, g, g)`` of the unconstrained state."""
        std = jnp.sqrt(self.mode_var)
        z = jr.normal(key, (int(num_samples),) + tuple(std.shape), std.dtype)
        x = idct2(std[None] * z)
        return x[:, None] + self.centre

    def rejection_sample(
        self, num_samples: int, *, key, batch: int = 2048, max_draws: int = 10_000_000
    ) -> tuple[np.ndarray, float]:
        """Exact draws of the restricted prior by rejection: unconstrained draws kept when they lie
        in the set. Returns ``(states (num_samples, 1, g, g), acceptance rate)``.

        Raises:
            ValueError: fewer than ``num_samples`` accepted within ``max_draws`` draws (the set has
                too little prior mass for rejection).
        """
        inside = jax.jit(jax.vmap(self.domain.contains))
        kept, drawn, accepted = [], 0, 0
        while accepted < num_samples:
            if drawn >= max_draws:
                raise ValueError(
                    f"rejection_sample: {accepted} of {drawn} draws in the set; too few for "
                    f"{num_samples} samples within max_draws={max_draws}"
                )
            key, sub = jr.split(key)
            x = self.sample_unconstrained(batch, key=sub)
            ok = np.asarray(inside(x))
            kept.append(np.asarray(x)[ok])
            drawn += batch
            accepted += int(ok.sum())
        return np.concatenate(kept)[:num_samples], accepted / drawn


def _grid(grid) -> int:
    return as_count(grid, "`grid` (a g x g image)", 2)


def bounded_diffusivity_prior(
    grid: int,
    *,
    a_min: float,
    a_max: float,
    median: float = 1.0,
    log_std: float = 1.0,
    alpha: float = 2.0,
    tau: float = 3.0,
    sigma_min: float = 1e-4,
) -> HardConstrainedPrior:
    """A positive, bounded diffusivity (e.g. Darcy's ``a``): log-normal, restricted pointwise.

    ``a = median exp(log_std x)`` with ``x`` the GRF (``alpha``, ``tau``) scaled to unit pointwise
    standard deviation, restricted to ``a_min <= a <= a_max`` at every pixel: the box
    ``log(a_min / median) / log_std <= x <= log(a_max / median) / log_std``. The VE process runs
    from ``sigma_max`` = twice the box width (where reflected noising is uniform on the box to
    ``3e-9``) down to ``sigma_min``.

    Args:
        grid: ``g`` (the field is ``g x g``).
        a_min, a_max: bounds, ``0 < a_min < median < a_max``.
        median, log_std: the log-normal's median and log standard deviation (``> 0``).
        alpha, tau: the GRF's smoothness and inverse length scale.
        sigma_min: the smallest noise level (state units).

    Returns:
        A :class:`HardConstrainedPrior` with ``transform=jnp.exp``.

    Raises:
        ValueError: bounds out of order or not positive, ``log_std <= 0``, a bad grid.
    """
    g = _grid(grid)
    if not (0 < a_min < median < a_max and math.isfinite(a_max)):
        raise ValueError(
            f"bounded_diffusivity_prior: need 0 < a_min < median < a_max < inf, got a_min={a_min}, "
            f"median={median}, a_max={a_max}"
        )
    if not log_std > 0:
        raise ValueError(f"bounded_diffusivity_prior(log_std=...) must be > 0, got {log_std}")
    std = fem.grf_mode_std((g, g), alpha=alpha, tau=tau)
    std = std / math.sqrt(np.sum(std**2) / std.size)  # unit pointwise standard deviation
    lo = math.log(a_min / median) / log_std
    hi = math.log(a_max / median) / log_std
    sde = VESDE(sigma_min=sigma_min, sigma_max=2.0 * (hi - lo))
    return HardConstrainedPrior(
        GaussianScore(sde, jnp.asarray(std), None, None, (1, g, g), "dct"),
        sde,
        Box(lo, hi, shape=(1, g, g)),
        jnp.asarray(std**2),
        0.0,
        math.log(median),
        float(log_std),
        jnp.exp,
        f"diffusivity in [{a_min:g}, {a_max:g}]",
    )


def fixed_mass_source_prior(
    grid: int,
    *,
    mass: float,
    std: float,
    alpha: float = 2.0,
    tau: float = 3.0,
    sigma_min: float = 1e-4,
) -> HardConstrainedPrior:
    """A non-negative source with a fixed total mass: ``f = mass + std x >= 0``, ``mean(f) = mass``.

    ``x`` is the GRF (``alpha``, ``tau``) at unit pointwise standard deviation; with pixel area
    ``1/g^2`` the total mass ``sum(f) / g^2`` equals ``mass`` for every draw (the GRF has no constant
    mode). The state is ``f`` itself and the set the simplex ``{f >= 0, sum(f) = mass g^2}``. The VE
    process runs from ``sigma_max = 4 max(mass, std)`` down to ``sigma_min`` (units of ``f``).

    Args:
        grid: ``g``; mass: the total mass (``> 0``); std: pointwise standard deviation (``> 0``).
        alpha, tau: the GRF's parameters; sigma_min: the smallest noise level.

    Returns:
        A :class:`HardConstrainedPrior` with the identity ``transform``.

    Raises:
        ValueError: ``mass <= 0`` (no non-negative field has it), ``std <= 0``, a bad grid.
    """
    g = _grid(grid)
    if not (math.isfinite(mass) and mass > 0):
        raise ValueError(
            f"fixed_mass_source_prior(mass=...) must be > 0 (a non-negative source with mass <= 0 "
            f"is empty or zero), got {mass}"
        )
    if not std > 0:
        raise ValueError(f"fixed_mass_source_prior(std=...) must be > 0, got {std}")
    unit = fem.grf_mode_std((g, g), alpha=alpha, tau=tau)
    mode_std = std * unit / math.sqrt(np.sum(unit**2) / unit.size)
    sde = VESDE(sigma_min=sigma_min, sigma_max=4.0 * max(mass, std))
    return HardConstrainedPrior(
        GaussianScore(sde, jnp.asarray(mode_std), None, None, (1, g, g), "dct"),
        sde,
        Simplex((1, g, g), mass=mass * g * g),
        jnp.asarray(mode_std**2),
        float(mass),
        0.0,
        1.0,
        _identity,
        f"source of mass {mass:g}, >= 0",
    )
