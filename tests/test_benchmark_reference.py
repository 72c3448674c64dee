"""benchmarks/_reference.py: long-run MCMC references run in segments; an extended or resumed
run equals one uninterrupted run, and a stored reference is reused without running anything."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _reference import long_run_reference  # noqa: E402

from pdegen import mcmc  # noqa: E402

PREC = jnp.array([[2.0, 0.3], [0.3, 1.0]])


def _build():
    kernel = mcmc.mala(lambda x: 0.5 * x @ PREC @ x, 0.05)
    return kernel, jax.random.normal(jax.random.key(0), (3, 2))


def test_extended_reference_equals_one_run_and_stored_ones_are_reused(tmp_path):
    opts = dict(key=jax.random.key(1), segment=100, thin=2, warmup=100)
    whole, _ = long_run_reference(_build, 400, path=tmp_path / "a.npz", **opts)
    long_run_reference(_build, 200, path=tmp_path / "b.npz", **opts)
    extended, _ = long_run_reference(_build, 400, path=tmp_path / "b.npz", **opts)
    assert int(extended["num_steps"]) == 400
    np.testing.assert_array_equal(whole["mean"], extended["mean"])
    np.testing.assert_array_equal(whole["variance"], extended["variance"])
    # the moments are those of the target (exact kernel), within 5 standard errors
    cov = np.linalg.inv(np.asarray(PREC))
    se = np.sqrt(np.diagonal(cov) / whole["ess"])
    np.testing.assert_array_less(np.abs(whole["mean"]), 5 * se)

    def fail():
        raise AssertionError("a stored reference must not run chains")

    again, _ = long_run_reference(fail, 300, path=tmp_path / "b.npz", **opts)
    np.testing.assert_array_equal(again["mean"], extended["mean"])
    # shorter than asked and no chain state: used as it is, or run anew to the length asked
    (tmp_path / "b.partial.npz").unlink()
    kept, _ = long_run_reference(fail, 600, path=tmp_path / "b.npz", **opts)
    assert int(kept["num_steps"]) == 400
    rebuilt, _ = long_run_reference(_build, 600, path=tmp_path / "b.npz", rebuild=True, **opts)
    assert int(rebuilt["num_steps"]) == 600
    assert (
        int(long_run_reference(fail, 600, path=tmp_path / "b.npz", **opts)[0]["num_steps"]) == 600
    )
    # a reference records the data it was made for; other data are an error
    y = np.array([1.0, 2.0])
    long_run_reference(_build, 200, path=tmp_path / "d.npz", data=y, **opts)
    long_run_reference(fail, 200, path=tmp_path / "d.npz", data=y, **opts)
    with pytest.raises(ValueError, match="other data"):
        long_run_reference(fail, 200, path=tmp_path / "d.npz", data=y + 1e-3, **opts)
    with pytest.raises(ValueError, match="multiples of thin"):
        long_run_reference(_build, 301, path=tmp_path / "c.npz", **opts)


def test_reference_id_tells_references_apart():
    """Rows carry the id of the reference they were measured against: equal moments give equal
    ids, any change of the moments another one."""
    from _reference import reference_id

    ref = {"mean": np.arange(4.0), "variance": np.ones(4)}
    same = {"mean": np.arange(4.0), "variance": np.ones(4), "seconds": 3.0}
    other = {"mean": np.arange(4.0), "variance": np.ones(4) * (1 + 1e-12)}
    assert reference_id(ref) == reference_id(same)
    assert reference_id(ref) != reference_id(other)


def test_bounded_trace_keeps_every_stride_th_state(monkeypatch):
    import _resumable as resumable

    monkeypatch.setattr(resumable, "TRACE_CAP", 8)
    full = np.random.default_rng(0).normal(size=(2, 50, 5))
    coords = np.array([0, 3])
    trace = resumable.BoundedTrace(2, coords)
    for j in range(0, 50, 7):
        trace.add(full[:, j : j + 7])
    assert trace.values.shape[1] <= 8 and trace.stride == 8
    expected = full[:, :: trace.stride][:, :, coords].astype(np.float32)
    np.testing.assert_array_equal(trace.values, expected)
    again = resumable.BoundedTrace.from_state(trace.state())
    again.add(full[:, :7])  # states 50-56 of the run: 56 is the next multiple of the stride
    assert again.seen == 57 and again.values.shape[1] == expected.shape[1] + 1
    np.testing.assert_array_equal(again.values[:, -1], full[:, 6][:, coords].astype(np.float32))


def test_checkpoint_continues_the_same_chains(tmp_path):
    import _resumable as resumable

    kernel = mcmc.mala(lambda x: 0.5 * x @ PREC @ x, 0.05)
    x0 = jax.random.normal(jax.random.key(0), (3, 2))
    res = mcmc.run_chains(kernel, x0, 20, 20, key=jax.random.key(1))
    moments = (jnp.full(3, 4.0), jnp.ones((3, 2)), jnp.zeros((3, 2)))
    path = tmp_path / "run.npz"
    trace = resumable.BoundedTrace(3, np.arange(2))
    resumable.save(path, tag="mala|ref", state=res.state, moments=moments, trace=trace, steps=20)
    st = resumable.load(path, tag="mala|ref", like_state=res.state)
    for a, b in zip(jax.tree.leaves(st["state"]), jax.tree.leaves(res.state)):
        np.testing.assert_array_equal(a, b)
    assert int(st["steps"]) == 20 and float(st["moments"][0][0]) == 4.0
    # the restored state steps exactly as the original
    key = jax.random.key(2)
    first = jax.tree.map(lambda x: x[0], st["state"])
    original = jax.tree.map(lambda x: x[0], res.state)
    np.testing.assert_array_equal(
        kernel.step(first, key=key)[0].position, kernel.step(original, key=key)[0].position
    )
    with pytest.raises(ValueError, match="another run"):
        resumable.load(path, tag="pcn|ref", like_state=res.state)
    assert resumable.load(tmp_path / "none.npz", tag="mala|ref", like_state=res.state) is None


def test_darcy_benchmark_resumes_from_its_per_draw_records(tmp_path, monkeypatch):
    """benchmarks/inverse_darcy.py --resume reruns no stored draw and gives the same rows;
    --merge keeps the other methods' rows; other settings are refused."""
    import json
    import types

    import inverse_darcy as darcy

    monkeypatch.setattr(darcy, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr("_common.RESULTS_DIR", tmp_path)
    monkeypatch.setattr(
        darcy.inverse, "make_task", lambda name, **kw: types.SimpleNamespace(num_sensors=7)
    )
    ref = {k: 1.0 for k in ("rhat_max", "ess_min", "ess_median", "seconds")}
    monkeypatch.setattr(darcy, "_reference", lambda task, args, index, store: (ref, True))
    calls = []

    def fake_draw(task, args, index, ref):
        calls.append(index)
        metrics = dict.fromkeys(
            ("reference_rel_l2", "mean_error_in_std", "std_ratio", "coverage90", "seconds"), 1.0
        )
        return {k: {**metrics, "rel_l2": 0.1 * (index + 1)} for k in darcy._expected_keys(args)}

    monkeypatch.setattr(darcy, "run_draw", fake_draw)
    monkeypatch.setattr(darcy, "format_table", lambda rows: "")
    base = ["--tasks", "darcy-inverse", "--draws", "3", "--particles", "8"]
    darcy.main([*base, "--methods", "map"])
    darcy.main([*base, "--methods", "smc-particle,map", "--merge"])
    first = json.loads((tmp_path / "inverse_darcy.json").read_text())
    assert calls == [0, 1, 2] * 2
    darcy.main([*base, "--methods", "smc-particle,map", "--merge", "--resume"])
    assert calls == [0, 1, 2] * 2  # every draw was stored
    again = json.loads((tmp_path / "inverse_darcy.json").read_text())
    assert again["rows"] == first["rows"] and len(again["records"]) == 6
    darcy.main([*base, "--methods", "pigdm", "--merge"])
    merged = json.loads((tmp_path / "inverse_darcy.json").read_text())
    assert {r["method"] for r in merged["rows"]} == {"smc-particle", "map", "pigdm"}
    assert merged["rows"][0]["rel_l2"] == pytest.approx(0.2)  # mean over the three draws
    with pytest.raises(SystemExit, match="other settings"):
        darcy.main([*base, "--methods", "map", "--steps", "50", "--resume"])
    # a learned prior: its own results file, the rows that do not need the exact latent GRF
    darcy.main([*base, "--prior", "grf-a"])
    learned = json.loads((tmp_path / "inverse_darcy_grf-a.json").read_text())
    assert learned["prior"] == "grf-a" and "--prior grf-a" in learned["rerun"]
    assert {r["method"] for r in learned["rows"]} == set(darcy.METHODS) - {"mcmc", "map"}
    with pytest.raises(SystemExit):
        darcy.main([*base, "--prior", "grf-a", "--methods", "smc,map"])
