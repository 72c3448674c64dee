"""Strict test environment: float64, strict dtype promotion, no implicit rank promotion.

Compiled programs are shared through JAX's persistent compilation cache in a directory made for
the session (``PDEGEN_TEST_JAX_CACHE=0`` turns it off): the xdist workers, the tutorials' kernels
and the command-line tests' subprocesses inherit it, so a program compiled once (e.g. a shipped
prior's sampler, used by several test modules and tutorials) is loaded from disk afterwards
instead of being compiled again in every process and after every module's cache release."""

import os
import shutil
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402

_CACHE_OWNER = False
if os.environ.get("PDEGEN_TEST_JAX_CACHE", "1") != "0" and not os.environ.get(
    "JAX_COMPILATION_CACHE_DIR"
):
    # the environment for the children (xdist workers, kernels, subprocesses), the config for us
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pdegen-jax-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    _CACHE_OWNER = True
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")),
    )

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


def pytest_unconfigure(config):
    if _CACHE_OWNER:  # the process that made the directory (the xdist controller) removes it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
