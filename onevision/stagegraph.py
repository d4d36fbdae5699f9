"""The code each stage really runs: its function's import closure inside ``onevision``.

``dvc.yaml`` lists, per stage, the source files DVC hashes to decide whether a
stage must rerun. Written by hand, that list drifts from the code (a stage that
starts importing the simulator keeps its old models when the simulator
changes). This module computes it instead: starting from the module of the
stage's function (``onevision.stages.STAGES``), it follows every ``import``
and ``from ... import`` statement, at module level *and inside functions*,
that names a module of the ``onevision`` package, and returns the set of files
reached. Parsing is static (``ast``): nothing is imported, so it is cheap and
sees lazy imports too.

``onevision stage dvc-deps`` rewrites the code deps of ``dvc.yaml`` from it, and
``tests/code/test_stagegraph.py`` fails when the committed file differs.

The user's own data is a dependency too: with ``data.source: import`` the
catalog CSV, the query log and the photo folder are deps of ``prepare``
(:func:`stage_input_deps`), so DVC content-hashes them and a changed price or
photo reruns what depends on it. They come from the effective config, so
``onevision retrain`` rewrites them whenever params.yaml points elsewhere
(:func:`sync_dvc_yaml`), and ``prepare`` refuses to run when they are missing.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import onevision
from onevision.stages import STAGES

if TYPE_CHECKING:
    from onevision.config import Config

PACKAGE = "onevision"
PACKAGE_DIR = Path(onevision.__file__).resolve().parent
# Files every stage runs through (the CLI entry point, config, registry, paths): listed once per stage too,
# so that a change of how stages are called or configured reruns them.
COMMON = ("onevision/stages.py", "onevision/config.py", "onevision/paths.py")


def module_file(module: str) -> Path | None:
    """``onevision.a.b`` -> the file that defines it (``a/b.py`` or ``a/b/__init__.py``), None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def direct_imports(path: Path) -> frozenset[Path]:
    """Package files imported anywhere in ``path`` (module level, functions, ``TYPE_CHECKING`` blocks excluded)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if _is_type_checking_block(node) for n in ast.walk(node)}
    found: set[Path] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name`: name may be a submodule or an attribute of pkg; both are tried.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:depth]))
                if file is not None and file != path:
                    found.add(file)
    return frozenset(found)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def import_closure(module: str) -> set[Path]:
    """Every package file reached from ``module`` (included) through imports."""
    start = module_file(module)
    if start is None:
        raise KeyError(f"{module} is not a module of the {PACKAGE} package")
    seen, todo = {start}, [start]
    while todo:
        for dep in direct_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def stage_code_deps(stage: str) -> list[str]:
    """The source files of ``stage``, relative to the project root, sorted (``__init__`` files of empty packages dropped)."""
    module = STAGES[stage].split(":")[0]
    files = {f for f in import_closure(module) if f.name != "__init__.py" or f.read_text().strip()}
    rel = {f.relative_to(PACKAGE_DIR.parent).as_posix() for f in files} | set(COMMON)
    return sorted(rel)


def is_code_dep(dep: str) -> bool:
    """A dvc.yaml dep that is project source (rewritten from the closure) rather than data or a model."""
    return dep.startswith(f"{PACKAGE}/") or dep == PACKAGE


def stage_input_deps(stage: str, cfg: Config | None) -> list[str] | None:
    """The user-data deps of ``stage`` under ``cfg`` (None: the stage has none that come from the config).

    ``prepare`` of an imported catalog depends on the catalog CSV, the query log and the photo folder
    (:func:`onevision.data.stages.import_inputs`).
    """
    if stage != "prepare" or cfg is None:
        return None
    from onevision.data.stages import import_inputs

    return import_inputs(cfg)


def render_dvc_yaml(text: str, cfg: Config | None = None) -> str:
    """``dvc.yaml`` text with every stage's code deps replaced by its import closure and, given ``cfg``,
    the user-data deps of ``prepare`` by :func:`stage_input_deps`; other data deps, params, outs and
    comments stay as written (the file is edited line by line, not re-serialised)."""
    lines, out = text.splitlines(), []
    stage, in_deps, i = None, False, 0

    def generated(name: str) -> list[str]:
        return [f"      - {dep}" for dep in (stage_input_deps(name, cfg) or []) + stage_code_deps(name)]

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("#"):
            stage, in_deps = stripped[:-1], False
        elif stage and indent == 4 and stripped.endswith(":"):
            if in_deps:  # leaving deps: append the generated deps
                out.extend(generated(stage))
            in_deps = stripped == "deps:" and stage in STAGES
        elif in_deps and stripped.startswith("- "):
            dep = stripped[2:].strip()
            if is_code_dep(dep) or stage_input_deps(stage, cfg) is not None:
                i += 1
                continue  # a generated dep: written below
        out.append(line)
        i += 1
    if in_deps and stage:
        out.extend(generated(stage))
    return "\n".join(out) + "\n"


def sync_dvc_yaml(root: Path, cfg: Config) -> bool:
    """Rewrite ``root/dvc.yaml`` when its generated deps differ from ``cfg``'s (atomically); True when rewritten."""
    path = root / "dvc.yaml"
    text = path.read_text()
    new = render_dvc_yaml(text, cfg)
    if new == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)
    return True
