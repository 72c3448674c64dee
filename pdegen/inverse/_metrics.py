"""Metrics of posteriors on the benchmark tasks: error of the mean, credible-interval coverage, PDE residual."""

from __future__ import annotations

import math

import jax.numpy as jnp

from ._results import Posterior
from ._tasks import InverseTask, credible_interval_coverage, relative_l2


def interval_std(post, level: float = 0.9):
    """Scale of the credible interval: the exact std for ``bayes``; for a std estimated from ``n``
    draws the predictive scale ``s sqrt(1 + 1/n) t_{n-1} / z`` (Student t), so that a perfect
    sampler covers at the nominal rate even with few samples. ``n`` is ``info["std_draws"]`` where
    the std comes from more draws than the samples returned (SMC's particles, MCMC's chains),
    else the number of samples."""
    n = int(post.info.get("std_draws", post.samples.shape[0]))
    if post.method == "bayes" or n < 2:
        return post.std
    from scipy.stats import norm, t

    q = 0.5 + level / 2.0
    return post.std * (math.sqrt(1.0 + 1.0 / n) * float(t.ppf(q, n - 1) / norm.ppf(q)))


def free_coverage(mean, std, truth, task: InverseTask, level: float = 0.9) -> float:
    """Coverage of the target channel over its free nodes: ``u``'s Dirichlet boundary values are
    fixed (posterior std ~1e-19), so counting them would only measure round-off."""
    free = task.free_nodes
    flat = lambda v: jnp.asarray(v).reshape(-1)[free]  # noqa: E731
    return float(credible_interval_coverage(flat(mean), flat(std), flat(truth), level))


def summarise(samples, task: InverseTask) -> dict:
    """Metrics of a set of joint samples (no timing): rel. L2 of the mean, coverage, residual."""
    samples = jnp.asarray(samples)
    mean = samples.mean(0)
    std = samples.std(0, ddof=1) if samples.shape[0] > 1 else jnp.zeros_like(mean)
    c = task.target_index
    res = jnp.stack([task.residual(s[0], s[1]) for s in samples])
    return {
        "rel_l2": float(relative_l2(mean[c], task.truth[c])),
        "coverage90": free_coverage(mean[c], std[c], task.truth[c], task, 0.9),
        "pde_residual": float(jnp.mean(res)),
    }


def evaluate(post: Posterior, task: InverseTask, *, level: float = 0.9) -> dict:
    """Metrics of a posterior on a benchmark task.

    Metrics of a posterior on a task: ``rel_l2`` (posterior mean of the target channel),
    ``coverage90`` (central ``level`` interval over the target's free nodes: exact for ``bayes``, the
    Student-t predictive interval of the samples otherwise), ``pde_residual`` (mean relative FEM residual of the samples),
    ``data_misfit`` (relative misfit of the mean), ``seconds_per_sample``."""
    c = task.target_index
    res = jnp.stack([task.residual(s[0], s[1]) for s in post.samples])
    y_hat = task.observe(post.mean)
    out = {
        "method": post.method,
        "route": post.route,
        "rel_l2": float(relative_l2(post.mean[c], task.truth[c])),
        "sample_rel_l2": float(jnp.mean(relative_l2(post.samples[:, c], task.truth[c]))),
        "coverage90": (
            float("nan")
            if post.method == "map"
            else free_coverage(
                post.mean[c], interval_std(post, level)[c], task.truth[c], task, level
            )
        ),
        "pde_residual": float(jnp.mean(res)),
        "data_misfit": float(jnp.linalg.norm(task.y - y_hat) / jnp.linalg.norm(task.y)),
        "seconds_per_sample": post.seconds_per_sample,
        "num_samples": int(post.samples.shape[0]),
    }
    if "before_projection" in post.info:
        out["before_projection"] = post.info["before_projection"]
    return out
