"""The sparse route of the linear-Gaussian statFEM posterior (sparse Cholesky factor and selected
inversion) against dense linear algebra on small grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from test_statfem_model import dense_parts, make_model

from pdegen.fem import statfem
from pdegen.fem.statfem._selected import SparseCholesky


def _random_spd(n, seed):
    rng = np.random.default_rng(seed)
    T = sp.diags_array([-np.ones(n - 1), 2.5 * np.ones(n), -np.ones(n - 1)], offsets=[-1, 0, 1])
    B = sp.random_array((n, n), density=3.0 / n, rng=rng) + sp.eye_array(n)
    return sp.csc_matrix(B.T @ T @ B + 0.1 * sp.eye_array(n))


@pytest.mark.parametrize("seed", [0, 1])
def test_selected_inversion_matches_the_dense_inverse(seed):
    Q = _random_spd(60, seed)
    C = np.linalg.inv(Q.toarray())
    F = SparseCholesky(Q)
    np.testing.assert_allclose(F.inverse_diagonal(), np.diagonal(C), rtol=1e-10)
    Z = F.selected_inverse()
    r, c = Q.nonzero()  # every entry of Q's pattern is computed
    np.testing.assert_allclose(np.asarray(Z[r, c]).ravel(), C[r, c], rtol=1e-9, atol=1e-12)
    zr, zc = Z.nonzero()
    np.testing.assert_allclose(np.asarray(Z[zr, zc]).ravel(), C[zr, zc], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(F.logdet(), np.linalg.slogdet(Q.toarray())[1], rtol=1e-12)
    # the square root: sample(z) = R z with R R^T = Q^{-1}
    R = F.sample(np.eye(Q.shape[0]))
    np.testing.assert_allclose(R @ R.T, C, rtol=1e-9, atol=1e-12 * np.abs(C).max())
    b = np.arange(Q.shape[0], dtype=float)
    np.testing.assert_allclose(F.solve(b), C @ b, rtol=1e-9)


def test_sparse_cholesky_rejects_indefinite_matrices():
    Q = sp.csc_matrix(np.diag([1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="not symmetric positive definite"):
        SparseCholesky(Q)


def test_sparse_posterior_variance_matches_the_dense_precision_form(getkey):
    model = make_model(n=11, m=10)  # lumped mass, white forcing noise
    x = model.sample_prior(key=getkey())
    y = model.simulate_data(x, num_replicates=2, key=getkey())
    Af, bf, G, H, S = dense_parts(model, "lumped")
    rho = float(model.rho)
    Q0 = Af.T @ np.linalg.solve(G, Af)
    Q = Q0 + y.shape[0] * rho**2 * H.T @ np.linalg.solve(S, H)
    C = np.linalg.inv(Q)
    post = statfem.exact_posterior(model, y)
    np.testing.assert_allclose(
        np.asarray(post.variance(method="selected")), np.diagonal(C), rtol=1e-8
    )
    np.testing.assert_allclose(
        np.asarray(post.variance(method="blocks", block_size=32)), np.diagonal(C), rtol=1e-8
    )
    np.testing.assert_allclose(
        np.asarray(statfem.sparse_prior_variance(model)), np.diagonal(np.linalg.inv(Q0)), rtol=1e-8
    )


def test_sparse_variance_needs_a_diagonal_forcing_covariance():
    model = make_model(n=7, m=5, mass="consistent")
    y = jnp.zeros((1, 5))
    post = statfem.exact_posterior(model, y)
    with pytest.raises(ValueError, match="mass='lumped'"):
        post.variance(method="selected")
    with pytest.raises(ValueError, match="mass='lumped'"):
        statfem.sparse_prior_variance(model)
    with pytest.raises(ValueError, match="method must be"):
        post.variance(method="dense")
    # 'auto' falls back to blocks here
    assert jnp.all(post.variance() > 0)


def test_linear_laplace_preconditioner_is_the_posterior_at_full_rank(getkey):
    model = make_model(n=9, m=6)
    x = model.sample_prior(key=getkey())
    y = model.simulate_data(x, num_replicates=2, key=getkey())
    C = np.asarray(statfem.exact_posterior(model, y).covariance())
    E = jnp.eye(model.dim)
    lr = statfem.laplace_preconditioner(model, y, rank=6, key=getkey())
    P = np.asarray(jax.vmap(lr.preconditioner.apply)(E))
    np.testing.assert_allclose(P, C, rtol=1e-6, atol=1e-9 * np.abs(C).max())
    # rank 3: exact in the kept directions only, never below the posterior (a PSD difference)
    lr3 = statfem.laplace_preconditioner(model, y, rank=3, key=getkey())
    P3 = np.asarray(jax.vmap(lr3.preconditioner.apply)(E))
    assert np.linalg.eigvalsh(0.5 * (P3 + P3.T) - C).min() > -1e-9 * np.abs(C).max()


def test_logabsdet_gradient_by_selected_inversion_and_the_dense_fallback():
    from pdegen import fem

    V = fem.FunctionSpace(fem.unit_square(7), "P1")
    A = fem.stiffness(V) + fem.mass(V, 2.0)  # SPD: selected inversion
    rng = np.random.default_rng(0)
    skew = fem.SparseMatrix(jnp.asarray(rng.normal(size=A.pattern.nnz)), A.pattern)
    for M in (A, A + 0.3 * skew):  # the second is not symmetric: dense inverse
        dense = np.asarray(M.todense())
        g = jax.grad(lambda d, p=M.pattern: statfem.sparse_logabsdet(fem.SparseMatrix(d, p)))(
            M.data
        )
        inv = np.linalg.inv(dense)
        np.testing.assert_allclose(np.asarray(g), inv[M.pattern.cols, M.pattern.rows], rtol=1e-9)
