"""Exact results for the linear-Gaussian statFEM model.

Prior ``x ~ N(m0, C0)`` with ``m0 = A^{-1} b`` and ``C0 = A^{-1} G A^{-T}`` (only solves), data
``y_j = Ht x + c + d_j + e_j`` with ``Ht = rho H`` (free columns), ``c = rho H lift`` and
``d_j + e_j ~ N(0, S)``, ``S = C_d + sigma_e^2 I``. Replicates enter through their mean
``ybar ~ N(Ht x + c, S / J)``. Everything is done in observation space (Woodbury):

    mean = m0 + C0 Ht^T W^{-1} (ybar - Ht m0 - c),   W = Ht C0 Ht^T + S / J,
    cov  = C0 - C0 Ht^T W^{-1} Ht C0,

so ``m`` pairs of solves and an ``m x m`` Cholesky factor give the mean, the action of the
covariance and exact samples (Matheron's rule) on any mesh.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

from ...mcmc import low_rank_preconditioner
from .._solve import solver_errors
from ._kernels import Preconditioner
from ._model import LinearSystem, StatFEM
from ._selected import SparseCholesky


def _check_model(model, fn):
    if not isinstance(model, StatFEM):
        raise TypeError(f"{fn}: model must be a StatFEM, got {type(model).__name__}")
    if model.observation is not None:
        raise ValueError(
            f"{fn}: exact results need a linear observation map (model.observation is None); "
            "use a Langevin sampler for nonlinear observations"
        )


def _prior_cov_apply(sys: LinearSystem, v):
    return sys.solve(sys.apply_G(sys.solve_T(v)))


def _prior_cov_columns(sys: LinearSystem, V):
    """``C0 V^T`` for rows ``V`` (k, n): returns (n, k); one batched solve pair."""
    return jax.vmap(lambda v: _prior_cov_apply(sys, v))(V).T


def _observation_prior(sys: LinearSystem):
    """Prior mean and covariance of ``H u`` (without ``rho``): ``(mu_o (m,), P_o (m, m), cross)``."""
    Hf = sys.dense_observation()
    m0 = sys.solve(sys.b)
    cross = _prior_cov_columns(sys, Hf)  # C0 Hf^T, (n, m)
    mu_o = sys.H @ (
        sys.lift + jnp.zeros(sys.structure.ndofs, m0.dtype).at[sys.structure.free].set(m0)
    )
    P_o = Hf @ cross
    return m0, mu_o, 0.5 * (P_o + P_o.T), cross


def _gaussian_logpdf_chol(r, chol):
    """``log N(r; 0, L L^T)`` for ``r`` of shape (m,)."""
    w = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
    m = r.shape[0]
    return (
        -0.5 * jnp.dot(w, w)
        - jnp.sum(jnp.log(jnp.diagonal(chol)))
        - 0.5 * m * math.log(2 * math.pi)
    )


def _lml_from_moments(mu_o, P_o, rho, S, Y):
    """``log p(Y)`` for ``Y_j = rho o + n_j``, ``o ~ N(mu_o, P_o)``, ``n_j ~ N(0, S)`` iid."""
    J, m = Y.shape
    ybar = jnp.mean(Y, axis=0)
    W = rho**2 * P_o + S / J
    chol_W = jnp.linalg.cholesky(W)
    out = _gaussian_logpdf_chol(ybar - rho * mu_o, chol_W)
    if J > 1:
        chol_S = jnp.linalg.cholesky(S)
        D = (Y - ybar[None, :]).T
        w = jax.scipy.linalg.solve_triangular(chol_S, D, lower=True)
        logdet_S = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol_S)))
        out = (
            out
            - 0.5 * jnp.sum(w * w)
            - 0.5 * (J - 1) * (logdet_S + m * math.log(2 * math.pi))
            - 0.5 * m * math.log(J)
        )
    return out


def log_marginal_likelihood(model: StatFEM, y) -> jax.Array:
    """``log p(y | parameters)`` of all replicates, the latent solution integrated out.

    Differentiable in every model parameter (PDE coefficients through adjoint solves).
    """
    _check_model(model, "log_marginal_likelihood")
    Y = model.check_data(y, "log_marginal_likelihood")
    return _log_marginal_likelihood(model, Y)


@solver_errors()
@eqx.filter_jit
def _log_marginal_likelihood(model, Y):
    sys = model.system()
    _, mu_o, P_o, _ = _observation_prior(sys)
    S = sys.noise_chol @ sys.noise_chol.T
    return _lml_from_moments(mu_o, P_o, model.rho, S, Y)


class ExactPosterior(eqx.Module):
    """The exact Gaussian posterior of the free dofs (see :func:`exact_posterior`).

    Attributes:
        mean: posterior mean, ``(dim,)``.
        prior_mean: ``A^{-1} b``.
        cross: ``C0 Ht^T``, ``(dim, m)``.
        chol_W: Cholesky factor of ``W = Ht C0 Ht^T + S / J``.
    """

    mean: jax.Array
    prior_mean: jax.Array
    cross: jax.Array
    chol_W: jax.Array
    Ht: jax.Array
    offset: jax.Array  # c = rho H lift
    ybar: jax.Array
    noise_chol: jax.Array  # of S / J
    system: LinearSystem

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def _W_solve(self, r):
        return jax.scipy.linalg.cho_solve((self.chol_W, True), r)

    def prior_cov_apply(self, v):
        """``C0 v`` (two solves)."""
        return _prior_cov_apply(self.system, v)

    def cov_apply(self, v):
        """Posterior covariance times ``v`` (two solves and an ``m x m`` triangular pair)."""
        return self.prior_cov_apply(v) - self.cross @ self._W_solve(self.cross.T @ v)

    def _sample_centred(self, *, key):
        """A draw of ``N(0, posterior covariance)`` by Matheron's rule (one solve)."""
        k1, k2 = jax.random.split(key)
        sys = self.system
        x0 = sys.solve(sys.sample_forcing_noise(key=k1))
        eps = self.noise_chol @ jax.random.normal(k2, (self.chol_W.shape[0],), x0.dtype)
        return x0 - self.cross @ self._W_solve(self.Ht @ x0 + eps)

    def sample(self, num_samples: int | None = None, *, key) -> jax.Array:
        """Exact posterior draws, ``(dim,)`` or ``(num_samples, dim)``; ``key`` is keyword-only."""
        if num_samples is not None and (int(num_samples) != num_samples or num_samples < 1):
            raise ValueError(
                f"ExactPosterior.sample: num_samples must be a positive integer, got {num_samples}"
            )
        return _posterior_sample(self, key, None if num_samples is None else int(num_samples))

    def prior_covariance(self) -> jax.Array:
        """Dense ``C0`` (``dim`` pairs of solves; small problems)."""
        return _dense_prior_covariance(self)

    def covariance(self) -> jax.Array:
        """Dense posterior covariance (small problems)."""
        return _dense_covariance(self)

    def variance(self, block_size: int = 512, *, method: str = "auto") -> jax.Array:
        """Pointwise posterior variance.

        ``method='selected'``: ``diag(C0)`` by selected inversion of the sparse prior precision
        ``A^T G^{-1} A`` (one sparse Cholesky factor and the Takahashi recursions on the host, see
        :func:`sparse_prior_variance`) minus the Woodbury term from ``cross`` (``m`` columns):
        no dense ``dim x dim`` matrix and no ``dim`` solves; needs a lumped mass and white forcing
        noise (the default model). ``method='blocks'``: the covariance action on blocks of
        ``block_size`` unit vectors (any model, ``dim`` solve pairs). ``'auto'``: ``'selected'``
        where it applies.
        """
        if method not in ("auto", "selected", "blocks"):
            raise ValueError(
                f"ExactPosterior.variance: method must be 'auto', 'selected' or 'blocks', got {method!r}"
            )
        sys = self.system
        sparse_ok = sys.M is None and sys.kernel_chol is None
        if method == "selected" and not sparse_ok:
            raise ValueError(
                "ExactPosterior.variance: method='selected' needs mass='lumped' and kernel=None "
                "(a sparse prior precision); use method='blocks'"
            )
        if method != "blocks" and sparse_ok:
            prior_var = jnp.asarray(_sparse_prior_variance(sys), self.mean.dtype)
            return prior_var - _woodbury_diagonal(self.cross, self.chol_W)
        n = self.dim
        dtype = self.mean.dtype
        out = []
        for start in range(0, n, block_size):
            idx = jnp.arange(start, min(start + block_size, n))
            out.append(_variance_block(self, jax.nn.one_hot(idx, n, dtype=dtype)))
        return jnp.concatenate(out)


@jax.jit
def _woodbury_diagonal(cross, chol_W):
    w = jax.scipy.linalg.solve_triangular(chol_W, cross.T, lower=True)
    return jnp.sum(w * w, axis=0)


def _sparse_prior_precision(sys: LinearSystem):
    """``A^T G^{-1} A`` on the free dofs as a SciPy CSC matrix (lumped mass, white noise)."""
    s = sys.structure
    A = sp.csr_matrix(
        (np.asarray(sys.A.data, np.float64), sys.A.pattern.cols, sys.A.pattern.indptr),
        shape=sys.A.shape,
    )
    Af = A[s.free][:, s.free]
    g = float(sys.sigma_f) ** 2 * np.asarray(sys.mass_diag, np.float64)
    return sp.csc_matrix(Af.T @ sp.diags_array(1.0 / g) @ Af)


def _sparse_prior_variance(sys: LinearSystem) -> np.ndarray:
    return SparseCholesky(_sparse_prior_precision(sys)).inverse_diagonal()


def sparse_prior_variance(model: StatFEM) -> jax.Array:
    """Pointwise prior variance ``diag(A^{-1} G A^{-T})`` of the free dofs by selected inversion.

    One sparse Cholesky factor of the prior precision ``A^T G^{-1} A`` (SciPy SuperLU in symmetric
    mode with a fill-reducing ordering) and the Takahashi recursions on its pattern; about a
    second for 65k unknowns. Needs ``mass='lumped'`` and ``kernel=None`` (``G`` diagonal).
    """
    if not isinstance(model, StatFEM):
        raise TypeError(
            f"sparse_prior_variance: model must be a StatFEM, got {type(model).__name__}"
        )
    if model.mass_kind != "lumped" or model.kernel is not None:
        raise ValueError(
            "sparse_prior_variance: needs mass='lumped' and kernel=None (a diagonal G); "
            f"got mass={model.mass_kind!r}, kernel={model.kernel!r}"
        )
    sys = model.system()
    return jnp.asarray(_sparse_prior_variance(sys), sys.b.dtype)


@solver_errors()
@eqx.filter_jit
def _posterior_sample(post, key, num_samples):
    if num_samples is None:
        return post.mean + post._sample_centred(key=key)
    keys = jax.random.split(key, num_samples)
    return post.mean[None, :] + jax.vmap(lambda k: post._sample_centred(key=k))(keys)


@solver_errors()
@eqx.filter_jit
def _dense_prior_covariance(post):
    C0 = _prior_cov_columns(post.system, jnp.eye(post.dim, dtype=post.mean.dtype))
    return 0.5 * (C0 + C0.T)


@solver_errors()
@eqx.filter_jit
def _dense_prior_covariance_of(model):
    sys = model.system()
    C0 = _prior_cov_columns(sys, jnp.eye(model.dim, dtype=sys.b.dtype))
    return 0.5 * (C0 + C0.T)


@solver_errors()
@eqx.filter_jit
def _dense_covariance(post):
    C = _dense_prior_covariance(post) - post.cross @ post._W_solve(post.cross.T)
    return 0.5 * (C + C.T)


@solver_errors()
@eqx.filter_jit
def _variance_block(post, E):
    return jnp.sum(E * jax.vmap(post.cov_apply)(E), axis=1)


def exact_posterior(model: StatFEM, y) -> ExactPosterior:
    """The exact posterior of the free dofs for a linear observation map.

    Cost: ``m`` pairs of (batched) solves, then ``O(m^3)``; mean, covariance action and samples
    need no dense ``dim x dim`` matrix. Differentiable in the model's parameters.
    """
    _check_model(model, "exact_posterior")
    Y = model.check_data(y, "exact_posterior")
    return _exact_posterior(model, Y)


@solver_errors()
@eqx.filter_jit
def _exact_posterior(model, Y):
    J = Y.shape[0]
    sys = model.system()
    m0, mu_o, P_o, cross0 = _observation_prior(sys)
    rho = model.rho
    S = sys.noise_chol @ sys.noise_chol.T
    W = rho**2 * P_o + S / J
    chol_W = jnp.linalg.cholesky(W)
    ybar = jnp.mean(Y, axis=0)
    cross = rho * cross0
    mean = m0 + cross @ jax.scipy.linalg.cho_solve((chol_W, True), ybar - rho * mu_o)
    Ht = rho * sys.dense_observation()
    offset = rho * (sys.H @ sys.lift)
    return ExactPosterior(
        mean=mean,
        prior_mean=m0,
        cross=cross,
        chol_W=chol_W,
        Ht=Ht,
        offset=offset,
        ybar=ybar,
        noise_chol=sys.noise_chol / math.sqrt(J),
        system=sys,
    )


def posterior_precision(model: StatFEM, y) -> jax.Array:
    """Dense posterior precision ``A^T G^{-1} A + J Ht^T S^{-1} Ht`` (small problems)."""
    _check_model(model, "posterior_precision")
    return _posterior_precision(model, model.check_data(y, "posterior_precision"))


@solver_errors()
@eqx.filter_jit
def _posterior_precision(model, Y):
    sys = model.system()
    n = model.dim
    eye = jnp.eye(n, dtype=sys.b.dtype)
    A = jax.vmap(sys.apply_A)(eye).T  # columns A e_k
    GinvA = jax.vmap(sys.solve_G, in_axes=1, out_axes=1)(A)
    Ht = model.rho * sys.dense_observation()
    SinvH = jax.scipy.linalg.cho_solve((sys.noise_chol, True), Ht)
    Q = A.T @ GinvA + Y.shape[0] * Ht.T @ SinvH
    return 0.5 * (Q + Q.T)


def ula_stationary_covariance(precision, step_size, preconditioner=None) -> jax.Array:
    """Covariance of the stationary law of (preconditioned) ULA on a Gaussian target.

    For ``x' = x - h P Q (x - mu) + sqrt(2 h) L z`` (``L L^T = P``) the chain is stationary at
    ``N(mu, (Q - h/2 Q P Q)^{-1})`` when ``h < 2 / lambda_max(P Q)``: the known ULA bias (the mean is
    exact). ``preconditioner``: dense ``P`` (default identity).
    """
    Q = jnp.asarray(precision)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"ula_stationary_covariance: precision must be square, got {Q.shape}")
    P = (
        jnp.eye(Q.shape[0], dtype=Q.dtype)
        if preconditioner is None
        else jnp.asarray(preconditioner)
    )
    if P.shape != Q.shape:
        raise ValueError(
            f"ula_stationary_covariance: preconditioner must have shape {Q.shape}, got {P.shape}"
        )
    return _ula_stationary_covariance(Q, P, jnp.asarray(step_size, Q.dtype))


@jax.jit
def _ula_stationary_covariance(Q, P, step_size):
    T = Q - 0.5 * step_size * Q @ P @ Q
    C = jnp.linalg.inv(0.5 * (T + T.T))
    return 0.5 * (C + C.T)


# ---------------------------------------------------------------------------- preconditioners


def prior_preconditioner(model: StatFEM, *, dense: bool = False) -> Preconditioner:
    """``P = C0 = A^{-1} G A^{-T}``: action by two solves, square-root draw by one.

    ``dense=True`` forms ``C0`` once (``dim`` pairs of solves) and applies it through a dense
    Cholesky factor, cheaper per step on small meshes. Works for nonlinear observation maps too
    (it only uses the prior).
    """
    if not isinstance(model, StatFEM):
        raise TypeError(
            f"prior_preconditioner: model must be a StatFEM, got {type(model).__name__}"
        )
    if dense:
        return dense_preconditioner(_dense_prior_covariance_of(model))
    sys = model.system()
    return Preconditioner(
        apply=lambda v: _prior_cov_apply(sys, v),
        sample=lambda *, key: sys.solve(sys.sample_forcing_noise(key=key)),
    )


def laplace_preconditioner(model: StatFEM, y, *, rank: int, key, oversampling: int = 10):
    """The Laplace / Gauss-Newton preconditioner, built without the posterior.

    The Laplace / Gauss-Newton preconditioner built without the posterior: the prior square
    root ``S = A^{-1} G^{1/2}`` and the ``rank`` leading eigenpairs of the prior-preconditioned
    data-misfit Hessian ``J S^T Ht^T S_noise^{-1} Ht S`` from a randomised eigensolver
    (:func:`pdegen.mcmc.low_rank_preconditioner`, the hIPPYlib approach). For this linear model it
    is the exact posterior covariance once ``rank`` reaches the number of sensors; below that, the
    data-informed directions beyond ``rank`` keep their prior variance. Needs ``mass='lumped'`` and
    ``kernel=None``. Returns a :class:`pdegen.mcmc.LowRankPreconditioner`."""
    _check_model(model, "laplace_preconditioner")
    if model.mass_kind != "lumped" or model.kernel is not None:
        raise ValueError(
            "laplace_preconditioner: needs mass='lumped' and kernel=None (a diagonal G)"
        )
    Y = model.check_data(y, "laplace_preconditioner")
    J = Y.shape[0]
    sys = model.system()
    groot = model.sigma_f * jnp.sqrt(sys.mass_diag)
    Hf = model.rho * sys.dense_observation()

    def misfit_hvp(v):
        w = jax.scipy.linalg.cho_solve((sys.noise_chol, True), Hf @ v)
        return J * (Hf.T @ w)

    with solver_errors():
        return low_rank_preconditioner(
            lambda z: sys.solve(groot * z),
            lambda v: groot * sys.solve_T(v),
            misfit_hvp,
            model.dim,
            rank=rank,
            key=key,
            oversampling=oversampling,
        )


def dense_preconditioner(covariance) -> Preconditioner:
    """``P`` given as a dense SPD matrix, applied through its Cholesky factor ``L``."""
    C = jnp.asarray(covariance)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"dense_preconditioner: covariance must be a square matrix, got {C.shape}")
    jitter = 1e-12 * jnp.mean(jnp.diagonal(C))
    L = jnp.linalg.cholesky(C + jitter * jnp.eye(C.shape[0], dtype=C.dtype))
    C = 0.5 * (C + C.T)
    return Preconditioner(
        apply=lambda v: C @ v,
        sample=lambda *, key: L @ jax.random.normal(key, (L.shape[0],), L.dtype),
    )


def posterior_preconditioner(model: StatFEM, y, *, dense: bool | None = None) -> Preconditioner:
    """``P`` = the exact posterior covariance of the linear-Gaussian model.

    ``dense=True`` builds the covariance and applies it through a dense Cholesky factor (default
    for ``dim <= 1500``, where dense products beat solves); ``dense=False`` uses the Woodbury
    action (two solves) and Matheron draws (one solve): any size, no ``dim x dim`` matrix.
    """
    post = exact_posterior(model, y)
    if dense is None:
        dense = model.dim <= 1500
    if dense:
        return dense_preconditioner(post.covariance())
    return Preconditioner(apply=post.cov_apply, sample=post._sample_centred)


# ---------------------------------------------------------------------------- hyperparameters

HYPERPARAMETERS = ("rho", "sigma_d", "ell_d", "sigma_e", "sigma_f")


class HyperparameterFit(NamedTuple):
    """Result of :func:`fit_hyperparameters`."""

    model: StatFEM
    parameters: dict
    log_marginal_likelihood: jax.Array  # history, one value per step


def fit_hyperparameters(
    model: StatFEM,
    y,
    *,
    parameters=("rho", "sigma_d", "ell_d", "sigma_e"),
    num_steps: int = 500,
    learning_rate: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
) -> HyperparameterFit:
    """Maximise the log marginal likelihood over hyperparameters (log-parameterised, optax).

    ``parameters``: any of ``'rho'`` (must start > 0), ``'sigma_d'`` (> 0), ``'ell_d'``,
    ``'sigma_e'``, ``'sigma_f'``. The prior moments of ``H u`` are computed once (they do not depend
    on these, ``sigma_f`` enters as a scale), so each step costs only ``m x m`` algebra.
    """
    _check_model(model, "fit_hyperparameters")
    Y = model.check_data(y, "fit_hyperparameters")
    parameters = tuple(parameters)
    if (
        not parameters
        or any(p not in HYPERPARAMETERS for p in parameters)
        or len(set(parameters)) != len(parameters)
    ):
        raise ValueError(
            f"fit_hyperparameters: parameters must be distinct names from {HYPERPARAMETERS}, got {parameters}"
        )
    if int(num_steps) < 1:
        raise ValueError(f"fit_hyperparameters: num_steps must be >= 1, got {num_steps}")
    for p in parameters:
        if not float(getattr(model, p)) > 0:
            raise ValueError(
                f"fit_hyperparameters: the initial {p} must be > 0 (log-parameterised), "
                f"got {float(getattr(model, p))}"
            )
    _, mu_o, P_o, _ = eqx.filter_jit(_observation_prior)(model.system())
    P_o = P_o / model.sigma_f**2  # P_o is proportional to sigma_f^2
    init = {p: jnp.log(getattr(model, p)) for p in parameters}
    fixed = {p: getattr(model, p) for p in HYPERPARAMETERS}
    sensors = model.sensors
    m = model.num_sensors

    def negative_lml(logp):
        v = dict(fixed)
        v.update({k: jnp.exp(val) for k, val in logp.items()})
        from ._model import kernel_matrix

        S = v["sigma_e"] ** 2 * jnp.eye(m, dtype=P_o.dtype) + kernel_matrix(
            sensors, sensors, sigma=v["sigma_d"], length=v["ell_d"]
        )
        return -_lml_from_moments(mu_o, v["sigma_f"] ** 2 * P_o, v["rho"], S, Y)

    opt = optimizer if optimizer is not None else optax.adam(learning_rate)

    def step(carry, _):
        params, state = carry
        loss, grad = jax.value_and_grad(negative_lml)(params)
        # optax mixes integer step counts with float decays: NumPy promotion inside it only
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grad, state, params)
        return (optax.apply_updates(params, updates), state), -loss

    with jax.numpy_dtype_promotion("standard"):
        state0 = opt.init(init)
    (params, _), history = jax.jit(
        lambda p0, s0: jax.lax.scan(step, (p0, s0), None, length=int(num_steps))
    )(init, state0)
    values = {k: jnp.exp(v) for k, v in params.items()}
    return HyperparameterFit(
        model=model.replace(**values), parameters=values, log_marginal_likelihood=history
    )
