"""Benchmark of pdegen.models: sample quality on known targets and CPU throughput.

    python benchmarks/models.py [--quick]

Prints a table and writes ``benchmarks/results/models.json`` (atomically). ``denoiser`` compares
the shipped prior's denoiser with the exact Gaussian one at six noise levels (the floor). Each metric is a
function in ``METRICS`` returning ``{name: value}``. The PDE metrics (``grf_spectrum_rel_err``,
``joint_pde_residual``) sample the shipped prior ``poisson-joint-32`` (trained by
``benchmarks/train_prior.py`` on DiffusionPDE Poisson pairs: channel 0 the GRF source, channel 1
the FEM solution) and compare with fresh data from :func:`pdegen.fem.generate_dataset`; they
also write ``benchmarks/results/models_prior_samples.png`` and ``models_prior_spectrum.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import sys  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import band_ratios, prior_data  # noqa: E402

from pdegen import fem, models  # noqa: E402
from pdegen._io import atomic_write, write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "models.json"
PRIOR = "poisson-joint-32"
MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


def _mlp_model(data, key, sde, parameterisation, width):
    net = models.ScoreMLP(data.shape[1], width=width, depth=3, embed_dim=16, key=key)
    return models.DiffusionModel(
        net,
        sde,
        models.Normalisation.fit(data),
        (data.shape[1],),
        parameterisation=parameterisation,
    )


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
    config = models.TrainConfig(
        steps=2000 if quick else 8000,
        batch_size=256,
        learning_rate=2e-3,
        warmup_steps=100,
        ema_decay=0.995,
    )
    trained = models.train(
        model, data, key=jr.key(1), config=config, progress=False
    ).state.ema_model
    samples = np.asarray(
        models.sample_model(trained, 1000, key=jr.key(2), method="edm_heun", num_steps=40)
    )
    return {
        "gmm_mmd": _mmd(samples, _gmm(1000, rng)),
        "gmm_mmd_data_vs_data": _mmd(_gmm(1000, rng), _gmm(1000, rng)),
    }


def gaussian_metrics(quick: bool) -> dict:
    """Relative L2 error of sigma * score against the exact score, data N(mu, Sigma), t in [0.05, 1]."""
    data = np.random.default_rng(1).multivariate_normal(MU, COV, size=4096)
    model = _mlp_model(data, jr.key(3), models.VPSDE(), "epsilon", 64)
    config = models.TrainConfig(
        steps=1500 if quick else 6000,
        batch_size=256,
        learning_rate=3e-3,
        warmup_steps=50,
        ema_decay=0.99,
    )
    trained = models.train(
        model, data, key=jr.key(4), config=config, progress=False
    ).state.ema_model
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
    model = models.DiffusionModel(
        net, models.VPSDE(), models.Normalisation.fit(data), (1, size, size)
    )
    steps = 10 if quick else 50
    config = models.TrainConfig(steps=steps + 2, batch_size=batch, warmup_steps=1)
    # Same config (hence the same cached optimiser and compiled step) for warm-up and timing.
    models.train(model, data, key=jr.key(7), config=config, progress=False, stop_after=1)
    t0 = time.perf_counter()
    models.train(model, data, key=jr.key(7), config=config, progress=False)
    train_time = time.perf_counter() - t0
    n, num_steps = 4, 18
    sample = lambda: jax.block_until_ready(  # noqa: E731
        models.sample_model(model, n, key=jr.key(8), method="edm_heun", num_steps=num_steps)
    )
    sample()  # compile
    t0 = time.perf_counter()
    sample()
    sample_time = time.perf_counter() - t0
    return {
        "train_samples_per_second": (steps + 2) * batch / train_time,
        "sample_seconds_per_field": sample_time / n,
        "unet_parameters": models.count_parameters(net),
        "sample_method": f"edm_heun, {num_steps} steps ({2 * num_steps} network evaluations)",
    }


def radial_power_spectrum(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power of the orthonormal 2-D DCT-II coefficients of ``fields`` ``(N, n, n)``.

    Returns ``(k, power)`` for integer radii ``k = 1 .. n - 1`` (``|(k1, k2)|`` rounded; the
    constant mode is left out): the mean of the squared coefficients over samples and modes in
    each shell. For the DCT generator of :func:`pdegen.fem.gaussian_random_field` the exact value
    is the shell mean of ``grf_mode_std(...) ** 2``.
    """
    import scipy.fft

    coeffs = scipy.fft.dctn(np.asarray(fields, np.float64), type=2, norm="ortho", axes=(-2, -1))
    return shell_average(np.mean(coeffs**2, axis=0))


def shell_average(per_mode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = per_mode.shape[-1]
    k1, k2 = np.meshgrid(np.arange(n), np.arange(n))
    radius = np.rint(np.hypot(k1, k2)).astype(int)
    ks = np.arange(1, n)
    return ks, np.array([per_mode[radius == k].mean() for k in ks])


def _prior_samples(num: int):
    ckpt = models.load_pretrained(PRIOR)
    options = dict(
        ckpt.metadata.get("recommended_sampler", {"method": "edm_heun", "num_steps": 18})
    )
    method = options.pop("method")
    t0 = time.perf_counter()
    out = models.sample_model(ckpt.model, num, key=jr.key(11), method=method, **options)
    out = np.asarray(jax.block_until_ready(out), np.float64)
    return ckpt, out, time.perf_counter() - t0, f"{method} {options}"


def _relative_residuals(task: fem.PDETask, pairs: np.ndarray) -> np.ndarray:
    n = pairs.shape[0]
    a = jnp.asarray(pairs[:, 0].reshape(n, -1), jnp.float64)
    u = jnp.asarray(pairs[:, 1].reshape(n, -1), jnp.float64)
    return np.asarray(jax.jit(jax.vmap(task.residual))(a, u))


def _figures(samples: np.ndarray, data: np.ndarray, ks, p_exact, p_gen, p_data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 6, figsize=(13, 4.6))
    for j in range(3):
        for row, (arr, label) in enumerate(((data, "data"), (samples, "prior"))):
            for c, name in enumerate("au"):
                ax = axes[row, 2 * j + c]
                ax.imshow(arr[j, c], origin="lower", cmap="RdBu_r" if c == 0 else "viridis")
                ax.set_title(f"{label} {j}: {name}", fontsize=9)
                ax.axis("off")
    fig.tight_layout()
    with atomic_write(RESULTS.parent / "models_prior_samples.png") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(ks, p_exact, "k-", label="exact GRF spectrum")
    ax.loglog(ks, p_data, "o", ms=3, label=f"data ({data.shape[0]} fields)")
    ax.loglog(ks, p_gen, "s", ms=3, label=f"{PRIOR} samples ({samples.shape[0]})")
    ax.set(
        xlabel="radial DCT wavenumber |k|",
        ylabel="mean power",
        title="source field a: power spectrum",
    )
    ax.legend()
    fig.tight_layout()
    with atomic_write(RESULTS.parent / "models_prior_spectrum.png") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def prior_metrics(quick: bool) -> dict:
    """GRF spectrum and joint PDE residual of samples of the shipped Poisson prior vs fresh data.

    ``grf_spectrum_rel_err``: mean over radial shells ``|k| = 1 .. n-1`` of
    ``|P_samples(k) - P_exact(k)| / P_exact(k)`` for channel 0 (the GRF source); the same figure
    for data of the same size is the Monte Carlo floor. ``joint_pde_residual``: mean relative FEM
    residual ``||A u - b(a)|| / ||b(a)||`` of generated pairs; ``..._data`` the same for data
    (float32 round-off only), ``..._shuffled_data`` for data pairs with ``u`` taken from another
    example (what an unrelated field scores). ``joint_u_rel_l2``: ``||u - solve(a)|| / ||solve(a)||``
    for generated pairs.
    """
    num = 64 if quick else 256
    ckpt, samples, seconds, method = _prior_samples(num)
    grid = int(ckpt.metadata["grid"])
    data, _ = fem.generate_dataset("poisson", num, key=jr.key(12345), grid=grid, progress=False)
    data = np.asarray(data, np.float64)
    ks, p_exact = shell_average(fem.grf_mode_std((grid, grid)) ** 2)
    _, p_gen = radial_power_spectrum(samples[:, 0])
    _, p_data = radial_power_spectrum(data[:, 0])

    def spectrum_err(p):
        return float(np.mean(np.abs(p - p_exact) / p_exact))

    low = ks <= grid // 4
    task = fem.PDETask("poisson", grid)
    res_gen = _relative_residuals(task, samples)
    res_data = _relative_residuals(task, data)
    res_shuffled = _relative_residuals(
        task, np.stack([data[:, 0], np.roll(data[:, 1], 1, axis=0)], axis=1)
    )
    solve = jax.jit(jax.vmap(lambda a: task.problem.solve(**task.theta(a))))
    u_exact = np.asarray(solve(jnp.asarray(samples[:, 0].reshape(num, -1))))
    u_gen = samples[:, 1].reshape(num, -1)
    u_err = np.linalg.norm(u_gen - u_exact, axis=1) / np.linalg.norm(u_exact, axis=1)
    _figures(samples, data, ks, p_exact, p_gen, p_data)
    return {
        "prior": PRIOR,
        "prior_sampler": method,
        "prior_num_samples": num,
        "prior_sample_seconds_incl_compile": seconds,
        "grf_spectrum_rel_err": spectrum_err(p_gen),
        "grf_spectrum_rel_err_data": spectrum_err(p_data),
        "grf_spectrum_rel_err_low_k": float(np.mean(np.abs(p_gen - p_exact)[low] / p_exact[low])),
        "grf_std_ratio": float(samples[:, 0].std() / data[:, 0].std()),
        "joint_pde_residual": float(res_gen.mean()),
        "joint_pde_residual_median": float(np.median(res_gen)),
        "joint_pde_residual_data": float(res_data.mean()),
        "joint_pde_residual_ratio": float(res_gen.mean() / res_data.mean()),
        "joint_pde_residual_shuffled_data": float(res_shuffled.mean()),
        "joint_u_rel_l2": float(u_err.mean()),
    }


DENOISER_LEVELS = (0.05, 0.1, 0.3, 1.0, 3.0, 10.0)  # sigma / alpha, in units of the normalised data


def _time_of_level(sde, level: float) -> float:
    """The time ``t`` with ``sigma(t) / alpha(t) = level`` (bisection; monotone on every SDE here)."""
    lo, hi = float(sde.t_min), float(sde.t_max)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if float(sde.scaled_sigma(jnp.asarray(mid))) < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _mse_ratios(model, data, ref, key) -> dict:
    """Per channel and noise level ``sigma/alpha`` in ``DENOISER_LEVELS``: the model's denoiser MSE
    over the exact one's on the same noisy data."""
    x0 = np.asarray(jax.vmap(model.normalisation.normalise)(jnp.asarray(data)), np.float64)
    names = ("a", "u")[: x0.shape[1]]
    den = eqx.filter_jit(lambda m, x, t: jax.vmap(m.denoiser, in_axes=(0, None))(x, t))
    exact = eqx.filter_jit(lambda r, x, s: jax.vmap(r, in_axes=(0, None))(x, s))
    out = {}
    for i, level in enumerate(DENOISER_LEVELS):
        t = _time_of_level(model.sde, level)
        alpha = float(model.sde.alpha(jnp.asarray(t)))
        sig = float(model.sde.sigma(jnp.asarray(t)))
        z = np.asarray(jr.normal(jr.fold_in(key, i), x0.shape), np.float64)
        xt = alpha * x0 + sig * z
        d_m = np.asarray(
            den(model, jnp.asarray(xt, jnp.float32), jnp.asarray(t, jnp.float32)), np.float64
        )
        d_e = np.asarray(exact(ref, jnp.asarray(xt / alpha), sig / alpha))
        for c, name in enumerate(names):
            ratio = np.mean((d_m[:, c] - x0[:, c]) ** 2) / np.mean((d_e[:, c] - x0[:, c]) ** 2)
            out[f"{name}_{level:g}"] = float(ratio)
    return out


def shipped_prior_metrics(name: str, quick: bool) -> dict:
    """Every measure of one shipped prior against the truth, per grid it serves."""
    from pdegen import inverse

    ckpt = models.load_pretrained(name)
    meta = ckpt.metadata
    pde = meta.get("task", "poisson")
    kind = "a" if tuple(meta.get("channels", ())) == ("a",) else pde
    grids = [int(meta["grid"])]
    if ckpt.model.resolution_free:
        grids = sorted({*meta.get("grids_trained", grids), 128})
    num = 64 if quick else 256
    sampler = dict(meta.get("recommended_sampler", {"method": "edm_heun", "num_steps": 18}))
    method = sampler.pop("method")
    out: dict = {
        "kind": kind,
        "parameters": models.count_parameters(ckpt.model.network),
        "quick": quick,
        "sampler": meta.get("recommended_sampler"),
    }
    for grid in grids:
        model = ckpt.model.at_shape((ckpt.model.data_shape[0], grid, grid))
        data = np.asarray(prior_data(kind, num, grid, 777 + grid), np.float64)
        row: dict = {}
        if kind == "a" or grid <= 64:
            ref = inverse.exact_denoiser(model, pde=pde, grid=grid)
            row["excess_loss"] = models.denoising_loss(
                model, data, key=jr.key(5), reference=ref, num_draws=512 if quick else 2048
            )
            row["mse_ratio"] = _mse_ratios(model, data[: min(num, 128)], ref, jr.key(6))
            if kind != "a":  # the same denoiser projected onto the PDE (inverse.consistent_prior)
                cs = inverse.consistent_prior(inverse.prior_from_model(model), kind).score
                row["excess_loss_consistent"] = models.denoising_loss(
                    model,
                    data,
                    key=jr.key(5),
                    reference=ref,
                    num_draws=512 if quick else 2048,
                    project=cs.project,
                )
        t0 = time.perf_counter()
        samples = models.sample_model(  # batches of 32: a 256-sample batch at 128 holds ~12 GB
            model, num, key=jr.key(11), method=method, batch_size=32, **sampler
        )
        samples = np.asarray(jax.block_until_ready(samples), np.float64)
        row["sample_seconds_per_field"] = (time.perf_counter() - t0) / num
        mode_var = fem.grf_mode_std((grid, grid)) ** 2
        row["a_band_power_ratio"] = band_ratios(samples[:, 0], mode_var)
        row["a_pixel_variance_ratio"] = float(samples[:, 0].var() / (mode_var.sum() / grid**2))
        if kind != "a":
            task = fem.PDETask(kind, grid)
            solve = jax.jit(jax.vmap(lambda a: task.problem.solve(**task.theta(a))))
            u_exact = np.asarray(solve(jnp.asarray(samples[:, 0].reshape(num, -1))))
            u_gen = samples[:, 1].reshape(num, -1)
            err = np.linalg.norm(u_gen - u_exact, axis=1) / np.linalg.norm(u_exact, axis=1)
            row["u_vs_solve_a_rel_l2"] = float(err.mean())
            row["relative_residual"] = float(_relative_residuals(task, samples).mean())
        out[str(grid)] = row
        bands = ", ".join(f"{k}: {v:.2f}" for k, v in row["a_band_power_ratio"].items())
        excess = row.get("excess_loss", {}).get("excess", float("nan"))
        projected = row.get("excess_loss_consistent", {}).get("excess")
        also = "" if projected is None else f" ({100 * projected:.1f}% PDE-consistent)"
        print(
            f"  {name} at {grid}: excess {100 * excess:.1f}%{also}, band powers {bands}", flush=True
        )
    return out


def shipped_metrics(quick: bool, names=None, done=None) -> dict:
    """Per shipped prior and grid: excess denoising loss over the exact denoiser, denoiser MSE ratio
    per channel at six noise levels, sample band powers and pixel variance of ``a`` against the exact
    GRF, and for joint priors ``u`` against ``solve(a)`` and the relative FEM residual.

    ``names``: these priors only (default: all shipped); ``done(name, row)`` is called after each
    (the script writes the JSON there, so a long run keeps what it finished)."""
    out = {}
    for name in models.available_pretrained() if names is None else names:
        out[name] = shipped_prior_metrics(name, quick)
        if done is not None:
            done(name, out[name])
    return {"shipped": out}


# Flow vs diffusion prior over the 32x32 GRF source ``a``: the same U-Net, data and training budget
# (benchmarks/train_prior.py, 1000 steps of batch 32), one trained by conditional flow matching on
# the linear interpolant, one by EDM denoising score matching. Weights are not shipped; train with
#   python benchmarks/train_prior.py --data a --grid 32 --steps 1000 --flow linear --name flow-a-32 --out build/flow-a-32
#   python benchmarks/train_prior.py --data a --grid 32 --steps 1000 --p-mean 1.0 --p-std 2.5 \
#       --sigma-max 160 --name edm-a-32 --out build/edm-a-32
FLOW_PRIORS = {
    "flow": Path("build/flow-a-32/model"),
    "diffusion": Path("build/edm-a-32/model"),
}
FLOW_BUDGETS = (20, 40, 80)  # network evaluations per sample (Heun: 2 per step, + 1 final denoise)


def matched_noise_range(flow_model, diffusion_sde):
    """The flow model sampling over the diffusion's noise range ``sigma/alpha`` (EDM: ``[sigma_min,
    sigma_max]``; trained on a wider one): same ODE, no steps spent at noise levels above the one
    the diffusion starts from (``t_max = 0.999`` of the interpolant is a noise level of 999)."""
    lo, hi = float(diffusion_sde.sigma_min), float(diffusion_sde.sigma_max)
    sde = dataclasses.replace(flow_model.sde, t_min=lo / (1.0 + lo), t_max=hi / (1.0 + hi))
    return dataclasses.replace(flow_model, sde=sde)


def _sampler_at_budget(kind: str, evaluations: int) -> dict:
    """Heun steps for ``evaluations`` network evaluations: the flow ODE (uniform in t) for a flow,
    EDM-Heun (Karras noise levels) for a diffusion; both end with one Tweedie denoise."""
    steps = evaluations // 2
    if kind == "flow":
        return {"method": "flow_ode", "num_steps": steps, "denoise_final": True}
    return {"method": "edm_heun", "num_steps": steps, "denoise_final": True}


def _exact_score(sde, reference):
    """The exact score of the data (normalised units) under ``sde``, from the exact denoiser."""

    def score(x, t):
        a, s = sde.alpha(t).astype(x.dtype), sde.sigma(t).astype(x.dtype)
        return sde.score_from_denoiser(x, t, reference(x / a, s / a).astype(x.dtype))

    return score


def flow_prior_metrics(quick: bool) -> dict:
    """Flow-matching prior beside the diffusion prior (same network and training budget, 32x32 GRF
    ``a``): excess denoising loss over the exact denoiser (each on its own training noise
    distribution), the denoiser's MSE over the exact one at common noise levels ``sigma/alpha``, and
    per budget of network evaluations the samples' band powers against the exact GRF (max and mean
    ``|ratio - 1|`` over octave bands; ``data`` rows: as many fresh GRF draws, the Monte Carlo
    floor; ``exact_score``: the same process and sampler driven by the exact score of the data, the
    sampler's own error) and the sampling time per field (shared 2-core CPU)."""
    from pdegen import inverse

    missing = [str(p) for p in FLOW_PRIORS.values() if not (p / "metadata.json").is_file()]
    if missing:
        print(f"  flow vs diffusion prior: skipped, no trained model at {missing}")
        return {"flow_vs_diffusion": {"skipped": f"no trained model at {missing}"}}
    num = 64 if quick else 256
    grid = 32
    mode_var = fem.grf_mode_std((grid, grid)) ** 2
    data = np.asarray(prior_data("a", num, grid, 4242), np.float64)

    def band_errors(samples):
        ratios = band_ratios(samples[:, 0], mode_var)
        dev = np.abs(np.asarray(list(ratios.values())) - 1.0)
        return {"bands": ratios, "max_abs_dev": float(dev.max()), "mean_abs_dev": float(dev.mean())}

    out: dict = {"num_samples": num, "budgets": list(FLOW_BUDGETS), "data": band_errors(data)}
    diffusion_sde = models.load_checkpoint(FLOW_PRIORS["diffusion"]).model.sde
    for kind, path in FLOW_PRIORS.items():
        ckpt = models.load_checkpoint(path)
        model = ckpt.model
        if kind == "flow":
            model = matched_noise_range(model, diffusion_sde)
        ref = inverse.exact_denoiser(model, pde="poisson", grid=grid)
        row: dict = {
            "path": str(path),
            "process": model.sde.config(),
            "trained_process": ckpt.model.sde.config(),
            "parameterisation": model.parameterisation,
            "parameters": models.count_parameters(model.network),
            "train": ckpt.metadata.get("train"),
            "train_wall_seconds": ckpt.metadata.get("train_wall_seconds"),
            "excess_loss_own_noise": models.denoising_loss(
                model, data, key=jr.key(5), reference=ref, num_draws=512 if quick else 2048
            ),
            "mse_ratio": _mse_ratios(model, data[: min(num, 128)], ref, jr.key(6)),
        }
        exact_score = _exact_score(model.sde, ref)
        for budget in FLOW_BUDGETS:
            sampler = _sampler_at_budget(kind, budget)

            def run(n):
                return models.sample_model(model, n, key=jr.key(11), batch_size=64, **sampler)

            jax.block_until_ready(run(64))  # compiles the batch of 64 that the timed run reuses
            t0 = time.perf_counter()
            samples = np.asarray(jax.block_until_ready(run(num)), np.float64)
            seconds = (time.perf_counter() - t0) / num
            # The same process and sampler with the exact score of the data: the sampler's floor.
            options = {k: v for k, v in sampler.items() if k != "method"}
            exact = models.sample(
                exact_score, model.sde, model.data_shape, num, key=jr.key(11),
                method=sampler["method"], **options,
            )  # fmt: skip
            exact = np.asarray(jax.vmap(model.normalisation.unnormalise)(exact), np.float64)
            row[str(budget)] = {
                "sampler": sampler,
                "evaluations": 2 * sampler["num_steps"] + 1,
                "sample_seconds_per_field": seconds,
                **band_errors(samples),
                "exact_score": band_errors(exact),
            }
            r = row[str(budget)]
            print(
                f"  {kind} prior, {budget} evaluations: band |ratio - 1| max {r['max_abs_dev']:.3f}, "
                f"mean {r['mean_abs_dev']:.3f} (exact score: max {r['exact_score']['max_abs_dev']:.3f}, "
                f"mean {r['exact_score']['mean_abs_dev']:.3f}); {1e3 * seconds:.1f} ms per field",
                flush=True,
            )
        out[kind] = row
    return {"flow_vs_diffusion": out}


METRICS = {
    "gmm": gmm_metrics,
    "gaussian": gaussian_metrics,
    "throughput": throughput_metrics,
    "prior": prior_metrics,
    "shipped": shipped_metrics,
    "flow": flow_prior_metrics,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short version (a few minutes)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(METRICS),
        default=None,
        help="run these metric groups only and update them in the existing JSON",
    )
    parser.add_argument(
        "--priors",
        default=None,
        help="shipped priors for the 'shipped' group, comma-separated (default: all); each is "
        "written to the JSON as it finishes, beside the recorded rows of the others",
    )
    args = parser.parse_args(argv)
    results = {
        "quick": args.quick,
        "platform": platform.platform(),
        "devices": str(jax.devices()),
        "jax": jax.__version__,
    }
    timings = {}
    if args.only:
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        timings = old.pop("wall_seconds", {})
        results = {**old, **results, "modes": old.get("modes", {})}
    for name, fn in METRICS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        if name == "shipped":
            shipped = dict(results.get("shipped", {}))
            names = args.priors.split(",") if args.priors else None

            def done(prior, row, shipped=shipped):
                shipped[prior] = row
                write_json_atomic(RESULTS, {**results, "shipped": shipped})
                print(f"  wrote {prior} to {RESULTS}", flush=True)

            shipped_metrics(args.quick, names, done)
            results["shipped"] = shipped
        else:
            results.update(fn(args.quick))
        results.setdefault("modes", {})[name] = "quick" if args.quick else "full"
        timings[name] = round(time.perf_counter() - t0, 1)
    results["wall_seconds"] = timings
    width = max(len(k) for k in results)
    print(f"{'metric'.ljust(width)}  value")
    for k, v in results.items():
        print(f"{k.ljust(width)}  {v:.4g}" if isinstance(v, float) else f"{k.ljust(width)}  {v}")
    write_json_atomic(RESULTS, results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
