"""Posterior sampling for the benchmark tasks: diffusion priors guided by data and physics.

Two ways for the physics to enter (the ``route``):

- ``"solve"``: the prior is over the coefficient ``a`` (a one-channel prior, or channel ``a`` of a
  joint prior); the observations are predicted through the FEM solve, ``y = H solve(a) + e``.
  For the linear PDEs (Poisson, Helmholtz) the solve is the dense solution operator assembled
  once from the FEM system; for Darcy it is the differentiable FEM solve itself.
- ``"joint"``: the prior is over the pair ``(a, u)``; the observations see one channel and the
  PDE enters as an energy, the relative FEM weak residual of the denoised estimate (physics
  guidance, switched on for the last part of sampling).

Methods: ``"dps"``, ``"pigdm"``, ``"tmpd"`` (full), ``"tmpd-diagonal"``, ``"tmpd-rowsum"``,
``"statfem"`` / ``"statfem-pigdm"`` (TMPD / PiGDM under the model-error-aware statFEM likelihood
``y = rho H u + d + e``, :class:`StatFEMLikelihood`), ``"diffusionpde"`` (the DiffusionPDE recipe:
DPS-type observation misfit plus the PDE residual in the last 20% of the steps), ``"unguided"``
(prior samples), ``"map"`` (MAP estimate under the GRF prior, :func:`map_estimate`: the classical
baseline) and ``"bayes"``: the exact Gaussian posterior under the true GRF prior (linear PDEs
only), the Bayes-optimal floor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem
from pdegen.models import VPSDE, AbstractSDE, DiffusionModel
from pdegen.models import SAMPLERS as MODEL_SAMPLERS

from ._gaussian import gaussian_posterior
from ._guidance import StatFEMLikelihood, pigdm, tmpd, tweedie_mean
from ._priors import GaussianScore
from ._tasks import CHANNELS, InverseTask, credible_interval_coverage, relative_l2

METHODS = ("bayes", "map", "tmpd", "tmpd-diagonal", "tmpd-rowsum", "statfem", "statfem-pigdm", "dps", "pigdm",
           "diffusionpde", "unguided")
STATFEM_METHODS = ("statfem", "statfem-pigdm")
ROUTES = ("solve", "joint")
SAMPLERS = ("euler_maruyama", "ddim")


# ------------------------------------------------------------------------------------ priors
@dataclasses.dataclass(frozen=True, eq=False)
class FieldPrior:
    """A diffusion prior over fields on a ``grid x grid`` grid.

    Attributes:
        score: ``score(x, t)`` in normalised units for one example ``(C, grid, grid)`` (a
            :class:`pdegen.models.DiffusionModel` or a :class:`GaussianScore`).
        sde: the forward process the score belongs to.
        channels: names of the channels, ``("a",)`` or ``("a", "u")``.
        mean, std: per-channel normalisation (physical = normalised * std + mean).
        name: a label for tables.
        exact: whether the score is the exact score of the GRF prior of the tasks.
    """

    score: Any
    sde: AbstractSDE
    channels: tuple
    grid: int
    mean: tuple
    std: tuple
    name: str = "prior"
    exact: bool = False
    dtype: str = "float32"

    @property
    def data_shape(self) -> tuple:
        return (len(self.channels), self.grid, self.grid)

    def to_physical(self, x):
        m = jnp.asarray(self.mean, x.dtype).reshape(-1, 1, 1)
        s = jnp.asarray(self.std, x.dtype).reshape(-1, 1, 1)
        return x * s + m


def prior_from_model(model, *, channels: tuple | None = None, name: str | None = None) -> FieldPrior:
    """A :class:`FieldPrior` from a :class:`pdegen.models.DiffusionModel` or a loaded checkpoint.

    The model must generate images ``(C, g, g)``; ``C = 2`` is read as channels ``(a, u)``,
    ``C = 1`` as ``(a,)``.
    """
    if hasattr(model, "model") and hasattr(model, "metadata"):  # a Checkpoint
        name = name or model.metadata.get("name")
        model = model.model
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"prior_from_model: model must be a DiffusionModel or a Checkpoint, got {type(model).__name__}")
    shape = tuple(model.data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"prior_from_model: the model generates examples of shape {shape}; a field prior needs "
            f"square images (C, g, g)"
        )
    if channels is None:
        if shape[0] not in (1, 2):
            raise ValueError(f"prior_from_model: the model has {shape[0]} channels; expected 1 (a) or 2 (a, u)")
        channels = CHANNELS[: shape[0]]
    channels = tuple(channels)
    if len(channels) != shape[0]:
        raise ValueError(f"prior_from_model: channels {channels} do not match the model's {shape[0]} channel(s)")
    dtype = str(jnp.dtype(getattr(model.network, "dtype", "float32")))
    return FieldPrior(score=model, sde=model.sde, channels=channels, grid=shape[1],
                      mean=tuple(model.normalisation.mean), std=tuple(model.normalisation.std),
                      name=name or f"model {shape}", exact=False, dtype=dtype)


def gaussian_prior(grid: int, *, pde: str = "poisson", channels: tuple = ("a",), alpha: float = 2.0,
                   tau: float = 3.0, sde: AbstractSDE | None = None, max_joint_grid: int = 40) -> FieldPrior:
    """The exact score of the tasks' GRF prior (float64), as a :class:`FieldPrior`.

    ``channels=("a",)``: the GRF over ``a`` (DCT-diagonal score, any grid). ``channels=("a", "u")``:
    the joint Gaussian of ``(a, solve(a))`` for a linear PDE (a dense factorisation: grids up to
    ``max_joint_grid``). Each channel is normalised to unit average variance.
    """
    from ._tasks import LINEAR_PDES, _physics

    sde = VPSDE() if sde is None else sde
    channels = tuple(channels)
    std = fem.grf_mode_std((grid, grid), alpha=alpha, tau=tau)
    sd_a = float(np.sqrt(np.sum(std**2) / grid**2))
    if channels == ("a",):
        score = GaussianScore(sde, jnp.asarray(std / sd_a), None, None, (1, grid, grid), "dct")
        return FieldPrior(score, sde, channels, grid, (0.0,), (sd_a,), name="exact GRF score", exact=True,
                          dtype="float64")
    if channels != CHANNELS:
        raise ValueError(f"gaussian_prior: channels must be ('a',) or ('a', 'u'), got {channels}")
    if pde not in LINEAR_PDES:
        raise ValueError(f"gaussian_prior: a joint Gaussian prior needs a linear PDE {LINEAR_PDES}, got {pde!r}")
    if grid > max_joint_grid:
        raise ValueError(f"gaussian_prior: the joint Gaussian prior is dense; grid must be <= {max_joint_grid}, got {grid}")
    S = solution_operator(_physics(pde, grid))
    L = grf_sqrt_matrix(grid, alpha=alpha, tau=tau)
    SL = S @ L
    sd_u = float(np.sqrt(np.sum(SL**2) / grid**2))
    J = np.concatenate([L / sd_a, SL / sd_u])  # normalised joint square root, (2 d, d)
    U, sv, _ = np.linalg.svd(J, full_matrices=False)
    keep = sv > 1e-10 * sv.max()
    score = GaussianScore(sde, None, jnp.asarray(U[:, keep]), jnp.asarray(sv[keep] ** 2), (2, grid, grid), "eigen")
    return FieldPrior(score, sde, channels, grid, (0.0, 0.0), (sd_a, sd_u), name="exact joint GRF score",
                      exact=True, dtype="float64")


def dense_gaussian_prior(cov, grid: int, *, channels: tuple = CHANNELS, sde: AbstractSDE | None = None,
                         name: str = "Gaussian prior") -> FieldPrior:
    """A zero-mean Gaussian prior with a given dense covariance of the flattened ``(C, g, g)`` field
    (normalised units), with its exact score. For tests and small examples."""
    sde = VPSDE() if sde is None else sde
    cov = np.asarray(cov, dtype=np.float64)
    d = len(channels) * grid * grid
    if cov.shape != (d, d):
        raise ValueError(f"dense_gaussian_prior: cov must have shape ({d}, {d}), got {cov.shape}")
    w, V = np.linalg.eigh(0.5 * (cov + cov.T))
    w = np.maximum(w, 0.0)
    score = GaussianScore(sde, None, jnp.asarray(V), jnp.asarray(w), (len(channels), grid, grid), "eigen")
    return FieldPrior(score, sde, tuple(channels), grid, (0.0,) * len(channels), (1.0,) * len(channels),
                      name=name, exact=False, dtype="float64")


_OPERATOR_CACHE: dict = {}


def grf_sqrt_matrix(grid: int, *, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """Dense ``L`` with ``a = L z`` (``z`` white noise): the GRF of the tasks, ``(g^2, g^2)``."""
    key = ("L", grid, alpha, tau)
    if key not in _OPERATOR_CACHE:
        d = grid * grid
        eye = jnp.eye(d).reshape(d, grid, grid)
        cols = jax.jit(jax.vmap(lambda e: fem.grf_from_white_noise(e, alpha=alpha, tau=tau).reshape(-1)))(eye)
        _OPERATOR_CACHE[key] = np.asarray(cols).T
    return _OPERATOR_CACHE[key]


def solution_operator(physics: fem.PDETask) -> np.ndarray:
    """Dense FEM solution operator ``S`` with ``u = S a`` (nodal / image order), linear PDEs only.

    Assembled once from the FEM residual ``r(u, a) = A u - b(a)`` (``A`` from ``r(u, 0)``, ``b`` from
    ``-r(0, a)``) and one sparse LU factorisation with all right-hand sides at once.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    key = ("S", physics.task, physics.grid)
    if key in _OPERATOR_CACHE:
        return _OPERATOR_CACHE[key]
    if not physics.parameter.linear:
        raise ValueError(f"solution_operator: the {physics.task} solution depends nonlinearly on a")
    d = physics.mesh.npoints
    zero = jnp.zeros(d)
    problem = physics.problem

    def residual(u, a):
        r = problem.residual(u, **physics.theta(a))
        return r.real if jnp.iscomplexobj(r) else r

    eye = jnp.eye(d)
    A = np.asarray(jax.jit(jax.vmap(lambda e: residual(e, zero)))(eye)).T
    B = -np.asarray(jax.jit(jax.vmap(lambda e: residual(zero, e)))(eye)).T
    lu = spla.splu(sp.csc_matrix(A))
    S = lu.solve(B)
    _OPERATOR_CACHE[key] = S
    return S


def check_prior_fits(prior: FieldPrior, task: InverseTask, route: str) -> None:
    """Raise a ``ValueError`` naming ``prior`` if its grid or channels do not fit ``task``/``route``."""
    if not isinstance(prior, FieldPrior):
        raise TypeError(f"prior must be a FieldPrior (see prior_from_model, gaussian_prior), got {type(prior).__name__}")
    if prior.grid != task.grid:
        raise ValueError(
            f"prior: generates {prior.grid}x{prior.grid} fields but task {task.name} is on a "
            f"{task.grid}x{task.grid} grid; build the task with grid={prior.grid} or use a prior for grid {task.grid}"
        )
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if route == "joint" and tuple(prior.channels) != CHANNELS:
        raise ValueError(
            f"prior: route='joint' needs a joint prior over channels {CHANNELS}, this one has {tuple(prior.channels)}; "
            f"use route='solve'"
        )
    if route == "solve" and prior.channels[0] != "a":
        raise ValueError(f"prior: route='solve' needs channel 'a' first, got {tuple(prior.channels)}")


# ----------------------------------------------------------------------------- observation
def _observation_matrix(prior: FieldPrior, task: InverseTask, route: str):
    """Dense ``A`` (m, C g^2) and offset with ``y = A x_normalised + offset`` (linear cases)."""
    g2 = task.grid**2
    m = task.num_sensors
    C = len(prior.channels)
    A = np.zeros((m, C * g2))
    rows = np.arange(m)
    if route == "joint" or task.observed == "a":
        c = task.observed_index if route == "joint" else 0
        A[rows, c * g2 + task.sensors] = prior.std[c]
        offset = np.full(m, prior.mean[c])
    else:
        G = solution_operator(task.physics)[task.sensors]
        A[:, :g2] = G * prior.std[0]
        offset = G @ np.full(g2, prior.mean[0])
    return A, offset


def _noise_floor(task: InverseTask) -> float:
    """The noise level assumed by the methods (static per task family, so compiled code is reused).

    Noisy tasks: their ``noise_std``. Noise-free tasks: ``1e-3`` times the prior RMS of the observed
    channel (a small regulariser; the data themselves are exact).
    """
    if task.noise_std > 0:
        return float(task.noise_std)
    return 1e-3 * _channel_rms(task.pde, task.grid, task.observed)


def _channel_rms(pde: str, grid: int, channel: str) -> float:
    key = ("rms", pde, grid, channel)
    if key not in _OPERATOR_CACHE:
        from ._tasks import _physics

        physics = _physics(pde, grid)
        keys = jax.random.split(jax.random.key(987654), 16)
        pairs = [physics.sample(k) for k in keys]
        vals = np.stack([np.asarray(p[0 if channel == "a" else 1]).real for p in pairs])
        _OPERATOR_CACHE[key] = float(np.sqrt(np.mean(vals**2)))
    return _OPERATOR_CACHE[key]


# ------------------------------------------------------------------------------------ results
class Posterior(NamedTuple):
    """Posterior samples of the joint field and their summaries (physical units).

    Attributes:
        samples: ``(n, 2, g, g)`` samples of ``(a, u)``.
        mean, std: ``(2, g, g)`` mean and pointwise standard deviation (``bayes``: exact).
        method, route: how they were made.
        seconds_per_sample: sampling wall time per sample, compilation excluded.
        compile_seconds: time spent compiling (first batch minus a steady-state batch).
        info: extra diagnostics (e.g. the effect of the final projection).
    """

    samples: jax.Array
    mean: jax.Array
    std: jax.Array
    method: str
    route: str
    seconds_per_sample: float
    compile_seconds: float
    info: dict


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about a guided sampler (hashable: compiled code is reused across draws)."""

    method: str
    route: str
    sampler: str
    num_steps: int
    shape: tuple
    dtype: str
    noise_std: float
    scale: float
    physics_weight: float
    physics_start: float
    obs_scale: float
    time_grid: tuple
    nonlinear: bool
    physics: Any  # fem.PDETask (cached per pde/grid)
    pde: str
    observed_index: int
    sensors: tuple
    mean: tuple
    std: tuple
    residual_lambda: float = 1.0
    physics_precondition: tuple = (1.0, 1.0)
    data_variance: float = 1.0
    rho: float = 1.0


def _to_physical(x, spec: _Spec):
    m = jnp.asarray(spec.mean, x.dtype).reshape(-1, 1, 1)
    s = jnp.asarray(spec.std, x.dtype).reshape(-1, 1, 1)
    return x * s + m


def _residual_function(spec: _Spec):
    """``x0 (normalised joint field) -> R(a, u)``: the FEM weak residual (constrained rows hold ``u - g``)."""
    physics = spec.physics
    mesh = physics.mesh
    problem = physics.problem

    def residual(x0):
        phys = _to_physical(x0.astype(jnp.float64), spec)
        a, u = mesh.from_image(phys[0]), mesh.from_image(phys[1])
        r, _ = physics.parameter.residual_vector(a, u, smooth=True)
        return r.real if jnp.iscomplexobj(r) else r

    return residual


def residual_curvature(spec: _Spec, iterations: int = 30) -> float:
    """Largest eigenvalue of ``J^T J`` (``J`` the Jacobian of the residual in normalised units, at the
    channel means) by power iteration: it makes the physics energy's step size grid-independent."""
    key = ("lambda", spec.pde, spec.physics.grid, spec.mean, spec.std)
    if key in _OPERATOR_CACHE:
        return _OPERATOR_CACHE[key]
    residual = _residual_function(spec)
    x0 = jnp.zeros(spec.shape)
    _, jvp = jax.linearize(residual, x0)
    vjp = jax.linear_transpose(jvp, x0)
    v = jax.random.normal(jax.random.key(0), spec.shape)
    normal = jax.jit(lambda v: vjp(jvp(v))[0])
    lam = 1.0
    for _ in range(iterations):
        w = normal(v)
        lam = float(jnp.linalg.norm(w))
        v = w / lam
    _OPERATOR_CACHE[key] = lam
    return lam


def _residual_energy(spec: _Spec):
    """Physics energy ``0.5 ||R(a, u)||^2 / lambda`` of the joint route (``lambda`` from
    :func:`residual_curvature`): a gradient step of size ``zeta < 2`` on it is stable on every grid."""
    residual = _residual_function(spec)
    lam = spec.residual_lambda

    def energy(x0):
        return 0.5 * jnp.sum(residual(x0) ** 2) / lam

    return energy


def _step_weight(sde: AbstractSDE, spec: _Spec):
    """``w(t) = 1 / (g(t)^2 dt(t))``: a score correction ``w(t) v`` moves the sampler's state by ``v``
    in one step, so guidance steps (DPS's ``zeta``) are given in the units of ``x``."""
    ts = np.asarray(spec.time_grid)
    t_inc = ts[:-1][::-1].copy()
    dt_inc = (ts[:-1] - ts[1:])[::-1].copy()

    def weight(t):
        dt = jnp.interp(t, jnp.asarray(t_inc, t.dtype), jnp.asarray(dt_inc, t.dtype))
        return 1.0 / (sde.diffusion(t) ** 2 * dt)

    return weight


def _nonlinear_forward(spec: _Spec):
    """``x_normalised -> H solve(a)`` through the differentiable FEM solve (Darcy)."""
    physics = spec.physics
    mesh = physics.mesh
    sensors = jnp.asarray(spec.sensors)

    def forward(x):
        a = _to_physical(x.astype(jnp.float64), spec)[0]
        u = physics.parameter.solve(mesh.from_image(a))
        return (u[sensors] / spec.obs_scale).astype(x.dtype)

    return forward


_GUIDED: dict = {}


def _guided_for(spec: _Spec, sde: AbstractSDE):
    """The guided score for ``spec``, built once (outside ``jit``) and cached.

    The guidance functions check concrete observations when they are built; here the data, the
    observation matrix and the prior's score are read from ``context`` while the sampler is traced,
    so one compiled sampler serves every draw of a task family.
    """
    key = (spec, sde)
    if key in _GUIDED:
        return _GUIDED[key]
    context: dict = {}
    score = lambda x, t: context["score"](x, t)  # noqa: E731
    if spec.nonlinear:
        fwd = _nonlinear_forward(spec)
        observe = lambda x: fwd(x) - context["y"]  # noqa: E731
    else:
        observe = lambda x: context["A"] @ x.reshape(-1) - context["y"]  # noqa: E731
    if spec.method in STATFEM_METHODS:
        # Whitened statFEM likelihood: W (rho A x - y) with W = L^{-1}, L L^T = C_d + sigma_e^2 I.
        plain = observe
        observe = lambda x: context["W"] @ (spec.rho * plain(x) + (spec.rho - 1.0) * context["y"])  # noqa: E731
    # Observations enter through ``observe`` (shifted by y); the guidance compares it with zeros.
    zeros = np.zeros(len(spec.sensors), dtype=np.dtype(spec.dtype))
    method = spec.method
    if method == "unguided":
        guided = score
    elif method == "dps":
        guided = _dps_score(score, sde, observe, spec)
    elif method == "pigdm":
        guided = pigdm(score, sde, observe, zeros, noise_std=spec.noise_std, data_variance=spec.data_variance)
    elif method.startswith("tmpd"):
        variant = {"tmpd": "full", "tmpd-diagonal": "diagonal", "tmpd-rowsum": "rowsum"}[method]
        guided = tmpd(score, sde, observe, zeros, noise_std=spec.noise_std, variant=variant)
    elif method == "statfem":
        guided = tmpd(score, sde, observe, zeros, noise_std=1.0, variant="full")
    elif method == "statfem-pigdm":
        guided = pigdm(score, sde, observe, zeros, noise_std=1.0, data_variance=spec.data_variance)
    elif method == "diffusionpde":
        guided = _dps_score(score, sde, observe, spec)
    else:  # pragma: no cover - validated before
        raise ValueError(method)
    if method != "diffusionpde" and spec.physics_weight > 0 and spec.route == "joint":
        guided = _add_physics(guided, score, sde, spec, context)
    _GUIDED[key] = (context, guided)
    return _GUIDED[key]


def _preconditioned_residual_energy(spec: _Spec, context: dict):
    """``0.5 ||A(a)^{-1} R(a, u)||^2 = 0.5 ||u - solve(a)||^2`` in normalised units of ``u``: the FEM weak
    residual preconditioned by the FEM operator, so every mode of ``u`` is pulled at the same rate
    (the plain residual is dominated by the stiffest modes; see :func:`residual_curvature`)."""
    physics = spec.physics
    mesh = physics.mesh

    def energy(x0):
        phys = _to_physical(x0.astype(jnp.float64), spec)
        if physics.parameter.linear:
            u_pred = (context["S"] @ phys[0].reshape(-1)).reshape(phys[0].shape)
        else:
            u_pred = mesh.to_image(physics.parameter.solve(mesh.from_image(phys[0])))
        e = (phys[1] - u_pred) / spec.std[1]
        return 0.5 * jnp.sum(e**2)

    return energy


def physics_preconditioner(spec: _Spec, iterations: int = 30) -> tuple:
    """Per-channel step sizes ``(p_a, p_u)`` for the gradient of ``E = 0.5 ||u - solve(a)||^2`` (normalised units).

    With ``B = (std_a / std_u) d solve / d a`` the gradient is ``(-B^T e, e)``; scaled by
    ``p_a = 1 / (2 ||B||^2)`` and ``p_u = 1/2`` the largest curvature of the step is exactly 1
    (``p_a ||B||^2 + p_u``), so guidance weights below 2 are stable on every task and grid, while ``u``
    is still pulled at half the full rate (one global scale ``1 / (1 + ||B||^2)`` would slow it down
    by ``||B||^2``, about 14 for the 32x32 Poisson prior). ``||B||`` by power iteration (Darcy: at
    the channel means, forward products by finite differences)."""
    key = ("physics-lambda", spec.pde, spec.physics.grid, spec.mean, spec.std)
    if key in _OPERATOR_CACHE:
        return _OPERATOR_CACHE[key]
    ratio = spec.std[0] / spec.std[1]
    g = spec.physics.grid
    if spec.physics.parameter.linear:
        S = solution_operator(spec.physics)
        matvec = lambda v: S @ v  # noqa: E731
        rmatvec = lambda w: S.T @ w  # noqa: E731
    else:
        physics, mesh = spec.physics, spec.physics.mesh

        def solve(a_img):
            return physics.parameter.solve(mesh.from_image(a_img))

        a0 = jnp.full((g, g), spec.mean[0], jnp.float64)
        u0, vjp = jax.vjp(solve, a0)
        eps = 1e-6 * max(abs(spec.mean[0]), 1.0)
        matvec = lambda v: np.asarray((solve(a0 + eps * jnp.asarray(v).reshape(g, g)) - u0) / eps)  # noqa: E731
        rmatvec = lambda w: np.asarray(vjp(jnp.asarray(w))[0]).reshape(-1)  # noqa: E731
    v = np.random.default_rng(0).standard_normal(g * g)
    v /= np.linalg.norm(v)
    sigma2 = 0.0
    for _ in range(iterations):
        w = rmatvec(matvec(v))
        sigma2 = float(np.linalg.norm(w))
        v = w / sigma2
    b2 = max(ratio**2 * sigma2, 1e-12)
    _OPERATOR_CACHE[key] = (0.5 / b2, 0.5)
    return _OPERATOR_CACHE[key]


def _add_physics(guided, score, sde, spec: _Spec, context: dict):
    """Add physics-residual guidance: the gradient of the FEM residual (preconditioned by the FEM
    operator) of the Tweedie estimate, scaled per channel by :func:`physics_preconditioner`; an x-step
    of ``physics_weight`` times it per sampler step, in the last ``physics_fraction`` of the steps."""
    step = _step_weight(sde, spec)
    energy = _preconditioned_residual_energy(spec, context)
    pre = np.asarray(spec.physics_precondition, np.float64).reshape(-1, 1, 1)  # (a, u) channels

    def guided_with_physics(x, t):
        g = jax.grad(lambda x_: energy(tweedie_mean(score, sde, x_, t)))(x)
        w = jnp.where(t <= spec.physics_start, spec.physics_weight * step(t), 0.0)
        return guided(x, t) - (w * jnp.asarray(pre, g.dtype) * g).astype(x.dtype)

    return guided_with_physics


def _dps_score(score, sde, observe, spec: _Spec):
    """DPS (Chung et al. 2023) with their step rule: the state moves by ``-zeta grad_x ||y - A(D(x))||``
    per sampler step (``zeta = scale``); with ``diffusionpde`` also by ``-zeta_pde grad_x ||R(D(x))|| /
    ||b||`` in the last steps (DiffusionPDE). One network VJP per evaluation."""
    energy = _residual_energy(spec)
    use_pde = spec.method == "diffusionpde" and spec.route == "joint" and spec.physics_weight > 0
    step = _step_weight(sde, spec)

    def guided(x, t):
        def objective(x_):
            m = tweedie_mean(score, sde, x_, t)
            r = observe(m)
            total = spec.scale * jnp.sqrt(jnp.sum(r**2) + spec.noise_std**2 * r.size)
            if use_pde:
                w = jnp.where(t <= spec.physics_start, spec.physics_weight, 0.0)
                total = total + (w * energy(m)).astype(total.dtype)
            return total, m

        (_, m), g = jax.value_and_grad(objective, has_aux=True)(x)
        a, s = sde.alpha(t), sde.sigma(t)
        sc = (a * m - x) / s**2  # the unconditional score, recovered from the Tweedie mean
        return jax.lax.stop_gradient(sc) - step(t) * g

    return guided


@eqx.filter_jit
def _sample_batch(score, sde, A, y, S, keys, spec: _Spec, W=None):
    context, guided = _guided_for(spec, sde)
    context.update(score=score, A=A, y=y, S=S, W=W)
    try:
        sampler = MODEL_SAMPLERS[spec.sampler]
        dtype = jnp.dtype(spec.dtype)
        return jax.vmap(lambda k: sampler(guided, sde, spec.shape, key=k, num_steps=spec.num_steps, dtype=dtype))(keys)
    finally:
        context.clear()


@eqx.filter_jit
def _denoise(score, sde, x):
    """Tweedie estimate ``E[x0 | x_{t_min}]`` with the prior's score (compiled once per prior, shared
    by all methods, so the guided samplers stay small to compile)."""
    t = jnp.asarray(sde.t_min, x.dtype)
    return jax.vmap(lambda xi: sde.tweedie_denoiser(score, xi, t))(x)


def switch_time(sde: AbstractSDE, sampler: str, num_steps: int, fraction: float) -> float:
    """The time after which the last ``fraction`` of a sampler's steps are taken."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"physics_fraction must lie in [0, 1], got {fraction}")
    ts = np.asarray(sde.time_grid(num_steps, jnp.float64))
    i = min(int(round((1.0 - fraction) * num_steps)), num_steps)
    return float(ts[i])


def sample_posterior(prior, likelihood, *, method="tmpd", key, num_samples: int = 8, **options):
    """Posterior samples of an unknown field under ``prior`` given the data of ``likelihood``.

    Two kinds of problem:

    - the user's own: ``prior`` a :class:`Prior` (:func:`matern_prior`, :func:`grf_prior`,
      :func:`learned_prior`) and ``likelihood`` a :class:`GaussianLikelihood`
      (:func:`gaussian_likelihood`, any PDE, mesh, sensors and noise). ``method``: an object
      (:class:`TMPD`, :class:`PiGDM`, :class:`DPS`, :class:`Unguided`, :class:`Exact`, :class:`MAP`)
      or its name (``"tmpd"``, ``"pigdm"``, ``"dps"``, ``"unguided"``, ``"bayes"``, ``"map"``, ...).
      Options: ``num_steps``, ``sampler``, ``batch_size``, ``progress``. Returns a
      :class:`FieldPosterior` of nodal values.
    - a benchmark :class:`InverseTask` (``make_task``) with a :class:`FieldPrior` on its grid: the
      joint ``(a, u)`` fields, with the options of :func:`sample_task_posterior`.
    """
    from ._field_posterior import sample_field_posterior
    from ._likelihood import GaussianLikelihood

    if isinstance(likelihood, GaussianLikelihood):
        return sample_field_posterior(prior, likelihood, method=method, key=key, num_samples=num_samples, **options)
    if isinstance(likelihood, InverseTask):
        return sample_task_posterior(prior, likelihood, method=method, key=key, num_samples=num_samples, **options)
    raise TypeError(f"sample_posterior: likelihood must be a GaussianLikelihood (gaussian_likelihood) or a benchmark "
                    f"InverseTask (make_task), got {type(likelihood).__name__}")


def sample_task_posterior(prior: FieldPrior, task: InverseTask, *, method: str = "tmpd", key, num_samples: int = 8,
                     route: str | None = None, num_steps: int = 200, sampler: str = "euler_maruyama",
                     scale: float = 1.0, physics_weight: float | None = None, physics_fraction: float = 0.2,
                     project: bool = False, batch_size: int | None = None,
                     likelihood: StatFEMLikelihood | None = None, data_variance: float | None = None,
                     progress=None, y=None) -> Posterior:
    """Posterior samples of the joint field ``(a, u)`` for ``task`` under ``prior``.

    Args:
        prior: a :class:`FieldPrior` on the task's grid (``bayes`` ignores it and uses the exact
            GRF prior).
        task: an :class:`InverseTask` (its observations ``task.y`` unless ``y`` is given).
        method: one of ``METHODS``.
        key: PRNG key; sample ``i`` uses ``split(key, num_samples)[i]``.
        route: ``"solve"`` (default for one-channel priors) or ``"joint"`` (default for joint priors).
        num_steps, sampler: reverse-time sampler (``"euler_maruyama"`` or ``"ddim"``) and its steps.
        scale: DPS / DiffusionPDE observation step (``zeta``).
        physics_weight: weight of the physics-residual energy (route ``joint``); default 0, and
            1 for ``diffusionpde``. ``physics_fraction``: it acts in the last fraction of the steps.
            Its gradient is preconditioned per channel (:func:`physics_preconditioner`), so the weight
            is a step size relative to the stiffest direction: stable below 2 with Euler-Maruyama.
        project: replace ``u`` by ``solve(a)`` in every sample (route ``joint``); the metrics before
            projection go to ``info``.
        batch_size: samples per compiled batch (default: ``min(num_samples, 4)``).
        likelihood: the statFEM observation model of ``statfem`` / ``statfem-pigdm`` (and of
            ``bayes`` and ``map`` when given): a :class:`StatFEMLikelihood` in physical units
            (default :func:`default_likelihood`: the task's own discrepancy and noise level).
        data_variance: PiGDM's prior variance of the field along the observed directions
            (normalised units). Default: exact for Gaussian priors (:func:`observed_variance`), 1 for
            learned ones (their channels are normalised to unit variance). Too small a value makes
            PiGDM overconfident (it diverges on smooth observation operators).
        progress: a ``tqdm``-like object updated with the number of finished samples.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    y = task.y if y is None else task.check_observations(y)
    if likelihood is not None:
        likelihood = StatFEMLikelihood(*likelihood).check()
    elif method in STATFEM_METHODS:
        likelihood = default_likelihood(task)
    if method in ("bayes", "map"):
        if method == "bayes":
            post = bayes_posterior(task, key=key, num_samples=num_samples, y=y, likelihood=likelihood)
        else:
            from ._map import map_posterior

            post = map_posterior(task, y=y, likelihood=likelihood)
        if progress is not None:
            progress.update(num_samples)
        return post
    if route is None:
        route = "joint" if tuple(prior.channels) == CHANNELS and method in ("diffusionpde",) else "solve"
    check_prior_fits(prior, task, route)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    if physics_weight is None:
        physics_weight = 1.0 if method == "diffusionpde" else 0.0
    if physics_weight < 0:
        raise ValueError(f"physics_weight must be >= 0, got {physics_weight}")
    nonlinear = route == "solve" and task.observed == "u" and not task.linear
    dtype = prior.dtype
    # Observations in units of the prior RMS of the observed channel, so guidance steps are unit-free.
    obs_scale = _channel_rms(task.pde, task.grid, task.observed)
    if nonlinear:
        A, offset = np.zeros((1, 1)), np.zeros(task.num_sensors)
    else:
        A, offset = _observation_matrix(prior, task, route)
    rho, W = 1.0, None
    if method in STATFEM_METHODS:
        rho = float(likelihood.rho)
        offset = rho * offset
        W = jnp.asarray(likelihood.whitener(task.points, scale=obs_scale), jnp.dtype(dtype))
    spec = _Spec(method=method, route=route, sampler=sampler, num_steps=num_steps, shape=prior.data_shape,
                 dtype=dtype, noise_std=_noise_floor(task) / obs_scale, scale=float(scale),
                 physics_weight=float(physics_weight),
                 physics_start=switch_time(prior.sde, sampler, num_steps, physics_fraction),
                 obs_scale=obs_scale, time_grid=tuple(float(t) for t in np.asarray(prior.sde.time_grid(num_steps, jnp.float64))),
                 nonlinear=nonlinear, physics=task.physics, pde=task.pde,
                 observed_index=task.observed_index, sensors=tuple(int(s) for s in task.sensors),
                 mean=tuple(prior.mean), std=tuple(prior.std), rho=rho)
    if method in ("pigdm", "statfem-pigdm") and not nonlinear:
        if data_variance is None:
            A_n = A / obs_scale
            if W is not None:
                A_n = np.asarray(W, np.float64) @ (rho * A_n)
            data_variance = observed_variance(prior, A_n)
        spec = dataclasses.replace(spec, data_variance=float(data_variance))
    jd = jnp.dtype(dtype)
    A_j = jnp.asarray(A / obs_scale, jd)
    y_j = jnp.asarray((np.asarray(y) - offset) / obs_scale, jd)
    batch_size = min(num_samples, 4) if batch_size is None else int(batch_size)
    S_j = None
    if route == "joint" and physics_weight > 0:
        spec = dataclasses.replace(spec, residual_lambda=residual_curvature(spec),
                                   physics_precondition=physics_preconditioner(spec))
        if task.linear and method != "diffusionpde":
            S_j = jnp.asarray(solution_operator(task.physics))
    keys = jax.random.split(key, num_samples)
    _guided_for(spec, prior.sde)
    batches, times = [], []
    for start in range(0, num_samples, batch_size):
        kb = keys[start:start + batch_size]
        n = kb.shape[0]
        if n < batch_size:  # pad to the compiled batch size
            kb = jnp.concatenate([kb, keys[: batch_size - n]])
        t0 = time.perf_counter()
        xb = _sample_batch(prior.score, prior.sde, A_j, y_j, S_j, kb, spec, W)
        xb = jax.block_until_ready(_denoise(prior.score, prior.sde, xb))
        times.append((time.perf_counter() - t0, n))
        batches.append(np.asarray(xb[:n], dtype=np.float64))
        if progress is not None:
            progress.update(n)
    x = jnp.asarray(np.concatenate(batches))
    steady = times[1:] if len(times) > 1 else times
    seconds_per_sample = sum(t for t, _ in steady) / sum(n for _, n in steady)
    compile_seconds = max(times[0][0] - seconds_per_sample * times[0][1], 0.0) if len(times) > 1 else float("nan")
    phys = jax.vmap(prior.to_physical)(x)
    a = phys[:, 0]
    info: dict = {"steady_state_timing": len(times) > 1}
    if route == "solve":
        u = _solve_batch(task, a)
    else:
        u = phys[:, 1]
        if project:
            u_proj = _solve_batch(task, a)
            joint = jnp.stack([a, u], axis=1)
            info["before_projection"] = summarise(joint, task)
            u = u_proj
    samples = jnp.stack([a, u], axis=1)
    mean = samples.mean(0)
    std = samples.std(0, ddof=1) if num_samples > 1 else jnp.zeros_like(mean)
    return Posterior(samples, mean, std, method, route, float(seconds_per_sample), float(compile_seconds), info)


def observed_variance(prior: FieldPrior, A) -> float:
    """``tr(A C A^T) / tr(A A^T)``: the prior variance of the (normalised) field along the rows of the
    observation matrix ``A``, exact for a :class:`GaussianScore` prior; ``1`` for learned priors."""
    score = prior.score
    if not isinstance(score, GaussianScore):
        return 1.0
    A = np.asarray(A, np.float64)
    if score.kind == "dct":
        g = prior.grid
        rows = A.reshape(-1, g, g)
        AL = np.stack([np.asarray(jax.scipy.fft.dctn(jnp.asarray(r), type=2, norm="ortho")) for r in rows])
        AL = AL.reshape(A.shape[0], -1) * np.asarray(score.mode_std, np.float64).reshape(-1)
    else:
        AL = (A @ np.asarray(score.basis, np.float64)) * np.sqrt(np.asarray(score.values, np.float64))
    return float(np.sum(AL**2) / max(np.sum(A**2), 1e-300))


def sensor_operator(task: InverseTask) -> np.ndarray:
    """Dense ``G`` (m, g^2) with noise-free data ``y = G a`` of a linear task: the sensor rows of the
    FEM solution operator (``u`` observed) or of the identity (``a`` observed)."""
    if task.observed == "a":
        return np.eye(task.grid**2)[task.sensors]
    return solution_operator(task.physics)[task.sensors]


def _solve_batch(task: InverseTask, a):
    if task.linear:
        S = jnp.asarray(solution_operator(task.physics))
        flat = a.reshape(a.shape[0], -1)
        return (flat @ S.T).reshape(a.shape)
    return jnp.stack([task.solve(ai) for ai in a])


def summarise(samples, task: InverseTask) -> dict:
    """Metrics of a set of joint samples (no timing): rel. L2 of the mean, coverage, residual."""
    samples = jnp.asarray(samples)
    mean = samples.mean(0)
    std = samples.std(0, ddof=1) if samples.shape[0] > 1 else jnp.zeros_like(mean)
    c = task.target_index
    res = jnp.stack([task.residual(s[0], s[1]) for s in samples])
    return {
        "rel_l2": float(relative_l2(mean[c], task.truth[c])),
        "coverage90": float(credible_interval_coverage(mean[c], std[c], task.truth[c], 0.9)),
        "pde_residual": float(jnp.mean(res)),
    }


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _bayes_arrays(G, y, key, noise_std, num_samples, alpha, tau):
    g = int(round(math.sqrt(G.shape[1])))
    post = gaussian_posterior(jnp.zeros((g, g), G.dtype), lambda z: fem.grf_from_white_noise(z, alpha=alpha, tau=tau),
                              G, y, noise_std=noise_std)
    return post.mean, post.std, post.sample(key, num_samples), post.cross, post.chol, post.log_evidence


def bayes_posterior(task: InverseTask, *, key, num_samples: int = 8, y=None, alpha: float = 2.0,
                    tau: float = 3.0, likelihood: StatFEMLikelihood | None = None) -> Posterior:
    """The exact Gaussian posterior under the tasks' GRF prior (Poisson, Helmholtz): the Bayes floor.

    ``a = L z`` with the DCT square root ``L``; ``y = G a + e`` with ``G`` the sensor rows of the
    FEM solution operator (inverse) or of the identity (forward), computed with
    :func:`pdegen.inverse.gaussian_posterior`. The ``u`` channel is ``S a`` (its std exact, through
    the dense solution operator ``S``). Samples by Matheron's rule.

    With a statFEM ``likelihood`` the data model is ``y = rho G a + d + e`` (correlated model error
    ``d``): the exact posterior of that model, computed in the whitened space.
    """
    if not task.linear:
        raise ValueError(f"bayes_posterior: no exact Gaussian posterior for {task.pde!r} (nonlinear in a)")
    y = task.y if y is None else task.check_observations(y)
    g = task.grid
    S = solution_operator(task.physics)
    G = sensor_operator(task)
    noise_std = _noise_floor(task)
    y_used = np.asarray(y, np.float64)
    if likelihood is not None:
        likelihood = StatFEMLikelihood(*likelihood).check()
        Wm = likelihood.whitener(task.points)
        G = Wm @ (float(likelihood.rho) * G)
        y_used = Wm @ y_used
        noise_std = 1.0
    t0 = time.perf_counter()
    mean_a, std_a, a_samples, cross, chol, log_evidence = _bayes_arrays(
        jnp.asarray(G), jnp.asarray(y_used), key, noise_std, num_samples, float(alpha), float(tau))
    Sj = jnp.asarray(S)
    u_samples = (a_samples.reshape(num_samples, -1) @ Sj.T).reshape(a_samples.shape)
    mean_u = (Sj @ mean_a.reshape(-1)).reshape(g, g)
    if task.target == "u":
        # var(S a | y) = diag(S C S^T) - diag(S X S^-1 X^T S^T), X = C G^T: exact, dense.
        L = grf_sqrt_matrix(g, alpha=alpha, tau=tau)
        SL = S @ L
        SX = S @ np.asarray(cross)
        W = jax.scipy.linalg.solve_triangular(chol, jnp.asarray(SX).T, lower=True)
        var_u = np.sum(SL**2, axis=1) - np.asarray(jnp.sum(W**2, axis=0))
        std_u = jnp.sqrt(jnp.maximum(jnp.asarray(var_u), 0.0)).reshape(g, g)
    else:
        std_u = u_samples.std(0, ddof=1) if num_samples > 1 else jnp.zeros((g, g))
    seconds = (time.perf_counter() - t0) / num_samples
    samples = jnp.stack([a_samples, u_samples], axis=1)
    mean = jnp.stack([mean_a, mean_u])
    std = jnp.stack([std_a, std_u])
    return Posterior(samples, mean, std, "bayes", "exact", float(seconds), 0.0,
                     {"log_evidence": float(log_evidence), "likelihood": likelihood})


def default_likelihood(task: InverseTask) -> StatFEMLikelihood:
    """The statFEM likelihood that matches how ``task``'s data were made: ``rho = 1``, its discrepancy
    (``sigma_d``, ``ell_d``) and the methods' noise level (:func:`fit_likelihood` estimates them
    from the data instead)."""
    return StatFEMLikelihood(rho=1.0, sigma_d=float(task.discrepancy_std), ell_d=float(task.discrepancy_length),
                             sigma_e=_noise_floor(task))


def fit_likelihood(task: InverseTask, *, y=None, fit=("sigma_d", "ell_d"), init: StatFEMLikelihood | None = None,
                   steps: int = 200, alpha: float = 2.0, tau: float = 3.0) -> StatFEMLikelihood:
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
        raise ValueError(f"fit_likelihood: fit must name parameters among {names}, got {sorted(unknown)}")
    if not task.linear:
        raise ValueError(f"fit_likelihood: needs a linear PDE (Gaussian marginal likelihood), got {task.pde!r}")
    y = jnp.asarray(task.y if y is None else task.check_observations(y), jnp.float64)
    GL = sensor_operator(task) @ grf_sqrt_matrix(task.grid, alpha=alpha, tau=tau)
    K = jnp.asarray(GL @ GL.T)
    pts = jnp.asarray(task.points)
    rms = float(jnp.sqrt(jnp.mean(y**2)))
    if init is None:  # not the task's own discrepancy: the fit starts from a neutral guess
        init = StatFEMLikelihood(rho=1.0, sigma_d=0.1 * rms, ell_d=0.2, sigma_e=_noise_floor(task))
    init = StatFEMLikelihood(*init).check()
    fixed = np.asarray([float(getattr(init, k)) for k in names])
    if "sigma_d" in fit and fixed[1] == 0:
        fixed[1] = 0.1 * rms
    mask = tuple(k in fit for k in names)
    run = _likelihood_fitter(mask, int(steps))
    with jax.numpy_dtype_promotion("standard"):  # optax's L-BFGS mixes int32 / int64 indices under x64
        theta = run(jnp.zeros(4), jnp.asarray(fixed), K, y, pts)
    if not bool(jnp.all(jnp.isfinite(theta))):
        raise RuntimeError("fit_likelihood: the optimisation diverged (non-finite parameters)")
    values = fixed * np.exp(np.where(mask, np.asarray(theta), 0.0))
    return StatFEMLikelihood(*(float(v) for v in values))


_FITTERS: dict = {}


def _likelihood_fitter(mask: tuple, steps: int):
    """Compiled L-BFGS on the statFEM marginal likelihood; parameters ``fixed * exp(theta)`` (``theta``
    only where ``mask``). Compiled once per (mask, steps, number of sensors)."""
    from ._map import lbfgs_minimise

    key = (mask, steps)
    if key in _FITTERS:
        return _FITTERS[key]
    m_ = jnp.asarray(mask)

    def nll(theta, fixed, K, y, pts):
        rho, sigma_d, ell_d, sigma_e = fixed * jnp.exp(jnp.where(m_, theta, 0.0))
        C = rho**2 * K + StatFEMLikelihood(rho, sigma_d, ell_d, sigma_e).covariance(pts)
        C = C + 1e-12 * jnp.mean(y**2) * jnp.eye(y.size)
        L = jnp.linalg.cholesky(C)
        w = jax.scipy.linalg.solve_triangular(L, y, lower=True)
        return 0.5 * jnp.sum(w**2) + jnp.sum(jnp.log(jnp.diag(L)))

    @jax.jit
    def run(theta0, fixed, K, y, pts):
        return lbfgs_minimise(lambda th: nll(th, fixed, K, y, pts), theta0, steps)[0]

    _FITTERS[key] = run
    return run



def _interval_std(post: Posterior, level: float = 0.9):
    """Scale of the credible interval of the target: the exact std for ``bayes``; for ``n`` samples the
    predictive scale ``s sqrt(1 + 1/n) t_{n-1} / z`` (Student t), so that a perfect sampler covers at the
    nominal rate even with few samples."""
    if post.method == "bayes":
        return post.std
    n = post.samples.shape[0]
    if n < 2:
        return post.std
    from scipy.stats import norm, t

    q = 0.5 + level / 2.0
    factor = math.sqrt(1.0 + 1.0 / n) * float(t.ppf(q, n - 1) / norm.ppf(q))
    return post.std * factor


def evaluate(post: Posterior, task: InverseTask, *, level: float = 0.9) -> dict:
    """Metrics of a posterior on a task: ``rel_l2`` (posterior mean of the target channel),
    ``coverage90`` (central ``level`` interval: exact for ``bayes``, the Student-t predictive interval
    of the samples otherwise), ``pde_residual`` (mean relative FEM residual of the samples),
    ``data_misfit`` (relative misfit of the mean), ``seconds_per_sample``."""
    c = task.target_index
    res = jnp.stack([task.residual(s[0], s[1]) for s in post.samples])
    y_hat = task.observe(post.mean)
    out = {
        "method": post.method,
        "route": post.route,
        "rel_l2": float(relative_l2(post.mean[c], task.truth[c])),
        "sample_rel_l2": float(jnp.mean(relative_l2(post.samples[:, c], task.truth[c]))),
        "coverage90": (float("nan") if post.method == "map" else
                       float(credible_interval_coverage(post.mean[c], _interval_std(post, level)[c], task.truth[c], level))),
        "pde_residual": float(jnp.mean(res)),
        "data_misfit": float(jnp.linalg.norm(task.y - y_hat) / jnp.linalg.norm(task.y)),
        "seconds_per_sample": post.seconds_per_sample,
        "num_samples": int(post.samples.shape[0]),
    }
    if "before_projection" in post.info:
        out["before_projection"] = post.info["before_projection"]
    return out
