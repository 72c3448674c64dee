"""Re-run the tutorials in full and store their outputs in the notebooks (``make tutorials``).

    python tutorials/run_all.py                  # every notebook, full mode (PDEGEN_FAST unset)
    python tutorials/run_all.py 03 07            # only the notebooks whose names start with these
    python tutorials/run_all.py --clean-only     # only strip local paths from the stored outputs

Each notebook runs with the interpreter that runs this script, in its own folder, and is written
back atomically. Outputs are cleaned so that they do not depend on the machine: lines holding the
absolute path of the repository or of the interpreter are dropped from stderr streams (library
warnings), and the path is replaced by ``<repo>`` elsewhere; execution timestamps are removed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 1800


def _local_prefixes() -> list[str]:
    prefixes = {str(ROOT), os.path.dirname(os.path.dirname(sys.executable)), tempfile.gettempdir()}
    return sorted((p for p in prefixes if p and p != os.sep), key=len, reverse=True)


def clean_outputs(nb) -> int:
    """Drop or rewrite machine-specific text in the outputs; returns the number of changes."""
    prefixes = _local_prefixes()
    changes = 0
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines = out["text"].splitlines(keepends=True)
                if out.get("name") == "stderr":
                    kept = [ln for ln in lines if not any(p in ln for p in prefixes)]
                else:
                    kept = lines
                text = "".join(kept)
                for p in prefixes:
                    text = text.replace(p, "<repo>" if p == str(ROOT) else "<local>")
                if text != out["text"]:
                    changes += 1
                if not text:
                    continue
                out["text"] = text
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    return changes


def _kernel(tmp: Path) -> str:
    from ipykernel.kernelspec import install

    name = "pdegen-tutorials"
    install(kernel_name=name, prefix=str(tmp))
    os.environ["JUPYTER_PATH"] = str(tmp / "share" / "jupyter")
    return name


def _write(nb, path: Path) -> None:
    import nbformat

    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "only", nargs="*", help="name prefixes of the notebooks to run (default: all)"
    )
    parser.add_argument(
        "--clean-only", action="store_true", help="do not execute, only clean outputs"
    )
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
    if not paths:
        print("no notebook matches", " ".join(args.only), file=sys.stderr)
        return 2
    os.environ.pop("PDEGEN_FAST", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    with tempfile.TemporaryDirectory() as tmp:
        kernel = None if args.clean_only else _kernel(Path(tmp))
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if kernel is not None:
                import nbclient

                t0 = time.perf_counter()
                print(f"running {path.name} ...", flush=True)
                nbclient.NotebookClient(
                    nb,
                    timeout=TIMEOUT_S,
                    kernel_name=kernel,
                    resources={"metadata": {"path": str(HERE)}},
                ).execute()
                print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
            changes = clean_outputs(nb)
            _write(nb, path)
            print(f"  wrote {path.name} ({changes} output(s) cleaned)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
