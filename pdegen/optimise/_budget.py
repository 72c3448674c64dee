"""The smallest budget each method runs with, and a message that says what it is made of."""

from __future__ import annotations

from ._diffusion import evaluations_per_iteration
from ._polish import polish_plan

METHODS = ("dds", "pis", "adam", "lbfgs", "langevin", "random", "cmaes", "coordinate")
"""The ``method=`` names of :func:`minimise` (and ``pdegen optimise --method``)."""

# one evaluation at the centre of the box checks the objective (and counts)
CENTRE = 1


_SETTINGS = (
    "batch_size",
    "num_steps",
    "num_temperatures",
    "num_initial",
    "refine_steps",
    "num_best",
    "num_chains",
    "langevin_stages",
    "gradient_informed",
    "loss",
    "coordinate_grid_size",
)


def _defaults() -> dict:
    """The defaults of the settings that size a run, read from the signatures that define them."""
    import inspect

    from ._diffusion import diffusion_optimiser
    from ._minimise import minimise

    out = {}
    for fn in (diffusion_optimiser, minimise):  # minimise's own defaults take precedence
        for name, param in inspect.signature(fn).parameters.items():
            if name in _SETTINGS and param.default is not inspect.Parameter.empty:
                out[name] = param.default
    missing = set(_SETTINGS) - set(out)
    if missing:  # a renamed keyword: the budget would silently use a stale value
        raise RuntimeError(f"budget settings without a default: {sorted(missing)}")
    return out


def budget_parts(method: str, **settings) -> dict:
    """The evaluations ``minimise`` spends at its smallest budget, by part.

    The parts are ``centre``, ``initial``, ``per_iteration`` x ``iterations``, ``polish`` and
    ``search``; ``minimum`` is their sum. ``settings`` are :func:`pdegen.optimise.minimise`'s
    keyword arguments (defaults apply).
    """
    s = _defaults()
    s.update({k: v for k, v in settings.items() if k in s})
    polish = polish_plan(s["num_best"] if method in ("dds", "pis") else 8, s["refine_steps"]).cost
    if method in ("dds", "pis"):
        per = evaluations_per_iteration(
            s["gradient_informed"], s["loss"], s["batch_size"], s["num_steps"]
        )
        parts = dict(
            initial=s["num_initial"],
            per_iteration=per,
            iterations=s["num_temperatures"],
            polish=polish,
        )
    elif method == "langevin":
        # one start and one ULA step per chain at every temperature level
        parts = dict(
            initial=s["num_initial"],
            per_iteration=2 * 2 * s["num_chains"],
            iterations=s["langevin_stages"],
            polish=polish,
        )
    elif method == "adam":  # one restart of one value-and-gradient step and its final value
        parts = dict(per_iteration=2, iterations=1, search=1)
    elif method == "lbfgs":  # the start's value and gradient and one iteration
        parts = dict(search=4)
    elif method == "coordinate":  # the start point and one line of the grid
        parts = dict(search=1 + s["coordinate_grid_size"])
    else:  # random (the polish is dropped below twice its cost), cmaes
        parts = dict(search=1)
    parts = dict(centre=CENTRE, **parts)
    parts["minimum"] = (
        parts["centre"]
        + parts.get("initial", 0)
        + parts.get("per_iteration", 0) * parts.get("iterations", 0)
        + parts.get("polish", 0)
        + parts.get("search", 0)
    )
    return parts


def minimum_budget(method: str, **settings) -> int:
    """The smallest ``max_evaluations`` that :func:`minimise` runs a method with.

    ``settings`` are the other keyword arguments of that call (defaults apply).
    """
    return budget_parts(method, **settings)["minimum"]


def describe_minimum(method: str, **settings) -> str:
    """``"N evaluations (1 at the box centre + ...)"`` for error messages."""
    p = budget_parts(method, **settings)
    words = [f"{p['centre']} at the box centre"]
    if "initial" in p:
        words.append(f"{p['initial']} initial points")
    if "per_iteration" in p:
        what = {
            "dds": "one iteration per temperature",
            "pis": "one iteration per temperature",
            "langevin": "a start and one step of every chain per temperature",
            "adam": "one Adam step",
        }[method]
        words.append(f"{p['iterations']} x {p['per_iteration']} ({what})")
    if "polish" in p:
        words.append(f"{p['polish']} for the polish of the 8 best points")
    if "search" in p:
        words.append(f"{p['search']} of search")
    return f"{p['minimum']} evaluations ({' + '.join(words)})"
