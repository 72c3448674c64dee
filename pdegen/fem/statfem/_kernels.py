"""The statFEM samplers are the generic kernels of :mod:`pdegen.mcmc`; the chain drivers here also
turn a linear-solver failure inside the energy into its one-line ``LinearSolveError``."""

from __future__ import annotations

import functools

from pdegen.mcmc import ChainResult as ChainResult
from pdegen.mcmc import DualAveragingState as DualAveragingState
from pdegen.mcmc import LangevinState as LangevinState
from pdegen.mcmc import PCNState as PCNState
from pdegen.mcmc import Preconditioner as Preconditioner
from pdegen.mcmc import SamplerInfo as SamplerInfo
from pdegen.mcmc import SamplingAlgorithm as SamplingAlgorithm
from pdegen.mcmc import chain_ess as chain_ess
from pdegen.mcmc import dual_averaging_init as dual_averaging_init
from pdegen.mcmc import dual_averaging_update as dual_averaging_update
from pdegen.mcmc import largest_curvature as largest_curvature
from pdegen.mcmc import mala as mala
from pdegen.mcmc import pcn as pcn
from pdegen.mcmc import pool_chains as pool_chains
from pdegen.mcmc import rhat as rhat
from pdegen.mcmc import run_chain as _run_chain
from pdegen.mcmc import run_chains as _run_chains
from pdegen.mcmc import ula as ula

from .._solve import solver_errors

effective_sample_size = chain_ess  # the name statFEM has always used
"""Alias of :func:`pdegen.mcmc.chain_ess` (the name statFEM has always used)."""


@functools.wraps(_run_chain)
def run_chain(*args, **kwargs):
    """:func:`pdegen.mcmc.run_chain` with FEM solver errors reported as such.

    Same arguments and result; a linear-solver failure inside the energy is raised as its
    one-line :class:`pdegen.fem.LinearSolveError`.
    """
    with solver_errors():
        return _run_chain(*args, **kwargs)


@functools.wraps(_run_chains)
def run_chains(*args, **kwargs):
    """:func:`pdegen.mcmc.run_chains` with FEM solver errors reported as such.

    Same arguments and result; a linear-solver failure inside the energy is raised as its
    one-line :class:`pdegen.fem.LinearSolveError`.
    """
    with solver_errors():
        return _run_chains(*args, **kwargs)
