"""Time-to-tolerance rows shared by the sampler benchmarks: speedups and the printed table."""

from __future__ import annotations


def add_speedups(samplers: dict, reference: str) -> None:
    """``laplace_speedup``: each row's seconds to tolerance (or its lower bound) over the
    ``reference`` sampler's, flagged as a lower bound where the row did not reach the tolerance."""
    best = samplers.get(reference, {}).get("seconds_to_tolerance")
    for r in samplers.values():
        other = r["seconds_to_tolerance"] or r.get("lower_bound_seconds")
        if best and other:
            r["laplace_speedup"] = other / best
            r["laplace_speedup_is_lower_bound"] = r["seconds_to_tolerance"] is None


def tolerance_table(rows, *, width: int = 22) -> str:
    """The table of ``(grid, sampler, row)`` triples: reached, seconds, set-up, gradient
    evaluations, ESS per second, acceptance, R-hat and the speedup of :func:`add_speedups`."""
    header = (
        f"{'grid':>5} {'sampler':{width}} {'reached':>7} {'seconds':>9} {'setup s':>8} "
        f"{'grad evals':>11} {'ess/s':>8} {'acc':>5} {'R-hat':>6} {'Laplace speedup':>16}"
    )
    lines = [header, "-" * len(header)]
    for grid, name, r in rows:
        secs = r["seconds_to_tolerance"]
        secs_txt = f"{secs:.2f}" if secs is not None else f">{r['lower_bound_seconds']:.1f}"
        ge = r.get("gradient_evaluations_to_tolerance")
        ge_txt = str(ge) if ge is not None else f">{r['lower_bound_gradient_evaluations']}"
        sp = r.get("laplace_speedup")
        sp_txt = (
            ""
            if sp is None
            else (f">{sp:.1f}x" if r["laplace_speedup_is_lower_bound"] else f"{sp:.1f}x")
        )
        lines.append(
            f"{grid:>5} {name:{width}} {str(r['reached']):>7} {secs_txt:>9} {r['setup_s']:>8.2f} "
            f"{ge_txt:>11} {r['ess_per_second']:>8.2f} {r['acceptance']:>5.2f} "
            f"{r['rhat_max']:>6.3f} {sp_txt:>16}"
        )
    return "\n".join(lines)


def tolerance_row(
    kernel,
    *,
    state,
    acceptance,
    samples,
    sample_s,
    setup_s,
    compile_s,
    warmup,
    steps,
    errors,
    reached,
    num_chains,
) -> dict:
    """One sampler's row: step size, acceptance, timings, the final errors, ESS (minimum over the
    traced coordinates) per sampling second, split R-hat, and the seconds and gradient evaluations
    to the tolerances (``reached``: ``dict(seconds, steps)`` or ``None``, then lower bounds)."""
    import numpy as np

    from pdegen import mcmc

    ess = np.asarray(mcmc.chain_ess(samples))
    rh = np.asarray(mcmc.rhat(samples))
    out = {
        "kernel": kernel.name,
        "step_size": float(np.mean(np.asarray(state.step_size))),
        "acceptance": float(np.mean(np.asarray(acceptance))),
        "setup_s": setup_s,
        "compile_s": compile_s,
        "warmup_steps": warmup,
        "steps_run": steps,
        "mean_rel_error": errors[0],
        "variance_rel_error": errors[1],
        "reached": reached is not None,
        "ess_min": float(ess.min()),
        "ess_per_second": float(ess.min() / sample_s),
        "rhat_max": float(rh.max()),
    }
    if reached is not None:
        n = warmup + reached["steps"]
        out["seconds_to_tolerance"] = setup_s + reached["seconds"]
        out["gradient_evaluations_to_tolerance"] = kernel.gradients_per_step * n * num_chains
    else:
        n = warmup + steps
        out["seconds_to_tolerance"] = None
        out["lower_bound_seconds"] = setup_s + sample_s
        out["lower_bound_gradient_evaluations"] = kernel.gradients_per_step * n * num_chains
    return out
