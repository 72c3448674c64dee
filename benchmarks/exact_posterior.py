"""The exact Gaussian posterior of the benchmark tasks (the Bayes floor): seconds per task draw.

    python benchmarks/exact_posterior.py                      # 128x128, 500 sensors, 3 draws
    python benchmarks/exact_posterior.py --grid 64 --quick    # 2 draws of poisson-inverse

Every learned-prior row is divided by this posterior's error, so its cost is paid on every draw of
``benchmarks/inverse_learned.py`` and ``benchmarks/gpu.sh``. Per task: the first draw (the task
family's sparse FEM factors, the dense solution operator where the target is ``u``, compilation)
and the mean of the later draws (16 posterior samples each, synchronised). Writes
``benchmarks/results/exact_posterior_<grid>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, mean_std, write_results  # noqa: E402

from pdegen import inverse  # noqa: E402

TASKS = ("poisson-inverse", "poisson-forward", "helmholtz-inverse", "helmholtz-forward")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--sensors", type=int, default=500)
    p.add_argument("--draws", type=int, default=3, help="draws per task (>= 2)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--quick", action="store_true", help="2 draws of poisson-inverse")
    args = p.parse_args(argv)
    tasks = ("poisson-inverse",) if args.quick else tuple(t for t in args.tasks.split(",") if t)
    draws = 2 if args.quick else args.draws
    if draws < 2:
        p.error("--draws must be >= 2 (the first draw includes one-off work)")
    load = os.getloadavg()
    rows = []
    for name in tasks:
        seconds = []
        for index in range(draws):
            task = inverse.make_task(
                name, grid=args.grid, sensor_fraction=args.sensors / args.grid**2, index=index
            )
            t0 = time.perf_counter()
            post = inverse.sample_posterior(
                inverse.gaussian_prior(args.grid),
                task,
                method="bayes",
                key=jax.random.key(index),
                num_samples=args.samples,
            )
            jax.block_until_ready(post.samples)
            seconds.append(time.perf_counter() - t0)
        later, later_std = mean_std(seconds[1:])
        rows.append(
            {
                "task": name,
                "first_draw_seconds": seconds[0],
                "later_draw_seconds": later,
                "later_draw_seconds_std": later_std,
                "draws": draws,
            }
        )
        print(
            f"{name:<18} first draw {seconds[0]:7.1f} s, later draws {later:6.2f} +- "
            f"{later_std:.2f} s",
            flush=True,
        )
    path = write_results(
        f"exact_posterior_{args.grid}" + ("_quick" if args.quick else ""),
        {
            "description": __doc__.splitlines()[0],
            "grid": args.grid,
            "sensors": args.sensors,
            "samples": args.samples,
            "rows": rows,
            "machine": machine_info(load),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
