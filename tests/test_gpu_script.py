"""benchmarks/gpu.sh, the accelerator check, runs end to end on the CPU at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # three subprocesses: a training run and two inverse runs
def test_gpu_script_cpu_smoke(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_OUT=str(tmp_path), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "capped" not in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]
    for name, prior in (("gpu_smoke", "grf-a"), ("gpu_smoke_trained", "grf-a-128")):
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["machine"]["device"] and result["grid"] == 16
        methods = {(r["prior"], r["method"]) for r in result["rows"]}
        assert ("exact posterior", "bayes") in methods and (prior, "pigdm") in methods
        assert {r["draws"] for r in result["rows"]} == {2}
        # name@N: the same method at N sampler steps, its own row
        more = {r["steps"] for r in result["rows"] if r["method"] == "dps@8"}
        assert more == {8}
    meta = json.loads((tmp_path / "grf-a-128" / "model" / "metadata.json").read_text())
    assert set(meta["excess_loss"]) == {"8", "16", "32"}
