"""How good a denoiser is: its denoising loss against the exact denoiser of a Gaussian law.

Where the data are Gaussian, :class:`GaussianDenoiser` is ``E[x0 | x0 + s z]`` in closed form: the
floor of the denoising score-matching loss that no network can beat. :func:`denoising_loss`
measures a model's loss and the floor on the same noise draws; their ratio minus one (the
*excess loss*) is the training metric of the shipped priors.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import Array

from .._dct import dct2, idct2
from ._model import DiffusionModel


class GaussianDenoiser(eqx.Module):
    """Exact denoiser ``E[x0 | x0 + s z]`` of ``x0 ~ N(mean, C)`` for examples of ``shape``.

    Build with :meth:`cosine` (channels independent, each diagonal in the orthonormal 2-D cosine
    basis, as the grid GRFs of :mod:`pdegen.fem`) or :meth:`eigen` (``C = U diag(values) U^T``,
    ``U`` with orthonormal columns; no variance outside its span). Call ``denoiser(x, s)`` on one
    example ``x = x0 + s z`` (``x_t / alpha`` of a diffusion).
    """

    mean: Array
    mode_std: Array | None
    basis: Array | None
    values: Array | None

    @classmethod
    def cosine(cls, mode_std, mean=0.0) -> GaussianDenoiser:
        """``mode_std`` ``(C, H, W)``: standard deviation of each orthonormal-DCT coefficient."""
        mode_std = jnp.asarray(mode_std)
        if mode_std.ndim != 3:
            raise ValueError(
                f"GaussianDenoiser.cosine: mode_std must be (C, H, W), got {mode_std.shape}"
            )
        mean = jnp.broadcast_to(_channel_mean(mean, mode_std.shape), mode_std.shape)
        return cls(mean, mode_std, None, None)

    @classmethod
    def eigen(cls, basis, values, mean) -> GaussianDenoiser:
        """``basis`` ``(D, r)`` orthonormal columns, ``values`` ``(r,)``, ``mean`` of the example shape."""
        basis, values, mean = jnp.asarray(basis), jnp.asarray(values), jnp.asarray(mean)
        if basis.ndim != 2 or values.shape != (basis.shape[1],) or mean.size != basis.shape[0]:
            raise ValueError(
                f"GaussianDenoiser.eigen: need basis (D, r), values (r,), mean of size D; got "
                f"{basis.shape}, {values.shape}, {mean.shape}"
            )
        return cls(mean, None, basis, values)

    @property
    def shape(self) -> tuple:
        return tuple(self.mean.shape)

    def __call__(self, x: Array, s) -> Array:
        dt = x.dtype
        s2 = jnp.asarray(s, dt) ** 2
        v = x - self.mean.astype(dt)
        if self.mode_std is not None:
            var = self.mode_std.astype(dt) ** 2
            c = dct2(v)
            out = idct2(c * var / (var + s2))
        else:
            U = self.basis.astype(dt)
            lam = self.values.astype(dt)
            p = U.T @ v.reshape(-1)
            out = (U @ (p * lam / (lam + s2))).reshape(v.shape)
        return self.mean.astype(dt) + out


def _channel_mean(mean, shape):
    mean = jnp.asarray(mean, jnp.result_type(float))
    if mean.ndim == 1:
        return mean.reshape(-1, *([1] * (len(shape) - 1)))
    return mean


def denoising_loss(
    model: DiffusionModel,
    data,
    *,
    key: Array,
    reference: GaussianDenoiser | None = None,
    num_draws: int = 1024,
    batch_size: int = 64,
    project=None,
) -> dict:
    """A model's denoising loss, optionally beside the floor of an exact denoiser.

    The model's EDM-weighted denoising loss on ``data`` (physical units, ``(N, C, H, W)``) over
    its own training noise distribution; with ``reference`` (in the model's normalised units) the
    floor on the same draws and the excess ``loss / floor - 1``. ``project``: a map applied to each
    denoised estimate (one example, normalised units) before the loss, e.g. a projection onto a
    constraint the data satisfy (:class:`pdegen.inverse.ConsistentScore`'s ``project``).

    Returns ``{"loss", "floor", "excess"}`` (the last two ``nan`` without a reference). A
    resolution-free model is evaluated at the data's grid.
    """
    data = np.asarray(data)
    model = model.at_shape(data.shape[1:]) if model.resolution_free else model
    model.check_compatible(data.shape, name="data")
    if num_draws < 1:
        raise ValueError(f"denoising_loss: num_draws must be >= 1, got {num_draws}")
    dt = jnp.dtype(getattr(model.network, "dtype", "float32"))
    kt, ki, kz = jr.split(key, 3)
    t = jax.vmap(lambda k: model.sde.sample_training_time(key=k, dtype=jnp.float32))(
        jr.split(kt, num_draws)
    )
    idx = np.asarray(jr.randint(ki, (num_draws,), 0, data.shape[0]))
    sd2 = model.sigma_data**2

    # model, reference and project are arguments, not constants folded into the program
    @eqx.filter_jit
    def losses(model, reference, project, x0, t, z):
        x0 = jax.vmap(model.normalisation.normalise)(x0)
        a = jax.vmap(model.sde.alpha)(t)[:, None, None, None]
        sig = jax.vmap(model.sde.sigma)(t)[:, None, None, None]
        xt = a * x0 + sig * z
        s = (sig / a)[:, 0, 0, 0]
        w = (s**2 + sd2) / (s**2 * sd2)
        d = jax.vmap(model.denoiser)(xt, t)
        if project is not None:
            d = jax.vmap(project)(d).astype(d.dtype)
        err = jnp.mean((d - x0) ** 2, axis=(1, 2, 3))
        if reference is None:
            return w * err, jnp.full_like(err, jnp.nan)
        d_ref = jax.vmap(reference)(xt / a, s)
        return w * err, w * jnp.mean((d_ref - x0) ** 2, axis=(1, 2, 3))

    lm, le = [], []
    for start in range(0, num_draws, batch_size):
        sl = slice(start, min(start + batch_size, num_draws))
        x0 = jnp.asarray(data[idx[sl]], dt)
        z = jr.normal(jr.fold_in(kz, start), x0.shape, dt)
        m, e = losses(model, reference, project, x0, t[sl].astype(dt), z)
        lm.append(np.asarray(m, np.float64))
        le.append(np.asarray(e, np.float64))
    loss, floor = float(np.mean(np.concatenate(lm))), float(np.mean(np.concatenate(le)))
    return {"loss": loss, "floor": floor, "excess": loss / floor - 1.0}
