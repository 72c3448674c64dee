"""Priors over fields on the benchmark tasks' grids: learned diffusion models and the exact
scores of the tasks' Gaussian random field (over ``a`` or the joint ``(a, u)``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from pdegen import fem, models
from pdegen.models import VPSDE, AbstractSDE

from ._operators import grf_sqrt_matrix, solution_operator
from ._priors import GaussianScore, Prior, unwrap_model
from ._tasks import CHANNELS, LINEAR_PDES, InverseTask, physics_for

ROUTES = ("solve", "joint")


@dataclasses.dataclass(frozen=True, eq=False)
class FieldPrior:
    """A diffusion prior over fields on a ``grid x grid`` grid.

    Attributes:
        score: ``score(x, t)`` in normalised units for one example ``(C, grid, grid)`` (a
            :class:`pdegen.models.DiffusionModel` or a :class:`GaussianScore`).
        sde: the forward process the score belongs to.
        channels: names of the channels, ``("a",)`` or ``("a", "u")``.
        mean, std: per-channel normalisation (physical = normalised * std + mean).
        name: a label for tables.
        exact: whether the score is the exact score of the GRF prior of the tasks.
    """

    score: Any
    sde: AbstractSDE
    channels: tuple
    grid: int
    mean: tuple
    std: tuple
    name: str = "prior"
    exact: bool = False
    dtype: str = "float32"
    grf: tuple | None = None  # (alpha, tau) of an exact GRF prior: bayes and map use the same prior

    @property
    def data_shape(self) -> tuple:
        return (len(self.channels), self.grid, self.grid)

    def to_physical(self, x):
        m = jnp.asarray(self.mean, x.dtype).reshape(-1, 1, 1)
        s = jnp.asarray(self.std, x.dtype).reshape(-1, 1, 1)
        return x * s + m


def prior_from_model(
    model, *, channels: tuple | None = None, name: str | None = None
) -> FieldPrior:
    """A :class:`FieldPrior` from a :class:`pdegen.models.DiffusionModel` or a loaded checkpoint.

    The model must generate images ``(C, g, g)``; ``C = 2`` is read as channels ``(a, u)``,
    ``C = 1`` as ``(a,)``.
    """
    model, name = unwrap_model(model, name, "prior_from_model")
    shape = tuple(model.data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"prior_from_model: the model generates examples of shape {shape}; a field prior needs "
            f"square images (C, g, g)"
        )
    if channels is None:
        if shape[0] not in (1, 2):
            raise ValueError(
                f"prior_from_model: the model has {shape[0]} channels; expected 1 (a) or 2 (a, u)"
            )
        channels = CHANNELS[: shape[0]]
    channels = tuple(channels)
    if len(channels) != shape[0]:
        raise ValueError(
            f"prior_from_model: channels {channels} do not match the model's {shape[0]} channel(s)"
        )
    dtype = str(jnp.dtype(getattr(model.network, "dtype", "float32")))
    return FieldPrior(
        score=model,
        sde=model.sde,
        channels=channels,
        grid=shape[1],
        mean=tuple(model.normalisation.mean),
        std=tuple(model.normalisation.std),
        name=name or f"model {shape}",
        exact=False,
        dtype=dtype,
    )


def gaussian_prior(
    grid: int,
    *,
    pde: str = "poisson",
    channels: tuple = ("a",),
    alpha: float = 2.0,
    tau: float = 3.0,
    sde: AbstractSDE | None = None,
    max_joint_grid: int = 40,
) -> FieldPrior:
    """The exact score of the tasks' GRF prior (float64), as a :class:`FieldPrior`.

    ``channels=("a",)``: the GRF over ``a`` (DCT-diagonal score, any grid). ``channels=("a", "u")``:
    the joint Gaussian of ``(a, solve(a))`` for a linear PDE (a dense factorisation: grids up to
    ``max_joint_grid``). Each channel is normalised to unit average variance.
    """
    sde = VPSDE() if sde is None else sde
    channels = tuple(channels)
    std = fem.grf_mode_std((grid, grid), alpha=alpha, tau=tau)
    sd_a = float(np.sqrt(np.sum(std**2) / grid**2))
    if channels == ("a",):
        score = GaussianScore(sde, jnp.asarray(std / sd_a), None, None, (1, grid, grid), "dct")
        return FieldPrior(
            score,
            sde,
            channels,
            grid,
            (0.0,),
            (sd_a,),
            name="exact GRF score",
            exact=True,
            dtype="float64",
            grf=(float(alpha), float(tau)),
        )
    if channels != CHANNELS:
        raise ValueError(f"gaussian_prior: channels must be ('a',) or ('a', 'u'), got {channels}")
    if pde not in LINEAR_PDES:
        raise ValueError(
            f"gaussian_prior: a joint Gaussian prior needs a linear PDE {LINEAR_PDES}, got {pde!r}"
        )
    if grid > max_joint_grid:
        raise ValueError(
            f"gaussian_prior: the joint Gaussian prior is dense; grid must be <= {max_joint_grid}, got {grid}"
        )
    L, SL = _joint_factors(pde, grid, alpha, tau)
    sd_u = float(np.sqrt(np.sum(SL**2) / grid**2))
    U, values = _eigen(np.concatenate([L / sd_a, SL / sd_u]))  # normalised joint square root
    score = GaussianScore(sde, None, jnp.asarray(U), jnp.asarray(values), (2, grid, grid), "eigen")
    return FieldPrior(
        score,
        sde,
        channels,
        grid,
        (0.0, 0.0),
        (sd_a, sd_u),
        name="exact joint GRF score",
        exact=True,
        dtype="float64",
        grf=(float(alpha), float(tau)),
    )


def _joint_factors(pde: str, grid: int, alpha: float, tau: float):
    """``(L, S L)``: square roots of the GRF ``a`` and of ``u = solve(a)``, ``(g^2, g^2)`` each."""
    S = solution_operator(physics_for(pde, grid))
    L = grf_sqrt_matrix(grid, alpha=alpha, tau=tau)
    return L, S @ L


def _eigen(J: np.ndarray):
    """Orthonormal basis and variances of the covariance ``J J^T`` (its non-null part)."""
    if J.shape[0] > J.shape[1]:  # tall: the SVD of R in J = QR, several times faster than J's
        Q, R = np.linalg.qr(J)
        U, sv, _ = np.linalg.svd(R)
        U = Q @ U
    else:
        U, sv, _ = np.linalg.svd(J, full_matrices=False)
    keep = sv > 1e-10 * sv.max()
    return U[:, keep], sv[keep] ** 2


def exact_denoiser(
    model, *, pde: str = "poisson", alpha: float = 2.0, tau: float = 3.0, grid: int | None = None
) -> models.GaussianDenoiser:
    """The exact denoiser of the tasks' Gaussian data, in a model's normalised units.

    The exact denoiser of the tasks' data in a model's normalised units: the floor of its
    denoising loss (:func:`pdegen.models.denoising_loss`).

    One channel: the GRF ``a`` (cosine-diagonal, any grid). Two channels: the joint Gaussian of
    ``(a, solve(a))`` for a linear ``pde`` (dense: grids up to 64). ``grid``: the grid to evaluate
    a resolution-free model on (default: the model's own)."""
    model, _ = unwrap_model(model, None, "exact_denoiser")
    channels, g = int(model.data_shape[0]), int(grid or model.data_shape[-1])
    mean = np.asarray(model.normalisation.mean, np.float64)
    std = np.asarray(model.normalisation.std, np.float64)
    if channels == 1:
        mode_std = fem.grf_mode_std((g, g), alpha=alpha, tau=tau)[None] / std[0]
        return models.GaussianDenoiser.cosine(mode_std, -mean / std)
    if channels != 2 or pde not in LINEAR_PDES:
        raise ValueError(
            f"exact_denoiser: needs a model over a (1 channel) or (a, u) of a linear PDE "
            f"{LINEAR_PDES}; got {channels} channels, pde={pde!r}"
        )
    if g > 64:
        raise ValueError(f"exact_denoiser: the joint law is dense; grid must be <= 64, got {g}")
    L, SL = _joint_factors(pde, g, alpha, tau)
    U, values = _eigen(np.concatenate([L / std[0], SL / std[1]]))
    offset = np.repeat(-mean / std, g * g).reshape(2, g, g)
    return models.GaussianDenoiser.eigen(U, values, offset)


def dense_gaussian_prior(
    cov,
    grid: int,
    *,
    channels: tuple = CHANNELS,
    sde: AbstractSDE | None = None,
    name: str = "Gaussian prior",
) -> FieldPrior:
    """A zero-mean Gaussian prior with a dense covariance and its exact score.

    A zero-mean Gaussian prior with a given dense covariance of the flattened ``(C, g, g)`` field
    (normalised units), with its exact score. For tests and small examples."""
    sde = VPSDE() if sde is None else sde
    cov = np.asarray(cov, dtype=np.float64)
    d = len(channels) * grid * grid
    if cov.shape != (d, d):
        raise ValueError(f"dense_gaussian_prior: cov must have shape ({d}, {d}), got {cov.shape}")
    w, V = np.linalg.eigh(0.5 * (cov + cov.T))
    w = np.maximum(w, 0.0)
    score = GaussianScore(
        sde, None, jnp.asarray(V), jnp.asarray(w), (len(channels), grid, grid), "eigen"
    )
    return FieldPrior(
        score,
        sde,
        tuple(channels),
        grid,
        (0.0,) * len(channels),
        (1.0,) * len(channels),
        name=name,
        exact=False,
        dtype="float64",
    )


def prior_at_grid(prior: FieldPrior, grid: int) -> FieldPrior:
    """A prior moved to another grid, where it can be.

    ``prior`` on a ``grid x grid`` grid: itself when it is on it already, the same weights on the
    new grid for a resolution-free model; otherwise unchanged (:func:`check_prior_fits` then says
    why it does not fit)."""
    if not isinstance(prior, FieldPrior) or prior.grid == grid:
        return prior
    model = prior.score
    if isinstance(model, models.DiffusionModel) and model.resolution_free:
        shape = (len(prior.channels), int(grid), int(grid))
        return dataclasses.replace(prior, score=model.at_shape(shape), grid=int(grid))
    return prior


def check_prior_fits(prior: FieldPrior, task: InverseTask, route: str) -> None:
    """Raise a ``ValueError`` naming ``prior`` if its grid or channels do not fit ``task``/``route``."""
    if not isinstance(prior, FieldPrior):
        raise TypeError(
            f"prior must be a FieldPrior (see prior_from_model, gaussian_prior), got {type(prior).__name__}"
        )
    if prior.grid != task.grid:
        raise ValueError(
            f"prior: generates {prior.grid}x{prior.grid} fields and is not resolution-free, but task "
            f"{task.name} is on a {task.grid}x{task.grid} grid; build the task with grid={prior.grid} "
            f"or use a prior for grid {task.grid} (or a resolution-free one, e.g. 'grf-a')"
        )
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if route == "joint" and tuple(prior.channels) != CHANNELS:
        raise ValueError(
            f"prior: route='joint' needs a joint prior over channels {CHANNELS}, this one has {tuple(prior.channels)}; "
            f"use route='solve'"
        )
    if route == "solve" and prior.channels[0] != "a":
        raise ValueError(
            f"prior: route='solve' needs channel 'a' first, got {tuple(prior.channels)}"
        )


def as_mesh_prior(prior: FieldPrior, task: InverseTask) -> Prior:
    """Channel ``a`` of a grid prior as a :class:`Prior` on the task's mesh (the grid's nodes are
    the mesh's, in image order), for the general posterior path."""
    check_prior_fits(prior, task, "solve")
    return Prior(
        prior.score,
        prior.sde,
        jnp.full(task.mesh.npoints, float(prior.mean[0])),
        float(prior.std[0]),
        None,
        prior.data_shape,
        0,
        name=prior.name,
        dtype=prior.dtype,
    )
