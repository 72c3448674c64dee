"""The honest benchmark suite: rotated-shifted instances, runtime-to-target data, rotation
invariance, and the benchmark script's quick mode."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pdegen.optimise import (
    TEST_FUNCTIONS,
    ecdf,
    instance_family,
    minimise,
    runtimes_to_targets,
    sample_instances,
)


@pytest.mark.parametrize("name", TEST_FUNCTIONS)
@pytest.mark.parametrize("kind", ["rotated-shifted", "separable"])
def test_instances_have_their_minimum_at_the_shift(name, kind):
    family = instance_family(name, 4, kind=kind)
    inst = sample_instances(family, 5, key=jr.key(0))
    rot = np.asarray(inst.rotation)
    np.testing.assert_allclose(
        np.einsum("nij,nkj->nik", rot, rot), np.broadcast_to(np.eye(4), rot.shape), atol=1e-12
    )
    if kind == "separable":
        assert np.all(rot == np.eye(4))
    shift = np.asarray(inst.shift)
    assert np.all(shift > family.lower) and np.all(shift < family.upper)
    # the shifts differ per coordinate (no equal-coordinate minimiser)
    assert np.all(np.ptp(shift, axis=1) > 0)
    values = jax.vmap(family.fn)(inst.shift, inst)
    np.testing.assert_allclose(values, family.minimum, atol=1e-9)
    pert = inst.shift[:, None, :] + 1e-2 * jr.normal(jr.key(1), (5, 16, 4), dtype=inst.shift.dtype)
    nearby = jax.vmap(lambda p, i: jax.vmap(lambda x: family.fn(x, i))(p))(pert, inst)
    assert float(jnp.min(nearby)) >= family.minimum - 1e-9


def test_runtimes_to_targets_and_ecdf_against_a_hand_count():
    evals = np.array([1, 10, 100, 1000])
    best = np.array([[5.0, 0.5, 0.05, 0.0005], [5.0, 5.0, 5.0, 0.5]])
    rt = runtimes_to_targets(evals, best, 0.0, targets=(1.0, 1e-3))
    np.testing.assert_array_equal(rt, [[10, 1000], [1000, np.inf]])
    np.testing.assert_allclose(ecdf(rt, [1, 10, 999, 1000]), [0, 0.25, 0.25, 0.75])


def test_rotation_invariance_of_the_methods_that_claim_it():
    """A rotated instance of a separable, ill-conditioned function (ellipsoid, condition 1e6)
    is solved by IPOP-CMA-ES and projected L-BFGS at the same rate as the unrotated one (the box
    can break L-BFGS's invariance only where the minimiser is near it); the coordinate-wise search,
    which does not claim invariance, solves only the unrotated one (the test can tell)."""
    rates = {}
    for kind in ("separable", "rotated-shifted"):
        family = instance_family("ellipsoid", 3, kind=kind)
        inst = sample_instances(family, 6, key=jr.key(0))
        for method in ("cmaes", "lbfgs", "coordinate"):
            res = minimise(
                family.fn,
                family.domain,
                key=jr.split(jr.key(1), 6),
                task=inst,
                method=method,
                max_evaluations=2500,
            )
            rates[kind, method] = float(np.mean(res.value - family.minimum < 1e-3))
    assert rates["separable", "cmaes"] == rates["rotated-shifted", "cmaes"] == 1.0, rates
    assert rates["separable", "lbfgs"] == rates["rotated-shifted", "lbfgs"] == 1.0, rates
    assert rates["separable", "coordinate"] == 1.0 and rates["rotated-shifted", "coordinate"] == 0.0


def test_task_must_have_one_entry_per_key():
    family = instance_family("rastrigin", 2)
    inst = sample_instances(family, 3, key=jr.key(0))
    with pytest.raises(ValueError, match="leading axis of 2"):
        minimise(
            family.fn,
            family.domain,
            key=jr.split(jr.key(0), 2),
            task=inst,
            method="random",
            max_evaluations=10,
        )


def test_benchmark_quick_mode_writes_rows_and_ecdf(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "optimise.py"
    spec = importlib.util.spec_from_file_location("bench_optimise", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "optimise.json"
    argv = ["--quick", "--functions", "rastrigin", "--methods", "random", "coordinate"]
    assert bench.main([*argv, "--instances", "3", "--budget", "300", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["instance_type"], r["method"]) for r in rows} == {
        (k, m) for k in ("rotated-shifted", "separable") for m in ("random", "coordinate")
    }
    for r in rows:
        assert r["evaluations_used"] <= r["budget"] == 300 and r["instances"] == 3
        assert len(r["runtimes_to_targets"]) == 3 and r["inductive_bias"]
    assert (tmp_path / "optimise_ecdf.png").is_file()


def test_full_frame_follows_the_principal_axes_of_the_sample_cloud():
    """On a rotated valley (a quadratic with curvatures 1 and 400 along axes at 45 degrees to the
    box's), the full frame's longest axis after annealing lies within 25 degrees of the valley
    (a box axis is 45 degrees off), its shortest across it, and its axes are orthogonal; the
    diagonal frame can only stretch the box's axes."""
    angle = np.pi / 4
    valley = np.array([np.cos(angle), np.sin(angle)])
    across = np.array([-np.sin(angle), np.cos(angle)])

    def f(x):
        return (x @ valley) ** 2 + 400.0 * (x @ across) ** 2

    common = dict(
        key=jr.split(jr.key(0), 4),
        max_evaluations=3000,
        num_temperatures=3,
        final_temperature_ratio=1e-2,
        num_steps=8,
        batch_size=32,
        width=32,
        num_initial=64,
        refine_steps=0,
        return_extras=True,
    )
    domain = (-2 * np.ones(2), 2 * np.ones(2))
    _, extras = minimise(f, domain, full_frame=True, **common)
    for S in extras["frame_scale"]:
        assert S.shape == (2, 2)
        widths = np.linalg.norm(S, axis=0)
        axes = S / widths[None, :]
        assert abs(axes[:, 0] @ axes[:, 1]) < 1e-8  # orthogonal
        longest, shortest = axes[:, np.argmax(widths)], axes[:, np.argmin(widths)]
        assert abs(longest @ valley) > 0.9 and abs(shortest @ across) > 0.9
        # longer along the valley (the exact Boltzmann clouds: 20x; this short run resolves 1.3-3.4x)
        assert widths.max() > 1.2 * widths.min()
    _, extras = minimise(f, domain, **common)
    assert extras["frame_scale"].shape == (4, 2)
