"""Linear solves with adjoint gradients: host direct (SciPy LU) and JAX-native Krylov."""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ._sparse import SparseMatrix, SparsityPattern, result_dtype

METHODS = ("auto", "direct", "cg", "bicgstab", "gmres")


@dataclasses.dataclass(frozen=True)
class _Solver:
    pattern: SparsityPattern
    method: str
    rtol: float
    maxiter: int
    restart: int

    def solve(self, data, b, transpose: bool):
        if self.method == "direct":
            return _direct_solve(self.pattern, data, b, transpose)
        return _krylov_solve(self, data, b, transpose)


# ---------------------------------------------------------------------------- direct (host)

class _FactorCache:
    """A small LRU cache of LU factorisations keyed by the matrix values.

    The forward solve and its adjoint (a transposed solve) share one factorisation, and
    so do many right-hand sides with one operator (data-set generation).
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._cache: OrderedDict = OrderedDict()

    def get(self, pattern: SparsityPattern, data: np.ndarray):
        key = (id(pattern), data.dtype.str, hash(data.tobytes()))
        lu = self._cache.get(key)
        if lu is not None:
            self._cache.move_to_end(key)
            return lu
        # CSC arrays of A^T are the CSR arrays of A: factorise A^T without a conversion.
        at = sp.csc_matrix((data, pattern.cols, pattern.indptr), shape=pattern.shape[::-1])
        try:
            lu = spla.splu(at)
        except RuntimeError as err:  # exactly singular
            raise ValueError(
                f"linear_solve: the matrix is singular ({err}); check the boundary conditions "
                "and that the coefficient is positive"
            ) from err
        self._cache[key] = lu
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return lu

    def clear(self):
        self._cache.clear()


_FACTORS = _FactorCache()


def clear_solver_cache() -> None:
    """Forget cached LU factorisations (e.g. before timing a solve)."""
    _FACTORS.clear()


def _host_solve(pattern, transpose, data, b):
    data = np.asarray(data)
    b = np.asarray(b)
    batch = np.broadcast_shapes(data.shape[:-1], b.shape[:-1])
    n = b.shape[-1]
    out_dtype = np.result_type(data.dtype, b.dtype)
    out = np.empty(batch + (n,), dtype=out_dtype)
    data_flat = data.reshape(-1, data.shape[-1])
    b_full = np.broadcast_to(b, batch + (n,)).reshape(-1, n)
    out_flat = out.reshape(-1, n)
    # We factorise A^T: solving A x = b is its transposed solve.
    trans = "N" if transpose else "T"
    if data_flat.shape[0] == 1:
        lu = _FACTORS.get(pattern, np.ascontiguousarray(data_flat[0]))
        rhs = b_full.astype(np.result_type(lu.L.dtype, b_full.dtype))
        # One factorisation, then one triangular solve per right-hand side: SuperLU's
        # multi-right-hand-side solve is several times slower than this loop.
        for i in range(out_flat.shape[0]):
            out_flat[i] = lu.solve(rhs[i], trans=trans)
    else:
        data_full = np.broadcast_to(data, batch + (data.shape[-1],)).reshape(-1, data.shape[-1])
        for i in range(out_flat.shape[0]):
            lu = _FACTORS.get(pattern, np.ascontiguousarray(data_full[i]))
            rhs = b_full[i].astype(np.result_type(lu.L.dtype, b_full.dtype))
            out_flat[i] = lu.solve(rhs, trans=trans)
    if not np.all(np.isfinite(out)):
        raise ValueError("linear_solve: the direct solve produced non-finite values")
    return out


def _direct_solve(pattern, data, b, transpose):
    dtype = result_dtype(data.dtype, b.dtype)
    return jax.pure_callback(
        functools.partial(_host_solve, pattern, transpose),
        jax.ShapeDtypeStruct(b.shape, dtype),
        data,
        b,
        vmap_method="expand_dims",
    )


# ---------------------------------------------------------------------------- Krylov (JAX)

def _krylov_solve(solver: _Solver, data, b, transpose):
    A = SparseMatrix(data, solver.pattern, transpose)
    dtype = result_dtype(data.dtype, b.dtype)
    b = b.astype(dtype)
    diag = A.diagonal().astype(dtype)
    inv_diag = jnp.where(diag != 0, 1.0 / jnp.where(diag != 0, diag, 1.0), 1.0)

    def precond(x):
        return inv_diag * x

    kwargs = dict(tol=solver.rtol, atol=0.0, maxiter=solver.maxiter, M=precond)
    if solver.method == "cg":
        x, _ = jax.scipy.sparse.linalg.cg(A.matvec, b, **kwargs)
    elif solver.method == "bicgstab":
        x, _ = jax.scipy.sparse.linalg.bicgstab(A.matvec, b, **kwargs)
    else:
        x, _ = jax.scipy.sparse.linalg.gmres(A.matvec, b, restart=solver.restart, **kwargs)
    res = jnp.linalg.norm(b - A.matvec(x)) / jnp.maximum(jnp.linalg.norm(b), 1e-300)
    bad = jnp.logical_or(res > 10.0 * solver.rtol, jnp.logical_not(jnp.all(jnp.isfinite(x))))
    return eqx.error_if(
        x,
        bad,
        f"linear_solve(method={solver.method!r}) did not converge to rtol={solver.rtol:g} in "
        f"maxiter={solver.maxiter} iterations; increase maxiter, loosen rtol, or use "
        "method='direct'",
    )


# ---------------------------------------------------------------------------- adjoint

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(solver: _Solver, data, b):
    return solver.solve(data, b, transpose=False)


def _solve_fwd(solver, data, b):
    x = solver.solve(data, b, transpose=False)
    return x, (data, b, x)


def _solve_bwd(solver, residuals, x_bar):
    data, b, x = residuals
    lam = solver.solve(data, x_bar, transpose=True)
    p = solver.pattern
    data_bar = -lam[p.rows] * x[p.cols]
    if not jnp.iscomplexobj(data):
        data_bar = jnp.real(data_bar)
    b_bar = lam if jnp.iscomplexobj(b) else jnp.real(lam)
    return data_bar.astype(data.dtype), b_bar.astype(b.dtype)


_solve.defvjp(_solve_fwd, _solve_bwd)


def default_method(symmetric_positive_definite: bool = False) -> str:
    """``'direct'`` on the CPU; on accelerators CG for SPD systems and GMRES otherwise."""
    if jax.default_backend() == "cpu":
        return "direct"
    return "cg" if symmetric_positive_definite else "gmres"


def linear_solve(
    A: SparseMatrix,
    b: jax.Array,
    *,
    method: str = "auto",
    rtol: float = 1e-10,
    maxiter: int | None = None,
    restart: int = 50,
    symmetric_positive_definite: bool = False,
) -> jax.Array:
    """Solve ``A x = b`` with a gradient that costs one transposed solve.

    Args:
        A: square :class:`SparseMatrix` (real or complex values, traced).
        b: right-hand side, shape ``(n,)``.
        method: ``'direct'`` (SciPy LU on the host through a callback; factorisations are cached
            so the adjoint and repeated right-hand sides reuse them), ``'cg'`` (SPD only),
            ``'bicgstab'``, ``'gmres'`` (JAX-native, Jacobi-preconditioned, run on the device), or
            ``'auto'`` (see :func:`default_method`).
        rtol: relative residual tolerance of the Krylov methods. A Krylov solve that ends with a
            residual above ``10 * rtol`` raises an error instead of returning a wrong answer.
        maxiter: Krylov iteration cap (default ``10 * n``).
        symmetric_positive_definite: hint used by ``method='auto'``.

    Returns:
        ``x`` of shape ``(n,)``; ``jax.grad`` flows to ``A.data`` and ``b``; ``jax.vmap`` works
        over either (a fixed ``A`` with a batch of ``b`` is factorised once).
    """
    if not isinstance(A, SparseMatrix):
        raise TypeError(f"linear_solve: A must be a SparseMatrix, got {type(A).__name__}")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"linear_solve: A must be square, got shape {A.shape}")
    b = jnp.asarray(b)
    if b.shape != (A.shape[0],):
        raise ValueError(f"linear_solve: b must have shape ({A.shape[0]},), got {b.shape}")
    if method not in METHODS:
        raise ValueError(f"linear_solve: method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = default_method(symmetric_positive_definite)
    maxiter = int(maxiter) if maxiter is not None else 10 * A.shape[0]
    solver = _Solver(A.pattern, method, float(rtol), maxiter, int(restart))
    data = A.data
    dtype = result_dtype(data.dtype, b.dtype)
    if A.transposed:
        # Solve with the transposed matrix: swap the roles through the structural transpose.
        if A.pattern.transpose_perm is None:
            raise ValueError("linear_solve: transposed solves need a structurally symmetric pattern")
        data = data[..., A.pattern.transpose_perm]
    return _solve(solver, data.astype(dtype), b.astype(dtype))
