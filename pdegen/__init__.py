"""pdegen: PDE-constrained generative modelling in JAX.

Subpackages:

- :mod:`pdegen.fem`: differentiable finite elements (meshes, spaces, assembly, solves,
  random fields, observations, statistical FEM).
- :mod:`pdegen.models`: score-based diffusion models and controlled diffusions.
- :mod:`pdegen.inverse`: physics-guided inverse problems, constrained generation, optimisation.
"""

__version__ = "0.1.0"
