"""Files of the user's own inverse problem: sensor coordinates and data in, posteriors out.

- :func:`read_points` / :func:`read_values`: CSV (comma or whitespace separated, an optional
  header line such as ``x,y``, ``#`` comments) or ``.npy``.
- :func:`write_posterior`: the posterior mean, std and a few samples as point data on the mesh
  (XDMF + HDF5 and VTU, for ParaView).
- :func:`plot_field_posterior`: a PNG of the mean and the std (with the sensors), and the truth
  and the error when the truth is known.

Every file is written atomically.
"""

from __future__ import annotations

import os

import numpy as np

from pdegen import fem

__all__ = ["read_points", "read_values", "write_posterior", "plot_field_posterior"]


# ------------------------------------------------------------------------------------- reading


def _split(line: str) -> list[str]:
    return [f.strip() for f in line.split(",")] if "," in line else line.split()


def _parse_text(path: str, what: str) -> np.ndarray:
    """A 2-D table of floats from a text file; a first line that is not numbers is a header."""
    rows, header_seen = [], False
    for lineno, line in enumerate(_read_lines(path, what), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = _split(text)
        try:
            rows.append([float(v) for v in fields])
        except ValueError:
            if rows or header_seen:
                raise ValueError(
                    f"{what}: {path!r} line {lineno}: expected numbers, got {text[:60]!r}"
                ) from None
            header_seen = True
            continue
        if len(rows[-1]) != len(rows[0]):
            raise ValueError(
                f"{what}: {path!r} line {lineno} has {len(rows[-1])} values, "
                f"the first data line has {len(rows[0])}"
            )
    if not rows:
        raise ValueError(f"{what}: {path!r} holds no numbers (empty file)")
    return np.asarray(rows, np.float64)


def _read_lines(path: str, what: str):
    """The lines of a text file, one at a time; a binary file is a ``ValueError`` naming it."""
    with open(path, encoding="utf-8-sig") as f:
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise ValueError(
                    f"{what}: {path!r} is not a text file (CSV or whitespace-separated "
                    f"numbers) nor a .npy array"
                ) from None
            if not line:
                return
            yield line


def _read_table(path, what: str) -> tuple[str, np.ndarray]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            reason = "the file is empty or truncated" if isinstance(err, EOFError) else str(err)
            if "pickle" in reason:
                reason = "it holds Python objects or is not a NumPy file"
            raise ValueError(f"{what}: {path!r} is not a numeric .npy array ({reason})") from None
        if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
            arr.close()
            raise ValueError(f"{what}: {path!r} is an .npz archive; save one array with np.save")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise ValueError(f"{what}: {path!r} must hold real numbers, got dtype {arr.dtype}")
        arr = np.asarray(arr, np.float64)
        if arr.size == 0:
            raise ValueError(f"{what}: {path!r} holds no numbers (empty array)")
        return path, arr
    return path, _parse_text(path, what)


def _check_finite(arr: np.ndarray, path: str, what: str, unit: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))
        raise ValueError(
            f"{what}: {path!r} contains NaN or inf at {unit} "
            f"{rows[:10].tolist()} (0-based, header excluded)"
        )


def read_points(path) -> np.ndarray:
    """Read sensor coordinates ``(m, 2)`` from a file.

    Sensor coordinates ``(m, 2)`` from a CSV / text file (two columns ``x, y``, comma or
    whitespace separated, an optional header line) or a ``.npy`` array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for an empty file, lines that are not numbers, a shape other
            than ``(m, 2)`` or NaN / inf coordinates.
    """
    path, arr = _read_table(path, "read_points")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"read_points: {path!r} must hold sensor coordinates as two columns "
            f"(x, y), got shape {arr.shape}"
        )
    _check_finite(arr, path, "read_points", "rows")
    return arr


def read_values(path) -> np.ndarray:
    """Read data ``(m,)`` from a file.

    Data ``(m,)`` from a CSV / text file (one column with an optional header line, or one row)
    or a ``.npy`` array (a vector, or a single row / column).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for an empty file, lines that are not numbers, a table with
            several rows and columns or NaN / inf values.
    """
    path, arr = _read_table(path, "read_values")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(
            f"read_values: {path!r} must hold one column (or one row) of data, "
            f"got shape {arr.shape}"
        )
    _check_finite(arr, path, "read_values", "entries")
    return arr


# ------------------------------------------------------------------------------------- writing


def _nodal(values, mesh: fem.Mesh, name: str) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.shape != (mesh.npoints,):
        raise ValueError(
            f"{name} must have shape ({mesh.npoints},) (one value per mesh node), got {v.shape}"
        )
    return v


def _point_fields(mesh: fem.Mesh, post, truth, max_samples: int) -> dict:
    mean = _nodal(post.mean, mesh, "post.mean")
    fields = {"mean": mean, "std": _nodal(post.std, mesh, "post.std")}
    samples = np.asarray(post.samples, np.float64)
    for i in range(min(max_samples, samples.shape[0])):
        fields[f"sample_{i}"] = _nodal(samples[i], mesh, f"post.samples[{i}]")
    if truth is not None:
        truth = _nodal(truth, mesh, "truth")
        fields["truth"] = truth
        fields["error"] = mean - truth
    return fields


def write_posterior(
    out_dir, mesh: fem.Mesh, post, *, stem: str = "posterior", truth=None, max_samples: int = 8
) -> list[str]:
    """Write ``post`` (a :class:`FieldPosterior` of nodal values on ``mesh``) for ParaView.

    Files ``<stem>.xdmf`` (with its ``<stem>.h5``) and ``<stem>.vtu`` in ``out_dir``, with point
    data ``mean``, ``std``, ``sample_0`` ... (at most ``max_samples``) and, when ``truth`` is given,
    ``truth`` and ``error`` (``mean - truth``). Returns the paths written.
    """
    if not isinstance(mesh, fem.Mesh):
        raise TypeError(
            f"write_posterior: mesh must be a pdegen.fem.Mesh, got {type(mesh).__name__}"
        )
    if not isinstance(max_samples, int) or max_samples < 0:
        raise ValueError(f"write_posterior: max_samples must be an int >= 0, got {max_samples!r}")
    if not stem or os.sep in stem or stem.startswith("."):
        raise ValueError(f"write_posterior: stem must be a plain file name, got {stem!r}")
    fields = _point_fields(mesh, post, truth, max_samples)
    out_dir = os.fspath(out_dir)
    base = os.path.join(out_dir, stem)
    fem.write_mesh(base + ".xdmf", mesh, point_data=fields)
    fem.write_mesh(base + ".vtu", mesh, point_data=fields)
    return [base + ".xdmf", base + ".h5", base + ".vtu"]


# ------------------------------------------------------------------------------------ plotting


def _panels(mesh, post, truth):
    """``(values, title, options)`` per panel; ``values`` ``None`` for a text-only panel."""
    mean = _nodal(post.mean, mesh, "post.mean")
    point = post.method == "map" or np.asarray(post.samples).shape[0] < 2
    both = mean if truth is None else np.concatenate([mean, truth])
    lo, hi = float(both.min()), float(both.max())
    label = "MAP estimate" if post.method == "map" else "posterior mean"
    # Sensors go on the std panel, or on the estimate when there is no spread to show.
    panels = [
        (mean, f"{post.method}: {label}", dict(cmap="cividis", vmin=lo, vmax=hi, sensors=point))
    ]
    if point:
        panels.append((None, f"{post.method}: a point estimate\n(no posterior spread)", {}))
    else:
        std = _nodal(post.std, mesh, "post.std")
        panels.append((std, f"{post.method}: posterior std", dict(cmap="magma", sensors=True)))
    if truth is not None:
        err = np.abs(mean - truth)
        rel = np.linalg.norm(mean - truth) / max(np.linalg.norm(truth), 1e-300)
        panels.append((truth, "truth", dict(cmap="cividis", vmin=lo, vmax=hi)))
        panels.append(
            (
                err,
                f"|{'estimate' if point else 'mean'} - truth| (rel. L2 {rel:.3f})",
                dict(cmap="Reds", vmin=0.0),
            )
        )
    return panels


def plot_field_posterior(
    path, mesh: fem.Mesh, post, *, sensors=None, truth=None, title: str = ""
) -> str:
    """Write a PNG of a field posterior on a mesh.

    A PNG of ``post`` on ``mesh``: the posterior mean and std (``sensors`` ``(m, 2)`` drawn as
    markers on the std), and the truth and the error ``|mean - truth|`` when ``truth`` is given.
    Quads are drawn as two triangles. Written atomically; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from pdegen.fem import plot_field, save_figure

    if not isinstance(mesh, fem.Mesh):
        raise TypeError(
            f"plot_field_posterior: mesh must be a pdegen.fem.Mesh, got {type(mesh).__name__}"
        )
    truth = None if truth is None else _nodal(truth, mesh, "truth")
    if sensors is not None:
        sensors = np.asarray(sensors, np.float64)
        if sensors.ndim != 2 or sensors.shape[1] != 2:
            raise ValueError(
                f"plot_field_posterior: sensors must have shape (m, 2), got {sensors.shape}"
            )
    panels = _panels(mesh, post, truth)
    ncols = 2
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax, (values, ttl, opts) in zip(axes.ravel(), panels):
        if values is None:
            ax.axis("off")
            ax.text(0.5, 0.5, ttl, fontsize=9, ha="center", va="center")
            continue
        pts = sensors if opts.pop("sensors", False) else None
        plot_field(mesh, values, ax=ax, title=ttl, **opts)
        if pts is not None:
            ax.plot(
                pts[:, 0],
                pts[:, 1],
                "o",
                ms=4,
                mfc="none",
                mec="cyan",
                mew=1.0,
                label=f"{pts.shape[0]} sensors",
            )
            ax.legend(loc="lower left", fontsize=7, framealpha=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return os.fspath(path)
