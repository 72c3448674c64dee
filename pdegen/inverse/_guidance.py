"""Guidance: transformations of a score function that condition diffusion sampling.

Every guidance here maps an unconditional score ``score_fn(x, t)`` (one example, any shape)
to a conditional one ``x, t -> score_fn(x, t) + grad_x log p(y | x_t)`` under an approximation
of the likelihood of the observations given the noisy state. They need only the SDE's
marginal coefficients ``alpha(t)`` and ``sigma(t)`` (``x_t = alpha x_0 + sigma eps``) and work
with any sampler that takes a score function.

Observation models ``y = A(x_0) + e``, ``e ~ N(0, noise_std^2 I)``: ``A`` is a dense matrix
``(m, d)`` acting on the flattened field, a :class:`pdegen.fem.SparseMatrix`-like object with
``@``, or a differentiable callable ``x0 -> y`` (nonlinear operators, e.g. a PDE solve).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _as_operator(observe, shape):
    """A function ``x0 (shape) -> y (m,)`` from a matrix, sparse matrix or callable."""
    if callable(observe) and not hasattr(observe, "__matmul__"):
        return lambda x: jnp.ravel(observe(x))
    if hasattr(observe, "shape") and len(observe.shape) == 2:
        d = 1
        for s in shape:
            d *= s
        if observe.shape[1] != d:
            raise ValueError(
                f"observation operator has {observe.shape[1]} columns but the field has {d} entries "
                f"(shape {shape})"
            )
        return lambda x: observe @ jnp.ravel(x)
    raise TypeError(
        "observe must be a matrix (m, d), a sparse matrix with @, or a callable x0 -> y"
    )


def tweedie_mean(score_fn: ScoreFn, sde, x, t):
    """``E[x_0 | x_t] = (x_t + sigma_t^2 score(x_t, t)) / alpha_t``."""
    a, s = sde.alpha(t), sde.sigma(t)
    return (x + s**2 * score_fn(x, t)) / a


def _check_observations(y, noise_std):
    """Concrete inputs are checked at once; traced ones (guidance built under ``jit``) by a runtime check."""
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a vector of observations, got shape {y.shape}")
    if isinstance(y, jax.core.Tracer):
        y = eqx.error_if(y, ~jnp.all(jnp.isfinite(y)), "guidance: y contains NaN or inf")
    elif not jnp.all(jnp.isfinite(y)):
        raise ValueError("y contains NaN or inf")
    if not isinstance(noise_std, jax.core.Tracer) and not float(noise_std) >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    return y


def dps(
    score_fn: ScoreFn, sde, observe, y, *, scale: float = 1.0, noise_std: float = 0.0
) -> ScoreFn:
    """Diffusion posterior sampling (Chung et al. 2023).

    Adds ``-scale * grad_x ||y - A(m(x))|| / ||y - A(m(x))||``-style guidance: precisely
    ``-scale / ||r|| * grad_x (0.5 ||r||^2)`` with ``r = y - A(E[x_0|x_t])``, i.e. the DPS step
    ``zeta_i = scale / ||r||`` written as a score correction. One VJP per evaluation.
    """
    y = _check_observations(y, noise_std)

    def guided(x, t):
        A = _as_operator(observe, x.shape)

        def misfit(x_):
            m = tweedie_mean(score_fn, sde, x_, t)
            r = y - A(m)
            return 0.5 * jnp.sum(r**2), r

        (_, r), g = jax.value_and_grad(misfit, has_aux=True)(x)
        norm = jnp.sqrt(jnp.sum(r**2) + noise_std**2 * r.size) + 1e-12
        return score_fn(x, t) - (scale / norm) * g

    return guided


def _gaussian_guidance(score_fn, sde, observe, y, noise_std, covariance_term):
    """Score + J^T A'^T (C_yy)^{-1} (y - A(m)) for a Gaussian approximation of p(y | x_t)."""

    def guided(x, t):
        A = _as_operator(observe, x.shape)
        m, vjp_m = jax.vjp(lambda x_: tweedie_mean(score_fn, sde, x_, t), x)
        y_hat, vjp_A = jax.vjp(A, m)
        residual = y - y_hat
        cyy = covariance_term(x, t, m, vjp_m, A)
        w = cyy(residual)
        (at_w,) = vjp_A(w)
        (grad,) = vjp_m(at_w)
        return score_fn(x, t) + grad

    return guided


def _pigdm_variance(sde, t, data_variance):
    """PiGDM's closed form: the Tweedie variance of white data of variance ``data_variance``."""
    a, s = sde.alpha(t), sde.sigma(t)
    return data_variance * s**2 / (a**2 * data_variance + s**2)


def _jacobian_rows(vjp_A, m_size, dtype, chunk=None):
    """The observation's Jacobian ``J_A`` ``(m, n)`` (flattened state) by ``m`` VJPs (``chunk`` at
    a time when given): reverse mode only, so forward maps through a FEM solve with a custom VJP
    work too."""
    eye = jnp.eye(m_size, dtype=dtype)
    return _chunked(lambda e: jnp.ravel(vjp_A(e)[0]), eye, chunk)


def _rows_through_mean(vjp_m, m, J, chunk=None):
    """``J dD/dx`` (flattened rows; the Jacobian of ``A(D(x))`` for ``J`` that of ``A``) by one VJP
    of the Tweedie mean ``D`` per row of ``J``, ``chunk`` at a time when given."""
    return _chunked(lambda row: jnp.ravel(vjp_m(row.reshape(m.shape))[0]), J, chunk)


def _tmpd_projected(sde, t, vjp_m, m, J, chunk=None, return_rows=False):
    """``J C_{0|t} J^T`` with ``C_{0|t} = (sigma^2 / alpha) dD/dx`` for the observation's Jacobian
    rows ``J`` (:func:`_jacobian_rows`; ``m`` more VJPs, ``chunk`` at a time when given); with
    ``return_rows`` also the rows ``J dD/dx`` (:func:`_rows_through_mean`)."""
    scale = sde.sigma(t) ** 2 / sde.alpha(t)
    JC = _rows_through_mean(vjp_m, m, J, chunk)
    C = scale * JC @ J.T
    C = 0.5 * (C + C.T)
    return (C, JC) if return_rows else C


def matched_twist_variances(
    score, sde, observe, ts, states, *, key, max_states: int = 8, probes: int | None = None
):
    """Isotropic twist variances matched to the Tweedie covariance along the observed rows.

    ``r_k^2 = E[tr((J J^T)^{-1} J C_{0|t_k}(x) J^T)] / m`` at each time ``t_k`` of ``ts``, with
    ``C_{0|t} = (sigma_t^2 / alpha_t) dD/dx`` (``D`` the prior's Tweedie mean) and ``J`` the
    ``(m, n)`` Jacobian of ``observe`` at ``D(x)`` (``2 m`` VJPs per state and time): the ``r^2``
    for which ``N(0, r^2 J J^T)`` is closest to ``N(0, J C_{0|t} J^T)`` in Kullback-Leibler
    divergence (from the latter), i.e. the mean of their generalised eigenvalues. For point
    observations (``J J^T = I``) it is the average Tweedie variance at the sensors. ``states``: clean prior
    states ``(S, *shape)`` noised to each time (the first ``max_states``, one fixed noise draw from
    ``key``), or a single zero state ``(1, *shape)``, where a Gaussian prior's ``C_{0|t}`` is
    exact. A learned Jacobian need not be positive semi-definite: the variance is floored at
    ``1e-6`` of the unit-variance PiGDM value ``sigma_t^2 / (alpha_t^2 + sigma_t^2)``, then made
    non-decreasing in the noise level ``sigma_t / alpha_t`` (the running maximum from the lowest
    level): the expected posterior covariance ``E[Cov(x_0 | x_t)]`` cannot shrink as noise is
    added, whatever the prior, while a network's Tweedie Jacobian, scaled by ``sigma_t^2 /
    alpha_t``, is least reliable at high noise, where an underestimate makes the guidance
    far too sharp. A Gaussian prior's exact values are non-decreasing already.

    ``probes``: when given and below ``m``, the trace is estimated from that many orthonormal
    probes per state (``(m / p) tr(Q^T L^{-1} J C J^T L^{-T} Q)`` with ``J J^T = L L^T`` and a
    random ``(m, p)`` ``Q`` with orthonormal columns, fixed across times: unbiased, exact at
    ``p = m``): ``m + p`` VJPs per state and time instead of ``2 m``, for a prior whose VJPs are
    costly (a network) and many sensors."""
    states = states[:max_states]
    noise = jax.random.normal(key, states.shape, states.dtype)
    probe_keys = jax.random.split(jax.random.fold_in(key, 1), states.shape[0])
    dtype = states.dtype

    def at(t):
        a, s = sde.alpha(t), sde.sigma(t)

        def one(x0, e, probe_key):
            x = a * x0 + s * e
            m, vjp_m = jax.vjp(lambda x_: tweedie_mean(score, sde, x_, t), x)
            y_hat, vjp_A = jax.vjp(observe, m)
            k = y_hat.shape[0]
            J = _jacobian_rows(vjp_A, k, dtype)
            G = J @ J.T + 1e-12 * jnp.trace(J @ J.T) / k * jnp.eye(k, dtype=dtype)
            if probes is None or probes >= k:
                P = _tmpd_projected(sde, t, vjp_m, m, J)
                return jnp.trace(jnp.linalg.solve(G, P)) / k
            Q, _ = jnp.linalg.qr(jax.random.normal(probe_key, (k, probes), dtype))
            L = jnp.linalg.cholesky(G)
            U = jax.scipy.linalg.solve_triangular(L.T, Q, lower=False).T @ J  # rows J^T L^-T q
            CU = jax.vmap(lambda u: jnp.ravel(vjp_m(u.reshape(m.shape))[0]))(U)
            return s**2 / a * jnp.sum(U * CU) / probes

        r2 = jnp.mean(jax.vmap(one)(states, noise, probe_keys))
        return jnp.maximum(r2, 1e-6 * _pigdm_variance(sde, t, 1.0))

    r2 = jax.lax.map(at, ts)
    return _non_decreasing_in_noise(r2, jax.vmap(sde.scaled_sigma)(ts))


def _non_decreasing_in_noise(values, levels):
    """``values`` replaced by their running maximum in the order of increasing ``levels``."""
    order = jnp.argsort(levels)
    envelope = jax.lax.cummax(values[order])
    return jnp.zeros_like(values).at[order].set(envelope)


class VarianceTable(eqx.Module):
    """``t -> r_t^2`` from variances tabulated on a grid of times.

    Interpolated linearly in ``log r^2`` against ``log(sigma_t / alpha_t)``, constant beyond the
    grid's ends."""

    sde: object
    log_ratio: jax.Array
    log_r2: jax.Array

    def __call__(self, t):
        x = jnp.log(self.sde.scaled_sigma(t))
        return jnp.exp(jnp.interp(x, self.log_ratio, self.log_r2)).astype(jnp.result_type(t))


def matched_variance_table(
    score,
    sde,
    observe,
    states,
    *,
    key,
    num_times: int = 48,
    max_states: int = 4,
    probes: int | None = None,
) -> VarianceTable:
    """PiGDM's ``r_t^2`` matched to the prior, as a :class:`VarianceTable`.

    :func:`matched_twist_variances` at ``num_times`` times evenly spaced in
    ``log(sigma_t / alpha_t)`` (``2 m`` VJPs per state and time, once, or ``m + probes``), for a
    sampler on any time grid; ``states``: clean prior states, the first ``max_states`` used."""
    t_max = jnp.asarray(sde.t_max, states.dtype)
    t_min = jnp.asarray(sde.t_min, states.dtype)
    levels = jnp.linspace(
        jnp.log(sde.scaled_sigma(t_min)), jnp.log(sde.scaled_sigma(t_max)), num_times
    )
    ts = jax.vmap(sde.time_from_scaled_sigma)(jnp.exp(levels)).astype(states.dtype)
    ts = ts.at[0].set(t_min).at[-1].set(t_max)
    r2 = matched_twist_variances(
        score, sde, observe, ts, states, key=key, max_states=max_states, probes=probes
    )
    log_ratio = jnp.log(jax.vmap(sde.scaled_sigma)(ts))
    return VarianceTable(sde, log_ratio, jnp.log(r2))


def pigdm(
    score_fn: ScoreFn,
    sde,
    observe,
    y,
    *,
    noise_std: float = 0.0,
    data_variance: float = 1.0,
    variance: Callable | None = None,
) -> ScoreFn:
    """Pseudoinverse-guided diffusion (PiGDM) as a transformation of a score.

    Pseudoinverse-guided diffusion (Song et al. 2023): ``p(y|x_t) ~ N(A m, r_t^2 A A^T + s^2 I)``
    with ``r_t^2 = data_variance * sigma_t^2 / (alpha_t^2 data_variance + sigma_t^2)`` (the posterior
    variance of ``x_0`` under an isotropic Gaussian prior), or ``variance(t)`` when given (e.g. a
    :func:`matched_variance_table`: as sharp as the prior). ``A A^T`` is formed densely (``m``
    VJPs)."""
    y = _check_observations(y, noise_std)

    def covariance(x, t, m, vjp_m, A):
        r2 = _pigdm_variance(sde, t, data_variance) if variance is None else variance(t)
        _, vjp_A = jax.vjp(A, m)
        eye = jnp.eye(y.size, dtype=m.dtype)
        At = _jacobian_rows(vjp_A, y.size, m.dtype)  # (m, d) rows = A^T e_i
        AAt = At @ At.T
        C = r2 * AAt + (noise_std**2 + 1e-10) * eye
        return lambda r: jnp.linalg.solve(C, r)

    return _gaussian_guidance(score_fn, sde, observe, y, noise_std, covariance)


def tmpd(
    score_fn: ScoreFn,
    sde,
    observe,
    y,
    *,
    noise_std: float = 0.0,
    variant: str = "full",
    jitter: float = 1e-10,
) -> ScoreFn:
    """Tweedie moment projected diffusion (Boys et al. 2024).

    ``p(y | x_t) ~ N(A m_{0|t}, A C_{0|t} A^T + noise_std^2 I)`` with ``C_{0|t} = (sigma_t^2 / alpha_t)
    d m_{0|t} / d x_t``; exact when the data are Gaussian and ``A`` is linear.

    Args:
        variant: ``'full'`` (``m`` VJPs and an ``m x m`` solve), ``'diagonal'`` (the exact diagonal of
            ``A C A^T``, ``m`` VJPs, no dense solve) or ``'rowsum'`` (row sums of ``A C A^T``:
            one VJP).
    """
    if variant not in ("full", "diagonal", "rowsum"):
        raise ValueError(f"tmpd: variant must be 'full', 'diagonal' or 'rowsum', got {variant!r}")
    y = _check_observations(y, noise_std)

    def covariance(x, t, m, vjp_m, A):
        a, s = sde.alpha(t), sde.sigma(t)
        scale = s**2 / a
        # A C A^T = scale V J V^T with V = dA/dm (rows A^T e_i, one VJP of A each) and
        # J = dm/dx: reverse mode only, so forward maps through FEM solves (custom VJPs) work
        _, vjp_A = jax.vjp(A, m)
        eye = jnp.eye(y.size, dtype=m.dtype)

        def rows():
            return jax.vmap(lambda e: vjp_A(e)[0])(eye).reshape(y.size, -1)

        noise = noise_std**2 + jitter
        if variant == "rowsum":  # A C A^T 1: one VJP of the denoiser
            w = vjp_m(vjp_A(jnp.ones(y.size, m.dtype))[0])[0]
            diag = scale * (rows() @ jnp.ravel(w))  # A w from A's rows: no forward mode
        else:
            flat = rows()
            JV = jax.vmap(lambda v: vjp_m(v)[0])(flat.reshape((y.size,) + m.shape))
            JV = JV.reshape(y.size, -1)
            if variant == "full":
                C = scale * (flat @ JV.T)
                C = 0.5 * (C + C.T) + noise * eye
                return lambda r: jnp.linalg.solve(C, r)
            diag = scale * jnp.sum(flat * JV, axis=1)
        diag = jnp.maximum(diag, 0.0) + noise
        return lambda r: r / diag

    return _gaussian_guidance(score_fn, sde, observe, y, noise_std, covariance)


class CovarianceTable(eqx.Module):
    """``t -> A C_{0|t} A^T``: TMPD's projected Tweedie covariance tabulated at noise levels.

    Interpolated linearly between the tabulated matrices in ``log(sigma_t / alpha_t)``, constant
    beyond the grid's ends (:func:`projected_covariance_table` builds it)."""

    sde: object
    levels: jax.Array  # (K,) log(sigma_t / alpha_t), increasing
    matrices: jax.Array  # (K, m, m)

    def __call__(self, t):
        levels = self.levels
        lv = jnp.log(self.sde.scaled_sigma(t)).astype(levels.dtype)
        i = jnp.clip(jnp.searchsorted(levels, lv) - 1, 0, levels.size - 2)
        f = jnp.clip((lv - levels[i]) / (levels[i + 1] - levels[i]), 0.0, 1.0)
        return (1.0 - f) * self.matrices[i] + f * self.matrices[i + 1]


def projected_covariance_table(
    score_fn: ScoreFn,
    sde,
    observe,
    *,
    shape,
    num_times: int = 16,
    chunk: int = 64,
    states=None,
    max_states: int = 4,
    times=None,
) -> CovarianceTable:
    """TMPD's projected Tweedie covariance ``A C_{0|t} A^T`` at ``num_times`` noise levels.

    At ``num_times`` times of the SDE's sampler grid, or at ``times`` when given (a sampler's own
    grid: the table is then exact there, without interpolation).

    ``states=None``: at the zero state, exact for a Gaussian prior and a linear ``A``, whose
    Tweedie covariance does not depend on the state. For a learned prior pass clean prior samples
    ``(S, *shape)``: the covariance is averaged over the first ``max_states`` of them noised to
    each level (one fixed noise draw), states like those the sampler meets; a network evaluated at
    the zero state at high noise, far from any state it was trained on, can return a Jacobian of
    the wrong sign or scale there. Cost: ``num_times x S x m`` network VJPs (in chunks of
    ``chunk`` sensors). Each matrix is symmetrised and its eigenvalues clipped at zero (a learned
    Jacobian need not be symmetric positive semi-definite), then the sequence made non-decreasing
    in the Loewner order from the lowest noise level up (:func:`_loewner_envelope`): the expected
    Tweedie covariance cannot shrink as noise is added, and a network's, scaled by
    ``sigma_t^2 / alpha_t``, is least reliable at high noise, where an underestimate makes the
    guidance far too sharp. A Gaussian prior's matrices are non-decreasing already and are kept."""
    A = _as_operator(observe, shape)
    dtype = jnp.result_type(float)
    if times is None:
        ts = sde.time_grid(max(int(num_times), 2) - 1, dtype)[::-1]  # increasing
    else:
        ts = jnp.sort(jnp.asarray(times, dtype))
        if ts.ndim != 1 or ts.size < 2:
            raise ValueError(
                f"projected_covariance_table: times must be >= 2 times, got {ts.shape}"
            )
    if states is None:
        clean, noise = jnp.zeros((1, *shape), dtype), jnp.zeros((1, *shape), dtype)
    else:
        clean = jnp.asarray(states, dtype)[:max_states]
        if clean.shape[1:] != tuple(shape):
            raise ValueError(
                f"projected_covariance_table: states must be (S, *{tuple(shape)}), got {clean.shape}"
            )
        noise = jax.random.normal(jax.random.key(0), clean.shape, dtype)
    m_obs = jax.eval_shape(A, jax.ShapeDtypeStruct(tuple(shape), dtype)).shape[0]

    def projected(t):
        covariances = jax.lax.map(
            lambda ce: projected_at(sde.alpha(t) * ce[0] + sde.sigma(t) * ce[1], t), (clean, noise)
        )
        return _positive_part(jnp.mean(covariances, axis=0))

    def projected_at(x_ref, t):
        # reverse mode only (J by VJPs of A, then J dD/dx by VJPs of D), so forward maps through a
        # FEM solve with a custom VJP work too; in chunks of ``chunk`` rows
        m, vjp_m = jax.vjp(lambda x_: tweedie_mean(score_fn, sde, x_, t), x_ref)
        _, vjp_A = jax.vjp(A, m)
        J = _jacobian_rows(vjp_A, m_obs, dtype, chunk)
        return _tmpd_projected(sde, t, vjp_m, m, J, chunk)

    matrices = _loewner_envelope(jax.lax.map(projected, ts))  # (K, m, m), ts increasing
    return CovarianceTable(sde, jnp.log(jax.vmap(sde.scaled_sigma)(ts)), matrices)


def tmpd_cached(
    score_fn: ScoreFn,
    sde,
    observe,
    y,
    *,
    shape,
    noise_std: float = 0.0,
    num_times: int = 16,
    chunk: int = 64,
    jitter: float = 1e-10,
    states=None,
    max_states: int = 4,
    table: CovarianceTable | None = None,
) -> ScoreFn:
    """TMPD with the projected Tweedie covariance computed once and interpolated.

    TMPD with the projected Tweedie covariance ``A C_{0|t} A^T`` taken from ``table`` (a
    :class:`CovarianceTable`), or built here by :func:`projected_covariance_table` (``num_times``,
    ``chunk``, ``states``, ``max_states``: see there) when none is given; build it once and pass
    it when the same prior and observation serve several data sets or sample batches. Then one
    network VJP per step, so hundreds of sensors are affordable."""
    y = _check_observations(y, noise_std)
    A = _as_operator(observe, shape)
    if table is None:
        table = projected_covariance_table(
            score_fn,
            sde,
            observe,
            shape=shape,
            num_times=num_times,
            chunk=chunk,
            states=states,
            max_states=max_states,
        )
    if table.matrices.shape[1:] != (y.size, y.size):
        raise ValueError(
            f"tmpd_cached: the table's matrices are {table.matrices.shape[1:]}, the data have "
            f"{y.size} entries"
        )
    eye = jnp.eye(y.size, dtype=table.matrices.dtype)

    def guided(x, t):
        C = (table(t) + (noise_std**2 + jitter) * eye).astype(x.dtype)
        m, vjp_m = jax.vjp(lambda x_: tweedie_mean(score_fn, sde, x_, t), x)
        y_hat, vjp_A = jax.vjp(A, m)
        w = jnp.linalg.solve(C, (y - y_hat).astype(x.dtype))
        (grad,) = vjp_m(vjp_A(w)[0])
        return score_fn(x, t) + grad

    return guided


def _chunked(fn, rows, chunk=None):
    """``vmap(fn)(rows)``, in chunks of at most ``chunk`` rows (zero rows padded) when given."""
    if chunk is None or chunk >= rows.shape[0]:
        return jax.vmap(fn)(rows)
    count = -(-rows.shape[0] // chunk)
    size = -(-rows.shape[0] // count)
    padded = jnp.zeros((count * size, *rows.shape[1:]), rows.dtype).at[: rows.shape[0]].set(rows)
    out = jax.lax.map(jax.vmap(fn), padded.reshape(count, size, *rows.shape[1:]))
    return out.reshape(count * size, *out.shape[2:])[: rows.shape[0]]


def _positive_part(M):
    """The positive semi-definite part of ``M``'s symmetric part (negative eigenvalues set to 0)."""
    w, V = jnp.linalg.eigh(0.5 * (M + M.T))
    return (V * jnp.maximum(w, 0.0)[None]) @ V.T


def _loewner_envelope(matrices):
    """The least sequence above ``matrices`` (symmetric, ``(K, m, m)``) that is non-decreasing in
    the Loewner order, built greedily: ``E_0 = M_0``, ``E_k = E_{k-1} + [M_k - E_{k-1}]_+`` (the
    positive part by eigendecomposition), so ``E_k >= M_k`` and ``E_k >= E_{k-1}``, and ``E_k = M_k``
    whenever ``M_k >= E_{k-1}`` already."""

    def step(previous, current):
        new = previous + _positive_part(current - previous)
        return new, new

    _, rest = jax.lax.scan(step, matrices[0], matrices[1:])
    return jnp.concatenate([matrices[:1], rest])


def energy_guidance(
    score_fn: ScoreFn,
    sde,
    energy: Callable[[jax.Array], jax.Array],
    *,
    weight: float | Callable[[jax.Array], jax.Array] = 1.0,
    start: float = 1.0,
) -> EnergyGuidance:
    """Guidance by an energy of the denoised estimate: ``score - w(t) grad_x U(E[x_0|x_t])``.

    ``energy`` is any differentiable ``U(x0) -> scalar`` (a PDE residual energy from
    :mod:`pdegen.fem`, a data misfit, a statFEM likelihood). ``weight`` is a constant or a function
    of ``t``; the guidance is active only for ``t <= start`` (e.g. ``start=0.2`` switches it on for
    the last 20% of a sampler that runs ``t`` from 1 to 0, the DiffusionPDE recipe).
    The guided score is a pytree (an ``EnergyGuidance`` module): samplers compiled for one keep
    serving another that differs only in arrays (e.g. ``energy`` a module holding a weight).
    """
    return EnergyGuidance(score_fn, sde, energy, weight, start)


class EnergyGuidance(eqx.Module):
    """The score ``score_fn(x, t) - w(t) grad_x energy(E[x_0 | x_t])`` of :func:`energy_guidance`."""

    score_fn: ScoreFn
    sde: object
    energy: Callable[[jax.Array], jax.Array]
    weight: float | Callable[[jax.Array], jax.Array]
    start: float

    def __call__(self, x, t):
        w = self.weight(t) if callable(self.weight) else self.weight
        g = jax.grad(lambda x_: self.energy(tweedie_mean(self.score_fn, self.sde, x_, t)))(x)
        return self.score_fn(x, t) - jnp.where(t <= self.start, w, 0.0) * g


class StatFEMLikelihood(NamedTuple):
    """The statFEM observation model ``y = rho A(x_0) + d + e`` (Girolami et al. 2021).

    ``d ~ GP(0, k_d)`` is the model discrepancy on the sensors, a squared-exponential kernel with
    standard deviation ``sigma_d`` and length ``ell_d`` (:func:`pdegen.fem.statfem.kernel_matrix`),
    ``e ~ N(0, sigma_e^2 I)`` the measurement noise and ``rho`` a scale between model and data.
    ``sigma_d = 0`` and ``rho = 1`` is the plain Gaussian likelihood of :func:`tmpd` / :func:`pigdm`.
    """

    rho: float = 1.0
    sigma_d: float = 0.0
    ell_d: float = 0.2
    sigma_e: float = 1e-2

    @classmethod
    def from_model(cls, model) -> StatFEMLikelihood:
        """The observation part of a :class:`pdegen.fem.statfem.StatFEM` model."""
        return cls(*(float(getattr(model, k)) for k in ("rho", "sigma_d", "ell_d", "sigma_e")))

    def covariance(self, sensors) -> jax.Array:
        """``C_d + sigma_e^2 I`` on the sensor points ``(m, 2)``."""
        from pdegen.fem.statfem import kernel_matrix

        sensors = jnp.asarray(sensors)
        if sensors.ndim != 2 or sensors.shape[1] != 2:
            raise ValueError(
                f"StatFEMLikelihood: sensors must be points (m, 2), got shape {sensors.shape}"
            )
        m = sensors.shape[0]
        Cd = kernel_matrix(sensors, sensors, sigma=self.sigma_d, length=self.ell_d)
        return Cd + self.sigma_e**2 * jnp.eye(m, dtype=Cd.dtype)

    def whitener(self, sensors, scale: float = 1.0) -> np.ndarray:
        """``W = L^{-1}`` (host float64) with ``L L^T`` the covariance of :meth:`covariance` divided by
        ``scale^2``: ``W (y - rho A x) / scale`` has independent unit-variance entries."""
        cov = np.asarray(self.covariance(sensors), np.float64) / float(scale) ** 2
        return np.linalg.inv(np.linalg.cholesky(cov))

    def check(self) -> StatFEMLikelihood:
        for name in ("sigma_d", "ell_d", "sigma_e"):
            v = float(getattr(self, name))
            if not (v >= 0 if name == "sigma_d" else v > 0) or not math.isfinite(v):
                raise ValueError(
                    f"StatFEMLikelihood: {name} must be {'>= 0' if name == 'sigma_d' else '> 0'}, got {v}"
                )
        if not math.isfinite(float(self.rho)) or float(self.rho) == 0:
            raise ValueError(f"StatFEMLikelihood: rho must be finite and non-zero, got {self.rho}")
        return self


def whitened_observation(observe, y, likelihood: StatFEMLikelihood, sensors):
    """``(observe_w, y_w)`` with ``observe_w(x) = L^{-1} rho A(x)``, ``y_w = L^{-1} y`` and ``L L^T`` the
    statFEM noise covariance: a plain Gaussian likelihood with unit noise in the whitened space."""
    likelihood = StatFEMLikelihood(*likelihood).check()
    y = jnp.asarray(y)
    chol = jnp.linalg.cholesky(likelihood.covariance(sensors).astype(y.dtype))
    if chol.shape[0] != y.size:
        raise ValueError(f"statfem guidance: {chol.shape[0]} sensors but y has {y.size} entries")
    solve = lambda v: jax.scipy.linalg.solve_triangular(chol, v, lower=True)  # noqa: E731

    def observe_w(x):
        A = _as_operator(observe, x.shape)
        return solve(likelihood.rho * A(x))

    return observe_w, solve(y)


def statfem_guidance(
    score_fn: ScoreFn,
    sde,
    observe,
    y,
    *,
    sensors,
    likelihood: StatFEMLikelihood | None = None,
    model=None,
    guidance: str = "tmpd",
    variant: str = "full",
) -> ScoreFn:
    """Guidance under the model-error-aware statFEM likelihood.

    statFEM-likelihood guidance: TMPD or PiGDM under the model-error-aware likelihood
    ``y = rho A(x_0) + d + e``, ``d + e ~ N(0, C_d + sigma_e^2 I)``.

    The correlated discrepancy widens the likelihood along smooth sensor patterns, so a prior is
    not forced to fit a systematic model error as if it were signal. Implemented by whitening with
    the Cholesky factor of the statFEM noise covariance and unit noise.

    Args:
        sensors: sensor coordinates ``(m, 2)`` (the discrepancy kernel lives on them).
        likelihood: a :class:`StatFEMLikelihood`, or ``model``: a :class:`pdegen.fem.statfem.StatFEM`
            whose ``rho``, ``sigma_d``, ``ell_d``, ``sigma_e`` are used (e.g. after
            :func:`pdegen.fem.statfem.fit_hyperparameters`).
        guidance: ``'tmpd'`` (with ``variant``) or ``'pigdm'``.
    """
    if (likelihood is None) == (model is None):
        raise ValueError("statfem_guidance: give exactly one of likelihood= and model=")
    if likelihood is None:
        likelihood = StatFEMLikelihood.from_model(model)
    if guidance not in ("tmpd", "pigdm"):
        raise ValueError(f"statfem_guidance: guidance must be 'tmpd' or 'pigdm', got {guidance!r}")
    y = _check_observations(y, 0.0)
    observe_w, y_w = whitened_observation(observe, y, likelihood, sensors)
    if guidance == "pigdm":
        return pigdm(score_fn, sde, observe_w, y_w, noise_std=1.0)
    return tmpd(score_fn, sde, observe_w, y_w, noise_std=1.0, variant=variant)
