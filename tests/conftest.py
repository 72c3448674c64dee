"""Strict test environment: float64, strict dtype promotion, no implicit rank promotion."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import jax.random as jr
import pytest

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
