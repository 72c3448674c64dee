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
