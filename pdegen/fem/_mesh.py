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
            raise ValueError(f"Mesh: cells {np.flatnonzero(tiny)[:10].tolist()} have zero area (degenerate)")
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
    def from_skfem(cls, mesh) -> "Mesh":
        """From a scikit-fem ``MeshTri``/``MeshQuad`` (e.g. ``MeshTri().refined(3)``)."""
        if not isinstance(mesh, (skfem.MeshTri, skfem.MeshQuad)):
            raise TypeError(
                f"Mesh.from_skfem: expected skfem.MeshTri or skfem.MeshQuad (first order), "
                f"got {type(mesh).__name__}"
            )
        return cls(mesh.p.T, mesh.t.T, reorient=True)

    def refined(self, times: int = 1) -> "Mesh":
        """Uniformly refined copy (through scikit-fem); grid structure is not kept."""
        return Mesh.from_skfem(self.skfem.refined(times))


# ---------------------------------------------------------------------------- builders

def rectangle(nx: int, ny: int | None = None, *, x0=0.0, x1=1.0, y0=0.0, y1=1.0,
              cell_type: str = "triangle", diagonal: str = "right") -> Mesh:
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
    """The L-shaped domain ``(-1, 1)^2`` without the quadrant ``(0, 1)^2`` (scikit-fem's
    ``MeshTri.init_lshaped``), refined uniformly; the re-entrant corner is at the origin."""
    if int(refinements) != refinements or refinements < 0:
        raise ValueError(f"l_shaped: refinements must be a non-negative integer, got {refinements}")
    return Mesh.from_skfem(skfem.MeshTri.init_lshaped().refined(int(refinements)))


def delaunay(points, *, min_angle_area: float = 1e-10) -> Mesh:
    """Triangle mesh of a point cloud (its convex hull) by Delaunay triangulation (SciPy); cells
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


def read_mesh(path) -> Mesh:
    """Read a 2-D triangle or quad mesh with meshio (gmsh ``.msh``, ``.xdmf``, ``.vtu``, ...).

    Lower-dimensional cells (lines, vertices) are ignored; unused points are dropped;
    a third coordinate is dropped if it is constant.
    """
    import meshio

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_mesh: no such file {path!r}")
    try:
        m = meshio.read(path)
    except SystemExit as err:  # meshio exits the interpreter on some malformed gmsh files
        raise ValueError(f"read_mesh: {path!r} is not a readable mesh file (meshio could not parse it)") from err
    blocks = [c for c in m.cells if c.type in ("triangle", "quad")]
    if not blocks:
        raise ValueError(
            f"read_mesh: {path!r} has no triangle or quad cells (found {[c.type for c in m.cells]})"
        )
    kinds = {c.type for c in blocks}
    if len(kinds) > 1:
        raise ValueError(f"read_mesh: {path!r} mixes triangles and quads; pdegen needs one cell type")
    cells = np.concatenate([c.data for c in blocks])
    pts = np.asarray(m.points, dtype=np.float64)
    if pts.shape[1] == 3:
        if np.ptp(pts[:, 2]) > 1e-12 * max(np.ptp(pts[:, :2]), 1.0):
            raise ValueError(f"read_mesh: {path!r} is not planar (z varies); pdegen meshes are 2-D")
        pts = pts[:, :2]
    used = np.unique(cells)
    remap = -np.ones(pts.shape[0], np.int64)
    remap[used] = np.arange(used.size)
    return Mesh(pts[used], remap[cells], reorient=True)


def write_mesh(path, mesh: Mesh, *, point_data: dict | None = None, cell_data: dict | None = None):
    """Write a mesh with optional point/cell fields (meshio; format from the extension: ``.msh`` is
    gmsh 2.2, ``.vtu`` / ``.xdmf`` open in ParaView).

    The file is written atomically (a temporary file in the same folder, then renamed).
    Complex fields are written as ``<name>_real`` and ``<name>_imag``.
    """
    import meshio

    path = os.fspath(path)
    point_data = {k: np.asarray(v) for k, v in (point_data or {}).items()}
    cell_data = {k: np.asarray(v) for k, v in (cell_data or {}).items()}
    for name, v in point_data.items():
        if v.shape[0] != mesh.npoints:
            raise ValueError(f"write_mesh: point_data[{name!r}] has {v.shape[0]} values, expected {mesh.npoints}")
    for name, v in cell_data.items():
        if v.shape[0] != mesh.ncells:
            raise ValueError(f"write_mesh: cell_data[{name!r}] has {v.shape[0]} values, expected {mesh.ncells}")

    def split(d):
        out = {}
        for k, v in d.items():
            if np.iscomplexobj(v):
                out[k + "_real"], out[k + "_imag"] = v.real, v.imag
            else:
                out[k] = v
        return out

    pts3 = np.concatenate([mesh.points, np.zeros((mesh.npoints, 1))], axis=1)
    m = meshio.Mesh(
        pts3,
        [(_MESHIO_CELL[mesh.cell_type], mesh.cells)],
        point_data=split(point_data),
        cell_data={k: [v] for k, v in split(cell_data).items()},
    )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    tmpdir = tempfile.mkdtemp(dir=folder, prefix=".tmp-")
    try:
        tmp = os.path.join(tmpdir, base + ext)
        if ext.lower() == ".msh":
            # gmsh's own format (meshio's default for .msh is ANSYS); ASCII unless fields are
            # written, which meshio reads back only from the binary form.
            tags = np.ones(mesh.ncells, np.int32)  # one physical / geometrical region
            m.cell_data.update({"gmsh:physical": [tags], "gmsh:geometrical": [tags]})
            meshio.write(tmp, m, file_format="gmsh22", binary=bool(point_data or cell_data))
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
