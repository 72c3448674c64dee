"""Global optimisation with diffusion samplers: low-temperature controlled diffusions (DDS /
PIS from :mod:`pdegen.models`), their baselines, test functions, benchmark instances and
helpers."""

from ._benchmark import INDUCTIVE_BIAS as INDUCTIVE_BIAS
from ._benchmark import TARGETS as TARGETS
from ._benchmark import TOLERANCE as TOLERANCE
from ._benchmark import ecdf as ecdf
from ._benchmark import runtimes_to_targets as runtimes_to_targets
from ._budget import METHODS as METHODS
from ._budget import budget_parts as budget_parts
from ._budget import minimum_budget as minimum_budget
from ._counting import Counter as Counter
from ._counting import counted as counted
from ._diffusion import DiffusionOptimiser as DiffusionOptimiser
from ._diffusion import DiffusionOptimiserInfo as DiffusionOptimiserInfo
from ._diffusion import DiffusionOptimiserState as DiffusionOptimiserState
from ._diffusion import diffusion_optimiser as diffusion_optimiser
from ._functions import TEST_FUNCTIONS as TEST_FUNCTIONS
from ._functions import TestFunction as TestFunction
from ._functions import ackley as ackley
from ._functions import carrillo as carrillo
from ._functions import ellipsoid as ellipsoid
from ._functions import levy as levy
from ._functions import rastrigin as rastrigin
from ._functions import rosenbrock as rosenbrock
from ._functions import styblinski_tang as styblinski_tang
from ._functions import test_function as test_function
from ._instances import KINDS as KINDS
from ._instances import Instance as Instance
from ._instances import InstanceFamily as InstanceFamily
from ._instances import instance_family as instance_family
from ._instances import random_rotation as random_rotation
from ._instances import sample_instances as sample_instances
from ._minimise import OptimiseResult as OptimiseResult
from ._minimise import minimise as minimise
