"""Differentiable finite elements in JAX.

Meshes, function spaces, assembly with traced coefficients, linear solves with adjoint
gradients, PDE problems, random fields, observation operators and statistical FEM.
"""

from ._assembly import DirichletBC as DirichletBC
from ._assembly import assemble_local as assemble_local
from ._assembly import boundary_load as boundary_load
from ._assembly import boundary_mass as boundary_mass
from ._assembly import load as load
from ._assembly import lumped_mass as lumped_mass
from ._assembly import mass as mass
from ._assembly import stiffness as stiffness
from ._datasets import TASKS as TASKS
from ._datasets import PDETask as PDETask
from ._datasets import generate_dataset as generate_dataset
from ._datasets import load_dataset as load_dataset
from ._datasets import save_dataset as save_dataset
from ._jaxfem import jaxfem_poisson as jaxfem_poisson
from ._jaxfem import jaxfem_residual as jaxfem_residual
from ._jaxfem import to_jaxfem_mesh as to_jaxfem_mesh
from ._mesh import Mesh as Mesh
from ._mesh import delaunay as delaunay
from ._mesh import l_shaped as l_shaped
from ._mesh import read_mesh as read_mesh
from ._mesh import rectangle as rectangle
from ._mesh import unit_square as unit_square
from ._mesh import write_mesh as write_mesh
from ._parameters import LogPermeability as LogPermeability
from ._parameters import ParameterMap as ParameterMap
from ._parameters import Source as Source
from ._parameters import ThresholdPermeability as ThresholdPermeability
from ._plot import plot_field as plot_field
from ._plot import save_figure as save_figure
from ._problems import Darcy as Darcy
from ._problems import Helmholtz as Helmholtz
from ._problems import Poisson as Poisson
from ._random_fields import gaussian_random_field as gaussian_random_field
from ._random_fields import grf_from_white_noise as grf_from_white_noise
from ._random_fields import grf_mode_std as grf_mode_std
from ._random_fields import matern_field as matern_field
from ._sensors import add_noise as add_noise
from ._sensors import full_observation as full_observation
from ._sensors import misfit_energy as misfit_energy
from ._sensors import node_observation as node_observation
from ._sensors import random_sensors as random_sensors
from ._sensors import region_average as region_average
from ._solve import LinearSolveError as LinearSolveError
from ._solve import clear_solver_cache as clear_solver_cache
from ._solve import default_method as default_method
from ._solve import linear_solve as linear_solve
from ._solve import solver_cache_info as solver_cache_info
from ._solve import solver_errors as solver_errors
from ._space import FunctionSpace as FunctionSpace
from ._sparse import SparseMatrix as SparseMatrix
from ._sparse import SparsityPattern as SparsityPattern
