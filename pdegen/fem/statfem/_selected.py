"""Sparse Cholesky factors and selected inversion (Takahashi recursions) on the host.

For a sparse symmetric positive definite ``Q`` the factor ``P Q P^T = L D L^T`` (unit lower ``L``)
comes from SciPy's SuperLU in symmetric mode (a fill-reducing ordering of ``Q + Q^T`` and no
pivoting off the diagonal), so only PyPI wheels are needed. The Takahashi recursions

    Z = D^{-1} L^{-1} + (I - L^T) Z

give the entries of ``Z = (P Q P^T)^{-1}`` on the pattern of ``L + L^T`` (which contains the pattern
of ``Q``), column by column from the last: the pointwise variance ``diag(Q^{-1})`` and the traces
``tr(Q^{-1} dQ)`` of a log-determinant gradient without ever forming ``Q^{-1}``. The recursion is
compiled with numba when it is installed (seconds for 65k unknowns); otherwise it runs as plain
Python (small problems only).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

try:  # pragma: no cover - depends on the environment
    import numba as _numba
except ImportError:  # pragma: no cover
    _numba = None


def _takahashi_python(indptr, indices, lvals, dinv):
    """Entries of ``Z`` on the strictly lower pattern of ``L`` (CSC, rows sorted), its diagonal and
    whether the pattern was closed under fill (it is for a symbolic Cholesky factor).

    ``indptr``/``indices``/``lvals``: the strictly lower triangle of ``L`` in CSC form.
    """
    n = dinv.shape[0]
    zvals = np.zeros_like(lvals)
    zdiag = np.zeros(n, dtype=lvals.dtype)
    for j in range(n - 1, -1, -1):
        start, stop = indptr[j], indptr[j + 1]
        c = stop - start
        if c == 0:
            zdiag[j] = dinv[j]
            continue
        rows = indices[start:stop]
        lj = lvals[start:stop]
        # z[a] = Z[rows[a], j] = - sum_b Z[rows[a], rows[b]] L[rows[b], j]
        z = np.zeros(c, dtype=lvals.dtype)
        for b in range(c):
            k = rows[b]
            lk = lj[b]
            # diagonal entry Z[k, k]
            z[b] -= zdiag[k] * lk
            # entries Z[rows[a], k] for a > b live in column k of Z at rows rows[a] (> k)
            kstart, kstop = indptr[k], indptr[k + 1]
            p = kstart
            for a in range(b + 1, c):
                r = rows[a]
                # rows are sorted in both lists: advance p to r
                while p < kstop and indices[p] < r:
                    p += 1
                if p == kstop or indices[p] != r:
                    return zvals, zdiag, False  # the pattern is not closed under fill
                zk = zvals[p]
                z[a] -= zk * lk
                z[b] -= zk * lj[a]
        zvals[start:stop] = z
        zdiag[j] = dinv[j] - np.dot(lj, z)
    return zvals, zdiag, True


_takahashi = (
    _takahashi_python
    if _numba is None
    else _numba.njit(cache=False, nogil=True)(_takahashi_python)  # pragma: no cover
)


class SparseCholesky:
    """``P Q P^T = L D L^T`` of a sparse SPD matrix ``Q`` (SciPy SuperLU in symmetric mode).

    Attributes:
        perm: ``perm[i]`` is the row of ``Q`` in position ``i`` of the factor.
        L: unit lower triangular factor (CSC), ``D``: the pivots (all > 0 for SPD ``Q``).
    """

    def __init__(self, Q):
        Q = sp.csc_matrix(Q, dtype=np.float64)  # float32 assembly: factorised and solved in float64
        n = Q.shape[0]
        if Q.shape != (n, n):
            raise ValueError(f"SparseCholesky: Q must be square, got {Q.shape}")
        lu = spla.splu(
            Q,
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options=dict(SymmetricMode=True),
        )
        if not np.array_equal(lu.perm_r, lu.perm_c):
            raise ValueError("SparseCholesky: Q is not symmetric positive definite (pivoting)")
        d = lu.U.diagonal()
        if not np.all(d > 0) or not np.all(np.isfinite(d)):
            raise ValueError("SparseCholesky: Q is not symmetric positive definite")
        # SuperLU: Pr Q Pc = L U with perm_r[i] the new row of old row i
        inv = np.asarray(lu.perm_c)
        self.perm = np.empty(n, np.int64)
        self.perm[inv] = np.arange(n)
        self.n = n
        self.D = d
        L = sp.csc_matrix(lu.L)
        L.sort_indices()
        self.L = L
        self._lu = lu

    def logdet(self) -> float:
        """``log det Q``."""
        return float(np.sum(np.log(self.D)))

    def solve(self, b):
        return self._lu.solve(np.asarray(b, np.float64))

    def sample(self, z):
        """``Q^{-1/2}``-type draws: ``x`` with ``x ~ N(0, Q^{-1})`` for ``z ~ N(0, I)`` (columns)."""
        z = np.asarray(z, np.float64)
        w = z / np.sqrt(self.D).reshape((-1,) + (1,) * (z.ndim - 1))
        v = spla.spsolve_triangular(self.L.T.tocsr(), w, lower=False, unit_diagonal=True)
        out = np.empty_like(v)
        out[self.perm] = v
        return out

    def _recursion(self):
        low = sp.tril(self.L, k=-1, format="csc")
        low.sort_indices()
        zvals, zdiag, closed = _takahashi(
            low.indptr.astype(np.int64),
            low.indices.astype(np.int64),
            low.data.astype(np.float64),
            1.0 / self.D,
        )
        if not closed:
            raise ValueError(
                "SparseCholesky: the factor's pattern is not closed under fill (dropped entries)"
            )
        return low, zvals, zdiag

    def selected_inverse(self):
        """``Z = Q^{-1}`` on the pattern of ``L + L^T`` in the original ordering, as a symmetric
        CSC matrix (every entry of ``Q``'s pattern is present)."""
        low, zvals, zdiag = self._recursion()
        Zlow = sp.csc_matrix((zvals, low.indices, low.indptr), shape=low.shape)
        Z = Zlow + Zlow.T + sp.diags(zdiag)
        Z = sp.csc_matrix(Z)
        # back to the original ordering: Z_orig[perm[i], perm[j]] = Z[i, j]
        P = sp.csc_matrix((np.ones(self.n), (self.perm, np.arange(self.n))), shape=Z.shape)
        return sp.csc_matrix(P @ Z @ P.T)

    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})``."""
        _, _, zdiag = self._recursion()
        out = np.empty(self.n)
        out[self.perm] = zdiag
        return out
