"""benchmarks/train_prior.py trains, exports and plots into --out and nowhere else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pdegen import models

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_prior.py"


def test_train_prior_writes_only_under_out(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_prior_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["--steps", "2", "--n-train", "8", "--batch-size", "4", "--grid", "8"]
    args += ["--base-channels", "4", "--channel-mults", "1", "--name", "tiny", "--quiet"]
    assert script.main([*args, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert {p.name for p in out.iterdir()} == {"model", "checkpoints", "loss.png"}
    ckpt = models.load_checkpoint(out / "model")
    assert tuple(ckpt.model.data_shape) == (2, 8, 8)


def test_train_prior_spectral_a_prior_over_two_grids(tmp_path):
    spec = importlib.util.spec_from_file_location("train_prior_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    args = ["--data", "a", "--grids", "8,16", "--eval-grids", "32", "--network", "spectral"]
    args += ["--steps", "3", "--n-train", "8", "--batch-size", "4", "--depth", "1", "--quiet"]
    assert script.main([*args, "--name", "tiny-a", "--out", str(out)]) == 0
    ckpt = models.load_checkpoint(out / "model")
    assert ckpt.model.resolution_free and ckpt.metadata["grids_trained"] == [8, 16]
    assert set(ckpt.metadata["excess_loss"]) == {"8", "16", "32"}
