"""Priors on the unknown field of an inverse problem, on any mesh.

A :class:`Prior` pairs a score ``score(x, t)`` over a normalised state ``x`` (what the diffusion
sampler moves) with an affine map ``to_field(x)`` to the nodal values of the unknown field on
the user's mesh. Three kinds:

- :func:`matern_prior`: a Matérn Gaussian field on any mesh (the SPDE covariance of
  :func:`pdegen.fem.matern_field`), in its Karhunen-Loève basis, so its noised score is exact;
- :func:`grf_prior`: the DCT Gaussian random field of the benchmark tasks on a structured grid
  (exact score too);
- :func:`learned_prior`: a trained diffusion model over ``g x g`` images carried onto any mesh
  by bilinear interpolation at the mesh nodes (:func:`grid_transfer`).

Gaussian priors expose ``sqrt`` (``z -> field - offset``, white ``z``), which the exact posterior
and MAP use, so every method can be compared with the exact answer on any mesh.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem
from pdegen._dct import dct2, idct2, idct2_variance
from pdegen.models import VPSDE, AbstractSDE, DiffusionModel


class GaussianScore(eqx.Module):
    """Exact score of a zero-mean Gaussian prior on states of ``shape``, for any noise level.

    ``kind="dct"``: one channel ``(1, g, g)``, independent DCT modes with standard deviations
    ``mode_std`` (the GRF of :func:`pdegen.fem.gaussian_random_field`). ``kind="eigen"``: covariance
    ``basis diag(values) basis^T`` (``basis`` with orthonormal columns; directions outside its span
    have zero prior variance).
    """

    sde: AbstractSDE
    mode_std: jax.Array | None
    basis: jax.Array | None
    values: jax.Array | None
    shape: tuple = eqx.field(static=True)
    kind: str = eqx.field(static=True)

    def __call__(self, x, t):
        t = jnp.asarray(t, x.dtype)
        a = self.sde.alpha(t).astype(x.dtype)
        s = self.sde.sigma(t).astype(x.dtype)
        if self.kind == "dct":
            c = dct2(x[0])
            var = a**2 * self.mode_std.astype(x.dtype) ** 2 + s**2
            return idct2(-c / var)[None]
        v = x.reshape(-1)
        U = self.basis.astype(x.dtype)
        p = U.T @ v
        out = -(v - U @ p) / s**2 - U @ (p / (a**2 * self.values.astype(x.dtype) + s**2))
        return out.reshape(self.shape)

    @property
    def z_shape(self) -> tuple:
        """Shape of the white noise ``z`` of :meth:`sqrt`."""
        return tuple(self.mode_std.shape) if self.kind == "dct" else (int(self.values.shape[0]),)

    def variance(self) -> jax.Array:
        """The prior's pointwise variance, of ``shape``: the diagonal of the covariance in closed
        form (no transform per entry)."""
        if self.kind == "dct":
            return idct2_variance(self.mode_std**2)[None]
        return ((self.basis**2) @ jnp.maximum(self.values, 0.0)).reshape(self.shape)

    def sqrt(self, z):
        """A square root of the covariance: ``x = sqrt(z)`` has the prior's law for white ``z``."""
        if self.kind == "dct":
            return idct2(self.mode_std.astype(z.dtype) * z)[None]
        w = jnp.sqrt(jnp.maximum(self.values.astype(z.dtype), 0.0))
        return (self.basis.astype(z.dtype) @ (w * z)).reshape(self.shape)


class Prior(eqx.Module):
    """A prior on the nodal values of a field on a mesh, as a score over a normalised state.

    ``field = transform(offset + scale * T(x[channel]))`` where ``T`` is the identity or a sparse
    grid-to-mesh transfer (:func:`grid_transfer`) and ``transform`` an optional elementwise map
    (``None``: the identity; e.g. :class:`SmoothThreshold` for a two-valued coefficient, whose
    prior is then a *latent* Gaussian field). Build one with :func:`matern_prior`,
    :func:`grf_prior`, :func:`learned_prior` or :func:`threshold_prior`.

    Attributes:
        score: ``score(x, t)`` for one state of ``shape`` (a :class:`GaussianScore` or a
            :class:`pdegen.models.DiffusionModel`).
        sde: the forward process the score belongs to.
        offset: ``(n,)`` the field where the state is zero (the prior mean of a Gaussian prior).
        scale: physical units per unit of the state.
        transfer: ``None`` or a :class:`pdegen.fem.SparseMatrix` ``(n, g * g)``.
        shape: the state's shape; ``channel``: which channel of the state is the field.
        name: a label for tables; ``dtype``: the dtype the sampler runs in.
        transform: ``None`` or an elementwise map applied last (hashable: an equinox module).
    """

    score: Any
    sde: AbstractSDE
    offset: jax.Array
    scale: float = eqx.field(static=True)
    transfer: Any = None
    shape: tuple = eqx.field(static=True, default=())
    channel: int = eqx.field(static=True, default=0)
    name: str = eqx.field(static=True, default="prior")
    dtype: str = eqx.field(static=True, default="float64")
    transform: Any = eqx.field(static=True, default=None)

    @property
    def size(self) -> int:
        """Number of nodal values of the field."""
        return int(self.offset.shape[0])

    @property
    def gaussian(self) -> bool:
        """Whether the prior is Gaussian with an exact score (exact posteriors exist)."""
        return self.latent_gaussian and self.transform is None

    @property
    def latent_gaussian(self) -> bool:
        """Whether the state is Gaussian with an exact score (MAP and pCN in white-noise
        coordinates exist): a Gaussian prior, or one seen through an elementwise ``transform``."""
        return isinstance(self.score, GaussianScore)

    def to_field(self, x) -> jax.Array:
        """Nodal field values ``(n,)`` (the offset's dtype) from one state ``x`` of ``shape``."""
        v = x[self.channel] if len(self.shape) == 3 else x
        v = v.reshape(-1).astype(self.offset.dtype) * self.scale
        if self.transfer is not None:
            v = self.transfer @ v
        v = self.offset + v
        return v if self.transform is None else self.transform(v)

    def from_noise(self, z) -> jax.Array:
        """The field ``(n,)`` for white noise ``z`` of ``z_shape`` (latent-Gaussian priors): for
        white ``z`` it has the prior's law (MAP and pCN work in these coordinates)."""
        if not self.latent_gaussian:
            self._need_gaussian("from_noise")
        return self.to_field(self.score.sqrt(jnp.asarray(z, self.offset.dtype)))

    @property
    def z_shape(self) -> tuple:
        """Shape of the white noise of :meth:`sqrt` / :meth:`from_noise`."""
        if not self.latent_gaussian:
            self._need_gaussian("z_shape")
        return self.score.z_shape

    def sqrt(self, z) -> jax.Array:
        """``field - offset`` for white noise ``z`` of ``z_shape`` (Gaussian priors only): a square
        root of the prior covariance, for the exact posterior and MAP."""
        self._need_gaussian("sqrt")
        x = self.score.sqrt(jnp.asarray(z, self.offset.dtype))
        return self.to_field(x) - self.offset

    def _closed_form_variance(self) -> jax.Array | None:
        """The field's pointwise prior variance ``(n,)`` without one transform per node (Gaussian
        priors on their own nodes), or ``None`` where a grid-to-mesh transfer mixes entries."""
        if not self.gaussian or self.transfer is not None:
            return None
        v = self.score.variance()
        v = v[self.channel] if len(self.shape) == 3 else v
        return v.reshape(-1).astype(self.offset.dtype) * self.scale**2

    def sample(self, key, num_samples: int) -> jax.Array:
        """Prior draws of the field ``(num_samples, n)`` (Gaussian or latent-Gaussian priors)."""
        z = jax.random.normal(key, (int(num_samples),) + self.z_shape, self.offset.dtype)
        return jax.vmap(self.from_noise)(z)

    def _need_gaussian(self, what):
        if not self.gaussian:
            raise ValueError(
                f"Prior.{what}: prior {self.name!r} is not Gaussian (a learned prior has no closed form)"
            )


def _unit_std(cov_diag) -> float:
    return float(np.sqrt(np.mean(np.asarray(cov_diag))))


def matern_prior(
    space: fem.FunctionSpace,
    *,
    length_scale: float,
    sigma: float = 1.0,
    mean=0.0,
    rank: int | None = None,
    sde: AbstractSDE | None = None,
    max_dense: int = 6000,
) -> Prior:
    """The Matérn prior of :func:`pdegen.fem.matern_field` (``nu = 1``, SPDE approach) on ``space``.

    Covariance ``C = sigma^2 4 pi kappa^2 A^-1 M A^-1`` with ``A = kappa^2 M + K`` (``M`` the lumped
    mass, ``K`` the stiffness, natural boundary), ``kappa = sqrt(8) / length_scale``. Its
    eigen-decomposition gives the exact noised score and a square root: all of it (dense, for up
    to ``max_dense`` nodes) or the leading ``rank`` modes (a Lanczos eigensolver with sparse
    solves, for large meshes; the prior is then that truncation, exactly).

    Args:
        space: a P1 / Q1 :class:`pdegen.fem.FunctionSpace` (one value per mesh node).
        length_scale, sigma: correlation length and marginal standard deviation (away from the
            boundary; up to ``2 sigma^2`` on a straight edge, as for ``matern_field``).
        mean: prior mean (scalar or ``(n,)``).
        rank: number of modes to keep (``None``: all).
    """
    import scipy.linalg as sla
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    if not isinstance(space, fem.FunctionSpace):
        raise TypeError(
            f"matern_prior: space must be a pdegen.fem.FunctionSpace, got {type(space).__name__}"
        )
    if space.ndofs != space.mesh.npoints:
        raise ValueError("matern_prior: space must have one dof per mesh node (P1 or Q1)")
    if not length_scale > 0 or not math.isfinite(length_scale):
        raise ValueError(f"matern_prior: length_scale must be > 0, got {length_scale}")
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"matern_prior: sigma must be > 0, got {sigma}")
    n = space.ndofs
    if rank is not None and (int(rank) != rank or not 1 <= rank < n):
        raise ValueError(
            f"matern_prior: rank must be an integer in [1, {n - 1}] or None, got {rank}"
        )
    if rank is None and n > max_dense:
        raise ValueError(
            f"matern_prior: {n} nodes is too many for a dense covariance (max_dense={max_dense}); "
            f"give rank= (e.g. rank=500) for a truncated Karhunen-Loeve prior"
        )
    mean = np.asarray(mean, np.float64)
    if mean.shape not in ((), (n,)):
        raise ValueError(
            f"matern_prior: mean must be a number or nodal values ({n},), got shape {mean.shape}"
        )
    mean = np.broadcast_to(mean, (n,)).copy()
    if not np.all(np.isfinite(mean)):
        raise ValueError("matern_prior: mean contains NaN or inf")
    kappa = math.sqrt(8.0) / length_scale
    c = np.asarray(fem.lumped_mass(space), np.float64)
    A = (fem.stiffness(space).to_scipy() + sp.diags(kappa**2 * c)).tocsc()
    amp2 = sigma**2 * 4.0 * math.pi * kappa**2
    if rank is None:
        Ainv = np.linalg.inv(A.toarray())
        C = amp2 * (Ainv * c[None, :]) @ Ainv.T
        w, V = sla.eigh(0.5 * (C + C.T))
    else:
        lu = spla.splu(A)
        op = spla.LinearOperator(
            (n, n), matvec=lambda v: amp2 * lu.solve(c * lu.solve(np.ravel(v))), dtype=np.float64
        )
        w, V = spla.eigsh(op, k=int(rank), which="LM")
    keep = w > 1e-12 * w.max()
    w, V = w[keep], V[:, keep]
    var = np.sum(V**2 * w, axis=1)
    scale = _unit_std(var)
    sde = VPSDE() if sde is None else sde
    score = GaussianScore(sde, None, jnp.asarray(V), jnp.asarray(w / scale**2), (n,), "eigen")
    return Prior(
        score,
        sde,
        jnp.asarray(mean),
        scale,
        None,
        (n,),
        0,
        name=f"Matern(l={length_scale:g}, sigma={sigma:g})",
        dtype="float64",
    )


def grf_prior(
    mesh: fem.Mesh, *, alpha: float = 2.0, tau: float = 3.0, sde: AbstractSDE | None = None
) -> Prior:
    """The benchmark tasks' Gaussian random field as a prior on a grid mesh (exact score).

    The DCT Gaussian random field of the benchmark tasks (:func:`pdegen.fem.gaussian_random_field`)
    on a structured grid mesh (:func:`pdegen.fem.unit_square` / ``rectangle``), with its exact score."""
    if not isinstance(mesh, fem.Mesh):
        raise TypeError(f"grf_prior: mesh must be a pdegen.fem.Mesh, got {type(mesh).__name__}")
    if mesh.grid_shape is None:
        raise ValueError(
            "grf_prior: the DCT field lives on a structured grid (fem.unit_square / fem.rectangle); "
            "use matern_prior on other meshes"
        )
    std = fem.grf_mode_std(mesh.grid_shape, alpha=alpha, tau=tau)
    scale = float(np.sqrt(np.sum(std**2) / std.size))
    sde = VPSDE() if sde is None else sde
    shape = (1,) + tuple(mesh.grid_shape)
    score = GaussianScore(sde, jnp.asarray(std / scale), None, None, shape, "dct")
    return Prior(
        score,
        sde,
        jnp.zeros(mesh.npoints),
        scale,
        None,
        shape,
        0,
        name=f"GRF(alpha={alpha:g}, tau={tau:g})",
        dtype="float64",
    )


def _image_shape(grid) -> tuple[int, int]:
    """``(ny, nx)`` from ``g`` (a square image) or ``(ny, nx)``."""
    return (int(grid), int(grid)) if np.ndim(grid) == 0 else tuple(int(g) for g in grid)


def grid_transfer(grid: int | tuple, mesh: fem.Mesh, *, box=None) -> fem.SparseMatrix:
    """Bilinear interpolation from an image to the nodes of a mesh, as a sparse matrix.

    Bilinear interpolation from a ``(ny, nx)`` image on ``box = (x0, x1, y0, y1)`` to the mesh
    nodes: a sparse ``(npoints, ny * nx)`` matrix (row 0 of the image at ``y0``, column 0 at ``x0``,
    the node order of :func:`pdegen.fem.rectangle`). ``box`` defaults to the mesh's bounding box.

    Raises:
        ValueError: if a mesh node lies outside ``box`` (the image does not cover the mesh).
    """
    ny, nx = _image_shape(grid)
    if min(ny, nx) < 2:
        raise ValueError(f"grid_transfer: the image needs at least 2 x 2 pixels, got {(ny, nx)}")
    pts = np.asarray(mesh.points, np.float64)
    lo, hi = pts.min(0), pts.max(0)
    if box is None:
        box = (lo[0], hi[0], lo[1], hi[1])
    x0, x1, y0, y1 = (float(b) for b in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"grid_transfer: box must have x1 > x0 and y1 > y0, got {box}")
    tol = 1e-9 * max(x1 - x0, y1 - y0)
    outside = (
        (pts[:, 0] < x0 - tol)
        | (pts[:, 0] > x1 + tol)
        | (pts[:, 1] < y0 - tol)
        | (pts[:, 1] > y1 + tol)
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"grid_transfer: the prior's field on box {tuple(box)} does not cover the mesh: "
            f"{int(outside.sum())} nodes lie outside it, e.g. node {i} at {pts[i].tolist()}"
        )
    fx = np.clip((pts[:, 0] - x0) / (x1 - x0) * (nx - 1), 0, nx - 1)
    fy = np.clip((pts[:, 1] - y0) / (y1 - y0) * (ny - 1), 0, ny - 1)
    i0 = np.minimum(np.floor(fx).astype(np.int64), nx - 2)
    j0 = np.minimum(np.floor(fy).astype(np.int64), ny - 2)
    tx, ty = fx - i0, fy - j0
    rows = np.repeat(np.arange(pts.shape[0]), 4)
    cols = np.stack(
        [j0 * nx + i0, j0 * nx + i0 + 1, (j0 + 1) * nx + i0, (j0 + 1) * nx + i0 + 1], 1
    ).ravel()
    vals = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], 1).ravel()
    pattern, slots = fem.SparsityPattern.from_coo(rows, cols, (pts.shape[0], ny * nx))
    data = np.zeros(pattern.nnz)
    np.add.at(data, slots, vals)
    return fem.SparseMatrix(jnp.asarray(data), pattern)


def unwrap_model(model, name, caller: str):
    """``(DiffusionModel, name)`` from a model or a loaded checkpoint (whose metadata may name it)."""
    if hasattr(model, "model") and hasattr(model, "metadata"):  # a Checkpoint
        name = name or model.metadata.get("name")
        model = model.model
    if not isinstance(model, DiffusionModel):
        raise TypeError(
            f"{caller}: model must be a DiffusionModel or a Checkpoint, got {type(model).__name__}"
        )
    return model, name


def square_pixel_box(mesh: fem.Mesh, grid) -> tuple:
    """``(x0, x1, y0, y1)``: the smallest box whose ``(ny, nx)`` image has square pixels and
    holds the mesh, anchored at the lower-left corner of its bounding box (a square mesh: the
    bounding box itself)."""
    ny, nx = _image_shape(grid)
    pts = np.asarray(mesh.points, np.float64)
    lo, hi = pts.min(0), pts.max(0)
    step = max((hi[0] - lo[0]) / (nx - 1), (hi[1] - lo[1]) / (ny - 1))
    return (
        float(lo[0]),
        float(lo[0] + step * (nx - 1)),
        float(lo[1]),
        float(lo[1] + step * (ny - 1)),
    )


def learned_prior(
    model,
    mesh: fem.Mesh,
    *,
    channel: str | int = 0,
    box=None,
    name: str | None = None,
    grid: int | None = None,
) -> Prior:
    """A trained diffusion or flow model over images as a prior on the nodal values of a mesh field.

    A trained diffusion model over ``(C, g, g)`` images as a prior on the nodal values of a
    field on ``mesh``: channel ``channel`` of the image, interpolated bilinearly at the mesh nodes
    (:func:`grid_transfer`; the image covers ``box``, by default the smallest box with square
    pixels that holds the mesh, anchored at its lower-left corner: a non-square domain uses the
    part of the image inside it and the prior's correlations keep their shape).

    Args:
        model: a :class:`pdegen.models.DiffusionModel` or a loaded checkpoint
            (e.g. ``models.load_pretrained("poisson-joint-32")``).
        channel: index of the channel that is the unknown field (or ``"a"`` / ``"u"`` for a joint
            ``(a, u)`` model).
        grid: the image grid (``grid x grid``) of a resolution-free model such as ``grf-a``
            (default: the grid it was trained on); other models run on their own grid only.
    """
    model, name = unwrap_model(model, name, "learned_prior")
    if grid is not None:
        model = model.at_shape((model.data_shape[0], int(grid), int(grid)))
    shape = tuple(model.data_shape)
    if len(shape) != 3:
        raise ValueError(
            f"learned_prior: the model generates examples of shape {shape}; expected images (C, ny, nx)"
        )
    if isinstance(channel, str):
        names = ("a", "u")[: shape[0]]
        if channel not in names:
            raise ValueError(
                f"learned_prior: channel must be one of {names} or an index, got {channel!r}"
            )
        channel = names.index(channel)
    if not 0 <= int(channel) < shape[0]:
        raise ValueError(f"learned_prior: channel must lie in [0, {shape[0] - 1}], got {channel}")
    channel = int(channel)
    if box is None:
        box = square_pixel_box(mesh, shape[1:])
    T = grid_transfer(shape[1:], mesh, box=box)
    mean = float(np.asarray(model.normalisation.mean)[channel])
    std = float(np.asarray(model.normalisation.std)[channel])
    dtype = str(jnp.dtype(getattr(model.network, "dtype", "float32")))
    return Prior(
        model,
        model.sde,
        jnp.full(mesh.npoints, mean),
        std,
        T,
        shape,
        channel,
        name=name or f"learned {shape}",
        dtype=dtype,
    )
