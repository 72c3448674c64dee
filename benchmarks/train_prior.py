"""Train the pretrained prior shipped with pdegen: joint Poisson (a, u) pairs on a 32 x 32 grid.

    python benchmarks/train_prior.py --out build/poisson-joint-32       # the shipped model's recipe
    python benchmarks/train_prior.py --steps 200 --n-train 500 --name my-prior --out /tmp/my-prior

Steps: generate ``--n-train`` DiffusionPDE Poisson pairs with :func:`pdegen.fem.generate_dataset`
(GRF source ``a``, alpha=2, tau=3; FEM solution ``u`` of ``Laplacian(u) = a``, ``u = 0`` on the
boundary; channel 0 = a, channel 1 = u), train an EDM-preconditioned U-Net by denoising score
matching with :func:`pdegen.models.train` in ``OUT/checkpoints`` (checkpointed, so an interrupted
run continues where it stopped when started again with the same options), then export the EMA
weights alone with :func:`pdegen.models.export_model` into ``OUT/model`` (written atomically) and
the loss curve to ``OUT/loss.png``. The script writes nowhere but ``--out``. Load the result with
``pdegen.models.load_checkpoint("OUT/model")``; to ship it, copy ``OUT/model`` to
``pdegen/data/<name>/`` (then ``pdegen.models.load_pretrained(name)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # FEM data in float64; the network stays float32

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

from pdegen import fem, models  # noqa: E402
from pdegen._io import atomic_write, write_json_atomic  # noqa: E402

DEFAULT_NAME = "poisson-joint-32"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=DEFAULT_NAME, help=f"model name (default {DEFAULT_NAME})")
    p.add_argument(
        "--out", required=True, help="output folder: OUT/model, OUT/checkpoints, OUT/loss.png"
    )
    p.add_argument(
        "--work-dir", default=None, help="training checkpoints (default OUT/checkpoints)"
    )
    p.add_argument("--grid", type=int, default=32, help="nodes per side (default 32)")
    p.add_argument("--n-train", type=int, default=4000, help="training pairs (default 4000)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to 1%%)"
    )
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--channel-mults", default="1,2,4,4")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of data (key seed) and training (seed + 1)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("grid", "n_train", "steps", "batch_size", "base_channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def training_data(args, work: Path) -> tuple[np.ndarray, dict]:
    """The training pairs, generated once and cached in the work folder."""
    path = work / f"data-{args.grid}-{args.n_train}-{args.seed}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["fields"], {"cached": str(path.name)}
    fields, meta = fem.generate_dataset(
        "poisson", args.n_train, key=jr.key(args.seed), grid=args.grid, progress=not args.quiet
    )
    with atomic_write(path) as f:
        np.savez(f, fields=fields)
    return fields, meta


def write_loss_plot(path: Path, losses: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="batch loss")
    window = max(1, len(losses) // 30)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"running mean ({window} steps)")
    ax.set(
        xlabel="step",
        ylabel="denoising score-matching loss (EDM weighting)",
        yscale="log",
        title=title,
    )
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.out)
    out = root / "model"
    work = Path(args.work_dir) if args.work_dir else root / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data, data_meta = training_data(args, work)
    data_seconds = time.perf_counter() - t0
    print(f"training data {data.shape} ({data_seconds:.1f} s)")

    net_key, train_key = jr.split(jr.key(args.seed + 1))
    mults = tuple(int(m) for m in args.channel_mults.split(","))
    net = models.UNet(2, base_channels=args.base_channels, channel_mults=mults, key=net_key)
    model = models.DiffusionModel(
        net,
        models.EDMSDE(),
        models.Normalisation.fit(data),
        tuple(data.shape[1:]),
        parameterisation="denoiser",
    )
    config = models.TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=min(args.warmup, args.steps),
        ema_decay=args.ema,
        checkpoint_every=max(1, min(250, args.steps)),
        log_every=min(50, args.steps),
    )
    print(f"U-Net with {models.count_parameters(net)} float32 parameters; {config}")
    t0 = time.perf_counter()
    result = models.train(
        model, data, key=train_key, config=config, out_dir=work, progress=not args.quiet
    )
    train_seconds = time.perf_counter() - t0
    step = int(result.state.step)
    # Wall time summed over all sessions of this run (a resumed run adds to it).
    log_path = work / "sessions.json"
    sessions = json.loads(log_path.read_text()) if log_path.is_file() else []
    sessions.append({"seconds": round(train_seconds, 1), "end_step": step})
    write_json_atomic(log_path, sessions)
    total_seconds = float(sum(s["seconds"] for s in sessions))
    losses = np.asarray(result.losses)
    print(
        f"trained to step {step} in {train_seconds:.0f} s this session; final loss "
        f"{np.mean(losses[-50:]):.4g} (mean of the last 50 steps)"
    )

    grid = int(data.shape[-1])
    metadata = {
        "name": args.name,
        "description": (
            "Joint prior over DiffusionPDE Poisson pairs (a, u) on a unit-square grid: channel 0 "
            "the GRF source a (alpha=2, tau=3), channel 1 the P1 FEM solution u of "
            "Laplacian(u) = a with u = 0 on the boundary; images (channel, y, x), row 0 at y = 0."
        ),
        "channels": ["a", "u"],
        "grid": grid,
        "task": "poisson",
        "data": {
            "generator": "pdegen.fem.generate_dataset",
            "task": "poisson",
            "n": int(data.shape[0]),
            "grid": grid,
            "seed": args.seed,
            "alpha": 2.0,
            "tau": 3.0,
            **{k: v for k, v in data_meta.items() if k in ("mean_relative_residual", "cached")},
        },
        "train": dataclasses.asdict(config),
        "train_wall_seconds": round(total_seconds, 1),
        "train_platform": f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}",
        "final_loss": float(np.mean(losses[-50:])),
        "recommended_sampler": {"method": "edm_heun", "num_steps": 18, "denoise_final": True},
        "script": "benchmarks/train_prior.py",
        "arguments": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir", "quiet")},
    }
    models.export_model(out, result.state.ema_model, metadata, step=step)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"exported {args.name!r} ({size / 1e6:.2f} MB) to {out}")
    plot = root / "loss.png"
    write_loss_plot(
        plot, losses, f"{args.name}: {step} steps, batch {args.batch_size}, {data.shape[0]} pairs"
    )
    print(f"loss curve: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
