"""``pdegen train`` and ``pdegen sample`` subcommands (wired into the main CLI by ``register``)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

SDE_CHOICES = ("vp", "vp-cosine", "ve", "edm")


def _build_sde(name: str):
    from ._sde import EDMSDE, VESDE, VPSDE

    return {"vp": VPSDE(), "vp-cosine": VPSDE(schedule="cosine", t_max=0.999), "ve": VESDE(), "edm": EDMSDE()}[name]


def _train(args: argparse.Namespace) -> int:
    import jax.random as jr

    from ._model import DiffusionModel, Normalisation
    from ._networks import ScoreMLP, UNet, count_parameters
    from ._training import TrainConfig, load_data, train

    data = load_data(args.data, key=args.key)
    if data.ndim == 3:  # (N, H, W): one channel
        data = data[:, None]
    if data.ndim not in (2, 4):
        raise ValueError(f"--data: expected arrays (N, D), (N, H, W) or (N, C, H, W), got shape {data.shape}")
    key = jr.key(args.seed)
    net_key, train_key = jr.split(key)
    if data.ndim == 4:
        mults = tuple(int(m) for m in args.channel_mults.split(","))
        net = UNet(data.shape[1], base_channels=args.channels, channel_mults=mults,
                   num_res_blocks=args.res_blocks, attention=args.attention, key=net_key)
    else:
        net = ScoreMLP(data.shape[1], width=args.channels, depth=args.depth, key=net_key)
    model = DiffusionModel(net, _build_sde(args.sde), Normalisation.fit(data), tuple(data.shape[1:]),
                           parameterisation=args.parameterisation)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                         warmup_steps=min(args.warmup, args.steps), ema_decay=args.ema,
                         checkpoint_every=args.checkpoint_every, log_every=min(50, args.steps))
    print(f"training {type(net).__name__} ({count_parameters(net)} float32 parameters) on {data.shape}")
    result = train(model, data, key=train_key, config=config, out_dir=args.out, progress=not args.quiet)
    print(f"done: step {int(result.state.step)}, final loss {result.losses[-1]:.4g}; checkpoint in {args.out}")
    return 0


def _save_grid(path: Path, samples: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ._checkpoint import atomic_write

    n = samples.shape[0]
    if samples.ndim == 2:  # vectors: scatter of the first two coordinates
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(samples[:, 0], samples[:, 1 if samples.shape[1] > 1 else 0], s=4)
    else:
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
        for i, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if i < n:
                ax.imshow(samples[i, 0], cmap="viridis")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _sample(args: argparse.Namespace) -> int:
    import jax.random as jr

    from ._checkpoint import atomic_write, load_checkpoint
    from ._samplers import sample_model

    ckpt = load_checkpoint(args.checkpoint)
    options = {} if args.steps is None else {"num_steps": args.steps}
    samples = np.asarray(sample_model(ckpt.model, args.n, key=jr.key(args.seed), method=args.method, **options))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, samples=samples)
    with atomic_write(out / "samples.npz") as f:
        f.write(buf.getvalue())
    _save_grid(out / "samples.png", samples)
    print(f"wrote {samples.shape} samples to {out / 'samples.npz'} and {out / 'samples.png'}")
    return 0


def register(subparsers) -> None:
    """Add ``train`` and ``sample`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("train", help="train a score-based diffusion model on fields or vectors")
    p.add_argument("--data", required=True, help=".npz (array under --key) or .npy file, shape (N, [C,] H, W) or (N, D)")
    p.add_argument("--key", default="fields", help="array name inside the .npz file (default: fields)")
    p.add_argument("--out", required=True, help="checkpoint folder (resumed if it holds a checkpoint)")
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
    p.add_argument("--attention", action="store_true", help="self-attention at the U-Net bottleneck")
    p.add_argument("--depth", type=int, default=3, help="MLP depth (vector data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    s = subparsers.add_parser("sample", help="draw samples from a trained checkpoint")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder written by `pdegen train`")
    s.add_argument("--n", type=int, default=16, help="number of samples")
    s.add_argument("--out", required=True, help="output folder for samples.npz and samples.png")
    s.add_argument("--method", default="edm_heun",
                   choices=("euler_maruyama", "predictor_corrector", "probability_flow", "ddim", "edm_heun"))
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)
