"""The exact Gaussian posterior of the linear benchmark tasks (the Bayes floor) and empirical Bayes
for the statFEM observation model under the tasks' GRF prior."""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem
from pdegen._dct import idct2_variance

from ._gaussian import gaussian_posterior
from ._guidance import StatFEMLikelihood
from ._operators import (
    COLUMN_CHUNK,
    grf_sqrt_matrix,
    noise_floor,
    sensor_operator,
    solution_operator,
    solve_columns,
)
from ._results import Posterior
from ._tasks import InverseTask


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _bayes_arrays(G, y, key, noise_std, num_samples, alpha, tau):
    """Compiled once per (grid, sensors, samples, GRF): the noise level is traced, so noisy draws
    of a family share the program."""
    g = int(round(math.sqrt(G.shape[1])))
    post = gaussian_posterior(
        jnp.zeros((g, g), G.dtype),
        lambda z: fem.grf_from_white_noise(z, alpha=alpha, tau=tau),
        G,
        y,
        noise_std=noise_std,
        prior_variance=idct2_variance(
            jnp.asarray(fem.grf_mode_std((g, g), alpha=alpha, tau=tau)) ** 2
        ),
    )
    return (
        post.mean,
        post.std,
        post.sample(key, num_samples),
        post.cross,
        post.chol,
        post.log_evidence,
    )


@functools.lru_cache(maxsize=8)
def _prior_u_variance(physics: fem.PDETask, grid: int, alpha: float, tau: float) -> np.ndarray:
    """``diag(S C S^T)``: the prior variance of ``u = S a`` under the GRF ``a = L z``, once per task
    family. Row ``i`` is ``||L^T s_i||^2`` with ``L^T`` the adjoint of the GRF's spectral map, so the
    cost is ``g^2`` transforms of ``g^2`` values, not the dense product ``S L`` (``g^6`` flops)."""
    S = solution_operator(physics)
    d = grid * grid

    def sqrt(z):
        return fem.grf_from_white_noise(z.reshape(grid, grid), alpha=alpha, tau=tau).reshape(-1)

    adjoint = jax.linear_transpose(sqrt, jnp.zeros(d))
    norms = jax.jit(jax.vmap(lambda s: jnp.sum(adjoint(s)[0] ** 2)))
    k = min(COLUMN_CHUNK, d)
    out = []
    for start in range(0, d, k):
        rows = np.zeros((k, d))
        rows[: min(k, d - start)] = S[start : start + k]
        out.append(np.asarray(norms(jnp.asarray(rows)))[: min(k, d - start)])
    return np.concatenate(out)


def bayes_posterior(
    task: InverseTask,
    *,
    key,
    num_samples: int = 8,
    y=None,
    alpha: float | None = None,
    tau: float | None = None,
    likelihood: StatFEMLikelihood | None = None,
) -> Posterior:
    """The exact Gaussian posterior under the tasks' GRF prior (Poisson, Helmholtz): the Bayes floor.

    ``a = L z`` with the DCT square root ``L``; ``y = G a + e`` with ``G`` the sensor rows of the
    FEM solution operator (inverse) or of the identity (forward), computed with
    :func:`pdegen.inverse.gaussian_posterior`. The ``u`` channel is ``S a`` (its std exact, through
    the dense solution operator ``S``). Samples by Matheron's rule.

    With a statFEM ``likelihood`` the data model is ``y = rho G a + d + e`` (correlated model error
    ``d``): the exact posterior of that model, computed in the whitened space. ``alpha``, ``tau``:
    the GRF prior (default: the one the task's data were drawn from).
    """
    if not task.linear:
        raise ValueError(
            f"bayes_posterior: no exact Gaussian posterior for {task.pde!r} (nonlinear in a)"
        )
    alpha = task.physics.alpha if alpha is None else float(alpha)
    tau = task.physics.tau if tau is None else float(tau)
    y = task.y if y is None else task.check_observations(y)
    g = task.grid
    G = sensor_operator(task)
    noise_std = noise_floor(task)
    y_used = np.asarray(y, np.float64)
    if likelihood is not None:
        likelihood = StatFEMLikelihood(*likelihood).check()
        Wm = likelihood.whitener(task.points)
        G = Wm @ (float(likelihood.rho) * G)
        y_used = Wm @ y_used
        noise_std = 1.0
    t0 = time.perf_counter()
    mean_a, std_a, a_samples, cross, chol, log_evidence = _bayes_arrays(
        jnp.asarray(G),
        jnp.asarray(y_used),
        key,
        jnp.asarray(noise_std, jnp.float64),
        num_samples,
        alpha,
        tau,
    )
    # u = S a by sparse solves: the dense S is formed only for the prior u variance below
    flat = np.concatenate(
        [np.asarray(mean_a).reshape(-1, 1), np.asarray(a_samples).reshape(num_samples, -1).T],
        axis=1,
    )
    solved = jnp.asarray(solve_columns(task.physics, flat).T)
    mean_u = solved[0].reshape(g, g)
    u_samples = solved[1:].reshape(a_samples.shape)
    if task.target == "u":
        # var(S a | y) = diag(S C S^T) - diag(S X S^-1 X^T S^T), X = C G^T: exact.
        SX = jnp.asarray(solve_columns(task.physics, np.asarray(cross)))
        W = jax.scipy.linalg.solve_triangular(chol, SX.T, lower=True)
        var_u = jnp.asarray(_prior_u_variance(task.physics, g, alpha, tau)) - jnp.sum(W**2, axis=0)
        std_u = jnp.sqrt(jnp.maximum(var_u, 0.0)).reshape(g, g)
    else:
        std_u = u_samples.std(0, ddof=1) if num_samples > 1 else jnp.zeros((g, g))
    seconds = (time.perf_counter() - t0) / num_samples
    samples = jnp.stack([a_samples, u_samples], axis=1)
    mean = jnp.stack([mean_a, mean_u])
    std = jnp.stack([std_a, std_u])
    return Posterior(
        samples,
        mean,
        std,
        "bayes",
        "exact",
        float(seconds),
        0.0,
        {"log_evidence": float(log_evidence), "likelihood": likelihood},
    )


def default_likelihood(task: InverseTask) -> StatFEMLikelihood:
    """The statFEM likelihood matching how a task's data were made.

    The statFEM likelihood that matches how ``task``'s data were made: ``rho = 1``, its discrepancy
    (``sigma_d``, ``ell_d``) and the methods' noise level (:func:`fit_likelihood` estimates them
    from the data instead)."""
    return StatFEMLikelihood(
        rho=1.0,
        sigma_d=float(task.discrepancy_std),
        ell_d=float(task.discrepancy_length),
        sigma_e=noise_floor(task),
    )


def fit_likelihood(
    task: InverseTask,
    *,
    y=None,
    fit=("sigma_d", "ell_d"),
    init: StatFEMLikelihood | None = None,
    steps: int = 200,
    alpha: float = 2.0,
    tau: float = 3.0,
) -> StatFEMLikelihood:
    """Empirical Bayes for the statFEM observation model under the tasks' GRF prior (linear PDEs).

    Maximises the marginal likelihood ``log N(y; 0, rho^2 G C G^T + C_d(sigma_d, ell_d) + sigma_e^2 I)``
    over the parameters named in ``fit`` (any of ``rho``, ``sigma_d``, ``ell_d``, ``sigma_e``; log
    parametrisation, L-BFGS from optax), starting from ``init`` (default: ``rho = 1``, ``sigma_d`` 10%
    of the data RMS, ``ell_d = 0.2``, ``sigma_e`` the methods' noise level); the others keep their
    ``init`` values. The discrepancy and a smooth signal are hard to tell apart from few sensors
    (forward tasks, where the sensors see the GRF itself, are the worst case): check the fit.
    """
    names = ("rho", "sigma_d", "ell_d", "sigma_e")
    unknown = set(fit) - set(names)
    if unknown:
        raise ValueError(
            f"fit_likelihood: fit must name parameters among {names}, got {sorted(unknown)}"
        )
    if not task.linear:
        raise ValueError(
            f"fit_likelihood: needs a linear PDE (Gaussian marginal likelihood), got {task.pde!r}"
        )
    y = jnp.asarray(task.y if y is None else task.check_observations(y), jnp.float64)
    GL = sensor_operator(task) @ grf_sqrt_matrix(task.grid, alpha=alpha, tau=tau)
    K = jnp.asarray(GL @ GL.T)
    pts = jnp.asarray(task.points)
    rms = float(jnp.sqrt(jnp.mean(y**2)))
    if init is None:  # not the task's own discrepancy: the fit starts from a neutral guess
        init = StatFEMLikelihood(rho=1.0, sigma_d=0.1 * rms, ell_d=0.2, sigma_e=noise_floor(task))
    init = StatFEMLikelihood(*init).check()
    fixed = np.asarray([float(getattr(init, k)) for k in names])
    if "sigma_d" in fit and fixed[1] == 0:
        fixed[1] = 0.1 * rms
    mask = tuple(k in fit for k in names)
    theta = _fit_statfem_likelihood(
        jnp.zeros(4), jnp.asarray(fixed), K, y, pts, mask=mask, steps=int(steps)
    )
    if not bool(jnp.all(jnp.isfinite(theta))):
        raise RuntimeError("fit_likelihood: the optimisation diverged (non-finite parameters)")
    values = fixed * np.exp(np.where(mask, np.asarray(theta), 0.0))
    return StatFEMLikelihood(*(float(v) for v in values))


@functools.partial(jax.jit, static_argnames=("mask", "steps"))
def _fit_statfem_likelihood(theta0, fixed, K, y, pts, *, mask: tuple, steps: int):
    """L-BFGS on the statFEM marginal likelihood; parameters ``fixed * exp(theta)`` (``theta`` only
    where ``mask``)."""
    from ..mcmc import lbfgs_minimise

    m_ = jnp.asarray(mask)

    def nll(theta):
        rho, sigma_d, ell_d, sigma_e = fixed * jnp.exp(jnp.where(m_, theta, 0.0))
        C = rho**2 * K + StatFEMLikelihood(rho, sigma_d, ell_d, sigma_e).covariance(pts)
        C = C + 1e-12 * jnp.mean(y**2) * jnp.eye(y.size)
        L = jnp.linalg.cholesky(C)
        w = jax.scipy.linalg.solve_triangular(L, y, lower=True)
        return 0.5 * jnp.sum(w**2) + jnp.sum(jnp.log(jnp.diag(L)))

    return lbfgs_minimise(nll, theta0, steps)[0]
