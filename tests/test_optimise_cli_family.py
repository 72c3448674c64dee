"""`pdegen optimise --family`: train an amortised optimiser on a family, save it, apply it."""

import json

import pytest

from pdegen.cli import main
from pdegen.optimise import FAMILY_NAMES, make_family
from pdegen.optimise._cli import FAMILIES


def test_family_trains_saves_applies_and_reloads(tmp_path, capsys):
    out = tmp_path / "fam"
    args = ["optimise", "--family", "quadratic", "--dim", "2", "--quiet"]
    assert main([*args, "--train-iterations", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "runtime to target" in printed and "gap <= 0.001" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["gap"] >= -1e-12 and result["training_evaluations"] > 0  # up to roundoff
    assert result["num_evaluations"] == result["evaluations"][-1]
    assert (out / "runtime_to_target.png").is_file() and (out / "amortised.eqx").is_file()
    # the saved optimiser, applied again to the same member, gives the same answer
    again = tmp_path / "again"
    load = ["--load", str(out / "amortised.eqx")]
    assert main([*args, *load, "--out", str(again)]) == 0
    assert json.loads((again / "result.json").read_text())["value"] == result["value"]
    # bad input: a missing file, a saved optimiser of another dimension
    assert main([*args, "--load", str(tmp_path / "none.eqx"), "--out", str(again)]) == 2
    assert "--load" in capsys.readouterr().err
    wrong = ["optimise", "--family", "quadratic", "--dim", "3", "--quiet", *load]
    assert main([*wrong, "--out", str(tmp_path / "w")]) == 2
    assert "trained on d=2" in capsys.readouterr().err
    # a saved optimiser of another family; an odd dimension for source placement (x, y per source)
    other = ["optimise", "--family", "poisson-sources", "--dim", "2", "--quiet", *load]
    assert main([*other, "--out", str(tmp_path / "o")]) == 2
    assert "trained on the quadratic family" in capsys.readouterr().err
    odd = ["optimise", "--family", "poisson-sources", "--dim", "3", "--quiet"]
    assert main([*odd, "--out", str(tmp_path / "odd")]) == 2
    assert "must be even" in capsys.readouterr().err


def test_the_cli_offers_every_family_and_make_family_checks_its_input():
    assert FAMILIES == FAMILY_NAMES
    assert make_family("poisson-sources", 4).dim == 4
    with pytest.raises(ValueError, match="expected one of"):
        make_family("nope", 2)
    with pytest.raises(ValueError, match="even"):
        make_family("poisson-sources", 3)
