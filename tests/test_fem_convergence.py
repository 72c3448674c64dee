"""Fitted convergence rates of pdegen.fem against manufactured solutions."""

import jax.numpy as jnp
import numpy as np
import pytest

from pdegen import fem

PI = np.pi
ELEMENTS = [("P1", "triangle", 1), ("P2", "triangle", 2), ("Q1", "quad", 1)]
# Nodes per side of the meshes in a refinement study (P2 converges fast enough on coarser ones).
SIZES = {"P1": (9, 17, 33), "P2": (5, 9, 17), "Q1": (9, 17, 33)}


def _rate(hs, errs):
    return np.polyfit(np.log(np.asarray(hs)), np.log(np.asarray(errs)), 1)[0]


# u = sin(pi x) cos(pi y) + x + 1 with kappa = 1 + x^2 y: nonzero Dirichlet data.
def _u(x):
    return jnp.sin(PI * x[0]) * jnp.cos(PI * x[1]) + x[0] + 1.0


def _grad_u(x):
    return jnp.stack([PI * jnp.cos(PI * x[0]) * jnp.cos(PI * x[1]) + 1.0,
                      -PI * jnp.sin(PI * x[0]) * jnp.sin(PI * x[1])])


def _kappa(x):
    return 1.0 + x[0] ** 2 * x[1]


def _f(x):
    # -div(kappa grad u) = -(kappa_x u_x + kappa_y u_y) - kappa Lap(u)
    g = _grad_u(x)
    lap = -2.0 * PI**2 * jnp.sin(PI * x[0]) * jnp.cos(PI * x[1])
    return -(2.0 * x[0] * x[1] * g[0] + x[0] ** 2 * g[1]) - _kappa(x) * lap


@pytest.mark.parametrize("element,cell_type,p", ELEMENTS)
def test_poisson_variable_coefficient_rates(element, cell_type, p):
    hs, l2s, h1s = [], [], []
    for n in (5, 9, 17):
        V = fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)
        u = fem.Poisson(V, dirichlet=_u, method="direct").solve(kappa=_kappa, f=_f)
        l2, h1 = V.errors(u, _u, _grad_u)
        hs.append(V.mesh.h)
        l2s.append(float(l2))
        h1s.append(float(h1))
    assert abs(_rate(hs, l2s) - (p + 1)) < 0.1, (hs, l2s)
    assert abs(_rate(hs, h1s) - p) < 0.1, (hs, h1s)


# Real Dirichlet Helmholtz with contrast q: -Lap u - k^2 (1+q) u = f.
K_REAL = 3.0


def _q(x):
    return 0.5 * x[0] * x[1]


def _uh(x):
    return jnp.sin(PI * x[0]) * jnp.sin(2.0 * PI * x[1]) + x[1]


def _grad_uh(x):
    return jnp.stack([PI * jnp.cos(PI * x[0]) * jnp.sin(2.0 * PI * x[1]),
                      2.0 * PI * jnp.sin(PI * x[0]) * jnp.cos(2.0 * PI * x[1]) + 1.0])


def _fh(x):
    lap = -5.0 * PI**2 * jnp.sin(PI * x[0]) * jnp.sin(2.0 * PI * x[1])
    return -lap - K_REAL**2 * (1.0 + _q(x)) * _uh(x)


@pytest.mark.parametrize("element,cell_type,p", ELEMENTS)
def test_helmholtz_dirichlet_contrast_rates(element, cell_type, p):
    hs, l2s, h1s = [], [], []
    for n in SIZES[element]:
        V = fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)
        u = fem.Helmholtz(V, dirichlet=_uh, method="direct").solve(k=K_REAL, q=_q, f=_fh)
        l2, h1 = V.errors(u, _uh, _grad_uh)
        hs.append(V.mesh.h)
        l2s.append(float(l2))
        h1s.append(float(h1))
    assert abs(_rate(hs, l2s) - (p + 1)) < 0.1, (hs, l2s)
    assert abs(_rate(hs, h1s) - p) < 0.1, (hs, h1s)


# Complex impedance Helmholtz: plane wave u = exp(i k d.x), f = 0, h = du/dn - i k u.
K_IMP = 4.0
D = np.array([np.cos(0.3), np.sin(0.3)])


def _uw(x):
    phase = (D[0] * x[0] + D[1] * x[1]).astype(jnp.complex128)
    return jnp.exp(1j * K_IMP * phase)


def _grad_uw(x):
    u = _uw(x)
    return jnp.stack([1j * K_IMP * D[0] * u, 1j * K_IMP * D[1] * u])


def _hw(x, normal):
    g = _grad_uw(x)
    normal = normal.astype(jnp.complex128)
    return g[0] * normal[0] + g[1] * normal[1] - 1j * K_IMP * _uw(x)


@pytest.mark.parametrize("element,cell_type,p", ELEMENTS)
def test_helmholtz_impedance_plane_wave_rates(element, cell_type, p):
    hs, l2s, h1s = [], [], []
    for n in SIZES[element]:
        V = fem.FunctionSpace(fem.unit_square(n, cell_type=cell_type), element)
        u = fem.Helmholtz(V, boundary="impedance", method="direct").solve(k=K_IMP, f=0.0, h=_hw)
        assert jnp.iscomplexobj(u)
        l2, h1 = V.errors(u, _uw, _grad_uw)
        hs.append(V.mesh.h)
        l2s.append(float(l2))
        h1s.append(float(h1))
    assert abs(_rate(hs, l2s) - (p + 1)) < 0.1, (hs, l2s)
    assert abs(_rate(hs, h1s) - p) < 0.1, (hs, h1s)


def _polar(x):
    """Radius and the angle from the positive y axis, in [0, 3 pi / 2] on the L-shaped domain."""
    r = jnp.sqrt(x[0] ** 2 + x[1] ** 2)
    phi = jnp.mod(jnp.arctan2(x[1], x[0]) - PI / 2.0, 2.0 * PI)
    return r, phi


def _sing(x):
    r, th = _polar(x)
    return r ** (2.0 / 3.0) * jnp.sin(2.0 * th / 3.0)


def _grad_sing(x):
    r, th = _polar(x)
    r = jnp.maximum(r, 1e-300)
    ur = (2.0 / 3.0) * r ** (-1.0 / 3.0) * jnp.sin(2.0 * th / 3.0)
    ut = (2.0 / 3.0) * r ** (-1.0 / 3.0) * jnp.cos(2.0 * th / 3.0)  # (1/r) du/dtheta
    theta = th + PI / 2.0  # the usual polar angle
    return jnp.stack([ur * jnp.cos(theta) - ut * jnp.sin(theta),
                      ur * jnp.sin(theta) + ut * jnp.cos(theta)])


def test_l_shaped_singular_solution_rates():
    """Corner singularity r^(2/3): with uniform refinement H1 rate 2/3 and L2 rate 4/3.

    Tolerances: 0.1 on the H1 rate, 0.15 on the L2 rate (pre-asymptotic on coarse meshes).
    """
    xy = fem.l_shaped(0).points
    assert not np.any((xy[:, 0] > 0) & (xy[:, 1] > 0))  # the removed quadrant is (0, 1)^2
    hs, l2s, h1s = [], [], []
    for k in (2, 3, 4):
        V = fem.FunctionSpace(fem.l_shaped(k), "P1")
        u = fem.Poisson(V, dirichlet=_sing, method="direct").solve(kappa=1.0, f=0.0)
        l2, h1 = V.errors(u, _sing, _grad_sing)
        hs.append(V.mesh.h)
        l2s.append(float(l2))
        h1s.append(float(h1))
    assert abs(_rate(hs, h1s) - 2.0 / 3.0) < 0.1, (hs, h1s)
    assert abs(_rate(hs, l2s) - 4.0 / 3.0) < 0.15, (hs, l2s)
