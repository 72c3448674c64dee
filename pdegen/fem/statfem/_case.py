"""The ULA-statFEM test case (Akyildiz, Duffin, Sabanis, Girolami 2022).

``-div(theta grad u) = 1`` on the unit square, ``u = 0`` on the boundary, with
``theta = exp(log(1 + 0.3 sin(pi (x + y))) + w)`` and ``w`` a Gaussian process (scale 0.2,
length 0.2) sampled on the nodes. The model is P1 on an ``n x n`` grid; synthetic data come
from the solution on a finer grid (``2n - 1`` nodes a side by default), observed at random
sensor points with noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._mesh import Mesh, unit_square
from .._problems import Poisson
from .._random_fields import matern_field
from .._space import FunctionSpace
from .._sparse import SparseMatrix, SparsityPattern
from ._model import StatFEM, kernel_matrix


class StatFEMCase(NamedTuple):
    """A ready-to-sample statFEM problem with synthetic data.

    Attributes:
        model: the :class:`StatFEM` on the coarse grid.
        y: observations ``(J, m)``.
        mesh, space: the coarse mesh and P1 space.
        sensors: ``(m, 2)`` sensor points.
        diffusivity: ``theta`` at the coarse vertices.
        w: the GP sample at the coarse vertices.
        truth: the fine-grid solution interpolated at the coarse nodes, ``(ndofs,)``.
        fine_mesh: the mesh of the truth.
    """

    model: StatFEM
    y: jax.Array
    mesh: Mesh
    space: FunctionSpace
    sensors: np.ndarray
    diffusivity: jax.Array
    w: jax.Array
    truth: jax.Array
    fine_mesh: Mesh


def sample_w(
    space: FunctionSpace, *, key, sigma: float = 0.2, length: float = 0.2, dense_limit: int = 2500
) -> jax.Array:
    """A GP draw on the nodes: dense squared exponential on small meshes, SPDE Matérn otherwise."""
    n = space.ndofs
    if n <= dense_limit:
        pts = jnp.asarray(space.dof_coordinates)
        K = kernel_matrix(pts, pts, sigma=sigma, length=length)
        # the symmetric square root K^(1/2) (the squared-exponential matrix is numerically rank
        # deficient, so no Cholesky factor): unlike V sqrt(L), which depends on the eigensolver's
        # choice of basis within (nearly) repeated eigenvalues, it is unique, so a seed gives the
        # same field on every machine (V sqrt(L) changed with the number of usable cores)
        evals, evecs = jnp.linalg.eigh(K)
        root = (evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None, :]) @ evecs.T
        return root @ jax.random.normal(key, (n,), K.dtype)
    return matern_field(space, key=key, length_scale=length, sigma=sigma)


def identity_matrix(n: int) -> SparseMatrix:
    idx = np.arange(int(n))
    return SparseMatrix(jnp.ones(int(n)), SparsityPattern(idx, idx, (int(n), int(n))))


def _base_log_diffusivity(x):
    return jnp.log(1.0 + 0.3 * jnp.sin(math.pi * (x[0] + x[1])))


def ula_statfem_case(
    grid: int = 32,
    *,
    key,
    num_sensors: int = 128,
    num_replicates: int = 1,
    sigma_f: float = 0.1,
    sigma_e: float = 5e-4,
    rho: float = 1.0,
    sigma_d: float = 0.0,
    ell_d: float = 0.2,
    mass: str = "lumped",
    w_sigma: float = 0.2,
    w_length: float = 0.2,
    fine_factor: int = 2,
    dense_limit: int = 2500,
) -> StatFEMCase:
    """Build the ULA-statFEM case with synthetic data from a finer "truth".

    Args:
        grid: nodes per side of the model's P1 grid (32 in the paper, 128 for the large case).
        key: PRNG key (GP draw, sensors, noise); keyword-only.
        num_sensors: number of random interior sensor points (128).
        num_replicates: independent observation vectors.
        sigma_f: forcing misspecification of the model (``G = sigma_f^2 M``).
        mass: the mass matrix ``M`` of ``G``: ``"lumped"`` or ``"consistent"``.
        sigma_e: observation noise of the data (also the model's ``sigma_e``).
        rho: model-data scale (also used to simulate the data).
        sigma_d: discrepancy standard deviation (also used to simulate the data).
        ell_d: discrepancy length scale (also used to simulate the data).
        fine_factor: the truth grid has ``fine_factor * (grid - 1) + 1`` nodes a side.
    """
    if int(grid) != grid or grid < 3:
        raise ValueError(f"ula_statfem_case: grid must be an integer >= 3, got {grid}")
    if int(num_sensors) != num_sensors or num_sensors < 1:
        raise ValueError(
            f"ula_statfem_case: num_sensors must be a positive integer, got {num_sensors}"
        )
    if int(num_replicates) != num_replicates or num_replicates < 1:
        raise ValueError(
            f"ula_statfem_case: num_replicates must be a positive integer, got {num_replicates}"
        )
    if int(fine_factor) != fine_factor or fine_factor < 1:
        raise ValueError(
            f"ula_statfem_case: fine_factor must be a positive integer, got {fine_factor}"
        )
    k_w, k_s, k_d, k_e = jax.random.split(key, 4)
    mesh = unit_square(int(grid))
    V = FunctionSpace(mesh, "P1")
    fine = unit_square(int(fine_factor) * (int(grid) - 1) + 1)
    Vf = FunctionSpace(fine, "P1")
    fine_problem = Poisson(Vf)
    sensors = np.asarray(jax.random.uniform(k_s, (int(num_sensors), 2), minval=0.02, maxval=0.98))
    H_fine = Vf.point_observation(sensors)
    if int(fine_factor) == 1:  # the same grid: no point location (costly on large meshes)
        eye = identity_matrix(V.ndofs)
        coarse_to_fine = fine_to_coarse = eye
    else:
        coarse_to_fine = V.point_observation(fine.points)
        fine_to_coarse = Vf.point_observation(V.dof_coordinates)
    m = int(num_sensors)
    J = int(num_replicates)
    x_coarse = jnp.asarray(V.dof_coordinates.T)
    x_fine = jnp.asarray(Vf.dof_coordinates.T)

    @jax.jit
    def simulate(k_w, k_d, k_e, H_fine, coarse_to_fine, fine_to_coarse):
        w = sample_w(V, key=k_w, sigma=w_sigma, length=w_length, dense_limit=dense_limit)
        theta = jnp.exp(_base_log_diffusivity(x_coarse) + w)
        # the same diffusivity on the fine grid: base exactly, w linearly interpolated
        theta_fine = jnp.exp(_base_log_diffusivity(x_fine) + coarse_to_fine @ w)
        u_fine = fine_problem.solve(kappa=theta_fine, f=1.0)
        y = rho * (H_fine @ u_fine)[None, :] + sigma_e * jax.random.normal(
            k_e, (J, m), u_fine.dtype
        )
        if sigma_d > 0:
            pts = jnp.asarray(sensors)
            Cd = kernel_matrix(pts, pts, sigma=sigma_d, length=ell_d)
            Ld = jnp.linalg.cholesky(Cd + 1e-12 * sigma_d**2 * jnp.eye(m, dtype=Cd.dtype))
            y = y + jax.random.normal(k_d, (J, m), y.dtype) @ Ld.T
        return w, theta, fine_to_coarse @ u_fine, y

    w, theta, truth, y = simulate(k_w, k_d, k_e, H_fine, coarse_to_fine, fine_to_coarse)
    model = StatFEM(
        Poisson(V),
        sensors,
        coefficients=dict(kappa=theta, f=1.0),
        sigma_f=sigma_f,
        mass=mass,
        rho=rho,
        sigma_d=sigma_d,
        ell_d=ell_d,
        sigma_e=sigma_e,
    )
    return StatFEMCase(model, y, mesh, V, sensors, theta, w, truth, fine)


class NonlinearCase(NamedTuple):
    """The nonlinear statFEM case: model, data ``(1, m)`` and the model draw that made them."""

    model: object
    y: jax.Array
    truth: jax.Array


def nonlinear_statfem_case(grid: int = 32, *, key, num_sensors: int = 64) -> NonlinearCase:
    """The nonlinear statFEM test case with synthetic data.

    ``-div((1 + u^2) grad u) = 15 + xi`` on a ``grid x grid`` P1 mesh of the unit square (zero
    boundary values), ``sigma_f = 2``, ``sigma_e = 0.01``; one replicate of data at
    ``num_sensors`` random points from a draw of the model itself (the benchmark's case)."""
    from ._nonlinear import NonlinearStatFEM

    if int(grid) != grid or grid < 3:
        raise ValueError(f"nonlinear_statfem_case: grid must be an integer >= 3, got {grid}")
    V = FunctionSpace(unit_square(int(grid)), "P1")
    k1, k2, k3 = jax.random.split(key, 3)
    sensors = np.asarray(jax.random.uniform(k1, (int(num_sensors), 2), minval=0.05, maxval=0.95))
    model = NonlinearStatFEM(V, sensors, f=15.0, alpha=1.0, sigma_f=2.0, sigma_e=1e-2)
    truth = model.sample_prior(key=k2)
    return NonlinearCase(model, model.simulate_data(truth, key=k3), truth)
