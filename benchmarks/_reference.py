"""Long-run MCMC references for the sampler benchmarks (``statfem.py --nonlinear``,
``statfem_diffusivity.py``).

Many chains of a kernel that is exact in the limit run in segments; after each segment the chains'
state (positions, adapted step sizes), the running sums of a quantity of the states and a trace
of about 256 evenly spaced coordinates (for ESS and split R-hat) go to
``<name>.partial.npz`` (git-ignored), so an interrupted run resumes where it stopped and a finished
one can be extended: asking for more steps than are stored continues the same chains. The
summary (mean, variance, ESS, R-hat, cost) is stored in ``<name>.npz`` and reused.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pdegen import mcmc
from pdegen._io import atomic_path

TRACED = 256


def traced_coordinates(size: int) -> np.ndarray:
    """About :data:`TRACED` evenly spaced coordinates: their chains give ESS and R-hat (all of
    them would not fit in memory on the larger grids)."""
    return np.arange(0, size, max(1, size // TRACED))


def _check_data(stored: dict, data, path: Path) -> None:
    if data is None:
        return
    if "data" not in stored:
        print(f"{path.name}: made before references recorded their data; not checked", flush=True)
        return
    same = stored["data"].shape == np.shape(data) and np.allclose(
        stored["data"], np.asarray(data), rtol=1e-8, atol=0.0
    )
    if not same:
        raise ValueError(
            f"{path.name} was made for other data than this run's case (the case drawn from the "
            "same seed differs on this machine); rerun the reference here (delete the file)"
        )


def _identity(states, keys):
    return states


def long_run_reference(
    build,
    num_steps: int,
    *,
    key,
    path: Path,
    quantity=None,
    thin: int = 1,
    warmup: int = 200,
    segment: int = 1000,
    store: bool = True,
    chunk: int = 50,
    data=None,
    rebuild: bool = False,
) -> tuple[dict, Path]:
    """The reference of ``path``: stored, resumed, extended or run.

    ``build()`` returns ``(kernel, x0)`` (called only when chains must run; its time counts in the
    reference's cost): ``kernel`` runs ``x0.shape[0]`` chains from ``x0`` for ``num_steps`` steps
    after ``warmup``
    steps of step-size adaptation (first segment only; later segments continue at the adapted
    step); every ``thin``-th state enters the moments of ``quantity(states, keys)`` (states
    ``(C, n, d)``, one PRNG key per state, e.g. for an exact draw of a conditioned field; default:
    the states). ``store=False``: a short run, neither read nor written. ``data``: the data the
    posterior is conditioned on, stored with the reference; a stored reference made for other
    data is an error, not a silent comparison with another posterior (a case drawn from the same
    seed can differ between machines, e.g. with the number of usable cores). A stored reference
    shorter than ``num_steps`` without the chain state to extend it is used as it is, unless
    ``rebuild``: then a new run to ``num_steps`` starts (resumable), and replaces it when done."""
    if num_steps % thin or segment % thin:
        raise ValueError(
            f"num_steps ({num_steps}) and segment ({segment}) must be multiples of thin ({thin})"
        )
    path = Path(path)
    partial = path.with_name(path.stem + ".partial.npz")
    if store and path.exists():
        ref = dict(np.load(path))
        _check_data(ref, data, path)
        if int(ref["num_steps"]) >= num_steps:
            return ref, path
        if not partial.exists() and not rebuild:
            print(
                f"{path.name}: {int(ref['num_steps'])} steps stored and no chain state to "
                f"extend them; used as it is (rebuild to run {num_steps} anew)",
                flush=True,
            )
            return ref, path
    quantity = _identity if quantity is None else quantity
    t_build = time.perf_counter()
    kernel, x0 = build()
    setup_seconds = time.perf_counter() - t_build
    C = int(x0.shape[0])
    if store and partial.exists():
        st = dict(np.load(partial))
        _check_data(st, data, partial)
        st["seconds"] = np.asarray(float(st["seconds"]) + setup_seconds)
        print(f"{path.name}: continuing at step {int(st['done'])} of {num_steps}", flush=True)
    else:
        # the quantity's size from its shape alone (no solve, no draw)
        one = jax.eval_shape(quantity, jnp.asarray(x0)[:, None], jax.random.split(key, (C, 1)))
        size = int(one.shape[-1])
        traced = traced_coordinates(size)
        st = dict(
            done=np.asarray(0),
            x=np.asarray(x0),
            step_size=np.full(C, np.nan),
            traced=traced,
            s1=np.zeros((C, size)),
            s2=np.zeros((C, size)),
            count=np.asarray(0),
            trace=np.zeros((C, 0, traced.size), np.float32),
            acceptance=np.zeros(C),
            seconds=np.asarray(float(setup_seconds)),
        )
        if data is not None:
            st["data"] = np.asarray(data)
    traced = st["traced"]
    while int(st["done"]) < num_steps:
        t0 = time.perf_counter()
        i = int(st["done"])
        n = min(segment, num_steps - i)
        first = i == 0
        res = mcmc.run_chains(
            kernel,
            jnp.asarray(st["x"]),
            n,
            warmup if first else 0,
            key=jax.random.fold_in(key, i),
            thin=thin,
            progress=True,
            step_size=None if first else jnp.asarray(st["step_size"]),
        )
        V = res.samples
        for j in range(0, V.shape[1], chunk):
            block = V[:, j : j + chunk]
            keys = jax.random.split(jax.random.fold_in(key, 10**9 + i + j), block.shape[:2])
            s = np.asarray(quantity(block, keys))
            st["s1"] = st["s1"] + s.sum(axis=1)
            st["s2"] = st["s2"] + (s**2).sum(axis=1)
            st["trace"] = np.concatenate([st["trace"], s[:, :, traced].astype(np.float32)], axis=1)
        st["count"] = np.asarray(int(st["count"]) + V.shape[1])
        st["acceptance"] = st["acceptance"] + n * np.asarray(res.acceptance_rate)
        st["x"] = np.asarray(res.state.position)
        st["step_size"] = np.asarray(res.step_size)
        st["done"] = np.asarray(i + n)
        st["seconds"] = np.asarray(float(st["seconds"]) + time.perf_counter() - t0)
        if store:
            with atomic_path(partial) as tmp:
                np.savez(tmp, **st)
    n_all = C * int(st["count"])
    mean = st["s1"].sum(axis=0) / n_all
    trace = jnp.asarray(st["trace"], jnp.float64)
    ref = {
        "mean": mean,
        "variance": st["s2"].sum(axis=0) / n_all - mean**2,
        "ess": np.asarray(mcmc.chain_ess(trace)),
        "rhat": np.asarray(mcmc.rhat(trace)),
        "traced": traced,
        "num_steps": np.asarray(int(st["done"])),
        "chains": np.asarray(C),
        "thin": np.asarray(thin),
        "seconds": np.asarray(float(st["seconds"])),
        "acceptance": st["acceptance"] / max(int(st["done"]), 1),
        "sampler": np.asarray(kernel.name),
    }
    if "data" in st:
        ref["data"] = st["data"]
    if store:
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, **ref)
    return ref, path


def reference_id(ref: dict) -> str:
    """A short fingerprint of a reference's moments. Rows measured against a reference carry it,
    so that rows measured against another one (another realisation of the case, a longer run)
    are not kept in the same table."""
    h = hashlib.sha1()
    for name in ("mean", "variance"):
        h.update(np.ascontiguousarray(np.asarray(ref[name], dtype=np.float64)).tobytes())
    return h.hexdigest()[:12]
