"""Denoising score matching: loss, optimiser, EMA, the training loop with exact resume."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
from jax import Array

from .._errors import NonFiniteError, UserError, as_key
from .._io import atomic_write, check_output_dir
from ._checkpoint import (
    TrainState,
    all_finite,
    is_writer,
    load_train_state,
    read_metadata,
    save_checkpoint,
    skeleton_state,
)
from ._distributed import check_batch_divisible, make_mesh, replicate, shard_batch
from ._flow import flow_matching_loss_single
from ._model import DiffusionModel


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (all JSON-serialisable; stored in checkpoints)."""

    steps: int = 10_000
    batch_size: int = 64
    learning_rate: float = 2e-4
    warmup_steps: int = 200
    final_learning_rate_ratio: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    log_every: int = 50

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig({name}=...) must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig(warmup_steps=...) must be >= 0, got {self.warmup_steps}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"TrainConfig(learning_rate=...) must be > 0, got {self.learning_rate}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig(ema_decay=...) must be in [0, 1), got {self.ema_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"TrainConfig(grad_clip=...) must be > 0, got {self.grad_clip}")


@functools.lru_cache(maxsize=16)
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with linear warm-up, cosine decay and global-norm gradient clipping.

    Cached per config, so repeated runs reuse the compiled training step.
    """
    peak = config.learning_rate
    end = peak * config.final_learning_rate_ratio
    warmup = max(config.warmup_steps, 1)
    decay = max(config.steps - config.warmup_steps, 1)

    def schedule(count):
        # Written with explicit float32 casts so it runs under strict dtype promotion.
        n = jnp.asarray(count).astype(jnp.float32)
        warm = peak * jnp.minimum(n / warmup, 1.0)
        frac = jnp.clip((n - config.warmup_steps) / decay, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return jnp.where(n < config.warmup_steps, warm, cosine)

    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule))


def dsm_loss_single(
    model: DiffusionModel, x0: Array, *, key: Array, penalty: Callable | None = None
) -> Array:
    """Denoising score-matching loss for one example ``x0`` (normalised units), a scalar.

    ``epsilon``: ``|eps_hat - z|^2`` (score matching with weight ``sigma^2``).
    ``velocity``: the conditional flow-matching loss (:func:`flow_matching_loss_single`).
    ``denoiser``: ``lambda |D - x0|^2`` with the EDM weight ``lambda = (s^2 + sd^2) / (s sd)^2``,
    ``s = sigma / alpha``. Both are means over the entries of ``x0``. ``penalty(D) -> scalar``
    (denoiser parameterisation only): a term on the denoised estimate added with the same weight,
    e.g. a PDE residual (physics-informed training, Bastek et al. 2024); a penalty that the
    exact denoiser satisfies at every noise level (a linear constraint of the data) leaves the
    optimum unchanged.
    """
    if model.parameterisation == "velocity":  # a flow model: conditional flow matching
        return flow_matching_loss_single(model, x0, key=key)
    tkey, nkey = jr.split(key)
    t = model.sde.sample_training_time(key=tkey, dtype=x0.dtype)
    xt, z = model.sde.marginal(x0, t, key=nkey)
    if model.parameterisation == "epsilon":
        return jnp.mean((model.epsilon(xt, t) - z) ** 2)
    s = (model.sde.sigma(t) / model.sde.alpha(t)).astype(x0.dtype)
    sd2 = model.sigma_data**2
    weight = (s**2 + sd2) / (s**2 * sd2)
    denoised = model.denoiser(xt, t)
    loss = jnp.mean((denoised - x0) ** 2)
    if penalty is not None:
        loss = loss + jnp.asarray(penalty(denoised), loss.dtype)
    return weight * loss


def dsm_loss(
    model: DiffusionModel, batch: Array, *, key: Array, penalty: Callable | None = None
) -> Array:
    """Mean of :func:`dsm_loss_single` over a batch ``(B, *data_shape)``; one key per example."""
    keys = jr.split(key, batch.shape[0])
    return jnp.mean(
        jax.vmap(lambda x, k: dsm_loss_single(model, x, key=k, penalty=penalty))(batch, keys)
    )


def init_train_state(model: DiffusionModel, optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh :class:`TrainState` at step 0 (EMA starts at the initial weights)."""
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(model, model, opt_state, jnp.zeros((), jnp.int32))


@eqx.filter_jit
def train_step(
    state: TrainState,
    batch: Array,
    key: Array,
    optimizer: optax.GradientTransformation,
    ema_decay: float,
    penalty: Callable | None = None,
) -> tuple[TrainState, Array]:
    """One optimiser step on ``batch`` ``(B, *data_shape)``; the step's key is ``fold_in(key, step)``.

    Returns the new state and the batch loss. ``key`` is the run's base key, so the result of
    step ``n`` depends only on ``(state at n, batch, key)``: the basis of exact resume.
    """
    step_key = jr.fold_in(key, state.step)
    params, static = eqx.partition(state.model, eqx.is_inexact_array)

    def loss_of(p):
        return dsm_loss(eqx.combine(p, static), batch, key=step_key, penalty=penalty)

    loss, grads = jax.value_and_grad(loss_of)(params)
    # optax's Adam bias correction mixes python floats with int32 counts; allow that here only.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
    model = eqx.apply_updates(state.model, updates)
    # EMA warm-up: the effective decay grows from 0.1 towards ema_decay over the first steps.
    count = state.step.astype(jnp.float32)
    decay = jnp.minimum(jnp.float32(ema_decay), (1.0 + count) / (10.0 + count))
    ema_params = jtu.tree_map(
        lambda e, p: decay.astype(p.dtype) * e + (1.0 - decay.astype(p.dtype)) * p,
        eqx.filter(state.ema_model, eqx.is_inexact_array),
        eqx.filter(model, eqx.is_inexact_array),
    )
    ema_model = eqx.combine(ema_params, eqx.filter(model, eqx.is_inexact_array, inverse=True))
    return TrainState(model, ema_model, opt_state, state.step + 1), loss


class TrainingDivergedError(NonFiniteError):
    """Training produced a NaN / infinite loss or state; the message names the step.

    A ``FloatingPointError`` and a ``ValueError`` (``pdegen._errors.NonFiniteError``).
    """


def _data_error_reason(err: BaseException) -> str:
    """A short reason for a failed ``np.load``, never advice to enable pickle loading."""
    text = str(err)
    if "pickle" in text.lower():
        if "object arrays" in text.lower():
            return "it holds Python objects, not numbers"
        return "the file is neither a NumPy .npz archive nor a .npy array"
    if isinstance(err, EOFError):
        return "the file is empty or ends too early"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_data(source, *, key: str = "fields") -> np.ndarray:
    """Training data as a NumPy array ``(N, ...)`` from an array or an ``.npz``/``.npy`` file.

    For ``.npz`` files ``key`` names the array (default ``"fields"``). Files are read without
    pickle; an empty, truncated or foreign file raises one ``ValueError`` naming it.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"load_data(source=...): no such file {str(path)!r}")
        bad = f"load_data(source=...): {str(path)!r} is not a pdegen data set (.npz) or corrupt"
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                return np.asarray(loaded)
            with loaded:
                names = sorted(loaded.files)
                if key in names:
                    return np.asarray(loaded[key])
        except (EOFError, zipfile.BadZipFile, zlib.error, ValueError, OSError) as err:
            raise ValueError(f"{bad}: {_data_error_reason(err)}") from None
        raise ValueError(
            f"load_data(key={key!r}): {str(path)!r} has no array {key!r}; it has {names}"
        )
    return np.asarray(source)


def _check_dtype(data: np.ndarray, label: str) -> None:
    real = np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)
    if data.dtype == np.bool_ or not real:
        raise TypeError(f"{label} must hold real numbers (float or int), got dtype {data.dtype}")


def _check_data(data, label: str, *, min_examples: int = 1) -> np.ndarray:
    """Model-free checks of a data set ``(N, ...)``; ``label`` names it in messages."""
    data = np.asarray(data)
    _check_dtype(data, label)
    if data.ndim < 2:
        raise ValueError(
            f"{label} must be an array of examples (N, ...) with 2 or more axes, got shape {data.shape}"
        )
    if data.shape[0] == 0:
        raise ValueError(
            f"{label} is empty (shape {data.shape}); at least {min_examples} example(s) are needed"
        )
    if any(s == 0 for s in data.shape[1:]):
        raise ValueError(
            f"{label} has shape {data.shape}: every axis after the first must be non-empty"
        )
    if data.shape[0] < min_examples:
        raise ValueError(
            f"{label} has {data.shape[0]} example(s); at least {min_examples} are needed"
        )
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        first = int(np.argmin(finite.reshape(data.shape[0], -1).all(axis=1)))
        raise ValueError(
            f"{label} contains {bad} NaN or infinite value(s) (first in example {first}); clean the data first"
        )
    return data


def check_data(data, *, name: str = "data", min_examples: int = 1) -> np.ndarray:
    """Check a data set before training.

    Check a data set ``(N, ...)`` without a model: real numeric dtype, at least 2 axes, no empty
    axis, at least ``min_examples`` examples, all finite. Returns it as a NumPy array."""
    return _check_data(data, f"`{name}`", min_examples=min_examples)


def validate_data(
    data, model: DiffusionModel, *, name: str = "data", min_examples: int = 1
) -> np.ndarray:
    """Check a data set ``(N, *model.data_shape)``: shape, numeric dtype, size, all finite."""
    return _validate(data, model, f"`{name}`", name, min_examples)


def _validate(
    data, model: DiffusionModel, label: str, name: str, min_examples: int = 1
) -> np.ndarray:
    data = np.asarray(data)
    _check_dtype(data, label)
    if data.ndim != len(model.data_shape) + 1:
        raise ValueError(
            f"{label} must have shape (N, {', '.join(map(str, model.data_shape))}), got {data.shape}"
        )
    model.check_compatible(data.shape, name=name)
    return _check_data(data, label, min_examples=min_examples)


def batch_indices(data_key: Array, step: int, n: int, batch_size: int) -> np.ndarray:
    """Indices of the batch for ``step`` (with replacement), a pure function of ``(data_key, step)``."""
    seed = [int(v) for v in np.asarray(jr.key_data(data_key)).ravel()] + [int(step)]
    return np.random.default_rng(seed).integers(0, n, size=batch_size)


class TrainResult(NamedTuple):
    """Outcome of :func:`train`: final state (``state.ema_model`` for sampling) and loss history."""

    state: TrainState
    losses: np.ndarray


def _write_loss_plot(path: Path, losses: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="loss")
    window = max(1, len(losses) // 50)
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"running mean ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising score-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _stored_losses(meta: dict, step: int, out: Path) -> list[float]:
    """The loss history of a checkpoint, one entry per step (``null`` read as NaN).

    Checkpoints of older versions could miss the losses logged since the last ``log_every``
    flush; NaN entries are put in front for the missing ones, so that the latest steps line up.
    """
    losses = [float("nan") if v is None else float(v) for v in meta.get("losses", [])]
    if len(losses) > step:
        losses = losses[:step]
    elif len(losses) < step:
        warnings.warn(
            f"train(out_dir={str(out)!r}): the checkpoint's loss history has {len(losses)} entries for "
            f"{step} steps (written by an older pdegen); the missing ones are recorded as NaN",
            stacklevel=3,
        )
        losses = [float("nan")] * (step - len(losses)) + losses
    return losses


def _training_sets(data, model: DiffusionModel) -> list[np.ndarray]:
    """The data set(s) of :func:`train`, each checked against the model."""
    many = isinstance(data, (list, tuple))
    items = list(data) if many else [data]
    if not items:
        raise ValueError("train(data=...): an empty list of data sets")
    sets = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            label = f"data file {str(item)!r}"
            item = load_data(item)
        else:
            label = f"`data[{i}]`" if many else "`data`"
        sets.append(_validate(item, model, label, "data"))
    if len({s.shape[1:] for s in sets}) > 1 and not model.resolution_free:
        raise ValueError(
            "train(data=[...]): data sets on different grids need a resolution-free network "
            f"(e.g. SpectralDenoiser); got shapes {[s.shape[1:] for s in sets]}"
        )
    return sets


class CheckpointMismatch(UserError):
    """The training folder holds what these arguments cannot resume.

    ``train(out_dir=...)`` holds an exported model, or the checkpoint of another model or
    training configuration."""


def train(
    model: DiffusionModel,
    data,
    *,
    key: Array,
    config: TrainConfig = TrainConfig(),
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    mesh=None,
    stop_after: int | None = None,
    metadata: dict | None = None,
    penalty: Callable | None = None,
) -> TrainResult:
    """Train ``model`` by denoising score matching on ``data`` ``(N, *model.data_shape)``.

    Data are in physical units (an array, or a ``.npz`` / ``.npy`` file read with
    :func:`load_data`); ``model.normalisation`` maps them to training units. A resolution-free
    model (:class:`SpectralDenoiser`) may be given a list of data sets on different grids: step
    ``n`` draws its batch from set ``n mod len(data)``. The output folder
    and the data are checked before any work. With ``out_dir`` a checkpoint is written every
    ``config.checkpoint_every`` steps and at the end (plus ``loss.png``), holding the loss of
    every step so far; with ``resume=True`` an existing checkpoint there is continued exactly
    (the stored key and config are used), parameters and loss history alike. ``mesh``
    (default: all devices) shards each batch over devices. ``stop_after`` ends the run early
    after that many total steps (a checkpoint is written), e.g. to split a long run into jobs.
    ``metadata`` (JSON-serialisable) is stored in every checkpoint (e.g. ``{"channels": [...]}``).
    ``penalty(D) -> scalar`` adds a term on the denoised estimate (normalised units) to the loss
    (:func:`dsm_loss_single`; an equinox Module's arrays are traced, not baked in); it is not
    stored, so a resumed run must pass the same one (name it in ``metadata``).

    The losses are checked on the host every ``config.log_every`` steps and the whole state
    before each checkpoint: a NaN / inf raises :class:`TrainingDivergedError` naming the step,
    and the last good checkpoint is left as it was. Only process 0 writes files.
    """
    if penalty is not None and model.parameterisation != "denoiser":
        raise ValueError(
            "train(penalty=...): needs a model with the denoiser parameterisation (EDM), "
            "the penalty acts on the denoised estimate"
        )
    out = check_output_dir(out_dir, "train(out_dir=...)") if out_dir is not None else None
    sets = _training_sets(data, model)
    key = as_key(key, "train(key=...)")
    optimizer = make_optimizer(config)
    mesh = make_mesh() if mesh is None else mesh
    check_batch_divisible(config.batch_size, mesh, name="config.batch_size")
    losses: list[float] = []
    state = init_train_state(model, optimizer)
    saved_step = None
    if out is not None and resume and (out / "metadata.json").is_file():
        meta = read_metadata(out)
        if meta.get("contents") == "model":
            raise CheckpointMismatch(
                f"train(out_dir={str(out)!r}): the folder holds an exported model (weights only), which "
                f"cannot be resumed; use a new out_dir"
            )
        if meta.get("model") != model.config():
            raise CheckpointMismatch(
                f"train(out_dir={str(out)!r}): the checkpoint there was made for a different model "
                f"configuration; use a new out_dir or resume=False"
            )
        if meta.get("train") != dataclasses.asdict(config):
            raise CheckpointMismatch(
                f"train(config=...): differs from the configuration stored in {str(out)!r} "
                f"({meta.get('train')}); resume with the same config or use a new out_dir"
            )
        state = load_train_state(out, skeleton_state(meta, optimizer), meta)
        key = jr.wrap_key_data(jnp.asarray(meta["key"], jnp.uint32))
        saved_step = int(state.step)
        losses = _stored_losses(meta, saved_step, out)
    train_key, data_key = jr.split(key)
    dtype = jnp.dtype(getattr(model.network, "dtype", "float32"))
    norm = (
        np.asarray(model.normalisation.mean, np.float64),
        np.asarray(model.normalisation.std, np.float64),
    )
    extra = (1,) * (sets[0].ndim - 2)
    mean = norm[0].reshape((1, -1) + extra)
    std = norm[1].reshape((1, -1) + extra)
    state = replicate(state, mesh)
    train_key = replicate(train_key, mesh)
    pending: list[Array] = []

    def kept() -> str:
        if out is None:
            return "no checkpoint was written (no out_dir)"
        if saved_step is None:
            return f"no checkpoint was written to {str(out)!r}"
        return f"the last good checkpoint in {str(out)!r} (step {saved_step}) is kept"

    def flush() -> None:
        # Move the losses of the steps since the last flush to the host and check them.
        nonlocal pending
        if not pending:
            return
        values = np.asarray(jnp.stack(pending), np.float64)
        first = len(losses) + 1
        pending = []
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            value = "NaN" if np.isnan(values[bad[0]]) else str(values[bad[0]])
            raise TrainingDivergedError(
                f"train: the loss became {value} at step {first + int(bad[0])} of {config.steps}; "
                f"training stopped and {kept()}. Lower config.learning_rate or config.grad_clip, or check the data"
            )
        losses.extend(float(v) for v in values)

    def check_state(st, done: int) -> None:
        if not all_finite(st):
            raise TrainingDivergedError(
                f"train: the model or optimiser state holds NaN or infinite values after step {done} of "
                f"{config.steps}; training stopped and {kept()}. Lower config.learning_rate or "
                f"config.grad_clip, or check the data"
            )

    def save(st, done: int) -> None:
        nonlocal saved_step
        if is_writer():
            meta = {
                **(metadata or {}),
                "train": dataclasses.asdict(config),
                "losses": list(losses),
                "key": np.asarray(jr.key_data(key)).tolist(),
            }
            save_checkpoint(out, st, meta)
            _write_loss_plot(out / "loss.png", np.asarray(losses))
        saved_step = done

    start = int(state.step)
    end = config.steps if stop_after is None else min(config.steps, int(stop_after))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True)
    try:
        for step in range(start, end):
            data = sets[step % len(sets)]
            idx = batch_indices(data_key, step, data.shape[0], config.batch_size)
            batch = ((data[idx] - mean) / std).astype(dtype)
            state, loss = train_step(
                state, shard_batch(batch, mesh), train_key, optimizer, config.ema_decay, penalty
            )
            pending.append(loss)
            done = step + 1
            log = done % config.log_every == 0 or done == end
            checkpoint = out is not None and (done % config.checkpoint_every == 0 or done == end)
            if log or checkpoint:
                flush()  # before a checkpoint too: it holds the loss of every step so far
                check_state(state, done)
            if log and bar is not None:
                bar.set_postfix(loss=f"{np.mean(losses[-config.log_every :]):.4g}")
            if bar is not None:
                bar.update(1)
            if checkpoint:
                save(state, done)
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(state, np.asarray(losses))
