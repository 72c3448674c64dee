"""The statistical FEM model ``A(theta) u = b(theta) + xi``, ``y = rho * H u + d + e``.

Only the free (non-Dirichlet) dofs are random: the latent variable of every sampler is the
vector ``x`` of free-dof values, ``u = lift(g) + embed(x)``. With ``xi ~ N(0, G)`` on the free
dofs the prior of ``x`` is Gaussian with mean ``A^{-1} b`` and covariance ``A^{-1} G A^{-T}``
(``A``, ``b``, ``G`` restricted to the free dofs). Data ``y_j = rho * obs(H u) + d_j + e_j`` for
replicates ``j = 1..J``, with ``d_j ~ N(0, C_d)`` (squared exponential on the sensor points) and
``e_j ~ N(0, sigma_e^2 I)``; ``obs`` is the identity unless a nonlinear observation map is given.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..._errors import UserError
from .._assembly import DirichletBC, lumped_mass, mass
from .._callback import host_call
from .._problems import _check_positive
from .._solve import linear_solve, solver_errors
from .._sparse import SparseMatrix, SparsityPattern, default_float_dtype

MASS_KINDS = ("lumped", "consistent")


def check_state(x, dim: int, where: str, what: str = "the state", hint: str = "") -> jax.Array:
    """``x`` as an array of shape ``(dim,)``, else a ``UserError`` naming ``where`` and ``what``.

    The models' methods and the energies they hand to samplers check their argument (a longer
    state would run, its extra entries outside the energy)."""
    x = jnp.asarray(x)
    if x.shape != (dim,):
        raise UserError(f"{where}: {what} must have shape ({dim},){hint}, got {x.shape}")
    return x


def _positive_lumped_mass(space) -> bool:
    """Whether every lumped-mass entry is positive (P1, Q1, Q2; not P2, whose vertex shape
    functions integrate to zero)."""
    return bool(np.all(np.asarray(lumped_mass(space)) > 0))


KERNELS = ("squared_exponential", "matern12", "matern32", "matern52")


def _scalar(name, value, *, positive=False, nonnegative=False):
    """A scalar parameter as an array of the default float dtype; concrete values are checked."""
    v = jnp.asarray(value)
    if v.ndim != 0:
        raise ValueError(f"StatFEM: {name} must be a scalar, got shape {v.shape}")
    if not jnp.issubdtype(v.dtype, jnp.floating) and not jnp.issubdtype(v.dtype, jnp.integer):
        raise TypeError(f"StatFEM: {name} must be a real number, got dtype {v.dtype}")
    if not isinstance(v, jax.core.Tracer):
        c = float(v)
        if not math.isfinite(c):
            raise ValueError(f"StatFEM: {name} must be finite, got {c}")
        if positive and not c > 0:
            raise ValueError(f"StatFEM: {name} must be > 0, got {c}")
        if nonnegative and not c >= 0:
            raise ValueError(f"StatFEM: {name} must be >= 0, got {c}")
    return v.astype(default_float_dtype())


def kernel_matrix(points_a, points_b, *, sigma=1.0, length=1.0, kind="squared_exponential"):
    """Covariance matrix ``k(a_i, b_j)`` of a stationary kernel, shape ``(len(a), len(b))``.

    ``kind``: ``'squared_exponential'`` (``sigma^2 exp(-r^2 / (2 length^2))``) or Matérn
    ``'matern12'``, ``'matern32'``, ``'matern52'``. Differentiable in ``sigma`` and ``length``.
    """
    if kind not in KERNELS:
        raise ValueError(f"kernel_matrix: kind must be one of {KERNELS}, got {kind!r}")
    a = jnp.asarray(points_a)
    b = jnp.asarray(points_b)
    diff = a[:, None, :] - b[None, :, :]
    r2 = jnp.sum(diff * diff, axis=-1)
    if kind == "squared_exponential":
        k = jnp.exp(-0.5 * r2 / length**2)
    else:
        # sqrt with a safe gradient at r = 0 (the diagonal).
        safe = jnp.where(r2 > 0, r2, 1.0)
        r = jnp.where(r2 > 0, jnp.sqrt(safe), 0.0) / length
        if kind == "matern12":
            k = jnp.exp(-r)
        elif kind == "matern32":
            s = math.sqrt(3.0) * r
            k = (1.0 + s) * jnp.exp(-s)
        else:
            s = math.sqrt(5.0) * r
            k = (1.0 + s + s * s / 3.0) * jnp.exp(-s)
    return sigma**2 * k


# ---------------------------------------------------------------------------- sparse log-det


def _csc_of(pattern: SparsityPattern, data: np.ndarray) -> sp.csc_matrix:
    return sp.csr_matrix((data, pattern.cols, pattern.indptr), shape=pattern.shape).tocsc()


def _host_logabsdet(pattern, data):
    data = np.asarray(data)
    out = np.empty(data.shape[:-1], dtype=data.dtype)
    for idx in np.ndindex(*data.shape[:-1]):
        lu = spla.splu(_csc_of(pattern, data[idx]))
        out[idx] = np.sum(np.log(np.abs(lu.U.diagonal())))  # L has a unit diagonal
    return out


def _selected_inverse_on_pattern(pattern, values):
    """``(A^{-1})_ji`` at the pattern's entries by selected inversion, for symmetric positive
    definite ``A``; ``None`` when ``A`` is not (the caller falls back to a dense inverse)."""
    from ._selected import SparseCholesky

    perm = pattern.transpose_perm
    if perm is None or not np.allclose(values, values[perm], rtol=1e-12, atol=0.0):
        return None
    try:
        Z = SparseCholesky(_csc_of(pattern, values)).selected_inverse()
    except ValueError:
        return None
    return np.asarray(sp.csr_matrix(Z)[pattern.cols, pattern.rows]).ravel()


def _host_logdet_grad(pattern, data):
    # d log|det A| / dA_ij = (A^{-1})_ji; only the pattern entries are needed: selected inversion
    # (sparse Cholesky and Takahashi recursions) for SPD A, a dense inverse otherwise.
    data = np.asarray(data)
    out = np.empty_like(data)
    for idx in np.ndindex(*data.shape[:-1]):
        sel = _selected_inverse_on_pattern(pattern, data[idx])
        if sel is not None:
            out[idx] = sel
            continue
        dense = _csc_of(pattern, data[idx]).toarray()
        inv = np.linalg.inv(dense)
        out[idx] = inv[pattern.cols, pattern.rows]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _logabsdet(pattern, data):
    return host_call(
        functools.partial(_host_logabsdet, pattern),
        jax.ShapeDtypeStruct(data.shape[:-1], data.dtype),
        data,
        vmap_method="sequential",
    )


def _logabsdet_fwd(pattern, data):
    return _logabsdet(pattern, data), data


def _logabsdet_bwd(pattern, data, g):
    grad = host_call(
        functools.partial(_host_logdet_grad, pattern),
        jax.ShapeDtypeStruct(data.shape, data.dtype),
        data,
        vmap_method="sequential",
    )
    return (g[..., None] * grad,)


_logabsdet.defvjp(_logabsdet_fwd, _logabsdet_bwd)


def sparse_logabsdet(A: SparseMatrix) -> jax.Array:
    """``log |det A|`` of a square sparse matrix (host LU); differentiable in ``A.data``.

    The gradient needs ``A^{-T}`` on the pattern: by selected inversion (a sparse Cholesky factor
    and the Takahashi recursions, any mesh size) when ``A`` is symmetric positive definite, else
    from a dense inverse on the host, O(n^3) (n up to a few thousand).
    """
    if not isinstance(A, SparseMatrix):
        raise TypeError(f"sparse_logabsdet: A must be a SparseMatrix, got {type(A).__name__}")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"sparse_logabsdet: A must be square, got {A.shape}")
    return _logabsdet(A.pattern, A.data)  # det(A^T) = det(A)


# ---------------------------------------------------------------------------- structure


class _Structure:
    """Host-side data that never changes: free dofs, Dirichlet lift, local mass factors."""

    def __init__(self, problem, sensors):
        V = problem.space
        self.space = V
        self.ndofs = V.ndofs
        bc = problem.bc
        if bc is None:
            self.dirichlet = np.zeros(0, np.int64)
            self.bc = None
        else:
            self.dirichlet = np.asarray(bc.dofs, np.int64)
            self.bc = bc
            g = np.asarray(bc.lift())
            if np.iscomplexobj(g) or not np.all(np.isfinite(g)):
                raise ValueError("StatFEM: the problem's Dirichlet values must be real and finite")
        on = np.zeros(self.ndofs, bool)
        on[self.dirichlet] = True
        self.lift = np.zeros(self.ndofs) if bc is None else np.asarray(bc.lift(), np.float64)
        self.free = np.flatnonzero(~on)
        self.nfree = int(self.free.size)
        self.embed_index = np.full(self.ndofs, self.nfree, np.int64)
        self.embed_index[self.free] = np.arange(self.nfree)
        if self.nfree == 0:
            raise ValueError("StatFEM: the problem has no free dofs")
        self.free_coordinates = np.asarray(V.dof_coordinates[self.free])
        self.sensors = sensors
        self.H = V.point_observation(sensors)
        self.zero_bc = None if bc is None else DirichletBC(V, 0.0, dofs=self.dirichlet)
        # pdegen problems name their arguments; other problem objects by their signatures
        self.operator_args = tuple(
            getattr(problem, "operator_arguments", None)
            or inspect.signature(problem.operator).parameters
        )
        self.rhs_args = tuple(
            getattr(problem, "rhs_arguments", None) or inspect.signature(problem.rhs).parameters
        )
        # Local mass matrices' Cholesky factors: N(0, M) = sum over cells of N(0, M_e).
        phi = np.asarray(V.phi)
        dx = np.asarray(V.dx)
        local = np.einsum("eq,eiq,ejq->eij", dx, phi, phi)
        self.local_mass_chol = np.linalg.cholesky(local)
        self.element_dofs = np.asarray(V.element_dofs)


def _restrict(structure, v):
    return v[..., structure.free]


def _embed(structure, x):
    # a gather from [x, 0]: Dirichlet dofs read the appended zero
    padded = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)
    return padded[..., structure.embed_index]


# ---------------------------------------------------------------------------- the model


class StatFEM(eqx.Module):
    """The statFEM model on a pdegen problem (``fem.Poisson``, ``fem.Darcy``, real ``fem.Helmholtz``).

    Args:
        problem: the PDE problem; its Dirichlet dofs are fixed at the problem's boundary values,
            only the free dofs are random.
        sensors: observation points, shape ``(m, 2)`` (point evaluation ``H``).
        coefficients: keyword arguments of ``problem.operator`` / ``problem.rhs`` (e.g.
            ``dict(kappa=..., f=...)``): scalars, arrays (nodal, vertex, cell or quadrature values)
            or callables ``f(x)`` (evaluated at the quadrature points once, here).
        sigma_f: scale of the forcing misspecification ``xi ~ N(0, G)``.
        mass: ``'lumped'`` (``G = sigma_f^2 diag(lumped mass)``) or ``'consistent'``
            (``G = sigma_f^2 M``).
        kernel: ``None`` (white forcing noise) or a kernel name (see :func:`kernel_matrix`):
            ``G = sigma_f^2 M K M`` with ``K`` the unit-variance kernel matrix on the free nodes
            with length ``ell_f`` (dense: small meshes only).
        rho: scale between the FE solution and the data.
        sigma_d: standard deviation of the discrepancy ``d ~ GP`` (squared-exponential kernel
            on the sensors; ``sigma_d = 0`` switches it off).
        ell_d: length scale of the discrepancy's kernel.
        sigma_e: observation noise standard deviation (> 0).
        observation: optional elementwise nonlinear map applied to ``H u`` (e.g.
            ``jax.nn.sigmoid``); gradients come from autodiff. Exact results need it to be ``None``.

    The model is an ``equinox.Module``: every parameter (``coefficients``, ``sigma_f``, ``rho``,
    ``sigma_d``, ``ell_d``, ``sigma_e``, ``ell_f``) is a pytree leaf, so ``jax.grad`` of any method
    with respect to the model (or ``model.replace(rho=r)``) works.

    Example::

        V = fem.FunctionSpace(fem.unit_square(17), "P1")
        model = StatFEM(fem.Poisson(V), sensors, coefficients=dict(kappa=1.0, f=1.0),
                        sigma_f=0.1, sigma_e=1e-3)
        phi = model.energy(x, y)       # x: free-dof values, shape (model.dim,)
    """

    problem: Any = eqx.field(static=True)
    structure: _Structure = eqx.field(static=True)
    mass_kind: str = eqx.field(static=True)
    kernel: str | None = eqx.field(static=True)
    observation: Callable | None = eqx.field(static=True)
    sensors: jax.Array
    coefficients: dict
    sigma_f: jax.Array
    ell_f: jax.Array
    rho: jax.Array
    sigma_d: jax.Array
    ell_d: jax.Array
    sigma_e: jax.Array

    def __init__(
        self,
        problem,
        sensors,
        *,
        coefficients=None,
        sigma_f=1.0,
        mass="lumped",
        kernel=None,
        ell_f=0.2,
        rho=1.0,
        sigma_d=0.0,
        ell_d=0.2,
        sigma_e=1e-2,
        observation=None,
        _structure=None,
    ):
        space = getattr(problem, "space", None)
        if space is None or not hasattr(problem, "operator") or not hasattr(problem, "rhs"):
            raise TypeError(
                f"StatFEM: problem must be a pdegen problem (fem.Poisson, fem.Darcy, fem.Helmholtz), "
                f"got {type(problem).__name__}"
            )
        if getattr(problem, "boundary", None) == "impedance":
            raise TypeError(
                "StatFEM: complex (impedance) problems are not supported; use a real problem"
            )
        if mass not in MASS_KINDS:
            raise ValueError(f"StatFEM: mass must be one of {MASS_KINDS}, got {mass!r}")
        if mass == "lumped" and _structure is None and not _positive_lumped_mass(space):
            raise ValueError(
                f"StatFEM: the lumped mass of a {space.element} space has entries <= 0 (its "
                "vertex shape functions integrate to zero or less), so the lumped forcing "
                "covariance is not positive definite; use mass='consistent'"
            )
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(f"StatFEM: kernel must be None or one of {KERNELS}, got {kernel!r}")
        if observation is not None and not callable(observation):
            raise TypeError("StatFEM: observation must be a callable (elementwise map) or None")
        sensors_np = (
            None if isinstance(sensors, jax.core.Tracer) else np.asarray(sensors, np.float64)
        )
        if sensors_np is not None and (
            sensors_np.ndim != 2 or sensors_np.shape[1] != 2 or sensors_np.shape[0] == 0
        ):
            raise ValueError(
                f"StatFEM: sensors must have shape (m, 2) with m >= 1, got {sensors_np.shape}"
            )
        structure = _structure if _structure is not None else _Structure(problem, sensors_np)
        coefficients = {} if coefficients is None else dict(coefficients)
        allowed = set(structure.operator_args) | set(structure.rhs_args)
        unknown = set(coefficients) - allowed
        if unknown:
            raise ValueError(
                f"StatFEM: unknown coefficients {sorted(unknown)} for {type(problem).__name__}; "
                f"expected a subset of {sorted(allowed)}"
            )
        coeffs = {}
        for name, value in coefficients.items():
            if callable(value):
                value = space.at_quadrature(value, f"StatFEM: coefficients[{name!r}]")
            if not isinstance(value, jax.core.Tracer) and not np.all(
                np.isfinite(np.asarray(value))
            ):
                raise ValueError(f"StatFEM: coefficients[{name!r}] contains NaN or inf")
            label = f"StatFEM: coefficients[{name!r}]"
            if not isinstance(value, jax.core.Tracer):
                if name not in getattr(problem, "_boundary_args", ()):
                    space.at_quadrature(value, label)  # a shape the space reads, or a clear error
                if name in getattr(problem, "_positive_args", ()):
                    _check_positive(label, value, space)
            coeffs[name] = jnp.asarray(value)
        self.problem = problem
        self.structure = structure
        self.mass_kind = mass
        self.kernel = kernel
        self.observation = observation
        self.sensors = jnp.asarray(sensors if sensors_np is None else sensors_np)
        self.coefficients = coeffs
        self.sigma_f = _scalar("sigma_f", sigma_f, positive=True)
        self.ell_f = _scalar("ell_f", ell_f, positive=True)
        self.rho = _scalar("rho", rho)
        self.sigma_d = _scalar("sigma_d", sigma_d, nonnegative=True)
        self.ell_d = _scalar("ell_d", ell_d, positive=True)
        self.sigma_e = _scalar("sigma_e", sigma_e, positive=True)

    # -- convenience ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of random (free) dofs: the size of the sampler's state ``x``."""
        return self.structure.nfree

    @property
    def num_sensors(self) -> int:
        return int(self.structure.H.shape[0])

    @property
    def free_dofs(self) -> np.ndarray:
        return self.structure.free

    def replace(self, **changes) -> StatFEM:
        """A copy with some parameters changed (values may be traced), e.g. ``replace(rho=2.0)``.

        ``coefficients`` given here are merged into the existing ones.
        """
        kwargs = dict(
            coefficients=dict(self.coefficients),
            sigma_f=self.sigma_f,
            mass=self.mass_kind,
            kernel=self.kernel,
            ell_f=self.ell_f,
            rho=self.rho,
            sigma_d=self.sigma_d,
            ell_d=self.ell_d,
            sigma_e=self.sigma_e,
            observation=self.observation,
        )
        bad = set(changes) - set(kwargs)
        if bad:
            raise ValueError(
                f"StatFEM.replace: unknown fields {sorted(bad)}; expected some of {sorted(kwargs)}"
            )
        if "coefficients" in changes:
            kwargs["coefficients"].update(changes.pop("coefficients"))
        kwargs.update(changes)
        return StatFEM(self.problem, self.sensors, _structure=self.structure, **kwargs)

    def embed(self, x) -> jax.Array:
        """Full nodal vector ``u`` (``(ndofs,)``) from free-dof values ``x``; Dirichlet values lifted."""
        x = self._check_x(x, "embed")
        return _embed(self.structure, x) + jnp.asarray(self.structure.lift, x.dtype)

    def restrict(self, u) -> jax.Array:
        """Free-dof values of a nodal vector ``u``."""
        u = jnp.asarray(u)
        if u.shape[-1] != self.structure.ndofs:
            raise ValueError(
                f"StatFEM.restrict: u must have last dimension {self.structure.ndofs}, got {u.shape}"
            )
        return _restrict(self.structure, u)

    def _check_x(self, x, fn):
        return check_state(x, self.dim, f"StatFEM.{fn}", "x", " (free dofs)")

    def check_data(self, y, fn="log_likelihood") -> jax.Array:
        """Observations as a ``(J, m)`` array of replicates (``(m,)`` is one replicate)."""
        y = jnp.asarray(y)
        m = self.num_sensors
        if y.ndim == 1:
            y = y[None, :]
        if y.ndim != 2 or y.shape[1] != m or y.shape[0] == 0:
            raise ValueError(f"StatFEM.{fn}: y must have shape ({m},) or (J, {m}), got {y.shape}")
        if not isinstance(y, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(y))):
            raise ValueError(f"StatFEM.{fn}: y contains NaN or inf")
        return y

    # -- assembled system ----------------------------------------------------------------
    def system(self) -> LinearSystem:
        """Assemble the operators once (reuse the result inside samplers: :meth:`energy_fn`).

        Compiled once per model structure; differentiable in the model's parameters.
        """
        return _assemble_system(self)

    def _operator(self) -> tuple[SparseMatrix, jax.Array]:
        """``A`` (Dirichlet rows and columns eliminated) and ``b`` on the free dofs."""
        s = self.structure
        op = {k: v for k, v in self.coefficients.items() if k in s.operator_args}
        rh = {k: v for k, v in self.coefficients.items() if k in s.rhs_args}
        A = self.problem.operator(**op)
        b = self.problem.rhs(**rh)
        if jnp.iscomplexobj(A.data) or jnp.iscomplexobj(b):
            raise TypeError(
                "StatFEM: the problem's operator is complex; statFEM needs a real problem"
            )
        if s.bc is not None:
            A, b = s.bc.apply(A, b)
        return A, _restrict(s, b)

    def _system(self) -> LinearSystem:
        s = self.structure
        A, b = self._operator()
        dtype = jnp.result_type(A.data.dtype, b.dtype)
        lift = jnp.asarray(s.lift, dtype)
        V = s.space
        if self.mass_kind == "lumped":
            mass_diag = _restrict(s, lumped_mass(V))
            M = None
        else:
            mass_diag = None
            M = mass(V)
            if s.zero_bc is not None:
                M, _ = s.zero_bc.apply(M, jnp.zeros(s.ndofs, M.dtype), 0.0)
        kernel_chol = None
        if self.kernel is not None:
            pts = jnp.asarray(s.free_coordinates)
            K = kernel_matrix(pts, pts, sigma=1.0, length=self.ell_f, kind=self.kernel)
            K = K + 1e-10 * jnp.eye(s.nfree, dtype=K.dtype)
            kernel_chol = jnp.linalg.cholesky(K)
        m = self.num_sensors
        Cd = kernel_matrix(self.sensors, self.sensors, sigma=self.sigma_d, length=self.ell_d)
        S = self.sigma_e**2 * jnp.eye(m, dtype=dtype) + Cd.astype(dtype)
        return LinearSystem(
            A=A,
            b=b,
            lift=lift,
            mass_diag=mass_diag,
            M=M,
            kernel_chol=kernel_chol,
            sigma_f=self.sigma_f,
            rho=self.rho,
            H=s.H,
            noise_chol=jnp.linalg.cholesky(S),
            structure=s,
            observation=self.observation,
        )

    # -- densities (all differentiable in x and in the model's parameters) ----------------
    def prior_energy(self, x) -> jax.Array:
        """``0.5 (A x - b)^T G^{-1} (A x - b)``."""
        return _call(self, "prior_energy", self._check_x(x, "prior_energy"))

    def likelihood_energy(self, x, y) -> jax.Array:
        """``sum_j 0.5 (y_j - rho obs(H u))^T (C_d + sigma_e^2 I)^{-1} (y_j - rho obs(H u))``."""
        return _call(
            self,
            "likelihood_energy",
            self._check_x(x, "likelihood_energy"),
            self.check_data(y, "likelihood_energy"),
        )

    def energy(self, x, y) -> jax.Array:
        """The posterior energy ``Phi(x) = prior_energy + likelihood_energy`` (no constants)."""
        return _call(self, "energy", self._check_x(x, "energy"), self.check_data(y, "energy"))

    def log_prior(self, x) -> jax.Array:
        """Normalised ``log p(x | theta)``: ``log N(A x; b, G) + log |det A|``."""
        return _call(self, "log_prior", self._check_x(x, "log_prior"))

    def log_likelihood(self, x, y) -> jax.Array:
        """Normalised ``log p(y | x)`` summed over replicates."""
        return _call(self, "log_likelihood", self._check_x(x, "log_likelihood"), self.check_data(y))

    def log_joint(self, x, y) -> jax.Array:
        """``log p(x, y | parameters)``; ``-log_joint`` is the IPLA energy ``U(theta, x)``."""
        return _call(
            self, "log_joint", self._check_x(x, "log_joint"), self.check_data(y, "log_joint")
        )

    def energy_fn(self, y) -> Callable:
        """``x -> Phi(x)`` with the operators assembled once (fast inside samplers)."""
        y = self.check_data(y, "energy_fn")
        sys = self.system()
        return lambda x: sys.energy(self._check_x(x, "energy_fn(y)"), y)

    def likelihood_energy_fn(self, y) -> Callable:
        """``x -> likelihood_energy(x, y)`` with the operators assembled once (for pCN)."""
        y = self.check_data(y, "likelihood_energy_fn")
        sys = self.system()
        return lambda x: sys.likelihood_energy(self._check_x(x, "likelihood_energy_fn(y)"), y)

    # -- prior -----------------------------------------------------------------------------
    def prior_mean(self) -> jax.Array:
        """``A^{-1} b`` on the free dofs."""
        return _prior_mean(self)

    def sample_prior(self, num_samples: int | None = None, *, key) -> jax.Array:
        """Draws of ``x = A^{-1} (b + xi)``, shape ``(dim,)`` or ``(num_samples, dim)``; ``key`` is
        keyword-only."""
        if num_samples is None:
            return _sample_prior(self, key, None)
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(
                f"StatFEM.sample_prior: num_samples must be a positive integer, got {num_samples}"
            )
        return _sample_prior(self, key, int(num_samples))

    def simulate_data(self, x, num_replicates: int = 1, *, key) -> jax.Array:
        """Synthetic data ``rho obs(H u) + d + e`` for the state ``x``, shape ``(J, m)``; ``key`` is
        keyword-only."""
        x = self._check_x(x, "simulate_data")
        if int(num_replicates) != num_replicates or num_replicates < 1:
            raise ValueError(
                f"StatFEM.simulate_data: num_replicates must be a positive integer, got {num_replicates}"
            )
        return _simulate_data(self, key, x, int(num_replicates))


@solver_errors()
@eqx.filter_jit
def _assemble_system(model: StatFEM) -> LinearSystem:
    return model._system()


@solver_errors()
@eqx.filter_jit
def _call(model, method, *args):
    sys = model._system()
    if method == "log_joint":
        return sys.log_prior(args[0]) + sys.log_likelihood(*args)
    return getattr(sys, method)(*args)


@solver_errors()
@eqx.filter_jit
def _simulate_data(model, key, x, num_replicates):
    sys = model._system()
    z = jax.random.normal(key, (num_replicates, model.num_sensors), x.dtype)
    return sys.predict(x)[None, :] + z @ sys.noise_chol.T


@solver_errors()
@eqx.filter_jit
def _prior_mean(model):
    sys = model._system()
    return sys.solve(sys.b)


@solver_errors()
@eqx.filter_jit
def _sample_prior(model, key, num_samples):
    sys = model._system()
    if num_samples is None:
        return sys.solve(sys.b + sys.sample_forcing_noise(key=key))
    keys = jax.random.split(key, num_samples)
    return jax.vmap(lambda k: sys.solve(sys.b + sys.sample_forcing_noise(key=k)))(keys)


class LinearSystem(eqx.Module):
    """Assembled statFEM operators on the free dofs (returned by :meth:`StatFEM.system`)."""

    A: SparseMatrix  # full size, Dirichlet rows/columns eliminated (identity there)
    b: jax.Array  # (nfree,)
    lift: jax.Array  # (ndofs,)
    mass_diag: jax.Array | None
    M: SparseMatrix | None
    kernel_chol: jax.Array | None
    sigma_f: jax.Array
    rho: jax.Array
    H: SparseMatrix
    noise_chol: jax.Array  # Cholesky factor of C_d + sigma_e^2 I
    structure: _Structure = eqx.field(static=True)
    observation: Callable | None = eqx.field(static=True)

    # -- operators on the free dofs
    def apply_A(self, x):
        s = self.structure
        return _restrict(s, self.A @ _embed(s, x))

    def apply_AT(self, x):
        s = self.structure
        return _restrict(s, self.A.T @ _embed(s, x))

    def solve(self, r):
        """``A^{-1} r`` (free dofs)."""
        s = self.structure
        return _restrict(s, linear_solve(self.A, _embed(s, r)))

    def solve_T(self, r):
        """``A^{-T} r`` (free dofs)."""
        s = self.structure
        return _restrict(s, linear_solve(self.A.T, _embed(s, r)))

    def _mass_apply(self, v):
        if self.M is None:
            return self.mass_diag.astype(v.dtype) * v
        s = self.structure
        return _restrict(s, self.M @ _embed(s, v))

    def _mass_solve(self, v):
        if self.M is None:
            return v / self.mass_diag.astype(v.dtype)
        s = self.structure
        return _restrict(s, linear_solve(self.M, _embed(s, v), symmetric_positive_definite=True))

    def apply_G(self, v):
        """``G v``."""
        if self.kernel_chol is None:
            out = self._mass_apply(v)
        else:
            w = self._mass_apply(v)
            w = self.kernel_chol @ (self.kernel_chol.T @ w)
            out = self._mass_apply(w)
        return self.sigma_f**2 * out

    def solve_G(self, v):
        """``G^{-1} v``."""
        w = self._mass_solve(v)
        if self.kernel_chol is not None:
            w = jax.scipy.linalg.cho_solve((self.kernel_chol, True), w)
            w = self._mass_solve(w)
        return w / self.sigma_f**2

    @property
    def forcing_noise_size(self) -> int:
        """Length of the white noise ``z`` that :meth:`forcing_from_noise` maps to ``xi``."""
        s = self.structure
        if self.kernel_chol is None and self.M is not None:
            return int(np.prod(np.shape(s.local_mass_chol)[:2]))
        return s.nfree

    def sample_forcing_noise(self, *, key):
        """A draw of ``xi ~ N(0, G)`` on the free dofs (``key`` keyword-only)."""
        z = jax.random.normal(key, (self.forcing_noise_size,), self.b.dtype)
        return self.forcing_from_noise(z)

    def forcing_from_noise(self, z):
        """``xi = G^{1/2} z`` (``xi ~ N(0, G)`` for ``z ~ N(0, I)`` of length
        :attr:`forcing_noise_size`): a linear map, so ``xi`` may be sampled in ``z``."""
        s = self.structure
        dtype = self.b.dtype
        if self.kernel_chol is None and self.M is None:
            return self.sigma_f * jnp.sqrt(self.mass_diag).astype(dtype) * z
        if self.kernel_chol is not None:
            return self.sigma_f * self._mass_apply(self.kernel_chol @ z)
        # consistent mass: N(0, M) is the sum of independent N(0, M_e) over the cells
        L = jnp.asarray(s.local_mass_chol, dtype)
        z = z.reshape(L.shape[:2])
        local = jnp.einsum("eij,ej->ei", L, z)
        full = jax.ops.segment_sum(
            local.reshape(-1), jnp.asarray(s.element_dofs.reshape(-1)), num_segments=s.ndofs
        )
        return self.sigma_f * _restrict(s, full)

    def logdet_G(self):
        s = self.structure
        n = s.nfree
        if self.M is None:
            lm = jnp.sum(jnp.log(self.mass_diag))
        else:
            lm = sparse_logabsdet(self.M)  # Dirichlet block is the identity
        out = n * jnp.log(self.sigma_f**2) + lm
        if self.kernel_chol is not None:
            out = out + lm + 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.kernel_chol)))
        return out

    # -- observations
    def observe(self, x):
        """``obs(H u)`` (without ``rho``)."""
        u = _embed(self.structure, x) + self.lift.astype(x.dtype)
        h = self.H @ u
        if self.observation is not None:
            h = self.observation(h)
        return h

    def predict(self, x):
        return self.rho * self.observe(x)

    # -- energies
    def prior_energy(self, x):
        r = self.apply_A(x) - self.b
        return 0.5 * jnp.dot(r, self.solve_G(r))

    def whitened_residual(self, x, y):
        """``L^{-1} (y_j - rho obs(H u))`` stacked over the replicates (``L L^T = C_d +
        sigma_e^2 I``), so that the likelihood energy is half its squared norm."""
        r = y - self.predict(x)[None, :]
        return jax.scipy.linalg.solve_triangular(self.noise_chol, r.T, lower=True).T.reshape(-1)

    def likelihood_energy(self, x, y):
        w = self.whitened_residual(x, y)
        return 0.5 * jnp.dot(w, w)

    def energy(self, x, y):
        return self.prior_energy(x) + self.likelihood_energy(x, y)

    def log_prior(self, x):
        n = self.structure.nfree
        return (
            -self.prior_energy(x)
            - 0.5 * self.logdet_G()
            - 0.5 * n * math.log(2 * math.pi)
            + sparse_logabsdet(self.A)
        )

    def log_likelihood(self, x, y):
        J, m = y.shape
        logdet_S = 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.noise_chol)))
        return -self.likelihood_energy(x, y) - 0.5 * J * (logdet_S + m * math.log(2 * math.pi))

    def dense_observation(self):
        """``H`` restricted to the free dofs as a dense ``(m, nfree)`` matrix."""
        return self.H.todense()[:, self.structure.free]
