"""Time-to-tolerance runs that outlive a working session: checkpoints of a sampler's chains.

A sampler whose budget is hours (the lower bound on a slow sampler's time to tolerance) runs in
pieces. Its chains' state, the running moments, the sampling seconds so far and a bounded trace of
about 256 evenly spaced coordinates (for ESS and split R-hat) go to a small ``.npz`` under
``benchmarks/results/partial/`` (committed, so the next session continues the same chains with
the same keys). Compilation and re-setup on resume are not counted; warm-up runs once.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from pdegen._io import atomic_path

PARTIAL = Path(__file__).resolve().parent / "results" / "partial"
TRACE_CAP = 400
"""Kept trace states per chain: when full, every other one is dropped and the stride doubles."""


class BoundedTrace:
    """The trace of the traced coordinates, ``(chains, kept, coords)``, of at most
    :data:`TRACE_CAP` states per chain: every ``stride``-th state of the run."""

    def __init__(self, chains: int, coords: np.ndarray, *, values=None, stride=1, seen=0):
        self.coords = np.asarray(coords)
        self.values = (
            np.zeros((chains, 0, self.coords.size), np.float32) if values is None else values
        )
        self.stride, self.seen = int(stride), int(seen)

    def add(self, block) -> None:
        """Append a block of states ``(chains, k, size)`` (every ``stride``-th of the run)."""
        block = np.asarray(block)
        k = block.shape[1]
        idx = np.arange(k)[(self.seen + np.arange(k)) % self.stride == 0]
        self.values = np.concatenate(
            [self.values, block[:, idx][:, :, self.coords].astype(np.float32)], axis=1
        )
        self.seen += k
        while self.values.shape[1] > TRACE_CAP:
            self.values, self.stride = self.values[:, ::2], 2 * self.stride

    def state(self) -> dict:
        return dict(
            trace=self.values,
            trace_coords=self.coords,
            trace_stride=np.asarray(self.stride),
            trace_seen=np.asarray(self.seen),
        )

    @classmethod
    def from_state(cls, st: dict) -> BoundedTrace:
        return cls(
            st["trace"].shape[0],
            st["trace_coords"],
            values=st["trace"],
            stride=int(st["trace_stride"]),
            seen=int(st["trace_seen"]),
        )


def checkpoint_path(results_name: str, grid: int, sampler: str) -> Path:
    return PARTIAL / f"{results_name}_{grid}_{sampler}.npz"


def save(path: Path, *, tag: str, state, moments, trace: BoundedTrace, **scalars) -> None:
    """Write the run's state: the kernel state's leaves, the moments ``(n, mean, m2)``, the trace
    and named scalars or arrays (steps, seconds, budget, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = {f"state_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    mom = {f"moment_{i}": np.asarray(x) for i, x in enumerate(moments)}
    other = {k: np.asarray(v) for k, v in scalars.items()}
    with atomic_path(path) as tmp:
        np.savez(tmp, tag=np.asarray(tag), **leaves, **mom, **trace.state(), **other)


def load(path: Path, *, tag: str, like_state) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this run (``tag``: sampler and reference), with
    ``state`` rebuilt in the structure of ``like_state``; ``None`` if there is none. A checkpoint
    of another run is an error, not silently overwritten."""
    if not path.exists():
        return None
    st = dict(np.load(path))
    if str(st["tag"]) != tag:
        raise ValueError(
            f"{path} belongs to another run ({st['tag']}, not {tag}); delete it to start anew"
        )
    treedef = jax.tree.structure(like_state)
    leaves = [st.pop(f"state_{i}") for i in range(treedef.num_leaves)]
    like = jax.tree.leaves(like_state)
    st["state"] = jax.tree.unflatten(
        treedef, [jax.numpy.asarray(x, dtype=y.dtype) for x, y in zip(leaves, like)]
    )
    st["moments"] = tuple(jax.numpy.asarray(st.pop(f"moment_{i}")) for i in range(3))
    st["trace"] = BoundedTrace.from_state(st)
    return st
