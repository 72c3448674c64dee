"""`pdegen optimise`: minimise a standard test function and write a plot and JSON."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .._io import atomic_path, write_json_atomic

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    from ._optimise import METHODS
    from ._test_functions import TEST_FUNCTIONS

    p = subparsers.add_parser("optimise", help="global optimisation by low-temperature sampling",
                              description="Minimise a test function with DDS/PIS or a baseline.")
    p.add_argument("--function", default="rastrigin", choices=TEST_FUNCTIONS)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--method", default="dds", choices=METHODS)
    p.add_argument("--network", default="mlp", choices=["mlp", "coordinatewise"])
    p.add_argument("--gradient", action="store_true",
                   help="gradient-informed network (grad log pi input; costs one gradient "
                        "evaluation per path step)")
    p.add_argument("--budget", type=int, default=20000, help="maximum function evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="optimise_out", help="output directory")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import jax
    import jax.random as jr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._optimise import minimise
    from ._test_functions import test_function

    jax.config.update("jax_enable_x64", True)
    prob = test_function(args.function, args.dim)  # ValueError -> "pdegen optimise: error: ..."
    t0 = time.perf_counter()
    res = minimise(prob.fn, prob.domain, key=jr.key(args.seed), method=args.method,
                   max_evaluations=args.budget, network=args.network,
                   gradient_informed=args.gradient, batch_size=32, num_steps=16,
                   num_temperatures=4, progress=True)
    seconds = time.perf_counter() - t0
    gap = float(res.value) - prob.minimum
    print(f"{prob.name} d={args.dim} method={args.method}: f = {float(res.value):.6g} "
          f"(f* = {prob.minimum:.6g}, gap {gap:.3g}) after {res.num_evaluations} evaluations, "
          f"{seconds:.1f} s")
    print("x =", np.array2string(np.asarray(res.x), precision=5))
    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    gaps = np.maximum(np.asarray(res.best_values) - prob.minimum, 1e-12)
    ax.semilogy(np.asarray(res.evaluations), gaps)
    ax.set_xlabel("function evaluations")
    ax.set_ylabel("best f - f*")
    ax.set_title(f"{prob.name}, d={args.dim}, {args.method}")
    fig.tight_layout()
    png = os.path.join(args.out, "convergence.png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    write_json_atomic(os.path.join(args.out, "result.json"), {
        "function": prob.name, "dim": args.dim, "method": args.method,
        "network": args.network, "gradient_informed": args.gradient,
        "seed": args.seed, "budget": args.budget, "x": np.asarray(res.x).tolist(),
        "value": float(res.value), "minimum": prob.minimum, "gap": gap,
        "num_evaluations": int(res.num_evaluations), "seconds": seconds,
        "evaluations": np.asarray(res.evaluations).tolist(),
        "best_values": np.asarray(res.best_values).tolist(),
    })
    print(f"wrote {png} and {os.path.join(args.out, 'result.json')}")
    return 0
