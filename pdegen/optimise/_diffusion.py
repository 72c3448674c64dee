"""One controlled-diffusion optimiser (DDS / PIS from :mod:`pdegen.models`) as a pure
``(init, step)`` pair: each step trains the sampler of ``exp(-f / T)`` for one iteration and
keeps the best sampled points."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from ..models import DDS, PIS, controlled_training_step
from ._best import Best, best_init, best_update
from ._box import default_dtype, make_box, objective_z, wall


class DiffusionOptimiserState(NamedTuple):
    """The state of the diffusion optimiser.

    Network parameters, optax state, current temperature, the :class:`Best` points
    (normalised coordinates), evaluations used so far, and the affine frame in which the sampler
    works: ``z = frame_centre + frame_scale * u`` for a scale vector ``(d,)``, ``z = frame_centre +
    frame_scale @ u`` for a matrix ``(d, d)`` (the sample cloud's principal axes); and the
    ``task`` (``None``, or the second argument of ``f(x, task)``)."""

    params: Any
    opt_state: Any
    temperature: jax.Array
    best: Best
    num_evaluations: jax.Array
    frame_centre: jax.Array
    frame_scale: jax.Array
    task: Any = None


class DiffusionOptimiserInfo(NamedTuple):
    """What one iteration of the diffusion optimiser reports.

    Attributes:
        loss: The training loss of the control at this iteration.
        mean_value: The mean objective value over the iteration's samples inside the box.
        spread: The standard deviation of the samples (in the box's ``[-1, 1]`` coordinates),
            averaged over coordinates.
        best_value: The best objective value found so far.
        num_evaluations: Objective evaluations so far.
        sample_mean: The mean of the samples per coordinate (box coordinates), shape ``(d,)``.
        sample_std: The standard deviation of the samples per coordinate (box coordinates),
            shape ``(d,)``.
        sample_cov: The covariance matrix of the samples (box coordinates), shape ``(d, d)``.
    """

    loss: jax.Array
    mean_value: jax.Array
    spread: jax.Array
    best_value: jax.Array
    num_evaluations: jax.Array
    sample_mean: jax.Array
    sample_std: jax.Array
    sample_cov: jax.Array


class DiffusionOptimiser(NamedTuple):
    """The diffusion optimiser as an ``(init, step)`` pair.

    ``state = init(key, temperature)``; ``state, info = step(key, state)``;
    ``evaluations_per_step`` objective evaluations per step."""

    init: Callable
    step: Callable
    evaluations_per_step: int


def evaluations_per_iteration(gradient_informed, loss, batch_size, num_steps) -> int:
    """Objective evaluations of one training iteration (a value counts 1, a backward pass 1)."""
    if loss == "log_variance":
        # the end point's value, plus one gradient (value + backward) per path step when the
        # network takes grad log pi as input
        return batch_size * ((2 * num_steps if gradient_informed else 0) + 1)
    # KL: reparameterised, so the end point needs value + gradient; through a gradient-informed
    # network every path gradient is differentiated again
    return batch_size * ((3 * num_steps if gradient_informed else 0) + 2)


def diffusion_optimiser(
    f: Callable,
    domain,
    *,
    method: str = "dds",
    batch_size: int = 32,
    num_steps: int = 16,
    network: str = "mlp",
    gradient_informed: bool = False,
    loss: str = "log_variance",
    width: int = 64,
    depth: int = 2,
    sigma: float = 0.6,
    learning_rate: float = 1e-2,
    num_best: int = 8,
    full_frame: bool = False,
) -> DiffusionOptimiser:
    """Low-temperature controlled-diffusion optimiser as a pure ``(init, step)`` pair.

    ``state = init(key, temperature, task=None)``; ``state, info = step(key, state)`` runs one
    training
    iteration of the sampler for ``exp(-f/T)`` at ``state.temperature`` (change it with
    ``state._replace(temperature=...)`` to anneal) and records the best sampled points. Both
    are jittable and vmappable over keys. Points in the state are normalised, map them with
    ``centre + half_width * z``. The sampler works in a frame
    ``z = frame_centre + frame_scale * u`` (initially the whole box);
    :func:`pdegen.optimise.minimise` moves it onto the sample cloud after each temperature.
    ``full_frame``: ``frame_scale`` is a ``(d, d)`` matrix, ``z = frame_centre + frame_scale @ u``
    (the sample cloud's principal axes, scaled), so that the network's coordinates ``u`` follow
    the cloud's orientation (for a coordinate-wise network: separable in that basis).
    """
    if method not in ("dds", "pis"):
        raise ValueError(
            f"diffusion_optimiser(method=...): expected 'dds' or 'pis', got {method!r}"
        )
    if loss not in ("kl", "log_variance"):
        raise ValueError(
            f"diffusion_optimiser(loss=...): expected 'kl' or 'log_variance', got {loss!r}"
        )
    box = make_box(domain, caller="diffusion_optimiser")
    dim = box.centre.shape[0]
    fz = objective_z(f, box)
    builder = DDS if method == "dds" else PIS
    optimiser = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))
    dt = default_dtype()

    def build(key):
        return builder(
            dim,
            key=key,
            sigma=sigma,
            num_steps=num_steps,
            network=network,
            gradient_informed=gradient_informed,
            width=width,
            depth=depth,
        )

    static = eqx.partition(build(jr.key(0)), eqx.is_inexact_array)[1]

    def init(key, temperature, task=None):
        params = eqx.filter(build(key), eqx.is_inexact_array)
        return DiffusionOptimiserState(
            params,
            optimiser.init(params),
            jnp.asarray(temperature, dtype=dt),
            best_init(num_best, dim),
            jnp.zeros((), dtype=jnp.int64 if dt == jnp.float64 else jnp.int32),
            jnp.zeros((dim,), dtype=dt),
            jnp.eye(dim, dtype=dt) if full_frame else jnp.ones((dim,), dtype=dt),
            task,
        )

    per_step = evaluations_per_iteration(gradient_informed, loss, batch_size, num_steps)

    def step(key, state: DiffusionOptimiserState):
        temperature = state.temperature
        centre, scale = state.frame_centre, state.frame_scale

        def to_z(u):  # u (..., d) -> z (..., d)
            lead = (1,) * (u.ndim - 1)
            if scale.ndim == 2:
                return centre.reshape(lead + centre.shape) + u @ scale.T
            return centre.reshape(lead + centre.shape) + scale.reshape(lead + scale.shape) * u

        def log_density(u):
            z = to_z(u)
            value = fz(z) if state.task is None else fz(z, state.task)
            return -(value / temperature + wall(z))

        model = eqx.combine(state.params, static)
        model, opt_state, value, paths = controlled_training_step(
            model,
            state.opt_state,
            key=key,
            log_density=log_density,
            optimiser=optimiser,
            batch_size=batch_size,
            loss=loss,
        )
        z_end = to_z(paths.samples)
        # recover f from the stored log density: no extra evaluations
        walls = jax.vmap(wall)(z_end)
        f_end = (-paths.log_density - walls) * temperature
        z_clip = jnp.clip(z_end, -1.0, 1.0)
        # outside the box the subtraction loses precision: those points are not candidates;
        # nor are the end points of diverged paths (NaN samples: the sampler's fault, not f's)
        best = best_update(state.best, z_clip, f_end, exclude=~(walls == 0))
        n_eval = state.num_evaluations + per_step
        new = DiffusionOptimiserState(
            eqx.filter(model, eqx.is_inexact_array),
            opt_state,
            temperature,
            best,
            n_eval,
            centre,
            scale,
            state.task,
        )
        inside = jnp.isfinite(f_end) & (walls == 0)
        mean_inside = jnp.sum(jnp.where(inside, f_end, 0.0)) / jnp.maximum(
            jnp.sum(inside), 1
        ).astype(f_end.dtype)
        info = DiffusionOptimiserInfo(
            value,
            mean_inside,
            jnp.mean(jnp.std(z_clip, axis=0)),
            best.values[0],
            n_eval,
            jnp.mean(z_clip, axis=0),
            jnp.std(z_clip, axis=0),
            jnp.cov(z_clip, rowvar=False).reshape(dim, dim),
        )
        return new, info

    return DiffusionOptimiser(init, step, per_step)
