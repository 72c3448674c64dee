"""Random fields, sensors and data sets."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import fem


def test_grf_spectrum_mean_and_reproducibility():
    keys = jax.random.split(jax.random.key(0), 1500)
    f = jax.vmap(lambda k: fem.gaussian_random_field((12, 12), key=k))(keys)
    coefs = jax.vmap(lambda u: jax.scipy.fft.dctn(u, type=2, norm="ortho"))(f)
    exact = fem.grf_mode_std((12, 12))
    emp = np.asarray(coefs.std(0))
    # Standard error of a sample std is about std / sqrt(2 n): allow 5 of them on every mode.
    tol = 5 * exact / np.sqrt(2 * 1500)
    assert np.all(np.abs(emp - exact) <= tol + 1e-12)
    assert abs(float(f.mean())) < 5 * float(f.std()) / np.sqrt(f.size / 20)
    a = fem.gaussian_random_field((12, 12), key=jax.random.key(3))
    assert jnp.array_equal(a, fem.gaussian_random_field((12, 12), key=jax.random.key(3)))
    assert not jnp.allclose(a, fem.gaussian_random_field((12, 12), key=jax.random.key(4)))


def test_grf_on_mesh_is_the_image_in_node_order():
    mesh = fem.rectangle(7, 5)
    img = fem.gaussian_random_field((5, 7), key=jax.random.key(1))
    nodal = fem.gaussian_random_field(mesh, key=jax.random.key(1))
    assert jnp.allclose(mesh.to_image(nodal), img)
    with pytest.raises(ValueError, match="structured grid"):
        fem.gaussian_random_field(fem.l_shaped(1), key=jax.random.key(1))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        fem.gaussian_random_field((5, 5), key=jax.random.key(1), alpha=0.0)


def test_matern_variance_and_correlation():
    mesh = fem.unit_square(33)
    V = fem.FunctionSpace(mesh, "P1")
    ell, sigma = 0.25, 1.5
    u = jax.vmap(lambda k: fem.matern_field(V, key=k, length_scale=ell, sigma=sigma))(
        jax.random.split(jax.random.key(2), 800)
    )
    interior = np.flatnonzero(np.abs(mesh.points - 0.5).max(axis=1) <= 0.15)
    var = float(u[:, interior].var(axis=0).mean())
    assert abs(var / sigma**2 - 1) < 0.15
    # Matérn nu = 1 correlation at distance d: (kappa d) K_1(kappa d), kappa = sqrt(8) / ell.
    from scipy.special import kv

    i = int(np.argmin(np.linalg.norm(mesh.points - [0.4, 0.5], axis=1)))
    j = int(np.argmin(np.linalg.norm(mesh.points - [0.4 + ell, 0.5], axis=1)))
    d = np.linalg.norm(mesh.points[i] - mesh.points[j])
    kd = np.sqrt(8) / ell * d
    rho = float(np.corrcoef(u[:, i], u[:, j])[0, 1])
    assert abs(rho - kd * kv(1, kd)) < 0.1


def test_random_sensors_and_observation(getkey):
    mesh = fem.unit_square(20)
    k = getkey()
    s1 = fem.random_sensors(mesh, key=k, fraction=0.03)
    assert s1.size == 12 and np.array_equal(s1, fem.random_sensors(mesh, key=k, fraction=0.03))
    s2 = fem.random_sensors(mesh, key=k, count=30, interior=True)
    assert not np.isin(s2, mesh.boundary_points).any()
    V = fem.FunctionSpace(mesh, "P1")
    H = fem.node_observation(V, s1)
    u = jax.random.normal(getkey(), (V.ndofs,))
    assert jnp.array_equal(H @ u, u[s1])
    y = fem.add_noise(H @ u, 0.1, key=getkey())
    e = fem.misfit_energy(u, H, y, 0.1)
    assert jnp.allclose(e, 0.5 * jnp.sum((y - u[s1]) ** 2) / 0.01)
    with pytest.raises(ValueError, match="fraction must lie in"):
        fem.random_sensors(mesh, key=k, fraction=1.5)
    with pytest.raises(ValueError, match="exactly one of"):
        fem.random_sensors(mesh, key=k)
    with pytest.raises(ValueError, match=r"y must have shape \(12,\)"):
        fem.misfit_energy(u, H, y[:-1], 0.1)


@pytest.mark.parametrize("task", ["poisson", "helmholtz", "darcy"])
def test_dataset_pairs_satisfy_the_pde(task):
    fields, meta = fem.generate_dataset(
        task, 3, key=jax.random.key(0), grid=12, progress=False, dtype=np.float64
    )
    assert fields.shape == (3, 2, 12, 12)
    t = fem.PDETask(task, 12)
    for a_img, u_img in fields:
        a, u = t.mesh.from_image(jnp.asarray(a_img)), t.mesh.from_image(jnp.asarray(u_img))
        assert float(t.residual(a, u)) < 1e-10
    assert meta["max_relative_residual"] < 1e-10
    if task == "darcy":
        assert set(np.unique(fields[:, 0])) <= {3.0, 12.0}


def test_poisson_pairs_against_an_independent_scipy_solve():
    import scipy.sparse.linalg as spla
    import skfem
    from skfem.models.poisson import laplace, mass

    fields, _ = fem.generate_dataset(
        "poisson", 2, key=jax.random.key(1), grid=10, progress=False, dtype=np.float64
    )
    mesh = fem.unit_square(10)
    basis = skfem.Basis(mesh.skfem, skfem.ElementTriP1(), intorder=3)
    K, M = laplace.assemble(basis), mass.assemble(basis)
    for a_img, u_img in fields:
        a = a_img.ravel()
        u = skfem.solve(*skfem.condense(K, M @ (-a), D=basis.get_dofs()))
        assert np.allclose(u, u_img.ravel(), atol=1e-12)
    del spla


def test_save_load_round_trip_and_corruption(tmp_path):
    fields, meta = fem.generate_dataset("poisson", 2, key=jax.random.key(0), grid=8, progress=False)
    path = str(tmp_path / "d.npz")
    fem.save_dataset(path, fields, meta)
    back, meta2 = fem.load_dataset(path)
    assert np.array_equal(back, fields) and meta2 == json.load(open(path[:-4] + ".json"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    with open(path, "wb") as fh:
        fh.write(b"not a zip file")
    with pytest.raises(ValueError, match="not a (readable )?pdegen data set"):
        fem.load_dataset(path)
    with pytest.raises(FileNotFoundError):
        fem.load_dataset(str(tmp_path / "missing.npz"))


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        fem.generate_dataset("heat", 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fem.generate_dataset("poisson", 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="grid must be an integer >= 3"):
        fem.generate_dataset("poisson", 2, key=jax.random.key(0), grid=2)


def test_sharded_generation_equals_single_device(two_cpu_devices_env):
    code = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from pdegen import fem
        assert jax.device_count() == 2, jax.devices()
        for task in ("poisson", "helmholtz"):  # cg and bicgstab
            key = jax.random.key(7)
            sharded, meta = fem.generate_dataset(task, 5, key=key, grid=10, batch_size=4,
                                                 progress=False, dtype=np.float64)
            single, _ = fem.generate_dataset(task, 5, key=key, grid=10, batch_size=3, progress=False,
                                             dtype=np.float64, devices=jax.devices()[:1])
            assert meta["devices"] == 2, meta
            err = np.abs(sharded - single).max() / np.abs(single).max()
            assert err < 1e-8, (task, err)
        print("OK")
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=two_cpu_devices_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
