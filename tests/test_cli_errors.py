"""One error policy for the command line (``pdegen.cli.main``).

Bad input of every kind through ``pdegen.cli.main``: exit code 2, one line ``pdegen <cmd>:
error: ...`` on stderr (no traceback), and the output that was there before is unchanged (no file
written, replaced or half written). A few cases, one of each error path, run the real command
line in a subprocess; the rest call ``main`` in process (the same code, without a fresh
interpreter and JAX import per case). Ctrl-C: exit code 130, one line, no
partial files. A programming error keeps its traceback. Strict JSON everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from pdegen import cli
from pdegen._errors import NonFiniteError, UserError, user_error_message
from pdegen._io import check_output_dir, json_safe, write_json_atomic

SENTINEL = b"previous output\n"


def _env(tmp_path):
    env = dict(os.environ)
    env.update(
        MPLBACKEND="Agg",
        JAX_PLATFORMS="cpu",
        PYTHONWARNINGS="ignore",
        PDEGEN_CACHE_DIR=str(tmp_path / "jax-cache"),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def _pdegen(tmp_path, args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "pdegen.cli", *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _pdegen_in_process(tmp_path, args, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PDEGEN_CACHE_DIR", str(tmp_path / "jax-cache"))
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return subprocess.CompletedProcess(args, code, stderr=capsys.readouterr().err)


def _snapshot(folder):
    """Every file under ``folder`` (hidden temporary files included) with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Input files, good and bad: an .npz data set (and empty / truncated / random-bytes ones), an
    L-shaped mesh with sensors outside and inside it, data, a binary 'CSV'."""
    from pdegen import fem

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    np.savez(d / "good.npz", fields=rng.standard_normal((8, 1, 8, 8)))
    raw = (d / "good.npz").read_bytes()
    (d / "empty.npz").write_bytes(b"")
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "random.npz").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    fem.write_mesh(d / "domain.msh", fem.l_shaped(2))
    np.savetxt(
        d / "outside.csv", [[0.5, 0.5], [-0.5, -0.5]], delimiter=",", header="x,y", comments=""
    )
    np.savetxt(d / "data2.csv", [0.1, 0.2])
    (d / "binary.csv").write_bytes(rng.integers(128, 256, 512, dtype=np.uint8).tobytes())
    return d


# name -> (argv with {in} for the inputs folder and {out} for the output, what --out is,
#          a fragment the one-line message must hold)
BAD_INPUTS = {
    "statfem huge step size (diverges)": (
        "statfem --sampler ula --step-size 1e6 --grid 6 --steps 20 --sensors 5 --no-progress --out {out}",
        "dir",
        "--step-size 1e+06 is unstable for ula",
    ),
    "statfem out is a file": (
        "statfem --grid 6 --steps 20 --sensors 5 --out {out}",
        "file",
        "existing file",
    ),
    "train out is a file": (
        "train --data {in}/good.npz --steps 2 --out {out}",
        "file",
        "existing file",
    ),
    "solve out is a file": ("solve poisson --grid 5 --out {out}", "file", "existing file"),
    "optimise out is a file": ("optimise --budget 2000 --out {out}", "file", "existing file"),
    "invert out is a file": ("invert --samples 1 --steps 2 --out {out}", "file", "existing file"),
    "solve out below a file": (
        "solve poisson --grid 5 --out {out}/sub",
        "file",
        "is a file, not a folder",
    ),
    "data out is a folder": ("data poisson --n 2 --grid 5 --out {out}", "dir.npz", "is a folder"),
    "train empty npz": ("train --data {in}/empty.npz --steps 2 --out {out}", "dir", "empty.npz"),
    "train truncated npz": (
        "train --data {in}/truncated.npz --steps 2 --out {out}",
        "dir",
        "truncated.npz",
    ),
    "train random-bytes npz": (
        "train --data {in}/random.npz --steps 2 --out {out}",
        "dir",
        "random.npz",
    ),
    "train missing data": ("train --data {in}/nope.npz --steps 2 --out {out}", "dir", "nope.npz"),
    "solve missing mesh": ("solve poisson --mesh {in}/nope.msh --out {out}", "dir", "nope.msh"),
    "sample missing checkpoint": ("sample --checkpoint {in}/nope --out {out}", "dir", "nope"),
    "solve huge grid": ("solve poisson --grid 1000000 --out {out}", "dir", "--grid 1000000"),
    "data huge grid": ("data poisson --n 2 --grid 100000 --out {out}", "npz", "--grid 100000"),
    "statfem huge grid": ("statfem --grid 100000 --out {out}", "dir", "--grid 100000"),
    "invert mesh sensors outside": (
        (
            "invert --mesh {in}/domain.msh --sensors {in}/outside.csv --data {in}/data2.csv --noise 0.01 "
            "--quiet --out {out}"
        ),
        "dir",
        "does not fit the mesh",
    ),
    "invert mesh binary sensors": (
        (
            "invert --mesh {in}/domain.msh --sensors {in}/binary.csv --data {in}/data2.csv --noise 0.01 "
            "--quiet --out {out}"
        ),
        "dir",
        "not a text file",
    ),
    "invert prior/task grid mismatch": (
        "invert --prior poisson-joint-32 --grid 16 --method bayes tmpd --quiet --out {out}",
        "dir",
        "generates 32x32 fields",
    ),
    "optimise negative budget": (
        "optimise --budget -5 --out {out}",
        "dir",
        "--budget must be a positive",
    ),
    "optimise budget below one iteration": (
        "optimise --budget 200 --out {out}",
        "dir",
        "1026 evaluations",
    ),
}
# one case per error path through a fresh interpreter: an existing file as --out (checked before
# any work), a bad data file (raised while reading), an error raised inside a JAX host callback
SUBPROCESS = {"solve out is a file", "train random-bytes npz", "invert mesh sensors outside"}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_output_alone(
    inputs, tmp_path, case, capsys, monkeypatch
):
    template, kind, fragment = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    if kind == "file":  # --out names an existing file
        out = work / "taken"
        out.write_bytes(SENTINEL)
    elif kind == "dir":  # an earlier run's output folder
        out = work / "out"
        out.mkdir()
        (out / "previous.json").write_bytes(SENTINEL)
    elif kind == "dir.npz":  # --out of `data` names an existing folder
        out = work / "pairs.npz"
        out.mkdir()
        (out / "previous.json").write_bytes(SENTINEL)
    else:  # an earlier `data` file
        out = work / "pairs.npz"
        out.write_bytes(SENTINEL)
    before = _snapshot(work)
    argv = template.format(**{"in": inputs, "out": out}).split()
    if case in SUBPROCESS:
        proc = _pdegen(tmp_path, argv)
    else:
        proc = _pdegen_in_process(tmp_path, argv, capsys, monkeypatch)
    command = argv[0]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"pdegen {command}: error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert _snapshot(work) == before  # nothing written, replaced or left half written


def test_ctrl_c_exits_130_with_one_line_and_no_partial_files(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pdegen.cli",
            "statfem",
            "--grid",
            "6",
            "--sensors",
            "5",
            "--steps",
            "2000000",
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until the chains run
            if "sampling" in line or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "pdegen statfem: interrupted"
    assert not out.exists() or _snapshot(out) == {}


# ------------------------------------------------------------------------------ in process


def test_programming_error_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "cmd_solve", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["solve", "poisson"])


def test_keyboard_interrupt_in_process(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_solve", interrupted)
    assert cli.main(["solve", "poisson", "--grid", "5"]) == 130
    assert capsys.readouterr().err == "pdegen solve: interrupted\n"


def test_a_lost_ctrl_c_is_raised_again(monkeypatch, capsys):
    # Ctrl-C that lands in a finaliser is printed as "ignored" and lost; the command line raises
    # it again until it is caught, so the command still stops with exit code 130.
    class Finaliser:
        def __del__(self):  # Ctrl-C lands here: Python prints it as "ignored" and goes on
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.5)

    def loses_the_first_interrupt(args):
        Finaliser()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("the lost interrupt was not raised again")

    monkeypatch.setattr(cli, "cmd_solve", loses_the_first_interrupt)
    previous = signal.getsignal(signal.SIGINT)
    assert cli.main(["solve", "poisson", "--grid", "5"]) == 130
    assert capsys.readouterr().err == "pdegen solve: interrupted\n"  # nothing "ignored"
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is restored


def _callback_error(exc):
    """The ``JaxRuntimeError`` JAX raises for ``exc`` raised in a host callback."""
    import jax
    import jax.numpy as jnp

    def cb(x):
        raise exc

    try:
        jax.jit(lambda x: jax.pure_callback(cb, jax.ShapeDtypeStruct((), jnp.float64), x))(
            1.0
        ).block_until_ready()
    except Exception as err:  # noqa: BLE001
        return err
    raise AssertionError("no error")


def test_which_exceptions_are_user_errors():
    args = argparse.Namespace(command="train", grid=4096, n=10, data=__file__, quiet=False)
    one = user_error_message(ValueError("bad --noise:\n  must be > 0"), args)
    assert one == "bad --noise: must be > 0"
    assert "--grid 4096" in user_error_message(MemoryError("Unable to allocate 74.5 GiB"), args)
    assert "--n 10" in user_error_message(MemoryError(), args)
    assert repr(__file__) in user_error_message(EOFError("No data left in file"), args)
    assert "not a valid archive" in user_error_message(
        zipfile.BadZipFile("File is not a zip file"), args
    )
    assert (
        user_error_message(FileNotFoundError(2, "No such file or directory", "x.msh"))
        == "no such file or directory: 'x.msh' (check the path)"
    )
    assert "permission denied: 'o'" in user_error_message(
        PermissionError(13, "Permission denied", "o")
    )
    assert (
        user_error_message(FileExistsError("--out 'o' is an existing file"))
        == "--out 'o' is an existing file"
    )
    assert user_error_message(NonFiniteError("chains diverged")) == "chains diverged"
    assert user_error_message(FloatingPointError("nan")) == "nan"
    wrapped = _callback_error(ValueError("sensor 3 lies outside the mesh"))
    assert type(wrapped).__name__ == "JaxRuntimeError"
    assert user_error_message(wrapped) == "sensor 3 lies outside the mesh"
    assert (
        user_error_message(_callback_error(NonFiniteError("diverged"))) == "diverged"
    )  # a pdegen class
    for programming in (
        TypeError("x"),
        RuntimeError("x"),
        KeyError("x"),
        AttributeError("x"),
        _callback_error(TypeError("bug")),
        KeyboardInterrupt(),
        OSError("no errno"),
    ):
        assert user_error_message(programming, args) is None, programming


def test_strict_json_writer(tmp_path):
    path = write_json_atomic(
        tmp_path / "r.json",
        {
            "nan": float("nan"),
            "inf": [float("inf"), -np.inf, 1.5],
            "np": np.float32(2.0),
            "i": np.int64(3),
            "arr": np.array([1.0, np.nan]),
            "t": (1, 2),
            4: True,
        },
    )

    def reject(token):
        raise ValueError(f"non-strict JSON token {token}")

    data = json.loads(path.read_text(), parse_constant=reject)
    assert data == {
        "nan": None,
        "inf": [None, None, 1.5],
        "np": 2.0,
        "i": 3,
        "arr": [1.0, None],
        "t": [1, 2],
        "4": True,
    }
    assert json_safe({"x": float("nan")}) == {"x": None}
    with pytest.raises(TypeError):  # not JSON at all: nothing is written
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists() and sorted(os.listdir(tmp_path)) == ["r.json"]


def test_output_folder_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="existing file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "a" / "b")
    with pytest.raises(ValueError):
        check_output_dir("")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


def test_statfem_refuses_diverged_chains_before_writing():
    from pdegen.fem.statfem import _cli as statfem_cli

    args = argparse.Namespace(sampler="ula", chains=2, steps=10, step_size=1e-3)
    pos = np.array([[0.0, 1.0], [np.nan, 1.0]])
    res = argparse.Namespace(
        state=argparse.Namespace(position=pos),
        step_size=np.array([1e-3, 1e-3]),
        acceptance_rate=np.array([1.0, 1.0]),
    )
    with pytest.raises(NonFiniteError, match="1 of 2 chains diverged"):
        statfem_cli.check_chains(args, res, np.zeros(2), np.ones(2))
    args.sampler = "mala"
    res.state.position = np.zeros((2, 2))
    res.acceptance_rate = np.zeros(2)
    with pytest.raises(UserError, match="no proposal was accepted"):
        statfem_cli.check_chains(args, res, np.zeros(2), np.ones(2))


@pytest.mark.parametrize("method,gradient", [("dds", False), ("dds", True), ("langevin", False)])
def test_optimise_minimum_budget_is_the_library_minimum(method, gradient):
    """One evaluation below the minimum the command line states, the optimiser refuses to run."""
    import jax

    from pdegen.optimise import minimise, test_function
    from pdegen.optimise._cli import SETTINGS, cost_plan

    prob = test_function("rastrigin", 2)
    minimum = cost_plan(method, gradient)["minimum"]
    with pytest.raises(ValueError, match="too small"):
        minimise(
            prob.fn,
            prob.domain,
            key=jax.random.key(0),
            method=method,
            max_evaluations=minimum - 1,
            gradient_informed=gradient,
            batch_size=SETTINGS["batch_size"],
            num_steps=SETTINGS["num_steps"],
            num_temperatures=SETTINGS["num_temperatures"],
        )
