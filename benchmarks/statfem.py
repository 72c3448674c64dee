"""statFEM benchmark: Langevin samplers on the ULA-statFEM posterior against the exact posterior.

For each grid (64x64, 128x128 and 256x256; 32x32 and 64x64 with ``--quick``) and sampler (ULA, prior- and
posterior-preconditioned ULA, MALA, preconditioned MALA, pCN) we run 4 chains from prior draws and
record the wall time and gradient evaluations until the pooled posterior mean is within 1% and
the pointwise variance within 10% (relative L2) of the exact posterior, within a time budget.
Plain ULA, the baseline, runs last with a budget of at least 10.5 times the fastest sampler's time
to tolerance: when it does not reach the tolerances, its time is a lower bound and so is the
reported speedup (``speedup_is_lower_bound``). Each sampler also reports the e-folding time of its
slowest mode, ``1 / (h lambda_min(P Q))``, which explains why the unpreconditioned chains cannot
converge on the stiff statFEM posterior in any practical time.
Compilation is timed separately and excluded; preconditioner set-up and warm-up are included.
Also: ESS per second (minimum over 256 coordinates), the exact posterior's own cost, and IPLA
estimating the forcing amplitude (truth 1) with its error against the truth and the MMLE.

Only "pmala-oracle" uses the exact posterior covariance as its preconditioner; "pmala-laplace"
builds the Laplace / Gauss-Newton preconditioner from the model and the data (a randomised
eigensolver of the prior-preconditioned misfit Hessian, rank = number of sensors; set-up timed).

``--nonlinear``: ``-div((1 + u^2) grad u) = 15 + xi`` (:class:`statfem.NonlinearStatFEM`) at
32x32 and 64x64 (``--quick``: 32x32; ``--grids 128`` adds 128x128): Laplace-preconditioned MALA (full Gauss-Newton matrix at the
MAP by sparse Cholesky, and the hIPPYlib low-rank form) against pCN (linear-prior reference), MALA,
and MALA with the linear prior or the Riesz (lumped mass) preconditioner (32x32 only), each with
4 chains from prior draws until the mean is within 1% and the variance within 10% of a reference
stored once in ``benchmarks/results/statfem_nonlinear_reference_<grid>.npz`` (8 long chains of
Laplace-preconditioned MALA, R-hat and ESS recorded; run in resumable segments and extended when
more steps are asked for, ``benchmarks/_reference.py``). Every other sampler gets at least 10.5 times
the Laplace sampler's time. Writes ``benchmarks/results/statfem_nonlinear.json``.

Run from the repository root: ``python benchmarks/statfem.py [--quick]``.
Writes ``benchmarks/results/statfem.json`` (``--quick``: ``statfem_quick.json``). ``--sparse``: the linear-Gaussian exact posterior
without dense matrices (mean by solves, pointwise variance by selected inversion, samples, the
log marginal likelihood and its gradient) at 64x64, 128x128, 256x256 and on a 100k-node
unstructured mesh, into ``benchmarks/results/statfem_sparse.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from _common import RESULTS_DIR, machine_info, write_results  # noqa: E402
from _reference import long_run_reference, reference_id  # noqa: E402
from _tolerance import add_speedups, tolerance_row, tolerance_table  # noqa: E402
from jax import lax  # noqa: E402

from pdegen.fem import statfem  # noqa: E402

# "pmala-oracle" is preconditioned with the exact posterior covariance (it costs as much as the
# answer): the one oracle row; "pmala-laplace" builds its preconditioner from the model and the data
# (randomised low-rank misfit Hessian, set-up timed)
SAMPLERS = ("pmala-oracle", "pmala-laplace", "pula-prior", "pmala-prior", "pcn", "mala", "ula")
MEAN_TOL, VAR_TOL = 0.01, 0.10
# plain ULA runs last, for at least this many times the fastest sampler's time to tolerance, so a
# ULA that does not reach the tolerances still bounds the speedup from below by this factor
ULA_BUDGET_FACTOR = 10.5
NUM_CHAINS = 4
BLOCK = 250
THIN = 5
ESS_NEEDED = 2.0 / VAR_TOL**2


def make_kernel(name, model, y, energy):
    """Kernel with its default step size; returns (kernel, warm-up steps, set-up seconds)."""
    t0 = time.perf_counter()
    dense = model.dim <= 1500
    pre = None
    if name in ("pula-oracle", "pmala-oracle"):
        pre = statfem.posterior_preconditioner(model, y)
    elif name == "pmala-laplace":
        pre = statfem.laplace_preconditioner(
            model, y, rank=model.num_sensors, key=jax.random.key(11)
        ).preconditioner
    elif name in ("pula-prior", "pmala-prior", "pcn"):
        pre = statfem.prior_preconditioner(model, dense=dense)
    m0 = model.prior_mean()
    if name in ("pula-oracle", "pmala-oracle", "pmala-laplace"):
        h = 0.1  # stationary variance C / (1 - h/2): 5% too large for pULA
    elif name == "pcn":
        h = 0.1
    else:
        lam = float(statfem.largest_curvature(energy, m0, preconditioner=pre, num_iterations=60))
        # ULA: h = 0.2 / lambda_max keeps the stationary variance bias below 11% in every mode;
        # MALA starts at 1 / lambda_max and adapts.
        h = 0.2 / lam if name.startswith(("ula", "pula")) else 1.0 / lam
    if name == "pcn":
        kernel = statfem.pcn(model.likelihood_energy_fn(y), h, prior_mean=m0, prior=pre)
    elif "mala" in name:
        kernel = statfem.mala(energy, h, preconditioner=pre)
    else:
        kernel = statfem.ula(energy, h, preconditioner=pre)
    jax.block_until_ready(pre.apply(m0)) if pre is not None else None
    warmup = 500 if kernel.target_acceptance is not None else 100
    return kernel, warmup, time.perf_counter() - t0


def make_block(kernel, idx):
    def one_chain(key, state, moments):
        def inner(carry, k):
            st, (n, mean, m2) = carry
            st, _ = kernel.step(st, key=k)
            x = st.position
            n = n + 1.0
            d = x - mean
            mean = mean + d / n
            return (st, (n, mean, m2 + d * (x - mean))), None

        def outer(carry, k):
            carry, _ = lax.scan(inner, carry, jax.random.split(k, THIN))
            return carry, carry[0].position[idx]

        (state, moments), trace = lax.scan(
            outer, (state, moments), jax.random.split(key, BLOCK // THIN)
        )
        return state, moments, trace

    return jax.jit(jax.vmap(one_chain))


def pooled(moments):
    n, mean, m2 = moments
    var = m2 / n[:, None]
    pm = jnp.mean(mean, axis=0)
    return pm, jnp.mean(var + mean**2, axis=0) - pm**2


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def slowest_rate(name, step_size, lambda_min):
    """``h * lambda_min(P Q)``: per-step decay rate of the slowest mode of the (linearised) chain.

    ``Q`` is the posterior precision. ``P = I``: ``lambda_min(Q)``; ``P = C`` (posterior): 1;
    ``P = C0`` (prior): 1, since ``C0 Q = I + C0 Ht^T S^{-1} Ht`` with fewer data than dofs.
    The mean of the slowest mode relaxes like ``(1 - rate)^k``, its variance like ``(1 - rate)^(2k)``.
    """
    if name == "pcn":
        return 1.0 - math.sqrt(1.0 - min(step_size, 1.0) ** 2)  # prior directions, accepted moves
    return step_size * (lambda_min if name in ("ula", "mala") else 1.0)  # P = C or C0: rate h


def run_to_tolerance(kernel, x0, warmup, ref_mean, ref_var, budget_s, key, max_traces):
    """Chains from ``x0``: ``warmup`` steps, then blocks of ``BLOCK`` steps until the pooled mean and
    variance are within the tolerances of the reference or ``budget_s`` has passed (compilation
    excluded). Returns the final state, the warm-up result, the steps run after warm-up, the
    first time / steps within tolerance (or ``None``), the thinned traces, the sampling and
    compile seconds and the final mean / variance errors."""
    idx = jnp.asarray(np.unique(np.linspace(0, x0.shape[1] - 1, min(256, x0.shape[1])).astype(int)))
    block = make_block(kernel, idx)
    num_chains = x0.shape[0]
    # compile (excluded from the timings): warm-up blocks and the sampling block
    t0 = time.perf_counter()
    res = statfem.run_chains(kernel, x0, 1, 1, key=jax.random.fold_in(key, 2))
    zeros = tuple(jnp.zeros(shape) for shape in ((num_chains,), x0.shape, x0.shape))
    jax.block_until_ready(block(jax.random.split(key, num_chains), res.state, zeros))
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = statfem.run_chains(kernel, x0, 1, warmup, key=jax.random.fold_in(key, 3))
    state, moments, steps, reached, traces = res.state, zeros, 0, None, []
    while True:
        state, moments, trace = block(
            jax.random.split(jax.random.fold_in(key, 10 + steps), num_chains), state, moments
        )
        steps += BLOCK
        if len(traces) < max_traces:
            traces.append(trace)
        mean, var = pooled(moments)
        mean_err, var_err = rel(mean, ref_mean), rel(var, ref_var)
        elapsed = time.perf_counter() - t0
        if reached is None and mean_err < MEAN_TOL and var_err < VAR_TOL:
            reached = dict(seconds=elapsed, steps=steps)
        if reached is not None or elapsed > budget_s:
            break
    sample_s = time.perf_counter() - t0
    return state, res, steps, reached, traces, sample_s, compile_s, mean_err, var_err


def bench_sampler(name, model, y, energy, exact_mean, exact_var, budget_s, key, lambda_min):
    kernel, warmup, setup_s = make_kernel(name, model, y, energy)
    x0 = model.sample_prior(NUM_CHAINS, key=jax.random.fold_in(key, 1))
    state, res, steps, reached, traces, sample_s, compile_s, mean_err, var_err = run_to_tolerance(
        kernel, x0, warmup, exact_mean, exact_var, budget_s, key, max_traces=200
    )
    ess = np.asarray(statfem.effective_sample_size(jnp.concatenate(traces, axis=1)))
    grads_per_step = kernel.gradients_per_step
    step_size = float(np.mean(np.asarray(state.step_size)))
    relaxation_steps = 1.0 / slowest_rate(name, step_size, lambda_min)
    out = {
        "kernel": kernel.name,
        "step_size": step_size,
        # e-folding time of the slowest mode in steps, and in seconds at the measured speed: a chain
        # needs a few of these (from a prior start) before its variance can be within tolerance
        "slowest_mode_relaxation_steps": relaxation_steps,
        "slowest_mode_relaxation_seconds": relaxation_steps * sample_s / (warmup + steps),
        "acceptance": float(np.mean(np.asarray(res.acceptance_rate)))
        if kernel.target_acceptance
        else 1.0,
        "setup_s": setup_s,
        "compile_s": compile_s,
        "warmup_steps": warmup,
        "steps_run": steps,
        "mean_rel_error": mean_err,
        "variance_rel_error": var_err,
        "reached": reached is not None,
        "ess_min": float(ess.min()),
        "ess_per_second": float(ess.min() / sample_s),
        # a variance error of 10% needs an ESS of about 2 / 0.1^2 = 200
        "estimated_seconds_from_ess": setup_s
        + ESS_NEEDED / max(float(ess.min()) / sample_s, 1e-12),
    }
    if reached is not None:
        total_steps = warmup + reached["steps"]
        out["seconds_to_tolerance"] = setup_s + reached["seconds"]
        out["gradient_evaluations_to_tolerance"] = grads_per_step * total_steps * NUM_CHAINS
        out["energy_evaluations_to_tolerance"] = total_steps * NUM_CHAINS
    else:
        out["seconds_to_tolerance"] = None
        out["lower_bound_seconds"] = setup_s + sample_s
        out["gradient_evaluations_to_tolerance"] = None
        out["lower_bound_gradient_evaluations"] = grads_per_step * (warmup + steps) * NUM_CHAINS
    return out


def largest_eigenvalue(apply, dim, key, num_iterations=100):
    """Power iteration for the largest eigenvalue of a symmetric positive definite operator."""

    @jax.jit
    def run(v):
        def body(v, _):
            w = apply(v)
            return w / jnp.linalg.norm(w), None

        v, _ = lax.scan(body, v / jnp.linalg.norm(v), None, length=num_iterations)
        return jnp.dot(v, apply(v))

    return float(run(jax.random.normal(key, (dim,))))


def bench_ipla(case, key, num_particles, num_steps):
    """IPLA for the forcing amplitude f = theta (data from the finer truth with f = 1)."""
    model, y = case.model, case.y

    def energy(theta, x):
        return model.replace(coefficients=dict(f=theta)).energy(x, y)

    lml = jax.jit(
        lambda t: statfem.log_marginal_likelihood(model.replace(coefficients=dict(f=t)), y)
    )
    t0 = time.perf_counter()
    mmle = scipy.optimize.minimize_scalar(lambda t: -float(lml(t)), bracket=(0.5, 1.5), tol=1e-8).x
    mmle_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pre = statfem.prior_preconditioner(model, dense=model.dim <= 1500)
    m0 = model.prior_mean()
    lam = float(
        statfem.largest_curvature(
            lambda x: energy(jnp.asarray(1.0), x), m0, preconditioner=pre, num_iterations=60
        )
    )
    g = jax.grad(lambda t: energy(t, m0))
    c = float((g(1.001) - g(0.999)) / 0.002)
    particles = model.sample_prior(num_particles, key=jax.random.fold_in(key, 1))
    res = statfem.run_ipla(
        energy,
        0.5,
        particles,
        num_steps,
        0.5 / lam,
        key=jax.random.fold_in(key, 2),
        theta_step_size=0.5 / c,
        preconditioner=pre,
    )
    est = float(res.estimate)
    return {
        "particles": num_particles,
        "steps": num_steps,
        "estimate": est,
        "theta_true": 1.0,
        "abs_error_vs_truth": abs(est - 1.0),
        "mmle": float(mmle),
        "abs_error_vs_mmle": abs(est - float(mmle)),
        "theta_std": float(res.theta_std),
        "seconds": time.perf_counter() - t0,
        "mmle_seconds": mmle_s,
    }


# ---------------------------------------------------------------------------- sparse route


def unstructured_model(num_points, *, key, num_sensors=64):
    """Poisson statFEM on a Delaunay mesh of jittered random points (unstructured), data simulated
    from a prior draw of the model itself."""
    from pdegen import fem

    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    k = int(math.sqrt(num_points))
    side = np.linspace(0.0, 1.0, k)
    boundary = np.concatenate(
        [
            np.stack([side, np.zeros(k)], 1),
            np.stack([side, np.ones(k)], 1),
            np.stack([np.zeros(k - 2), side[1:-1]], 1),
            np.stack([np.ones(k - 2), side[1:-1]], 1),
        ]
    )
    inner = rng.uniform(0.5 / k, 1 - 0.5 / k, size=(num_points - boundary.shape[0], 2))
    mesh = fem.delaunay(np.concatenate([boundary, inner]))
    V = fem.FunctionSpace(mesh, "P1")
    sensors = rng.uniform(0.05, 0.95, size=(num_sensors, 2))
    model = statfem.StatFEM(
        fem.Poisson(V),
        sensors,
        coefficients=dict(
            kappa=lambda x: 1.0 + 0.3 * jnp.sin(3.0 * x[0]) * jnp.cos(2.0 * x[1]), f=1.0
        ),
        sigma_f=0.1,
        sigma_e=5e-4,
    )
    k1, k2 = jax.random.split(key)
    y = model.simulate_data(model.sample_prior(key=k1), key=k2)
    return model, y


def bench_sparse_case(label, model, y, key, num_checks=4):
    """Exact posterior mean, pointwise variance (selected inversion), 100 samples, the log marginal
    likelihood and its gradient in (rho, sigma_f), each timed; the variance checked at a few
    coordinates against the covariance action (two solves each)."""
    import equinox as eqx

    out = {"case": label, "dim": model.dim, "sensors": model.num_sensors}
    t0 = time.perf_counter()
    post = statfem.exact_posterior(model, y)
    jax.block_until_ready(post.mean)
    out["mean_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    var = jax.block_until_ready(post.variance(method="selected"))
    out["variance_s"] = time.perf_counter() - t1
    out["mean_and_variance_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    jax.block_until_ready(post.sample(100, key=jax.random.fold_in(key, 1)))
    out["100_samples_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    lml = float(statfem.log_marginal_likelihood(model, y))
    out["log_marginal_likelihood_s"] = time.perf_counter() - t1
    out["log_marginal_likelihood"] = lml

    def f(m):
        return statfem.log_marginal_likelihood(m, y)

    t1 = time.perf_counter()
    grad = eqx.filter_grad(f)(model)
    g = [float(grad.rho), float(grad.sigma_f)]
    out["lml_gradient_s"] = time.perf_counter() - t1
    out["lml_gradient_rho_sigma_f"] = g
    idx = np.asarray(
        jax.random.choice(jax.random.fold_in(key, 2), model.dim, (num_checks,), replace=False)
    )
    E = jax.nn.one_hot(jnp.asarray(idx), model.dim, dtype=post.mean.dtype)
    direct = np.asarray(jax.vmap(post.cov_apply)(E))[np.arange(num_checks), idx]
    out["variance_check_max_rel_error"] = float(
        np.max(np.abs(np.asarray(var)[idx] - direct) / direct)
    )
    return out


def main_sparse(args) -> int:
    key = jax.random.key(0)
    grids = (32, 64) if args.quick else (64, 128, 256)
    results = {"machine": machine_info(), "quick": args.quick, "rows": []}
    for grid in grids:
        case = statfem.ula_statfem_case(grid, key=jax.random.fold_in(key, grid), fine_factor=1)
        r = bench_sparse_case(f"linear {grid}x{grid}", case.model, case.y, key)
        results["rows"].append(r)
        print(r, flush=True)
        path = write_results("statfem_sparse", results)
    if not args.quick:
        model, y = unstructured_model(100_000, key=jax.random.fold_in(key, 99))
        r = bench_sparse_case("linear unstructured", model, y, key)
        results["rows"].append(r)
        print(r, flush=True)
        path = write_results("statfem_sparse", results)
    print("\nlinear-Gaussian statFEM, sparse route (first call: compilation included)")
    header = (
        f"{'case':24} {'dim':>7} {'mean s':>7} {'var s':>7} {'mean+var s':>10} {'100 draws s':>11} "
        f"{'lml s':>6} {'grad s':>6} {'var check':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results["rows"]:
        print(
            f"{r['case']:24} {r['dim']:>7} {r['mean_s']:>7.2f} {r['variance_s']:>7.2f} "
            f"{r['mean_and_variance_s']:>10.2f} {r['100_samples_s']:>11.2f} "
            f"{r['log_marginal_likelihood_s']:>6.2f} {r['lml_gradient_s']:>6.2f} "
            f"{r['variance_check_max_rel_error']:>9.1e}"
        )
    print(
        "var check: max relative error of the selected-inversion variance against the covariance\n"
        "  action on unit vectors (two solves each) at 4 random coordinates"
    )
    print(f"\nwrote {path}")
    return 0


# ---------------------------------------------------------------------------- nonlinear case

NONLINEAR_SAMPLERS = (
    "pmala-laplace",
    "pmala-laplace-lowrank",
    "pmala-prior",
    "pmala-mass",
    "pcn",
    "mala",
)
# hopeless on the stiff residual energy (their adapted steps are 1e-4 to 1e-8 at 32x32): 32x32 only
NONLINEAR_SMALL_ONLY = ("pmala-prior", "pmala-mass")
REFERENCE_CHAINS = 8


def nonlinear_case(grid, *, key):
    case = statfem.nonlinear_statfem_case(grid, key=key)
    return case.model, case.y, case.truth


def nonlinear_kernel(name, model, y, key):
    """(kernel, set-up seconds, extra info): every preconditioner built from the model and the data
    only (the MAP point by Gauss-Newton for the Laplace ones), set-up timed."""
    t0 = time.perf_counter()
    energy = model.energy_fn(y)
    info = {}
    pre = None
    if name.startswith("pmala-laplace"):
        mp = model.map_point(y)
        info["map_iterations"] = mp.iterations
        if name == "pmala-laplace":
            pre = model.laplace_preconditioner(y, mp.x)
        else:
            rank = model.num_sensors
            lr = model.laplace_preconditioner(y, mp.x, rank=rank, key=key)
            pre = lr.preconditioner
            info["rank"] = rank
            info["eigenvalues_first_last"] = [float(lr.eigenvalues[0]), float(lr.eigenvalues[-1])]
    elif name in ("pmala-prior", "pcn"):
        m0, pre, prior_energy = model.linear_prior()
    elif name == "pmala-mass":
        pre = model.mass_preconditioner()
    if name == "pcn":
        kernel = statfem.pcn(lambda x: energy(x) - prior_energy(x), 0.1, prior_mean=m0, prior=pre)
    else:
        x_ref = model.solve()
        lam = float(statfem.largest_curvature(energy, x_ref, preconditioner=pre, num_iterations=40))
        kernel = statfem.mala(energy, 1.0 / lam, preconditioner=pre)
    if pre is not None:
        jax.block_until_ready(pre.apply(jnp.zeros(model.dim)))
    return kernel, time.perf_counter() - t0, info


def nonlinear_reference(model, y, grid, key, num_steps, rebuild=False):
    """Long Laplace-preconditioned MALA runs (exact in the limit) with REFERENCE_CHAINS chains from
    prior draws, every 10th state kept (:func:`_reference.long_run_reference`: stored once in
    benchmarks/results/statfem_nonlinear_reference_<grid>.npz, resumable, extendable; ``rebuild``
    runs a stored reference anew when it is shorter than ``num_steps`` and cannot be extended)."""
    path = Path(__file__).resolve().parent / "results" / f"statfem_nonlinear_reference_{grid}.npz"

    def build():
        kernel, _, _ = nonlinear_kernel("pmala-laplace", model, y, jax.random.fold_in(key, 1))
        keys = jax.random.split(key, REFERENCE_CHAINS)
        return kernel, jnp.stack([model.sample_prior(key=k) for k in keys])

    return long_run_reference(
        build,
        num_steps,
        key=jax.random.fold_in(key, 2),
        path=path,
        thin=10,
        warmup=1000,
        data=np.asarray(y),
        rebuild=rebuild,
    )


def bench_nonlinear_sampler(name, model, y, ref_mean, ref_var, budget_s, key):
    kernel, setup_s, info = nonlinear_kernel(name, model, y, jax.random.fold_in(key, 5))
    x0 = jnp.stack(
        [
            model.sample_prior(key=k)
            for k in jax.random.split(jax.random.fold_in(key, 1), NUM_CHAINS)
        ]
    )
    warmup = 500
    state, res, steps, reached, traces, sample_s, compile_s, mean_err, var_err = run_to_tolerance(
        kernel, x0, warmup, ref_mean, ref_var, budget_s, key, max_traces=400
    )
    out = tolerance_row(
        kernel,
        state=state,
        acceptance=res.acceptance_rate,
        samples=jnp.concatenate(traces, axis=1),
        sample_s=sample_s,
        setup_s=setup_s,
        compile_s=compile_s,
        warmup=warmup,
        steps=steps,
        errors=(mean_err, var_err),
        reached=reached,
        num_chains=NUM_CHAINS,
    )
    out["preconditioner"] = name.split("-", 1)[1] if "-" in name else "none"
    return {**out, **info}


def main_nonlinear(args) -> int:
    key = jax.random.key(0)
    if args.grids:
        grids = tuple(int(g) for g in args.grids.split(","))
    else:
        grids = (32,) if args.quick else (32, 64)
    budget = 30.0 if args.quick else 60.0
    # the first sampler's budget per grid (the others get 10.5 times its time to tolerance)
    budgets = {128: 900.0}
    ref_steps = {32: 20000, 64: 12000, 128: 18000}
    for item in filter(None, (args.reference_steps or "").split(",")):
        grid, _, steps = item.partition("=")
        ref_steps[int(grid)] = int(steps)
    samplers = (
        [s for s in args.samplers.split(",") if s] if args.samplers_given else NONLINEAR_SAMPLERS
    )
    results = {
        "machine": machine_info(),
        "quick": args.quick,
        "mean_tolerance": MEAN_TOL,
        "variance_tolerance": VAR_TOL,
        "chains": NUM_CHAINS,
        "budget_s": budget,
        "grids": {},
    }
    stored = RESULTS_DIR / "statfem_nonlinear.json"
    if stored.exists() and not args.quick:
        # grids not run now keep their stored rows
        results["grids"].update(json.loads(stored.read_text())["grids"])
    rows = []
    for grid in grids:
        model, y, truth = nonlinear_case(grid, key=jax.random.fold_in(key, grid))
        ref, ref_path = nonlinear_reference(
            model,
            y,
            grid,
            jax.random.fold_in(key, 100 + grid),
            ref_steps[grid],
            rebuild=args.rebuild_reference,
        )
        g = {
            "dim": model.dim,
            "reference": {
                "file": ref_path.name,
                "steps_per_chain": int(ref["num_steps"]),
                "chains": int(ref["chains"]),
                "ess_min": float(ref["ess"].min()),
                "ess_median": float(np.median(ref["ess"])),
                "rhat_max": float(ref["rhat"].max()),
                "seconds": float(ref["seconds"]),
            },
            "samplers": {},
        }
        ref_id = reference_id(ref)  # every row names the reference it was measured against
        g["reference"]["id"] = ref_id
        print(f"{grid}x{grid} reference: {g['reference']}", flush=True)
        ref_mean, ref_var = jnp.asarray(ref["mean"]), jnp.asarray(ref["variance"])
        names = [n for n in samplers if grid <= 32 or n not in NONLINEAR_SMALL_ONLY]
        for name in names:
            # every other sampler runs for at least 10.5 times the Laplace sampler's time to
            # tolerance, so one that does not reach it bounds the speedup from below by 10.5
            t_best = g["samplers"].get("pmala-laplace", {}).get("seconds_to_tolerance")
            b0 = budgets.get(grid, budget)
            b = max(b0, ULA_BUDGET_FACTOR * t_best) if t_best else b0
            r = bench_nonlinear_sampler(
                name, model, y, ref_mean, ref_var, b, jax.random.fold_in(key, 1000 + grid)
            )
            r["budget_s"] = b
            r["reference_id"] = ref_id
            g["samplers"][name] = r
            rows.append((grid, name, r))
            print(f"{grid}x{grid} {name}: {r}", flush=True)
            results["grids"][str(grid)] = g
            path = write_results("statfem_nonlinear", results)
        add_speedups(g["samplers"], "pmala-laplace")
        path = write_results("statfem_nonlinear", results)
    print("\nnonlinear statFEM: time to mean error < 1% and variance error < 10% vs the reference")
    print(tolerance_table(rows))
    print(
        "seconds: set-up (MAP, preconditioner) + warm-up + sampling until both tolerances hold, against\n"
        "  the stored reference ('>' = not reached within the budget: a lower bound); compilation excluded;\n"
        "Laplace speedup: the row's seconds (or its lower bound) / pmala-laplace's seconds."
    )
    print(f"\nwrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32 and 64x64 only, short budgets")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="only the linear-Gaussian sparse route at 64, 128, 256 and a 100k-node unstructured "
        "mesh (benchmarks/results/statfem_sparse.json)",
    )
    parser.add_argument(
        "--nonlinear",
        action="store_true",
        help="only the nonlinear case -div((1 + u^2) grad u) = f: Laplace-preconditioned MALA against "
        "pCN, MALA and the prior / mass preconditioners (benchmarks/results/statfem_nonlinear.json)",
    )
    parser.add_argument(
        "--grids",
        default=None,
        help="comma-separated grids (linear: default 64,128,256, 32,64 with --quick; --nonlinear: "
        "default 32,64, 32 with --quick); the stored rows of the other grids are kept",
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="linear: seconds per sampler (default by grid)"
    )
    parser.add_argument(
        "--max-budget",
        type=float,
        default=None,
        help="linear: cap on ULA's budget (10.5x the fastest sampler's time otherwise); a ULA that "
        "stops at the cap bounds the speedups from below by less than 10.5",
    )
    parser.add_argument(
        "--reference-steps",
        default=None,
        help="--nonlinear: steps per chain of the long-run references, e.g. 128=24000 (default "
        "32=20000, 64=12000, 128=18000); a stored reference is extended when its chain state is kept",
    )
    parser.add_argument(
        "--rebuild-reference",
        action="store_true",
        help="--nonlinear: run a stored reference anew when it is shorter than asked and cannot be "
        "extended (no chain state kept); resumable, the old file is replaced when the run is done",
    )
    parser.add_argument(
        "--ipla-max-grid",
        type=int,
        default=64,
        help="linear: IPLA for the forcing amplitude on grids up to this size (default 64)",
    )
    args = parser.parse_args(argv)
    args.samplers_given = "--samplers" in " ".join(sys.argv if argv is None else argv)
    if args.sparse:
        return main_sparse(args)
    if args.nonlinear:
        return main_nonlinear(args)
    if args.grids:
        grids = tuple(int(g) for g in args.grids.split(","))
    else:
        grids = (32, 64) if args.quick else (64, 128, 256)
    budgets = {32: 8.0, 64: 20.0} if args.quick else {32: 60.0, 64: 120.0, 128: 240.0}
    default_budget = 480.0  # larger grids
    if args.budget is not None:
        budgets = {grid: args.budget for grid in grids}
    samplers = [s for s in args.samplers.split(",") if s]
    key = jax.random.key(0)
    results = {
        "machine": machine_info(),
        "quick": args.quick,
        "mean_tolerance": MEAN_TOL,
        "variance_tolerance": VAR_TOL,
        "chains": NUM_CHAINS,
        "grids": {},
    }
    results_name = "statfem_quick" if args.quick else "statfem"
    stored = RESULTS_DIR / f"{results_name}.json"
    if stored.exists() and not args.quick:  # grids not run now keep their stored rows
        results["grids"].update(json.loads(stored.read_text())["grids"])
    rows = []
    for grid in grids:
        case = statfem.ula_statfem_case(grid, key=jax.random.fold_in(key, grid))
        model, y = case.model, case.y
        t0 = time.perf_counter()
        post = statfem.exact_posterior(model, y)
        jax.block_until_ready(post.mean)
        t_mean = time.perf_counter() - t0
        exact_var = post.variance()
        jax.block_until_ready(exact_var)
        t_var = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(post.sample(100, key=jax.random.key(1)))
        t_samples = time.perf_counter() - t0
        energy = model.energy_fn(y)
        lambda_min = 1.0 / largest_eigenvalue(post.cov_apply, model.dim, jax.random.fold_in(key, 5))
        lambda_max = float(statfem.largest_curvature(energy, post.mean, num_iterations=100))
        g = {
            "dim": model.dim,
            "posterior_precision_eigenvalues": [lambda_min, lambda_max],
            "posterior_condition_number": lambda_max / lambda_min,
            "exact": {
                "mean_s": t_mean,
                "mean_and_variance_s": t_var,
                "100_samples_s": t_samples,
                "mean_vs_truth_rel_error": rel(post.mean, model.restrict(case.truth)),
            },
            "samplers": {},
        }
        for name in samplers:
            budget = budgets.get(grid, default_budget)
            if name == "ula":
                done = [r["seconds_to_tolerance"] for r in g["samplers"].values() if r["reached"]]
                budget = max(budget, ULA_BUDGET_FACTOR * min(done)) if done else budget
                if args.max_budget is not None:
                    budget = min(budget, max(args.max_budget, budgets.get(grid, default_budget)))
            r = bench_sampler(
                name,
                model,
                y,
                energy,
                post.mean,
                exact_var,
                budget,
                jax.random.fold_in(key, 1000 + grid),
                lambda_min,
            )
            r["budget_s"] = budget
            g["samplers"][name] = r
            print(
                f"{grid}x{grid} {name:12s} reached={r['reached']!s:5s} "
                f"t={r['seconds_to_tolerance'] or r['lower_bound_seconds']:.2f}s "
                f"mean_err={r['mean_rel_error']:.4f} var_err={r['variance_rel_error']:.3f} "
                f"ess/s={r['ess_per_second']:.2f}",
                flush=True,
            )
        ula_t = g["samplers"].get("ula", {})
        base = ula_t.get("seconds_to_tolerance") or ula_t.get("lower_bound_seconds")
        for name, r in g["samplers"].items():
            t = r["seconds_to_tolerance"]
            if base and t:
                r["speedup_vs_ula"] = base / t
                r["speedup_is_lower_bound"] = not ula_t.get("reached", False)
            if ula_t:
                r["speedup_vs_ula_estimated"] = ula_t["estimated_seconds_from_ess"] / (
                    t or r["estimated_seconds_from_ess"]
                )
            rows.append((grid, name, r))
        results["grids"][str(grid)] = g
        path = write_results(results_name, results)  # keep finished grids even if a later one fails
        n_particles, n_steps = (16, 400) if args.quick else (32, 3000)
        # IPLA: 32 particles x 3000 steps took 634 s at 64x64 and 1649 s at 128x128
        if grid <= args.ipla_max_grid and (grid == 32 or not args.quick):
            g["ipla"] = bench_ipla(case, jax.random.fold_in(key, 7), n_particles, n_steps)
            print(f"{grid}x{grid} IPLA: {g['ipla']}", flush=True)
            path = write_results(results_name, results)

    print("\nstatFEM samplers: time to mean error < 1% and variance error < 10% (4 chains)")
    header = (
        f"{'grid':>5} {'sampler':12} {'reached':>7} {'seconds':>9} {'grad evals':>11} "
        f"{'ess/s':>8} {'acc':>5} {'est. s (ESS)':>12} {'speedup vs ULA':>15} {'(ESS est.)':>10} "
        f"{'relax steps':>11} {'relax s':>9}"
    )
    print(header)
    print("-" * len(header))
    for grid, name, r in rows:
        secs = r["seconds_to_tolerance"]
        secs_txt = f"{secs:.2f}" if secs is not None else f">{r['lower_bound_seconds']:.1f}"
        ge = r["gradient_evaluations_to_tolerance"]
        ge_txt = str(ge) if ge is not None else f">{r['lower_bound_gradient_evaluations']}"
        sp = r.get("speedup_vs_ula")
        sp_txt = (
            ""
            if sp is None
            else (f">{sp:.1f}x" if r.get("speedup_is_lower_bound") else f"{sp:.1f}x")
        )
        print(
            f"{grid:>5} {name:12} {str(r['reached']):>7} {secs_txt:>9} {ge_txt:>11} "
            f"{r['ess_per_second']:>8.2f} {r['acceptance']:>5.2f} {r['estimated_seconds_from_ess']:>12.1f} "
            f"{sp_txt:>15} {r.get('speedup_vs_ula_estimated', float('nan')):>9.1f}x "
            f"{r['slowest_mode_relaxation_steps']:>11.3g} {r['slowest_mode_relaxation_seconds']:>9.3g}"
        )
    print(
        "seconds: measured to both tolerances ('>' = not reached within the budget: a lower bound);\n"
        "est. s (ESS): set-up + 200 / (min ESS per second), an extrapolation for chains that did not finish;\n"
        "speedup vs ULA: ULA seconds (or its lower bound, marked '>') / sampler seconds;\n"
        "(ESS est.): ULA's ESS-extrapolated seconds / the sampler's seconds (measured, else extrapolated;\n"
        "  unreliable for chains that have not mixed, whose ESS sits at its floor of about 2);\n"
        "relax steps / s: 1 / (h lambda_min(P Q)), the slowest mode's e-folding time in steps and in seconds\n"
        "  at the measured speed (Q the posterior precision, P the preconditioner)."
    )
    for grid, g in results["grids"].items():
        lo, hi = g["posterior_precision_eigenvalues"]
        print(
            f"  {grid}x{grid}: posterior precision eigenvalues in [{lo:.3g}, {hi:.3g}], "
            f"condition number {hi / lo:.3g}"
        )
    print("\nexact posterior cost (Woodbury, solves only):")
    for grid, g in results["grids"].items():
        e = g["exact"]
        print(
            f"  {grid}x{grid} (dim {g['dim']}): mean {e['mean_s']:.2f}s, mean+variance "
            f"{e['mean_and_variance_s']:.2f}s, 100 samples {e['100_samples_s']:.2f}s; "
            f"exact mean vs truth {e['mean_vs_truth_rel_error']:.3%}"
        )
        if "ipla" in g:
            i = g["ipla"]
            print(
                f"  {grid}x{grid} IPLA ({i['particles']} particles, {i['steps']} steps): theta "
                f"{i['estimate']:.4f} (truth 1, MMLE {i['mmle']:.4f}), |err| {i['abs_error_vs_truth']:.4f}, "
                f"{i['seconds']:.1f}s"
            )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
