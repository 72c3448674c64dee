"""`pdegen train` / `pdegen sample` through `register` on a bare argparse parser."""

import argparse
import functools

import jax
import numpy as np
import pytest

from pdegen import models
from pdegen.models._cli import register


def run(argv):
    parser = argparse.ArgumentParser(prog="pdegen")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_then_sample(tmp_path):
    data = np.random.default_rng(0).normal(size=(64, 2)) * np.array([[2.0, 0.5]])
    np.savez(tmp_path / "d.npz", fields=data)
    assert (
        run(
            [
                "train",
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path / "ck"),
                "--steps",
                "4",
                "--batch-size",
                "8",
                "--channels",
                "16",
                "--depth",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "ck" / "metadata.json").is_file() and (
        tmp_path / "ck" / "loss.png"
    ).is_file()
    assert (
        run(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "ck"),
                "--n",
                "6",
                "--out",
                str(tmp_path / "s"),
                "--method",
                "ddim",
                "--steps",
                "3",
            ]
        )
        == 0
    )
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert f["samples"].shape == (6, 2) and np.all(np.isfinite(f["samples"]))
    assert (tmp_path / "s" / "samples.png").stat().st_size > 0


def test_recommended_sampler_follows_the_checkpoint():
    """The recorded sampler with its options, call options overriding them; EDM-Heun where none is
    recorded; an unknown name is a clear error."""

    run = models.recommended_sampler(
        {"recommended_sampler": {"method": "edm_heun", "num_steps": 40, "rho": 12.0}}
    )
    assert isinstance(run, functools.partial) and run.func is models.edm_heun
    assert run.keywords == {"num_steps": 40, "rho": 12.0}
    again = models.recommended_sampler(
        {"recommended_sampler": {"rho": 12.0, "num_steps": 40, "method": "edm_heun"}}
    )
    assert again is run  # one object per setting: code compiled for it is reused
    assert models.recommended_sampler({}) is models.edm_heun
    with pytest.raises(ValueError, match="unknown sampler"):
        models.recommended_sampler({"recommended_sampler": {"method": "heun"}})
    sde = models.EDMSDE()
    x = models.sample(lambda x, t: -x, sde, (3,), 2, key=jax.random.key(0), method=run, num_steps=4)
    assert x.shape == (2, 3)


def test_sample_a_shipped_prior_by_name(tmp_path, capsys):
    """``--checkpoint`` also takes the name of a shipped prior; ``--steps`` overrides its sampler's."""
    assert (
        run(["sample", "--checkpoint", "grf-a", "--n", "2", "--steps", "2", "--quiet"]
            + ["--out", str(tmp_path / "s")])
        == 0
    )  # fmt: skip
    assert "with edm_heun, 2 steps" in capsys.readouterr().out  # --steps over the recorded 40
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert f["samples"].shape[:2] == (2, 1) and np.all(np.isfinite(f["samples"]))
