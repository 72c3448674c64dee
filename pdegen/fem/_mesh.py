"""Meshes: structured grids, scikit-fem conversion, meshio file I/O, validation."""

from __future__ import annotations

import os
import tempfile
from functools import cached_property

import numpy as np
import skfem

CELL_TYPES = {"triangle": 3, "quad": 4}


def _signed_areas(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Shoelace formula; positive for counter-clockwise cells."""
    x = points[cells, 0]
    y = points[cells, 1]
    return 0.5 * np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)


class Mesh:
    """A 2-D mesh of triangles or quadrilaterals, held on the host.

    Args:
        points: ``(npoints, 2)`` vertex coordinates.
        cells: ``(ncells, 3)`` triangles or ``(ncells, 4)`` quadrilaterals, vertices counter-clockwise.
        grid_shape: ``(ny, nx)`` when the points form a structured grid in row-major image order
            (point ``j * nx + i`` sits at column ``i``, row ``j``); enables :meth:`to_image`.
        reorient: flip clockwise cells instead of rejecting them.

    Raises:
        ValueError: for wrong shapes, non-finite coordinates, out-of-range or repeated cell
            indices, points used by no cell, degenerate (zero-area) or inverted cells.

    Geometry and connectivity are fixed host data; values that vary (coefficients, sources,
    boundary values) are traced JAX arrays passed to assembly and solves.
    """

    def __init__(self, points, cells, *, grid_shape=None, reorient: bool = False):
        points = np.array(points, dtype=np.float64)
        cells = np.array(cells)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"Mesh: points must have shape (npoints, 2), got {points.shape}")
        if cells.ndim != 2 or cells.shape[1] not in (3, 4):
            raise ValueError(
                f"Mesh: cells must have shape (ncells, 3) for triangles or (ncells, 4) for quads, "
                f"got {cells.shape}"
            )
        if not np.issubdtype(cells.dtype, np.integer):
            raise TypeError(f"Mesh: cells must be integers, got dtype {cells.dtype}")
        cells = cells.astype(np.int64)
        if cells.shape[0] == 0:
            raise ValueError("Mesh: cells is empty")
        if not np.all(np.isfinite(points)):
            bad = np.flatnonzero(~np.all(np.isfinite(points), axis=1))
            raise ValueError(f"Mesh: points contain NaN/inf at indices {bad[:10].tolist()}")
        if cells.min() < 0 or cells.max() >= points.shape[0]:
            raise ValueError(
                f"Mesh: cell indices must lie in [0, {points.shape[0] - 1}], "
                f"got range [{cells.min()}, {cells.max()}]"
            )
        srt = np.sort(cells, axis=1)
        repeated = np.flatnonzero(np.any(srt[:, 1:] == srt[:, :-1], axis=1))
        if repeated.size:
            raise ValueError(f"Mesh: cells {repeated[:10].tolist()} repeat a vertex (degenerate)")
        used = np.zeros(points.shape[0], bool)
        used[cells.ravel()] = True
        if not used.all():
            unused = np.flatnonzero(~used)
            raise ValueError(
                f"Mesh: {unused.size} points are used by no cell (first: {unused[:10].tolist()}); "
                "remove them"
            )
        area = _signed_areas(points, cells)
        scale = np.ptp(points, axis=0).max() ** 2
        tiny = np.abs(area) <= 1e-14 * scale
        if tiny.any():
            raise ValueError(
                f"Mesh: cells {np.flatnonzero(tiny)[:10].tolist()} have zero area (degenerate)"
            )
        if (area < 0).any():
            if reorient:
                cells[area < 0] = cells[area < 0, ::-1]
            else:
                raise ValueError(
                    f"Mesh: cells {np.flatnonzero(area < 0)[:10].tolist()} are inverted "
                    "(clockwise); order their vertices counter-clockwise or pass reorient=True"
                )
        if cells.shape[1] == 4:
            # A quad is valid when every corner turns left (convex, not self-intersecting).
            p = points[cells]
            e1 = np.roll(p, -1, axis=1) - p
            e2 = np.roll(p, -2, axis=1) - np.roll(p, -1, axis=1)
            cross = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
            bad = np.flatnonzero(np.any(cross <= 0, axis=1))
            if bad.size:
                raise ValueError(f"Mesh: quadrilaterals {bad[:10].tolist()} are not convex")
        if grid_shape is not None:
            grid_shape = tuple(int(s) for s in grid_shape)
            if len(grid_shape) != 2 or grid_shape[0] * grid_shape[1] != points.shape[0]:
                raise ValueError(
                    f"Mesh: grid_shape {grid_shape} does not match {points.shape[0]} points"
                )
        self.points = points
        self.cells = cells
        self.grid_shape = grid_shape
        self.points.setflags(write=False)
        self.cells.setflags(write=False)

    # -- basic properties -------------------------------------------------------------
    @property
    def cell_type(self) -> str:
        return "triangle" if self.cells.shape[1] == 3 else "quad"

    @property
    def npoints(self) -> int:
        return self.points.shape[0]

    @property
    def ncells(self) -> int:
        return self.cells.shape[0]

    @cached_property
    def h(self) -> float:
        """Longest cell edge."""
        p = self.points[self.cells]
        edges = np.roll(p, -1, axis=1) - p
        return float(np.sqrt((edges**2).sum(-1)).max())

    @cached_property
    def cell_areas(self) -> np.ndarray:
        return _signed_areas(self.points, self.cells)

    @cached_property
    def skfem(self):
        """The equivalent scikit-fem mesh (same point and cell order)."""
        cls = skfem.MeshTri if self.cell_type == "triangle" else skfem.MeshQuad
        return cls(self.points.T.copy(), self.cells.T.copy())

    @cached_property
    def boundary_points(self) -> np.ndarray:
        """Indices of points on the boundary."""
        return np.asarray(self.skfem.boundary_nodes(), dtype=np.int64)

    def __repr__(self):
        grid = f", grid_shape={self.grid_shape}" if self.grid_shape else ""
        return f"Mesh({self.cell_type}, npoints={self.npoints}, ncells={self.ncells}{grid})"

    # -- images ----------------------------------------------------------------------
    def to_image(self, values):
        """Point values ``(..., npoints)`` -> image ``(..., ny, nx)`` (structured grids only)."""
        if self.grid_shape is None:
            raise ValueError("Mesh.to_image: this mesh is not a structured grid")
        if values.shape[-1] != self.npoints:
            raise ValueError(
                f"Mesh.to_image: values must end with {self.npoints} point values, got {values.shape}"
            )
        return values.reshape(values.shape[:-1] + self.grid_shape)

    def from_image(self, image):
        """Image ``(..., ny, nx)`` -> point values ``(..., npoints)`` (structured grids only)."""
        if self.grid_shape is None:
            raise ValueError("Mesh.from_image: this mesh is not a structured grid")
        if tuple(image.shape[-2:]) != self.grid_shape:
            raise ValueError(
                f"Mesh.from_image: image must end with shape {self.grid_shape}, got {image.shape}"
            )
        return image.reshape(image.shape[:-2] + (self.npoints,))

    # -- conversions -----------------------------------------------------------------
    @classmethod
    def from_skfem(cls, mesh) -> Mesh:
        """From a scikit-fem ``MeshTri``/``MeshQuad`` (e.g. ``MeshTri().refined(3)``)."""
        if not isinstance(mesh, (skfem.MeshTri, skfem.MeshQuad)):
            raise TypeError(
                f"Mesh.from_skfem: expected skfem.MeshTri or skfem.MeshQuad (first order), "
                f"got {type(mesh).__name__}"
            )
        return cls(mesh.p.T, mesh.t.T, reorient=True)

    def refined(self, times: int = 1) -> Mesh:
        """Uniformly refined copy (through scikit-fem); grid structure is not kept."""
        return Mesh.from_skfem(self.skfem.refined(times))


# ---------------------------------------------------------------------------- builders


def rectangle(
    nx: int,
    ny: int | None = None,
    *,
    x0=0.0,
    x1=1.0,
    y0=0.0,
    y1=1.0,
    cell_type: str = "triangle",
    diagonal: str = "right",
) -> Mesh:
    """Structured mesh of ``[x0, x1] x [y0, y1]`` with ``nx x ny`` nodes.

    Node ``j * nx + i`` is at ``(x_i, y_j)``, so nodal values reshape to an ``(ny, nx)`` image
    with row 0 at ``y0`` (use ``origin='lower'`` when plotting). Each grid square is one quad or
    two triangles split along the ``diagonal`` ('right': lower-left to upper-right; 'left').
    """
    ny = nx if ny is None else ny
    for name, v in (("nx", nx), ("ny", ny)):
        if int(v) != v or v < 2:
            raise ValueError(f"rectangle: {name} must be an integer >= 2 (nodes per side), got {v}")
    nx, ny = int(nx), int(ny)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"rectangle: need x1 > x0 and y1 > y0, got [{x0}, {x1}] x [{y0}, {y1}]")
    if cell_type not in CELL_TYPES:
        raise ValueError(f"rectangle: cell_type must be 'triangle' or 'quad', got {cell_type!r}")
    x = np.linspace(x0, x1, nx)
    y = np.linspace(y0, y1, ny)
    X, Y = np.meshgrid(x, y)  # (ny, nx), row-major image order
    points = np.stack([X.ravel(), Y.ravel()], axis=1)
    i, j = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1))
    i, j = i.ravel(), j.ravel()
    a = j * nx + i  # lower-left
    b = a + 1  # lower-right
    c = a + nx + 1  # upper-right
    d = a + nx  # upper-left
    if cell_type == "quad":
        cells = np.stack([a, b, c, d], axis=1)
    elif diagonal == "right":
        cells = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    elif diagonal == "left":
        cells = np.concatenate([np.stack([a, b, d], 1), np.stack([b, c, d], 1)])
    else:
        raise ValueError(f"rectangle: diagonal must be 'right' or 'left', got {diagonal!r}")
    return Mesh(points, cells, grid_shape=(ny, nx))


def unit_square(n: int, *, cell_type: str = "triangle") -> Mesh:
    """Structured mesh of the unit square with ``n x n`` nodes (maps 1:1 to an ``(n, n)`` image)."""
    return rectangle(n, n, cell_type=cell_type)


def l_shaped(refinements: int = 3) -> Mesh:
    """The L-shaped domain, refined uniformly.

    The L-shaped domain ``(-1, 1)^2`` without the quadrant ``(0, 1)^2`` (scikit-fem's
    ``MeshTri.init_lshaped``), refined uniformly; the re-entrant corner is at the origin."""
    if int(refinements) != refinements or refinements < 0:
        raise ValueError(f"l_shaped: refinements must be a non-negative integer, got {refinements}")
    return Mesh.from_skfem(skfem.MeshTri.init_lshaped().refined(int(refinements)))


def delaunay(points, *, min_angle_area: float = 1e-10) -> Mesh:
    """A triangle mesh of a point cloud by Delaunay triangulation.

    Triangle mesh of a point cloud (its convex hull) by Delaunay triangulation (SciPy); cells
    with area below ``min_angle_area`` times the mean are dropped. For unstructured, non-uniform
    test meshes, e.g. jittered or graded points of a square."""
    from scipy.spatial import Delaunay

    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
        raise ValueError(f"delaunay: points must have shape (n >= 3, 2), got {pts.shape}")
    tri = Delaunay(pts).simplices
    area = np.abs(_signed_areas(pts, tri))
    tri = tri[area > min_angle_area * area.mean()]
    used = np.unique(tri)
    remap = -np.ones(pts.shape[0], np.int64)
    remap[used] = np.arange(used.size)
    return Mesh(pts[used], remap[tri], reorient=True)


# ---------------------------------------------------------------------------- files

_MESHIO_CELL = {"triangle": "triangle", "quad": "quad"}
# meshio cell types read as 2-D cells: the first 3 (triangles) or 4 (quads) nodes are the corners
_READ_CELLS = {
    "triangle": ("triangle", 3),
    "triangle6": ("triangle", 3),
    "triangle7": ("triangle", 3),
    "quad": ("quad", 4),
    "quad8": ("quad", 4),
    "quad9": ("quad", 4),
}
# meshio's higher-order cells for degree-2 spaces (VTK node order: corners, edge midpoints, centre)
_HIGHER_ORDER_CELL = {"triangle": "triangle6", "quad": "quad9"}
# formats whose meshio writer and reader round-trip those cells with point data (tested)
_HIGHER_ORDER_EXTENSIONS = (".vtu", ".xdmf", ".msh")


def read_mesh(path) -> Mesh:
    """Read a 2-D triangle or quad mesh with meshio (gmsh ``.msh``, ``.xdmf``, ``.vtu``, ...).

    Lower-dimensional cells (lines, vertices) are ignored; higher-order cells (``triangle6``,
    ``quad9``, ...) are read as their corner triangles / quads; unused points (e.g. edge
    midpoints) are dropped; a third coordinate is dropped if it is constant.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, if it is empty, unreadable, has no triangle or quad cells,
            mixes triangles and quads, or is not planar.
    """
    import contextlib
    import io
    import sys

    import meshio

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_mesh: no such file {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"read_mesh: {path!r} is a directory, not a mesh file")
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"read_mesh: {path!r} is empty (0 bytes); expected a mesh file "
            "(gmsh .msh, .xdmf, .vtu, ...)"
        )
    chatter = io.StringIO()  # meshio prints to the console before some failures
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            m = meshio.read(path)
    except (Exception, SystemExit) as err:  # SystemExit: meshio exits on some malformed files
        said = " ".join(chatter.getvalue().split())
        detail = "" if isinstance(err, SystemExit) else f"{type(err).__name__}: {err}"
        detail = "; ".join(d for d in (said, detail) if d)
        raise ValueError(
            f"read_mesh: {path!r} is not a readable mesh file (gmsh .msh, .xdmf, .vtu, ...)"
            + (f": {detail}" if detail else "")
        ) from None
    if chatter.getvalue():  # a successful read: pass meshio's messages on
        sys.stderr.write(chatter.getvalue())
    if not m.cells:
        raise ValueError(f"read_mesh: {path!r} contains no cells (only {len(m.points)} points)")
    blocks = [(c.type, c.data) for c in m.cells if c.type in _READ_CELLS and len(c.data)]
    if not blocks:
        raise ValueError(
            f"read_mesh: {path!r} has no triangle or quad cells (found {[c.type for c in m.cells]})"
        )
    kinds = {_READ_CELLS[t][0] for t, _ in blocks}
    if len(kinds) > 1:
        raise ValueError(
            f"read_mesh: {path!r} mixes triangles and quads; pdegen needs one cell type"
        )
    cells = np.concatenate([np.asarray(d)[:, : _READ_CELLS[t][1]] for t, d in blocks])
    pts = np.asarray(m.points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(
            f"read_mesh: {path!r} has points of shape {pts.shape}; expected 2-D or 3-D points"
        )
    if pts.shape[1] == 3:
        if np.ptp(pts[:, 2]) > 1e-12 * max(np.ptp(pts[:, :2]), 1.0):
            raise ValueError(f"read_mesh: {path!r} is not planar (z varies); pdegen meshes are 2-D")
        pts = pts[:, :2]
    used = np.unique(cells)
    remap = -np.ones(pts.shape[0], np.int64)
    remap[used] = np.arange(used.size)
    pts = pts[used]
    distinct = np.unique(pts, axis=0).shape[0]
    if distinct < pts.shape[0]:
        import warnings

        warnings.warn(
            f"read_mesh: {path!r} has {pts.shape[0] - distinct} points that repeat another "
            "point's coordinates (unmerged duplicates): the cells on either side are not joined, "
            "so the seam is a boundary; merge them in the mesh generator",
            UserWarning,
            stacklevel=2,
        )
    return Mesh(pts, remap[cells], reorient=True)


def _dof_layout(space):
    """Vertex dofs ``(npoints,)`` and the higher-order cells ``(ncells, 6 | 9)`` of a degree-2
    space in VTK node order (corners, edge midpoints in the order 01, 12, 20 / 01, 12, 23, 30,
    then the quad centre), as dof indices; ``None`` for the cells of a degree-1 space."""
    basis = space.basis
    mesh = space.mesh
    vertex_dofs = np.asarray(basis.nodal_dofs[0], np.int64)
    if space.degree == 1:
        return vertex_dofs, None
    facets = np.asarray(mesh.skfem.facets, np.int64)  # (2, nfacets) vertex pairs
    n = mesh.npoints
    keys = np.minimum(facets[0], facets[1]) * n + np.maximum(facets[0], facets[1])
    order = np.argsort(keys)
    facet_dofs = np.asarray(basis.facet_dofs[0], np.int64)
    cells = mesh.cells
    k = cells.shape[1]
    a, b = cells, np.roll(cells, -1, axis=1)  # edges (v_i, v_{i+1}) in VTK order
    edge_keys = np.minimum(a, b) * n + np.maximum(a, b)
    pos = order[np.searchsorted(keys, edge_keys, sorter=order)]
    columns = [vertex_dofs[cells], facet_dofs[pos]]
    if k == 4:
        columns.append(np.asarray(basis.interior_dofs[0], np.int64)[:, None])
    return vertex_dofs, np.concatenate(columns, axis=1)


def _lift_vertex_values(space, values):
    """Vertex values ``(npoints, ...)`` of a linear field -> its values at every dof of a
    degree-2 space (edge midpoints and quad centres: means of the corners, exact for P1/Q1)."""
    basis = space.basis
    mesh = space.mesh
    out = np.zeros((space.ndofs,) + values.shape[1:], values.dtype)
    out[np.asarray(basis.nodal_dofs[0])] = values
    facets = np.asarray(mesh.skfem.facets, np.int64)
    out[np.asarray(basis.facet_dofs[0])] = 0.5 * (values[facets[0]] + values[facets[1]])
    if basis.interior_dofs.size:
        out[np.asarray(basis.interior_dofs[0])] = values[mesh.cells].mean(axis=1)
    return out


def write_mesh(
    path,
    mesh,
    *,
    point_data: dict | None = None,
    cell_data: dict | None = None,
    higher_order: bool | None = None,
):
    """Write a mesh with optional point / cell fields through meshio (format from the extension).

    Args:
        path: ``.msh`` (gmsh 4.1), ``.vtu`` or ``.xdmf`` (ParaView), or any other extension meshio
            knows.
        mesh: a :class:`Mesh`, or a :class:`FunctionSpace` to write fields of its element
            (required for P2 / Q2 fields, whose length is ``space.ndofs``).
        point_data: ``name -> array`` of vertex values ``(npoints, ...)`` or, with a space, dof
            values ``(ndofs, ...)``. Complex fields are written as ``<name>_real`` and ``<name>_imag``.
        cell_data: ``name -> array`` of cell values ``(ncells, ...)``.
        higher_order: with a P2 / Q2 space, write ``triangle6`` / ``quad9`` cells on all dofs
            (every field at every dof; vertex fields interpolated linearly at edge midpoints);
            default: where meshio round-trips them (``.vtu``, ``.xdmf``, ``.msh``). Otherwise (or
            with ``False``) the linear cells are written with each field's vertex values.

    The file is written atomically (a temporary file in the same folder, then renamed);
    :func:`read_mesh` reads back the linear mesh either way.
    """
    import meshio

    from ._space import FunctionSpace

    path = os.fspath(path)
    space = mesh if isinstance(mesh, FunctionSpace) else None
    if space is not None:
        mesh = space.mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"write_mesh: mesh must be a Mesh or a FunctionSpace, got {type(mesh).__name__}"
        )
    base, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower()
    if not base or not ext:
        raise ValueError(
            f"write_mesh: path {path!r} needs a file name with an extension (.msh, .vtu, .xdmf, ...)"
        )
    degree2 = space is not None and space.degree == 2
    if higher_order is None:
        higher_order = degree2 and ext in _HIGHER_ORDER_EXTENSIONS
    elif higher_order and not degree2:
        raise ValueError(
            "write_mesh: higher_order=True needs a P2 / Q2 FunctionSpace as the mesh argument"
        )
    vertex_dofs, ho_cells = _dof_layout(space) if space is not None else (None, None)

    def as_points(name, v):
        v = np.asarray(v)
        if v.ndim == 0:
            raise ValueError(f"write_mesh: point_data[{name!r}] must be an array, got a scalar")
        n = v.shape[0]
        if space is not None and n == space.ndofs:
            if higher_order:
                return v
            return v[vertex_dofs]
        if n == mesh.npoints:
            return _lift_vertex_values(space, v) if higher_order else v
        hint = (
            ""
            if space is not None
            else ("; for a field of a P2 / Q2 space pass the FunctionSpace instead of the mesh")
        )
        expected = f"{mesh.npoints} (vertices)" + (
            f" or {space.ndofs} (dofs)" if space is not None else ""
        )
        raise ValueError(
            f"write_mesh: point_data[{name!r}] has {n} values, expected {expected}{hint}"
        )

    point_data = {k: as_points(k, v) for k, v in (point_data or {}).items()}
    cell_data = {k: np.asarray(v) for k, v in (cell_data or {}).items()}
    for name, v in cell_data.items():
        if v.ndim == 0 or v.shape[0] != mesh.ncells:
            raise ValueError(
                f"write_mesh: cell_data[{name!r}] has shape {v.shape}, expected ({mesh.ncells}, ...)"
            )

    def split(kind, d):
        out = {}
        for k, v in d.items():
            parts = {k + "_real": v.real, k + "_imag": v.imag} if np.iscomplexobj(v) else {k: v}
            for name, arr in parts.items():
                if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
                    raise TypeError(
                        f"write_mesh: {kind}[{k!r}] must be numeric, got dtype {arr.dtype}"
                    )
                if ext == ".msh":
                    arr = _gmsh_components(kind, name, arr)
                out[name] = arr
        return out

    if higher_order:
        pts = np.asarray(space.dof_coordinates, np.float64)
        cells = [(_HIGHER_ORDER_CELL[mesh.cell_type], ho_cells)]
    else:
        pts = mesh.points
        cells = [(_MESHIO_CELL[mesh.cell_type], mesh.cells)]
    pts3 = np.concatenate([pts, np.zeros((pts.shape[0], 1))], axis=1)
    m = meshio.Mesh(
        pts3,
        cells,
        point_data=split("point_data", point_data),
        cell_data={k: [v] for k, v in split("cell_data", cell_data).items()},
    )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmpdir = tempfile.mkdtemp(dir=folder, prefix=".tmp-")
    try:
        tmp = os.path.join(tmpdir, base + ext)
        if ext == ".msh":
            # gmsh 4.1, gmsh's current format (meshio's default for .msh is ANSYS). meshio writes
            # it and reads it back with point and cell data intact (triangle6 / quad9 too) in
            # binary form only: its ASCII $NodeData reader fails ("could not be read to its
            # end"), so files with fields are binary and files without fields ASCII.
            meshio.write(tmp, m, file_format="gmsh", binary=bool(point_data or cell_data))
        else:
            meshio.write(tmp, m)
        # XDMF writes a companion .h5 file; move every produced file.
        for name in os.listdir(tmpdir):
            os.replace(os.path.join(tmpdir, name), os.path.join(folder, name))
    finally:
        for name in os.listdir(tmpdir):
            os.remove(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)
    return path


def _gmsh_components(kind, name, arr):
    """gmsh fields have 1, 3 or 9 components: 2-D vectors get a zero third component."""
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr
    width = 1 if flat.ndim == 1 else flat.shape[1]
    if width == 2:
        return np.concatenate([flat, np.zeros((flat.shape[0], 1), flat.dtype)], axis=1)
    if width == 4:  # a 2x2 tensor -> 3x3 with zeros
        t = np.zeros((flat.shape[0], 3, 3), flat.dtype)
        t[:, :2, :2] = flat.reshape(-1, 2, 2)
        return t.reshape(-1, 9)
    if width not in (1, 3, 9):
        raise ValueError(
            f"write_mesh: {kind}[{name!r}] has {width} components; gmsh .msh files hold "
            "1 (scalar), 2 or 3 (vector) or 4 or 9 (tensor) components; use .vtu / .xdmf"
        )
    return flat
