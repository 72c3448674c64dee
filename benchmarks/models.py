"""Benchmark of pdegen.models: sample quality on known targets and CPU throughput.

    python benchmarks/models.py [--quick]

Prints a table and writes ``benchmarks/results/models.json`` (atomically). Each metric is a
function in ``METRICS`` returning ``{name: value}``; metrics that need FEM data
(``grf_spectrum_rel_err``, ``joint_pde_residual``) can be added there later.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

from pdegen import models  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "models.json"
MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


def _mlp_model(data, key, sde, parameterisation, width):
    net = models.ScoreMLP(data.shape[1], width=width, depth=3, embed_dim=16, key=key)
    return models.DiffusionModel(net, sde, models.Normalisation.fit(data), (data.shape[1],),
                                 parameterisation=parameterisation)


def _gmm(n, rng):
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return centres[labels] + 0.3 * rng.standard_normal((n, 2))


def _mmd(x, y, bandwidth=0.5):
    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * bandwidth**2))

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def gmm_metrics(quick: bool) -> dict:
    """MMD (RBF, bandwidth 0.5) between 1000 samples and 1000 fresh draws of a 3-mode mixture."""
    rng = np.random.default_rng(0)
    data = _gmm(8192, rng)
    model = _mlp_model(data, jr.key(0), models.EDMSDE(), "denoiser", 128)
    config = models.TrainConfig(steps=2000 if quick else 8000, batch_size=256, learning_rate=2e-3,
                                warmup_steps=100, ema_decay=0.995)
    trained = models.train(model, data, key=jr.key(1), config=config, progress=False).state.ema_model
    samples = np.asarray(models.sample_model(trained, 1000, key=jr.key(2), method="edm_heun", num_steps=40))
    return {"gmm_mmd": _mmd(samples, _gmm(1000, rng)), "gmm_mmd_data_vs_data": _mmd(_gmm(1000, rng), _gmm(1000, rng))}


def gaussian_metrics(quick: bool) -> dict:
    """Relative L2 error of sigma * score against the exact score, data N(mu, Sigma), t in [0.05, 1]."""
    data = np.random.default_rng(1).multivariate_normal(MU, COV, size=4096)
    model = _mlp_model(data, jr.key(3), models.VPSDE(), "epsilon", 64)
    config = models.TrainConfig(steps=1500 if quick else 6000, batch_size=256, learning_rate=3e-3,
                                warmup_steps=50, ema_decay=0.99)
    trained = models.train(model, data, key=jr.key(4), config=config, progress=False).state.ema_model
    std = np.asarray(trained.normalisation.std)
    cov_n = jnp.asarray(COV / np.outer(std, std))
    mean_n = jnp.asarray((MU - np.asarray(trained.normalisation.mean)) / std)
    num = den = 0.0
    for t, z in zip(jnp.linspace(0.05, 1.0, 20), jr.normal(jr.key(5), (20, 256, 2))):
        a, s = trained.sde.alpha(t), trained.sde.sigma(t)
        c = a**2 * cov_n + s**2 * jnp.eye(2)
        x = a * mean_n[None, :] + z @ jnp.linalg.cholesky(c).T
        exact = -jnp.linalg.solve(c, (x - a * mean_n[None, :]).T).T
        learned = jax.vmap(lambda y: trained.score(y, t))(x)
        num += float(jnp.sum((s * (learned - exact)) ** 2))
        den += float(jnp.sum((s * exact) ** 2))
    return {"gaussian_score_rel_err": float(np.sqrt(num / den))}


def throughput_metrics(quick: bool) -> dict:
    """Tiny U-Net on 64x64 single-channel fields: training samples/s and sampling s/field."""
    size, batch = 64, 8
    net = models.UNet(1, base_channels=8, channel_mults=(1, 2, 2), key=jr.key(6))
    data = np.random.default_rng(2).normal(size=(64, 1, size, size)).astype(np.float32)
    model = models.DiffusionModel(net, models.VPSDE(), models.Normalisation.fit(data), (1, size, size))
    steps = 10 if quick else 50
    config = models.TrainConfig(steps=steps + 2, batch_size=batch, warmup_steps=1)
    # Same config (hence the same cached optimiser and compiled step) for warm-up and timing.
    models.train(model, data, key=jr.key(7), config=config, progress=False, stop_after=1)
    t0 = time.perf_counter()
    models.train(model, data, key=jr.key(7), config=config, progress=False)
    train_time = time.perf_counter() - t0
    n, num_steps = 4, 18
    sample = lambda: jax.block_until_ready(  # noqa: E731
        models.sample_model(model, n, key=jr.key(8), method="edm_heun", num_steps=num_steps))
    sample()  # compile
    t0 = time.perf_counter()
    sample()
    sample_time = time.perf_counter() - t0
    return {"train_samples_per_second": (steps + 2) * batch / train_time,
            "sample_seconds_per_field": sample_time / n,
            "unet_parameters": models.count_parameters(net),
            "sample_method": f"edm_heun, {num_steps} steps ({2 * num_steps} network evaluations)"}


METRICS = {"gmm": gmm_metrics, "gaussian": gaussian_metrics, "throughput": throughput_metrics}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short version (~1-2 minutes)")
    args = parser.parse_args(argv)
    results = {"quick": args.quick, "platform": platform.platform(), "devices": str(jax.devices()),
               "jax": jax.__version__}
    timings = {}
    for name, fn in METRICS.items():
        t0 = time.perf_counter()
        results.update(fn(args.quick))
        timings[name] = round(time.perf_counter() - t0, 1)
    results["wall_seconds"] = timings
    width = max(len(k) for k in results)
    print(f"{'metric'.ljust(width)}  value")
    for k, v in results.items():
        print(f"{k.ljust(width)}  {v:.4g}" if isinstance(v, float) else f"{k.ljust(width)}  {v}")
    models.write_json_atomic(RESULTS, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
