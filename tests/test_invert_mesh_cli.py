"""`pdegen invert --mesh`: the user's own mesh, sensors and data; the file readers and writers.

The exact posterior written by the command is checked against the library's exact posterior for
the same problem, and every bad input is rejected with a one-line error before the prior or the
forward map is built.
"""

from __future__ import annotations

import json
import os

import meshio
import numpy as np
import pytest

from pdegen import fem
from pdegen.cli import main
from pdegen.inverse import _invert_mesh
from pdegen.inverse._field_posterior import FieldPosterior
from pdegen.inverse._files import plot_field_posterior, read_points, read_values, write_posterior

NOISE = 0.002
# Ten sensors inside the L-shaped domain (-1, 1)^2 minus the quadrant (0, 1)^2.
SENSORS = np.array(
    [
        [-0.5, -0.5],
        [-0.8, 0.5],
        [-0.3, 0.7],
        [-0.6, -0.2],
        [0.2, -0.3],
        [0.6, -0.6],
        [0.8, -0.2],
        [-0.2, -0.8],
        [0.4, -0.9],
        [-0.9, -0.9],
    ]
)


def _strict_loads(text: str):
    def reject(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=reject)


def _parameter(pde: str, space):
    """The PDE of each ``--pde``, built here from its documented equation."""
    if pde == "poisson":
        return fem.Source(fem.Poisson(space), sign=1.0)
    if pde == "helmholtz":
        return fem.Source(fem.Helmholtz(space), sign=1.0, k=2.0)
    return fem.LogPermeability(fem.Darcy(space), f=1.0)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """An L-shaped mesh file, sensors (CSV with a header), and per PDE a truth and noisy data."""
    folder = tmp_path_factory.mktemp("problem")
    mesh_path = folder / "domain.msh"
    fem.write_mesh(mesh_path, fem.l_shaped(2))
    mesh = fem.read_mesh(mesh_path)
    space = fem.FunctionSpace(mesh, "P1")
    np.savetxt(folder / "sensors.csv", SENSORS, delimiter=",", header="x,y", comments="")
    H = space.point_observation(SENSORS).to_scipy()
    x, y = mesh.points.T
    truth = 0.5 * np.sin(np.pi * x) * np.cos(0.5 * np.pi * y)
    np.savetxt(folder / "truth.csv", truth)
    rng = np.random.default_rng(0)
    for pde in ("poisson", "helmholtz", "darcy"):
        u = np.asarray(_parameter(pde, space).solve(truth))
        np.savetxt(
            folder / f"{pde}.csv",
            H @ u + NOISE * rng.standard_normal(len(SENSORS)),
            header="u",
            comments="",
        )
    return folder, mesh


def _args(folder, out, *, pde="poisson", data=None, sensors="sensors.csv", extra=()):
    return [
        "invert",
        "--mesh",
        str(folder / "domain.msh"),
        "--pde",
        pde,
        "--sensors",
        str(folder / sensors),
        "--data",
        str(folder / (data or f"{pde}.csv")),
        "--noise",
        str(NOISE),
        "--samples",
        "4",
        "--steps",
        "10",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


# ------------------------------------------------------------------------------------ end to end


def test_mesh_mode_writes_fields_figures_and_summary(problem, tmp_path, capsys):
    import jax

    from pdegen import inverse

    folder, mesh = problem
    out = tmp_path / "out"
    args = _args(
        folder,
        out,
        extra=["--method", "bayes", "pigdm", "map", "--truth", str(folder / "truth.csv")],
    )
    assert main(args) == 0
    printed = capsys.readouterr().out
    for word in ("bayes", "pigdm", "map", "misfit", "std@sensors", "s/sample"):
        assert word in printed
    for method in ("bayes", "pigdm", "map"):
        for ext in (".xdmf", ".h5", ".vtu", ".png"):
            assert (out / f"{method}{ext}").is_file(), method + ext
        fields = meshio.read(out / f"{method}.vtu").point_data
        assert fields["mean"].shape == (mesh.npoints,) and np.all(np.isfinite(fields["mean"]))
        assert {"std", "sample_0", "truth", "error"} <= set(fields)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # nothing half written

    summary = _strict_loads((out / "summary.json").read_text())
    assert summary["npoints"] == mesh.npoints and summary["sensors"]["count"] == len(SENSORS)
    assert summary["pde"]["name"] == "poisson" and summary["prior"]["kind"] == "matern"
    rows = summary["methods"]
    assert rows["map"]["coverage90"] is None  # NaN for a point estimate, written as null
    # The exact posterior mean fits the data to the noise level: its RMS whitened residual is at
    # most about 1 (well below 1 here: ten sensors leave a flexible prior room to absorb noise).
    assert 0.0 < rows["bayes"]["misfit"] < 1.5
    # MAP of a linear-Gaussian problem is the posterior mean.
    assert abs(rows["map"]["misfit"] - rows["bayes"]["misfit"]) < 1e-3

    # The same problem through the library: -Lap u = a, Matern(0.2, 1), noise std NOISE.
    space = fem.FunctionSpace(mesh, "P1")
    prior = inverse.matern_prior(space, length_scale=0.2, sigma=1.0)
    lik = inverse.gaussian_likelihood(
        inverse.pde_forward(_parameter("poisson", space), SENSORS),
        read_values(folder / "poisson.csv"),
        noise_std=NOISE,
    )
    exact = inverse.exact_posterior(prior, lik, key=jax.random.key(0), num_samples=2)
    written = meshio.read(out / "bayes.vtu").point_data
    np.testing.assert_allclose(written["mean"], np.asarray(exact.mean), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(written["std"], np.asarray(exact.std), rtol=1e-7, atol=1e-9)
    assert abs(rows["bayes"]["misfit"] - lik.misfit(exact.mean)) < 1e-8


@pytest.mark.parametrize("pde,method", [("helmholtz", "bayes"), ("darcy", "map")])
def test_mesh_mode_other_pdes_fit_their_data(problem, tmp_path, pde, method):
    folder, mesh = problem
    out = tmp_path / pde
    extra = ["--method", method] + (["--wavenumber", "2"] if pde == "helmholtz" else [])
    assert main(_args(folder, out, pde=pde, extra=extra)) == 0
    summary = _strict_loads((out / "summary.json").read_text())
    assert summary["pde"]["linear"] is (pde != "darcy")
    # Data made with the documented equation are fitted to the noise level.
    assert summary["methods"][method]["misfit"] < 1.5
    assert meshio.read(out / f"{method}.vtu").point_data["mean"].shape == (mesh.npoints,)


def test_mesh_mode_on_a_quad_mesh_with_npy_inputs(tmp_path):
    mesh = fem.unit_square(6, cell_type="quad")
    fem.write_mesh(tmp_path / "square.vtu", mesh)
    points = np.array([[0.3, 0.3], [0.7, 0.4], [0.5, 0.8]])
    np.save(tmp_path / "points.npy", points)
    np.save(tmp_path / "y.npy", np.array([0.01, 0.02, 0.015]))
    out = tmp_path / "out"
    assert (
        main(
            [
                "invert",
                "--mesh",
                str(tmp_path / "square.vtu"),
                "--sensors",
                str(tmp_path / "points.npy"),
                "--data",
                str(tmp_path / "y.npy"),
                "--noise",
                "0.01",
                "--method",
                "bayes",
                "--samples",
                "2",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = meshio.read(out / "bayes.vtu")
    assert [c.type for c in written.cells] == ["quad"]
    assert written.point_data["mean"].shape == (mesh.npoints,)


# ------------------------------------------------------------------------------------ bad input


def _mixed_mesh(path):
    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0]], np.float64)
    meshio.write(
        path,
        meshio.Mesh(pts, [("triangle", np.array([[1, 4, 5]])), ("quad", np.array([[0, 1, 2, 3]]))]),
    )


BAD_INPUTS = {
    "sensors outside": (dict(sensors="outside.csv", data="two.csv"), "lie outside the domain"),
    "length mismatch": (dict(data="two.csv"), "has 2 values but --sensors"),
    "nan in data": (dict(data="nan.csv"), "NaN"),
    "missing data": (dict(data="nope.csv"), "no such file"),
    "missing sensors": (dict(sensors="nope.csv"), "no such file"),
    "missing mesh": (dict(mesh="nope.msh"), "no such file"),
    "mixed cells": (dict(mesh="mixed.vtu"), "mixes triangles and quads"),
    "corrupt mesh": (dict(mesh="corrupt.msh"), "not a readable mesh file"),
    "bayes nonlinear": (dict(pde="darcy", extra=["--method", "bayes"]), "nonlinear"),
    "task method": (dict(extra=["--method", "diffusionpde"]), "task-mode method"),
    "zero noise": (dict(extra=["--noise", "0"]), "--noise must be"),
    "learned bayes": (
        dict(extra=["--prior", "poisson-joint-32", "--method", "bayes"]),
        "needs a Gaussian prior",
    ),
    "unknown prior": (dict(extra=["--prior", "nonsense", "--method", "pigdm"]), "nonsense"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_before_any_work(problem, tmp_path, capsys, monkeypatch, case):
    folder, _ = problem
    np.savetxt(folder / "outside.csv", [[-0.5, -0.5], [0.5, 0.5]], delimiter=",")
    np.savetxt(folder / "two.csv", [1.0, 2.0])
    (folder / "nan.csv").write_text("u\n" + "1.0\n" * 9 + "nan\n")
    _mixed_mesh(folder / "mixed.vtu")
    (folder / "corrupt.msh").write_text("not a mesh\n")

    def expensive(*_, **__):
        raise AssertionError("the prior / forward map was built before the inputs were checked")

    monkeypatch.setattr(_invert_mesh, "build_mesh_problem", expensive)
    opts, message = BAD_INPUTS[case]
    opts = dict(opts)
    mesh = opts.pop("mesh", None)
    args = _args(folder, tmp_path / "out", **opts)
    if mesh:
        args[args.index("--mesh") + 1] = str(folder / mesh)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("pdegen invert: error:")
    assert "\n" not in err
    assert not (tmp_path / "out").exists()


def test_task_mode_rejects_a_sensor_file(capsys):
    assert main(["invert", "--sensors", "sensors.csv"]) == 2
    assert "needs --mesh" in capsys.readouterr().err


def test_darcy_has_defaults_that_run_and_refuses_bayes(tmp_path, capsys):
    import argparse

    from pdegen.inverse._invert_mesh import default_mesh_methods

    out = str(tmp_path / "d")
    assert main(["invert", "--task", "darcy-inverse", "--method", "bayes", "--out", out]) == 2
    assert "nonlinear in a" in capsys.readouterr().err
    args = argparse.Namespace(checkpoint=None, prior=None, pde="darcy")
    assert "bayes" not in default_mesh_methods(args)
    assert "bayes" in default_mesh_methods(argparse.Namespace(**{**vars(args), "pde": "poisson"}))
    learned = argparse.Namespace(checkpoint=None, prior="grf-a", pde="poisson")
    assert not {"bayes", "map"} & set(default_mesh_methods(learned))


# ------------------------------------------------------------------------------- readers, writers


@pytest.mark.parametrize(
    "text",
    [
        "x,y\n0.1,0.2\n0.3,0.4\n",
        "0.1 0.2\n0.3 0.4\n",
        "# sensors\nx y\n\n0.1\t0.2\n0.3 0.4\n",
        "0.1, 0.2\n0.3, 0.4\n",
    ],
)
def test_read_points_with_and_without_header(tmp_path, text):
    path = tmp_path / "s.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_points(path), [[0.1, 0.2], [0.3, 0.4]])


@pytest.mark.parametrize("text", ["u\n1\n2\n3\n", "1\n2\n3\n", "1,2,3\n", "1 2 3\n"])
def test_read_values_column_header_or_row(tmp_path, text):
    path = tmp_path / "y.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_values(path), [1.0, 2.0, 3.0])


def test_readers_accept_npy(tmp_path):
    np.save(tmp_path / "p.npy", SENSORS)
    np.save(tmp_path / "y.npy", np.arange(3.0)[:, None])
    np.testing.assert_array_equal(read_points(tmp_path / "p.npy"), SENSORS)
    np.testing.assert_array_equal(read_values(tmp_path / "y.npy"), [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    "reader,text,message",
    [
        (read_points, "", "empty"),
        (read_points, "x,y\n", "empty"),
        (read_points, "1,2,3\n4,5,6\n", "two columns"),
        (read_points, "1,2\nnan,3\n", "NaN or inf at rows [1]"),
        (read_points, "1,2\n3\n", "line 2 has 1 values"),
        (read_points, "1,2\nfoo,bar\n", "line 2: expected numbers"),
        (read_values, "1,2\n3,4\n", "one column"),
        (read_values, "y\n1\ninf\n", "NaN or inf at entries [1]"),
    ],
)
def test_reader_errors_name_the_file(tmp_path, reader, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.csv") as err:
        reader(path)
    assert message in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        reader(tmp_path / "missing.csv")


def _posterior(mesh, truth, method="pigdm", num=3):
    rng = np.random.default_rng(1)
    samples = truth + 0.1 * rng.standard_normal((num, mesh.npoints))
    std = samples.std(0, ddof=1) if num > 1 else np.zeros(mesh.npoints)
    return FieldPosterior(samples, samples.mean(0), std, method, 0.01, float("nan"), {})


def test_write_and_plot_posterior_on_a_quad_mesh(tmp_path):
    mesh = fem.unit_square(6, cell_type="quad")
    truth = np.sin(3 * mesh.points[:, 0]) * mesh.points[:, 1]
    post = _posterior(mesh, truth)
    paths = write_posterior(tmp_path, mesh, post, stem="quad", truth=truth, max_samples=2)
    assert [os.path.basename(p) for p in paths] == ["quad.xdmf", "quad.h5", "quad.vtu"]
    assert all(os.path.isfile(p) for p in paths)
    fields = meshio.read(tmp_path / "quad.vtu").point_data
    assert set(fields) == {"mean", "std", "sample_0", "sample_1", "truth", "error"}
    np.testing.assert_allclose(fields["error"], np.asarray(post.mean) - truth)
    xdmf = meshio.read(tmp_path / "quad.xdmf")  # reads its .h5
    np.testing.assert_allclose(xdmf.point_data["mean"], np.asarray(post.mean))


def test_plot_posterior_point_estimate_and_bad_shapes(tmp_path):
    mesh = fem.unit_square(5, cell_type="quad")
    truth = mesh.points[:, 0]
    png = plot_field_posterior(
        tmp_path / "p.png",
        mesh,
        _posterior(mesh, truth),
        sensors=[[0.5, 0.5]],
        truth=truth,
        title="four panels",
    )
    point = plot_field_posterior(tmp_path / "m.png", mesh, _posterior(mesh, truth, "map", 1))
    assert os.path.getsize(png) > 10_000 and os.path.getsize(point) > 5_000
    with pytest.raises(ValueError, match="truth must have shape"):
        plot_field_posterior(tmp_path / "x.png", mesh, _posterior(mesh, truth), truth=truth[:-1])
    with pytest.raises(ValueError, match="one value per mesh node"):
        write_posterior(tmp_path, fem.unit_square(4), _posterior(mesh, truth))
    assert not (tmp_path / "x.png").exists()
