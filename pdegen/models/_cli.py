"""``pdegen train`` and ``pdegen sample`` subcommands (wired into the main CLI by ``register``)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

SDE_CHOICES = ("vp", "vp-cosine", "ve", "edm")


def _build_sde(name: str):
    from ._sde import EDMSDE, VESDE, VPSDE

    return {
        "vp": VPSDE(),
        "vp-cosine": VPSDE(schedule="cosine", t_max=0.999),
        "ve": VESDE(),
        "edm": EDMSDE(),
    }[name]


def _data_channels(path: str, channels: int) -> list[str] | None:
    """Channel names stored in a ``pdegen data`` file's ``meta`` entry, if it has them."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "meta" not in f.files:
                return None
            names = json.loads(str(f["meta"])).get("channels")
    except Exception:  # noqa: BLE001 - names are optional: anything unreadable means "none"
        return None
    if (
        isinstance(names, list)
        and len(names) == channels
        and all(isinstance(n, str) for n in names)
    ):
        return names
    return None


def _train(args: argparse.Namespace) -> int:
    import jax.random as jr

    from .._io import check_output_dir
    from ._model import DiffusionModel, Normalisation
    from ._networks import ScoreMLP, UNet, count_parameters
    from ._training import CheckpointMismatch, TrainConfig, _check_data, load_data, train

    check_output_dir(args.out, "--out")  # before any work: not after the whole run
    data = load_data(args.data, key=args.key)
    label = f"--data {str(args.data)!r}" + (
        f" (array {args.key!r})" if str(args.data).endswith(".npz") else ""
    )
    if data.ndim == 3:  # (N, H, W): one channel
        data = data[:, None]
    if data.ndim not in (2, 4):
        raise ValueError(
            f"{label}: expected arrays (N, D), (N, H, W) or (N, C, H, W), got shape {data.shape}"
        )
    # Checked before the normalisation is fitted: NaN or empty data get their own message.
    try:
        data = _check_data(data, label, min_examples=2)
    except TypeError as err:  # a wrong dtype in a file is bad input, not a programming error
        raise ValueError(str(err)) from None
    key = jr.key(args.seed)
    net_key, train_key = jr.split(key)
    if data.ndim == 4:
        try:
            mults = tuple(int(m) for m in args.channel_mults.split(","))
        except ValueError:
            raise ValueError(
                f"--channel-mults must be comma-separated ints >= 1 (e.g. 1,2,2), got "
                f"{args.channel_mults!r}"
            ) from None
        if min(mults) < 1:
            raise ValueError(f"--channel-mults must be ints >= 1, got {args.channel_mults!r}")
        net = UNet(
            data.shape[1],
            base_channels=args.channels,
            channel_mults=mults,
            num_res_blocks=args.res_blocks,
            attention=args.attention,
            key=net_key,
        )
    else:
        net = ScoreMLP(data.shape[1], width=args.channels, depth=args.depth, key=net_key)
    model = DiffusionModel(
        net,
        _build_sde(args.sde),
        Normalisation.fit(data),
        tuple(data.shape[1:]),
        parameterisation=args.parameterisation,
    )
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=min(args.warmup, args.steps),
        ema_decay=args.ema,
        checkpoint_every=args.checkpoint_every,
        log_every=min(50, args.steps),
    )
    meta = {"data": str(args.data)}
    channels = _data_channels(args.data, data.shape[1])
    if channels is not None:
        meta["channels"] = channels
    print(
        f"training {type(net).__name__} ({count_parameters(net)} float32 parameters) on {data.shape}"
    )
    try:
        result = train(
            model,
            data,
            key=train_key,
            config=config,
            out_dir=args.out,
            progress=not args.quiet,
            metadata=meta,
        )
    except CheckpointMismatch:  # said in the command's terms
        raise ValueError(
            f"--out {args.out} holds a checkpoint of another run (another network, data or "
            "options; --steps also sets the learning-rate schedule, so a finished run cannot be "
            "extended). Resume it with the same options as its first run, or give a new --out"
        ) from None
    print(
        f"done: step {int(result.state.step)}, final loss {result.losses[-1]:.4g}; checkpoint in {args.out}"
    )
    return 0


def plot_samples(
    samples: np.ndarray, *, channel_names=None, title: str | None = None, max_samples: int = 8
):
    """A labelled figure of samples (fields or vectors).

    A labelled figure of samples: fields ``(N, C, H, W)`` as one row per channel (titled with
    the channel name, one colour bar per row on a shared scale), vectors ``(N, D)`` as a scatter
    of the first two coordinates. Returns the matplotlib ``Figure`` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    samples = np.asarray(samples)
    n = samples.shape[0]
    channels = samples.shape[1] if samples.ndim >= 2 else 1
    names = (
        list(channel_names)
        if channel_names is not None
        else [f"channel {c}" for c in range(channels)]
    )
    if len(names) != channels:
        raise ValueError(
            f"plot_samples(channel_names=...): {len(names)} names for {channels} channels"
        )
    if samples.ndim == 2:  # vectors: scatter of the first two coordinates
        fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
        second = 1 if channels > 1 else 0
        ax.scatter(samples[:, 0], samples[:, second], s=4)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[second])
        ax.set_title(
            f"{n} samples" + (f" (coordinates 1-2 of {channels})" if channels > 2 else ""),
            fontsize=9,
        )
    elif samples.ndim == 4:
        cols = min(n, max_samples)
        fig, axes = plt.subplots(
            channels,
            cols,
            figsize=(2.0 * cols + 1.0, 2.0 * channels + 0.6),
            squeeze=False,
            layout="constrained",
        )
        for c in range(channels):
            vmin, vmax = float(samples[:cols, c].min()), float(samples[:cols, c].max())
            for i in range(cols):
                ax = axes[c, i]
                im = ax.imshow(samples[i, c], origin="lower", cmap="viridis", vmin=vmin, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{names[c]} #{i}", fontsize=8)
            fig.colorbar(im, ax=axes[c, :].tolist(), shrink=0.9, label=names[c])
    else:
        raise ValueError(
            f"plot_samples(samples=...): expected shape (N, D) or (N, C, H, W), got {samples.shape}"
        )
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _save_figure(path: Path, fig) -> None:
    import matplotlib.pyplot as plt

    from .._io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _sample(args: argparse.Namespace) -> int:
    import jax.random as jr

    from .._io import atomic_write, check_output_dir
    from ._checkpoint import available_pretrained, is_writer, load_checkpoint, load_pretrained
    from ._samplers import recommended_sampler, sample_model, sampler_function

    out = check_output_dir(args.out, "--out")  # before sampling, not after
    if args.n < 1:
        raise ValueError(f"--n must be a positive number of samples, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if not Path(args.checkpoint).exists() and args.checkpoint in available_pretrained():
        ckpt = load_pretrained(args.checkpoint)
    else:
        ckpt = load_checkpoint(args.checkpoint)
    # the recommended sampler with its recorded options, or the named one with its own defaults
    method = recommended_sampler(ckpt.metadata) if args.method is None else args.method
    run = sampler_function(method)
    label, recorded = getattr(run, "func", run).__name__, getattr(run, "keywords", {})
    options = {} if args.steps is None else {"num_steps": args.steps}
    name = ckpt.metadata.get("name") or Path(args.checkpoint).resolve().name
    steps = options.get("num_steps", recorded.get("num_steps", "default"))
    print(
        f"sampling {args.n} from {name} (trained {ckpt.step} steps) with {label}, {steps} steps",
        flush=True,
    )
    samples = np.asarray(
        sample_model(
            ckpt.model,
            args.n,
            key=jr.key(args.seed),
            method=method,
            batch_size=args.batch_size,
            progress=not args.quiet,
            **options,
        )
    )
    if not is_writer():
        return 0
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, samples=samples)
    with atomic_write(out / "samples.npz") as f:
        f.write(buf.getvalue())
    names = ckpt.metadata.get("channels")
    channels = samples.shape[1]
    if not (
        isinstance(names, list)
        and len(names) == channels
        and all(isinstance(c, str) for c in names)
    ):
        names = None
    title = f"{name} (trained {ckpt.step} steps): {label}, {steps} sampler steps, seed {args.seed}"
    _save_figure(out / "samples.png", plot_samples(samples, channel_names=names, title=title))
    print(f"wrote {samples.shape} samples to {out / 'samples.npz'} and {out / 'samples.png'}")
    return 0


def register(subparsers) -> None:
    """Add ``train`` and ``sample`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a score-based diffusion model on fields or vectors"
    )
    p.add_argument(
        "--data",
        required=True,
        help=".npz (array under --key) or .npy file, shape (N, [C,] H, W) or (N, D)",
    )
    p.add_argument(
        "--key", default="fields", help="array name inside the .npz file (default: fields)"
    )
    p.add_argument(
        "--out", required=True, help="checkpoint folder (resumed if it holds a checkpoint)"
    )
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--sde", choices=SDE_CHOICES, default="vp")
    p.add_argument("--parameterisation", choices=("epsilon", "denoiser"), default="epsilon")
    p.add_argument("--channels", type=int, default=32, help="U-Net base channels / MLP width")
    p.add_argument("--channel-mults", default="1,2,2", help="U-Net channel multipliers per level")
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument(
        "--attention", action="store_true", help="self-attention at the U-Net bottleneck"
    )
    p.add_argument("--depth", type=int, default=3, help="MLP depth (vector data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    s = subparsers.add_parser("sample", help="draw samples from a trained checkpoint")
    s.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder written by `pdegen train`, or the name of a shipped prior",
    )
    s.add_argument("--n", type=int, default=16, help="number of samples")
    s.add_argument("--out", required=True, help="output folder for samples.npz and samples.png")
    s.add_argument(
        "--method",
        default=None,
        choices=(
            "euler_maruyama", "predictor_corrector", "probability_flow", "ddim", "edm_heun",
            "flow_ode",
        ),
        help="sampler (default: the checkpoint's recommended one, else edm_heun)",
    )  # fmt: skip
    s.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps (default: the recommended sampler's, else the sampler's own)",
    )
    s.add_argument(
        "--batch-size", type=int, default=32, help="samples per batch (progress is shown per batch)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_sample)
