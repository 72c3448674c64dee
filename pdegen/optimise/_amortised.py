"""Learning to learn with a controlled diffusion: one DDS / PIS sampler of ``exp(-f(x, task) / T)``
whose control network also sees the task's features, trained once on a family and applied to
unseen members without further training (sampling, then the usual polish).

The control is :class:`TaskControl`, a dense MLP of ``(x, t, features)``, put into the
controlled diffusions of :mod:`pdegen.models` (public names only), trained with their
log-variance loss over a batch of tasks per step, the temperature annealed over training as in
:func:`pdegen.optimise.minimise` (a family-level ``T_0``: the spread of ``f`` on uniform samples
of a few tasks; those evaluations count in the training cost)."""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from .. import models
from ._best import best_init, best_update
from ._box import default_dtype, make_box, objective_z, wall
from ._family import Family
from ._local import AdamPolish, LBFGSPolish

_PARAM_DTYPE = jnp.float32
DEFAULT_POLISH = AdamPolish(steps=20)  # immutable: safe as a default argument


def _time_features(t, num_frequencies: int = 4):
    freqs = 2.0 ** jnp.arange(num_frequencies, dtype=_PARAM_DTYPE) * jnp.pi
    t = jnp.asarray(t, dtype=_PARAM_DTYPE)
    return jnp.concatenate([jnp.sin(freqs * t), jnp.cos(freqs * t)])


class TaskControl(eqx.Module):
    """The task-conditioned control network of the amortised optimiser.

    Control ``u(t, x; task) = MLP(x, emb(t), features) [+ MLP(emb(t), features) * clip(grad
    log pi(x))]``; ``features`` is the current task's
    feature vector (not trained: gradients are stopped). The last layer starts at zero, so an
    untrained model is the reference process."""

    mlp: eqx.nn.MLP
    gain: eqx.nn.MLP | None
    features: jax.Array
    feature_scale: jax.Array
    dim: int = eqx.field(static=True)
    gradient_informed: bool = eqx.field(static=True)

    def __init__(
        self,
        dim,
        num_features,
        *,
        width=128,
        depth=3,
        feature_scale=None,
        gradient_informed=False,
        key,
    ):
        key, k_gain = jr.split(key)
        emb = _time_features(0.0).shape[0]
        mlp = eqx.nn.MLP(
            dim + emb + num_features,
            dim,
            width,
            depth,
            activation=jax.nn.gelu,
            key=key,
            dtype=_PARAM_DTYPE,
        )
        last = mlp.layers[-1]
        mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )
        self.mlp = mlp
        if gradient_informed:
            gain = eqx.nn.MLP(
                emb + num_features,
                dim,
                width,
                2,
                activation=jax.nn.gelu,
                key=k_gain,
                dtype=_PARAM_DTYPE,
            )
            last = gain.layers[-1]
            self.gain = eqx.tree_at(
                lambda m: (m.layers[-1].weight, m.layers[-1].bias),
                gain,
                (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
            )
        else:
            self.gain = None
        self.features = jnp.zeros((num_features,), dtype=_PARAM_DTYPE)
        self.feature_scale = (
            jnp.ones((num_features,), dtype=_PARAM_DTYPE)
            if feature_scale is None
            else jnp.asarray(feature_scale, dtype=_PARAM_DTYPE)
        )
        self.dim = dim
        self.gradient_informed = gradient_informed

    def with_task(self, features):
        return eqx.tree_at(lambda n: n.features, self, jnp.asarray(features, dtype=_PARAM_DTYPE))

    def __call__(self, t, x, grad_log_density=None):
        feats = jax.lax.stop_gradient(self.features / self.feature_scale)
        inp = jnp.concatenate([x.astype(_PARAM_DTYPE), _time_features(t), feats])
        out = self.mlp(inp)
        if self.gradient_informed:
            g = jnp.clip(grad_log_density, -100.0, 100.0).astype(_PARAM_DTYPE)
            out = out + self.gain(jnp.concatenate([_time_features(t), feats])) * g
        return out.astype(x.dtype)


class AmortisedOptimiser(NamedTuple):
    """A trained task-conditioned sampler for a family of problems.

    A trained task-conditioned sampler: ``model`` (a :class:`pdegen.models.ControlledDiffusion`
    whose network is a :class:`TaskControl`), the final ``temperature``, the family's
    ``dim``, ``training_evaluations`` and ``training_seconds``, the training ``losses`` and the
    ``family`` it was trained on (its name)."""

    model: Any
    temperature: float
    dim: int
    training_evaluations: int
    training_seconds: float
    losses: np.ndarray
    num_steps: int = 16
    settings: dict | None = None
    family: str | None = None


def _build_model(
    dim,
    num_features,
    feature_scale,
    *,
    method,
    num_steps,
    sigma,
    width,
    depth,
    gradient_informed,
    key,
):
    builder = models.DDS if method == "dds" else models.PIS
    k_net, k_ref = jr.split(key)
    model = builder(dim, key=k_ref, sigma=sigma, num_steps=num_steps, gradient_informed=False)
    network = TaskControl(
        dim,
        num_features,
        width=width,
        depth=depth,
        feature_scale=feature_scale,
        gradient_informed=gradient_informed,
        key=k_net,
    )
    return eqx.tree_at(lambda m: m.network, model, network)


def _sampler_for(model, features):
    return eqx.tree_at(lambda m: m.network, model, model.network.with_task(features))


def train_amortised(
    family: Family,
    *,
    key,
    method: str = "dds",
    iterations: int = 2000,
    tasks_per_iteration: int = 8,
    batch_size: int = 16,
    num_steps: int = 16,
    num_temperatures: int = 4,
    final_temperature_ratio: float = 1e-3,
    width: int = 128,
    depth: int = 3,
    sigma: float = 0.6,
    learning_rate: float = 1e-3,
    gradient_informed: bool = False,
    progress: bool = False,
) -> AmortisedOptimiser:
    """Train one task-conditioned sampler on a family of problems.

    Trains one task-conditioned sampler on ``family`` (fresh tasks every iteration).
    Training costs ``tasks_per_iteration * batch_size`` evaluations per iteration (the end
    points' values: the log-variance loss needs no gradient of ``f``; with ``gradient_informed``
    also one gradient, 2 evaluations, per path step) plus the ``T_0`` estimate."""
    import time

    if method not in ("dds", "pis"):
        raise ValueError(f"train_amortised(method=...): expected 'dds' or 'pis', got {method!r}")
    if iterations < num_temperatures:
        raise ValueError(
            f"train_amortised(iterations={iterations}): need at least one per temperature "
            f"({num_temperatures})"
        )
    t_start = time.perf_counter()
    box = make_box(family.domain, caller="train_amortised")
    fz = objective_z(family.fn, box)
    dim = family.dim
    k_scale, k_model, k_train = jr.split(key, 3)
    # family-level temperature scale and feature scale from a few tasks
    probe = family.sample(jr.fold_in(k_scale, 0), 8)
    z = jr.uniform(
        jr.fold_in(k_scale, 1), (8, 256, dim), dtype=default_dtype(), minval=-1, maxval=1
    )
    values = jax.vmap(lambda zz, task: jax.vmap(lambda p: fz(p, task))(zz))(z, probe)
    t0 = float(jnp.median(jnp.std(values, axis=1)))
    feats = jax.vmap(family.features)(probe)
    feature_scale = jnp.maximum(jnp.std(feats, axis=0), 1e-6)
    evaluations = int(values.size)
    settings = dict(
        method=method,
        num_steps=num_steps,
        sigma=sigma,
        width=width,
        depth=depth,
        gradient_informed=gradient_informed,
    )
    model = _build_model(dim, feats.shape[1], feature_scale, key=k_model, **settings)
    optimiser = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(learning_rate))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimiser.init(params)

    @jax.jit
    def step(params, opt_state, key, temperature):
        k_task, k_paths = jr.split(key)
        tasks = family.sample(k_task, tasks_per_iteration)

        def loss(p):
            def one(task, k):
                def log_density(zz):
                    return -(fz(zz, task) / temperature + wall(zz))

                sampler = _sampler_for(eqx.combine(p, static), family.features(task))
                value, _ = models.log_variance_loss(sampler, log_density, batch_size, key=k)
                return value

            return jnp.mean(jax.vmap(one)(tasks, jr.split(k_paths, tasks_per_iteration)))

        value, grads = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, value

    ratios = final_temperature_ratio ** (np.arange(num_temperatures) / max(num_temperatures - 1, 1))
    per_path = 1 + (2 * num_steps if gradient_informed else 0)
    losses = []
    # every iteration runs; the stages split them as evenly as they divide
    bar = tqdm(range(iterations), disable=not progress, desc="amortised")
    for i in bar:
        temperature = jnp.asarray(t0 * ratios[i * num_temperatures // iterations])
        params, opt_state, value = step(params, opt_state, jr.fold_in(k_train, i), temperature)
        losses.append(float(value))
        evaluations += tasks_per_iteration * batch_size * per_path
    model = eqx.combine(params, static)
    return AmortisedOptimiser(
        model,
        float(t0 * ratios[-1]),
        dim,
        evaluations,
        time.perf_counter() - t_start,
        np.asarray(losses),
        num_steps,
        settings,
        family.name,
    )


def save_amortised(path, amortised: AmortisedOptimiser) -> None:
    """Save a trained amortised optimiser atomically.

    Writes the trained optimiser to ``path`` (equinox leaves) and ``path + ".json"``
    (settings, temperature, training cost), both atomically."""
    from .._io import atomic_path, write_json_atomic

    with atomic_path(path) as tmp:
        eqx.tree_serialise_leaves(tmp, amortised.model)
    write_json_atomic(
        str(path) + ".json",
        {
            "dim": amortised.dim,
            "family": amortised.family,
            "num_features": int(amortised.model.network.features.shape[0]),
            "temperature": amortised.temperature,
            "training_evaluations": amortised.training_evaluations,
            "training_seconds": amortised.training_seconds,
            "settings": amortised.settings,
        },
    )


def load_amortised(path) -> AmortisedOptimiser:
    """Reads an optimiser written by :func:`save_amortised`."""
    import json

    with open(str(path) + ".json") as fh:
        meta = json.load(fh)
    skeleton = _build_model(
        meta["dim"],
        meta["num_features"],
        None,
        key=jr.key(0),
        **meta["settings"],
    )
    model = eqx.tree_deserialise_leaves(path, skeleton)
    return AmortisedOptimiser(
        model,
        float(meta["temperature"]),
        int(meta["dim"]),
        int(meta["training_evaluations"]),
        float(meta["training_seconds"]),
        np.zeros(0),
        int(meta["settings"]["num_steps"]),
        meta["settings"],
        meta.get("family"),
    )


class AmortisedResult(NamedTuple):
    """The result of :func:`apply_amortised`, per task.

    Per task (leading axis): best ``x``, ``value``; the trajectory ``evaluations`` ``(m,)``
    / ``best_values`` ``(n, m)``; ``num_evaluations`` per task."""

    x: np.ndarray
    value: np.ndarray
    evaluations: np.ndarray
    best_values: np.ndarray
    num_evaluations: int


def apply_amortised(
    amortised: AmortisedOptimiser,
    family: Family,
    tasks,
    *,
    key,
    num_samples: int = 32,
    polish: AdamPolish | LBFGSPolish | None = DEFAULT_POLISH,
) -> AmortisedResult:
    """Apply a trained amortised optimiser to new tasks.

    Samples ``num_samples`` points per task from the trained sampler at its final
    temperature (one value each, and a gradient per path step when gradient-informed), then
    runs the local search ``polish`` from the best of them (:class:`AdamPolish`: successive
    halving from the 8 best; :class:`LBFGSPolish`: projected L-BFGS from the best; ``None``:
    none), every evaluation counted."""
    if family.dim != amortised.dim:
        raise ValueError(
            f"apply_amortised(family=...): the optimiser was trained on d={amortised.dim}, "
            f"the family has d={family.dim}"
        )
    box = make_box(family.domain, caller="apply_amortised")
    fz = objective_z(family.fn, box)
    n = jax.tree.leaves(tasks)[0].shape[0]
    temperature = amortised.temperature

    def one(task, k):
        def log_density(zz):
            return -(fz(zz, task) / temperature + wall(zz))

        sampler = _sampler_for(amortised.model, family.features(task))
        z, _ = models.sample_controlled(sampler, log_density, num_samples, key=k)
        z = jnp.clip(z, -1.0, 1.0)
        best = best_update(best_init(8, family.dim), z, jax.vmap(lambda p: fz(p, task))(z))
        if polish is None:
            return best, best.values[:1]
        return polish.run(lambda p: fz(p, task), best, best.values[:1])

    best, traj = jax.jit(jax.vmap(one))(tasks, jr.split(key, n))
    if np.any(np.asarray(best.num_nonfinite) > 0):
        from .._errors import NonFiniteError

        raise NonFiniteError("apply_amortised: the objective returned NaN / inf")
    informed = amortised.model.network.gradient_informed
    sampling = num_samples * (1 + (2 * amortised.num_steps if informed else 0))
    evals = np.array([sampling])
    if polish is not None:
        evals = np.concatenate([evals, polish.evaluations(sampling)])
    x = np.asarray(jax.vmap(jax.vmap(box.to_x))(best.points))[:, 0]
    return AmortisedResult(
        x,
        np.asarray(best.values[:, 0]),
        evals,
        np.minimum.accumulate(np.asarray(traj), axis=1),
        int(evals[-1]),
    )
