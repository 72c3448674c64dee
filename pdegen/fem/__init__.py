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
from ._mesh import Mesh as Mesh
from ._mesh import l_shaped as l_shaped
from ._mesh import read_mesh as read_mesh
from ._mesh import rectangle as rectangle
from ._mesh import unit_square as unit_square
from ._mesh import write_mesh as write_mesh
from ._problems import Darcy as Darcy
from ._problems import Helmholtz as Helmholtz
from ._problems import Poisson as Poisson
from ._solve import clear_solver_cache as clear_solver_cache
from ._solve import default_method as default_method
from ._solve import linear_solve as linear_solve
from ._space import FunctionSpace as FunctionSpace
from ._sparse import SparseMatrix as SparseMatrix
from ._sparse import SparsityPattern as SparsityPattern
