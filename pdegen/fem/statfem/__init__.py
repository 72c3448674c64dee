"""Statistical FEM with Langevin dynamics.

The statFEM model ``A(theta) u = b(theta) + xi``, ``xi ~ N(0, G)``, observed as
``y = rho * H u + d + e`` (:class:`StatFEM`); its exact Gaussian posterior and marginal
likelihood in the linear case (:func:`exact_posterior`, :func:`log_marginal_likelihood`,
:func:`fit_hyperparameters`) without dense matrices: the mean and draws by sparse solves, the
pointwise variance by selected inversion of the sparse prior precision
(:meth:`ExactPosterior.variance`, :func:`sparse_prior_variance`); the nonlinear model
``-div(kappa (1 + alpha u^2) grad u) = f + xi`` with the FEM residual as the model error
(:class:`NonlinearStatFEM`, :func:`nonlinear_statfem_case`), where sampling is the only way;
preconditioners built without the answer (:func:`laplace_preconditioner` and
:meth:`NonlinearStatFEM.laplace_preconditioner`: Laplace / Gauss-Newton at the MAP, full or
low-rank; :func:`prior_preconditioner`; the Riesz map :meth:`NonlinearStatFEM.mass_preconditioner`)
and the exact one for reference (:func:`posterior_preconditioner`, an oracle); Langevin kernels
in the ``(init, step)`` form (:func:`ula`, :func:`mala`, :func:`pcn`), chains (:func:`run_chain`,
:func:`run_chains`) and diagnostics (:func:`chain_ess`, alias :func:`effective_sample_size`,
:func:`rhat`), all from the generic :mod:`pdegen.mcmc`; interacting particle Langevin for
parameters (:func:`ipla`, :func:`run_ipla`); and the ULA-statFEM test case
(:func:`ula_statfem_case`).
"""

from ._case import NonlinearCase as NonlinearCase
from ._case import StatFEMCase as StatFEMCase
from ._case import nonlinear_statfem_case as nonlinear_statfem_case
from ._case import ula_statfem_case as ula_statfem_case
from ._diffusivity import DiffusivityStatFEM as DiffusivityStatFEM
from ._exact import ExactPosterior as ExactPosterior
from ._exact import HyperparameterFit as HyperparameterFit
from ._exact import dense_preconditioner as dense_preconditioner
from ._exact import exact_posterior as exact_posterior
from ._exact import fit_hyperparameters as fit_hyperparameters
from ._exact import laplace_preconditioner as laplace_preconditioner
from ._exact import log_marginal_likelihood as log_marginal_likelihood
from ._exact import posterior_precision as posterior_precision
from ._exact import posterior_preconditioner as posterior_preconditioner
from ._exact import prior_preconditioner as prior_preconditioner
from ._exact import sparse_prior_variance as sparse_prior_variance
from ._exact import ula_stationary_covariance as ula_stationary_covariance
from ._ipla import IPLA as IPLA
from ._ipla import IPLAInfo as IPLAInfo
from ._ipla import IPLAResult as IPLAResult
from ._ipla import IPLAState as IPLAState
from ._ipla import ipla as ipla
from ._ipla import run_ipla as run_ipla
from ._kernels import ChainResult as ChainResult
from ._kernels import DualAveragingState as DualAveragingState
from ._kernels import LangevinState as LangevinState
from ._kernels import PCNState as PCNState
from ._kernels import Preconditioner as Preconditioner
from ._kernels import SamplerInfo as SamplerInfo
from ._kernels import SamplingAlgorithm as SamplingAlgorithm
from ._kernels import chain_ess as chain_ess
from ._kernels import dual_averaging_init as dual_averaging_init
from ._kernels import dual_averaging_update as dual_averaging_update
from ._kernels import effective_sample_size as effective_sample_size
from ._kernels import largest_curvature as largest_curvature
from ._kernels import mala as mala
from ._kernels import pcn as pcn
from ._kernels import pool_chains as pool_chains
from ._kernels import rhat as rhat
from ._kernels import run_chain as run_chain
from ._kernels import run_chains as run_chains
from ._kernels import ula as ula
from ._model import LinearSystem as LinearSystem
from ._model import StatFEM as StatFEM
from ._model import kernel_matrix as kernel_matrix
from ._model import sparse_logabsdet as sparse_logabsdet
from ._nonlinear import MAPResult as MAPResult
from ._nonlinear import NonlinearStatFEM as NonlinearStatFEM
from ._nonlinear import sparse_gaussian_preconditioner as sparse_gaussian_preconditioner
