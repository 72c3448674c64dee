"""Posterior methods as objects: what :func:`pdegen.inverse.sample_posterior` runs.

Guided diffusion methods turn a prior's score into a conditional score; they see the problem
only through a :class:`GuidanceProblem` (the normalised observation ``x -> W G(field(x)) c``,
the normalised data, the noise level in those units and the prior variance along the observed
directions), so any prior and any likelihood combine with any method. Closed-form methods
(:class:`Exact`, :class:`MAP`) need a Gaussian prior.

Sequential Monte Carlo (:class:`SMC`) uses a guidance's Gaussian approximation as the twist of a
particle system whose weights correct it (asymptotically exact).

Names are accepted for convenience (``"tmpd"``, ``"pigdm"``, ``"smc"``, ...; :data:`FIELD_METHODS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._guidance import pigdm, projected_covariance_table, tmpd, tmpd_cached, tweedie_mean


class GuidanceProblem(NamedTuple):
    """What a guidance method sees (normalised units: unit noise is ``noise_std``).

    Attributes:
        score, sde: the prior's score and forward process.
        observe: ``x -> (m,)`` predicted data of a state.
        y: the data ``(m,)``.
        noise_std: the noise level (the whitened noise, scaled like ``y``).
        data_variance: prior variance of the state along the rows of the observation's Jacobian.
        step_weight: ``t -> 1 / (g(t)^2 dt)``: a score correction ``step_weight(t) v`` moves the
            sampler's state by ``v`` in one step.
        shape: the state's shape (for methods that precompute, e.g. ``TMPD("cached")``).
        variance: ``t -> r_t^2`` matched to the prior for PiGDM (a ``VarianceTable``), or
            ``None`` (PiGDM's closed form with ``data_variance``).
        states: clean prior samples ``(S, *shape)`` at which a precomputing method evaluates a
            learned prior's Tweedie covariance (``TMPD("cached")``), or ``None`` (the zero state,
            exact for a Gaussian prior).
        precomputed: what :meth:`Method.precompute` built from this problem once per call, so that
            every sample batch reuses it (``TMPD("cached")``'s :class:`CovarianceTable`), or
            ``None`` (``guide`` builds what it needs itself).
    """

    score: Callable
    sde: object
    observe: Callable
    y: jax.Array
    noise_std: float
    data_variance: float
    step_weight: Callable
    shape: tuple | None = None
    variance: Callable | None = None
    states: jax.Array | None = None
    precomputed: object = None


def step_weight(sde, num_steps: int):
    """``t -> 1 / (g(t)^2 dt(t))`` on the sampler's time grid of ``num_steps``: a score correction
    ``step_weight(t) v`` moves the sampler's state by ``v`` in one step, so guidance steps (DPS's
    ``scale``) are given in the units of the state."""
    ts = sde.time_grid(num_steps, jnp.float64)
    t_inc = ts[:-1][::-1]
    dt_inc = (ts[:-1] - ts[1:])[::-1]

    def weight(t):
        dt = jnp.interp(t, t_inc.astype(t.dtype), dt_inc.astype(t.dtype))
        return 1.0 / (sde.diffusion(t) ** 2 * dt)

    return weight


class Method(eqx.Module):
    """Base class of posterior methods."""

    guided: ClassVar[bool] = True
    # whether ``guide`` reads ``GuidanceProblem.states`` (clean samples of a learned prior)
    uses_prior_states: ClassVar[bool] = False

    @property
    def label(self) -> str:
        return type(self).__name__.lower()

    def precompute(self, p: GuidanceProblem):
        """What ``guide`` can reuse for every sample batch of one call (it does not depend on the
        sampler's keys), passed back as ``p.precomputed``; ``None`` when there is nothing."""
        return None


class TMPD(Method):
    """Tweedie moment projection (TMPD): a Gaussian likelihood with the Tweedie covariance.

    Tweedie moment projection (Boys et al. 2024): ``p(y|x_t)`` Gaussian with the Tweedie
    covariance; exact for Gaussian priors with a linear forward map. ``variant``: ``"full"``
    (``m`` network VJPs per step and an ``m x m`` solve), ``"cached"`` (the projected covariance
    computed once per call at ``num_times`` noise levels, :func:`projected_covariance_table`, at
    the zero state of a Gaussian prior or averaged over noised samples of a learned one, then one
    VJP per step: for hundreds of sensors), ``"diagonal"`` or ``"rowsum"`` (one VJP)."""

    variant: str = eqx.field(static=True, default="full")
    num_times: int = eqx.field(static=True, default=16)

    def __check_init__(self):
        if self.variant not in ("full", "cached", "diagonal", "rowsum"):
            raise ValueError(
                "TMPD: variant must be 'full', 'cached', 'diagonal' or 'rowsum', got "
                f"{self.variant!r}"
            )

    @property
    def label(self) -> str:
        return "tmpd" if self.variant == "full" else f"tmpd-{self.variant}"

    @property
    def uses_prior_states(self) -> bool:
        return self.variant == "cached"

    def precompute(self, p: GuidanceProblem):
        if self.variant != "cached":
            return None
        if p.shape is None:
            raise ValueError("TMPD('cached') needs the state's shape in the GuidanceProblem")
        return projected_covariance_table(
            p.score, p.sde, p.observe, shape=p.shape, num_times=self.num_times, states=p.states
        )

    def guide(self, p: GuidanceProblem):
        if self.variant == "cached":
            table = self.precompute(p) if p.precomputed is None else p.precomputed
            return tmpd_cached(
                p.score, p.sde, p.observe, p.y, shape=p.shape, noise_std=p.noise_std, table=table
            )
        return tmpd(p.score, p.sde, p.observe, p.y, noise_std=p.noise_std, variant=self.variant)


class PiGDM(Method):
    """Pseudoinverse-guided diffusion (PiGDM).

    Pseudoinverse guidance (Song et al. 2023): ``p(y | x_t) ~ N(A m, r_t^2 A A^T + s^2 I)``.
    ``r_t^2`` is PiGDM's closed form for white data whose variance is the prior variance along the
    observed directions (exact for Gaussian priors; from unguided prior samples for learned ones),
    or for white data of variance ``data_variance`` when given. ``matched=True``: ``r_t^2``
    matched at every time to the prior's Tweedie covariance along the observed rows
    (:func:`pdegen.inverse.matched_variance_table`, computed once per call at 48 times: exactly,
    ``2 m`` VJPs per time, for a Gaussian prior; for a learned one from 16 orthonormal trace probes
    per state, ``m`` observation VJPs and 16 network VJPs): the closed form overstates the spread of a smooth prior, so its guidance is too
    weak. Linearised for nonlinear forward maps."""

    data_variance: float | None = eqx.field(static=True, default=None)
    matched: bool = eqx.field(static=True, default=False)

    @property
    def label(self) -> str:
        return "pigdm-matched" if self.matched else "pigdm"

    def guide(self, p: GuidanceProblem):
        given = self.data_variance is not None
        return pigdm(
            p.score,
            p.sde,
            p.observe,
            p.y,
            noise_std=p.noise_std,
            data_variance=self.data_variance if given else p.data_variance,
            variance=p.variance if self.matched and not given else None,
        )


class DPS(Method):
    """Diffusion posterior sampling (DPS): descend the data misfit of the Tweedie estimate.

    Diffusion posterior sampling (Chung et al. 2023): the state moves against the gradient of the
    data misfit of its Tweedie estimate, one network VJP per evaluation.

    ``step="polyak"`` (the default): per sampler step the state moves by
    ``scale * (f - f_noise) / ||grad f||^2 * grad f`` with ``f = 0.5 ||y - A(D(x))||^2`` and
    ``f_noise = 0.5 m noise_std^2`` the misfit expected at the truth (Polyak's step): on a linearised
    problem each step removes a fraction ``scale / 2`` of the excess misfit whatever the operator's
    scale, and the step vanishes once the data are fitted to the noise level (stable for
    ``0 < scale < 2``). ``step="normalised"``: the DPS paper's rule, a step of
    ``scale * grad ||y - A(D(x))||`` (``zeta_i = scale / ||r||``), whose fixed length leaves the
    misfit oscillating at a level set by ``scale`` and the operator's norm."""

    scale: float = eqx.field(static=True, default=1.0)
    step: str = eqx.field(static=True, default="polyak")

    def __post_init__(self):
        if self.step not in ("polyak", "normalised"):
            raise ValueError(f"DPS(step=...): 'polyak' or 'normalised', got {self.step!r}")
        if not self.scale > 0:
            raise ValueError(f"DPS(scale=...): must be > 0, got {self.scale!r}")

    def guide(self, p: GuidanceProblem, *, energy: Callable | None = None):
        """``energy(m, t)``: an extra energy of the Tweedie mean added to the objective (one
        network VJP still serves both; the DiffusionPDE recipe adds the PDE residual)."""
        polyak = self.step == "polyak"

        def guided(x, t):
            def objective(x_):
                m = tweedie_mean(p.score, p.sde, x_, t)
                r = p.observe(m) - p.y
                if polyak:
                    total = 0.5 * jnp.sum(r**2)
                else:
                    total = self.scale * jnp.sqrt(jnp.sum(r**2) + p.noise_std**2 * r.size)
                if energy is not None:
                    total = total + energy(m, t).astype(total.dtype)
                return total, (m, r)

            (f, (m, r)), g = jax.value_and_grad(objective, has_aux=True)(x)
            if polyak:
                excess = jnp.maximum(f - 0.5 * r.size * p.noise_std**2, 0.0)
                g = (self.scale * excess / (jnp.sum(g**2) + 1e-30)) * g
            a, s = p.sde.alpha(t), p.sde.sigma(t)
            unconditional = (a * m - x) / s**2  # the prior score, from the Tweedie mean
            return jax.lax.stop_gradient(unconditional) - (p.step_weight(t) * g).astype(x.dtype)

        return guided


class Unguided(Method):
    """Prior samples (no data): the reference for what the data add."""

    def guide(self, p: GuidanceProblem):
        return p.score


class Exact(Method):
    """The exact Gaussian posterior (Gaussian prior, linear forward map): the Bayes floor."""

    guided: ClassVar[bool] = False

    @property
    def label(self) -> str:
        return "bayes"


class MAP(Method):
    """The MAP estimate under a Gaussian prior (a point estimate).

    The MAP estimate under a Gaussian prior (L-BFGS in white-noise coordinates; nonlinear
    forward maps through the differentiable FEM solve). A point estimate: no spread."""

    steps: int = eqx.field(static=True, default=2000)
    guided: ClassVar[bool] = False

    def __check_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"MAP: steps must be a positive int, got {self.steps!r}")


class MCMC(Method):
    """Long-run MCMC in the prior's white-noise coordinates: exact as the chains grow.

    Markov chain Monte Carlo on the white noise ``z`` of a Gaussian or latent-Gaussian prior
    (field ``prior.from_noise(z)``, prior ``N(0, I)``), exact in the limit for any differentiable
    forward map: the reference where no closed form exists (Darcy). ``laplace=True`` (the default,
    ``"mcmc"``): MALA preconditioned by the Gauss-Newton Laplace approximation at the MAP point
    (``P = (I + J^T J)^{-1}`` for the whitened Jacobian ``J`` of the data, from a randomised
    low-rank eigensolver; the hIPPYlib approach, :func:`pdegen.mcmc.low_rank_preconditioner`),
    chains started from Laplace draws; one forward map and one gradient per step.
    ``laplace=False`` (``"pcn"``): preconditioned Crank-Nicolson (Cotter et al. 2013), chains from
    prior draws, gradient-free, one forward map per step (it mixes slowly on sharp data).
    ``num_warmup`` steps adapt the step size toward ``target_acceptance`` (default: the kernel's,
    0.574 for MALA, 0.25 for pCN) by dual averaging; then ``num_steps`` steps, every ``thin``-th
    kept. The run reports split R-hat and the effective sample size of the field's entries
    (:func:`pdegen.mcmc.rhat`, :func:`pdegen.mcmc.chain_ess`)."""

    laplace: bool = eqx.field(static=True, default=True)
    num_chains: int = eqx.field(static=True, default=8)
    num_steps: int = eqx.field(static=True, default=10000)
    num_warmup: int = eqx.field(static=True, default=1000)
    thin: int = eqx.field(static=True, default=10)
    target_acceptance: float | None = eqx.field(static=True, default=None)
    map_steps: int = eqx.field(static=True, default=300)
    guided: ClassVar[bool] = False

    def __post_init__(self):
        if not isinstance(self.laplace, bool):
            raise TypeError(f"MCMC(laplace=...): True or False, got {self.laplace!r}")
        for name, least in (("num_chains", 2), ("num_steps", 1), ("thin", 1), ("map_steps", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"MCMC({name}=...): an int >= {least}, got {v!r}")
        w = self.num_warmup
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"MCMC(num_warmup=...): an int >= 0, got {w!r}")
        if self.num_steps % self.thin:
            raise ValueError(
                f"MCMC: thin={self.thin} must divide num_steps={self.num_steps} (draws are kept "
                f"every thin-th step)"
            )
        if self.num_steps // self.thin < 4:
            raise ValueError(
                f"MCMC: num_steps // thin must keep >= 4 draws per chain (for R-hat and ESS), got "
                f"{self.num_steps} // {self.thin}"
            )
        if self.target_acceptance is not None and not 0 < self.target_acceptance < 1:
            raise ValueError(
                f"MCMC(target_acceptance=...): must lie in (0, 1), got {self.target_acceptance!r}"
            )

    @property
    def label(self) -> str:
        return "mcmc" if self.laplace else "pcn"


class SMC(Method):
    """Twisted sequential Monte Carlo: guided particles reweighted to the exact posterior.

    Twisted sequential Monte Carlo (TDS, Wu et al. 2023; cf. MCGdiff, FPS): ``num_particles``
    particles follow the prior's reverse Euler-Maruyama chain under a guided proposal, are weighted
    by the ratio of the true likelihood to the guidance's Gaussian approximation of it (the twist)
    and resampled (systematic) when the effective sample size falls below ``ess_threshold`` times
    the particle count. Asymptotically exact as ``num_particles`` grows (for the prior's sampler
    chain, see :func:`pdegen.inverse.twisted_smc`), with an estimate of the log evidence.

    ``proposal``: :class:`PiGDM` (the default, ``"smc"``) or :class:`TMPD` (full, ``"smc-tmpd"``),
    whose Gaussian approximation of ``p(y | x_t)`` is both the twist and, through its gradient,
    the guided proposal. The PiGDM twist's isotropic variance is matched at every time to the
    prior's Tweedie covariance along the observed rows, as its Kullback-Leibler projection (:func:`pdegen.inverse.matched_twist_variances`:
    at the zero state for a Gaussian prior, at 8 unguided prior samples noised to each time for a
    learned one), as sharp as the prior; ``PiGDM(data_variance=v)`` keeps PiGDM's closed form for
    white data of variance ``v``, which overstates the spread for a smooth prior. ``shared_covariance``: compute the twist's covariance once per time, at the
    zero state for a Gaussian prior and averaged over 4 noised unguided prior samples for a learned
    one with TMPD (``m`` Jacobian products per time and state; then one forward map and one VJP per
    particle and step) instead of per particle and step (``m`` more Jacobian products each). ``None`` (the
    default): shared exactly when it is exact for a Gaussian prior, i.e. an affine map from the
    state to the data (for a learned prior with TMPD that is the approximation of
    ``TMPD("cached")``); ``True`` for a nonlinear PDE or a latent-Gaussian prior trades a worse
    twist (more weight variance, corrected by the weights) for far cheaper steps.
    ``time_grid``: ``"log-snr"`` (steps evenly spaced in the log noise level, the default: sharp
    data make the last steps weigh most) or ``"sampler"`` (the sampler's grid).
    ``transition``: ``"gradient"`` (the model step shifted by the twist's gradient, TDS) or
    ``"conditional"`` (the model step conditioned on the data through the next twist linearised
    at the step's mean: the locally optimal proposal for a Gaussian prior and a linear map, where
    the weights then correct only the time discretisation; TMPD twist only). ``None`` (the
    default): ``"conditional"`` with the TMPD twist's shared covariance, else ``"gradient"``
    (with a per-particle twist the conditional move linearises at each particle's state; on
    Darcy it was not better, see ``benchmarks/inverse_darcy.py``)."""

    proposal: Method = eqx.field(static=True, default_factory=PiGDM)
    num_particles: int = eqx.field(static=True, default=64)
    ess_threshold: float = eqx.field(static=True, default=0.5)
    time_grid: str = eqx.field(static=True, default="log-snr")
    shared_covariance: bool | None = eqx.field(static=True, default=None)
    transition: str | None = eqx.field(static=True, default=None)
    guided: ClassVar[bool] = False

    def __post_init__(self):
        if not isinstance(self.proposal, (PiGDM, TMPD)) or (
            isinstance(self.proposal, TMPD) and self.proposal.variant != "full"
        ):
            raise TypeError(f"SMC(proposal=...): PiGDM() or TMPD() (full), got {self.proposal!r}")
        if (
            isinstance(self.num_particles, bool)
            or not isinstance(self.num_particles, int)
            or self.num_particles < 2
        ):
            raise ValueError(
                f"SMC(num_particles=...): an int >= 2 (resampling needs at least two particles), "
                f"got {self.num_particles!r}"
            )
        if not 0.0 <= float(self.ess_threshold) <= 1.0:
            raise ValueError(
                f"SMC(ess_threshold=...): must lie in [0, 1] (a fraction of the particle count), "
                f"got {self.ess_threshold!r}"
            )

        if self.time_grid not in ("log-snr", "sampler"):
            raise ValueError(f"SMC(time_grid=...): 'log-snr' or 'sampler', got {self.time_grid!r}")
        if self.transition not in (None, "gradient", "conditional"):
            raise ValueError(
                f"SMC(transition=...): None, 'gradient' or 'conditional', got {self.transition!r}"
            )
        if self.transition == "conditional" and not isinstance(self.proposal, TMPD):
            raise ValueError("SMC(transition='conditional') needs the TMPD twist: SMC(TMPD(), ...)")
        if self.shared_covariance not in (None, True, False):
            raise TypeError(
                f"SMC(shared_covariance=...): None, True or False, got {self.shared_covariance!r}"
            )

    @property
    def twist(self) -> str:
        """``"pigdm"`` or ``"tmpd"``: the twist's Gaussian approximation."""
        return "pigdm" if isinstance(self.proposal, PiGDM) else "tmpd"

    @property
    def label(self) -> str:
        return "smc" if self.twist == "pigdm" else "smc-tmpd"


FIELD_METHODS = {
    "bayes": Exact(),
    "map": MAP(),
    "mcmc": MCMC(),
    "pcn": MCMC(laplace=False),
    "tmpd": TMPD(),
    "tmpd-diagonal": TMPD("diagonal"),
    "tmpd-rowsum": TMPD("rowsum"),
    "tmpd-cached": TMPD("cached"),
    "pigdm": PiGDM(),
    "pigdm-matched": PiGDM(matched=True),
    "dps": DPS(),
    "unguided": Unguided(),
    "smc": SMC(),
    "smc-tmpd": SMC(TMPD()),
}
"""The posterior methods by name.

The ``method=`` names accepted by :func:`pdegen.inverse.sample_posterior` on the user's own
(prior, likelihood) pairs, each mapped to its default method object.
"""


def as_method(method) -> Method:
    """A :class:`Method` from an object or one of the names in :data:`FIELD_METHODS`."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in FIELD_METHODS:
        return FIELD_METHODS[method]
    raise ValueError(
        f"method must be a pdegen.inverse method object (TMPD(), PiGDM(), DPS(), ...) or one of "
        f"{sorted(FIELD_METHODS)}, got {method!r}"
    )
