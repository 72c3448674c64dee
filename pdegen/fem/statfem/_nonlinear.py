"""Nonlinear statFEM, where sampling is the only way: ``-div(kappa (1 + alpha u^2) grad u) = f + xi``.

The latent state is the vector ``x`` of free-dof values of a P1 field ``u`` (zero on the
boundary). The FEM residual ``R(x)_i = int kappa (1 + alpha u^2) grad u . grad phi_i - f phi_i``
(free test functions) is the model error: ``R(x) ~ N(0, G)`` with ``G = sigma_f^2 diag(lumped
mass)``, and data ``y_j = H u + e_j``, ``e_j ~ N(0, sigma_e^2 I)``. The posterior energy is

    Phi(x) = 0.5 R(x)^T G^{-1} R(x) + sum_j 0.5 |y_j - H u|^2 / sigma_e^2

(the residual energy of the statFEM papers, without the Jacobian determinant of the map
``x -> R(x)``). There is no closed form; the Laplace approximation at the MAP point (Gauss-Newton
Hessian ``J^T G^{-1} J + J_obs H^T H / sigma_e^2`` with ``J = dR/dx``) is the preconditioner a user
can build without the answer: :meth:`NonlinearStatFEM.laplace_preconditioner`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ..._errors import ConvergenceError, UserError
from ...mcmc import Preconditioner, low_rank_preconditioner
from .._assembly import assemble_local, load, lumped_mass
from .._callback import host_call
from .._problems import Poisson
from .._solve import linear_solve, solver_errors
from .._sparse import SparseMatrix, SparsityPattern
from ._model import _embed, _restrict, _scalar, _Structure, check_state
from ._selected import SparseCholesky


class MAPResult(NamedTuple):
    """Result of :meth:`NonlinearStatFEM.map_point`."""

    x: jax.Array
    energy: float
    gradient_norm: float
    iterations: int


class NonlinearStatFEM(eqx.Module):
    """The nonlinear statFEM model on a P1 space with zero Dirichlet values on the boundary.

    Args:
        space: a P1 :class:`pdegen.fem.FunctionSpace`.
        sensors: observation points ``(m, 2)``.
        f: source (scalar, callable ``f(x)`` or nodal values).
        kappa: base diffusivity (scalar, callable or nodal values > 0).
        alpha: strength of the nonlinearity ``kappa(u) = kappa (1 + alpha u^2)`` (>= 0).
        sigma_f: scale of the model error (forcing misspecification).
        sigma_e: observation noise standard deviation.
    """

    structure: _Structure = eqx.field(static=True)
    space: object = eqx.field(static=True)
    fq: jax.Array
    kappa_q: jax.Array
    alpha: jax.Array
    sigma_f: jax.Array
    sigma_e: jax.Array
    mass_diag: jax.Array

    def __init__(self, space, sensors, *, f=1.0, kappa=1.0, alpha=1.0, sigma_f=1.0, sigma_e=1e-2):
        sensors = np.asarray(sensors, np.float64)
        if sensors.ndim != 2 or sensors.shape[1] != 2 or sensors.shape[0] == 0:
            raise UserError(
                f"NonlinearStatFEM: sensors must have shape (m, 2) with m >= 1, got {sensors.shape}"
            )
        if np.asarray(space.phi).shape[1] != 3:
            raise UserError("NonlinearStatFEM: space must be P1 on triangles")
        self.structure = _Structure(Poisson(space), sensors)
        self.space = space
        self.fq = jnp.asarray(space.at_quadrature(f, "NonlinearStatFEM(f=...)"))
        self.kappa_q = jnp.asarray(space.at_quadrature(kappa, "NonlinearStatFEM(kappa=...)"))
        if not bool(jnp.all(self.kappa_q > 0)):
            raise UserError("NonlinearStatFEM: kappa must be > 0")
        self.alpha = _scalar("alpha", alpha, nonnegative=True)
        self.sigma_f = _scalar("sigma_f", sigma_f, positive=True)
        self.sigma_e = _scalar("sigma_e", sigma_e, positive=True)
        self.mass_diag = _restrict(self.structure, lumped_mass(space))

    # -- basic maps ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.structure.nfree

    @property
    def num_sensors(self) -> int:
        return int(self.structure.H.shape[0])

    def embed(self, x) -> jax.Array:
        """Nodal values ``u`` (zero on the boundary) of free-dof values ``x``."""
        return _embed(self.structure, jnp.asarray(x))

    def observe(self, x) -> jax.Array:
        """``H u``."""
        return self.structure.H @ self.embed(x)

    def _uq(self, u):
        s = self.structure
        ue = u[jnp.asarray(s.element_dofs)]
        phi = jnp.asarray(self.space.phi)
        dphi = jnp.asarray(self.space.dphi)
        uq = jnp.einsum("ei,eiq->eq", ue, phi)
        gq = jnp.einsum("ei,eidq->edq", ue, dphi)
        return ue, uq, gq

    def residual(self, x) -> jax.Array:
        """The FEM residual on the free dofs, ``(dim,)``."""
        u = self.embed(x)
        _, uq, gq = self._uq(u)
        w = self.kappa_q * (1.0 + self.alpha * uq**2) * jnp.asarray(self.space.dx)
        dphi = jnp.asarray(self.space.dphi)
        local = jnp.einsum("eq,edq,eidq->ei", w, gq, dphi)
        full = jax.ops.segment_sum(
            local.reshape(-1),
            jnp.asarray(self.structure.element_dofs.reshape(-1)),
            num_segments=self.structure.ndofs,
        )
        return _restrict(self.structure, full - load(self.space, self.fq))

    def jacobian(self, x) -> SparseMatrix:
        """``dR/du`` as a full-size sparse matrix with the Dirichlet rows and columns replaced by the
        identity (solve with it on ``embed``-ed vectors)."""
        u = self.embed(x)
        _, uq, gq = self._uq(u)
        dx = jnp.asarray(self.space.dx)
        phi = jnp.asarray(self.space.phi)
        dphi = jnp.asarray(self.space.dphi)
        w = self.kappa_q * (1.0 + self.alpha * uq**2) * dx
        w2 = 2.0 * self.alpha * self.kappa_q * uq * dx
        local = jnp.einsum("eq,eidq,ejdq->eij", w, dphi, dphi) + jnp.einsum(
            "eq,edq,eidq,ejq->eij", w2, gq, dphi, phi
        )
        J = assemble_local(self.space, local)
        s = self.structure
        J, _ = s.zero_bc.apply(J, jnp.zeros(s.ndofs, J.dtype), 0.0)
        return J

    def check_data(self, y) -> jax.Array:
        y = jnp.asarray(y)
        if y.ndim == 1:
            y = y[None, :]
        if y.ndim != 2 or y.shape[1] != self.num_sensors or y.shape[0] == 0:
            raise UserError(
                f"NonlinearStatFEM: y must have shape ({self.num_sensors},) or (J, "
                f"{self.num_sensors}), got {y.shape}"
            )
        if not bool(jnp.all(jnp.isfinite(y))):
            raise UserError("NonlinearStatFEM: y contains NaN or inf")
        return y

    # -- energies ----------------------------------------------------------------------------
    def model_energy(self, x) -> jax.Array:
        """``0.5 R(x)^T G^{-1} R(x)``."""
        r = self.residual(x)
        return 0.5 * jnp.sum(r * r / (self.sigma_f**2 * self.mass_diag))

    def misfit_energy(self, x, y) -> jax.Array:
        r = y - self.observe(x)[None, :]
        return 0.5 * jnp.sum(r * r) / self.sigma_e**2

    def energy(self, x, y) -> jax.Array:
        return self.model_energy(x) + self.misfit_energy(x, y)

    def energy_fn(self, y):
        """``x -> Phi(x)`` for the data ``y``."""
        y = self.check_data(y)
        return lambda x: self.energy(check_state(x, self.dim, "NonlinearStatFEM.energy_fn(y)"), y)

    # -- simulation --------------------------------------------------------------------------
    def solve(self, xi=None, *, tol: float | None = None, max_iterations: int = 50) -> jax.Array:
        """Free-dof values with ``R(x) = xi`` (Newton; ``xi = 0`` by default). ``tol``: relative
        residual (default ``1e-11`` in float64, ``1e-5`` in float32)."""
        xi = jnp.zeros(self.dim) if xi is None else check_state(xi, self.dim, "solve(xi)")
        x = jnp.zeros(self.dim, xi.dtype)
        if tol is None:
            tol = 1e-11 if jnp.finfo(xi.dtype).bits == 64 else 1e-5
        scale = max(1.0, float(jnp.linalg.norm(xi)), float(jnp.linalg.norm(self.residual(x))))
        for _ in range(int(max_iterations)):
            with solver_errors():
                dx, rn = _newton_step(self, x, xi)
            if not math.isfinite(float(rn)):
                break
            if float(rn) <= tol * scale:
                return x
            x = x - dx
        raise ConvergenceError(
            f"NonlinearStatFEM.solve: Newton did not converge in {max_iterations} iterations"
        )

    def sample_prior(self, *, key) -> jax.Array:
        """A draw of the model: ``x`` with ``R(x) = xi``, ``xi ~ N(0, G)``."""
        xi = self.sigma_f * jnp.sqrt(self.mass_diag) * jax.random.normal(key, (self.dim,))
        return self.solve(xi)

    def simulate_data(self, x, num_replicates: int = 1, *, key) -> jax.Array:
        z = jax.random.normal(key, (int(num_replicates), self.num_sensors))
        return self.observe(x)[None, :] + self.sigma_e * z

    # -- MAP and preconditioners ---------------------------------------------------------------
    def _gauss_newton_matrix(self, x, num_replicates):
        """Host: ``J^T G^{-1} J + J_rep H^T H / sigma_e^2`` on the free dofs (SciPy CSC)."""
        s = self.structure
        J = self.jacobian(x).to_scipy()
        Jf = sp.csr_matrix(J)[s.free][:, s.free]
        g = float(self.sigma_f) ** 2 * np.asarray(self.mass_diag)
        H = sp.csr_matrix(s.H.to_scipy())[:, s.free]
        Q = Jf.T @ sp.diags_array(1.0 / g) @ Jf + (num_replicates / float(self.sigma_e) ** 2) * (
            H.T @ H
        )
        return sp.csc_matrix(Q)

    def map_point(self, y, *, x0=None, tol: float = 1e-9, max_iterations: int = 50) -> MAPResult:
        """The MAP point (minimiser of ``Phi``) by Gauss-Newton with a backtracking line search
        (sparse direct solves with the Gauss-Newton matrix)."""
        y = self.check_data(y)
        x = self.solve() if x0 is None else jnp.asarray(x0)
        vg = jax.jit(jax.value_and_grad(self.energy_fn(y)))
        energy = jax.jit(self.energy_fn(y))
        e, g = vg(x)
        g0 = float(jnp.linalg.norm(g))
        for it in range(1, int(max_iterations) + 1):
            Q = self._gauss_newton_matrix(x, y.shape[0])
            d = SparseCholesky(Q).solve(np.asarray(g))
            t = 1.0
            while t > 1e-8:
                xn = x - t * jnp.asarray(d)
                en = energy(xn)
                if float(en) <= float(e) - 1e-4 * t * float(jnp.dot(g, jnp.asarray(d))):
                    break
                t *= 0.5
            x = xn
            e, g = vg(x)
            gn = float(jnp.linalg.norm(g))
            if gn <= tol * max(g0, 1.0):
                return MAPResult(x, float(e), gn, it)
        if not math.isfinite(float(e)):
            raise ConvergenceError("NonlinearStatFEM.map_point: the energy became non-finite")
        return MAPResult(x, float(e), float(jnp.linalg.norm(g)), int(max_iterations))

    def laplace_preconditioner(
        self, y, x, *, rank: int | None = None, key=None, oversampling: int = 10
    ):
        """The Laplace (Gauss-Newton) approximation of the posterior at ``x`` (the MAP point).

        ``rank=None``: the full Gauss-Newton matrix, factorised once (sparse Cholesky; the action
        and draws are triangular solves on the host). ``rank=r``: the hIPPYlib form, the linearised
        model-error covariance ``S S^T`` with ``S = J^{-1} G^{1/2}`` and the ``r`` leading eigenpairs
        of the prior-preconditioned data-misfit Hessian from a randomised eigensolver (``key``
        needed); see :func:`pdegen.mcmc.low_rank_preconditioner`.
        """
        y = self.check_data(y)
        if rank is None:
            return sparse_gaussian_preconditioner(self._gauss_newton_matrix(x, y.shape[0]))
        if key is None:
            raise UserError("laplace_preconditioner: rank=r needs key= (randomised eigensolver)")
        s = self.structure
        J = self.jacobian(x)
        groot = self.sigma_f * jnp.sqrt(self.mass_diag)
        scale = math.sqrt(y.shape[0]) / self.sigma_e

        def sqrt_apply(z):
            return _restrict(s, linear_solve(J, _embed(s, groot * z)))

        def sqrt_transpose(v):
            return groot * _restrict(s, linear_solve(J.T, _embed(s, v)))

        def misfit_hvp(v):
            hv = s.H @ _embed(s, v)
            return scale**2 * _restrict(s, s.H.T @ hv)

        with solver_errors():
            out = low_rank_preconditioner(
                sqrt_apply,
                sqrt_transpose,
                misfit_hvp,
                self.dim,
                rank=int(rank),
                key=key,
                oversampling=oversampling,
            )
        return out

    def laplace_reference(self, y, x):
        """The Laplace Gaussian ``N(x, Q^{-1})`` at ``x`` (the MAP point; ``Q`` the Gauss-Newton
        matrix) as the reference measure of pCN: returns ``(mean, preconditioner, correction)`` with
        ``correction(z) = 0.5 (z - x)^T Q (z - x)``, so that ``pcn(lambda z: energy(z) -
        correction(z), beta, prior_mean=mean, prior=preconditioner)`` samples the posterior. Its
        acceptance at a fixed ``beta`` does not degrade as the mesh is refined (the proposal is
        reversible for the reference measure in any dimension)."""
        y = self.check_data(y)
        x = jnp.asarray(x)
        Q = sp.csr_matrix(self._gauss_newton_matrix(x, y.shape[0]))
        Q.sort_indices()
        rows = np.repeat(np.arange(Q.shape[0]), np.diff(Q.indptr))
        Qj = SparseMatrix(jnp.asarray(Q.data), SparsityPattern(rows, Q.indices, Q.shape))
        pre = sparse_gaussian_preconditioner(Q)

        def correction(z):
            d = z - x
            return 0.5 * jnp.dot(d, Qj @ d)

        return x, pre, correction

    def mass_preconditioner(self) -> Preconditioner:
        """The Riesz map ``P = M^{-1}`` (lumped mass): nodal gradients become L2 gradients."""
        return mass_preconditioner_from_diagonal(self.mass_diag)

    def linear_prior(self):
        """The Gaussian model of the linear problem (``alpha = 0``): its mean ``m0 = K^{-1} b`` and
        covariance ``C0 = K^{-1} G K^{-1}`` as a :class:`Preconditioner` (reference measure of pCN,
        and the prior preconditioner)."""
        s = self.structure
        K = self.replace_alpha(0.0).jacobian(jnp.zeros(self.dim))
        b = load(self.space, self.fq)
        m0 = _restrict(s, linear_solve(K, _embed(s, _restrict(s, b))))
        groot = self.sigma_f * jnp.sqrt(self.mass_diag)
        g = groot**2

        def apply(v):
            w = _restrict(s, linear_solve(K, _embed(s, v)))
            return _restrict(s, linear_solve(K, _embed(s, g * w)))

        def sample(*, key):
            z = jax.random.normal(key, (self.dim,))
            return _restrict(s, linear_solve(K, _embed(s, groot * z)))

        def energy(x):
            r = _restrict(s, K @ _embed(s, x - m0))
            return 0.5 * jnp.sum(r * r / g)

        return m0, Preconditioner(apply, sample), energy

    def replace_alpha(self, alpha) -> NonlinearStatFEM:
        return eqx.tree_at(lambda m: m.alpha, self, jnp.asarray(alpha, self.alpha.dtype))


@eqx.filter_jit
def _newton_step(model, x, xi):
    r = model.residual(x) - xi
    J = model.jacobian(x)
    s = model.structure
    dx = _restrict(s, linear_solve(J, _embed(s, r)))
    return dx, jnp.linalg.norm(r)


def mass_preconditioner_from_diagonal(mass_diag) -> Preconditioner:
    d = jnp.asarray(mass_diag)

    def apply(v):
        return v / d

    def sample(*, key):
        return jax.random.normal(key, d.shape, d.dtype) / jnp.sqrt(d)

    return Preconditioner(apply, sample)


def sparse_gaussian_preconditioner(Q) -> Preconditioner:
    """The preconditioner ``P = Q^{-1}`` of a sparse precision matrix ``Q``.

    ``P = Q^{-1}`` for a sparse SPD precision ``Q`` (SciPy matrix), through one sparse Cholesky
    factor on the host: ``apply`` is a solve, ``sample`` a triangular solve (both host callbacks,
    batched under ``vmap``)."""
    F = SparseCholesky(Q)
    n = Q.shape[0]

    def _solve(v):
        v = np.asarray(v)
        flat = v.reshape(-1, n).T
        return F.solve(flat).T.reshape(v.shape).astype(v.dtype)

    def _draw(z):
        z = np.asarray(z)
        flat = z.reshape(-1, n).T
        return F.sample(flat).T.reshape(z.shape).astype(z.dtype)

    def apply(v):
        return host_call(
            _solve, jax.ShapeDtypeStruct(v.shape, v.dtype), v, vmap_method="broadcast_all"
        )

    def sample(*, key):
        z = jax.random.normal(key, (n,))
        return host_call(
            _draw, jax.ShapeDtypeStruct(z.shape, z.dtype), z, vmap_method="broadcast_all"
        )

    return Preconditioner(apply, sample)
