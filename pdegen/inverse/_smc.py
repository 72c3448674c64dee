"""Twisted sequential Monte Carlo (TDS; Wu et al. 2023) over a diffusion prior's reverse chain.

``N`` particles follow a reverse time grid ``t_0 = t_max > ... > t_K = t_min``. The *model* is the
prior's unguided Euler-Maruyama chain

    p(x_{k+1} | x_k) = N(x_k + h_k (g_k^2 s(x_k, t_k) - f_k x_k), g_k^2 h_k I),   h_k = t_k - t_{k+1},

started from the reference ``N(0, prior_std^2 I)`` at ``t_max``, then a Gaussian denoising kernel
``x_0 ~ N(D(x_K), C_K)`` (``D`` the prior's Tweedie mean) and the data ``y = A(x_0) + e``,
``e ~ N(0, noise_std^2 I)``. Particles move by the *guided* transition ``q(x_{k+1} | x_k, y)``: the
same Gaussian with the score replaced by ``s + grad log L_k``, and are weighted by

    w_0     = L_0(x_0),
    w_{k+1} = L_{k+1}(x_{k+1}) p(x_{k+1} | x_k) / (L_k(x_k) q(x_{k+1} | x_k, y)),

with the twist ``L_k(x) = N(y; A(D(x)), A C_k A^T + noise_std^2 I)`` the guidance's Gaussian
approximation of ``p(y | x_{t_k})``: PiGDM's isotropic ``C_k = r_k^2 I`` or TMPD's Tweedie covariance
``C_k = (sigma_k^2 / alpha_k) dD/dx``. PiGDM's closed form ``r_k^2 = v sigma_k^2 / (alpha_k^2 v +
sigma_k^2)`` is exact for white data of variance ``v``; for a smooth prior it overstates the
spread of ``A(x_0)`` given ``x_t`` (the prior's high wavenumbers are resolved long before
``t_min``), the mid-chain guidance is too weak and the weights collapse onto a few paths on sharp
data. ``twist_states`` instead matches ``r_k^2`` to the Tweedie covariance along the observed
rows (:func:`matched_twist_variances`, the Kullback-Leibler projection onto ``r^2 A A^T``): still
isotropic, so one forward map and one VJP per particle and step, but as sharp as the prior. At
``t_K`` the twist is the exact likelihood of ``x_K`` under
the denoising kernel (for a linear ``A``), so the last weights are those of the model's posterior.
Since the two transitions share their covariance,
``log p - log q = -g sqrt(h) eps . grad log L_k - h g^2 ||grad log L_k||^2 / 2`` for the step's noise
``eps``. With the TMPD twist the particles can instead move by the *conditional* transition
``q(x' | x) ∝ p(x' | x) N(y; A(D(m)) + J (x' - m), A C_{k+1} A^T + noise_std^2 I)`` (``m`` the
model step's mean, ``J`` the Jacobian of ``A(D(.))`` at ``t_{k+1}``, shared by the particles; with
a per-particle twist each particle's own ``J`` and ``A C A^T`` from ``t_k``): the model step
conditioned on the data through the next twist, linearised at ``m``. For a Gaussian prior and a
linear ``A`` this is the locally optimal proposal, ``L_{k+1}(x') p(x' | x) / q(x' | x)`` does not
depend on ``x'`` and the weights correct only the time discretisation (on the 32x32 linear tasks
it resamples 0-2 times in 100 steps where the gradient move resamples 16-20 times). Systematic
resampling when the effective sample size falls below ``ess_threshold * N``. ``log Z = sum_k log sum_i W_{k-1}^i w_k^i`` (normalised weights ``W``) is an
unbiased estimate (its exponential is) of the model's evidence ``p(y)``, and the weighted particles
target the model's posterior exactly as ``N -> infinity`` whatever the twist (the twist only sets
the variance of the weights). Each particle's clean state is then the kernel's conditional given
the data: an exact draw for PiGDM's isotropic kernel (Matheron's rule; linearised for a nonlinear
``A``), the conditional mean ``D(x) + C_K A^T w = (x + sigma^2 (s + grad log L)) / alpha`` for TMPD's
(whose square root is not available; the omitted spread is at most ``sigma(t_min) / alpha(t_min)``
per entry). With an exact Gaussian prior and the TMPD twist the twist is the exact ``p(y | x_t)``:
the weights only correct the time discretisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._guidance import (
    _jacobian_rows,
    _pigdm_variance,
    _rows_through_mean,
    _tmpd_projected,
    matched_twist_variances,
    projected_covariance_table,
    tweedie_mean,
)

TWISTS = ("pigdm", "tmpd")
TRANSITIONS = ("gradient", "conditional")


class SMCResult(NamedTuple):
    """The final weighted particle system of :func:`twisted_smc`.

    Attributes:
        particles: ``(N, *shape)`` clean states ``x_0`` (the denoising kernel's conditional draw
            or mean given the data, see the module docstring).
        log_weights: ``(N,)`` normalised log-weights (``logsumexp = 0``).
        log_evidence: estimate of ``log p(y)`` (data in the units of ``y``).
        ess: ``(K + 1,)`` effective sample size after each reweighting (before any resampling).
        resampled: ``(K,)`` whether the particles were resampled before step ``k``.
    """

    particles: jax.Array
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array


def effective_sample_size(log_weights) -> jax.Array:
    """``1 / sum_i W_i^2`` for normalised weights ``W = softmax(log_weights)``."""
    w = jax.nn.softmax(log_weights)
    return 1.0 / jnp.sum(w**2)


def systematic_resample(key, log_weights, num: int) -> jax.Array:
    """Ancestor indices by systematic resampling of normalised log-weights.

    ``num`` ancestor indices by systematic resampling (one uniform, ``num`` evenly spaced points
    through the cumulative weights): unbiased, with less variance than multinomial resampling."""
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w)
    u = (jax.random.uniform(key, (), w.dtype) + jnp.arange(num, dtype=w.dtype)) / num
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


def smc_time_grid(sde, num_steps: int, kind: str = "log-snr", dtype=jnp.float64) -> jax.Array:
    """The decreasing times of the particle chain.

    Decreasing times ``t_max = t_0 > ... > t_K = t_min`` of the particle chain: ``"sampler"`` is
    ``sde.time_grid``; ``"log-snr"`` spaces ``log(sigma_t / alpha_t)`` evenly."""
    if kind == "sampler":
        return sde.time_grid(num_steps, dtype)
    if kind != "log-snr":
        raise ValueError(f"time_grid must be 'log-snr' or 'sampler', got {kind!r}")
    t_max = jnp.asarray(sde.t_max, dtype)
    t_min = jnp.asarray(sde.t_min, dtype)
    levels = jnp.linspace(
        jnp.log(sde.scaled_sigma(t_max)), jnp.log(sde.scaled_sigma(t_min)), num_steps + 1
    )
    ts = jax.vmap(sde.time_from_scaled_sigma)(jnp.exp(levels)).astype(dtype)
    return ts.at[0].set(t_max).at[-1].set(t_min)


def _gaussian_logpdf(r, C):
    """``log N(r; 0, C)`` and ``C^{-1} r`` (Cholesky)."""
    L = jnp.linalg.cholesky(0.5 * (C + C.T))
    z = jax.scipy.linalg.solve_triangular(L, r, lower=True)
    w = jax.scipy.linalg.solve_triangular(L.T, z, lower=False)
    logp = (
        -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * r.size * math.log(2 * math.pi)
    )
    return logp, w


def _gram(vjp_A, m_size, dtype):
    """``J_A J_A^T`` from the VJP of the observation."""
    At = _jacobian_rows(vjp_A, m_size, dtype)
    return At @ At.T


class _Twist(eqx.Module):
    """``(x, t, C_shared) -> (log L(x), prior score s(x), grad log L(x))`` for one state.

    ``C_shared``: the projected covariance ``A C A^T`` (without noise) when it does not depend on
    the state (a Gaussian prior and a linear ``A``), else ``None`` (computed per state)."""

    score: Callable
    sde: object
    observe: Callable
    y: jax.Array
    noise_std: jax.Array
    kind: str = eqx.field(static=True)

    def __call__(self, x, t, projected=None, r2=None, with_grad=True, with_jacobian=False):
        """``r2``: the isotropic (PiGDM) twist's variance at ``t``. ``with_grad=False``: forward
        evaluations only (``grad`` returned as zeros; needs ``projected``). ``with_jacobian`` (the
        TMPD twist linearised here, ``projected=None``): also the rows of ``d A(D(x)) / dx`` and
        the projected covariance ``A C A^T``."""
        sde = self.sde
        a, s = sde.alpha(t), sde.sigma(t)
        k = self.y.shape[0]
        if not with_grad:
            m = tweedie_mean(self.score, sde, x, t)
            C = projected + self.noise_covariance(m.dtype)
            r = (self.y - self.observe(m)).astype(m.dtype)
            logp, _ = _gaussian_logpdf(r, C.astype(m.dtype))
            return logp, (a * m - x) / s**2, jnp.zeros_like(x)
        m, vjp_m = jax.vjp(lambda x_: tweedie_mean(self.score, sde, x_, t), x)
        y_hat, vjp_A = jax.vjp(self.observe, m)
        rows = None
        if projected is None:
            if self.kind == "pigdm":
                projected = r2 * _gram(vjp_A, k, m.dtype)
            else:
                JA = _jacobian_rows(vjp_A, k, m.dtype)
                projected, rows = _tmpd_projected(sde, t, vjp_m, m, JA, return_rows=True)
        C = projected + self.noise_covariance(m.dtype)
        logp, w = _gaussian_logpdf((self.y - y_hat).astype(m.dtype), C.astype(m.dtype))
        (grad,) = vjp_m(vjp_A(w)[0])
        score = (a * m - x) / s**2
        if with_jacobian:
            return logp, score, grad, rows, projected
        return logp, score, grad

    def noise_covariance(self, dtype):
        """``(noise_std^2 + 1e-12) I``: the data noise, with a jitter for noise-free data."""
        k = self.y.shape[0]
        return (self.noise_std**2 + 1e-12) * jnp.eye(k, dtype=dtype)

    def shared(self, t, shape, dtype, r2):
        """The isotropic twist's state-independent ``r2 A A^T`` (linear ``A``): at the zero state."""
        x = jnp.zeros(shape, dtype)
        m = tweedie_mean(self.score, self.sde, x, t)
        _, vjp_A = jax.vjp(self.observe, m)
        return r2 * _gram(vjp_A, self.y.shape[0], dtype)


def _final_sample(twist: _Twist, x, t, key, r2):
    """``x_0`` from the final kernel ``N(D(x), r^2 I)`` conditioned on ``y = A(x_0) + e`` by
    Matheron's rule (exact for a linear ``A``; linearised at ``D(x)`` otherwise)."""
    sde = twist.sde
    m = tweedie_mean(twist.score, sde, x, t)
    k1, k2 = jax.random.split(key)
    eps = jax.random.normal(k1, x.shape, x.dtype)
    e = twist.noise_std * jax.random.normal(k2, twist.y.shape, x.dtype)
    prior_draw = m + jnp.sqrt(r2) * eps
    y_hat, vjp_A = jax.vjp(twist.observe, m)
    k = twist.y.shape[0]
    J = _jacobian_rows(vjp_A, k, x.dtype)
    jvp_shift = J @ jnp.ravel(prior_draw - m)
    S = r2 * (J @ J.T) + twist.noise_covariance(x.dtype)
    r = twist.y - (y_hat + jvp_shift) - e
    w = jnp.linalg.solve(0.5 * (S + S.T), r)
    return prior_draw + r2 * vjp_A(w)[0]


def _reference_jacobian(twist: _Twist, t, states, noise):
    """``J = d A(D(x)) / dx`` ``(m, n)`` at time ``t``, shared by the particles: the rows of
    ``A dD/dx`` (``m`` VJPs per state) averaged over the reference states noised to ``t`` (the zero
    state: exact for a Gaussian prior and a linear ``A``). Computed per step rather than stored
    with the covariance table: ``K m n`` numbers would not fit for large grids and many sensors."""
    sde = twist.sde
    k = twist.y.shape[0]
    a, s = sde.alpha(t), sde.sigma(t)
    dtype = states.dtype

    def rows_at(ce):
        m, vjp_m = jax.vjp(lambda x_: tweedie_mean(twist.score, sde, x_, t), a * ce[0] + s * ce[1])
        _, vjp_A = jax.vjp(twist.observe, m)
        return _rows_through_mean(vjp_m, m, _jacobian_rows(vjp_A, k, dtype))

    return jnp.mean(jax.lax.map(rows_at, (states, noise)), axis=0)


def _conditional_step(key, x_mean, v, J, Sigma, y_hat, y):
    """One draw from ``q(x' | x) ∝ N(x'; x_mean, v I) N(y; y_hat + J (x' - x_mean), Sigma)`` and
    ``log p(x' | x) - log q(x' | x)`` for the model step ``p = N(x_mean, v I)``.

    Matheron's rule: ``x~ = x_mean + sqrt(v) eps``, ``y~ = y_hat + J (x~ - x_mean) + eta`` with
    ``eta ~ N(0, Sigma)``, ``x' = x~ + v J^T S^{-1} (y - y~)``, ``S = v J J^T + Sigma``. With
    ``b = S^{-1} (y - y_hat)`` and ``d = x' - E_q[x']``: ``log p - log q = -(J d) . b - v |J^T b|^2 / 2
    + (J d)^T Sigma^{-1} (J d) / 2 + (log det Sigma - log det S) / 2`` (the Woodbury and
    determinant identities: ``m x m`` work only)."""
    k_eps, k_eta = jax.random.split(key)
    k = y.shape[0]
    S = v * (J @ J.T) + Sigma
    L_S = jnp.linalg.cholesky(0.5 * (S + S.T))
    L_Sig = jnp.linalg.cholesky(0.5 * (Sigma + Sigma.T))
    solve_S = lambda r: jax.scipy.linalg.cho_solve((L_S, True), r)  # noqa: E731
    eps = jax.random.normal(k_eps, x_mean.shape, x_mean.dtype)
    eta = L_Sig @ jax.random.normal(k_eta, (k,), x_mean.dtype)
    x_tilde = jnp.ravel(x_mean) + jnp.sqrt(v) * jnp.ravel(eps)
    y_tilde = y_hat + jnp.sqrt(v) * (J @ jnp.ravel(eps)) + eta
    x_new = x_tilde + v * (J.T @ solve_S(y - y_tilde))
    b = solve_S(y - y_hat)
    Jtb = J.T @ b
    d = x_new - jnp.ravel(x_mean) - v * Jtb
    Jd = J @ d
    z = jax.scipy.linalg.solve_triangular(L_Sig, Jd, lower=True)
    log_ratio = (
        -Jd @ b
        - 0.5 * v * Jtb @ Jtb
        + 0.5 * z @ z
        + jnp.sum(jnp.log(jnp.diag(L_Sig)))
        - jnp.sum(jnp.log(jnp.diag(L_S)))
    )
    return x_new.reshape(x_mean.shape), log_ratio


@eqx.filter_jit
def twisted_smc(
    score: Callable,
    sde,
    observe: Callable,
    y,
    *,
    noise_std,
    shape: tuple,
    key,
    num_particles: int,
    num_steps: int,
    twist: str = "pigdm",
    data_variance=1.0,
    ess_threshold: float = 0.5,
    shared_covariance: bool = False,
    time_grid: str = "log-snr",
    twist_states=None,
    twist_probes: int | None = None,
    transition: str = "gradient",
    dtype=jnp.float64,
) -> SMCResult:
    """Twisted SMC for ``p(x_0 | y)`` with the diffusion prior ``score`` (see the module docstring).

    Args:
        score, sde: the prior's score ``score(x, t)`` for one state of ``shape`` and its process.
        observe: ``x_0 -> (m,)`` the predicted data; ``y``: the data; ``noise_std``: their noise.
        num_particles, num_steps: ``N`` and the number of reverse Euler-Maruyama steps ``K``.
        twist: ``"pigdm"`` (isotropic Tweedie covariance of variance ``data_variance`` along the
            observed directions) or ``"tmpd"`` (full Tweedie covariance, ``m`` VJPs per state).
        ess_threshold: resample when the effective sample size falls below it times ``N``.
        shared_covariance: compute the twist's ``A C A^T`` once per time at the zero state, not
            per particle: exact for a linear ``A`` with the PiGDM twist, or with the TMPD twist and
            a Gaussian prior; for a learned prior the TMPD twist averaged over ``twist_states``
            (as ``TMPD("cached")``: ``S x m`` network VJPs per time once, then one per particle
            and step) or at the zero state when none are given.
            Any twist leaves the weighted particles exact; a worse one only costs variance.
        time_grid: ``"log-snr"`` (times evenly spaced in ``log(sigma_t / alpha_t)``, so every step
            shrinks the noise by the same factor and the steps near ``t_min``, where sharp data
            weigh most, are as accurate as the rest) or ``"sampler"`` (``sde.time_grid``).
        twist_states: for the PiGDM twist, clean prior states ``(S, *shape)`` at which its
            isotropic variance is matched to the prior's Tweedie covariance at every time
            (:func:`matched_twist_variances`; a zero state ``(1, *shape)`` is exact for a
            Gaussian prior); ``None``: PiGDM's closed form with ``data_variance``. For the TMPD
            twist with ``shared_covariance``: the clean states over which its covariance is
            averaged, noised to each level (:func:`projected_covariance_table`, as
            ``TMPD("cached")`` takes a learned prior's); ``None``: the zero state. The final
            denoising kernel uses the same variance at ``t_min``, so the model stays consistent.
        twist_probes: orthonormal probes for the trace in the matched variances (``None``: exact,
            ``2 m`` VJPs per state and time; see :func:`matched_twist_variances`).
        transition: the particles' move. ``"gradient"``: the model step shifted by
            ``h g^2 grad log L_k`` at the current state (TDS). ``"conditional"``: the model step
            conditioned on the data through the next twist linearised at the step's mean, the
            Gaussian ``q(x' | x) ∝ p(x' | x) N(y; A(D(m)) + J (x' - m), A C_{k+1} A^T + noise^2 I)``
            (``m`` the step's mean, ``J`` the shared Jacobian of ``A(D(.))`` at the next time, see
            :func:`_reference_jacobian`): the locally optimal proposal for a Gaussian prior and a
            linear ``A``, where the weights then correct only the time discretisation. TMPD twist
            only. With ``shared_covariance``: per step ``m`` shared VJPs (per reference state) and
            one more forward evaluation per particle, no VJP per particle. Without: each particle's
            own ``J`` and ``A C A^T`` from its twist at ``t_k`` (computed for the twist anyway),
            plus one forward evaluation per particle and step. (The isotropic twist's implied
            Jacobian ``(alpha r^2 / sigma^2) J_A`` makes a poor conditional: more resampling.)

    Returns:
        An :class:`SMCResult`.
    """
    n = int(num_particles)
    y = jnp.asarray(y, dtype)
    tw = _Twist(
        score,
        sde,
        observe,
        y,
        jnp.asarray(noise_std, dtype),
        twist,
    )
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {TRANSITIONS}, got {transition!r}")
    if transition == "conditional" and twist != "tmpd":
        raise ValueError("transition='conditional' conditions on the TMPD twist: pass twist='tmpd'")
    ts = smc_time_grid(sde, num_steps, time_grid, dtype)
    k_init, k_steps, k_final = jax.random.split(key, 3)
    x = jax.vmap(lambda k: sde.prior_sample(shape, key=k, dtype=dtype))(jax.random.split(k_init, n))
    if twist == "pigdm" and twist_states is not None:
        r2s = matched_twist_variances(
            score,
            sde,
            observe,
            ts,
            jnp.asarray(twist_states, dtype),
            key=jax.random.key(0),
            probes=twist_probes,
        )
    else:
        r2s = jax.vmap(lambda t: _pigdm_variance(sde, t, jnp.asarray(data_variance, dtype)))(ts)
    if shared_covariance and twist == "tmpd":
        # at the zero state (exact for a Gaussian prior), or a learned prior's covariance averaged
        # where the particles go, as TMPD("cached") takes it
        states = None if twist_states is None else jnp.asarray(twist_states, dtype)
        table = projected_covariance_table(
            score, sde, observe, shape=shape, states=states, times=ts
        )
        projected = jax.vmap(table)(ts).astype(dtype)
    elif shared_covariance:
        projected = jax.lax.map(lambda tr: tw.shared(tr[0], shape, dtype, tr[1]), (ts, r2s))
    if shared_covariance:
        evaluate = jax.vmap(lambda x_, t, c, _: tw(x_, t, c), in_axes=(0, None, None, None))
    else:
        projected = jnp.zeros((num_steps + 1, 0, 0), dtype)  # unused
        evaluate = jax.vmap(lambda x_, t, _, r2: tw(x_, t, None, r2), in_axes=(0, None, None, None))
    if twist_states is None:
        ref_states = jnp.zeros((1, *shape), dtype)
        ref_noise = ref_states
    else:  # as projected_covariance_table noises them
        ref_states = jnp.asarray(twist_states, dtype)[:4]
        ref_noise = jax.random.normal(jax.random.key(0), ref_states.shape, dtype)
    evaluate_forward = jax.vmap(
        lambda x_, t, c: tw(x_, t, c, with_grad=False), in_axes=(0, None, None)
    )
    # the conditional move with a per-particle twist: each particle's own linearisation at its
    # current state (rows of d A(D) / dx and A C A^T, carried from the twist's evaluation)
    per_particle = transition == "conditional" and not shared_covariance
    evaluate_linearised = jax.vmap(
        lambda x_, t: tw(x_, t, None, None, with_jacobian=True), in_axes=(0, None)
    )
    log_n = math.log(n)
    if per_particle:
        logp, s, grad, rows, covs = evaluate_linearised(x, ts[0])
    else:
        logp, s, grad = evaluate(x, ts[0], projected[0], r2s[0])
        rows = covs = jnp.zeros((n, 0, 0), dtype)  # unused
    logw = logp - log_n
    log_z = jax.nn.logsumexp(logw)
    logw = logw - log_z
    ess0 = effective_sample_size(logw)

    def step(carry, inputs):
        x, logp, s, grad, rows, covs, logw, log_z = carry
        t, t_next, c_next, r2_next, k = inputs
        k_res, k_noise = jax.random.split(k)
        resample = effective_sample_size(logw) < ess_threshold * n
        idx = jnp.where(
            resample, systematic_resample(k_res, logw, n), jnp.arange(n, dtype=jnp.int32)
        )
        x, logp, s, grad, rows, covs = x[idx], logp[idx], s[idx], grad[idx], rows[idx], covs[idx]
        logw = jnp.where(resample, jnp.full_like(logw, -log_n), logw)
        h = t - t_next
        g = sde.diffusion(t)
        f = sde.drift_coefficient(t)
        mean_p = x + h * (g**2 * s - f * x)
        if transition == "conditional":
            noise_eye = tw.noise_covariance(dtype)
            if per_particle:
                J, Sigma, axis = rows, covs + noise_eye[None], 0
            else:
                J = _reference_jacobian(tw, t_next, ref_states, ref_noise)
                Sigma, axis = c_next + noise_eye, None
            y_mean = jax.vmap(lambda xm: observe(tweedie_mean(score, sde, xm, t_next)))(mean_p)
            x_new, ratio = jax.vmap(
                lambda k_, xm, ym, J_, S_: _conditional_step(k_, xm, g**2 * h, J_, S_, ym, y),
                in_axes=(0, 0, 0, axis, axis),
            )(jax.random.split(k_noise, n), mean_p, y_mean.astype(dtype), J, Sigma)
        else:
            eps = jax.random.normal(k_noise, x.shape, dtype)
            x_new = mean_p + h * g**2 * grad + g * jnp.sqrt(h) * eps
            # log p(x'|x) - log q(x'|x): the two Gaussians differ only in their means
            ratio = -g * jnp.sqrt(h) * jnp.sum(
                (eps * grad).reshape(n, -1), 1
            ) - 0.5 * h * g**2 * jnp.sum((grad**2).reshape(n, -1), 1)
        if per_particle:
            logp_new, s_new, grad_new, rows, covs = evaluate_linearised(x_new, t_next)
        elif transition == "conditional":  # the move needs no gradient: forward maps only
            logp_new, s_new, grad_new = evaluate_forward(x_new, t_next, c_next)
        else:
            logp_new, s_new, grad_new = evaluate(x_new, t_next, c_next, r2_next)
        logw = logw + logp_new + ratio - logp
        c = jax.nn.logsumexp(logw)
        logw = logw - c
        ess = effective_sample_size(logw)
        return (x_new, logp_new, s_new, grad_new, rows, covs, logw, log_z + c), (ess, resample)

    keys = jax.random.split(k_steps, num_steps)
    (x, logp, s, grad, _, _, logw, log_z), (ess, resampled) = jax.lax.scan(
        step,
        (x, logp, s, grad, rows, covs, logw, log_z),
        (ts[:-1], ts[1:], projected[1:], r2s[1:], keys),
    )
    t_end = ts[-1]
    if twist == "pigdm":  # the isotropic final kernel: an exact conditional draw
        x0 = jax.vmap(lambda x_, k: _final_sample(tw, x_, t_end, k, r2s[-1]))(
            x, jax.random.split(k_final, n)
        )
    else:  # the Tweedie-covariance kernel: its conditional mean, D(x) + C A^T w
        if transition == "conditional" and not per_particle:  # the twist's gradient at the end
            _, s, grad = evaluate(x, t_end, projected[-1], r2s[-1])
        a, sig = sde.alpha(t_end), sde.sigma(t_end)
        x0 = (x + sig**2 * (s + grad)) / a
    history = jnp.concatenate([ess0[None], ess])
    return SMCResult(x0, logw, log_z, history, resampled)
