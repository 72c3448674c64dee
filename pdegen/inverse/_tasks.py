"""Benchmark tasks (DiffusionPDE forward / inverse problems on a grid) and their metrics.

A task holds one test draw of a joint field ``(a, u)`` (coefficient or source ``a``, solution
``u``), a fixed set of sensors on one channel, and the observations ``y``:

- ``direction="forward"``: observe ``a`` at the sensors, recover ``u``;
- ``direction="inverse"``: observe ``u`` at the sensors, recover ``a``.

Draws and sensor masks come from fixed seeds, so every method sees the same data. Fields are
images ``(grid, grid)`` with row 0 at ``y = 0`` (the node order of :func:`pdegen.fem.unit_square`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from pdegen import fem

PDES = ("poisson", "helmholtz", "darcy")
DIRECTIONS = ("forward", "inverse")
CHANNELS = ("a", "u")
LINEAR_PDES = (
    "poisson",
    "helmholtz",
)  # u depends linearly on a: an exact Gaussian posterior exists


def parse_task_name(name: str) -> tuple[str, str]:
    """``"poisson-inverse"`` -> ``("poisson", "inverse")`` (a bare PDE name means ``inverse``)."""
    if not isinstance(name, str):
        raise TypeError(
            f"task must be a string such as 'poisson-inverse', got {type(name).__name__}"
        )
    pde, _, direction = name.partition("-")
    direction = direction or "inverse"
    if pde not in PDES or direction not in DIRECTIONS:
        choices = ", ".join(f"{p}-{d}" for p in PDES for d in DIRECTIONS)
        raise ValueError(f"task must be one of {choices}; got {name!r}")
    return pde, direction


@dataclass(frozen=True, eq=False)
class InverseTask:
    """One forward or inverse problem: a true joint field, sensors on one channel, data.

    Attributes:
        pde: ``"poisson"``, ``"helmholtz"`` or ``"darcy"``.
        direction: ``"forward"`` (observe ``a``, recover ``u``) or ``"inverse"`` (observe ``u``,
            recover ``a``).
        grid: nodes per side of the unit square.
        sensors: sorted node indices of the sensors, shape ``(m,)``.
        truth: the true joint field, shape ``(2, grid, grid)`` (channels ``a``, ``u``).
        y: observations ``(m,)`` of the observed channel (noise added for noisy tasks).
        noise_std: standard deviation of the added noise (``0`` for noise-free data).
        discrepancy_std, discrepancy_length: a smooth model error ``d ~ GP(0, k)`` (squared
            exponential on the sensors) added to the data (``0``: none), as in the statFEM model.
        seed, index: the seed of the task family and the number of this draw in it.
    """

    pde: str
    direction: str
    grid: int
    sensors: np.ndarray
    truth: jax.Array
    y: jax.Array
    noise_std: float
    seed: int = 0
    index: int = 0
    physics: fem.PDETask = field(repr=False, default=None)
    discrepancy_std: float = 0.0
    discrepancy_length: float = 0.2

    @property
    def name(self) -> str:
        return f"{self.pde}-{self.direction}"

    @property
    def observed(self) -> str:
        """The observed channel, ``"a"`` or ``"u"``."""
        return "a" if self.direction == "forward" else "u"

    @property
    def target(self) -> str:
        """The channel to recover, ``"u"`` or ``"a"``."""
        return "u" if self.direction == "forward" else "a"

    @property
    def observed_index(self) -> int:
        return CHANNELS.index(self.observed)

    @property
    def target_index(self) -> int:
        return CHANNELS.index(self.target)

    @property
    def mesh(self) -> fem.Mesh:
        return self.physics.mesh

    @property
    def points(self) -> np.ndarray:
        """Sensor coordinates ``(m, 2)``."""
        return np.asarray(self.mesh.points)[self.sensors]

    @property
    def num_sensors(self) -> int:
        return int(self.sensors.size)

    @cached_property
    def free_nodes(self) -> np.ndarray:
        """Node indices where the target channel is unknown: all nodes for ``a``; for ``u`` those off
        the Dirichlet boundary (its boundary values are given)."""
        nodes = np.arange(self.mesh.npoints)
        if self.target == "a":
            return nodes
        return np.setdiff1d(nodes, self.mesh.boundary_points)

    @property
    def linear(self) -> bool:
        """Whether ``u`` depends linearly on ``a`` (Poisson, Helmholtz): exact posteriors exist."""
        return self.pde in LINEAR_PDES

    @property
    def target_truth(self) -> jax.Array:
        """The true field to recover, ``(grid, grid)``."""
        return self.truth[self.target_index]

    @cached_property
    def likelihood_std(self) -> float:
        """Noise level the methods assume: ``noise_std``, or for noise-free data a floor of
        ``1e-3`` times the RMS of the observations (a small regulariser; the data are exact)."""
        if self.noise_std > 0:
            return float(self.noise_std)
        rms = float(jnp.sqrt(jnp.mean(self.y**2)))
        return max(1e-3 * rms, 1e-12)

    # -- observation --------------------------------------------------------------------------
    def observe(self, fields) -> jax.Array:
        """Noise-free observations of a joint field ``(2, grid, grid)`` (or a batch of them)."""
        fields = jnp.asarray(fields)
        if fields.shape[-3:] != (2, self.grid, self.grid):
            raise ValueError(
                f"observe: fields must have shape (..., 2, {self.grid}, {self.grid}) (channels a, u), "
                f"got {fields.shape}"
            )
        channel = fields[..., self.observed_index, :, :]
        flat = channel.reshape(channel.shape[:-2] + (self.grid * self.grid,))
        return flat[..., jnp.asarray(self.sensors)]

    def check_observations(self, y) -> jax.Array:
        """``y`` as a vector of length ``num_sensors``, or a ``ValueError`` naming ``y``."""
        y = jnp.asarray(y)
        if y.shape != (self.num_sensors,):
            raise ValueError(
                f"y must have shape ({self.num_sensors},) (one value per sensor of task {self.name}), "
                f"got {y.shape}"
            )
        if not bool(jnp.all(jnp.isfinite(y))):
            raise ValueError("y contains NaN or inf")
        return y

    # -- physics --------------------------------------------------------------------------
    def solve(self, a) -> jax.Array:
        """The FEM solution ``u`` (image) for a coefficient / source image ``a`` (through the smooth
        coefficient map of the task's :class:`pdegen.fem.ParameterMap`; the same as the data's
        map except for Darcy, whose clipped cell mean has gradients)."""
        u = self.physics.parameter.solve(self.mesh.from_image(jnp.asarray(a)))
        return self.mesh.to_image(u.real if jnp.iscomplexobj(u) else u)

    def residual(self, a, u) -> jax.Array:
        """Relative FEM residual ``||A(a) u - b(a)|| / ||b(a)||`` of images ``a``, ``u``."""
        a, u = jnp.asarray(a), jnp.asarray(u)
        return self.physics.residual(self.mesh.from_image(a), self.mesh.from_image(u))

    def residual_vector(self, a, u) -> jax.Array:
        """Weak residual and a reference scale ``(r, ||b||)`` for images; differentiable in both
        (the smooth coefficient map)."""
        r, b = self.physics.parameter.residual_vector(
            self.mesh.from_image(a), self.mesh.from_image(u), smooth=True
        )
        return r, jnp.linalg.norm(b)


@functools.lru_cache(maxsize=16)
def physics_for(pde: str, grid: int) -> fem.PDETask:
    """The :class:`pdegen.fem.PDETask` of a task family, shared by its draws (so compiled samplers
    and dense operators are reused)."""
    return fem.PDETask(pde, grid)


def make_task(
    task: str = "poisson-inverse",
    *,
    grid: int = 32,
    sensor_fraction: float = 0.03,
    sensors=None,
    noise: float = 0.0,
    discrepancy: float = 0.0,
    discrepancy_length: float = 0.2,
    seed: int = 0,
    index: int = 0,
) -> InverseTask:
    """Build one DiffusionPDE-style task with fixed seeds.

    Args:
        task: ``"<pde>-<direction>"``, e.g. ``"poisson-inverse"`` (pde ``poisson``, ``helmholtz``,
            ``darcy``; direction ``forward`` or ``inverse``).
        grid: nodes per side of the unit square (DiffusionPDE: 128).
        sensor_fraction: fraction of grid nodes observed (DiffusionPDE: 500 of 128^2, about 3%).
        sensors: instead of a random mask, node indices ``(m,)`` or points ``(m, 2)`` in the unit
            square (points are snapped to their nearest grid node; points outside the domain are
            an error).
        noise: relative noise level: ``noise_std = noise * RMS(clean observations)``; ``0`` for
            noise-free data.
        discrepancy: relative size of a smooth model error
            ``d ~ GP(0, s^2 exp(-r^2 / (2 l^2)))`` on the sensors added to the data, with
            ``s = discrepancy * RMS(clean observations)`` (the statFEM data model; ``0``: none).
        discrepancy_length: its length scale ``l``.
        seed: seed of the task family; the sensor mask depends on ``seed`` only, so all draws of
            a family share it.
        index: the test draw is ``fold_in(key(seed), index)``.
    """
    pde, direction = parse_task_name(task)
    if int(grid) != grid or grid < 4:
        raise ValueError(f"make_task: grid must be an integer >= 4 (nodes per side), got {grid}")
    grid = int(grid)
    if not noise >= 0:
        raise ValueError(f"make_task: noise must be >= 0, got {noise}")
    if not discrepancy >= 0:
        raise ValueError(f"make_task: discrepancy must be >= 0, got {discrepancy}")
    if not discrepancy_length > 0:
        raise ValueError(f"make_task: discrepancy_length must be > 0, got {discrepancy_length}")
    physics = physics_for(pde, grid)
    mesh = physics.mesh
    root = jax.random.key(int(seed))
    if sensors is None:
        if not 0 < sensor_fraction <= 1:
            raise ValueError(
                f"make_task: sensor_fraction must lie in (0, 1], got {sensor_fraction}"
            )
        count = max(1, int(round(sensor_fraction * mesh.npoints)))
        nodes = fem.random_sensors(mesh, key=jax.random.fold_in(root, 2**20), count=count)
    else:
        nodes = _sensor_nodes(sensors, physics)
    draw = jax.random.fold_in(root, int(index))
    a, u = physics.sample(draw)
    u = u.real if jnp.iscomplexobj(u) else u
    truth = jnp.stack([mesh.to_image(a), mesh.to_image(u)])
    channel = truth[0 if direction == "forward" else 1].reshape(-1)
    clean = channel[jnp.asarray(nodes)]
    noise_std = 0.0
    y = clean
    rms = float(jnp.sqrt(jnp.mean(clean**2)))
    discrepancy_std = float(discrepancy) * rms
    if discrepancy > 0:
        from pdegen.fem.statfem import kernel_matrix

        pts = jnp.asarray(np.asarray(mesh.points)[np.asarray(nodes)])
        K = kernel_matrix(pts, pts, sigma=discrepancy_std, length=float(discrepancy_length))
        chol = jnp.linalg.cholesky(K + 1e-10 * discrepancy_std**2 * jnp.eye(K.shape[0]))
        z = jax.random.normal(
            jax.random.fold_in(root, 2**22 + int(index)), (K.shape[0],), chol.dtype
        )
        y = y + chol @ z
    if noise > 0:
        noise_std = float(noise) * rms
        y = fem.add_noise(y, noise_std, key=jax.random.fold_in(root, 2**21 + int(index)))
    return InverseTask(
        pde=pde,
        direction=direction,
        grid=grid,
        sensors=np.asarray(nodes),
        truth=truth,
        y=y,
        noise_std=noise_std,
        seed=int(seed),
        index=int(index),
        physics=physics,
        discrepancy_std=discrepancy_std,
        discrepancy_length=float(discrepancy_length),
    )


def _sensor_nodes(sensors, physics) -> np.ndarray:
    s = np.asarray(sensors)
    mesh = physics.mesh
    if s.ndim == 1 and np.issubdtype(s.dtype, np.integer):
        if s.size == 0 or s.min() < 0 or s.max() >= mesh.npoints:
            raise ValueError(
                f"make_task: sensors (node indices) must be non-empty and lie in [0, {mesh.npoints - 1}]"
            )
        return np.unique(s)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(
            f"make_task: sensors must be node indices (m,) or points (m, 2), got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("make_task: sensors contain NaN or inf")
    # point_observation raises a clear error for points outside the domain.
    try:
        physics.space.point_observation(s)
    except ValueError as err:
        raise ValueError(f"make_task: sensors: {err}") from err
    pts = np.asarray(mesh.points)
    nearest = np.argmin(((s[:, None, :] - pts[None, :, :]) ** 2).sum(-1), axis=1)
    return np.unique(nearest)


def make_tasks(task: str = "poisson-inverse", num: int = 1, **options) -> list[InverseTask]:
    """``num`` draws of a task family (same sensors, draws ``index = 0 .. num-1``)."""
    return [make_task(task, index=i, **options) for i in range(int(num))]


# ------------------------------------------------------------------------------------ metrics
def relative_l2(estimate, truth) -> jax.Array:
    """``||estimate - truth|| / ||truth||`` over all entries (or the last two axes of a batch)."""
    estimate, truth = jnp.asarray(estimate), jnp.asarray(truth)
    if estimate.shape[-truth.ndim :] != truth.shape:
        raise ValueError(
            f"relative_l2: estimate shape {estimate.shape} does not end with truth shape {truth.shape}"
        )
    axes = tuple(range(-truth.ndim, 0))
    diff = estimate - jnp.broadcast_to(truth, estimate.shape)
    return jnp.sqrt(jnp.sum(diff**2, axis=axes) / jnp.sum(truth**2))


def credible_interval_coverage(mean, std, truth, level: float = 0.9) -> jax.Array:
    """Fraction of entries of ``truth`` inside the central ``level`` Gaussian interval ``mean +- z std``."""
    from jax.scipy.stats import norm

    if not 0 < level < 1:
        raise ValueError(f"credible_interval_coverage: level must lie in (0, 1), got {level}")
    mean, std, truth = jnp.asarray(mean), jnp.asarray(std), jnp.asarray(truth)
    if not mean.shape == std.shape == truth.shape:
        raise ValueError(
            f"credible_interval_coverage: mean {mean.shape}, std {std.shape} and truth {truth.shape} must match"
        )
    z = norm.ppf(0.5 + level / 2.0)
    return jnp.mean(jnp.abs(truth - mean) <= z * std)


def empirical_coverage(samples, truth, level: float = 0.9) -> jax.Array:
    """Coverage of the central ``level`` interval between sample quantiles (needs many samples)."""
    samples, truth = jnp.asarray(samples), jnp.asarray(truth)
    lo = jnp.quantile(samples, 0.5 - level / 2.0, axis=0)
    hi = jnp.quantile(samples, 0.5 + level / 2.0, axis=0)
    return jnp.mean((truth >= lo) & (truth <= hi))
