"""Plotting fields on meshes (matplotlib) and atomic figure writes."""

from __future__ import annotations

import os

import numpy as np

from .._io import atomic_path
from ._mesh import Mesh


def _triangles(mesh: Mesh) -> np.ndarray:
    if mesh.cell_type == "triangle":
        return mesh.cells
    c = mesh.cells
    return np.concatenate([c[:, [0, 1, 2]], c[:, [0, 2, 3]]])


def vertex_values(mesh: Mesh, values) -> np.ndarray:
    """Values at the mesh vertices from nodal values of a P1/Q1 or P2/Q2 space (vertex dofs come first)."""
    v = np.asarray(values)
    if v.ndim != 1 or v.shape[0] < mesh.npoints:
        raise ValueError(
            f"vertex_values: expected at least {mesh.npoints} nodal values, got shape {v.shape}"
        )
    return v[: mesh.npoints]


def plot_field(
    mesh: Mesh,
    values,
    *,
    ax=None,
    title: str | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
    points=None,
    **kwargs,
):
    """Plot a field on a mesh with ``tripcolor``.

    Plot a field with ``tripcolor``: nodal values (vertex values are used, shaded smoothly) or,
    with ``ncells`` values, one colour per cell; optional sensor ``points`` (m, 2)."""
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri

    per_cell = np.ndim(values) == 1 and np.shape(values)[0] == mesh.ncells != mesh.npoints
    v = np.asarray(values) if per_cell else vertex_values(mesh, values)
    if np.iscomplexobj(v):
        v = v.real
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    tri = mtri.Triangulation(mesh.points[:, 0], mesh.points[:, 1], _triangles(mesh))
    if per_cell:  # quads are drawn as two triangles each (see _triangles)
        faces = v if mesh.cell_type == "triangle" else np.concatenate([v, v])
        im = ax.tripcolor(tri, facecolors=faces, cmap=cmap, **kwargs)
    else:
        im = ax.tripcolor(tri, v, shading="gouraud", cmap=cmap, **kwargs)
    if points is not None:
        p = np.asarray(points)
        ax.plot(p[:, 0], p[:, 1], "k.", ms=2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def save_figure(fig, path, *, dpi: int = 100) -> str:
    """Save a matplotlib figure atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path
