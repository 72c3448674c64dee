"""Generic Markov chain Monte Carlo on energies ``U(x) = -log target(x)`` (JAX only).

Kernels in the blackjax-style ``(init, step)`` form: ``state = kernel.init(x0)``,
``state, info = kernel.step(state, key=key)`` (:func:`ula`, :func:`mala`, both optionally
preconditioned, and :func:`pcn` for a Gaussian prior times a likelihood); a preconditioner is a
:class:`Preconditioner` (``apply(v) = P v`` and a draw ``sample(key=key) ~ N(0, P)``).
Chain drivers with step-size adaptation by dual averaging (:func:`run_chain`, :func:`run_chains`,
:func:`pool_chains`), a Laplace / Gauss-Newton preconditioner from a prior square root and a
randomised low-rank misfit Hessian (:func:`low_rank_preconditioner`), its exact form for a target
in white-noise coordinates with the Gauss-Newton MAP point there (:func:`gauss_newton_laplace`,
:func:`gauss_newton_map`), a stability bound (:func:`largest_curvature`), a dense Laplace approximation of a
low-dimensional target at its mode (:func:`lbfgs_minimise`, :func:`dense_laplace`) with pCN
around it (:func:`laplace_pcn`), and chain diagnostics
(:func:`chain_ess`, :func:`rhat`; distinct from the importance-weight ESS of ``pdegen.models``).

A chain whose state becomes NaN / inf stops with :class:`pdegen._errors.NonFiniteError`; a step
size <= 0 or a preconditioner of the wrong size is a :class:`pdegen._errors.UserError` before any
step is taken. This package imports nothing from pdegen but the error classes, so every layer
(``fem.statfem``, ``optimise``, ``inverse``) may use it.
"""

from ._diagnostics import chain_ess as chain_ess
from ._diagnostics import rhat as rhat
from ._kernels import ChainResult as ChainResult
from ._kernels import DualAveragingState as DualAveragingState
from ._kernels import LangevinState as LangevinState
from ._kernels import PCNState as PCNState
from ._kernels import Preconditioner as Preconditioner
from ._kernels import SamplerInfo as SamplerInfo
from ._kernels import SamplingAlgorithm as SamplingAlgorithm
from ._kernels import check_preconditioner_size as check_preconditioner_size
from ._kernels import dual_averaging_init as dual_averaging_init
from ._kernels import dual_averaging_update as dual_averaging_update
from ._kernels import largest_curvature as largest_curvature
from ._kernels import mala as mala
from ._kernels import pcn as pcn
from ._kernels import pool_chains as pool_chains
from ._kernels import run_chain as run_chain
from ._kernels import run_chains as run_chains
from ._kernels import ula as ula
from ._laplace import GaussianApproximation as GaussianApproximation
from ._laplace import dense_laplace as dense_laplace
from ._laplace import laplace_pcn as laplace_pcn
from ._laplace import lbfgs_minimise as lbfgs_minimise
from ._preconditioners import LowRankPreconditioner as LowRankPreconditioner
from ._preconditioners import low_rank_preconditioner as low_rank_preconditioner
from ._preconditioners import (
    preconditioner_from_eigenpairs as preconditioner_from_eigenpairs,
)
from ._whitened import GaussNewtonResult as GaussNewtonResult
from ._whitened import descend as descend
from ._whitened import gauss_newton_laplace as gauss_newton_laplace
from ._whitened import gauss_newton_map as gauss_newton_map
from ._whitened import jacobian_rows as jacobian_rows
