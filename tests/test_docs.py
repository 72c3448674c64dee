"""The documentation: docstrings of every public name, the doctests, the strict site build and
the built pages as a browser shows them.

The site is built once per run (``mkdocs build --strict``, as ``make docs`` does) into the
run's temporary folder, shared by the xdist workers through a file lock.
"""

from __future__ import annotations

import doctest
import fcntl
import importlib
import io
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


# ------------------------------------------------------------------------- public names


def public_modules() -> list[str]:
    """Every importable pdegen module or package without a private component in its name."""
    import pdegen

    names = ["pdegen"]
    for info in pkgutil.walk_packages(pdegen.__path__, "pdegen."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_names(module_name: str) -> list[str]:
    """A package's exports (its non-underscore attributes that are not modules); for a plain
    module, the non-underscore functions and classes it defines."""
    module = importlib.import_module(module_name)
    is_package = hasattr(module, "__path__")
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if not is_package and getattr(value, "__module__", None) != module_name:
            continue
        if type(value).__name__ == "_Feature":  # from __future__ import annotations
            continue
        names.append(name)
    return sorted(names)


@pytest.fixture(scope="module")
def griffe_package():
    """The package as the API reference sees it: read from source by griffe."""
    griffe = pytest.importorskip("griffe", reason="the docs extra is not installed")
    return griffe.load("pdegen", search_paths=[str(ROOT)], resolve_aliases=True)


def _docstring(package, module_name: str, name: str) -> str | None:
    module = package
    for part in module_name.split(".")[1:]:
        module = module.members[part]
    member = module.members.get(name)
    if member is None:
        return None
    target = member.final_target if member.is_alias else member
    return target.docstring.value if target.docstring is not None else None


def test_public_modules_are_found():
    # The discovery below must see the layers (and would see a new one).
    found = set(public_modules())
    expected = {"pdegen.fem", "pdegen.fem.statfem", "pdegen.mcmc", "pdegen.models"}
    expected |= {"pdegen.inverse", "pdegen.optimise", "pdegen.cli"}
    assert expected <= found
    assert len(public_names("pdegen.fem")) > 40 and "Poisson" in public_names("pdegen.fem")
    assert "main" in public_names("pdegen.cli") and "argparse" not in public_names("pdegen.cli")


def has_one_line_summary(doc: str | None) -> bool:
    """A docstring that opens with a one-line summary: a first paragraph of one line."""
    if not doc or not doc.strip():
        return False
    first_paragraph = doc.strip().split("\n\n")[0]
    return "\n" not in first_paragraph.strip()


def test_summary_rule():
    assert has_one_line_summary("Solve the problem.\n\nMore text\nover lines.")
    assert has_one_line_summary("Solve the problem.")
    assert not has_one_line_summary(None) and not has_one_line_summary("  ")
    assert not has_one_line_summary("A summary that runs\nover two lines.")


def test_every_public_name_has_a_one_line_summary(griffe_package):
    missing = []
    checked = 0
    for module_name in public_modules():
        for name in public_names(module_name):
            path = f"{module_name}.{name}"
            checked += 1
            if not has_one_line_summary(_docstring(griffe_package, module_name, name)):
                missing.append(path)
    assert checked > 250
    assert not missing, f"public names without a docstring that opens with one line: {missing}"


def test_every_public_package_has_an_api_page():
    pages = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    for module_name in public_modules():
        if hasattr(importlib.import_module(module_name), "__path__") and module_name != "pdegen":
            assert f"::: {module_name}\n" in pages, f"no API page renders {module_name}"


# ------------------------------------------------------------------------------ doctests


def _run_doctests(tests: list[doctest.DocTest]) -> tuple[int, int, str]:
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test, out=out.write)
    return runner.failures, runner.tries, out.getvalue()


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted((ROOT / "pdegen").rglob("*.py")):
        if ">>> " in path.read_text():
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder().find(module, module_name)
    failures, tries, report = _run_doctests(tests)
    assert tries > 0
    assert failures == 0, report


GUIDE_PAGES = sorted(p.name for p in (DOCS / "guide").glob("*.md") if ">>> " in p.read_text())


def test_guide_pages_have_examples():
    # Every layer's guide page shows a runnable example with its output.
    assert {"fem.md", "statfem.md", "models.md", "inverse.md", "optimise.md"} <= set(GUIDE_PAGES)


def guide_examples(text: str) -> str:
    """The ``pycon`` code blocks of a page, one after the other, as one doctest text."""
    return "\n\n".join(re.findall(r"^```pycon\n(.*?)^```", text, flags=re.M | re.S))


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_guide_examples(page):
    """The examples of the user guide run and print what the page shows."""
    path = DOCS / "guide" / page
    test = doctest.DocTestParser().get_doctest(
        guide_examples(path.read_text()), {}, page, str(path), 0
    )
    failures, tries, report = _run_doctests([test])
    assert tries > 0
    assert failures == 0, report


# ------------------------------------------------------------------------------ the site


@pytest.fixture(scope="session")
def site(request, tmp_path_factory):
    """The site built by ``mkdocs build --strict``, once per run, with its build time."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    base = tmp_path_factory.getbasetemp()
    under_xdist = hasattr(request.config, "workerinput")  # workers share the parent folder
    shared = base.parent if under_xdist else base
    out = shared / "docs-site"
    record = shared / "docs-site.json"
    with open(shared / "docs-site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            record.write_text(
                json.dumps({"rc": done.returncode, "seconds": seconds, "log": done.stderr})
            )
    built = json.loads(record.read_text())
    return out, built


def test_strict_build_passes(site):
    out, built = site
    assert built["rc"] == 0, built["log"][-5000:]
    assert "WARNING" not in built["log"], built["log"][-5000:]
    print(f"docs build: {built['seconds']:.1f} s")
    for page in ("index.html", "getting-started.html", "design.html", "api/fem.html"):
        assert (out / page).is_file(), page
    # Every layer's guide page, every tutorial and a page per benchmark script.
    for layer in ("fem", "statfem", "models", "inverse", "optimise"):
        assert (out / "guide" / f"{layer}.html").is_file()
    for notebook in (ROOT / "tutorials").glob("[0-9]*.ipynb"):
        assert (out / "tutorials" / f"{notebook.stem}.html").is_file(), notebook.name
    for script in (ROOT / "benchmarks").glob("[a-z]*.py"):
        assert (out / "benchmarks" / f"{script.stem}.html").is_file(), script.name


class _Page(HTMLParser):
    """Headings (h1, h2 text) and images of an HTML page."""

    def __init__(self):
        super().__init__()
        self.headings: dict[str, list[str]] = {"h1": [], "h2": []}
        self.images: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self.headings:
            self._open = tag
            self.headings[tag].append("")
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open:
            self.headings[self._open][-1] += data


# (page, text of its h1, an h2 it must have)
PAGES = [
    ("index.html", "pdegen", "The layers"),
    ("api/fem.html", "pdegen.fem", "Poisson"),
    ("tutorials/01_fem_basics.html", "FEM basics with pdegen", None),
]


@pytest.mark.parametrize("page, h1, h2", PAGES)
def test_built_pages_have_headings_and_images(site, page, h1, h2):
    out, built = site
    assert built["rc"] == 0, built["log"][-5000:]
    parsed = _Page()
    parsed.feed((out / page).read_text())
    assert any(h1 in text for text in parsed.headings["h1"]), parsed.headings["h1"]
    if h2 is not None:
        assert any(h2 in text for text in parsed.headings["h2"]), parsed.headings["h2"][:20]
    assert parsed.images, f"{page}: no image"
    for src in parsed.images:
        if not src.startswith("data:"):
            assert (out / page).parent.joinpath(src).resolve().is_file(), f"{page}: {src} missing"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECKER = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="{url}" style="width:1280px;height:1600px"></iframe>
<script>
document.getElementById("page").addEventListener("load", function () {{
  const doc = this.contentDocument;
  const images = Array.from(doc.images);
  const texts = tag => Array.from(doc.querySelectorAll(tag)).map(h => h.textContent.trim());
  document.getElementById("result").textContent = JSON.stringify({{
    h1: texts("h1"), h2: texts("h2"),
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
  }});
}});
</script></body></html>
"""


def _browser(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("page, h1, h2", PAGES)
def test_pages_render_in_a_browser(site, tmp_path, page, h1, h2):
    """Headless Chromium opens the page from disk: its headings are there and every image has
    loaded (checked from a small page that loads it in a frame); a screenshot is taken and is
    not blank."""
    if _chromium() is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; .ci/run does)")
    out, built = site
    assert built["rc"] == 0, built["log"][-5000:]
    url = (out / page).resolve().as_uri()
    checker = tmp_path / "check.html"
    checker.write_text(CHECKER.format(url=url))
    done = _browser(
        "--allow-file-access-from-files",
        "--virtual-time-budget=15000",
        "--dump-dom",
        checker.as_uri(),
        profile=tmp_path / "profile-dom",
    )
    dom = done.stdout
    start = dom.find('<pre id="result">') + len('<pre id="result">')
    result = dom[start : dom.find("</pre>", start)]
    assert result.startswith("{"), (
        f"the page did not load in the browser: {result!r} {done.stderr[-2000:]}"
    )
    seen = json.loads(result.replace("&quot;", '"').replace("&amp;", "&"))
    assert any(h1 in text for text in seen["h1"]), seen["h1"]
    if h2 is not None:
        assert any(h2 in text for text in seen["h2"]), seen["h2"][:20]
    assert seen["images"] > 0 and seen["loaded"] == seen["images"], seen

    shot = tmp_path / (page.replace("/", "_") + ".png")
    _browser(
        f"--screenshot={shot}",
        "--window-size=1280,1600",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        url,
        profile=tmp_path / "profile-shot",
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    saved = os.environ.get("PDEGEN_DOCS_SCREENSHOTS")
    if saved:
        Path(saved).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(saved) / shot.name)
