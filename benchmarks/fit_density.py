"""Refit the Wiener head of a trained resolution-free prior to its training data's spectrum.

    python benchmarks/fit_density.py --prior grf-a --out build/grf-a-refit

Loads a shipped prior (or ``--checkpoint PATH``), regenerates its training data from the
metadata (kind, grids, ``n_per_grid``, seed), fits the density of its
:class:`pdegen.models.SpectralDenoiser` by :func:`pdegen.models.fit_spectral_density` (the
residual network is kept as trained), measures the excess denoising loss over the exact denoiser
before and after on fresh data at every trained grid and at 128, and exports the refitted model
to ``OUT/model`` (copy it to ``pdegen/data/<name>/`` to ship it). Writes nowhere but ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.random as jr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import prior_data  # noqa: E402

from pdegen import inverse, models  # noqa: E402


def excess(model, kind: str, pde: str, grid: int, seed: int) -> dict:
    """Loss, floor and excess on 256 fresh fields (as ``train_prior.py`` measures them)."""
    m = model.at_shape((model.data_shape[0], grid, grid))
    fresh = prior_data(kind, 256, grid, seed)
    ref = inverse.exact_denoiser(m, pde=pde, grid=grid)
    res = models.denoising_loss(m, fresh, key=jr.key(12345), reference=ref)
    return {k: round(v, 5) for k, v in res.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prior", help="a shipped prior's name")
    src.add_argument("--checkpoint", help="a checkpoint folder")
    p.add_argument("--out", required=True, help="output folder (the model goes to OUT/model)")
    p.add_argument("--steps", type=int, default=3000, help="Adam steps of the fit")
    p.add_argument("--eval-grids", default="128", help="grids beyond the trained ones to measure")
    args = p.parse_args(argv)
    ckpt = (
        models.load_pretrained(args.prior)
        if args.prior
        else models.load_checkpoint(args.checkpoint)
    )
    meta = dict(ckpt.metadata)
    if not ckpt.model.resolution_free:
        p.error("the prior's network is not a SpectralDenoiser")
    data = meta["data"]
    kind, pde = data["kind"], meta.get("task", "poisson")
    grids = [int(g) for g in meta.get("grids_trained", [meta["grid"]])]
    extra = [int(g) for g in args.eval_grids.split(",") if g]
    # the exact joint law is dense beyond 64: only the source prior is measured there
    evals = sorted({*grids, *(g for g in extra if kind == "a" or g <= 64)})
    t0 = time.perf_counter()
    sets = [prior_data(kind, int(data["n_per_grid"]), g, int(data["seed"])) for g in grids]
    print(f"training data {[s.shape for s in sets]} ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    model, divergence = models.fit_spectral_density(ckpt.model, sets, steps=args.steps)
    seconds = time.perf_counter() - t0
    print(f"fitted in {seconds:.0f} s: Whittle divergence {divergence:.2e}")
    before, after = {}, {}
    for g in evals:
        before[str(g)], after[str(g)] = (
            excess(m, kind, pde, g, 10_000 + g) for m in (ckpt.model, model)
        )
        old, new = before[str(g)]["excess"], after[str(g)]["excess"]
        print(f"  grid {g}: excess loss {100 * old:.2f}% -> {100 * new:.2f}%")
    meta["density_fit"] = {
        "method": "pdegen.models.fit_spectral_density (Whittle likelihood), residual kept",
        "divergence": round(divergence, 6),
        "trained_modes": model.network.trained_modes,
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "script": "benchmarks/fit_density.py",
    }
    meta["excess_loss_before_density_fit"] = before
    meta["excess_loss"] = after
    out = models.export_model(Path(args.out) / "model", model, meta, step=int(ckpt.step))
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
