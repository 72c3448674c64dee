"""Strict test environment: float64, strict dtype promotion, no implicit rank promotion."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")


def _pin_xdist_worker() -> None:
    """Give each pytest-xdist worker its own share of the CPUs, before JAX starts.

    Unpinned, every worker's XLA thread pool is sized to all the cores, so two workers on two
    cores oversubscribe them; code with host callbacks (sparse direct solves) suffered most:
    tutorial 03 in fast mode took 148 s in the suite and 77 s pinned, the three-parameter IPLA test
    42 s and 21 s; the idle 2-core suite as a whole 1067 s and 986 s. Child processes (notebook
    kernels, command-line runs) inherit the worker's CPUs.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not (worker and hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if 1 < workers <= len(cpus):
        os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) :: workers])


_pin_xdist_worker()


def pytest_configure(config):
    """Size the BLAS thread pools of the xdist workers to their share of the CPUs.

    numpy's OpenBLAS is loaded (through a plugin) and starts its threads before this file can pin
    a worker; the threads then share the worker's one core and spin against each other. Measured
    here: the joint priors' excess-loss test took 27 s in a pinned worker and 7 s with one BLAS
    thread. The variables are set in the controlling process, before it starts the workers, so
    every library in every worker (and every notebook kernel it starts) reads them at load.
    """
    workers = getattr(config.option, "numprocesses", None)
    if os.environ.get("PYTEST_XDIST_WORKER") or not isinstance(workers, int) or workers < 2:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cpus or 1) // workers))
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


# Most of the suite's time is XLA compiling many small programs once each, so the tests ask XLA's
# CPU backend to compile faster. Each flag was measured on one core (8 inverse / spectral tests,
# tutorials 06 and 08 in fast mode):
# - LLVM optimisation level 1 instead of 2: the tutorials took 15-18% less time (08: 100 -> 85 s);
#   level 0 compiles faster still but runs the U-Net 3x slower.
# - The legacy elemental emitters instead of the MLIR fusion emitters, and one LLVM module per
#   program instead of 32 compiled in parallel (each worker has one core). Idle core, against
#   level 1 alone: 8 inverse / spectral tests 86 -> 53 s, tutorial 08 97 -> 63 s, the FEM
#   reliability and field-data modules 87 -> 69 s; the shipped-prior spectrum tests, which run
#   rather than compile, 84 -> 97 s. The one-module flag alone: 86 -> 80 s on the 8 tests.
# None of them changes floating-point semantics (no fast-math). XLA aborts the process on a flag it
# does not know, so the set is probed once in a child process (jaxlib versions differ) and handed
# through the environment to the xdist workers and notebook kernels, which inherit it.
_FAST_COMPILE = "--xla_backend_optimization_level=1"
_FASTER_COMPILE = " ".join(
    [
        _FAST_COMPILE,
        "--xla_cpu_use_fusion_emitters=false",
        "--xla_cpu_parallel_codegen_split_count=1",
    ]
)


def _with_xla_flags(flags: str) -> str:
    """``XLA_FLAGS`` of this process with ``flags`` appended."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), flags]).strip()


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib starts its CPU backend with ``flags`` (an unknown flag aborts it)."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": _with_xla_flags(flags)}
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    try:
        run = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return False
    return run.returncode == 0


if "PDEGEN_TEST_XLA_FLAGS" not in os.environ:
    _chosen = _FASTER_COMPILE if _xla_accepts(_FASTER_COMPILE) else _FAST_COMPILE
    os.environ["PDEGEN_TEST_XLA_FLAGS"] = _chosen
if os.environ["PDEGEN_TEST_XLA_FLAGS"] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = _with_xla_flags(os.environ["PDEGEN_TEST_XLA_FLAGS"])

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh PRNG key on each call, deterministic per test."""
    key = [jr.key(5678)]

    def _getkey():
        key[0], sub = jr.split(key[0])
        return sub

    return _getkey


@pytest.fixture
def key():
    return jr.key(1234)


@pytest.fixture
def two_cpu_devices_env():
    """Environment for a child process with two host CPU devices; it keeps this suite's compile
    flags (a child given only the device flag compiled the sharded-generation test in 20 s)."""
    flags = _with_xla_flags("--xla_force_host_platform_device_count=2")
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")


# The longest tests (the tutorials in fast mode, the accelerator script's CPU smoke run) are
# collected first: under pytest-xdist the two workers then share them at the start instead of one
# worker running the last of them while the other idles.
_LONG_FIRST = ("tests/test_tutorials.py", "tests/test_gpu_script.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop each test module's compiled executables when it ends.

    XLA's CPU backend maps memory for every compiled program; a long-lived xdist worker that
    compiles the whole suite's programs can exhaust the kernel's limit on memory mappings
    (``vm.max_map_count``, 65530 by default) and crash."""
    yield
    jax.clear_caches()
