"""Pages and figures made at build time.

- the figures of docs/figures.py, drawn by the package (under images/);
- the tutorials, rendered from tutorials/*.ipynb with their committed outputs (not executed);
- one page per benchmark script with its latest results read from benchmarks/results/ (tables
  from the JSON records, the figures as images);
- the command-line reference, one section per module that registers sub-commands.

Nothing here is written to the repository: the pages exist only in the built site.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.plugins import CombinedEvent, event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
MAX_ROWS = 80
_TEMPORARY: list[Path] = []  # folders removed once the site is written


def _tutorials() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9]*.ipynb"))


def _notebook_title(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def _benchmark_scripts() -> list[Path]:
    return sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def _owner(result: Path, scripts: list[str]) -> str | None:
    """The script a results file belongs to: the longest script name its name starts with."""
    matches = [s for s in scripts if result.stem == s or result.stem.startswith(s + "_")]
    return max(matches, key=len) if matches else None


def _results_of(script: str, scripts: list[str]) -> list[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_file() and _owner(p, scripts) == script)


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _fmt(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list):
        text = ", ".join(_fmt(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _short_list(value) -> bool:
    return isinstance(value, list) and len(value) <= 8 and all(_scalar(v) for v in value)


def _cell(value, width: int = 60) -> str:
    """A table cell: long text is cut (the full text is in the JSON file)."""
    text = _fmt(value)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _table(rows: list[dict]) -> list[str]:
    """A markdown table of records: one column per key holding scalars (or short lists)."""
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and (_scalar(value) or _short_list(value)):
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    if len(rows) > MAX_ROWS:
        lines += ["", f"({len(rows) - MAX_ROWS} more rows in the JSON file.)"]
    return lines


def _section(obj: dict, title: str, level: int) -> list[str]:
    """Markdown for one JSON object: its scalars as a key/value table, lists of records and
    dicts of records as tables, nested objects as subsections."""
    lines: list[str] = []
    scalars = {k: v for k, v in obj.items() if (_scalar(v) or _short_list(v)) and k != "machine"}
    if scalars:
        lines += ["| key | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in scalars.items()]
        lines.append("")
    for key, value in obj.items():
        if key in ("records", "machine") or key in scalars:
            continue
        heading = "#" * min(level, 6) + f" {title}{key}"
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines += [heading, "", *_table(value), ""]
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            records = [{"name": k, **v} for k, v in value.items()]
            if any(_scalar(x) for v in value.values() for x in v.values()):
                lines += [heading, "", *_table(records), ""]
            if level < 5:
                for name, sub in value.items():
                    nested = {k: v for k, v in sub.items() if not (_scalar(v) or _short_list(v))}
                    if any(isinstance(v, (dict, list)) and v for v in nested.values()):
                        lines += _section(nested, f"{title}{key} / {name} / ", level + 1)
        elif isinstance(value, dict) and value and level < 5:
            sub = _section(value, f"{title}{key} / ", level + 1)
            if sub:
                lines += [heading, "", *sub]
    return lines


def _benchmark_page(script: Path, scripts: list[str]) -> tuple[str, list[Path]]:
    name = script.stem
    source = script.read_text()
    doc = _docstring(script)
    summary, _, rest = doc.partition("\n\n")
    lines = [f"# {name}", "", summary, ""]
    if rest.strip():
        lines += ['??? info "About this benchmark"', ""]
        lines += ["    " + line if line else "" for line in rest.splitlines()]
        lines.append("")
    lines += ["## Rerun it", "", "```bash"]
    if "--quick" in source:
        lines.append(f".venv/bin/python benchmarks/{script.name} --quick   # a fast check")
    lines += [f".venv/bin/python benchmarks/{script.name}", "```", ""]
    lines += ["The results below are read from `benchmarks/results/` when the site is built."]
    images = []
    results = _results_of(name, scripts)
    for result in [r for r in results if r.suffix == ".png"]:  # the figures first
        images.append(result)
        lines += ["", f"## {result.name}", "", f"![{result.stem}]({result.name})"]
    for result in results:
        if result.suffix == ".json":
            data = json.loads(result.read_text())
            lines += ["", f"## {result.name}", ""]
            machine = data.get("machine") if isinstance(data, dict) else None
            if isinstance(machine, dict):
                lines += ["Machine: " + ", ".join(f"{k} {_fmt(v)}" for k, v in machine.items()), ""]
            elif isinstance(machine, str):
                lines += [f"Machine: {machine}", ""]
            if isinstance(data, dict):
                lines += _section(data, "", 3)
    if len(lines) and not _results_of(name, scripts):
        lines += ["", "No results are stored for this script yet."]
    return "\n".join(lines) + "\n", images


def _subcommand_modules() -> list[str]:
    """The modules ``pdegen.cli`` asks to ``register`` their sub-commands (read, not imported)."""
    tree = ast.parse((ROOT / "pdegen" / "cli.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and getattr(node.target, "id", "") == "_SUBCOMMAND_MODULES"
        ):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("pdegen/cli.py: _SUBCOMMAND_MODULES not found")


def _cli_page() -> str:
    lines = [
        "# Command line",
        "",
        "The `pdegen` command is `pdegen.cli.main`. `pdegen.cli` defines `solve` and `data`; every",
        "other sub-command is added by a module of the layer it belongs to, through",
        "`register(subparsers)`, and run by the function `register` sets as the parser's `func`.",
        "Run `pdegen COMMAND --help` for every option.",
        "",
        "## pdegen.cli",
        "",
        "::: pdegen.cli",
        "    options:",
        "      heading_level: 3",
        '      filters: ["^main$", "^build_parser$", "^check_outputs$", "^cmd_"]',
        "",
    ]
    for module in _subcommand_modules():
        lines += [
            f"## {module}",
            "",
            f"::: {module}",
            "    options:",
            "      heading_level: 3",
            '      filters: ["^register$", "^run"]',
            "",
        ]
    return "\n".join(lines)


def _figures() -> list[Path]:
    """Run docs/figures.py (in its own process: it enables float64) into a temporary folder."""
    outdir = Path(tempfile.mkdtemp(prefix="pdegen-docs-figures-"))
    _TEMPORARY.append(outdir)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "figures.py"), str(outdir)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"docs/figures.py failed:\n{done.stderr[-3000:]}")
    return sorted(outdir.glob("*.png"))


def _index(title: str, intro: str, entries: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", "", intro, ""]
    lines += [f"- [{label}]({target})" for label, target in entries]
    return "\n".join(lines) + "\n"


def on_config(config, **kwargs):
    """Fill the Tutorials and Benchmarks sections of the navigation from the repository."""
    tutorials = ["tutorials/index.md"] + [
        {_notebook_title(p): f"tutorials/{p.name}"} for p in _tutorials()
    ]
    benchmarks = ["benchmarks/index.md"] + [
        {s.stem: f"benchmarks/{s.stem}.md"} for s in _benchmark_scripts()
    ]
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Tutorials" in entry:
            entry["Tutorials"] = tutorials
        if isinstance(entry, dict) and "Benchmarks" in entry:
            entry["Benchmarks"] = benchmarks
    return config


@event_priority(100)  # before mkdocs-jupyter looks for notebooks among the files
def _add_generated_files(files, config, **kwargs):
    notebooks = _tutorials()
    for path in notebooks:
        files.append(File.generated(config, f"tutorials/{path.name}", abs_src_path=str(path)))
    files.append(
        File.generated(
            config,
            "tutorials/index.md",
            content=_index(
                "Tutorials",
                "The notebooks of `tutorials/`, shown with the outputs of their last full run "
                "(`make tutorials` re-runs them; the tests run them in a fast mode).",
                [(_notebook_title(p), p.name) for p in notebooks],
            ),
        )
    )
    files.append(File.generated(config, "api/cli.md", content=_cli_page()))
    for figure in _figures():
        files.append(File.generated(config, f"images/{figure.name}", abs_src_path=str(figure)))
    scripts = _benchmark_scripts()
    names = [s.stem for s in scripts]
    for script in scripts:
        page, images = _benchmark_page(script, names)
        files.append(File.generated(config, f"benchmarks/{script.stem}.md", content=page))
        for image in images:
            files.append(
                File.generated(config, f"benchmarks/{image.name}", abs_src_path=str(image))
            )
    files.append(
        File.generated(
            config,
            "benchmarks/index.md",
            content=_index(
                "Benchmarks",
                "Every speed or accuracy claim of pdegen is measured by a script in "
                "`benchmarks/` against a peer in the same run; each writes JSON (and figures) "
                "to `benchmarks/results/`. One page per script, with its latest results.",
                [
                    (
                        f"{s.stem}: {_docstring(s).splitlines()[0] if _docstring(s) else ''}",
                        f"{s.stem}.md",
                    )
                    for s in scripts
                ],
            ),
        )
    )
    return files


@event_priority(-100)  # after mkdocs-jupyter wrapped the notebooks
def _point_wrapped_notebooks_at_their_source(files, config, **kwargs):
    # mkdocs-jupyter's wrapper forwards unknown attributes to the file it wraps, but not the
    # source path of a generated file, which lives outside docs/.
    for file in files:
        inner = getattr(file, "__dict__", {}).get("file")
        if inner is not None and file.abs_src_path is None:
            file.abs_src_path = inner.abs_src_path
    return files


on_files = CombinedEvent(_add_generated_files, _point_wrapped_notebooks_at_their_source)


def on_post_build(config, **kwargs):
    while _TEMPORARY:
        shutil.rmtree(_TEMPORARY.pop(), ignore_errors=True)
