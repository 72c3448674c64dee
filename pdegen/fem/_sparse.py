"""Sparse matrices with a fixed (host-side) sparsity pattern and traced values."""

from __future__ import annotations

import functools
import hashlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp


def result_dtype(*dtypes):
    """The common dtype of ``dtypes`` by NumPy's rules (complex absorbs real), canonical for JAX.

    Explicit promotion keeps library code valid under ``jax_numpy_dtype_promotion='strict'``.
    """
    return jax.dtypes.canonicalize_dtype(np.result_type(*[np.dtype(d) for d in dtypes]))


def default_float_dtype():
    """JAX's default floating dtype now: ``float64`` with ``jax_enable_x64``, else ``float32``.

    Read at call time (never at import), so entry points may enable float64 after importing pdegen.
    """
    return jax.dtypes.canonicalize_dtype(np.float64)


def as_inexact(x) -> jax.Array:
    """``x`` as a JAX array, integer or boolean values converted to the default float dtype.

    Coefficients and boundary data meet real shape functions: an integer array would truncate
    them (``astype(int)`` of values in ``[0, 1]``) and a boolean one round them.
    """
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(default_float_dtype())


class SparsityPattern:
    """A fixed sparsity pattern in CSR order, held on the host.

    Attributes:
        shape: ``(nrows, ncols)``.
        rows, cols: ``(nnz,)`` row and column index of each stored entry (CSR order).
        indptr: ``(nrows + 1,)`` CSR row pointer.
        transpose_perm: for a structurally symmetric pattern, the permutation ``p`` with
            ``data[p]`` the values of the transposed matrix in this same pattern; else ``None``.
        diagonal: ``(min(shape),)`` position of each diagonal entry, ``-1`` where absent.

    Patterns compare and hash by content (shape and entries; the hash is computed once), so they
    can be static fields of jitted modules and two equal patterns built separately (e.g. the same
    sensors on each draw of a benchmark) share compiled code.
    """

    def __init__(self, rows, cols, shape: tuple[int, int]):
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        nrows, ncols = int(shape[0]), int(shape[1])
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        if rows.size and (np.any(np.diff(rows * ncols + cols) == 0)):
            raise ValueError("SparsityPattern: duplicate (row, col) entries; use from_coo")
        self.shape = (nrows, ncols)
        self.rows = rows
        self.cols = cols
        self.nnz = int(rows.size)
        self.indptr = np.searchsorted(rows, np.arange(nrows + 1)).astype(np.int64)
        linear = rows * ncols + cols
        self._linear = linear
        n = min(nrows, ncols)
        diag_lin = np.arange(n) * ncols + np.arange(n)
        pos = np.searchsorted(linear, diag_lin)
        pos = np.minimum(pos, max(self.nnz - 1, 0))
        present = self.nnz > 0 and True
        self.diagonal = (
            np.where(present & (linear[pos] == diag_lin), pos, -1)
            if self.nnz
            else -np.ones(n, np.int64)
        )
        self.transpose_perm = None
        if nrows == ncols and self.nnz:
            tlin = cols * ncols + rows
            tpos = np.minimum(np.searchsorted(linear, tlin), self.nnz - 1)
            if np.all(linear[tpos] == tlin):
                self.transpose_perm = tpos

    @classmethod
    def from_coo(cls, rows, cols, shape) -> tuple[SparsityPattern, np.ndarray]:
        """Pattern of possibly repeated COO entries, and the map from each COO entry to its slot."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        cols = np.asarray(cols, dtype=np.int64).ravel()
        linear = rows * int(shape[1]) + cols
        unique, inverse = np.unique(linear, return_inverse=True)
        pattern = cls(unique // int(shape[1]), unique % int(shape[1]), shape)
        return pattern, inverse.astype(np.int64)

    def locate(self, rows, cols) -> np.ndarray:
        """Slots of the given (row, col) entries; raises if an entry is not in the pattern."""
        linear = np.asarray(rows, np.int64) * self.shape[1] + np.asarray(cols, np.int64)
        pos = np.minimum(np.searchsorted(self._linear, linear), self.nnz - 1)
        if not np.all(self._linear[pos] == linear):
            raise ValueError("SparsityPattern.locate: some entries are not in the pattern")
        return pos

    def __repr__(self):
        return f"SparsityPattern(shape={self.shape}, nnz={self.nnz})"

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, SparsityPattern):
            return NotImplemented
        return (
            self.shape == other.shape
            and self.nnz == other.nnz
            and hash(self) == hash(other)
            and np.array_equal(self._linear, other._linear)
        )

    def __hash__(self):
        h = self.__dict__.get("_hash")
        if h is None:
            digest = hashlib.blake2b(self._linear.tobytes(), digest_size=16).digest()
            h = self.__dict__["_hash"] = hash((self.shape, self.nnz, digest))
        return h


class SparseMatrix(eqx.Module):
    """A sparse matrix: traced values ``data`` on a static :class:`SparsityPattern`.

    Supports ``A @ x`` for ``x`` of shape ``(ncols,)`` or ``(ncols, k)``, ``A.T``,
    addition of matrices with the same pattern, scaling, ``todense()`` and ``to_scipy()``.
    Works under ``jit``, ``vmap`` (over ``data`` and/or ``x``) and ``grad``.
    """

    data: jax.Array
    pattern: SparsityPattern = eqx.field(static=True)
    transposed: bool = eqx.field(static=True, default=False)

    @property
    def shape(self) -> tuple[int, int]:
        r, c = self.pattern.shape
        return (c, r) if self.transposed else (r, c)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def T(self) -> SparseMatrix:
        return SparseMatrix(self.data, self.pattern, not self.transposed)

    def matvec(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape[0] != self.shape[1]:
            raise ValueError(
                f"SparseMatrix @ x: x has leading dimension {x.shape[0]}, expected {self.shape[1]}"
            )
        p = self.pattern
        rows, cols = (p.cols, p.rows) if self.transposed else (p.rows, p.cols)
        return _matvec(self.data, rows, cols, x, self.shape[0], not self.transposed)

    def __matmul__(self, x):
        return self.matvec(x)

    def __add__(self, other):
        if not isinstance(other, SparseMatrix) or other.pattern != self.pattern:
            return NotImplemented
        if other.transposed != self.transposed:
            raise ValueError("SparseMatrix addition: both operands must have the same orientation")
        dtype = result_dtype(self.data.dtype, other.data.dtype)
        return SparseMatrix(
            self.data.astype(dtype) + other.data.astype(dtype), self.pattern, self.transposed
        )

    def __sub__(self, other):
        return self + other * -1.0

    def __mul__(self, scalar):
        scalar = jnp.asarray(scalar)
        if scalar.ndim != 0:
            raise ValueError("SparseMatrix * s: s must be a scalar")
        dtype = result_dtype(self.data.dtype, scalar.dtype)
        return SparseMatrix(
            self.data.astype(dtype) * scalar.astype(dtype), self.pattern, self.transposed
        )

    __rmul__ = __mul__

    def diagonal(self) -> jax.Array:
        pos = self.pattern.diagonal
        safe = np.maximum(pos, 0)
        return jnp.where(jnp.asarray(pos >= 0), self.data[..., safe], 0)

    def todense(self) -> jax.Array:
        p = self.pattern
        return _todense(self.data, p.rows, p.cols, p.shape, self.transposed)

    def to_scipy(self) -> sp.csr_matrix:
        """The matrix as a SciPy CSR matrix (host; concrete values only)."""
        p = self.pattern
        m = sp.csr_matrix((np.asarray(self.data), p.cols, p.indptr), shape=p.shape)
        return m.T.tocsr() if self.transposed else m


# The products are compiled once per shape (the pattern's indices are arguments, not constants):
# called outside ``jit`` (assembly checks, setup, tests) they would otherwise run as several
# separately compiled primitives each; inside ``jit`` they are inlined as before.
@functools.partial(jax.jit, static_argnums=(4, 5))
def _matvec(data, rows, cols, x, num_rows: int, sorted_rows: bool):
    data = data.reshape(data.shape + (1,) * (x.ndim - 1))
    data = data.astype(result_dtype(data.dtype, x.dtype))
    contrib = data * x[cols].astype(data.dtype)
    return jax.ops.segment_sum(contrib, rows, num_segments=num_rows, indices_are_sorted=sorted_rows)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _todense(data, rows, cols, shape: tuple, transposed: bool):
    out = jnp.zeros(shape, data.dtype).at[rows, cols].add(data)
    return out.T if transposed else out
