"""The ``pdegen`` command line."""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time

# Modules that add sub-commands through ``register(subparsers)``.
_SUBCOMMAND_MODULES: list[str] = [
    "pdegen.models._cli",
    "pdegen.fem.statfem._cli",
    "pdegen.optimise._cli",
    "pdegen.inverse._invert_cli",
]


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def _write_json(path, payload):
    from ._io import write_json_atomic

    write_json_atomic(path, payload)


# Rough peak memory per degree of freedom of ``solve`` (assembly, sparse factorisation, the
# VTU/XDMF writers and the figure; measured ~9-10 kB on P1 unit squares of 160k-640k nodes) and
# per node and pair in a batch of ``data`` (~2-5 kB, Darcy the largest).
_SOLVE_BYTES_PER_DOF = 10e3
_DATA_BYTES_PER_NODE_IN_BATCH = 5e3


def _largest_grid(bytes_per_node: float) -> int:
    from ._errors import memory_limit_bytes

    return max(2, int((memory_limit_bytes() / bytes_per_node) ** 0.5))


def _check_solve_args(args) -> None:
    import math

    from ._errors import UserError, check_memory

    if args.mesh is not None and not os.path.isfile(args.mesh):
        raise FileNotFoundError(f"--mesh: no such file {args.mesh!r}")
    if not (math.isfinite(args.k) and math.isfinite(args.k * args.k)):
        raise UserError(f"--k must be a finite wavenumber (k^2 finite too), got {args.k}")
    if args.mesh is None:
        if args.grid < 2:
            raise UserError(f"--grid must be >= 2 nodes per side, got {args.grid}")
        per_node = _SOLVE_BYTES_PER_DOF * (4 if args.element == "P2" else 1)
        check_memory(
            args.grid**2 * per_node,
            f"--grid {args.grid} ({args.grid**2:.3g} nodes, element {args.element})",
            f"use --grid {_largest_grid(per_node)} or less",
        )


# ---------------------------------------------------------------------------- solve


def _build_problem(args):
    import jax.numpy as jnp
    import numpy as np

    from pdegen import fem

    if args.mesh:
        mesh = fem.read_mesh(args.mesh)
    else:
        mesh = fem.unit_square(
            args.grid, cell_type="quad" if args.element.startswith("Q") else "triangle"
        )
    V = fem.FunctionSpace(mesh, args.element)
    x0, y0 = mesh.points.mean(axis=0)
    if args.problem == "poisson":
        problem = fem.Poisson(V)
        theta = dict(kappa=1.0, f=1.0)
        label = "-div(grad u) = 1, u = 0 on the boundary"
    elif args.problem == "darcy":
        problem = fem.Darcy(V)
        # A fixed, visibly heterogeneous permeability: 12 where a smooth pattern is >= 0, else 3.
        pattern = np.sin(6 * mesh.points[:, 0]) * np.cos(5 * mesh.points[:, 1]) + 0.2
        theta = dict(kappa=problem.permeability(jnp.asarray(pattern)), f=1.0)
        label = "-div(a grad u) = 1, a in {3, 12} piecewise constant, u = 0 on the boundary"
    else:
        problem = fem.Helmholtz(V, boundary="impedance")
        src = lambda x: 100.0 * jnp.exp(-200.0 * ((x[0] - x0) ** 2 + (x[1] - y0) ** 2))  # noqa: E731
        theta = dict(k=float(args.k), f=src)
        label = f"-Lap u - k^2 u = f (Gaussian source), du/dn - i k u = 0, k = {args.k:g}"
    return mesh, V, problem, theta, label


def cmd_solve(args) -> int:
    """Run ``pdegen solve``: one Poisson, Helmholtz or Darcy solve, written for ParaView.

    Solves on ``--mesh`` or a ``--grid`` unit square; writes the solution as VTU and XDMF, a PNG
    figure and a JSON summary to ``--out``, and prints the number of dofs, the solve time and
    the relative residual.

    Args:
        args: The parsed command line (from :func:`build_parser`).

    Returns:
        The exit code, 0 on success.

    Raises:
        FileNotFoundError: ``--mesh`` names no file.
        pdegen._errors.UserError: A bad option (grid, wavenumber, a problem too large for the
            memory), before any work.
    """
    _check_solve_args(args)
    _enable_x64()
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdegen import fem
    from pdegen.fem import plot_field, save_figure

    mesh, V, problem, theta, label = _build_problem(args)
    solve = jax.jit(lambda: problem.solve(**theta))
    t0 = time.perf_counter()
    u = solve().block_until_ready()
    t_first = time.perf_counter() - t0
    fem.clear_solver_cache()  # time a real factorisation, not a cache hit
    t0 = time.perf_counter()
    u = solve().block_until_ready()
    t_solve = time.perf_counter() - t0
    r = problem.residual(u, **theta)
    b = problem.rhs(**problem.split_arguments(theta)[1])
    rel_res = float(jnp.linalg.norm(r) / jnp.maximum(jnp.linalg.norm(b), 1e-300))
    if not bool(jnp.all(jnp.isfinite(u))):
        from ._errors import NonFiniteError

        raise NonFiniteError(
            f"the {args.problem} solution is not finite (NaN / inf): the system is singular "
            f"for these settings (element {args.element}"
            + (f", --k {args.k:g}" if args.problem == "helmholtz" else "")
            + "); change them; nothing was written"
        )

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.problem)
    point_u = jnp.asarray(u)[: mesh.npoints]
    if args.problem == "darcy":
        cell = {"a": theta["kappa"]}
    else:
        cell = None
    # with the space, a P2 / Q2 solution is written on all its dofs (triangle6 / quad9 cells)
    fem.write_mesh(stem + ".vtu", V, point_data={"u": u}, cell_data=cell)
    fem.write_mesh(stem + ".xdmf", V, point_data={"u": u}, cell_data=cell)
    ncols = 2 if args.problem in ("darcy", "helmholtz") else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.4 * ncols, 3.8), squeeze=False)
    if args.problem == "helmholtz":
        plot_field(mesh, point_u.real, ax=axes[0, 0], title="Re u", cmap="RdBu_r")
        plot_field(mesh, abs(point_u), ax=axes[0, 1], title="|u|")
    elif args.problem == "darcy":
        plot_field(mesh, theta["kappa"], ax=axes[0, 0], title="permeability a", cmap="cividis")
        plot_field(mesh, point_u, ax=axes[0, 1], title="u")
    else:
        plot_field(mesh, point_u, ax=axes[0, 0], title="u")
    fig.suptitle(label, fontsize=9)
    save_figure(fig, stem + ".png")
    plt.close(fig)
    summary = {
        "problem": args.problem,
        "equation": label,
        "element": args.element,
        "mesh": args.mesh or f"unit square, {args.grid}x{args.grid} nodes",
        "ncells": mesh.ncells,
        "ndofs": V.ndofs,
        "solve_seconds": t_solve,
        "first_call_seconds_incl_compile": t_first,
        "relative_residual": rel_res,
        "files": [stem + ext for ext in (".vtu", ".xdmf", ".png")],
    }
    _write_json(stem + ".json", summary)
    print(f"pdegen solve {args.problem}: {label}")
    print(
        f"  mesh      {summary['mesh']} ({mesh.ncells} {mesh.cell_type}s), element {args.element}"
    )
    print(f"  dofs      {V.ndofs}")
    print(f"  time      {t_solve * 1e3:.1f} ms (first call incl. compilation {t_first:.2f} s)")
    print(f"  residual  {rel_res:.2e} (relative, ||A u - b|| / ||b||)")
    print(f"  wrote     {', '.join(summary['files'])}")
    return 0


def _add_solve(sub):
    p = sub.add_parser(
        "solve",
        help="solve a PDE on a built-in grid or a mesh file",
        description="Solve Poisson, Helmholtz (impedance boundary) or Darcy; write "
        "VTU/XDMF (ParaView), a PNG figure and a JSON summary.",
    )
    p.add_argument("problem", choices=["poisson", "helmholtz", "darcy"])
    p.add_argument("--mesh", help="mesh file readable by meshio (.msh, .xdmf, .vtu, ...)")
    p.add_argument(
        "--grid", type=int, default=64, help="nodes per side of the built-in unit square"
    )
    p.add_argument("--element", default="P1", choices=["P1", "P2", "Q1"])
    p.add_argument("--k", type=float, default=20.0, help="Helmholtz wavenumber")
    p.add_argument("--out", default="out/solve", help="output folder")
    p.set_defaults(func=cmd_solve)


def cmd_data(args) -> int:
    """Run ``pdegen data``: a data set of ``(a, u)`` pairs of one PDE task.

    Writes ``--n`` pairs of a task of :data:`pdegen.fem.TASKS` on a ``--grid`` unit square as
    ``.npz``, with a JSON summary and a PNG of the first pairs.

    Args:
        args: The parsed command line (from :func:`build_parser`).

    Returns:
        The exit code, 0 on success.
    """
    _enable_x64()
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdegen import fem
    from pdegen.fem import save_figure

    fields, meta = fem.generate_dataset(
        args.task,
        args.n,
        key=jax.random.key(args.seed),
        grid=args.grid,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    meta["seed"] = args.seed
    fem.save_dataset(args.out, fields, meta)
    k = min(4, args.n)
    fig, axes = plt.subplots(2, k, figsize=(2.4 * k, 4.6), squeeze=False)
    for i in range(k):
        for c, name in enumerate(meta["channels"]):
            im = axes[c, i].imshow(fields[i, c], origin="lower", cmap="viridis" if c else "cividis")
            axes[c, i].set_xticks([])
            axes[c, i].set_yticks([])
            axes[c, i].set_title(f"{name} #{i}", fontsize=8)
            fig.colorbar(im, ax=axes[c, i], fraction=0.046, pad=0.04)
    fig.suptitle(meta["equation"], fontsize=8)
    png = args.out[:-4] + ".png"
    save_figure(fig, png, dpi=80)
    plt.close(fig)
    print(f"pdegen data {args.task}: {meta['equation']}")
    print(f"  pairs     {args.n} on a {args.grid}x{args.grid} grid, seed {args.seed}")
    print(
        f"  time      {meta['seconds']:.2f} s ({meta['seconds'] / args.n * 1e3:.1f} ms per pair, "
        f"{meta['devices']} device(s), solver {meta['solver']})"
    )
    print(
        f"  residual  mean {meta['mean_relative_residual']:.1e}, max {meta['max_relative_residual']:.1e} (relative FEM residual)"
    )
    print(f"  wrote     {args.out}, {args.out[:-4]}.json, {png}")
    return 0


def _add_data(sub):
    p = sub.add_parser(
        "data",
        help="generate (coefficient, solution) pairs for a DiffusionPDE task",
        description="Generate N pairs (a, u) on a grid; writes .npz + .json metadata + a PNG.",
    )
    p.add_argument("task", choices=["poisson", "helmholtz", "darcy"])
    p.add_argument("--n", type=int, default=100, help="number of pairs")
    p.add_argument("--grid", type=int, default=64, help="nodes per side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--out", default=None, help="output .npz path (default out/data/<task>-<grid>.npz)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_data)


def _run_data(args) -> int:
    if args.out is None:
        args.out = os.path.join("out", "data", f"{args.task}-{args.grid}.npz")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must end with .npz, got {args.out!r}")
    _check_data_args(args)
    return cmd_data(args)


def _check_data_args(args) -> None:
    from ._errors import UserError, check_memory
    from ._io import check_output_file

    for flag, value, low in (
        ("--n", args.n, 1),
        ("--grid", args.grid, 3),
        ("--batch-size", args.batch_size, 1),
    ):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    for path in (args.out, args.out[:-4] + ".json", args.out[:-4] + ".png"):
        check_output_file(path)
    nodes = args.grid**2
    per_node = 16 * args.n + _DATA_BYTES_PER_NODE_IN_BATCH * min(args.batch_size, args.n)
    check_memory(
        nodes * per_node,
        f"--n {args.n} pairs on --grid {args.grid} ({nodes:.3g} nodes, "
        f"--batch-size {args.batch_size})",
        f"use --grid {_largest_grid(per_node)} or less, or fewer pairs / a smaller batch",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``pdegen`` argument parser, with every sub-command.

    ``solve`` and ``data`` are defined here; each module of ``_SUBCOMMAND_MODULES`` adds its
    own through ``register(subparsers)`` (``train``, ``sample``, ``statfem``, ``optimise``,
    ``invert``, ``demo``).
    """
    from pdegen import __version__

    parser = argparse.ArgumentParser(
        prog="pdegen", description="PDE-constrained generative modelling in JAX"
    )
    parser.add_argument("--version", action="version", version=f"pdegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_solve(sub)
    _add_data(sub)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# ------------------------------------------------------------------------- error policy

# ``--out`` of these commands is a file; of every other command a folder.
_OUT_IS_FILE = {"data"}


def check_outputs(args) -> None:
    """Check ``--out`` before any work.

    ``--out`` must be a usable folder (a file for ``data``), not an existing file, with no file
    on the way to it.

    Raises:
        ValueError: ``--out`` is empty.
        FileExistsError: ``--out`` is an existing file where a folder is expected (or a file
            stands on the way to it).
        PermissionError: ``--out`` is not writable.
    """
    from ._io import check_output_dir, check_output_file

    out = getattr(args, "out", None)
    if out is None:
        return
    if args.command in _OUT_IS_FILE:
        check_output_file(out)
    else:
        check_output_dir(out)


def _command_of(argv) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    return next((a for a in argv if not str(a).startswith("-")), "") or "command"


def _close_progress_bars() -> None:
    """End any tqdm bar still drawn, so that the last message starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    with contextlib.suppress(Exception):  # cosmetic only
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()


def _quiet_jax_callback_logs() -> None:
    """JAX logs the traceback of an exception raised in a host callback before re-raising it as
    a ``JaxRuntimeError``; the command line reports that error itself (one line for bad input,
    the full text for a programming error), so the log would only repeat it."""
    import logging

    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)


class _StickyInterrupt:
    """A SIGINT handler whose ``KeyboardInterrupt`` cannot be lost.

    Python delivers Ctrl-C as an exception at the next bytecode of the main thread; when that
    bytecode belongs to a finaliser or a weakref callback (some libraries run them between
    compiled blocks) the exception is printed as "ignored" and the command runs on. So after the
    first Ctrl-C a daemon thread raises it again in the main thread every second until
    :func:`main` has caught it (:meth:`caught`), and a lost ``KeyboardInterrupt`` is not printed.
    """

    def __init__(self):
        self._caught = threading.Event()
        self._lock = threading.Lock()
        self._armed = False

    def __call__(self, signum, frame):
        if self._caught.is_set():  # a repeat that was already on its way
            return
        if not self._armed:
            self._armed = True
            threading.Thread(target=self._repeat, daemon=True).start()
        raise KeyboardInterrupt

    def _repeat(self):
        while not self._caught.wait(1.0):
            with self._lock:
                if not self._caught.is_set():
                    _thread.interrupt_main()

    def caught(self):
        with self._lock:
            self._caught.set()

    @contextlib.contextmanager
    def installed(self):
        """Install the handler for the block (only from the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        previous_hook = sys.unraisablehook

        def quiet_when_lost(unraisable):
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                previous_hook(unraisable)

        sys.unraisablehook = quiet_when_lost
        try:
            yield self
        finally:
            self.caught()
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook


def main(argv=None) -> int:
    """Run ``pdegen COMMAND ...``; returns the exit code.

    Error policy: a user error (bad argument, file or data, a non-finite result, no
    convergence, too large a problem; see :func:`pdegen._errors.user_error_message`) prints one
    line ``pdegen COMMAND: error: ...`` on stderr and returns 2. Ctrl-C prints ``pdegen COMMAND:
    interrupted`` and returns 130 (every file is written atomically, so none is left half
    written). Any other exception is a programming error and propagates with its traceback.
    """
    interrupt = _StickyInterrupt()
    with interrupt.installed():
        return _main(argv, interrupt)


def _main(argv, interrupt: _StickyInterrupt) -> int:
    from ._errors import user_error_message

    command = _command_of(argv)
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = args.command
        _quiet_jax_callback_logs()
        check_outputs(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        interrupt.caught()
        _close_progress_bars()
        print(f"pdegen {command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as err:  # classified below; programming errors are re-raised
        message = user_error_message(err, args)
        if message is None:
            raise
        _close_progress_bars()
        prefix = f"pdegen {command}: "
        while message.startswith(prefix):  # messages that already name the command
            message = message[len(prefix) :]
        print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
        return 2


def run() -> None:
    """The ``pdegen`` command as a process: :func:`main`, then its exit code.

    After Ctrl-C the process ends at once with 130 (``os._exit``, the output streams flushed
    first) instead of through the interpreter's teardown: JAX's runtime may still run a block the
    interrupt abandoned (a sampler's host callbacks, say), and tearing the interpreter down under
    it ended the process with a segmentation fault instead of 130 in about one of three test-suite
    runs. Every file is written atomically, so nothing is left to clean up."""
    code = main()
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
