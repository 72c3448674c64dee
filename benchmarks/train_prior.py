"""Train a prior shipped with pdegen: the GRF source ``a``, or joint (a, u) pairs of a linear PDE.

    python benchmarks/train_prior.py --data a --grids 32,64 --network spectral --out build/grf-a
    python benchmarks/train_prior.py --data poisson --grids 64 --network spectral --out build/poisson-joint-64
    python benchmarks/train_prior.py --out build/poisson-joint-32    # the U-Net recipe of poisson-joint-32

Steps: generate ``--n-train`` examples per grid (``--data a``: DiffusionPDE GRF sources, alpha=2,
tau=3; ``--data poisson|helmholtz``: pairs from :func:`pdegen.fem.generate_dataset`, channel 0 =
a, channel 1 = the FEM solution u), train an EDM-preconditioned network (``--network unet``, or
the resolution-free ``spectral`` :class:`pdegen.models.SpectralDenoiser`, which trains on all
``--grids`` at once, its Wiener head first fitted to the data's spectrum by
:func:`pdegen.models.fit_spectral_density`) by denoising score matching (``--flow linear|vp``: a U-Net predicting the
velocity of a flow-matching interpolant, by conditional flow matching) with
:func:`pdegen.models.train` in
``OUT/checkpoints`` (checkpointed: an interrupted run continues where it stopped when started
again with the same options; ``--stop-after`` splits a run into pieces), then measure the excess
denoising loss over the exact Gaussian denoiser of the data (the floor no network can beat) on
fresh data at every grid (and at ``--eval-grids``), export the EMA weights with
:func:`pdegen.models.export_model` into ``OUT/model`` and the loss curve to ``OUT/loss.png``.
The script writes nowhere but ``--out``. To ship a model, copy ``OUT/model`` to
``pdegen/data/<name>/`` (then ``pdegen.models.load_pretrained(name)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # FEM data in float64; the network stays float32

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import prior_data  # noqa: E402

from pdegen import inverse, models  # noqa: E402
from pdegen._io import atomic_write, write_json_atomic  # noqa: E402

DEFAULT_NAME = "poisson-joint-32"
DATA = ("a", "poisson", "helmholtz")
DESCRIPTIONS = {
    "a": "Prior over the DiffusionPDE GRF source a (alpha=2, tau=3) on a unit-square grid",
    "poisson": (
        "Joint prior over DiffusionPDE Poisson pairs (a, u) on a unit-square grid: channel 0 the GRF "
        "source a (alpha=2, tau=3), channel 1 the P1 FEM solution u of Laplacian(u) = a, u = 0 on the boundary"
    ),
    "helmholtz": (
        "Joint prior over DiffusionPDE Helmholtz pairs (a, u) on a unit-square grid: channel 0 the GRF "
        "source a (alpha=2, tau=3), channel 1 the P1 FEM solution u of Laplacian(u) + u = a, u = 0 on the boundary"
    ),
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=DEFAULT_NAME, help=f"model name (default {DEFAULT_NAME})")
    p.add_argument(
        "--out", required=True, help="output folder: OUT/model, OUT/checkpoints, OUT/loss.png"
    )
    p.add_argument(
        "--work-dir", default=None, help="training checkpoints (default OUT/checkpoints)"
    )
    p.add_argument("--data", choices=DATA, default="poisson", help="what the prior is over")
    p.add_argument("--grid", type=int, default=None, help="one grid (same as --grids G)")
    p.add_argument("--grids", default="32", help="grids to train on, e.g. 32,64 (spectral only)")
    p.add_argument("--eval-grids", default="", help="extra grids for the excess loss, e.g. 128")
    p.add_argument("--n-train", type=int, default=4000, help="training examples per grid")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--stop-after", type=int, default=None, help="end this piece at that step")
    p.add_argument(
        "--consistency-weight",
        type=float,
        default=0.0,
        help="physics-informed training: add weight * mean((u - solve(a))^2) of the denoised "
        "estimate to the loss (joint data, one grid)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to 1%%)"
    )
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument(
        "--p-mean", type=float, default=-1.2, help="training noise: log sigma ~ N(p_mean, p_std^2)"
    )
    p.add_argument(
        "--p-std",
        type=float,
        default=1.2,
        help="(EDM's -1.2, 1.2 by default; steep spectra need large sigma too: e.g. 1.0, 2.5)",
    )
    p.add_argument(
        "--sigma-max",
        type=float,
        default=80.0,
        help="the sampler's largest noise level (EDM's 80 by default; it must exceed the largest "
        "mode's std of the normalised fields several times: e.g. 160 for a, 320 for joint pairs at 64)",
    )
    p.add_argument(
        "--flow",
        choices=("linear", "vp"),
        default=None,
        help="train a flow-matching model (velocity of the linear or variance-preserving "
        "interpolant) instead of an EDM diffusion model; U-Net only",
    )
    p.add_argument("--network", choices=("unet", "spectral"), default="unet")
    p.add_argument("--base-channels", type=int, default=8, help="U-Net width")
    p.add_argument("--channel-mults", default="1,2,4,4", help="U-Net levels")
    p.add_argument("--width", type=int, default=16, help="spectral: residual width")
    p.add_argument("--depth", type=int, default=2, help="spectral: residual blocks")
    p.add_argument("--modes", type=int, default=12, help="spectral: modes per residual block")
    p.add_argument(
        "--sine", action="store_true", help="spectral: sine (Dirichlet) modes in the residual too"
    )
    p.add_argument(
        "--uncoupled",
        action="store_true",
        help="spectral: one spectrum per channel in the Wiener head (no cross-channel term)",
    )
    p.add_argument(
        "--no-fit-density",
        action="store_true",
        help="spectral: train the Wiener head's density with the rest instead of fitting it to the "
        "data's spectrum first (models.fit_spectral_density) and holding it fixed",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of data (key seed) and training (seed + 1)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.grids = (args.grid,) if args.grid is not None else _ints(args.grids)
    args.eval_grids = _ints(args.eval_grids)
    for name in ("n_train", "steps", "batch_size", "base_channels", "width", "modes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.grids or min(args.grids + args.eval_grids) < 4:
        p.error("--grids (and --eval-grids) must be integers >= 4")
    if args.consistency_weight and (args.data == "a" or len(args.grids) > 1):
        p.error("--consistency-weight needs joint data (--data poisson|helmholtz) on one grid")
    if args.flow and args.network == "spectral":
        p.error("--flow needs --network unet (SpectralDenoiser is built for the EDM denoiser)")
    if args.flow and args.consistency_weight:
        p.error("--consistency-weight acts on the EDM denoiser; it cannot be used with --flow")
    if len(args.grids) > 1 and args.network != "spectral":
        p.error("several --grids need --network spectral (the U-Net is tied to one grid)")
    return args


def training_data(args, grid: int, work: Path) -> np.ndarray:
    """The training examples on one grid, generated once and cached in the work folder."""
    path = work / f"data-{args.data}-{grid}-{args.n_train}-{args.seed}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["fields"]
    fields = prior_data(args.data, args.n_train, grid, args.seed, progress=not args.quiet)
    with atomic_write(path) as f:
        np.savez(f, fields=fields)
    return fields


def build_network(args, channels: int, key):
    if args.network == "spectral":
        return models.SpectralDenoiser(
            channels,
            width=args.width,
            depth=args.depth,
            modes=args.modes,
            sine=args.sine,
            coupled=not args.uncoupled,
            trained_grids=args.grids,
            key=key,
        )
    mults = _ints(args.channel_mults)
    return models.UNet(channels, base_channels=args.base_channels, channel_mults=mults, key=key)


def excess_losses(model, args) -> dict:
    """Excess denoising loss over the exact Gaussian denoiser on fresh data, per grid."""
    out = {}
    pde = "poisson" if args.data == "a" else args.data
    for grid in sorted(set(args.grids + args.eval_grids)):
        if args.data != "a" and grid > 64:
            continue  # the exact joint law is dense
        if not model.resolution_free and grid != model.data_shape[-1]:
            continue
        fresh = prior_data(args.data, 256, grid, 10_000 + args.seed)
        ref = inverse.exact_denoiser(model, pde=pde, grid=grid)
        res = models.denoising_loss(model, fresh, key=jr.key(12345), reference=ref)
        out[str(grid)] = {k: round(v, 5) for k, v in res.items()}
        print(
            f"  grid {grid}: loss {res['loss']:.4f}, floor {res['floor']:.4f}, "
            f"excess {100 * res['excess']:.1f}%"
        )
    return out


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
    sets = [training_data(args, g, work) for g in args.grids]
    print(f"training data {[d.shape for d in sets]} ({time.perf_counter() - t0:.1f} s)")

    net_key, train_key = jr.split(jr.key(args.seed + 1))
    channels = int(sets[0].shape[1])
    net = build_network(args, channels, net_key)
    if args.flow:
        process = models.LinearInterpolant() if args.flow == "linear" else models.VPInterpolant()
        parameterisation = "velocity"
    else:
        process = models.EDMSDE(sigma_max=args.sigma_max, p_mean=args.p_mean, p_std=args.p_std)
        parameterisation = "denoiser"
    model = models.DiffusionModel(
        net,
        process,
        models.Normalisation.fit(sets[-1]),
        tuple(sets[-1].shape[1:]),
        parameterisation=parameterisation,
    )
    density_fit = None
    if args.network == "spectral" and not args.no_fit_density:
        # The Wiener head is the best linear denoiser: fitted to the data's mode covariances
        # (every mode alike, so the high wavenumbers that set the continuation to finer grids are
        # fitted too), then held fixed while the residual trains.
        t0 = time.perf_counter()
        model, divergence = models.fit_spectral_density(model, sets, progress=not args.quiet)
        density_fit = {
            "method": "pdegen.models.fit_spectral_density (Whittle likelihood)",
            "divergence": round(divergence, 6),
            "trained_modes": model.network.trained_modes,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"Wiener head fitted to the data's spectrum: divergence {divergence:.2e}")
    config = models.TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=min(args.warmup, args.steps),
        ema_decay=args.ema,
        checkpoint_every=max(1, min(250, args.steps)),
        log_every=min(50, args.steps),
    )
    print(f"{type(net).__name__} with {models.count_parameters(net)} float32 parameters; {config}")
    penalty = None
    if args.consistency_weight:  # physics-informed training: u - solve(a) of the denoised estimate
        physics = inverse.make_task(f"{args.data}-inverse", grid=args.grids[0]).physics
        norm = model.normalisation
        penalty = inverse.consistency_penalty(
            physics,
            tuple(float(v) for v in np.asarray(norm.mean).reshape(-1)),
            tuple(float(v) for v in np.asarray(norm.std).reshape(-1)),
            weight=args.consistency_weight,
        )
    t0 = time.perf_counter()
    result = models.train(
        model,
        sets if len(sets) > 1 else sets[0],
        key=train_key,
        config=config,
        out_dir=work,
        progress=not args.quiet,
        stop_after=args.stop_after,
        penalty=penalty,
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
        f"trained to step {step} of {args.steps} in {train_seconds:.0f} s this session; loss "
        f"{np.mean(losses[-50:]):.4g} (mean of the last 50 steps)"
    )
    if step < args.steps:
        print("stopped early (--stop-after): run the same command again to continue")
        return 0

    print("excess denoising loss over the exact denoiser (fresh data):")
    excess = excess_losses(result.state.ema_model, args)
    grid = int(sets[-1].shape[-1])
    metadata = {
        "name": args.name,
        "description": DESCRIPTIONS[args.data] + "; images (channel, y, x), row 0 at y = 0.",
        "channels": ["a"] if args.data == "a" else ["a", "u"],
        "grid": grid,
        "grids_trained": list(args.grids),
        "resolution_free": bool(result.state.ema_model.resolution_free),
        "task": "poisson" if args.data == "a" else args.data,
        "data": {
            "generator": "pdegen.fem.gaussian_random_field"
            if args.data == "a"
            else "pdegen.fem.generate_dataset",
            "kind": args.data,
            "n_per_grid": args.n_train,
            "seed": args.seed,
            "alpha": 2.0,
            "tau": 3.0,
        },
        "train": dataclasses.asdict(config),
        "train_wall_seconds": round(total_seconds, 1),
        "train_platform": f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}",
        "final_loss": float(np.mean(losses[-50:])),
        "excess_loss": excess,
        **({"density_fit": density_fit} if density_fit else {}),
        # 40 EDM-Heun steps: with 18, even the exact GRF score overshoots the power of the highest
        # wavenumber bands by 18-26% (measured at 32x32); with 40 every band is within 5% there.
        # rho = 12 (EDM's 7 spaces the levels less densely near sigma_min): the highest bands of a
        # GRF are resolved at the smallest noise levels; with the exact score at 64x64 the band
        # |k| >= 64 goes from 1.06 to 1.02 of the truth at the same 40 steps (1.07 to 1.03 at 128).
        "recommended_sampler": (
            {"method": "flow_ode", "num_steps": 20, "denoise_final": True}
            if args.flow
            else {"method": "edm_heun", "num_steps": 40, "rho": 12.0, "denoise_final": True}
        ),
        "script": "benchmarks/train_prior.py",
        "arguments": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()
            if k not in ("out", "work_dir", "quiet", "stop_after")
        },
    }
    models.export_model(out, result.state.ema_model, metadata, step=step)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"exported {args.name!r} ({size / 1e6:.2f} MB) to {out}")
    plot = root / "loss.png"
    write_loss_plot(
        plot, losses, f"{args.name}: {step} steps, batch {args.batch_size}, grids {args.grids}"
    )
    print(f"loss curve: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
