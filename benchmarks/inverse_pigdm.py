"""PiGDM's variance: the closed form against the variance matched to the prior, with TMPD beside.

    python benchmarks/inverse_pigdm.py            # 32x32, 10 draws of the four linear tasks
    python benchmarks/inverse_pigdm.py --quick    # 16x16, 2 draws (writes inverse_pigdm_quick.json)

The exact GRF prior (so the only errors are the guidance's approximation and the sampler's):
``pigdm`` (PiGDM's closed-form ``r_t^2`` for white data of the prior's variance along the observed
rows), ``pigdm-matched`` (``r_t^2`` matched at every time to the prior's Tweedie covariance,
``inverse.matched_variance_table``) and ``tmpd`` (the full Tweedie covariance: exact for this
prior up to the sampler), each with the same samples, steps, sampler and keys. Per (task, method):
the ratio of the posterior mean's rel L2 to the exact posterior's and coverage90, mean +- std over
the draws, and seconds per sample. Writes ``benchmarks/results/inverse_pigdm.json``.
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

from _common import add_mean_std, machine_info, write_results  # noqa: E402

from pdegen import inverse  # noqa: E402

TASKS = ("poisson-inverse", "poisson-forward", "helmholtz-inverse", "helmholtz-forward")
METHODS = {
    "pigdm": "isotropic Tweedie covariance, PiGDM's closed form for white data of the prior's "
    "variance along the observed rows",
    "pigdm-matched": "isotropic Tweedie covariance, r_t^2 matched at each time to the prior's "
    "(Kullback-Leibler projection onto r^2 A A^T at 48 times, once per call; exact for a Gaussian "
    "prior, 16 trace probes per state for a learned one)",
    "tmpd": "full Tweedie covariance (m VJPs per step): exact for a Gaussian prior and a linear map",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16x16, 2 draws")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args(argv)
    grid, draws = (16, 2) if args.quick else (32, args.draws)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    prior = inverse.gaussian_prior(grid)
    rows = []
    for task_name in TASKS:
        records = {m: [] for m in METHODS}
        for index in range(draws):
            task = inverse.make_task(task_name, grid=grid, index=index)
            key = jax.random.key(500 + index)
            bayes = inverse.evaluate(
                inverse.sample_posterior(prior, task, method="bayes", key=key, num_samples=8), task
            )
            for method in METHODS:
                post = inverse.sample_posterior(
                    prior,
                    task,
                    method=method,
                    key=jax.random.fold_in(key, 1),
                    num_samples=args.samples,
                    num_steps=args.steps,
                )
                row = inverse.evaluate(post, task)
                records[method].append(
                    {
                        "ratio_to_bayes": row["rel_l2"] / bayes["rel_l2"],
                        "coverage90": row["coverage90"],
                        "seconds_per_sample": row["seconds_per_sample"],
                    }
                )
        for method, recs in records.items():
            r = add_mean_std(
                {"task": task_name, "method": method, "inductive_bias": METHODS[method]}, recs
            )
            rows.append(r)
            print(
                f"{task_name:18s} {method:14s} ratio {r['ratio_to_bayes']:.3f} +- "
                f"{r['ratio_to_bayes_std']:.3f}  coverage90 {r['coverage90']:.3f}  "
                f"{r['seconds_per_sample']:.3f} s/sample",
                flush=True,
            )
    path = write_results(
        "inverse_pigdm_quick" if args.quick else "inverse_pigdm",
        {
            "description": __doc__.strip().splitlines()[0],
            "grid": grid,
            "draws": draws,
            "samples": args.samples,
            "steps": args.steps,
            "prior": "exact-grf",
            "rows": rows,
            "machine": machine_info(load_start),
            "seconds": time.perf_counter() - t0,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
