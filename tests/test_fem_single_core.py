"""Direct solves on a machine where the process may use one CPU (``taskset -c 0``, a Slurm job
with one core): the host callback must not wait for XLA's CPU thread pool, whose only thread is
the one running the callback (the 128x128 nonlinear statFEM Newton solve hung there)."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import jax
jax.config.update("jax_enable_x64", True)
from pdegen.fem import statfem
case = statfem.nonlinear_statfem_case(128, key=jax.random.key(0))
print("solved", case.model.dim)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_newton_solves_finish_on_one_cpu():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "solved 15876" in out.stdout
