"""Optional interoperability with jax-fem (``pip install pdegen[jaxfem]``; jax-fem is GPL-3.0).

- :func:`to_jaxfem_mesh` turns a pdegen :class:`Mesh` or :class:`FunctionSpace` into a jax-fem mesh
  whose node ``i`` is pdegen dof ``i`` (``TRI3`` for P1, ``QUAD4`` for Q1, ``TRI6`` for P2).
- :func:`jaxfem_poisson` builds a ``jax_fem.problem.Problem`` for
  ``-div(kappa grad u) + reaction * u = f`` on that mesh.
- :func:`jaxfem_residual` wraps the residual of any scalar jax-fem ``Problem`` on the same nodes as a
  pdegen residual ``u (ndofs,) -> r (ndofs,)`` in pdegen's dof ordering, differentiable in ``u``
  and in the problem's internal variables (coefficients).

jax-fem is imported lazily, inside these functions; pdegen itself never needs it. Its import
banner is swallowed, and the global state it touches on import (NumPy print options, the level of
the ``jax`` logger) is restored; its own chatty logger is set to WARNING.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from ._assembly import DirichletBC
from ._mesh import Mesh, _signed_areas
from ._space import FunctionSpace, _evaluate

# (cell type, pdegen element) -> jax-fem element type
_ELEMENT_TYPES = {
    ("triangle", "P1"): "TRI3",
    ("quad", "Q1"): "QUAD4",
    ("triangle", "P2"): "TRI6",
}

_INSTALL_HINT = (
    "pdegen's jax-fem interface needs the optional dependencies jax-fem, fenics-basix, gmsh and "
    "pyfiglet: pip install 'pdegen[jaxfem]'"
)


def _jax_fem():
    """Import ``jax_fem.problem`` and ``jax_fem.generate_mesh`` quietly; return both modules."""
    if sys.modules.get("jax_fem.problem") is None:
        printoptions = np.get_printoptions()
        loggers = {name: logging.getLogger(name).level for name in ("jax", "tensorflow")}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the import prints an ASCII-art banner
                importlib.import_module("jax_fem.problem")
        except ImportError as e:
            raise ImportError(f"{_INSTALL_HINT} ({e})") from e
        finally:
            np.set_printoptions(**printoptions)
            for name, level in loggers.items():
                logging.getLogger(name).setLevel(level)
        log = logging.getLogger("jax_fem")
        if log.level < logging.WARNING:
            log.setLevel(logging.WARNING)  # it logs every residual evaluation at DEBUG/INFO
    return sys.modules["jax_fem.problem"], importlib.import_module("jax_fem.generate_mesh")


def _as_space(mesh_or_space, fn: str) -> FunctionSpace:
    if isinstance(mesh_or_space, FunctionSpace):
        return mesh_or_space
    if isinstance(mesh_or_space, Mesh):
        return FunctionSpace(mesh_or_space, "P1" if mesh_or_space.cell_type == "triangle" else "Q1")
    raise TypeError(
        f"{fn}: expected a pdegen Mesh or FunctionSpace, got {type(mesh_or_space).__name__}"
    )


def _element_type(space: FunctionSpace, fn: str) -> str:
    key = (space.mesh.cell_type, space.element)
    if key not in _ELEMENT_TYPES:
        raise ValueError(
            f"{fn}: no jax-fem element for {space.element} on {space.mesh.cell_type} meshes; "
            "supported: P1 (TRI3), Q1 (QUAD4), P2 (TRI6)"
        )
    return _ELEMENT_TYPES[key]


def _jaxfem_cells(space: FunctionSpace) -> np.ndarray:
    """Element dofs in jax-fem's local order: vertices counter-clockwise, then (P2) the edge
    midpoints 0-1, 1-2, 2-0. scikit-fem sorts triangle vertices, so some cells come clockwise."""
    cells = np.array(space.element_dofs, dtype=np.int64)
    nv = space.mesh.cells.shape[1]
    x = space.dof_coordinates
    if nv == 3:
        clockwise = _signed_areas(x, cells[:, :3]) < 0
        flip = [0, 2, 1] if cells.shape[1] == 3 else [0, 2, 1, 5, 4, 3]
        cells[clockwise] = cells[clockwise][:, flip]
    vertices = x[cells[:, :nv]]
    expected = [vertices]
    if cells.shape[1] > nv:
        expected.append(0.5 * (vertices + np.roll(vertices, -1, axis=1)))
    expected = np.concatenate(expected, axis=1)
    scale = np.ptp(x, axis=0).max()
    if (_signed_areas(x, cells[:, :nv]) <= 0).any() or not np.allclose(
        x[cells], expected, rtol=0.0, atol=1e-10 * scale
    ):
        raise RuntimeError(  # pragma: no cover - guards against a change of scikit-fem's dof layout
            f"to_jaxfem_mesh: the local dof layout of {space.element} does not match jax-fem's "
            "node ordering"
        )
    return cells


def to_jaxfem_mesh(mesh_or_space):
    """A ``jax_fem.generate_mesh.Mesh`` on the same nodes, numbered like pdegen's dofs.

    Args:
        mesh_or_space: a :class:`Mesh` (P1 on triangles, Q1 on quads) or a :class:`FunctionSpace`
            (P1 -> ``'TRI3'``, Q1 -> ``'QUAD4'``, P2 -> ``'TRI6'``).

    Returns:
        the jax-fem mesh; its ``points`` are the dof coordinates ``(ndofs, 2)``, its ``cells`` the
        element dofs in jax-fem's local order and its ``ele_type`` the jax-fem element name.
    """
    space = _as_space(mesh_or_space, "to_jaxfem_mesh")
    ele_type = _element_type(space, "to_jaxfem_mesh")
    _, generate_mesh = _jax_fem()
    cells = _jaxfem_cells(space)
    return generate_mesh.Mesh(
        np.array(space.dof_coordinates, dtype=np.float64), cells, ele_type=ele_type
    )


def _node_to_dof(points: np.ndarray, space: FunctionSpace, fn: str) -> np.ndarray:
    """``perm[i]`` = the pdegen dof at jax-fem node ``i`` (matched by coordinates)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape != (space.ndofs, 2):
        raise ValueError(
            f"{fn}: the jax-fem mesh has nodes of shape {points.shape}, but the space has "
            f"{space.ndofs} dofs in 2-D; both must describe the same nodes"
        )
    dist, perm = cKDTree(space.dof_coordinates).query(points)
    scale = np.ptp(space.dof_coordinates, axis=0).max()
    far = np.flatnonzero(dist > 1e-9 * scale)
    if far.size:
        raise ValueError(
            f"{fn}: jax-fem nodes {far[:10].tolist()} are not dofs of the pdegen space "
            f"(nearest dof {dist[far[0]]:.3g} away); build the problem on to_jaxfem_mesh(space)"
        )
    if np.unique(perm).size != perm.size:
        raise ValueError(f"{fn}: several jax-fem nodes share one pdegen dof position")
    return perm.astype(np.int64)


def _float_dtype():
    return jnp.asarray(0.0).dtype  # float64 with x64 enabled, float32 otherwise


def jaxfem_poisson(mesh_or_space, *, dirichlet=None, dirichlet_where=None, gauss_order=None):
    """A jax-fem ``Problem`` for ``-div(kappa grad u) + reaction * u = f``.

    Weak residual ``int kappa grad u . grad v + (reaction u - f) v`` (no boundary terms), with the
    three coefficients as the problem's internal variables at jax-fem's quadrature points; build
    them with ``problem.coefficients(kappa=, f=, reaction=)`` (traceable) and pass them to the
    function from :func:`jaxfem_residual`, or set them with ``problem.set_params(dict(...))``.

    Args:
        mesh_or_space: a pdegen :class:`Mesh` or :class:`FunctionSpace` (P1, Q1 or P2); the jax-fem
            node ``i`` is the pdegen dof ``i``.
        dirichlet: ``None`` (no constrained nodes) or boundary values (scalar, callable ``g(x)`` with
            ``x`` of shape ``(2, n)``, or an array as for :class:`DirichletBC`), stored in jax-fem's
            ``dirichlet_bc_info`` on pdegen's boundary dofs.
        dirichlet_where: boundary part for ``dirichlet`` (as in :class:`DirichletBC`).
        gauss_order: quadrature exactness degree; default the space's ``quadrature_order``, so
            coefficients interpolated in the space are integrated like pdegen's assembly does.

    ``problem.coefficients`` accepts, for each coefficient: a scalar, nodal values ``(ndofs,)``,
    cell values ``(ncells,)``, values at jax-fem's quadrature points ``(ncells, nquad)`` or a
    callable ``c(x)`` of points ``x`` of shape ``(2, ncells, nquad)``.
    """
    space = _as_space(mesh_or_space, "jaxfem_poisson")
    problem_module, _ = _jax_fem()
    mesh = to_jaxfem_mesh(space)
    if gauss_order is None:
        gauss_order = space.quadrature_order
    if not isinstance(gauss_order, (int, np.integer)) or gauss_order < 0:
        raise ValueError(
            f"jaxfem_poisson: gauss_order must be a non-negative int, got {gauss_order!r}"
        )

    bc_info = None
    if dirichlet is not None:
        bc = DirichletBC(space, dirichlet, where=dirichlet_where)
        constrained = np.zeros(space.ndofs, bool)
        constrained[bc.dofs] = True
        constrained = jnp.asarray(constrained)
        values = np.asarray(bc.values(), dtype=np.float64)
        positions = jnp.asarray(space.dof_coordinates[bc.dofs])
        if not np.all(np.isfinite(values)):
            raise ValueError("jaxfem_poisson: dirichlet values contain NaN or inf")

        def on_dirichlet_boundary(point, index):  # jax-fem node index == pdegen dof
            return constrained[index]

        @jax.jit  # jax-fem maps this eagerly over the selected node positions
        def dirichlet_value(point):
            nearest = jnp.argmin(jnp.sum((positions - point[None, :]) ** 2, axis=1))
            return jnp.asarray(values)[nearest]

        bc_info = [[on_dirichlet_boundary], [0], [dirichlet_value]]

    class PoissonProblem(problem_module.Problem):
        """``-div(kappa grad u) + reaction u = f``; internal variables ``(kappa, f, reaction)``."""

        def custom_init(self):
            self.internal_vars = self.coefficients()

        def get_tensor_map(self):
            def flux(u_grad, kappa, f, reaction):
                return kappa * u_grad

            return flux

        def get_mass_map(self):
            def source(u, x, kappa, f, reaction):
                return reaction * u - f

            return source

        def coefficients(self, kappa=1.0, f=0.0, reaction=0.0):
            """``(kappa, f, reaction)`` at the quadrature points, each ``(ncells, nquad)``."""
            return tuple(
                self._at_quadrature(c, name)
                for c, name in ((kappa, "kappa"), (f, "f"), (reaction, "reaction"))
            )

        def set_params(self, params):
            """``params``: a dict with any of ``kappa``, ``f``, ``reaction`` (see coefficients)."""
            if not isinstance(params, dict) or set(params) - {"kappa", "f", "reaction"}:
                raise TypeError(
                    "PoissonProblem.set_params: params must be a dict with keys among "
                    f"'kappa', 'f', 'reaction'; got {params!r}"
                )
            self.internal_vars = self.coefficients(**params)

        def _at_quadrature(self, c, name):
            fe = self.fes[0]
            shape = (fe.num_cells, fe.num_quads)
            dtype = _float_dtype()
            if callable(c):
                x = jnp.asarray(np.moveaxis(self.physical_quad_points, -1, 0))  # (2, nc, nq)
                v = _evaluate(c, x)
            else:
                v = jnp.asarray(c)
            if jnp.iscomplexobj(v):
                raise TypeError(f"PoissonProblem: {name} must be real, got dtype {v.dtype}")
            v = v.astype(dtype)
            if v.ndim == 0:
                return jnp.broadcast_to(v, shape)
            if v.shape == (fe.num_total_nodes,) and not callable(c):
                cells = jnp.asarray(fe.cells)
                return jnp.einsum("qn,cn->cq", jnp.asarray(fe.shape_vals, dtype), v[cells])
            if v.shape == (fe.num_cells,) and not callable(c):
                return jnp.broadcast_to(v[:, None], shape)
            if v.shape == shape:
                return v
            raise ValueError(
                f"PoissonProblem: {name} must be a scalar, nodal values ({fe.num_total_nodes},), "
                f"cell values ({fe.num_cells},), quadrature values {shape} or a callable of x "
                f"(2, {fe.num_cells}, {fe.num_quads}); got shape {v.shape}"
            )

    return PoissonProblem(
        mesh=mesh,
        vec=1,
        dim=2,
        ele_type=mesh.ele_type,
        gauss_order=int(gauss_order),
        dirichlet_bc_info=bc_info,
    )


def _compiled_weak_residual(problem):
    """One compiled residual per problem, shared by all wrappers (the node maps are arguments)."""
    cached = problem.__dict__.get("_pdegen_weak_residual")
    if cached is not None:
        return cached

    @jax.jit
    def weak_residual(u, variables, node_to_dof, dof_to_node):
        # jax-fem relies on NumPy-style promotion; keep the caller's strict settings out of it.
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            r_nodes = problem.compute_residual_vars(
                [u[node_to_dof][:, None]], variables, problem.internal_vars_surfaces
            )[0]
        return r_nodes[:, 0][dof_to_node].astype(u.dtype)

    problem._pdegen_weak_residual = weak_residual
    return weak_residual


def jaxfem_residual(problem, space: FunctionSpace, *, dirichlet=None):
    """Wrap a scalar jax-fem ``Problem``'s residual as ``residual(u, internal_vars=None, *, g=None)``.

    Args:
        problem: a ``jax_fem.problem.Problem`` with one scalar variable (``vec=1``) in 2-D whose mesh
            nodes are the dofs of ``space`` (in any order; matched by coordinates).
        space: the pdegen :class:`FunctionSpace`.
        dirichlet: how constrained rows are treated: ``None`` keeps jax-fem's raw weak residual on
            every row; ``'problem'`` replaces the rows of the problem's own ``dirichlet_bc_info``
            by ``u - value`` (jax-fem's solver convention); a :class:`DirichletBC` replaces its rows
            by ``u - g`` (pdegen's convention, ``g`` overrides its values per call).

    Returns:
        ``residual(u, internal_vars=None, *, g=None) -> (ndofs,)``: ``u`` and the result are in
        pdegen's dof order; ``internal_vars`` (default ``problem.internal_vars``) are passed to
        jax-fem's kernels and may be traced, so ``jax.jacfwd``/``grad``/``jit``/``vmap`` apply.
    """
    problem_module, _ = _jax_fem()
    if not isinstance(problem, problem_module.Problem):
        raise TypeError(
            f"jaxfem_residual: problem must be a jax_fem.problem.Problem, got "
            f"{type(problem).__name__}"
        )
    if not isinstance(space, FunctionSpace):
        raise TypeError(
            f"jaxfem_residual: space must be a FunctionSpace, got {type(space).__name__}"
        )
    if problem.num_vars != 1 or problem.fes[0].vec != 1 or problem.dim != 2:
        raise ValueError(
            "jaxfem_residual: only problems with one scalar variable (vec=1) in 2-D are supported, "
            f"got {problem.num_vars} variable(s), vec={problem.fes[0].vec}, dim={problem.dim}"
        )
    fe = problem.fes[0]
    perm = _node_to_dof(fe.points, space, "jaxfem_residual")  # jax-fem node -> pdegen dof
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)  # pdegen dof -> jax-fem node

    if dirichlet is None or isinstance(dirichlet, DirichletBC):
        if isinstance(dirichlet, DirichletBC) and dirichlet.space is not space:
            raise ValueError("jaxfem_residual: dirichlet must be a DirichletBC on the same space")
        bc = dirichlet
    elif isinstance(dirichlet, str) and dirichlet == "problem":
        if fe.node_inds_list:
            nodes = np.concatenate([np.asarray(n, np.int64) for n in fe.node_inds_list])
            values = jnp.concatenate([jnp.asarray(v).reshape(-1) for v in fe.vals_list])
            bc = DirichletBC(space, values, dofs=perm[nodes])
        else:
            bc = None
    else:
        raise TypeError(
            f"jaxfem_residual: dirichlet must be None, 'problem' or a DirichletBC, got {dirichlet!r}"
        )
    perm_j = jnp.asarray(perm)
    inverse_j = jnp.asarray(inverse)

    weak_residual = _compiled_weak_residual(problem)

    def residual(u, internal_vars=None, *, g=None):
        u = jnp.asarray(u)
        if u.shape != (space.ndofs,):
            raise ValueError(f"jaxfem residual: u must have shape ({space.ndofs},), got {u.shape}")
        if jnp.iscomplexobj(u):
            raise TypeError(f"jaxfem residual: u must be real, got dtype {u.dtype}")
        if g is not None and bc is None:
            raise ValueError("jaxfem residual: g was given but the residual has no Dirichlet rows")
        variables = problem.internal_vars if internal_vars is None else internal_vars
        u = u.astype(_float_dtype())
        r = weak_residual(u, tuple(variables), perm_j, inverse_j)
        if bc is not None:
            r = bc.residual_rows(r, u, g)
        return r

    return residual
