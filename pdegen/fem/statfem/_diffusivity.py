"""statFEM with the diffusivity unknown alongside the solution: Langevin on both.

The model ``-div(kappa grad u) = f + xi`` of a :class:`StatFEM` whose diffusivity is no longer
given: ``log kappa = m + w`` with ``w`` a Gaussian process on the nodes (a kernel of
:func:`kernel_matrix`), truncated to its leading Karhunen-Loeve modes ``w = Phi diag(sqrt(lam)) v``.
Data ``y = rho H u + d + e`` as in :class:`StatFEM`.

The sampler's state is the white noise of both unknowns, ``z = (v, eta)``, ``N(0, I)`` a priori,
with ``xi = G^{1/2} eta`` and ``u = A(kappa(v))^{-1} (b + xi)`` (the non-centred form). The joint
posterior of ``(w, u)`` is the image of

    p(z | y) ~ exp(-0.5 |z|^2 - misfit(z)),   misfit(z) = sum_j 0.5 |y_j - rho H u(z)|^2_S

(``S = C_d + sigma_e^2 I``), so no log-determinant of ``A(kappa)`` is needed (it is in the centred
form over ``(w, u)``), one forward and one adjoint solve give a gradient, and pCN (prior
``N(0, I)``) and the Gauss-Newton Laplace preconditioner ``(I + J^T J)^{-1}`` of
:func:`pdegen.mcmc.gauss_newton_laplace` (``J``: the whitened data's Jacobian, ``m`` adjoint
solves) apply directly.

The collapsed form samples ``v`` alone, ``u`` integrated out by the linear model's marginal
likelihood (``m`` solve pairs with one matrix per evaluation), and draws ``u`` exactly given each
kept ``v``. With a few dozen modes its posterior is nearly Gaussian: the Laplace approximation at
its mode (L-BFGS, the Hessian by differences of the gradient) is a proposal whose draws are nearly
independent (:func:`pdegen.mcmc.laplace_pcn`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ... import mcmc
from ..._errors import ConvergenceError, UserError
from .._solve import solver_errors
from ._exact import exact_posterior, log_marginal_likelihood
from ._model import KERNELS, LinearSystem, StatFEM, check_state, kernel_matrix
from ._nonlinear import MAPResult


def _karhunen_loeve(points, *, sigma, length, kind, variance_fraction, max_modes):
    """Leading eigenpairs of the nodal kernel matrix, ``Phi * sqrt(lam)`` ``(n, r)``: the fewest
    modes holding ``variance_fraction`` of the trace, at most ``max_modes``."""
    K = np.asarray(kernel_matrix(points, points, sigma=sigma, length=length, kind=kind))
    n = K.shape[0]
    r_max = min(int(max_modes), n)
    lam, phi = scipy.linalg.eigh(K, subset_by_index=(n - r_max, n - 1))
    lam, phi = np.maximum(lam[::-1], 0.0), phi[:, ::-1]
    kept = np.cumsum(lam) / np.trace(K)
    r = int(min(np.searchsorted(kept, variance_fraction) + 1, r_max))
    return phi[:, :r] * np.sqrt(lam[:r])[None, :], float(kept[r - 1])


class DiffusivityStatFEM(eqx.Module):
    """statFEM with ``log kappa = m + w``, ``w ~ GP``, unknown alongside ``u`` (see the module).

    Args:
        model: a linear :class:`StatFEM` whose problem takes a ``kappa`` coefficient
            (``fem.Poisson``, ``fem.Darcy``); its other coefficients, forcing model ``G`` and data
            model (``rho``, discrepancy, ``sigma_e``) are kept; its ``kappa`` is replaced.
        log_kappa_mean: ``m``: a scalar, nodal values or a callable ``m(x)`` (on the nodes).
        sigma, length, kernel: the Gaussian process of ``w`` (a kernel of :func:`kernel_matrix`).
        variance_fraction: Karhunen-Loeve modes kept: the fewest holding this fraction of the
            prior variance of ``w`` (summed over the nodes), at most ``max_modes``.
        max_modes: the most modes kept.

    The kernel matrix is dense on the nodes and its leading eigenpairs come from a dense
    eigensolver (``n^2`` memory, ``O(n^3)`` time: seconds for a few thousand nodes). ``u`` is P1
    (nodal ``kappa``).
    """

    model: StatFEM
    base: LinearSystem  # the model's operators; only A(kappa) and b change with the state
    log_kappa_mean: jax.Array  # (ndofs,)
    modes: jax.Array  # (ndofs, r): Phi diag(sqrt(lam))
    variance_kept: float = eqx.field(static=True)
    noise_size: int = eqx.field(static=True)

    def __init__(
        self,
        model: StatFEM,
        *,
        log_kappa_mean=0.0,
        sigma: float = 0.2,
        length: float = 0.2,
        kernel: str = "squared_exponential",
        variance_fraction: float = 0.999,
        max_modes: int = 256,
    ):
        if not isinstance(model, StatFEM):
            raise TypeError(
                f"DiffusivityStatFEM: model must be a StatFEM, got {type(model).__name__}"
            )
        if "kappa" not in model.structure.operator_args:
            raise UserError(
                f"DiffusivityStatFEM: {type(model.problem).__name__} has no kappa coefficient "
                f"(its operator takes {list(model.structure.operator_args)})"
            )
        if model.observation is not None:
            raise UserError("DiffusivityStatFEM: a nonlinear observation map is not supported")
        if kernel not in KERNELS:
            raise UserError(f"DiffusivityStatFEM: kernel must be one of {KERNELS}, got {kernel!r}")
        for name, value in (("sigma", sigma), ("length", length)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise UserError(f"DiffusivityStatFEM: {name} must be > 0, got {value}")
        if not 0 < float(variance_fraction) <= 1:
            raise UserError(
                f"DiffusivityStatFEM: variance_fraction must lie in (0, 1], got {variance_fraction}"
            )
        if int(max_modes) != max_modes or max_modes < 1:
            raise UserError(f"DiffusivityStatFEM: max_modes must be >= 1, got {max_modes}")
        V = model.structure.space
        points = np.asarray(V.dof_coordinates)
        if callable(log_kappa_mean):
            mean = np.asarray(log_kappa_mean(points.T), np.float64)
        else:
            mean = np.asarray(log_kappa_mean, np.float64)
        mean = np.broadcast_to(mean, (V.ndofs,)) if mean.ndim == 0 else mean
        if mean.shape != (V.ndofs,) or not np.all(np.isfinite(mean)):
            raise UserError(
                f"DiffusivityStatFEM: log_kappa_mean must be finite nodal values ({V.ndofs},), "
                f"got shape {mean.shape}"
            )
        modes, kept = _karhunen_loeve(
            points,
            sigma=float(sigma),
            length=float(length),
            kind=kernel,
            variance_fraction=float(variance_fraction),
            max_modes=int(max_modes),
        )
        self.model = model.replace(coefficients=dict(kappa=jnp.exp(jnp.asarray(mean))))
        self.log_kappa_mean = jnp.asarray(mean)
        self.modes = jnp.asarray(modes)
        self.variance_kept = kept
        self.base = self.model.system()
        self.noise_size = int(self.base.forcing_noise_size)

    # -- the state -------------------------------------------------------------------------
    @property
    def num_modes(self) -> int:
        """Karhunen-Loeve modes of ``w`` kept (the first entries of the state)."""
        return int(self.modes.shape[1])

    @property
    def dim(self) -> int:
        """Length of the state ``z = (v, eta)``."""
        return self.num_modes + self.noise_size

    @property
    def num_sensors(self) -> int:
        """Number of sensors (observations per replicate)."""
        return self.model.num_sensors

    def _check_z(self, z, fn):
        return check_state(z, self.dim, f"DiffusivityStatFEM.{fn}", "z")

    def log_diffusivity(self, z) -> jax.Array:
        """``log kappa = m + Phi diag(sqrt(lam)) v`` at the nodes."""
        z = self._check_z(z, "log_diffusivity")
        return self._log_kappa(z[: self.num_modes])

    def _log_kappa(self, v):
        return self.log_kappa_mean + self.modes @ v

    def _system(self, z) -> LinearSystem:
        return self._system_at(z[: self.num_modes])

    def _system_at(self, v) -> LinearSystem:
        """The model's operators at the modes' white noise ``v``: ``A`` and ``b`` (which carries
        the Dirichlet lift through ``A``) change, the forcing and data models do not."""
        A, b = self.model_at(v)._operator()
        return eqx.tree_at(lambda s: (s.A, s.b), self.base, (A, b))

    def _solution(self, sys: LinearSystem, z) -> jax.Array:
        return sys.solve(sys.b + sys.forcing_from_noise(z[self.num_modes :]))

    def solution(self, z) -> jax.Array:
        """Free-dof values ``x`` of ``u = A(kappa)^{-1} (b + G^{1/2} eta)``."""
        z = self._check_z(z, "solution")
        return _fields(self, z)[1]

    def fields(self, z) -> tuple[jax.Array, jax.Array]:
        """``(kappa, u)`` at the nodes (``u`` with its Dirichlet values) for a state ``z``."""
        z = self._check_z(z, "fields")
        kappa, x = _fields(self, z)
        return kappa, self.model.embed(x)

    # -- the target ------------------------------------------------------------------------
    def misfit_fn(self, y):
        """``z -> misfit(z)``: the data term alone (pCN's energy; the prior is ``N(0, I)``)."""
        y = self.model.check_data(y, "misfit_fn")

        def misfit(z):
            sys = self._system(z)
            return sys.likelihood_energy(self._solution(sys, z), y)

        return misfit

    def energy_fn(self, y):
        """``z -> 0.5 |z|^2 + misfit(z)``: the posterior energy of the state (MALA's target)."""
        misfit = self.misfit_fn(y)

        def energy(z):
            z = self._check_z(z, "energy_fn(y)")
            return 0.5 * jnp.dot(z, z) + misfit(z)

        return energy

    def energy(self, z, y) -> jax.Array:
        """The posterior energy at ``z`` (no constants)."""
        return _energy(self, self._check_z(z, "energy"), self.model.check_data(y, "energy"))

    def whitened_residual_fn(self, y):
        """``z -> r(z)`` with ``misfit = 0.5 |r|^2``: ``L^{-1} (y_j - rho H u(z))`` stacked over the
        replicates (``L L^T = S``), for Gauss-Newton (:meth:`map_point`, :meth:`laplace_preconditioner`)."""
        y = self.model.check_data(y, "whitened_residual_fn")

        def residual(z):
            sys = self._system(z)
            return sys.whitened_residual(self._solution(sys, z), y)

        return residual

    def sample_prior(self, num_samples: int | None = None, *, key) -> jax.Array:
        """Prior draws of the state (standard normal), ``(dim,)`` or ``(num_samples, dim)``."""
        shape = (self.dim,) if num_samples is None else (int(num_samples), self.dim)
        return jax.random.normal(key, shape, self.modes.dtype)

    def prior_preconditioner(self) -> mcmc.Preconditioner:
        """The prior of the state, ``N(0, I)``, as a preconditioner (pCN's ``prior``)."""
        dim, dtype = self.dim, self.modes.dtype

        def sample(*, key):
            return jax.random.normal(key, (dim,), dtype)

        return mcmc.Preconditioner(lambda v: v, sample)

    def map_point(self, y, *, z0=None, tol: float = 1e-9, max_iterations: int = 30) -> MAPResult:
        """The MAP state by Gauss-Newton (:func:`pdegen.mcmc.gauss_newton_map`), from ``z0``
        (default: the prior mean, ``z = 0``)."""
        z0 = jnp.zeros(self.dim) if z0 is None else self._check_z(z0, "map_point")
        with solver_errors():
            out = mcmc.gauss_newton_map(
                self.whitened_residual_fn(y), z0, tol=tol, max_iterations=max_iterations
            )
        return MAPResult(out.z, out.energy, out.gradient_norm, out.iterations)

    def laplace_preconditioner(self, y, z, *, key) -> mcmc.LowRankPreconditioner:
        """``(I + J^T J)^{-1}`` at ``z`` (the MAP point): the Gauss-Newton Laplace approximation of
        the posterior, rank ``J * m`` (:func:`pdegen.mcmc.gauss_newton_laplace`)."""
        z = self._check_z(z, "laplace_preconditioner")
        with solver_errors():
            return mcmc.gauss_newton_laplace(self.whitened_residual_fn(y), z, key=key)

    # -- the collapsed form: state v alone, u integrated out ---------------------------------
    def model_at(self, v) -> StatFEM:
        """The linear :class:`StatFEM` with the diffusivity of the modes' white noise ``v``."""
        return self.model.replace(coefficients=dict(kappa=jnp.exp(self._log_kappa(v))))

    def collapsed_energy_fn(self, y):
        """``v -> 0.5 |v|^2 - log p(y | kappa(v))``: the energy of the diffusivity alone, ``u``
        integrated out exactly (the linear model's marginal likelihood; ``m`` solve pairs with
        one matrix per evaluation). Draw ``u`` given each kept ``v`` with :meth:`sample_solution`;
        together they sample the joint posterior."""
        y = self.model.check_data(y, "collapsed_energy_fn")

        def energy(v):
            v = check_state(v, self.num_modes, "DiffusivityStatFEM.collapsed_energy_fn(y)")
            return 0.5 * jnp.dot(v, v) - log_marginal_likelihood(self.model_at(v), y)

        return energy

    def sample_solution(self, v, y, *, key) -> jax.Array:
        """A draw of the free dofs ``x`` of ``u`` from ``p(u | kappa(v), y)`` (exact, Gaussian)."""
        return exact_posterior(self.model_at(v), y).sample(key=key)

    def collapsed_map_point(
        self, y, *, v0=None, tol: float = 1e-9, max_iterations: int = 200
    ) -> MAPResult:
        """The mode of :meth:`collapsed_energy_fn` by L-BFGS (:func:`pdegen.mcmc.lbfgs_minimise`),
        from ``v0`` (default 0, the prior mean): the most probable diffusivity with ``u``
        integrated out, the centre of :meth:`collapsed_laplace`."""
        y = self.model.check_data(y, "collapsed_map_point")
        v0 = jnp.zeros(self.num_modes) if v0 is None else jnp.asarray(v0, float)
        if v0.shape != (self.num_modes,):
            raise UserError(
                f"collapsed_map_point: v0 must have shape ({self.num_modes},), got {v0.shape}"
            )
        if int(max_iterations) < 1:
            raise UserError(
                f"collapsed_map_point: max_iterations must be >= 1, got {max_iterations}"
            )

        with solver_errors():
            v, e, gn, it = _collapsed_mode(self, y, v0, int(max_iterations), float(tol))
        if not jnp.isfinite(e):
            raise ConvergenceError("collapsed_map_point: the energy became non-finite")
        return MAPResult(v, float(e), float(gn), int(it))

    def collapsed_laplace(self, y, v) -> mcmc.GaussianApproximation:
        """The Laplace approximation of the collapsed posterior of ``v`` at ``v`` (its mode, from
        :meth:`collapsed_map_point`): the Hessian by central differences of the gradient
        (:func:`pdegen.mcmc.dense_laplace`, ``2 r`` gradients for ``r`` modes). Its
        ``preconditioner`` serves MALA; :func:`pdegen.mcmc.laplace_pcn` samples around it."""
        v = jnp.asarray(v, float)
        if v.shape != (self.num_modes,):
            raise UserError(
                f"collapsed_laplace: v must have shape ({self.num_modes},), got {v.shape}"
            )
        with solver_errors():
            return mcmc.dense_laplace(self.collapsed_energy_fn(y), v)

    # -- the centred form: state s = (v, x), x the free dofs of u ---------------------------
    def centred_state(self, z) -> jax.Array:
        """The centred state ``s = (v, x)`` of a white-noise state ``z = (v, eta)``."""
        z = self._check_z(z, "centred_state")
        return jnp.concatenate([z[: self.num_modes], self.solution(z)])

    @property
    def centred_dim(self) -> int:
        """Length of the centred state ``s = (v, x)``."""
        return self.num_modes + self.model.dim

    def centred_energy_fn(self, y):
        """``s -> -log p(v, x | y)`` (up to a constant) in the centred form ``s = (v, x)``:
        ``0.5 |v|^2 + 0.5 (A x - b)^T G^{-1} (A x - b) - log |det A(kappa(v))| + misfit(x)``;
        the log-determinant's gradient by selected inversion (a sparse Cholesky factor per
        evaluation), no solves."""
        y = self.model.check_data(y, "centred_energy_fn")
        r = self.num_modes

        def energy(s):
            s = check_state(s, self.centred_dim, "DiffusivityStatFEM.centred_energy_fn(y)")
            v, x = s[:r], s[r:]
            sys = self._system_at(v)
            return 0.5 * jnp.dot(v, v) - sys.log_prior(x) + sys.likelihood_energy(x, y)

        return energy

    def _centred_residual(self, y):
        """``s -> (v, G^{-1/2} (A x - b), L^{-1} (y_j - rho H x))``: the Gauss-Newton residual of
        the centred energy without its log-determinant."""
        r = self.num_modes
        if self.base.M is not None or self.base.kernel_chol is not None:
            raise UserError(
                "DiffusivityStatFEM: the centred Laplace preconditioner needs a lumped-mass, "
                "white forcing model (StatFEM(mass='lumped', kernel=None))"
            )
        groot = self.base.sigma_f * jnp.sqrt(self.base.mass_diag)

        def residual(s):
            v, x = s[:r], s[r:]
            sys = self._system_at(v)
            pde = (sys.apply_A(x) - sys.b) / groot
            return jnp.concatenate([v, pde, sys.whitened_residual(x, y)])

        return residual

    def centred_laplace_preconditioner(self, y, s) -> mcmc.Preconditioner:
        """The Gauss-Newton Laplace approximation of the centred posterior at ``s`` (the MAP
        point): ``P = (J^T J)^{-1}`` with ``J`` the Jacobian of the centred residual (forward
        mode; the log-determinant's curvature is left out), as a dense Cholesky factor
        (``(r + n)^2`` memory: tens of thousands of unknowns at most)."""
        y = self.model.check_data(y, "centred_laplace_preconditioner")
        s = jnp.asarray(s)
        if s.shape != (self.centred_dim,):
            raise UserError(
                f"centred_laplace_preconditioner: s must have shape ({self.centred_dim},), "
                f"got {s.shape}"
            )
        with solver_errors():
            L = _gauss_newton_factor(self._centred_residual(y), s)
        return mcmc.GaussianApproximation(s, L).preconditioner

    def centred_map_point(self, y, *, s0=None, tol: float = 1e-8, max_iterations: int = 30):
        """The MAP point of the centred form by Gauss-Newton steps on the full energy (the
        log-determinant's gradient included) with a backtracking line search; from ``s0``
        (default: ``v = 0`` and ``u`` the solve at the mean diffusivity). Needs a lumped-mass,
        white forcing model, as :meth:`centred_laplace_preconditioner` does.

        The joint mode of ``(v, x)`` may lie far from the posterior mass (the density of ``x``
        sharpens as ``kappa`` grows, as in any hierarchical model): a starting point and a centre
        for the preconditioner, not an estimate of ``kappa``."""
        y = self.model.check_data(y, "centred_map_point")
        if s0 is None:
            s0 = self.centred_state(jnp.zeros(self.dim))
        energy = self.centred_energy_fn(y)
        residual = self._centred_residual(y)

        @jax.jit
        def linearise(s):
            e, g = jax.value_and_grad(energy)(s)
            L = _gauss_newton_factor(residual, s)
            return e, g, jax.scipy.linalg.cho_solve((L, True), g)

        with solver_errors():
            out = mcmc.descend(
                jax.jit(energy), linearise, s0, tol=tol, max_iterations=max_iterations
            )
        return MAPResult(out.z, out.energy, out.gradient_norm, out.iterations)

    def centred_fields(self, s) -> tuple[jax.Array, jax.Array]:
        """``(kappa, u)`` at the nodes for a centred state ``s = (v, x)``."""
        s = jnp.asarray(s)
        r = self.num_modes
        return jnp.exp(self._log_kappa(s[:r])), self.model.embed(s[r:])


def _gauss_newton_factor(residual, s):
    J = jax.jacfwd(residual)(s)
    H = J.T @ J
    H = 0.5 * (H + H.T)
    return jnp.linalg.cholesky(H)


@solver_errors()
@eqx.filter_jit
def _fields(model: DiffusivityStatFEM, z):
    kappa = jnp.exp(model._log_kappa(z[: model.num_modes]))
    return kappa, model._solution(model._system(z), z)


@solver_errors()
@eqx.filter_jit
def _energy(model: DiffusivityStatFEM, z, y):
    return model.energy_fn(y)(z)


@eqx.filter_jit
def _collapsed_mode(dm: DiffusivityStatFEM, y, v0, max_iterations: int, tol: float):
    """L-BFGS on the collapsed energy: compiled once per model structure and data shape, so a
    second data set (or start) for the same model reuses the program (about 3 s to compile)."""
    energy = dm.collapsed_energy_fn(y)
    v, values = mcmc.lbfgs_minimise(energy, v0, max_iterations, tol)
    e, g = jax.value_and_grad(energy)(v)
    return v, e, jnp.linalg.norm(g), jnp.sum(jnp.isfinite(values))
