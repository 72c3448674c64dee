"""Atomic file writes shared by every layer: nothing half written is ever left behind.

A write goes to a temporary file in the destination folder, is flushed to disk, and is then
moved onto the destination with ``os.replace`` (atomic on POSIX and Windows). On any error the
temporary file is removed and the destination is untouched.

JSON is strict (:func:`write_json_atomic`: NaN / inf become ``null``, ``allow_nan=False``), and
:func:`check_output_dir` / :func:`check_output_file` let a command refuse an unusable ``--out``
before it does any work.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success move it onto ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the
    umask), not the private ``0o600`` of temporary files.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write(mode=...) must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path (same folder and suffix) for writers that want a file name;
    on success it is moved onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp"
    )
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def json_safe(obj: Any) -> Any:
    """``obj`` made strict-JSON ready: NaN / inf floats become ``None`` (``null``); NumPy / JAX
    scalars and arrays become Python numbers and lists; tuples become lists; keys become strings."""
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "__array__") or hasattr(obj, "dtype"):  # NumPy / JAX arrays and scalars
        import numpy as np

        value = np.asarray(obj)
        return json_safe(value.tolist() if value.ndim else value.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented strict JSON (with a final newline) to ``path`` atomically.

    NaN / inf are written as ``null`` (see :func:`json_safe`), so any JSON parser reads the file;
    the text is built before the file is opened, so an object JSON cannot hold leaves nothing."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")
    return Path(path)


# ------------------------------------------------------------------------------ output paths


def _first_existing_parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_parents(path: Path, flag: str) -> None:
    # A file anywhere on the way makes the folder impossible to create.
    for parent in [*reversed(path.parents)]:
        if str(parent) in ("", ".") or not os.path.lexists(parent):
            continue
        if not parent.is_dir():
            raise FileExistsError(
                f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder; "
                f"choose another {flag}"
            )
    base = _first_existing_parent(path)
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{flag} {str(path)!r}: cannot write into {str(base)!r} (no permission); "
            f"choose another {flag}"
        )


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be the output folder: not an existing file, no
    file on the way, writable. Nothing is created. Returns ``Path(path)``.

    Raises ``ValueError`` (empty path), ``FileExistsError`` or ``PermissionError`` naming ``flag``."""
    if path is None or not os.fspath(path).strip():
        raise ValueError(f"{flag}: give an output folder, got {path!r}")
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise FileExistsError(
            f"{flag} {str(p)!r} is an existing file, not a folder; give a folder "
            f"path (it is created if missing)"
        )
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(
                f"{flag} {str(p)!r}: cannot write into this folder (no "
                f"permission); choose another {flag}"
            )
        return p
    _check_parents(p, flag)
    return p


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that the file ``path`` can be written: not an existing folder, no
    file on the way to it, writable (an existing file is replaced). Nothing is created."""
    if path is None or not os.fspath(path).strip():
        raise ValueError(f"{flag}: give an output file, got {path!r}")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {str(p)!r} is a folder; give a file path")
    if os.path.lexists(p) and not os.access(p, os.W_OK):
        raise PermissionError(f"{flag} {str(p)!r}: the file is not writable; choose another {flag}")
    _check_parents(p, flag)
    return p
