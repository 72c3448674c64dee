"""Linear solves with adjoint gradients: host direct (SciPy LU) and JAX-native Krylov.

Failures (a singular matrix, non-finite values, a Krylov method that does not converge) raise
:class:`LinearSolveError`, a ``ValueError`` with a one-line message. Inside ``jit`` the error is
raised by a host callback, which JAX wraps in a long ``JaxRuntimeError``; :func:`solver_errors`
(used by ``linear_solve`` called eagerly and by every ``Problem.solve``) turns that back into the
one-line :class:`LinearSolveError`. Wrap your own jitted code, and gradients (the adjoint solve
runs in JAX's backward pass, outside ``Problem.solve``), the same way::

    with fem.solver_errors():
        u = my_jitted_function(theta)
        g = jax.grad(loss)(theta)

Gradients are reverse mode only: the solve is a custom VJP, so ``jax.jvp``, ``jax.jacfwd`` and
``jax.hessian`` do not pass through it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict, deque

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from jax import lax

from ._callback import host_call
from ._sparse import SparseMatrix, SparsityPattern, result_dtype

METHODS = ("auto", "direct", "cg", "bicgstab", "gmres")


# ---------------------------------------------------------------------------- errors


class LinearSolveError(ValueError):
    """A linear solve failed (a ``ValueError``).

    A linear solve failed: a singular matrix, non-finite values, or a Krylov method that did
    not converge (the message gives the iterations actually run and the final residual)."""


_RECENT_ERRORS: deque = deque(maxlen=32)  # messages raised inside callbacks, newest last
_ERROR_LINE = re.compile(r"LinearSolveError: (.+)")


def _fail(message: str):
    """Raise a :class:`LinearSolveError` from host code (possibly inside a JAX callback)."""
    _RECENT_ERRORS.append(message)
    raise LinearSolveError(message)


def _clean_error(err: BaseException) -> LinearSolveError | None:
    """The one-line :class:`LinearSolveError` a wrapped JAX runtime error carries, if any."""
    text = str(err)
    for message in reversed(tuple(_RECENT_ERRORS)):
        if message in text:
            return LinearSolveError(message)
    match = _ERROR_LINE.search(text)
    return LinearSolveError(match.group(1).strip()) if match else None


@contextlib.contextmanager
def solver_errors():
    """Report linear-solver failures inside ``jit`` as :class:`LinearSolveError`.

    Context manager (or decorator) turning a linear-solver failure raised inside ``jit`` into
    its one-line :class:`LinearSolveError` (instead of JAX's ``JaxRuntimeError`` with the host
    traceback). Other errors pass through unchanged.

    ``Problem.solve`` and eager ``linear_solve`` calls already do this; use it around your own
    jitted functions that solve, and block on the result inside it (errors surface on execution)::

        with fem.solver_errors():
            u = jax.block_until_ready(solve(kappa))
    """
    try:
        yield
    except jax.errors.JaxRuntimeError as err:
        clean = _clean_error(err)
        if clean is None:
            raise
        raise clean from None


class _QuietSolverFailures(logging.Filter):
    """JAX logs every exception raised in a callback with its traceback before re-raising it;
    a :class:`LinearSolveError` reaches the user as a one-line error, so that log is dropped."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, LinearSolveError)


logging.getLogger("jax._src.callback").addFilter(_QuietSolverFailures())


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


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


def _pattern_digest(pattern: SparsityPattern) -> bytes:
    """Content digest of a pattern's CSR structure (cached on the pattern; verified on each hit)."""
    digest = getattr(pattern, "_content_digest", None)
    if digest is None:
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(pattern.shape, np.int64).tobytes())
        h.update(np.ascontiguousarray(pattern.indptr, np.int64).data)
        h.update(np.ascontiguousarray(pattern.cols, np.int64).data)
        digest = h.digest()
        pattern._content_digest = digest
    return digest


class _FactorCache:
    """A small LRU cache of LU factorisations keyed by the matrix *content*.

    The key is a digest of the sparsity structure (shape, CSR row pointer, column indices) and of
    the values; on a hit the stored arrays are compared with the new ones, so neither a hash
    collision nor a pattern object re-created (or a recycled ``id``) can return another matrix's
    factorisation. The forward solve and its adjoint (a transposed solve) share one
    factorisation, and so do many right-hand sides with one operator (data-set generation).
    """

    def __init__(self, size: int = 8):
        self.size = int(size)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, pattern: SparsityPattern, data: np.ndarray):
        data = np.ascontiguousarray(data)
        key = (
            _pattern_digest(pattern),
            data.dtype.str,
            hashlib.blake2b(data.data, digest_size=16).digest(),
        )
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and _same_matrix(entry, pattern, data):
                self._cache.move_to_end(key)
                self.hits += 1
                return entry[3]
            self.misses += 1
            lu = _factorise(pattern, data)
            self._cache[key] = (pattern.indptr.copy(), pattern.cols.copy(), data.copy(), lu)
            self._cache.move_to_end(key)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return lu

    def info(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._cache),
                "maxsize": self.size,
                "hits": self.hits,
                "misses": self.misses,
            }

    def clear(self):
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0


def _same_matrix(entry, pattern, data) -> bool:
    indptr, cols, values, _ = entry
    return (
        indptr.shape == pattern.indptr.shape
        and np.array_equal(indptr, pattern.indptr)
        and cols.shape == pattern.cols.shape
        and np.array_equal(cols, pattern.cols)
        and values.shape == data.shape
        and np.array_equal(values, data)
    )


def _factorise(pattern: SparsityPattern, data: np.ndarray):
    n = pattern.shape[0]
    if not np.all(np.isfinite(data)):
        _fail("linear_solve(method='direct'): the matrix contains NaN or inf")
    # CSC arrays of A^T are the CSR arrays of A: factorise A^T without a conversion.
    at = sp.csc_matrix((data, pattern.cols, pattern.indptr), shape=pattern.shape[::-1])
    try:
        lu = spla.splu(at)
    except RuntimeError as err:  # an exactly zero pivot
        _fail(
            f"linear_solve(method='direct'): the matrix is singular (SuperLU: {err}); check the "
            "boundary conditions and that the coefficients are positive"
        )
    # Singular to working precision (e.g. a pure-Neumann Laplacian): a pivot of the partially
    # pivoted LU that is rounding noise relative to the largest entry of its column of the matrix
    # (column-relative, so a badly scaled but regular matrix, e.g. a tiny diffusivity next to
    # unit Dirichlet rows, passes). Pr M Pc = L U: column j of U belongs to column inv(perm_c)[j].
    pivots = np.abs(lu.U.diagonal())
    colmax = np.asarray(abs(at).max(axis=0).todense()).ravel()[np.argsort(lu.perm_c)]
    ratio = pivots / np.where(colmax > 0, colmax, 1.0)
    eps = np.finfo(np.result_type(data.dtype, np.float32)).eps
    worst = int(np.argmin(ratio)) if ratio.size else 0
    if ratio.size and not ratio[worst] > n * eps:
        _fail(
            f"linear_solve(method='direct'): the matrix is singular to working precision (an LU pivot "
            f"is {ratio[worst]:.1e} of its column's largest entry); check the boundary conditions "
            "and that the coefficients are positive"
        )
    return lu


_FACTORS = _FactorCache()


def clear_solver_cache() -> None:
    """Forget cached LU factorisations and reset the counters of :func:`solver_cache_info`."""
    _FACTORS.clear()


def solver_cache_info() -> dict:
    """Statistics of the cache of LU factorisations.

    The LU cache: ``entries`` held, ``maxsize``, and ``hits`` / ``misses`` (factorisations)
    since the last :func:`clear_solver_cache`."""
    return _FACTORS.info()


# SciPy's SuperLU objects track their memory per thread: one made in one thread and used or
# freed in another leaks (about 0.1 MB per factorisation of a 16 x 16 P1 matrix, gigabytes over
# a long MCMC run whose solves XLA calls back from several threads), and concurrent
# factorisations in several threads crash. Every factorisation, solve and release therefore
# runs in one worker thread; the callbacks hand their work to it and wait.
_SUPERLU_THREAD: dict = {}  # process id -> its worker (a forked child makes its own)


def _superlu_thread() -> concurrent.futures.ThreadPoolExecutor:
    pid = os.getpid()
    pool = _SUPERLU_THREAD.get(pid)
    if pool is None:
        with _SUPERLU_LOCK:
            pool = _SUPERLU_THREAD.get(pid)
            if pool is None:
                pool = _SUPERLU_THREAD[pid] = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="pdegen-superlu"
                )
    return pool


_SUPERLU_LOCK = threading.Lock()


def _host_solve(pattern, transpose, data, b):
    """The direct solve of a callback, run in the one SuperLU thread."""
    data = np.array(data)  # own copies: the callback's buffers are not ours to keep
    b = np.array(b)
    return _superlu_thread().submit(_host_solve_here, pattern, transpose, data, b).result()


def _host_solve_here(pattern, transpose, data, b):
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
        lu = _FACTORS.get(pattern, data_flat[0])
        rhs = b_full.astype(np.result_type(lu.L.dtype, b_full.dtype))
        # One factorisation, then one triangular solve per right-hand side: SuperLU's
        # multi-right-hand-side solve is several times slower than this loop.
        for i in range(out_flat.shape[0]):
            out_flat[i] = lu.solve(rhs[i], trans=trans)
    else:
        # A batch of different matrices (a vmapped solve, e.g. particles or chains): each
        # distinct matrix is factorised once, used for all of its right-hand sides (the adjoint
        # solves of m sensors in each of several chains share one factorisation per chain), and
        # freed here, not cached: cached, SuperLU objects made in a compiled MCMC loop leaked
        # about 0.1 MB per factorisation of a 16 x 16 P1 matrix (1.5 GB over 12000 solves).
        owner = np.broadcast_to(
            np.arange(data_flat.shape[0]).reshape(data.shape[:-1]), batch
        ).reshape(-1)
        for j in range(data_flat.shape[0]):
            rows = np.flatnonzero(owner == j)
            if rows.size == 0:
                continue
            lu = _factorise(pattern, np.ascontiguousarray(data_flat[j]))
            rhs = b_full[rows].astype(np.result_type(lu.L.dtype, b_full.dtype))
            for i, r in zip(rows, rhs, strict=True):
                out_flat[i] = lu.solve(r, trans=trans)
            del lu
    if not np.all(np.isfinite(out)):
        what = (
            "the right-hand side contains NaN or inf"
            if not np.all(np.isfinite(b))
            else "the solution overflowed (the matrix is nearly singular)"
        )
        _fail(f"linear_solve(method='direct'): non-finite solution: {what}")
    return out


def _direct_solve(pattern, data, b, transpose):
    dtype = result_dtype(data.dtype, b.dtype)
    return host_call(
        functools.partial(_host_solve, pattern, transpose),
        jax.ShapeDtypeStruct(b.shape, dtype),
        data,
        b,
        vmap_method="expand_dims",
    )


# ---------------------------------------------------------------------------- Krylov (JAX)
#
# Own implementations (rather than jax.scipy.sparse.linalg) so that a failure can report the
# iterations actually run and why it stopped, and so that BiCGSTAB restarts after a breakdown
# instead of returning early. Every method stops on the *true* residual ||b - A x|| <= rtol ||b||:
# when the recursively updated residual says "converged" the true one is checked, and the
# iteration restarts from the current iterate if they disagree.

_CONVERGED, _MAXITER, _BREAKDOWN, _STAGNATED = 0, 1, 2, 3
_MAX_RESTARTS = 20  # CG / BiCGSTAB restarts (after a breakdown or a residual gap)


def _vdot(a, b):
    return jnp.sum(jnp.conj(a) * b)


def _norm(x):
    return jnp.sqrt(jnp.sum(jnp.abs(x) ** 2))


def _restarted(cycle, matvec, b, tol, maxiter, max_restarts):
    """Run ``cycle(x, k) -> (x, k, broke_down)`` from ``x = 0`` until the true residual is below
    ``tol``, ``maxiter`` iterations are spent or ``max_restarts`` cycles end unconverged.

    Returns ``(x, iterations, status)``.
    """
    i32 = jnp.int32

    def cond(state):
        _, k, status, restarts, _ = state
        return (status < 0) & (k < maxiter) & (restarts < max_restarts)

    def body(state):
        x, k, _, restarts, _ = state
        x, k2, broke = cycle(x, k)
        rn = _norm(b - matvec(x))
        status = jnp.where(rn <= tol, _CONVERGED, -1)
        status = jnp.where((status < 0) & ~jnp.isfinite(rn), _BREAKDOWN, status)
        status = jnp.where((status < 0) & (k2 >= maxiter), _MAXITER, status)
        # A cycle that made no progress and did not break down cannot make any either.
        status = jnp.where((status < 0) & (k2 == k) & ~broke, _STAGNATED, status)
        return x, k2.astype(i32), status.astype(i32), restarts + 1, broke

    x0 = jnp.zeros_like(b)
    status0 = jnp.where(_norm(b) <= tol, _CONVERGED, -1).astype(i32)
    init = (x0, jnp.zeros((), i32), status0, jnp.zeros((), i32), jnp.asarray(False))
    x, k, status, _, broke = lax.while_loop(cond, body, init)
    # Out of restarts: a persistent breakdown, or a residual that stopped decreasing.
    status = jnp.where(
        status < 0,
        jnp.where(k >= maxiter, _MAXITER, jnp.where(broke, _BREAKDOWN, _STAGNATED)),
        status,
    )
    return x, k, status


def _cg(matvec, b, precond, tol, maxiter):
    tiny = jnp.finfo(jnp.real(b).dtype).tiny

    def cycle(x, k0):
        r = b - matvec(x)
        z = precond(r)
        rz = jnp.real(_vdot(r, z))

        def cond(s):
            _, r, _, _, k, broke = s
            return (_norm(r) > tol) & (k < maxiter) & ~broke

        def body(s):
            x, r, p, rz, k, _ = s
            Ap = matvec(p)
            pAp = jnp.real(_vdot(p, Ap))
            broke = ~(pAp > tiny)  # not positive definite (or p = 0)
            alpha = jnp.where(broke, 0.0, rz / jnp.where(broke, 1.0, pAp)).astype(rz.dtype)
            x = x + alpha.astype(x.dtype) * p
            r = r - alpha.astype(x.dtype) * Ap
            z = precond(r)
            rz_new = jnp.real(_vdot(r, z))
            beta = jnp.where(rz != 0, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0).astype(rz.dtype)
            p = z + beta.astype(x.dtype) * p
            return x, r, p, rz_new, k + jnp.where(broke, 0, 1).astype(k.dtype), broke

        x, r, _, _, k, broke = lax.while_loop(cond, body, (x, r, z, rz, k0, jnp.asarray(False)))
        return x, k, broke

    return _restarted(cycle, matvec, b, tol, maxiter, _MAX_RESTARTS)


def _bicgstab(matvec, b, precond, tol, maxiter):
    """Right-preconditioned BiCGSTAB (van der Vorst 1992); restarts with a fresh shadow residual
    after a breakdown (``rho`` or ``<rhat, v>`` or ``omega`` vanishing)."""
    eps = jnp.finfo(jnp.real(b).dtype).eps

    def cycle(x, k0):
        r = b - matvec(x)
        rhat = r
        one = jnp.ones((), b.dtype)

        def cond(s):
            r, k, broke = s[1], s[7], s[8]
            return (_norm(r) > tol) & (k < maxiter) & ~broke

        def body(s):
            x, r, p, v, rho_prev, alpha, omega, k, _ = s
            rho = _vdot(rhat, r)
            scale = _norm(rhat) * _norm(r)
            broke = ~(jnp.abs(rho) > eps**2 * scale)
            beta = (rho / jnp.where(broke, one, rho_prev)) * (
                alpha / jnp.where(omega == 0, one, omega)
            )
            p = r + beta * (p - omega * v)
            phat = precond(p)
            v = matvec(phat)
            denom = _vdot(rhat, v)
            broke = broke | ~(jnp.abs(denom) > eps**2 * _norm(rhat) * _norm(v))
            alpha = rho / jnp.where(broke, one, denom)
            s_ = r - alpha * v
            s_done = _norm(s_) <= tol
            shat = precond(s_)
            t = matvec(shat)
            tt = jnp.real(_vdot(t, t))
            omega = jnp.where(
                s_done | ~(tt > 0), 0.0, _vdot(t, s_) / jnp.where(tt > 0, tt, 1.0).astype(b.dtype)
            )
            broke = broke | (~s_done & ~(jnp.abs(omega) > 0))
            x_new = x + alpha * phat + omega * shat
            r_new = s_ - omega * t
            # On a breakdown keep the last good iterate; the driver restarts from it.
            x = jnp.where(broke, x, x_new)
            r = jnp.where(broke, r, r_new)
            return x, r, p, v, rho, alpha, omega, k + jnp.where(broke, 0, 1).astype(k.dtype), broke

        zero = jnp.zeros_like(b)
        init = (x, r, zero, zero, one, one, one, k0, jnp.asarray(False))
        out = lax.while_loop(cond, body, init)
        return out[0], out[7], out[8]

    return _restarted(cycle, matvec, b, tol, maxiter, _MAX_RESTARTS)


def _givens(a, bn):
    """Complex Givens rotation ``(c, s, r)`` with ``[c, s; -conj(s), c] [a; bn] = [r; 0]``
    (``bn`` real and non-negative)."""
    absa = jnp.abs(a)
    denom = jnp.sqrt(absa**2 + bn**2)
    safe_absa = jnp.where(absa > 0, absa, 1.0)
    safe_denom = jnp.where(denom > 0, denom, 1.0)
    phase = jnp.where(absa > 0, a / safe_absa.astype(a.dtype), jnp.ones((), a.dtype))
    c = jnp.where(denom > 0, absa / safe_denom, 1.0).astype(a.dtype)
    s = jnp.where(denom > 0, phase * (bn / safe_denom).astype(a.dtype), 0.0)
    r = phase * denom.astype(a.dtype)
    return c, s, r


def _gmres(matvec, b, precond, tol, maxiter, restart):
    """Right-preconditioned restarted GMRES(m): Arnoldi with classical Gram-Schmidt applied twice
    and Givens rotations, so the true residual norm of every iterate is known."""
    m = int(max(1, min(restart, b.shape[0])))
    n = b.shape[0]
    dtype = b.dtype
    idx = jnp.arange(m + 1, dtype=jnp.int32)

    def cycle(x, k0):
        r = b - matvec(x)
        beta = _norm(r)
        V = jnp.zeros((m + 1, n), dtype).at[0].set(r / jnp.where(beta > 0, beta, 1.0).astype(dtype))
        R = jnp.zeros((m, m), dtype)
        cs = jnp.zeros((m,), dtype)
        sn = jnp.zeros((m,), dtype)
        g = jnp.zeros((m + 1,), dtype).at[0].set(beta.astype(dtype))

        def cond(s):
            _, _, _, _, g, j, k = s
            return (j < m) & (jnp.abs(g[j]) > tol) & (k < maxiter)

        def body(s):
            V, R, cs, sn, g, j, k = s
            w = matvec(precond(V[j]))
            mask = idx <= j
            h = jnp.where(mask, jnp.conj(V) @ w, 0)
            w = w - V.T @ h
            h2 = jnp.where(mask, jnp.conj(V) @ w, 0)
            w = w - V.T @ h2
            h = h + h2
            hn = _norm(w)
            V = V.at[j + 1].set(w / jnp.where(hn > 0, hn, 1.0).astype(dtype))

            def rotate(i, h):
                a, bb = h[i], h[i + 1]
                new_a = cs[i] * a + sn[i] * bb
                new_b = -jnp.conj(sn[i]) * a + cs[i] * bb
                live = i.astype(j.dtype) < j
                return (
                    h.at[i].set(jnp.where(live, new_a, a)).at[i + 1].set(jnp.where(live, new_b, bb))
                )

            h = lax.fori_loop(0, m, rotate, h)
            c, s_, rr = _givens(h[j], hn)  # c is real-valued, held in dtype
            h = h.at[j].set(rr)
            R = R.at[:, j].set(h[:m])
            cs = cs.at[j].set(c)
            sn = sn.at[j].set(s_)
            gj = g[j]
            g = g.at[j].set(c * gj).at[j + 1].set(-jnp.conj(s_) * gj)
            return V, R, cs, sn, g, j + 1, k + 1

        V, R, cs, sn, g, j, k = lax.while_loop(
            cond, body, (V, R, cs, sn, g, jnp.zeros((), jnp.int32), k0)
        )
        live = idx[:m] < j
        Rl = jnp.where(live[:, None] & live[None, :], R, 0) + jnp.diag(
            jnp.where(live, 0, 1).astype(dtype)
        )
        y = jax.scipy.linalg.solve_triangular(Rl, jnp.where(live, g[:m], 0), lower=False)
        x = x + precond(V[:m].T @ y)
        return x, k, jnp.asarray(False)

    return _restarted(cycle, matvec, b, tol, maxiter, maxiter // m + 2)


_REASONS = {
    "cg": (
        "the matrix is not symmetric positive definite (p^T A p <= 0); use method='gmres', "
        "'bicgstab' or 'direct'"
    ),
    "bicgstab": "BiCGSTAB broke down repeatedly; use method='gmres' (or 'cg' if A is SPD) or 'direct'",
    "gmres": "GMRES made no progress; use method='direct'",
}


def _krylov_message(method, status, iters, res, rtol, maxiter) -> str:
    head = f"linear_solve(method={method!r})"
    if not np.isfinite(res):
        return (
            f"{head}: non-finite iterate after {iters} iterations (the matrix or right-hand "
            "side contains NaN or inf, or the iteration diverged); use method='direct'"
        )
    if status == _MAXITER:
        return (
            f"{head} did not converge: relative residual {res:.2e} > rtol={rtol:g} after "
            f"maxiter={maxiter} iterations; increase maxiter, loosen rtol, or use method='direct'"
        )
    if status == _STAGNATED:
        return (
            f"{head} stagnated after {iters} of maxiter={maxiter} iterations at relative residual "
            f"{res:.2e} > rtol={rtol:g} (below what this precision reaches?); loosen rtol or use "
            "method='direct'"
        )
    return (
        f"{head} stopped after {iters} of maxiter={maxiter} iterations at relative residual "
        f"{res:.2e} > rtol={rtol:g}: {_REASONS[method]}"
    )


def _raise_krylov_failure(solver, x, status, iters, res):
    status, iters, res = (
        np.broadcast_to(np.asarray(a), np.shape(status)) for a in (status, iters, res)
    )
    bad = (status != _CONVERGED) | ~np.isfinite(res)
    if np.any(bad):
        i = tuple(np.argwhere(bad)[0])
        _fail(
            _krylov_message(
                solver.method,
                int(status[i]),
                int(iters[i]),
                float(res[i]),
                solver.rtol,
                solver.maxiter,
            )
        )
    return x


def _check_krylov(solver, x, status, iters, res):
    """``x``, after raising on the host if the solve failed. The host is called only then: the
    check is a ``lax.cond`` on "any member failed", also under ``vmap`` (where a plain cond would
    become a select that calls the host, with a device-to-host copy, on every solve)."""

    @jax.custom_batching.custom_vmap
    def check(x, status, iters, res):
        bad = jnp.any(status != _CONVERGED) | ~jnp.all(jnp.isfinite(res))

        def report(x):
            return jax.pure_callback(
                functools.partial(_raise_krylov_failure, solver),
                jax.ShapeDtypeStruct(x.shape, x.dtype),
                x,
                status,
                iters,
                res,
                vmap_method="broadcast_all",
            )

        return lax.cond(bad, report, lambda x: x, x)

    @check.def_vmap
    def check_batched(axis_size, in_batched, x, status, iters, res):
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a))
            for a, batched in zip((x, status, iters, res), in_batched, strict=True)
        ]
        return check(*args), True

    return check(x, status, iters, res)


def _krylov_solve(solver: _Solver, data, b, transpose):
    A = SparseMatrix(data, solver.pattern, transpose)
    dtype = result_dtype(data.dtype, b.dtype)
    b = b.astype(dtype)
    diag = A.diagonal().astype(dtype)
    inv_diag = jnp.where(diag != 0, 1.0 / jnp.where(diag != 0, diag, 1.0), 1.0).astype(dtype)

    def precond(x):
        return inv_diag * x

    def matvec(x):
        return A.matvec(x).astype(dtype)

    bnorm = _norm(b)
    tol = solver.rtol * bnorm
    if solver.method == "cg":
        x, iters, status = _cg(matvec, b, precond, tol, solver.maxiter)
    elif solver.method == "bicgstab":
        x, iters, status = _bicgstab(matvec, b, precond, tol, solver.maxiter)
    else:
        x, iters, status = _gmres(matvec, b, precond, tol, solver.maxiter, solver.restart)
    res = _norm(b - matvec(x)) / jnp.where(bnorm > 0, bnorm, 1.0)
    return _check_krylov(solver, x, status, iters, res)


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
            by matrix content, so the adjoint and repeated right-hand sides reuse them), ``'cg'``
            (SPD only), ``'bicgstab'``, ``'gmres'`` (JAX-native, Jacobi-preconditioned, run on the
            device), or ``'auto'`` (see :func:`default_method`).
        rtol: relative residual tolerance of the Krylov methods: they stop when the true residual
            ``||b - A x|| <= rtol ||b||``, and raise otherwise instead of returning a wrong answer.
        maxiter: Krylov iteration cap (default ``10 * n``).
        restart: GMRES restart length.
        symmetric_positive_definite: hint used by ``method='auto'``.

    Returns:
        ``x`` of shape ``(n,)``; ``jax.grad`` flows to ``A.data`` and ``b``; ``jax.vmap`` works
        over either (a fixed ``A`` with a batch of ``b`` is factorised once).

    Raises:
        LinearSolveError: (a ``ValueError``) for a singular matrix, non-finite values or a Krylov
            method that did not converge. Inside your own ``jit`` it arrives wrapped in a
            ``JaxRuntimeError``; see :func:`solver_errors`.
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
    if not rtol > 0:
        raise ValueError(f"linear_solve: rtol must be > 0, got {rtol}")
    maxiter = int(maxiter) if maxiter is not None else 10 * A.shape[0]
    if maxiter < 1:
        raise ValueError(f"linear_solve: maxiter must be >= 1, got {maxiter}")
    if int(restart) < 1:
        raise ValueError(f"linear_solve: restart must be >= 1, got {restart}")
    solver = _Solver(A.pattern, method, float(rtol), maxiter, int(restart))
    data = A.data
    dtype = result_dtype(data.dtype, b.dtype)
    if A.transposed:
        # Solve with the transposed matrix: swap the roles through the structural transpose.
        if A.pattern.transpose_perm is None:
            raise ValueError(
                "linear_solve: transposed solves need a structurally symmetric pattern"
            )
        data = data[..., A.pattern.transpose_perm]
    # Evaluated now (eagerly, or under an eager grad / vmap), a failure is a one-line
    # LinearSolveError; while staged into a jit nothing runs here and this is a no-op.
    with solver_errors():
        x = _solve(solver, data.astype(dtype), b.astype(dtype))
        if not _is_traced(x):
            x = jax.block_until_ready(x)
    return x
