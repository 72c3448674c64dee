"""Likelihoods of an inverse problem: ``y = G(a) + noise`` for any forward map and noise model.

``G`` is a :class:`PDEForward` (a :class:`pdegen.fem.ParameterMap` — which unknown of which
problem on which mesh — composed with any observation matrix: point sensors, region averages,
the full field), a matrix, or any differentiable function of the nodal values ``a``. Noise is
Gaussian with a standard deviation, a covariance, or the statFEM model-error covariance
(``y = rho G(a) + d + e``, :class:`StatFEMLikelihood`). Linear forward maps (detected, or declared)
are materialised as a dense ``(m, n)`` matrix once, so guidance and exact posteriors use exact
Jacobian products at the cost of a matrix product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem

from ._guidance import StatFEMLikelihood


class PDEForward(eqx.Module):
    """The forward map ``a -> H solve(a)`` of a PDE and an observation operator.

    ``a -> H solve(a)``: the FEM solution for the unknown ``a`` (nodal values, through
    ``parameter``'s smooth coefficient map) observed by ``H`` (``(m, n)``: sparse or dense).
    Complex solutions (impedance Helmholtz) are observed as ``[Re(H u), Im(H u)]``."""

    parameter: Any = eqx.field(static=True)
    observation: Any
    points: Any = None

    @property
    def size(self) -> int:
        return self.parameter.size

    @property
    def linear(self) -> bool:
        return bool(self.parameter.linear)

    def __call__(self, a):
        u = self.parameter.solve(a)
        if jnp.iscomplexobj(u):
            return jnp.concatenate([self.observation @ u.real, self.observation @ u.imag])
        return self.observation @ u


def pde_forward(parameter: fem.ParameterMap, observation) -> PDEForward:
    """The forward map ``a -> H solve(a)`` of a parameter map and an observation.

    The forward map ``a -> H solve(a)`` of ``parameter`` (e.g. ``fem.Source(fem.Poisson(V))``)
    observed by ``observation``: a matrix ``(m, n)``, a :class:`pdegen.fem.SparseMatrix` (e.g.
    ``V.point_observation(points)``, :func:`pdegen.fem.region_average`), or point coordinates
    ``(m, 2)`` (point sensors)."""
    if not isinstance(parameter, fem.ParameterMap):
        raise TypeError(
            f"pde_forward: parameter must be a pdegen.fem.ParameterMap (fem.Source, fem.LogPermeability, "
            f"...), got {type(parameter).__name__}"
        )
    n = parameter.size
    points = None
    if not isinstance(observation, fem.SparseMatrix):
        obs = np.asarray(observation)
        if obs.ndim == 2 and obs.shape[1] == 2 and obs.shape[0] != 0 and n != 2:
            points = obs.astype(np.float64)
            observation = parameter.space.point_observation(points)
        elif obs.ndim == 2:
            observation = jnp.asarray(obs)
        else:
            raise ValueError(
                f"pde_forward: observation must be a matrix (m, {n}) or sensor points (m, 2), "
                f"got shape {obs.shape}"
            )
    if observation.shape[1] != n:
        raise ValueError(
            f"pde_forward: observation has {observation.shape[1]} columns, the mesh has {n} nodes"
        )
    return PDEForward(parameter, observation, points)


class LinearForward(eqx.Module):
    """``a -> G a + offset`` with a dense ``G`` ``(m, n)``."""

    matrix: jax.Array
    offset: jax.Array

    def __call__(self, a):
        return self.matrix @ a.astype(self.matrix.dtype) + self.offset


class GaussianLikelihood(eqx.Module):
    """``y = forward(a) + e``, ``e ~ N(0, Sigma)``, held as the whitener ``W`` (``W Sigma W^T = I``).

    Attributes:
        forward: ``a (n,) -> (m,)``; a :class:`LinearForward` when the map is linear.
        y: the data ``(m,)``.
        whitener: ``W`` ``(m, m)``.
        size: number of unknowns ``n``; ``linear``: whether ``forward`` is affine.
        points: sensor coordinates ``(m, 2)`` when known (for model-error kernels and plots).
        noise_std: the typical noise level ``sqrt(tr(Sigma) / m)`` (for labels and step sizes).
    """

    forward: Callable
    y: jax.Array
    whitener: jax.Array
    size: int = eqx.field(static=True)
    linear: bool = eqx.field(static=True)
    noise_std: jax.Array  # traced: draws with other noise levels reuse compiled samplers
    points: Any = None

    @property
    def num_data(self) -> int:
        return int(self.y.shape[0])

    def whitened_residual(self, a) -> jax.Array:
        """``W (y - forward(a))``: independent unit-variance entries at the truth."""
        return self.whitener @ (self.y - self.forward(a))

    def energy(self, a) -> jax.Array:
        """Negative log-likelihood up to a constant, ``0.5 ||W (y - forward(a))||^2``."""
        return 0.5 * jnp.sum(self.whitened_residual(a) ** 2)

    def misfit(self, a) -> float:
        """RMS of the whitened residual: about 1 when ``a`` fits the data to the noise level."""
        return float(jnp.sqrt(jnp.mean(self.whitened_residual(jnp.asarray(a)) ** 2)))

    def with_data(self, y) -> GaussianLikelihood:
        """The same likelihood with other data (compiled samplers are reused)."""
        return eqx.tree_at(lambda lik: lik.y, self, _check_data(y, self.num_data, self.y.dtype))


def _check_data(y, m, dtype=None):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"likelihood: y must be a vector of data, got shape {y.shape}")
    if y.shape[0] != m:
        raise ValueError(
            f"likelihood: y has {y.shape[0]} values but the forward map predicts {m} "
            f"(one per sensor / observation row)"
        )
    if not np.all(np.isfinite(y)):
        bad = np.flatnonzero(~np.isfinite(y))
        raise ValueError(f"likelihood: y contains NaN or inf at {bad[:10].tolist()}")
    return jnp.asarray(y, dtype)


def _as_forward(forward, size):
    if isinstance(forward, (PDEForward, LinearForward)):
        return forward, forward.size if isinstance(forward, PDEForward) else forward.matrix.shape[1]
    if isinstance(forward, fem.SparseMatrix) or (
        hasattr(forward, "shape")
        and len(getattr(forward, "shape", ())) == 2
        and not callable(forward)
    ):
        G = jnp.asarray(forward.todense() if isinstance(forward, fem.SparseMatrix) else forward)
        return LinearForward(G, jnp.zeros(G.shape[0], G.dtype)), int(G.shape[1])
    if callable(forward):
        if size is None:
            raise ValueError(
                "gaussian_likelihood: give size= (the number of unknowns) with a plain function forward"
            )
        return forward, int(size)
    raise TypeError(
        f"gaussian_likelihood: forward must be a PDEForward, a matrix or a function, got {type(forward).__name__}"
    )


def is_affine(fn, size: int, *, key=None, rtol: float = 1e-7) -> bool:
    """Whether ``fn`` is affine, by ``fn(x1 + x2) - fn(x2) == fn(x1) - fn(0)`` at random points."""
    key = jax.random.key(20261201) if key is None else key
    k1, k2 = jax.random.split(key)
    x1 = jax.random.normal(k1, (size,), jnp.float64)
    x2 = jax.random.normal(k2, (size,), jnp.float64)
    f0, f1, f2, f12 = (
        np.asarray(fn(v), np.float64) for v in (jnp.zeros(size, jnp.float64), x1, x2, x1 + x2)
    )
    lhs, rhs = f12 - f2, f1 - f0
    return bool(
        np.linalg.norm(lhs - rhs) <= rtol * max(np.linalg.norm(rhs), np.linalg.norm(lhs), 1e-300)
    )


def materialise(fn, size: int) -> LinearForward:
    """The dense matrix and offset of an affine ``fn`` (``m`` reverse-mode products at zero; for a
    PDE forward map, one adjoint solve per row with the factorisation shared)."""
    zero = jnp.zeros(size, jnp.float64)
    offset, vjp = jax.vjp(fn, zero)
    rows = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(offset.shape[0], dtype=offset.dtype))
    return LinearForward(rows, offset)


def gaussian_likelihood(
    forward,
    y,
    *,
    noise_std: float | None = None,
    noise_cov=None,
    model_error: StatFEMLikelihood | None = None,
    points=None,
    linear: bool | None = None,
    size: int | None = None,
) -> GaussianLikelihood:
    """A Gaussian likelihood ``y = G(a) + e`` that every method of :func:`sample_posterior` accepts.

    Args:
        forward: ``G``: a :class:`PDEForward` (:func:`pde_forward`), a matrix ``(m, n)`` (dense or
            :class:`pdegen.fem.SparseMatrix`), or a differentiable function ``a (n,) -> (m,)``
            (then give ``size=n``).
        y: the data ``(m,)``.
        noise_std: ``e ~ N(0, noise_std^2 I)`` (a number, or one std per datum ``(m,)``); or
            ``noise_cov``: a covariance ``(m, m)``; or
            ``model_error``: the statFEM model ``y = rho G(a) + d + e`` with the discrepancy
            ``d ~ GP(0, k(sigma_d, ell_d))`` on ``points`` and ``e ~ N(0, sigma_e^2 I)``.
        points: sensor coordinates ``(m, 2)`` (needed with ``model_error``; taken from a
            :class:`PDEForward` built from points otherwise).
        linear: declare ``G`` affine (``True``: materialised as a matrix; ``False``: kept as a
            function); ``None`` detects it numerically (:func:`is_affine`).

    Raises:
        ValueError: for data whose length does not match ``G``, NaN in the data, a noise model
            that is missing, doubly given or not positive definite.
    """
    G, n = _as_forward(forward, size)
    if sum(v is not None for v in (noise_std, noise_cov, model_error)) != 1:
        raise ValueError(
            "gaussian_likelihood: give exactly one of noise_std=, noise_cov= and model_error="
        )
    y0 = jnp.asarray(G(jnp.zeros(n, jnp.float64)))
    if y0.ndim != 1:
        raise ValueError(f"gaussian_likelihood: forward must return a vector, got shape {y0.shape}")
    m = int(y0.shape[0])
    y = _check_data(y, m, jnp.float64)
    if points is None and isinstance(forward, PDEForward) and forward.points is not None:
        points = forward.points
        if 2 * np.shape(points)[0] == m:  # a complex field observed as [Re(H u), Im(H u)]
            if model_error is not None:
                raise ValueError(
                    "gaussian_likelihood: model_error is for real data; this forward map returns "
                    "the real and imaginary parts of a complex field"
                )
            points = None
    if points is not None:
        points = np.asarray(points, np.float64)
        if points.shape != (m, 2):
            raise ValueError(
                f"gaussian_likelihood: points must have shape ({m}, 2), got {points.shape}"
            )
    if noise_std is not None:
        s = np.asarray(noise_std, np.float64)
        if s.shape not in ((), (m,)):
            raise ValueError(
                f"gaussian_likelihood: noise_std must be a number or one per datum ({m},), got "
                f"shape {s.shape}"
            )
        if not np.all((s > 0) & np.isfinite(s)):
            raise ValueError(
                f"gaussian_likelihood: noise_std must be > 0 and finite, got {noise_std}"
            )
        cov = np.diag(np.broadcast_to(s**2, (m,)))
    elif noise_cov is not None:
        cov = np.asarray(noise_cov, np.float64)
        if cov.shape != (m, m):
            raise ValueError(
                f"gaussian_likelihood: noise_cov must have shape ({m}, {m}), got {cov.shape}"
            )
    else:
        model_error = StatFEMLikelihood(*model_error).check()
        if points is None:
            raise ValueError(
                "gaussian_likelihood: model_error needs the sensor coordinates, points=(m, 2)"
            )
        cov = np.asarray(model_error.covariance(jnp.asarray(points)), np.float64)
    if not np.all(np.isfinite(cov)):
        raise ValueError("gaussian_likelihood: the noise covariance contains NaN or inf")
    try:
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))
    except np.linalg.LinAlgError:
        raise ValueError(
            "gaussian_likelihood: the noise covariance is not positive definite"
        ) from None
    W = np.linalg.inv(chol)
    if linear is None:
        linear = (
            bool(getattr(G, "linear", False)) or isinstance(G, LinearForward) or is_affine(G, n)
        )
    if linear and not isinstance(G, LinearForward):
        G = materialise(G, n)
    if model_error is not None and float(model_error.rho) != 1.0:
        rho = float(model_error.rho)
        G = (
            LinearForward(rho * G.matrix, rho * G.offset)
            if isinstance(G, LinearForward)
            else _Scaled(G, rho)
        )
    noise = jnp.asarray(np.sqrt(np.trace(cov) / m), jnp.float64)
    return GaussianLikelihood(G, y, jnp.asarray(W), n, bool(linear), noise, points)


class _Scaled(eqx.Module):
    fn: Callable
    factor: float = eqx.field(static=True)

    def __call__(self, a):
        return self.factor * self.fn(a)
