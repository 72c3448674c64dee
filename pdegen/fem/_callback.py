"""Host (NumPy / SciPy) functions called from traced JAX code: sparse direct solves, log-
determinants, sparse Cholesky preconditioners."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental.buffer_callback import buffer_callback


def host_call(fn: Callable, result, *args, vmap_method: str):
    """``fn(*numpy_arrays) -> numpy array`` of shape and dtype ``result``, inside ``jit`` / ``vmap``.

    On the CPU backend through ``buffer_callback``: ``fn`` reads XLA's own buffers. A
    ``pure_callback`` first copies its arguments into new JAX arrays, a transfer that XLA's CPU
    thread pool runs; when the process may use one core (``taskset -c 0``, a one-core batch job)
    the pool's only thread is the one waiting in the callback, and the program hangs (seen with
    the 128x128 nonlinear statFEM Newton solve). Elsewhere (GPU) through ``pure_callback``, which
    brings the arguments to the host. ``vmap_method`` as for ``jax.pure_callback``."""
    if jax.default_backend() == "cpu":

        def fill(ctx, out, *buffers):
            np.asarray(out)[...] = fn(*(np.asarray(b) for b in buffers))

        return buffer_callback(fill, result, vmap_method=vmap_method)(*args)
    return jax.pure_callback(fn, result, *args, vmap_method=vmap_method)
