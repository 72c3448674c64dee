"""The `pdegen solve` and `pdegen data` commands: files written, residuals reported, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pdegen.cli import main


@pytest.mark.parametrize(
    "problem,element", [("poisson", "P1"), ("darcy", "Q1"), ("helmholtz", "P1")]
)
def test_solve_writes_fields_figure_and_summary(tmp_path, capsys, problem, element):
    out = tmp_path / "solve"
    assert main(["solve", problem, "--grid", "9", "--element", element, "--out", str(out)]) == 0
    for ext in (".vtu", ".xdmf", ".h5", ".png", ".json"):
        assert (out / f"{problem}{ext}").is_file(), ext
    summary = json.loads((out / f"{problem}.json").read_text())
    assert summary["relative_residual"] < 1e-8
    assert summary["ndofs"] == 81
    assert "dofs" in capsys.readouterr().out
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]  # nothing half written


def test_solve_writes_a_p2_solution_on_all_its_dofs(tmp_path):
    import meshio

    out = tmp_path / "p2"
    assert main(["solve", "poisson", "--grid", "5", "--element", "P2", "--out", str(out)]) == 0
    written = meshio.read(out / "poisson.vtu")
    assert [c.type for c in written.cells] == ["triangle6"]
    assert written.points.shape[0] == 81 == written.point_data["u"].shape[0]  # 9 x 9 dofs


def test_solve_on_a_mesh_file(tmp_path):
    from pdegen import fem

    path = tmp_path / "lshape.msh"
    fem.write_mesh(path, fem.l_shaped(2))
    assert main(["solve", "poisson", "--mesh", str(path), "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "poisson.json").read_text())["relative_residual"] < 1e-8


def test_solve_missing_mesh_file_is_a_clear_error(tmp_path, capsys):
    assert main(["solve", "poisson", "--mesh", str(tmp_path / "nope.msh")]) == 2
    assert "nope.msh" in capsys.readouterr().err


def test_data_writes_pairs_metadata_and_figure(tmp_path, capsys):
    out = tmp_path / "d" / "poisson.npz"
    assert main(["data", "poisson", "--n", "3", "--grid", "8", "--out", str(out), "--quiet"]) == 0
    with np.load(out) as z:
        fields = z["fields"]
    assert fields.shape == (3, 2, 8, 8) and np.all(np.isfinite(fields))
    meta = json.loads((tmp_path / "d" / "poisson.json").read_text())
    assert meta["max_relative_residual"] < 1e-8
    assert (tmp_path / "d" / "poisson.png").is_file()
    assert main(["data", "poisson", "--out", str(tmp_path / "x.txt")]) == 2
    assert "--out must end with .npz" in capsys.readouterr().err


def test_optimise_writes_result_and_convergence_plot(tmp_path, capsys):
    out = tmp_path / "opt"
    assert (
        main(
            [
                "optimise",
                "--function",
                "rastrigin",
                "--dim",
                "2",
                "--method",
                "random",
                "--budget",
                "300",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["num_evaluations"] <= 300 and result["gap"] >= 0
    assert result["best_values"] == sorted(
        result["best_values"], reverse=True
    )  # best-so-far never rises
    assert (out / "convergence.png").is_file()
    # restarted L-BFGS: a small budget suffices (a value and a gradient per iteration)
    args = ["optimise", "--function", "rosenbrock", "--dim", "3", "--method", "lbfgs"]
    assert main([*args, "--budget", "400", "--out", str(out / "lbfgs")]) == 0
    result = json.loads((out / "lbfgs" / "result.json").read_text())
    assert result["num_evaluations"] <= 400 and result["gap"] < 1e-6
    assert result["full_frame"] is False
    assert main(["optimise", "--dim", "0", "--out", str(out)]) == 2
    assert "dim" in capsys.readouterr().err
