"""Shared helpers for the benchmark scripts: timing, tables, machine info, JSON output."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pdegen._io import write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info(load_start: Sequence[float] | None = None) -> dict[str, Any]:
    """The machine a result was measured on; with ``load_start`` (``os.getloadavg()`` when the run
    began) also the load averages then and now, since other jobs may share the cores."""
    import jax

    info = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if load_start is not None:
        info["loadavg_start"] = list(load_start)
        info["loadavg_end"] = list(os.getloadavg())
        info["note"] = "other jobs may share the CPU cores (see loadavg); seconds are wall times"
    return info


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of the finite values that
    are not ``None``; ``(None, None)`` when there are none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else 0.0)


def add_mean_std(row: dict, records: Sequence[dict]) -> dict:
    """``row[k]``, ``row[k + "_std"]``: :func:`mean_std` over ``records`` of each key of the first."""
    for k in records[0]:
        row[k], row[k + "_std"] = mean_std([r[k] for r in records])
    return row


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` (call ``block_until_ready`` inside ``fn``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: Sequence[tuple[str, Any]], title: str = "") -> None:
    if title:
        print(f"\n{title}\n" + "-" * len(title))
    width = max(len(str(k)) for k, _ in rows)
    for key, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{str(key):<{width}}  {text}")


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Atomically write ``data`` to ``benchmarks/results/<name>.json``."""
    path = RESULTS_DIR / f"{name}.json"
    write_json_atomic(path, data, sort_keys=True)
    return path


def prior_data(kind: str, n: int, grid: int, seed: int, *, progress: bool = False):
    """``n`` examples ``(n, C, grid, grid)`` (float32) of a shipped prior's data: ``kind="a"`` the
    DiffusionPDE GRF source, ``"poisson"`` / ``"helmholtz"`` pairs ``(a, u)``; example ``i`` from
    ``split(key(seed), n)[i]``."""
    import jax
    import jax.random as jr
    import numpy as np

    from pdegen import fem

    key = jr.key(seed)
    if kind == "a":
        grf = jax.jit(jax.vmap(lambda k: fem.gaussian_random_field((grid, grid), key=k)))
        return np.asarray(grf(jr.split(key, n)), np.float32)[:, None]
    fields, _ = fem.generate_dataset(kind, n, key=key, grid=grid, progress=progress)
    return fields


BANDS = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 128))


def band_power_per_sample(samples: np.ndarray, mode_var: np.ndarray) -> dict:
    """Per octave band of the radial wavenumber ``|k|`` (the constant mode left out): each sample's
    power in its orthonormal-DCT coefficients over the exact power, an array ``(num_samples,)``."""
    import scipy.fft

    power = scipy.fft.dctn(samples, type=2, norm="ortho", axes=(-2, -1)) ** 2
    n = power.shape[-1]
    k1, k2 = np.meshgrid(np.arange(n), np.arange(n))
    radius = np.hypot(k1, k2)
    out = {}
    for lo, hi in BANDS:
        band = (radius >= lo) & (radius < hi)
        if band.any():
            out[f"{lo}-{hi}"] = power[:, band].sum(-1) / mode_var[band].sum()
    return out


def band_ratios(samples: np.ndarray, mode_var: np.ndarray) -> dict:
    """Power of the samples over the exact power per octave band (:func:`band_power_per_sample`,
    averaged over the samples)."""
    return {k: float(v.mean()) for k, v in band_power_per_sample(samples, mode_var).items()}
