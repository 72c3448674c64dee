"""Errors the user can fix, and how the command line reports them.

- :class:`UserError` (a ``ValueError``): bad arguments, files or data. The message names the input
  and the fix.
- :class:`NonFiniteError` (also a ``FloatingPointError``): a computation produced NaN / inf (a
  sampler or optimiser diverged); raised before anything is written.
- :class:`ConvergenceError`: a method did not converge (e.g. no proposal was ever accepted).

:func:`user_error_message` decides whether an exception that reaches ``pdegen.cli.main`` is the
user's (a one-line message, exit code 2) or a programming error (its traceback is kept). It also
unwraps JAX's ``JaxRuntimeError``, which carries the text of an exception raised in a host
callback.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import zipfile

__all__ = [
    "ConvergenceError",
    "NonFiniteError",
    "UserError",
    "check_memory",
    "format_bytes",
    "memory_limit_bytes",
    "user_error_message",
]


class UserError(ValueError):
    """Bad input the user can fix; the message names the input and the fix."""


class NonFiniteError(UserError, FloatingPointError):
    """A result is NaN / inf (a sampler or an optimiser diverged)."""


class ConvergenceError(UserError):
    """A method did not converge with the given settings."""


# ------------------------------------------------------------------------------ arguments


def as_count(value, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int (NumPy and JAX integers included) if it is an integer
    ``>= minimum``; else a :class:`UserError` naming ``name``."""
    import numbers

    if hasattr(value, "ndim") and getattr(value, "ndim", 1) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d NumPy / JAX integer
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise UserError(f"{name} must be {what}, got {value!r}")
    return int(value)


def as_key(key, name: str = "key"):
    """A typed PRNG key: one from ``jax.random.key`` as given, a raw ``uint32`` key from
    ``jax.random.PRNGKey`` wrapped; anything else (an int seed, say) a ``TypeError``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == np.uint32 and key.shape[-1:] == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))
    got = f"{type(key).__name__} {getattr(key, 'dtype', '')}".strip()
    raise TypeError(f"{name}: expected a PRNG key from jax.random.key(seed), got {got}")


# ---------------------------------------------------------------------------------- memory


def memory_limit_bytes() -> int:
    """The memory this process may use: physical memory, or a smaller cgroup limit."""
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        total = 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = int(text)
            if 0 < limit < (total or limit + 1):
                total = limit
    return total or 2**63


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """A :class:`UserError` if ``nbytes`` (a rough estimate) exceeds this machine's memory.

    ``what`` names the inputs and the size (``"--grid 20000 (4e+08 nodes)"``); ``fix`` says
    what to do (``"use --grid 1300 or less"``)."""
    limit = memory_limit_bytes()
    if nbytes > limit:
        raise UserError(
            f"{what} needs about {format_bytes(nbytes)} of memory; this machine has "
            f"{format_bytes(limit)}: {fix}"
        )


# ------------------------------------------------------------------------ classification

# Size options named in an out-of-memory message when the command has them.
_SIZE_OPTIONS = (
    "grid",
    "n",
    "batch_size",
    "samples",
    "chains",
    "sensors",
    "replicates",
    "steps",
    "dim",
    "budget",
    "channels",
)
# Input-file options named when a file turns out empty or truncated.
_INPUT_OPTIONS = ("data", "mesh", "checkpoint", "sensors", "truth")

_FILE_HINTS = {
    FileNotFoundError: "check the path",
    FileExistsError: "choose another path or remove the file",
    IsADirectoryError: "give a file, not a folder",
    NotADirectoryError: "a part of the path is a file, not a folder",
    PermissionError: "choose a path you may read and write",
}

_USER_TYPES = (
    ValueError,
    FloatingPointError,
    MemoryError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    EOFError,
    zipfile.BadZipFile,
)
_INNER_ERROR = re.compile(
    r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|BadZipFile)):\s*(.*\S)\s*$"
)


def _one_line(text: str, limit: int = 1200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _option_values(args, names) -> list[str]:
    out = []
    for name in names:
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        flag = "--" + name.replace("_", "-")
        out.append(f"{flag} {value}")
    return out


def _input_files(args) -> list[str]:
    out = []
    for name in _INPUT_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
            out.append(f"--{name} {os.fspath(value)!r}")
    return out


def _os_error_message(err: OSError) -> str:
    if err.filename is None or not err.strerror:
        return str(err)  # a message written by pdegen (one argument): already names the input
    hint = next((h for cls, h in _FILE_HINTS.items() if isinstance(err, cls)), None)
    if hint is None and err.errno == _errno.ENOSPC:
        hint = "free some space or write elsewhere (--out)"
    name = repr(os.fspath(err.filename))
    if err.filename2 is not None:
        name += f" -> {os.fspath(err.filename2)!r}"
    text = f"{err.strerror.lower()}: {name}"
    return f"{text} ({hint})" if hint else text


def _memory_message(detail: str, args) -> str:
    sizes = _option_values(args, _SIZE_OPTIONS)
    what = "; reduce " + ", ".join(sizes) if sizes else ""
    detail = f" ({detail})" if detail else ""
    return f"out of memory{detail}: the problem is too large for this machine{what}"


def _jax_runtime_message(err: BaseException, args) -> str | None:
    text = str(err)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
        first = text.strip().splitlines()[0] if text.strip() else ""
        return _memory_message(_one_line(first, 200), args)
    found = None
    for line in text.splitlines():
        m = _INNER_ERROR.match(line)
        if m and _is_user_error_name(m.group(1)):
            found = m.group(2)
    return _one_line(found) if found else None


def _is_user_error_name(name: str) -> bool:
    """Whether the exception class ``name`` (as JAX prints it for an exception raised in a host
    callback: the bare class name) is one of the user-error types: a builtin, or a class defined
    in a loaded ``pdegen`` module."""
    import builtins
    import sys

    candidates = [getattr(builtins, name, None), getattr(zipfile, name, None)]
    candidates += [
        getattr(mod, name, None)
        for mod_name, mod in list(sys.modules.items())
        if mod is not None and (mod_name == "pdegen" or mod_name.startswith("pdegen."))
    ]
    return any(isinstance(c, type) and issubclass(c, _USER_TYPES) for c in candidates)


def user_error_message(err: BaseException, args=None) -> str | None:
    """The one-line message for an exception that is the user's to fix, else ``None`` (a
    programming error: the caller re-raises it with its traceback).

    User errors: :class:`UserError` and every ``ValueError``, ``FileNotFoundError``,
    ``FileExistsError``, ``IsADirectoryError``, ``NotADirectoryError``, ``PermissionError`` and
    other ``OSError`` with an ``errno`` (a full disk), ``EOFError`` and ``zipfile.BadZipFile`` (an
    empty or truncated file), ``MemoryError`` (the message lists the size options to reduce),
    ``FloatingPointError`` (non-finite results), and a ``JaxRuntimeError`` that wraps one of
    these or reports that the device ran out of memory. ``TypeError`` and everything else is a
    programming error.
    """
    if isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    if isinstance(err, MemoryError):
        return _memory_message(_one_line(str(err), 300), args)
    if isinstance(err, (EOFError, zipfile.BadZipFile)):
        files = _input_files(args)
        where = f" reading {' or '.join(files)}" if files else ""
        what = "ends too early" if isinstance(err, EOFError) else "is not a valid archive"
        return _one_line(
            f"a file {what}{where} ({type(err).__name__}: {err}): the file is empty, "
            f"truncated or not what the option expects; write it again"
        )
    if isinstance(err, OSError):
        if isinstance(err, tuple(_FILE_HINTS)) or err.errno is not None:
            return _one_line(_os_error_message(err))
        return None
    if isinstance(err, (ValueError, FloatingPointError)):
        return _one_line(str(err) or type(err).__name__)
    if type(err).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):
        return _jax_runtime_message(err, args)
    return None
