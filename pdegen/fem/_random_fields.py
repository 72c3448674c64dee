"""Gaussian random fields: the DCT generator of the FNO / DiffusionPDE data sets on grids,
and Matérn fields on any mesh through the SPDE approach."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._dct import idct2
from ._assembly import lumped_mass, stiffness
from ._mesh import Mesh
from ._solve import linear_solve
from ._space import FunctionSpace
from ._sparse import SparseMatrix, default_float_dtype


def _grid_shape(shape_or_mesh) -> tuple[tuple[int, int], Mesh | None]:
    if isinstance(shape_or_mesh, Mesh):
        if shape_or_mesh.grid_shape is None:
            raise ValueError(
                "gaussian_random_field: the mesh must be a structured grid (fem.unit_square/rectangle)"
            )
        return shape_or_mesh.grid_shape, shape_or_mesh
    shape = tuple(int(s) for s in shape_or_mesh)
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(
            f"gaussian_random_field: shape must be (ny, nx) with both >= 2, got {shape_or_mesh}"
        )
    return shape, None


def _check_grf_parameters(alpha, tau):
    if not alpha > 0:
        raise ValueError(f"gaussian_random_field: alpha must be > 0, got {alpha}")
    if not tau > 0:
        raise ValueError(f"gaussian_random_field: tau must be > 0, got {tau}")


def grf_mode_std(shape, *, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """Standard deviation of each orthonormal-DCT coefficient of the field, shape ``(ny, nx)``.

    ``tau^(alpha-1) (pi^2 (k1^2 + k2^2) + tau^2)^(-alpha/2)`` times ``sqrt(ny nx)``, with the
    constant mode set to zero (zero-mean fields), as in the FNO generator ``GRF.m``.
    """
    (ny, nx), _ = _grid_shape(shape)
    _check_grf_parameters(alpha, tau)
    k1, k2 = np.meshgrid(np.arange(nx), np.arange(ny))
    coef = tau ** (alpha - 1) * (np.pi**2 * (k1**2 + k2**2) + tau**2) ** (-alpha / 2)
    coef[0, 0] = 0.0
    return math.sqrt(nx * ny) * coef


def grf_from_white_noise(xi, *, alpha: float = 2.0, tau: float = 3.0) -> jax.Array:
    """The linear map from white noise ``xi`` (``(ny, nx)``) to a GRF image: ``idct2(std * xi)``.

    Being linear, it is the square root of the GRF covariance (useful for exact posteriors).
    """
    xi = jnp.asarray(xi)
    std = jnp.asarray(grf_mode_std(xi.shape, alpha=alpha, tau=tau), dtype=xi.dtype)
    return idct2(std * xi)


def gaussian_random_field(
    shape_or_mesh, *, key, alpha: float = 2.0, tau: float = 3.0, dtype=None
) -> jax.Array:
    """A zero-mean Gaussian random field with covariance ``~ (-Laplacian + tau^2)^(-alpha)``.

    The DCT generator of the FNO and DiffusionPDE data sets (Neumann cosine modes).

    Args:
        shape_or_mesh: ``(ny, nx)`` for an image, or a structured :class:`Mesh` for nodal values in
            the mesh's node order.
        key: a PRNG key, keyword-only (``vmap`` over keys for batches).
        alpha: smoothness exponent of the covariance (DiffusionPDE: 2).
        tau: inverse length scale (DiffusionPDE: 3).
        dtype: floating dtype (default: JAX's default float).

    Returns:
        An ``(ny, nx)`` image, or ``(npoints,)`` nodal values when given a mesh.
    """
    shape, mesh = _grid_shape(shape_or_mesh)
    dtype = dtype or default_float_dtype()
    xi = jax.random.normal(key, shape, dtype)
    field = grf_from_white_noise(xi, alpha=alpha, tau=tau)
    return mesh.from_image(field) if mesh is not None else field


def matern_field(
    space: FunctionSpace, *, key, length_scale: float, sigma: float = 1.0
) -> jax.Array:
    """A Matérn field (smoothness ``nu = 1``) on any mesh, by the SPDE approach.

    Solves ``(kappa^2 - Laplacian) u = W`` with ``kappa = sqrt(8) / length_scale``, natural
    (Neumann) boundary conditions and a lumped mass matrix (Lindgren, Rue and Lindström 2011), then
    scales to marginal variance ``sigma^2`` with the whole-plane constant ``1 / (4 pi kappa^2)``.
    Near the boundary the variance is inflated (up to 2x on a straight edge), as is usual for
    this construction. ``vmap`` over keys factorises the operator once.

    ``key`` (keyword-only) is the PRNG key.

    Returns:
        Nodal values, shape ``(space.ndofs,)``.
    """
    if not isinstance(space, FunctionSpace):
        raise TypeError(f"matern_field: space must be a FunctionSpace, got {type(space).__name__}")
    if not length_scale > 0:
        raise ValueError(f"matern_field: length_scale must be > 0, got {length_scale}")
    if not sigma > 0:
        raise ValueError(f"matern_field: sigma must be > 0, got {sigma}")
    kappa = math.sqrt(8.0) / length_scale
    c = lumped_mass(space)
    if not isinstance(c, jax.core.Tracer) and not bool(jnp.all(c > 0)):
        raise ValueError(
            f"matern_field: the lumped mass of a {space.element} space has entries <= 0 (its "
            "vertex shape functions integrate to zero or less); use a P1, Q1 or Q2 space"
        )
    K = stiffness(space)
    diag = jnp.zeros_like(K.data).at[space.pattern.diagonal].set(c)
    A = SparseMatrix(K.data + kappa**2 * diag, space.pattern)
    z = jax.random.normal(key, (space.ndofs,), c.dtype)
    u = linear_solve(A, jnp.sqrt(c) * z, symmetric_positive_definite=True)
    return sigma * math.sqrt(4.0 * math.pi) * kappa * u
