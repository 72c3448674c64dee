"""The user's own inverse problem: any mesh, sensors, data and prior through sample_posterior,
checked against the exact Gaussian posterior, finite differences and the benchmark tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import meshio
import numpy as np
import pytest

from pdegen import fem, inverse


def _interior_points(mesh, count, seed):
    """Random points inside the mesh (cell barycentric combinations), away from the boundary."""
    rng = np.random.default_rng(seed)
    pts = np.asarray(mesh.points)
    boundary = np.zeros(mesh.npoints, bool)
    boundary[mesh.boundary_points] = True
    cells = np.asarray(mesh.cells)[~boundary[mesh.cells].any(1)]
    chosen = cells[rng.choice(cells.shape[0], count, replace=False)]
    w = rng.dirichlet(np.ones(3), count)
    return np.einsum("mk,mkd->md", w, pts[chosen])


def _graded_mesh(n=17, seed=0):
    """A non-uniform unstructured mesh of the unit square: jittered, graded points, Delaunay."""
    rng = np.random.default_rng(seed)
    g = np.linspace(0.0, 1.0, n)
    X, Y = np.meshgrid(g, g)
    p = np.stack([X.ravel(), Y.ravel()], 1)
    inner = (p > 0).all(1) & (p < 1).all(1)
    p[inner] += rng.uniform(-0.3, 0.3, (inner.sum(), 2)) / (n - 1)
    return fem.delaunay(p ** np.array([1.6, 1.0]))


def _problem(mesh, *, num_sensors, noise_rel=0.01, seed=0, length_scale=0.4):
    V = fem.FunctionSpace(mesh, "P1")
    prior = inverse.matern_prior(V, length_scale=length_scale)
    truth = prior.sample(jax.random.key(seed), 1)[0]
    points = _interior_points(mesh, num_sensors, seed)
    forward = inverse.pde_forward(fem.Source(fem.Poisson(V)), points)
    clean = forward(truth)
    noise = noise_rel * float(jnp.sqrt(jnp.mean(clean**2)))
    y = clean + noise * jax.random.normal(jax.random.key(seed + 1), clean.shape)
    return V, prior, truth, points, inverse.gaussian_likelihood(forward, y, noise_std=noise)


@pytest.fixture(scope="module")
def lshape_from_gmsh(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh") / "lshape.msh"
    fem.write_mesh(path, fem.l_shaped(3))
    assert "$MeshFormat" in path.read_text()[:100]  # gmsh, not another format with the same suffix
    return fem.read_mesh(path)


@pytest.mark.parametrize("which", ["lshape", "graded"])
def test_tmpd_matches_exact_posterior_on_mesh(which, lshape_from_gmsh):
    mesh = lshape_from_gmsh if which == "lshape" else _graded_mesh()
    V, prior, truth, points, lik = _problem(mesh, num_sensors=12)
    assert lik.linear
    exact = inverse.sample_posterior(
        prior, lik, method="bayes", key=jax.random.key(0), num_samples=4
    )
    n = 128
    post = inverse.sample_posterior(
        prior,
        lik,
        method=inverse.TMPD(),
        key=jax.random.key(1),
        num_samples=n,
        num_steps=100,
        batch_size=64,
    )
    # Mean: the sampling error of n samples is std / sqrt(n) per node; allow for the sampler's bias.
    z = (post.mean - exact.mean) / exact.std
    assert float(jnp.sqrt(jnp.mean(z**2))) < 2.0 / np.sqrt(n)
    # Covariance: pointwise variances and a few off-diagonal entries against the exact ones.
    ratio = jnp.mean(post.std**2) / jnp.mean(exact.std**2)
    assert 0.85 < float(ratio) < 1.15
    centred = post.samples - post.mean[None]
    exact_samples = inverse.exact_posterior(
        prior, lik, key=jax.random.key(2), num_samples=4000
    ).samples
    ce = exact_samples - exact_samples.mean(0)[None]
    idx = np.array([3, 40, 90, 150, 200])
    cov_s = centred[:, idx].T @ centred[:, idx] / (n - 1)
    cov_e = ce[:, idx].T @ ce[:, idx] / (ce.shape[0] - 1)
    assert float(jnp.linalg.norm(cov_s - cov_e) / jnp.linalg.norm(cov_e)) < 0.35
    # The exact posterior std is smallest at the sensors (their nearest nodes).
    nodes = np.argmin(((points[:, None] - np.asarray(mesh.points)[None]) ** 2).sum(-1), axis=1)
    assert float(jnp.mean(exact.std[nodes])) < 0.8 * float(jnp.mean(exact.std))
    assert float(jnp.mean(post.std[nodes])) < 0.8 * float(jnp.mean(post.std))
    # MAP is the posterior mean for a linear-Gaussian problem.
    map_post = inverse.sample_posterior(prior, lik, method="map", key=jax.random.key(0))
    assert float(jnp.linalg.norm(map_post.mean - exact.mean) / jnp.linalg.norm(exact.mean)) < 1e-4


@pytest.mark.parametrize("method", [inverse.PiGDM(), inverse.DPS()])
def test_pigdm_and_dps_reduce_the_misfit(method, lshape_from_gmsh):
    V, prior, truth, points, lik = _problem(lshape_from_gmsh, num_sensors=12, seed=3)
    unguided = inverse.sample_posterior(
        prior, lik, method="unguided", key=jax.random.key(0), num_samples=16, num_steps=100
    )
    post = inverse.sample_posterior(
        prior, lik, method=method, key=jax.random.key(0), num_samples=16, num_steps=100
    )
    before, after = lik.misfit(unguided.mean), lik.misfit(post.mean)
    assert after < 0.2 * before, (before, after)
    m = inverse.field_metrics(post, truth, likelihood=lik)
    assert m["data_misfit"] == pytest.approx(after)
    assert np.isfinite(m["rel_l2"]) and 0 <= m["coverage90"] <= 1


def test_grid_transfer_reproduces_linear_images_on_the_lshape(lshape_from_gmsh):
    """The transfer behind learned priors on meshes interpolates: a linear function of the image
    is reproduced at the mesh nodes."""
    mesh = lshape_from_gmsh
    T = inverse.grid_transfer(32, mesh)
    gx = np.linspace(-1, 1, 32)
    X, Y = np.meshgrid(gx, gx)
    img = 2.0 * X - 3.0 * Y
    pts = np.asarray(mesh.points)
    np.testing.assert_allclose(
        np.asarray(T @ jnp.asarray(img.ravel())), 2 * pts[:, 0] - 3 * pts[:, 1], atol=1e-12
    )


def test_learned_prior_on_a_long_domain_keeps_square_pixels():
    """On a 2:1 rectangle the image's box is 2 x 2 (square pixels), not the 2 x 1 bounding box,
    so the prior's correlations are not stretched along x."""
    from pdegen import models

    mesh = fem.rectangle(9, 5, x1=2.0)
    prior = inverse.learned_prior(models.load_pretrained("grf-a"), mesh, grid=8)
    g = np.linspace(0.0, 2.0, 8)
    X, Y = np.meshgrid(g, g)
    pts = np.asarray(mesh.points)
    for img, want in ((X, pts[:, 0]), (Y, pts[:, 1])):
        got = prior.transfer @ jnp.asarray(img.ravel())
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-12)


# slow: tutorial 07 runs the same path (a learned prior on a user's mesh, PiGDM, the misfit of
# the posterior mean far below the prior mean's) in the fast suite
@pytest.mark.slow
def test_learned_prior_on_lshape_fits_the_data(lshape_from_gmsh):
    from pdegen import models

    mesh = lshape_from_gmsh
    V = fem.FunctionSpace(mesh, "P1")
    prior = inverse.learned_prior(models.load_pretrained("poisson-joint-32"), mesh, channel="a")
    assert prior.size == mesh.npoints and not prior.gaussian
    pts = np.asarray(mesh.points)
    # Data: a smooth source observed through the Poisson solve at 10 sensors, 1% noise.
    truth = jnp.asarray(0.5 * np.sin(2 * pts[:, 0]) * np.cos(1.5 * pts[:, 1]))
    points = _interior_points(mesh, 10, 5)
    forward = inverse.pde_forward(fem.Source(fem.Poisson(V)), points)
    clean = forward(truth)
    noise = 0.01 * float(jnp.sqrt(jnp.mean(clean**2)))
    lik = inverse.gaussian_likelihood(forward, clean, noise_std=noise)
    post = inverse.sample_posterior(
        prior, lik, method="pigdm", key=jax.random.key(0), num_samples=2, num_steps=25
    )
    assert (
        lik.misfit(post.mean) < 3.0 < lik.misfit(prior.offset)
    )  # the prior's mean field misses the data


def test_darcy_on_unstructured_mesh_map_dps_and_gradient():
    mesh = _graded_mesh(9, seed=1)
    V = fem.FunctionSpace(mesh, "P1")
    param = fem.LogPermeability(fem.Darcy(V), f=1.0)
    prior = inverse.matern_prior(V, length_scale=0.4, sigma=0.5)
    truth = prior.sample(jax.random.key(7), 1)[0]
    points = _interior_points(mesh, 8, 2)
    forward = inverse.pde_forward(param, points)
    clean = forward(truth)
    noise = 0.01 * float(jnp.sqrt(jnp.mean(clean**2)))
    lik = inverse.gaussian_likelihood(forward, clean, noise_std=noise)
    assert not lik.linear
    # Gradient of the likelihood through the FEM solve against central differences.
    a0 = truth + 0.3
    g = jax.grad(lik.energy)(a0)
    direction = jax.random.normal(jax.random.key(3), a0.shape)
    h = 1e-5
    fd = (lik.energy(a0 + h * direction) - lik.energy(a0 - h * direction)) / (2 * h)
    assert float(jnp.abs(fd - g @ direction)) < 1e-6 * max(abs(float(fd)), 1.0)
    with pytest.raises(ValueError, match="linear"):
        inverse.sample_posterior(prior, lik, method="bayes", key=jax.random.key(0))
    map_post = inverse.sample_posterior(
        prior, lik, method=inverse.MAP(steps=200), key=jax.random.key(0)
    )
    assert lik.misfit(map_post.mean) < 3.0
    dps = inverse.sample_posterior(
        prior, lik, method="dps", key=jax.random.key(0), num_samples=2, num_steps=20
    )
    prior_fit = lik.misfit(prior.offset)
    assert np.all(np.isfinite(np.asarray(dps.samples))) and lik.misfit(dps.mean) < prior_fit
    # TMPD, the default method, needs only reverse-mode derivatives of the FEM solve
    tmpd = inverse.sample_posterior(prior, lik, key=jax.random.key(0), num_samples=2, num_steps=20)
    assert tmpd.method == "tmpd"
    assert np.all(np.isfinite(np.asarray(tmpd.samples))) and lik.misfit(tmpd.mean) < prior_fit


def test_region_average_and_full_observation():
    V = fem.FunctionSpace(fem.unit_square(9), "P1")
    H = fem.region_average(
        V, [lambda x: x[0] < 0.5, lambda x: (x[0] - 0.5) ** 2 + (x[1] - 0.5) ** 2 < 0.3**2]
    )
    u = V.interpolate(lambda x: 1.0 + 2.0 * x[0])
    avg = np.asarray(H @ u)
    assert avg[0] == pytest.approx(1.5, rel=1e-10)  # mean of 1 + 2x over x < 1/2
    assert avg[1] == pytest.approx(
        2.0, rel=2e-2
    )  # symmetric about x = 1/2 (up to the quadrature of the disc)
    with pytest.raises(ValueError, match="region 0"):
        fem.region_average(V, [lambda x: x[0] > 2.0])
    identity = fem.full_observation(V)
    np.testing.assert_array_equal(np.asarray(identity @ u), np.asarray(u))


def test_benchmark_tasks_as_prior_likelihood_pairs():
    """The tasks through the general API give the task-mode exact posterior (mean and std)."""
    for name in ("poisson-inverse", "poisson-forward"):
        task = inverse.make_task(name, grid=12)
        prior, lik = inverse.task_problem(task)
        key = jax.random.key(0)
        old = inverse.sample_posterior(
            inverse.gaussian_prior(12), task, method="bayes", key=key, num_samples=4
        )
        new = inverse.sample_posterior(prior, lik, method="bayes", key=key, num_samples=4)
        np.testing.assert_allclose(np.asarray(new.mean), np.asarray(old.mean[0]).ravel(), atol=1e-9)
        np.testing.assert_allclose(np.asarray(new.std), np.asarray(old.std[0]).ravel(), atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["poisson-inverse", "helmholtz-inverse", "poisson-forward"])
def test_benchmark_tasks_tmpd_as_before(name):
    """TMPD through the general API reproduces the task-mode rel. L2 of ``a`` within the spread."""
    task = inverse.make_task(name, grid=32)
    prior, lik = inverse.task_problem(task)
    key = jax.random.key(0)
    old = inverse.sample_posterior(
        inverse.gaussian_prior(32), task, method="tmpd", key=key, num_samples=16, num_steps=100
    )
    new = inverse.sample_posterior(
        prior, lik, method="tmpd", key=key, num_samples=16, num_steps=100
    )
    truth = task.truth[0].ravel()
    e_old = float(inverse.relative_l2(old.mean[0].ravel(), truth))
    e_new = float(inverse.relative_l2(new.mean, truth))
    spread = float(jnp.sqrt(jnp.mean(new.std**2) / 16 / jnp.mean(truth**2)))
    assert abs(e_old - e_new) < 3 * spread + 1e-6, (e_old, e_new, spread)


@pytest.fixture(scope="module")
def setup():
    mesh = fem.l_shaped(2)
    V = fem.FunctionSpace(mesh, "P1")
    return mesh, V, fem.Source(fem.Poisson(V))


class TestBadInput:
    def test_sensors_outside_the_mesh(self, setup):
        mesh, V, param = setup
        with pytest.raises(ValueError, match="outside"):
            inverse.pde_forward(
                param, np.array([[0.5, 0.5], [-0.5, -0.5]])
            )  # (0.5, 0.5) is in the cut-out quadrant

    def test_data_length_and_nan(self, setup):
        mesh, V, param = setup
        fwd = inverse.pde_forward(param, np.array([[-0.5, -0.5], [-0.5, 0.5]]))
        with pytest.raises(ValueError, match="2"):
            inverse.gaussian_likelihood(fwd, np.zeros(3), noise_std=0.1)
        with pytest.raises(ValueError, match="NaN"):
            inverse.gaussian_likelihood(fwd, np.array([1.0, np.nan]), noise_std=0.1)
        with pytest.raises(ValueError, match="exactly one"):
            inverse.gaussian_likelihood(fwd, np.zeros(2))
        with pytest.raises(ValueError, match="positive definite"):
            inverse.gaussian_likelihood(
                fwd, np.zeros(2), noise_cov=np.array([[1.0, 2.0], [2.0, 1.0]])
            )
        with pytest.raises(ValueError, match=r"one per datum \(2,\)"):
            inverse.gaussian_likelihood(fwd, np.zeros(2), noise_std=np.ones(3))
        with pytest.raises(ValueError, match="noise_std must be > 0"):
            inverse.gaussian_likelihood(fwd, np.zeros(2), noise_std=np.array([0.1, 0.0]))

    def test_arguments_checked_before_any_work(self, setup):
        mesh, V, param = setup
        with pytest.raises(ValueError, match=r"mean must be a number or nodal values"):
            inverse.matern_prior(V, length_scale=0.3, mean=np.zeros(3))
        with pytest.raises(ValueError, match="variant"):
            inverse.TMPD("foo")
        with pytest.raises(ValueError, match="steps must be a positive int"):
            inverse.MAP(steps=0)
        prior = inverse.matern_prior(V, length_scale=0.5)
        fwd = inverse.pde_forward(param, np.array([[-0.5, -0.5], [-0.5, 0.5]]))
        lik = inverse.gaussian_likelihood(fwd, np.zeros(2), noise_std=0.1)
        with pytest.raises(TypeError, match=r"jax.random.key\(seed\)"):
            inverse.sample_posterior(prior, lik, method="bayes", key=0)
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            inverse.sample_posterior(
                prior, lik, method="pigdm", key=jax.random.key(0), num_samples=2, batch_size=0
            )
        post = inverse.sample_posterior(
            prior, lik, method="bayes", key=jax.random.key(0), num_samples=np.int64(3)
        )
        assert post.samples.shape == (3, V.ndofs)

    def test_impedance_data_from_sensor_points(self):
        V = fem.FunctionSpace(fem.unit_square(6), "P1")
        points = np.array([[0.3, 0.4], [0.6, 0.7], [0.5, 0.2]])
        fwd = inverse.pde_forward(fem.Source(fem.Helmholtz(V, boundary="impedance"), k=3.0), points)
        y = fwd(jnp.ones(V.ndofs))
        assert y.shape == (6,)  # [Re(H u), Im(H u)]
        lik = inverse.gaussian_likelihood(fwd, y, noise_std=0.01)
        assert float(lik.misfit(jnp.ones(V.ndofs))) < 1e-10

    def test_noise_per_datum_is_a_diagonal_covariance(self, setup):
        mesh, V, param = setup
        fwd = inverse.pde_forward(param, np.array([[-0.5, -0.5], [-0.5, 0.5]]))
        y = np.array([0.3, -0.2])
        per = inverse.gaussian_likelihood(fwd, y, noise_std=np.array([0.1, 0.4]))
        cov = inverse.gaussian_likelihood(fwd, y, noise_cov=np.diag([0.01, 0.16]))
        a = jnp.linspace(0.0, 1.0, V.ndofs)
        assert float(per.energy(a)) == pytest.approx(float(cov.energy(a)), rel=1e-12)

    def test_prior_that_does_not_fit_the_mesh(self, setup):
        mesh, V, param = setup
        lik = inverse.gaussian_likelihood(
            inverse.pde_forward(param, np.array([[-0.5, -0.5]])), np.zeros(1), noise_std=0.1
        )
        other = inverse.matern_prior(fem.FunctionSpace(fem.unit_square(5), "P1"), length_scale=0.3)
        with pytest.raises(ValueError, match="nodal values"):
            inverse.sample_posterior(other, lik, method="tmpd", key=jax.random.key(0))
        with pytest.raises(ValueError, match="does not cover the mesh"):
            inverse.grid_transfer(32, mesh, box=(0.0, 1.0, 0.0, 1.0))

    def test_mixed_cell_types(self, tmp_path):
        pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0]], float)
        m = meshio.Mesh(
            pts,
            [("triangle", np.array([[0, 1, 2], [0, 2, 3]])), ("quad", np.array([[1, 4, 5, 2]]))],
        )
        path = tmp_path / "mixed.vtu"
        meshio.write(path, m)
        with pytest.raises(ValueError, match="mixes triangles and quads"):
            fem.read_mesh(path)

    def test_unknown_method(self, setup):
        mesh, V, param = setup
        lik = inverse.gaussian_likelihood(
            inverse.pde_forward(param, np.array([[-0.5, -0.5]])), np.zeros(1), noise_std=0.1
        )
        prior = inverse.matern_prior(V, length_scale=0.3)
        with pytest.raises(ValueError, match="method must be"):
            inverse.sample_posterior(prior, lik, method="magic", key=jax.random.key(0))


def test_task_mode_takes_a_statfem_likelihood_by_keyword():
    """``likelihood=`` is task mode's statFEM observation model, not the second argument."""
    task = inverse.make_task("poisson-inverse", grid=12, discrepancy=0.3)
    lik = inverse.default_likelihood(task)
    prior = inverse.gaussian_prior(12)
    post = inverse.sample_posterior(
        prior, task, method="bayes", likelihood=lik, key=jax.random.key(0), num_samples=2
    )
    plain = inverse.sample_posterior(
        prior, task, method="bayes", key=jax.random.key(0), num_samples=2
    )
    assert np.all(np.isfinite(np.asarray(post.mean)))
    assert (
        float(jnp.max(jnp.abs(post.mean - plain.mean))) > 0
    )  # the model error changes the posterior
