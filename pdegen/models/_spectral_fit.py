"""Fit the Wiener head of a :class:`SpectralDenoiser` to the data's spectrum.

The head is the best linear denoiser of the data (for any stationary law, Gaussian or not): it
needs only the second moments of the cosine modes. :func:`fit_spectral_density` estimates them
from the training fields and fits the density network by the Whittle likelihood, in which every
mode counts alike. The denoising loss weighs a mode by its variance, so on its own it leaves the
smallest, high-wavenumber modes loosely fitted, and those set the density's continuation to finer
grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.fft
from jax import Array

from ._model import DiffusionModel
from ._spectral import SpectralDenoiser


def mode_covariance(fields: Array | np.ndarray) -> np.ndarray:
    """Second moments of the orthonormal cosine modes of ``(N, C, H, W)`` fields, per unit area.

    Returns ``(H, W, C, C)``, the quantity :meth:`SpectralDenoiser.spectral_density` models."""
    x = np.asarray(fields, np.float64)
    if x.ndim != 4:
        raise ValueError(f"mode_covariance expects fields of shape (N, C, H, W), got {x.shape}")
    z = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    h, w = x.shape[-2:]
    return np.einsum("nihw,njhw->hwij", z, z) / (x.shape[0] * h * w)


def whittle_divergence(net: SpectralDenoiser, covariances: Sequence[Array], floor: float) -> Array:
    """Whittle divergence of the head's density from the mode covariances ``M`` (mean over modes).

    Per mode ``log det S + tr(S^-1 M) - log det M - C``: twice the Gaussian KL from the data's
    modes to the head's, zero only at ``S = M``; ``M`` is floored by ``floor`` per pixel."""
    total, count = 0.0, 0
    c = net.in_channels
    eye = jnp.eye(c, dtype=covariances[0].dtype)
    for M in covariances:
        h, w = M.shape[:2]
        ky, kx = jnp.meshgrid(
            jnp.arange(h, dtype=M.dtype), jnp.arange(w, dtype=M.dtype), indexing="ij"
        )
        L = net._factor(ky, kx).astype(M.dtype).reshape(-1, c, c)
        Mf = M.reshape(-1, c, c) + (floor / (h * w)) * eye[None]
        A = jax.scipy.linalg.solve_triangular(L, Mf, lower=True)  # L^-1 M
        B = jax.scipy.linalg.solve_triangular(L, jnp.swapaxes(A, -1, -2), lower=True)
        logdet_S = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
        _, logdet_M = jnp.linalg.slogdet(Mf)
        trace = jnp.trace(B, axis1=-2, axis2=-1)
        total = total + jnp.sum(logdet_S + trace - logdet_M - c)
        count += h * w
    return total / count


def fit_spectral_density(
    model: DiffusionModel,
    data: Array | np.ndarray | Sequence[Array | np.ndarray],
    *,
    steps: int = 3000,
    learning_rate: float = 1e-2,
    floor: float = 1e-10,
    progress: bool = False,
) -> tuple[DiffusionModel, float]:
    """Fit the Wiener head of ``model``'s :class:`SpectralDenoiser` to the data's mode covariances.

    ``data``: fields ``(N, C, H, W)`` in physical units, or a list of such sets on different grids
    (as for :func:`train`); they are normalised with ``model.normalisation``. The density network
    is fitted by Adam on :func:`whittle_divergence` (``floor``: pixel-level variance added to every
    mode, far below any noise level the model is used at, so that modes with no energy, such as the
    mean of a zero-mean field, stay finite). Returns the model, whose network has
    ``trained_modes`` set to the finest grid's highest mode (the density is then held fixed in
    training and continued as a power law on finer grids), and the final divergence.
    """
    net = model.network
    if not isinstance(net, SpectralDenoiser):
        raise TypeError(
            f"fit_spectral_density needs a model with a SpectralDenoiser network, got {type(net).__name__}"
        )
    if int(steps) < 1 or not learning_rate > 0 or not floor > 0:
        raise ValueError(
            "fit_spectral_density needs steps >= 1, learning_rate > 0 and floor > 0; got "
            f"{steps}, {learning_rate}, {floor}"
        )
    sets = list(data) if isinstance(data, (list, tuple)) else [data]
    if not sets:
        raise ValueError("fit_spectral_density needs at least one data set")
    covs, top = [], 0
    for fields in sets:
        fields = np.asarray(fields)
        if fields.ndim != 4 or fields.shape[1] != net.in_channels or fields.shape[0] < 2:
            raise ValueError(
                f"fit_spectral_density expects data of shape (N >= 2, {net.in_channels}, H, W), "
                f"got {fields.shape}"
            )
        x = np.asarray(jax.vmap(model.normalisation.normalise)(jnp.asarray(fields)), np.float64)
        covs.append(jnp.asarray(mode_covariance(x), jnp.dtype(net.dtype)))
        top = max(top, *fields.shape[-2:])
    if not np.all([np.isfinite(np.asarray(M)).all() for M in covs]):
        raise ValueError("fit_spectral_density: the data have non-finite values")
    free = net.with_config(trained_modes=None)
    params, static = eqx.partition(free.density, eqx.is_inexact_array)

    def loss(p):
        return whittle_divergence(
            eqx.tree_at(lambda n: n.density, free, eqx.combine(p, static)), covs, floor
        )

    schedule = optax.cosine_decay_schedule(learning_rate, steps)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        with jax.numpy_dtype_promotion("standard"):  # optax's step count is an integer
            updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="fit spectral density")
    for _ in it:
        params, state, _ = step(params, state)
    value = float(loss(params))
    if not np.isfinite(value):
        raise FloatingPointError("fit_spectral_density: the Whittle divergence is not finite")
    fitted = eqx.tree_at(lambda n: n.density, free, eqx.combine(params, static))
    fitted = fitted.with_config(trained_modes=top - 1)
    return eqx.tree_at(lambda m: m.network, model, fitted), value
