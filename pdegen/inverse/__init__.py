"""Inverse problems, constrained generation and optimisation: where physics meets generative models."""

from ._gaussian import GaussianPosterior as GaussianPosterior
from ._gaussian import gaussian_posterior as gaussian_posterior
from ._guidance import dps as dps
from ._guidance import energy_guidance as energy_guidance
from ._guidance import pigdm as pigdm
from ._guidance import tmpd as tmpd
from ._guidance import tweedie_mean as tweedie_mean
from ._optimise import DiffusionOptimiserState as DiffusionOptimiserState
from ._optimise import METHODS as METHODS
from ._optimise import OptimiseResult as OptimiseResult
from ._optimise import diffusion_optimiser as diffusion_optimiser
from ._optimise import minimise as minimise
from ._test_functions import TEST_FUNCTIONS as TEST_FUNCTIONS
from ._test_functions import TestFunction as TestFunction
from ._test_functions import ackley as ackley
from ._test_functions import carrillo as carrillo
from ._test_functions import levy as levy
from ._test_functions import rastrigin as rastrigin
from ._test_functions import rosenbrock as rosenbrock
from ._test_functions import styblinski_tang as styblinski_tang
from ._test_functions import test_function as test_function
