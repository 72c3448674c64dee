"""`pdegen optimise`: minimise a standard test function and write a plot and JSON.

The budget is checked against the method's real minimum cost before anything is compiled, and
the result is checked to be finite before anything is written."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .._errors import NonFiniteError, UserError
from .._io import atomic_path, check_output_dir, write_json_atomic

FAMILIES = ("quadratic", "rastrigin", "poisson-sources")
"""The families of ``pdegen optimise --family``: ``pdegen.optimise.FAMILY_NAMES``, repeated here so
that the CLI starts without JAX (a test keeps them equal)."""

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``optimise`` sub-command to the ``pdegen`` parser.

    Called by :func:`pdegen.cli.build_parser` for every module listed in its sub-command
    modules; the parser's ``func`` default is :func:`run`.

    Args:
        subparsers: The object ``argparse.ArgumentParser.add_subparsers`` returned.

    Returns:
        The new sub-parser.
    """
    from ._budget import METHODS
    from ._functions import TEST_FUNCTIONS

    p = subparsers.add_parser(
        "optimise",
        help="global optimisation by low-temperature sampling",
        description="Minimise a test function with DDS/PIS or a baseline.",
    )
    p.add_argument("--function", default="rastrigin", choices=TEST_FUNCTIONS)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--method", default="dds", choices=METHODS)
    p.add_argument("--network", default="mlp", choices=["mlp", "coordinatewise"])
    p.add_argument(
        "--gradient",
        action="store_true",
        help="gradient-informed network (grad log pi input; costs one gradient "
        "evaluation per path step)",
    )
    p.add_argument(
        "--full-frame",
        action="store_true",
        help="dds/pis: the sampler's reference law follows the sample cloud's principal axes "
        "(rotation aware) instead of the box's axes",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=20000,
        help="maximum function evaluations (dds/pis need at least 1026: 1 at the box "
        "centre, 256 initial points, 4 temperatures of at least one 32-evaluation iteration, "
        "and the 641-evaluation polish of the 8 best points)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--family",
        choices=FAMILIES,
        help="learning to learn: train an amortised diffusion optimiser on this family, save it "
        "to OUT/amortised.eqx and apply it to the family member drawn by --seed (no further "
        "training). quadratic: ||W x - y||^2 of dimension --dim; rastrigin: rotated-shifted "
        "Rastrigin instances of dimension --dim; poisson-sources: place --dim / 2 heat sources "
        "so that the Poisson solution matches a target field (--dim even). --function, --method "
        "and --budget do not apply",
    )
    p.add_argument(
        "--train-iterations", type=int, default=1000, help="with --family (default 1000)"
    )
    p.add_argument(
        "--load",
        help="with --family: apply an optimiser saved before (OUT/amortised.eqx of an earlier "
        "run) instead of training one",
    )
    p.add_argument(
        "--polish",
        default="lbfgs",
        choices=["lbfgs", "adam"],
        help="with --family: the local search after sampling (lbfgs: projected L-BFGS from the "
        "best sample, 100 iterations; adam: successive-halving Adam from the 8 best, 80 steps)",
    )
    p.add_argument("--out", default="optimise_out", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# The settings `run` passes to `minimise`.
SETTINGS = dict(
    batch_size=32,
    num_steps=16,
    num_temperatures=4,
    num_initial=256,
    refine_steps=40,
    num_best=8,
    num_chains=32,
    adam_steps_per_restart=200,
    loss="log_variance",
)


def cost_plan(method: str, gradient: bool) -> dict:
    """The evaluations ``minimise`` spends with :data:`SETTINGS` at its smallest budget, by part
    (:func:`pdegen.optimise.budget_parts`); ``minimum`` their sum."""
    from ._budget import budget_parts

    return budget_parts(method, gradient_informed=gradient, **SETTINGS)


def check_options(args) -> dict:
    """Every option checked before any work (``UserError`` naming it); returns :func:`cost_plan`."""
    if args.dim < 1:
        raise UserError(f"--dim must be >= 1, got {args.dim}")
    if args.dim > 10_000:
        raise UserError(
            f"--dim {args.dim}: at most 10000 dimensions (the test functions are "
            f"benchmarks; a network over {args.dim} inputs does not fit a budget)"
        )
    if args.function == "rosenbrock" and args.dim < 2:
        raise UserError("--function rosenbrock needs --dim >= 2")
    if args.method == "cmaes":
        import importlib.util

        if importlib.util.find_spec("cma") is None:
            raise UserError(
                "--method cmaes needs the `cma` package: pip install cma (or choose "
                "another --method)"
            )
    plan = cost_plan(args.method, args.gradient)
    if args.budget < 1:
        raise UserError(
            f"--budget must be a positive number of function evaluations, got {args.budget}; "
            f"--method {args.method} needs at least {plan['minimum']} (default 20000)"
        )
    if args.budget < plan["minimum"]:
        from ._budget import describe_minimum

        parts = describe_minimum(args.method, gradient_informed=args.gradient, **SETTINGS)
        if args.gradient and args.method in ("dds", "pis"):
            factor = plan["per_iteration"] / cost_plan(args.method, False)["per_iteration"]
            parts += f"; --gradient makes each iteration cost {factor:g}x more"
        raise UserError(
            f"--budget {args.budget} is below the minimum of --method {args.method}: "
            f"{parts}; use --budget {plan['minimum']} or more (default 20000)"
        )
    return plan


def run(args) -> int:
    """Run ``pdegen optimise``: minimise a test function (or, with ``--family``, train and apply
    an amortised optimiser, :func:`run_family`) and write figures and a JSON summary to
    ``--out``.

    Args:
        args: The parsed command line (from the parser :func:`register` built).

    Returns:
        The exit code, 0 on success.

    Raises:
        pdegen._errors.UserError: A bad option, found by :func:`check_options` before any work.
    """
    if args.family:
        return run_family(args)
    plan = check_options(args)
    out = check_output_dir(args.out)

    import jax
    import jax.random as jr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._functions import test_function
    from ._minimise import minimise

    jax.config.update("jax_enable_x64", True)
    prob = test_function(args.function, args.dim)  # ValueError -> "pdegen optimise: error: ..."
    s = SETTINGS
    if args.method in ("dds", "pis"):
        iters = (args.budget - plan["centre"] - plan["initial"] - plan["polish"]) // (
            plan["per_iteration"] * s["num_temperatures"]
        )
        what = (
            f"{s['num_temperatures']} temperatures x {iters} iterations of {plan['per_iteration']} "
            f"evaluations, then a {plan['polish']}-evaluation polish of the 8 best points (Adam, "
            f"compiled and run after the annealing bar)"
        )
    elif args.method in ("langevin", "random"):
        what = (
            "search, then the polish of the 8 best points"
            if args.budget >= 2 * plan.get("polish", 641)
            else "search"
        )
    else:
        what = args.method
    print(
        f"pdegen optimise: {prob.name} d={args.dim}, {args.method}, budget {args.budget}: {what}",
        flush=True,
    )
    t0 = time.perf_counter()
    res = minimise(
        prob.fn,
        prob.domain,
        key=jr.key(args.seed),
        method=args.method,
        max_evaluations=args.budget,
        network=args.network,
        gradient_informed=args.gradient,
        full_frame=args.full_frame,
        batch_size=s["batch_size"],
        num_steps=s["num_steps"],
        num_temperatures=s["num_temperatures"],
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    x = np.asarray(res.x)
    if not (np.all(np.isfinite(x)) and np.isfinite(float(res.value))):
        raise NonFiniteError(
            f"--method {args.method}: the optimiser ended at a non-finite point or value "
            f"(f = {float(res.value)}); try another --method or --seed; nothing was written"
        )
    gap = float(res.value) - prob.minimum
    print(
        f"{prob.name} d={args.dim} method={args.method}: f = {float(res.value):.6g} "
        f"(f* = {prob.minimum:.6g}, gap {gap:.3g}) after {res.num_evaluations} evaluations, "
        f"{seconds:.1f} s"
    )
    print("x =", np.array2string(x, precision=5))
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    gaps = np.maximum(np.asarray(res.best_values) - prob.minimum, 1e-12)
    ax.semilogy(np.asarray(res.evaluations), gaps)
    ax.set_xlabel("function evaluations")
    ax.set_ylabel("best f - f*")
    ax.set_title(f"{prob.name}, d={args.dim}, {args.method}")
    png = os.path.join(out, "convergence.png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    write_json_atomic(
        os.path.join(out, "result.json"),
        {
            "function": prob.name,
            "dim": args.dim,
            "method": args.method,
            "network": args.network,
            "gradient_informed": args.gradient,
            "full_frame": args.full_frame,
            "seed": args.seed,
            "budget": args.budget,
            "minimum_budget": plan["minimum"],
            "x": x.tolist(),
            "value": float(res.value),
            "minimum": prob.minimum,
            "gap": gap,
            "num_evaluations": int(res.num_evaluations),
            "seconds": seconds,
            "evaluations": np.asarray(res.evaluations).tolist(),
            "best_values": np.asarray(res.best_values).tolist(),
        },
    )
    print(f"wrote {png} and {os.path.join(out, 'result.json')}")
    return 0


def run_family(args) -> int:
    """``--family``: train (or ``--load``) an amortised optimiser, save it, apply it to one
    member, print and plot its runtime-to-target curve."""
    if args.dim < 1:
        raise UserError(f"--dim must be >= 1, got {args.dim}")
    if args.family == "poisson-sources" and args.dim % 2:
        raise UserError(
            f"--family poisson-sources: --dim must be even (x, y per source), got {args.dim}"
        )
    if args.train_iterations < 4 and not args.load:
        raise UserError(
            f"--train-iterations must be >= 4 (one per temperature), got {args.train_iterations}"
        )
    if args.load and not (os.path.isfile(args.load) and os.path.isfile(args.load + ".json")):
        raise UserError(
            f"--load {args.load}: expected the file and {args.load}.json of a saved run"
        )
    out = check_output_dir(args.out)

    import jax
    import jax.random as jr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._amortised import apply_amortised, load_amortised, save_amortised, train_amortised
    from ._benchmark import TARGETS, runtimes_to_targets
    from ._local import AdamPolish, LBFGSPolish

    jax.config.update("jax_enable_x64", True)
    from ._family import make_family

    family = make_family(args.family, args.dim)
    polish = LBFGSPolish(steps=100) if args.polish == "lbfgs" else AdamPolish(steps=80)
    if args.load:
        amortised = load_amortised(args.load)
        if amortised.dim != family.dim:
            raise UserError(
                f"--load {args.load}: trained on d={amortised.dim}, but --dim is {args.dim}"
            )
        if amortised.family is not None and amortised.family != family.name:
            raise UserError(
                f"--load {args.load}: trained on the {amortised.family} family, not {family.name}"
            )
        print(f"pdegen optimise: loaded {args.load} (trained on {family.name} d={amortised.dim})")
    else:
        print(
            f"pdegen optimise: training on the {family.name} family d={args.dim} "
            f"({args.train_iterations} iterations)",
            flush=True,
        )
        amortised = train_amortised(
            family,
            key=jr.key(args.seed),
            iterations=args.train_iterations,
            tasks_per_iteration=4,
            batch_size=8,
            final_temperature_ratio=1e-2,
            progress=not args.quiet,
        )
    out.mkdir(parents=True, exist_ok=True)
    saved = os.path.join(out, "amortised.eqx")
    save_amortised(saved, amortised)
    # the member: drawn from a key that training never uses
    task = family.sample(jr.fold_in(jr.key(2**20), args.seed), 1)
    minimum = family.minimum(jax.tree.map(lambda a: a[0], task))
    t0 = time.perf_counter()
    res = apply_amortised(amortised, family, task, key=jr.key(args.seed + 1), polish=polish)
    seconds = time.perf_counter() - t0
    value = float(res.value[0])
    if not np.isfinite(value):
        raise NonFiniteError("--family: the optimiser ended at a non-finite value; nothing written")
    runtimes = runtimes_to_targets(res.evaluations, res.best_values, minimum)[0]
    print(
        f"{family.name} d={args.dim} member {args.seed}: f = {value:.6g} (f* = {minimum:.6g}, gap "
        f"{value - minimum:.3g}) after {res.num_evaluations} evaluations, {seconds:.1f} s; "
        f"training cost {amortised.training_evaluations} evaluations"
    )
    print("runtime to target (evaluations until the gap is below the target):")
    for target, r in zip(TARGETS, runtimes):
        print(f"  gap <= {target:<8g} {'not reached' if not np.isfinite(r) else int(r)}")
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    gaps = np.maximum(res.best_values[0] - minimum, 1e-16)
    ax.semilogy(res.evaluations, gaps, label="best gap")
    for target, r in zip(TARGETS, runtimes):
        if np.isfinite(r):
            ax.plot([r], [target], "k.", ms=6)
    ax.set_xlabel("function evaluations (after training)")
    ax.set_ylabel("best f - f*")
    ax.set_title(f"amortised optimiser, {family.name} d={args.dim}, member {args.seed}")
    png = os.path.join(out, "runtime_to_target.png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    write_json_atomic(
        os.path.join(out, "result.json"),
        {
            "family": family.name,
            "dim": args.dim,
            "seed": args.seed,
            "value": value,
            "minimum": minimum,
            "gap": value - minimum,
            "num_evaluations": res.num_evaluations,
            "training_evaluations": amortised.training_evaluations,
            "seconds": seconds,
            "targets": list(TARGETS),
            "runtimes_to_targets": [None if not np.isfinite(r) else int(r) for r in runtimes],
            "evaluations": np.asarray(res.evaluations).tolist(),
            "best_values": np.asarray(res.best_values[0]).tolist(),
        },
    )
    print(f"wrote {saved}, {png} and {os.path.join(out, 'result.json')}")
    return 0
