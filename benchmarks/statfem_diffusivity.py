"""statFEM with the diffusivity unknown alongside u: Langevin samplers on the joint posterior.

The ULA-statFEM case (``-div(kappa grad u) = 1 + xi`` on the unit square, 128 sensors, sigma_e
5e-4, sigma_f 0.1) with ``log kappa = log(1 + 0.3 sin(pi (x + y))) + w`` and ``w`` unknown: a
squared-exponential Gaussian process (scale 0.2, length 0.2) truncated to the Karhunen-Loeve modes
holding 99.9% of its variance (:class:`pdegen.fem.statfem.DiffusivityStatFEM`). The state is the
white noise of ``w`` and of the forcing ``xi`` (the non-centred form) or ``(v, x)`` with ``x`` the
free dofs of ``u`` (the centred form, whose energy has ``log |det A(kappa)|``, its gradient by
selected inversion), or ``v`` alone (the collapsed form: ``u`` integrated out by the linear
model's marginal likelihood, 45 dimensions, and drawn exactly given each kept ``v``). The
samplers, every preconditioner built from the model and the data with its time counted:

- ``pcn-laplace-collapsed``: pCN in the collapsed form with the Laplace approximation at its mode
  as the reference measure (L-BFGS mode, Hessian by central differences of the gradient; at
  ``beta = 1`` the independence sampler with the Laplace proposal);
- ``pmala-laplace-collapsed``: MALA in the collapsed form preconditioned by the same Laplace
  covariance;
- ``pmala-laplace-centred``: MALA in the centred form preconditioned by the Gauss-Newton Laplace
  approximation at the MAP point (a dense Cholesky factor of ``J^T J``);
- ``pmala-laplace``: MALA in the non-centred form preconditioned by ``(I + J^T J)^{-1}`` at its
  MAP point (``J``: one adjoint solve per sensor);
- ``pcn``: preconditioned Crank-Nicolson with the prior ``N(0, I)`` (gradient-free);
- ``mala``: MALA without a preconditioner in the non-centred form (i.e. preconditioned by the
  prior).

Each runs 4 chains from prior draws (the Laplace samplers from Laplace draws around their MAP
point) until
the posterior mean of ``log kappa`` and of ``u`` are both within 1% and their pointwise variances
within 10% (relative L2) of a reference stored once in
``benchmarks/results/statfem_diffusivity_reference_<grid>.npz`` (8 long chains of the collapsed
Laplace pCN, ``u`` drawn exactly given every 4th state, split R-hat and ESS recorded), or until its budget ends (``--budget``; the samplers after the first
get 10.5 times its time to tolerance, at most ``--max-budget``), so a sampler that does not reach
the tolerances bounds the speedup from below.
Moments are accumulated on every 5th state (the fields cost one more solve), on every state for
the collapsed samplers (nearly independent draws; a draw of ``u`` given each ``v``, timed). Compilation is
excluded; set-up and warm-up are included.

Run from the repository root: ``python benchmarks/statfem_diffusivity.py [--quick]`` (``--quick``:
32x32 only, short budgets). Writes ``benchmarks/results/statfem_diffusivity.json``. Budgets of
hours run in pieces: every 5 minutes, and when ``--stop-after MINUTES`` have passed, a sampler's
chains wait in ``benchmarks/results/partial/`` (see ``_resumable.py``); the same command continues
them (the row records its ``sessions``). ESS and R-hat come from about 256 evenly spaced
coordinates of ``(log kappa, u)``, at most 400 states per chain (rows before this recorded all
coordinates of the first 400 blocks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax

jax.config.update("jax_enable_x64", True)

import _resumable as resumable  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import machine_info, write_results  # noqa: E402
from _reference import long_run_reference, reference_id, traced_coordinates  # noqa: E402
from _tolerance import add_speedups, tolerance_row, tolerance_table  # noqa: E402
from jax import lax  # noqa: E402

from pdegen import mcmc  # noqa: E402
from pdegen.fem import statfem  # noqa: E402


class Setting(NamedTuple):
    """How a sampler is run: the form of its state, its warm-up steps (step-size adaptation) and
    the stride of the states whose fields enter the moments."""

    form: str  # "collapsed" (v), "centred" (v, x) or "white" (v, eta)
    warmup: int = 500
    thin: int = 5  # the fields cost a solve


# pCN around the Laplace approximation stays at beta = 1 (short warm-up); the collapsed samplers'
# draws are nearly independent, so every state enters the moments (its u draw is timed)
SETTINGS = {
    "pcn-laplace-collapsed": Setting("collapsed", warmup=100, thin=1),
    "pmala-laplace-collapsed": Setting("collapsed", thin=1),
    "pmala-laplace-centred": Setting("centred"),
    "pmala-laplace": Setting("white"),
    "pcn": Setting("white"),
    "mala": Setting("white"),
}
SAMPLERS = tuple(SETTINGS)
REFERENCE_THIN = 4
MEAN_TOL, VAR_TOL = 0.01, 0.10
BUDGET_FACTOR = 10.5
NUM_CHAINS = 4
REFERENCE_CHAINS = 8
BLOCK = 250
CHECKPOINT_S = 300.0
RESULTS = Path(__file__).resolve().parent / "results"


def base_log_diffusivity(x):
    return jnp.log(1.0 + 0.3 * jnp.sin(math.pi * (x[0] + x[1])))


def make_case(grid, key):
    case = statfem.ula_statfem_case(grid, key=key)
    dm = statfem.DiffusivityStatFEM(case.model, log_kappa_mean=base_log_diffusivity)
    return dm, case


def quantity(dm, form, y=None):
    """``(state, key) -> (log kappa at the nodes, u at the free dofs)`` for a state of ``form``
    (``'white'``, ``'centred'`` or ``'collapsed'``; the last draws ``u`` given ``v``, exactly)."""
    r = dm.num_modes

    def log_kappa(v):
        return dm.log_kappa_mean + dm.modes @ v

    if form == "centred":
        return lambda s, key: jnp.concatenate([log_kappa(s[:r]), s[r:]])
    if form == "collapsed":
        return lambda v, key: jnp.concatenate([log_kappa(v), dm.sample_solution(v, y, key=key)])
    return lambda z, key: jnp.concatenate([dm.log_diffusivity(z), dm.solution(z)])


def collapsed_laplace(dm, y):
    """(collapsed energy, Laplace approximation at its mode, L-BFGS iterations)."""
    mp = dm.collapsed_map_point(y)
    return dm.collapsed_energy_fn(y), dm.collapsed_laplace(y, mp.x), mp.iterations


def kernel_for(name, dm, y, key):
    """(kernel, first states, set-up seconds, info): everything from the model and the data."""
    t0 = time.perf_counter()
    keys = jax.random.split(jax.random.fold_in(key, 1), NUM_CHAINS)
    info = {}
    if name not in SETTINGS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
    if SETTINGS[name].form == "collapsed":
        energy, la, its = collapsed_laplace(dm, y)
        info.update(map_iterations=its)
        if name == "pcn-laplace-collapsed":
            kernel = mcmc.laplace_pcn(energy, la)
        else:
            kernel = statfem.mala(energy, 0.5, preconditioner=la.preconditioner)
        x0 = jnp.stack([la.sample(key=k) for k in keys])
    elif name == "pmala-laplace-centred":
        mp = dm.centred_map_point(y)
        pre = dm.centred_laplace_preconditioner(y, mp.x)
        info.update(map_iterations=mp.iterations)
        kernel = statfem.mala(dm.centred_energy_fn(y), 0.5, preconditioner=pre)
        x0 = jnp.stack([mp.x + pre.sample(key=k) for k in keys])
    elif name == "pmala-laplace":
        mp = dm.map_point(y)
        lr = dm.laplace_preconditioner(y, mp.x, key=jax.random.fold_in(key, 2))
        pre = lr.preconditioner
        info.update(map_iterations=mp.iterations, rank=int(lr.eigenvalues.shape[0]))
        info["eigenvalues_first_last"] = [float(lr.eigenvalues[0]), float(lr.eigenvalues[-1])]
        kernel = statfem.mala(dm.energy_fn(y), 0.5, preconditioner=pre)
        x0 = jnp.stack([mp.x + pre.sample(key=k) for k in keys])
    elif name == "pcn":
        kernel = statfem.pcn(
            dm.misfit_fn(y), 0.1, prior_mean=jnp.zeros(dm.dim), prior=dm.prior_preconditioner()
        )
        x0 = jnp.stack([dm.sample_prior(key=k) for k in keys])
    else:  # "mala"
        x0 = jnp.stack([dm.sample_prior(key=k) for k in keys])
        energy = dm.energy_fn(y)
        lam = float(statfem.largest_curvature(energy, x0[0], num_iterations=40))
        kernel = statfem.mala(energy, 1.0 / lam)
    jax.block_until_ready(x0)
    return kernel, x0, time.perf_counter() - t0, info


def fastest(samplers: dict) -> str | None:
    """The sampler that reached the tolerances soonest (``None`` if none did)."""
    done = {k: r["seconds_to_tolerance"] for k, r in samplers.items() if r["seconds_to_tolerance"]}
    return min(done, key=done.get) if done else None


def make_block(kernel, q, thin):
    """Jitted block of BLOCK steps for all chains; moments of q on every ``thin``-th state."""

    def one_chain(key, state, moments):
        def outer(carry, k):
            st, (n, mean, m2) = carry
            k_steps, k_q = jax.random.split(k)
            st, _ = lax.scan(
                lambda s, kk: (kernel.step(s, key=kk)[0], None), st, jax.random.split(k_steps, thin)
            )
            v = q(st.position, k_q)
            n = n + 1.0
            d = v - mean
            mean = mean + d / n
            return (st, (n, mean, m2 + d * (v - mean))), v

        (state, moments), trace = lax.scan(
            outer, (state, moments), jax.random.split(key, BLOCK // thin)
        )
        return state, moments, trace

    return jax.jit(jax.vmap(one_chain))


def errors(moments, ref_mean, ref_var, split):
    n, mean, m2 = moments
    var = m2 / n[:, None]
    pm = jnp.mean(mean, axis=0)
    pv = jnp.mean(var + mean**2, axis=0) - pm**2

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    parts = (slice(0, split), slice(split, None))
    return (
        max(rel(pm[p], ref_mean[p]) for p in parts),
        max(rel(pv[p], ref_var[p]) for p in parts),
    )


def run_sampler(name, dm, y, ref, budget_s, key, *, checkpoint=None, stop_at=None):
    """One sampler's time-to-tolerance row, or ``None`` when ``stop_at`` (a ``perf_counter``
    time) came first: then the chains wait in ``checkpoint`` (also written every
    ``CHECKPOINT_S``) and the same call continues them. Warm-up runs once; ESS and R-hat come from
    the bounded trace of about 256 evenly spaced coordinates."""
    kernel, x0, setup_s, info = kernel_for(name, dm, y, key)
    setting = SETTINGS[name]
    warmup = setting.warmup
    qf = quantity(dm, setting.form, y)
    split = dm.model.structure.ndofs
    block = make_block(kernel, qf, setting.thin)
    size = split + dm.model.dim  # log kappa at the nodes, then u at the free dofs
    zeros = (jnp.zeros(NUM_CHAINS), jnp.zeros((NUM_CHAINS, size)), jnp.zeros((NUM_CHAINS, size)))
    t0 = time.perf_counter()
    res = statfem.run_chains(kernel, x0, 1, 1, key=jax.random.fold_in(key, 3))
    jax.block_until_ready(block(jax.random.split(key, NUM_CHAINS), res.state, zeros))
    compile_s = time.perf_counter() - t0

    tag = f"{name}|{reference_id(ref)}"
    st = resumable.load(checkpoint, tag=tag, like_state=res.state) if checkpoint else None
    if st is None:
        t0 = time.perf_counter()
        # warm-up (step-size adaptation), then 50 steps that measure the acceptance rate
        res = statfem.run_chains(kernel, x0, 50, warmup, key=jax.random.fold_in(key, 4))
        state, moments, steps, reached = res.state, zeros, 50, None
        acceptance, segments = np.asarray(res.acceptance_rate), 1
        trace = resumable.BoundedTrace(NUM_CHAINS, traced_coordinates(size))
        done_s = 0.0
    else:
        state, moments, trace = st["state"], st["moments"], st["trace"]
        steps, done_s, acceptance = int(st["steps"]), float(st["seconds"]), st["acceptance"]
        setup_s, budget_s, segments = (
            float(st["setup_s"]),
            float(st["budget_s"]),
            int(st["segments"]) + 1,
        )
        reached = None
        print(
            f"  {name}: continuing at step {steps} ({done_s:.0f} s of {budget_s:.0f})", flush=True
        )
        t0 = time.perf_counter()
    ref_mean, ref_var = jnp.asarray(ref["mean"]), jnp.asarray(ref["variance"])
    last_save = time.perf_counter()

    def keep(stopped):
        resumable.save(
            checkpoint, tag=tag, state=state, moments=moments, trace=trace, steps=steps,
            seconds=done_s + time.perf_counter() - t0, acceptance=acceptance, setup_s=setup_s,
            budget_s=budget_s, segments=segments,
        )  # fmt: skip
        if stopped:
            print(f"  {name}: paused at step {steps}; checkpoint {checkpoint}", flush=True)

    while True:
        keys = jax.random.split(jax.random.fold_in(key, 10 + steps), NUM_CHAINS)
        state, moments, block_trace = block(keys, state, moments)
        steps += BLOCK
        trace.add(block_trace)
        mean_err, var_err = errors(moments, ref_mean, ref_var, split)
        elapsed = done_s + time.perf_counter() - t0
        if reached is None and mean_err < MEAN_TOL and var_err < VAR_TOL:
            reached = dict(seconds=elapsed, steps=steps)
        if reached is not None or elapsed > budget_s:
            break
        now = time.perf_counter()
        if checkpoint is not None and stop_at is not None and now > stop_at:
            keep(stopped=True)
            return None
        if checkpoint is not None and now - last_save > CHECKPOINT_S:
            keep(stopped=False)
            last_save = now
    sample_s = done_s + time.perf_counter() - t0
    out = tolerance_row(
        kernel,
        state=state,
        acceptance=acceptance,
        samples=jnp.asarray(trace.values, jnp.float64),
        sample_s=sample_s,
        setup_s=setup_s,
        compile_s=compile_s,
        warmup=warmup,
        steps=steps,
        errors=(mean_err, var_err),
        reached=reached,
        num_chains=NUM_CHAINS,
    )
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    diagnostics = dict(traced_coordinates=int(trace.coords.size), trace_stride=trace.stride)
    return {**out, "budget_s": budget_s, "sessions": segments, **diagnostics, **info}


def reference(dm, y, grid, key, num_steps, store=True):
    """Long runs of pCN around the collapsed Laplace approximation (exact in the limit), ``u``
    drawn exactly given every ``REFERENCE_THIN``-th state (:func:`_reference.long_run_reference`:
    stored once, resumable, extendable; ``store=False``: a short run for ``--quick``)."""
    path = RESULTS / f"statfem_diffusivity_reference_{grid}.npz"

    def build():  # deterministic: recomputed on resume
        energy, la, _ = collapsed_laplace(dm, y)
        keys = jax.random.split(jax.random.fold_in(key, 2), REFERENCE_CHAINS)
        return mcmc.laplace_pcn(energy, la), jnp.stack([la.sample(key=k) for k in keys])

    return long_run_reference(
        build,
        num_steps,
        key=jax.random.fold_in(key, 3),
        path=path,
        quantity=jax.jit(jax.vmap(jax.vmap(quantity(dm, "collapsed", y)))),
        thin=REFERENCE_THIN,
        store=store,
        data=np.asarray(y),
    )


def print_stored(name: str) -> int:
    """Recompute the speedups of ``benchmarks/results/<name>.json`` and print its table."""
    results = json.loads((RESULTS / f"{name}.json").read_text())
    rows = []
    for grid, g in results["grids"].items():
        add_speedups(g["samplers"], fastest(g["samplers"]))
        rows += [(int(grid), k, r) for k, r in g["samplers"].items()]
    write_results(name, results)
    print(tolerance_table(rows))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="32x32 only, short reference and budgets")
    p.add_argument("--grids", default=None, help="comma-separated grids (default 32,64)")
    p.add_argument(
        "--samplers",
        default=",".join(SAMPLERS),
        help="samplers to run; the stored rows of the others are kept",
    )
    p.add_argument("--budget", type=float, default=300.0, help="seconds per sampler (at least)")
    p.add_argument(
        "--max-budget",
        type=float,
        default=900.0,
        help="cap on the budget of the samplers after the first (10.5x its time to tolerance)",
    )
    p.add_argument("--out", default=None, help="results name (default statfem_diffusivity[_quick])")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        help="minutes: then a running sampler pauses in its checkpoint (results/partial/), and "
        "the same command later continues it",
    )
    p.add_argument(
        "--table", action="store_true", help="print the table of the stored results; run nothing"
    )
    args = p.parse_args(argv)
    if args.table:
        return print_stored(args.out or "statfem_diffusivity")
    args.out = args.out or ("statfem_diffusivity_quick" if args.quick else "statfem_diffusivity")
    stop_at = None if args.stop_after is None else time.perf_counter() + 60 * args.stop_after
    grids = [int(g) for g in (args.grids or ("32" if args.quick else "32,64")).split(",")]
    budget = 20.0 if args.quick else args.budget
    ref_steps = {32: 8000, 64: 6000}
    key = jax.random.key(0)
    results = {
        "description": "statFEM with the diffusivity unknown alongside u: time to tolerance on "
        "the joint posterior against a stored long-run reference",
        "machine": machine_info(),
        "quick": args.quick,
        "mean_tolerance": MEAN_TOL,
        "variance_tolerance": VAR_TOL,
        "chains": NUM_CHAINS,
        "rerun": "python benchmarks/statfem_diffusivity.py",
        "grids": {},
    }
    stored = RESULTS / f"{args.out}.json"
    previous = json.loads(stored.read_text()) if stored.exists() and not args.quick else None
    if previous is not None:
        # grids not run now keep their stored rows
        results["grids"].update(previous["grids"])
    rows = []
    for grid in grids:
        dm, case = make_case(grid, jax.random.fold_in(key, grid))
        steps = 2000 if args.quick else ref_steps.get(grid, 6000)
        ref, ref_path = reference(
            dm, case.y, grid, jax.random.fold_in(key, 100 + grid), steps, store=not args.quick
        )
        split = dm.model.structure.ndofs
        truth_err = float(
            np.linalg.norm(ref["mean"][:split] - np.log(np.asarray(case.diffusivity)))
            / np.linalg.norm(np.log(np.asarray(case.diffusivity)))
        )
        g = {
            "state_dim": dm.dim,
            "modes": dm.num_modes,
            "free_dofs": dm.model.dim,
            "sensors": dm.num_sensors,
            "reference": {
                "file": ref_path.name,
                "steps_per_chain": int(ref["num_steps"]),
                "chains": int(ref["chains"]),
                "ess_min": float(ref["ess"].min()),
                "ess_median": float(np.median(ref["ess"])),
                "rhat_max": float(ref["rhat"].max()),
                "seconds": float(ref["seconds"]),
                "log_kappa_mean_vs_truth_rel_error": truth_err,
            },
            "samplers": {},
        }
        print(f"{grid}x{grid} reference: {g['reference']}", flush=True)
        ref_id = reference_id(ref)
        g["reference"]["id"] = ref_id
        if previous is not None and str(grid) in previous["grids"]:
            # rows of samplers not run now are kept if they were measured against this reference
            for name, row in previous["grids"][str(grid)]["samplers"].items():
                if row.get("reference_id") == ref_id:
                    g["samplers"][name] = row
                else:
                    print(f"{grid}x{grid} {name}: stored row of another reference dropped")
        for name in [s for s in args.samplers.split(",") if s]:
            t_best = g["samplers"].get(fastest(g["samplers"]), {}).get("seconds_to_tolerance")
            b = min(max(budget, BUDGET_FACTOR * t_best), args.max_budget) if t_best else budget
            r = run_sampler(
                name,
                dm,
                case.y,
                ref,
                b,
                jax.random.fold_in(key, 1000 + grid),
                checkpoint=None if args.quick else resumable.checkpoint_path(args.out, grid, name),
                stop_at=stop_at,
            )
            if r is None:
                print(f"{grid}x{grid} {name}: paused; run the same command to continue")
                return 0
            r["reference_id"] = ref_id
            g["samplers"][name] = r
            rows.append((grid, name, r))
            print(f"{grid}x{grid} {name}: {r}", flush=True)
            results["grids"][str(grid)] = g
            path = write_results(args.out, results)
        add_speedups(g["samplers"], fastest(g["samplers"]))
        path = write_results(args.out, results)
    print(
        "\nunknown diffusivity: time to mean error < 1% and variance error < 10% of log kappa and u"
    )
    print(tolerance_table(rows))
    print(
        "seconds: set-up (MAP, preconditioner) + warm-up + sampling until both tolerances hold for\n"
        "  both fields ('>' = not reached within the budget: a lower bound); compilation excluded;\n"
        "Laplace speedup: the row's seconds (or its lower bound) / the fastest sampler's."
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
