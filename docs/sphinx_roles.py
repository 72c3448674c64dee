"""Griffe extension: turn the Sphinx roles of pdegen's docstrings into mkdocs cross-references.

The docstrings name other objects as ``:func:`exact_posterior```, ``:class:`pdegen.fem.Mesh```
or ``:meth:`NonlinearStatFEM.laplace_preconditioner```. Each role is resolved the way Python
would see the name from where the docstring stands (the object, its parents, then the full
path), then linked to the public name under which the API reference documents it (e.g.
``pdegen.fem.statfem._exact.exact_posterior`` is documented as
``pdegen.fem.statfem.exact_posterior``). A role naming a private helper becomes plain code; a
role that resolves to nothing stays a cross-reference, so the strict build fails on it.

It also marks each package's exports as public (they are re-exported from private modules,
without ``__all__``), so the API pages list exactly what ``from pdegen.fem import ...`` offers,
and splits ``a, b: text`` entries of ``Args:`` sections into one entry per name.
"""

from __future__ import annotations

import re

import griffe

ARGS_HEADER = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args):\s*$")
SHARED_ENTRY = re.compile(r"^(\s+)([A-Za-z_]\w*(?:,\s*[A-Za-z_]\w*)+)(\s*\([^)]*\))?:(.*)$")
ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`<>]+)`")
PUBLIC_PACKAGES = (
    "pdegen.fem",
    "pdegen.fem.statfem",
    "pdegen.mcmc",
    "pdegen.models",
    "pdegen.inverse",
    "pdegen.optimise",
)
DOCUMENTED_MODULES = ("pdegen._errors", "pdegen.cli")  # documented as modules of their own
EXTERNAL = ("jax", "jnp", "numpy", "np", "scipy", "equinox", "eqx", "optax", "skfem", "meshio")


def split_shared_entries(text: str) -> str:
    """``a, b: text`` in an ``Args:`` section becomes one entry per name with the same text
    (Google style has one name per entry; several docstrings describe related names together)."""
    lines = text.splitlines()
    out: list[str] = []
    in_args, args_indent, i = False, 0, 0
    while i < len(lines):
        line = lines[i]
        header = ARGS_HEADER.match(line)
        if header:
            in_args, args_indent = True, len(header.group(1))
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        if in_args and line.strip() and indent <= args_indent:
            in_args = False
        entry = SHARED_ENTRY.match(line) if in_args else None
        if entry is None:
            out.append(line)
            i += 1
            continue
        block = [line]
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(entry.group(1))
        ):
            if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].strip()):
                break
            block.append(lines[i])
            i += 1
        lead, names, kind, rest = entry.groups()
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{lead}{name}{kind or ''}:{rest}")
            out.extend(block[1:])
    return "\n".join(out)


def _lookup(root: griffe.Object, path: str) -> griffe.Object | griffe.Alias | None:
    obj = root
    for part in path.split("."):
        try:
            obj = obj.members[part]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def _target(obj):
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`name``` in every docstring of the package into an autoref link."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "pdegen":
            return
        self.root = pkg
        self.public: dict[str, str] = {}  # canonical path -> documented path
        for package in PUBLIC_PACKAGES:
            module = _lookup(pkg, package.removeprefix("pdegen."))
            if module is None:
                continue
            for name, member in module.members.items():
                if name.startswith("_") or (member.is_alias is False and member.is_module):
                    continue
                # The package's exports are its names re-exported from private modules
                # (``from ._mesh import Mesh as Mesh``): render them all in the reference.
                member.public = True
                target = _target(member)
                if target is not None and target.path not in self.public:
                    self.public[target.path] = f"{package}.{name}"
        for path in DOCUMENTED_MODULES:
            module = _lookup(pkg, path.removeprefix("pdegen."))
            if module is not None:
                self.public[module.path] = path
                for name, member in module.members.items():
                    if not name.startswith("_") and not member.is_alias:
                        self.public.setdefault(member.path, f"{path}.{name}")
        for package in ("pdegen",) + PUBLIC_PACKAGES:
            self.public.setdefault(package, package)
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            text = ROLE.sub(lambda m: self._link(obj, m), obj.docstring.value)
            obj.docstring.value = split_shared_entries(text)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)

    def _documented(self, obj) -> str | None:
        """The documented path of ``obj`` (or of its class, for a method), else None."""
        if obj.path in self.public:
            return self.public[obj.path]
        parent = obj.parent
        if parent is not None and parent.is_class:
            owner = self._documented(parent)
            if owner is not None and not obj.name.startswith("_"):
                return f"{owner}.{obj.name}"
        return None

    def _resolve(self, where: griffe.Object, name: str):
        scope = where
        while scope is not None:
            found = _lookup(scope, name)
            if found is not None:
                return _target(found)
            scope = scope.parent
        if name.startswith("pdegen."):
            found = _lookup(self.root, name.removeprefix("pdegen."))
            return None if found is None else _target(found)
        return None

    def _link(self, where: griffe.Object, match: re.Match) -> str:
        tilde, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if tilde else name
        if name.split(".")[0] in EXTERNAL:
            return f"`{shown}`"
        target = self._resolve(where, name)
        if target is None:
            return f"[`{shown}`][{name}]"  # unresolvable: the strict build reports it
        documented = self._documented(target)
        if documented is None:
            return f"`{shown}`"  # a private helper: named, not linked
        return f"[`{shown}`][{documented}]"
