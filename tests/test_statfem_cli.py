"""`pdegen statfem` on a tiny grid: figures and JSON are written, errors are small, bad input fails."""

import argparse
import json

import pytest

from pdegen.fem.statfem import _cli


def parse(argv):
    parser = argparse.ArgumentParser()
    _cli.register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_statfem_command_writes_figures_and_errors(tmp_path):
    out = tmp_path / "run"
    args = parse(
        [
            "statfem",
            "--grid",
            "9",
            "--sampler",
            "pula",
            "--steps",
            "400",
            "--chains",
            "4",
            "--sensors",
            "20",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    for name in ("posterior.png", "samples.png", "statfem.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".tmp-*"))
    result = json.loads((out / "statfem.json").read_text())
    assert result["sampler"] == "pula" and result["grid"] == 9 and result["dim"] == 49
    assert result["mean_rel_error"] < 0.02
    assert result["variance_rel_error"] < 0.3
    assert result["ess_median"] > 30 and result["ess_min"] > 0
    assert result["exact_mean_vs_truth_rel_error"] < 0.2


def test_statfem_command_bad_input(tmp_path):
    args = parse(["statfem", "--grid", "2", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--grid"):
        args.func(args)
    with pytest.raises(SystemExit):
        parse(["statfem", "--sampler", "hmc"])
