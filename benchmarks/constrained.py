"""Hard-constrained sampling: feasibility and fidelity of the reflected and Metropolis samplers.

    python benchmarks/constrained.py [--quick] [--grid 32] [--seeds 10] [--per-seed 40]

Three examples, every sample checked against its constraints with no tolerance beyond rounding
(``domain.contains(x, atol=0)``; the fixed sum to ``n eps mass``):

- ``diffusivity``: a log-normal Darcy diffusivity ``a = exp(x)`` (``x`` the alpha=2, tau=3 GRF at unit
  pointwise standard deviation) restricted to ``exp(-2.2) <= a <= exp(2.2)`` at every pixel
  (:func:`pdegen.inverse.bounded_diffusivity_prior`);
- ``source``: a non-negative source ``f = 1 + 0.4 x`` with total mass 1 (pixel area ``1/g^2``),
  i.e. ``f`` on the simplex ``{f >= 0, sum f = g^2}`` (:func:`pdegen.inverse.fixed_mass_source_prior`);
- ``design``: 8 design variables, ``N(m, diag(s^2))`` truncated to ``[0, 1]^8``, with the exact
  reflected-noised score (:class:`pdegen.models.TruncatedNormalScore`).

What is compared. Fields: the restricted prior (the unconstrained GRF conditioned on the set) is
drawn exactly by rejection (``HardConstrainedPrior.rejection_sample``); for each sampler and seed
(``--per-seed`` samples from one key), the mean over samples of the power of the state
(``log a``, or ``f - 1``) per octave band of the DCT wavenumber is divided by the same mean over the
rejection samples: the *band ratio*. Reported: per band, the mean, standard deviation, min and max
of the ratio over ``--seeds`` seeds, and the reference's own standard error. Target: every sample
feasible, and every band's mean ratio within +-15%. Design: the sample mean and variance against
scipy's ``truncnorm`` in standard errors (target: within 4).

Writes ``benchmarks/results/constrained.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import band_power_per_sample, machine_info, write_results  # noqa: E402

from pdegen import inverse, models  # noqa: E402

TOLERANCE = 0.15


def band_means(states: np.ndarray, mode_var: np.ndarray, centre: float) -> dict:
    """Per band: the mean over samples of the band power (over the exact unconstrained power)."""
    per = band_power_per_sample(states[:, 0] - centre, mode_var)
    return {k: float(v.mean()) for k, v in per.items()}


def field_example(prior, name, args, key) -> dict:
    mode_var = np.asarray(prior.mode_var)
    t0 = time.perf_counter()
    ref, acceptance = prior.rejection_sample(args.reference, key=jr.fold_in(key, 999))
    ref_per = band_power_per_sample(ref[:, 0] - prior.centre, mode_var)
    ref_mean = {k: float(v.mean()) for k, v in ref_per.items()}
    ref_se = {k: float(v.std(ddof=1) / np.sqrt(v.size) / v.mean()) for k, v in ref_per.items()}
    out = {
        "prior": prior.name,
        "reference": {
            "method": "rejection from the unconstrained GRF",
            "num_samples": int(ref.shape[0]),
            "acceptance": acceptance,
            "relative_standard_error": ref_se,
            "seconds": time.perf_counter() - t0,
        },
        "samplers": {},
    }
    contains = jax.jit(jax.vmap(prior.domain.contains))
    variants = [(m, 0) for m in args.methods.split(",")]
    variants += [(m, args.pcn_steps) for m in args.methods.split(",") if args.pcn_steps]
    for method, pcn_steps in variants:
        label = method if not pcn_steps else f"{method} + {pcn_steps} pCN"
        ratios, feasible, total, seconds = [], 0, 0, 0.0
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            x = prior.sample(
                args.per_seed,
                key=jr.fold_in(key, seed),
                method=method,
                num_steps=args.num_steps,
                corrector_steps=args.corrector_steps,
                pcn_steps=pcn_steps,
            )
            x = np.asarray(jax.block_until_ready(x))
            seconds += time.perf_counter() - t0
            feasible += int(np.asarray(contains(jnp.asarray(x))).sum())
            total += x.shape[0]
            means = band_means(x, mode_var, prior.centre)
            ratios.append({k: means[k] / ref_mean[k] for k in ref_mean})
        bands = {}
        for k in ref_mean:
            r = np.array([d[k] for d in ratios])
            bands[k] = {
                "mean": float(r.mean()),
                "std": float(r.std(ddof=1)) if r.size > 1 else 0.0,
                "min": float(r.min()),
                "max": float(r.max()),
            }
        met = feasible == total and all(abs(b["mean"] - 1) <= TOLERANCE for b in bands.values())
        out["samplers"][label] = {
            "feasible": f"{feasible}/{total}",
            "feasible_fraction": feasible / total,
            "band_ratio": bands,
            "seconds_per_sample": seconds / total,
            "target_met": bool(met),
        }
        print(f"\n{name} / {label}: feasible {feasible}/{total}, target met: {met}")
        print(f"  {'band':>7} {'mean':>7} {'std':>7} {'min':>7} {'max':>7}  ref s.e.")
        for k, b in bands.items():
            print(
                f"  {k:>7} {b['mean']:7.3f} {b['std']:7.3f} {b['min']:7.3f} {b['max']:7.3f}"
                f"  {ref_se[k]:.3f}"
            )
    return out


def design_example(args, key) -> dict:
    d = 8
    box = models.Box(0.0, 1.0, shape=(d,))
    mean = np.linspace(-0.2, 1.1, d)
    std = np.linspace(0.15, 0.6, d)
    sde = models.VESDE(sigma_min=1e-3, sigma_max=2.0)
    truth = models.TruncatedNormalScore(box, mean, std, sde)
    t_mean, t_var = truth.truncated_moments()
    n = args.seeds * args.design_per_seed
    out = {
        "prior": f"N(m, diag(s^2)) on [0, 1]^{d}",
        "mean": mean.tolist(),
        "std": std.tolist(),
        "samplers": {},
    }
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        x = models.sample_constrained_domain(
            truth, sde, box, n, key=key, method=method, num_steps=args.design_steps
        )
        x = np.asarray(jax.block_until_ready(x))
        seconds = time.perf_counter() - t0
        feasible = int(np.asarray(jax.vmap(box.contains)(jnp.asarray(x))).sum())
        c = x - x.mean(0)
        var_hat = x.var(0)
        z_mean = (x.mean(0) - t_mean) / np.sqrt(var_hat / n)
        z_var = (var_hat - t_var) / np.sqrt((np.mean(c**4, 0) - var_hat**2) / n)
        met = feasible == n and np.all(np.abs(z_mean) < 4) and np.all(np.abs(z_var) < 4)
        out["samplers"][method] = {
            "feasible": f"{feasible}/{n}",
            "mean_error_in_standard_errors": z_mean.tolist(),
            "variance_error_in_standard_errors": z_var.tolist(),
            "variance_ratio": (var_hat / t_var).tolist(),
            "seconds_per_sample": seconds / n,
            "target_met": bool(met),
        }
        print(
            f"\ndesign / {method}: feasible {feasible}/{n}, max |z| mean {np.abs(z_mean).max():.2f},"
            f" variance {np.abs(z_var).max():.2f}, target met: {met}"
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples and steps, no JSON")
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--per-seed", type=int, default=40)
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--num-steps", type=int, default=500)
    parser.add_argument("--corrector-steps", type=int, default=1)
    parser.add_argument("--pcn-steps", type=int, default=200, help="0: no pCN-corrected rows")
    parser.add_argument("--design-per-seed", type=int, default=400)
    parser.add_argument("--design-steps", type=int, default=400)
    parser.add_argument("--methods", default="reflected,metropolis")
    parser.add_argument("--examples", default="diffusivity,source,design")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.grid, args.seeds, args.per_seed, args.reference = 16, 2, 8, 200
        args.num_steps, args.design_per_seed, args.design_steps = 100, 50, 100
        args.pcn_steps = 50
    key = jr.key(args.seed)
    examples = args.examples.split(",")
    results = {
        "compared": (
            "fields: per octave band of the DCT wavenumber, the mean band power of the state (log a, "
            "or f - mass) over a seed's samples divided by the mean over rejection samples of the "
            "restricted prior; mean/std/min/max over seeds; target: all samples feasible and every "
            "band's mean ratio within +-15%. design: sample mean and variance against scipy truncnorm "
            "in standard errors; target: within 4"
        ),
        "command": "python benchmarks/constrained.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items()},
        "tolerance": TOLERANCE,
        "machine": machine_info(),
        "examples": {},
    }
    if "diffusivity" in examples:
        prior = inverse.bounded_diffusivity_prior(
            args.grid, a_min=float(np.exp(-2.2)), a_max=float(np.exp(2.2))
        )
        results["examples"]["diffusivity"] = field_example(
            prior, "diffusivity", args, jr.fold_in(key, 1)
        )
    if "source" in examples:
        prior = inverse.fixed_mass_source_prior(args.grid, mass=1.0, std=0.4)
        results["examples"]["source"] = field_example(prior, "source", args, jr.fold_in(key, 2))
    if "design" in examples:
        results["examples"]["design"] = design_example(args, jr.fold_in(key, 3))
    if not args.quick:
        print(f"\nwrote {write_results('constrained', results)}")


if __name__ == "__main__":
    main()
