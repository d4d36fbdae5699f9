"""``dvc.yaml``, generated from the stage declarations: code deps from each stage's imports, params from what it reads.

DVC reruns a stage when one of its deps or params changes. Written by hand,
those lists drift from the code (a stage that starts importing the simulator
keeps its old models when the simulator changes) and from the config (a
stage that depends on the whole ``profiles`` block reruns when another
profile is edited). This module writes the whole file from the
:class:`onevision.stages.Stage` declarations instead:

* **code deps**: starting from the module of the stage's function, it follows every ``import``
and ``from ... import`` statement, at module level *and inside functions*,
that names a module of the ``onevision`` package, and returns the set of files
reached. Parsing is static (``ast``): nothing is imported, so it is cheap and
sees lazy imports too.

* **params**: ``seed``, ``profile``, each key the stage ``reads``, the
  ``overrides.<section>`` of its sections, and ``profiles.<active>.<key>`` for
  each read key the active profile sets (DVC refuses keys that do not exist,
  so a key the profile leaves alone is not listed). Editing another profile
  changes no stage; switching profiles changes ``profile``, so every stage
  reruns, and ``onevision retrain`` rewrites the file for the new profile;
* **data deps, outs, plots, metrics**: as declared.

``onevision stage dvc-yaml`` writes it, and ``tests/code/test_stagegraph.py``
fails when the committed file differs.

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
from typing import TYPE_CHECKING, Any

import yaml

import onevision
from onevision.data.stage import import_inputs
from onevision.stages import Stage, declaration, declarations

if TYPE_CHECKING:
    from collections.abc import Mapping

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
    files = {f for f in import_closure(declaration(stage).module) if f.name != "__init__.py" or f.read_text().strip()}
    rel = {f.relative_to(PACKAGE_DIR.parent).as_posix() for f in files} | set(COMMON)
    return sorted(rel)


def stage_input_deps(stage: str, cfg: Config | None) -> list[str]:
    """The user-data deps of ``stage`` under ``cfg``: for ``prepare`` of an imported catalog, the catalog CSV,
    the query log and the photo folder (:func:`onevision.data.stage.import_inputs`); none otherwise."""
    if stage != "prepare" or cfg is None:
        return []

    return import_inputs(cfg)


def _has_key(tree: Mapping[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def stage_params(stage: Stage, params: Mapping[str, Any] | None = None) -> list[str]:
    """The params.yaml keys DVC watches for ``stage`` under the raw params.yaml mapping ``params``."""
    params = params or {}
    profile = params.get("profile") or "default"
    layer = (params.get("profiles") or {}).get(profile) or {}
    keys = ["seed", "profile", *stage.reads, *(f"overrides.{section}" for section in stage.sections)]
    keys += [f"profiles.{profile}.{key}" for key in stage.reads if _has_key(layer, key)]
    return keys


HEADER = """\
# Generated by `onevision stage dvc-yaml` from the stage declarations (Stage(...) in onevision/<package>/stage.py):
# edit those, not this file; `onevision retrain` rewrites it when params.yaml's profile or imported data change.
# Each stage runs `onevision stage run NAME` on the effective config of params.yaml
# (sections + profiles[profile] + overrides). params: the keys the stage reads, in each of those layers;
# deps: the data and models it reads, then its code (the import closure of its function).
"""


def render_dvc_yaml(cfg: Config | None = None, params: Mapping[str, Any] | None = None) -> str:
    """The whole ``dvc.yaml`` for the effective config ``cfg`` (imported data) and the raw params.yaml ``params``
    (the active profile's keys)."""
    out = [HEADER.rstrip("\n"), "stages:"]
    for stage in declarations().values():
        out.append(f"  {stage.name}:")
        out.append(f"    cmd: onevision stage run {stage.name}")
        if stage.doc:
            out.insert(len(out) - 1, f"    # {stage.doc}")
        lists = {
            "deps": [*stage_input_deps(stage.name, cfg), *stage.deps, *stage_code_deps(stage.name)],
            "params": stage_params(stage, params),
            "outs": [*stage.outs, stage.metrics_file],
            "plots": list(stage.plots),
            "metrics": list(stage.metrics),
        }
        for key, values in lists.items():
            if values:
                out.append(f"    {key}:")
                out.extend(f"      - {value}" for value in dict.fromkeys(values))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def read_params(root: Path) -> dict[str, Any]:
    """The raw mapping of ``root/params.yaml`` ({} when absent)."""

    path = Path(root) / "params.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def sync_dvc_yaml(root: Path, cfg: Config) -> bool:
    """Rewrite ``root/dvc.yaml`` when it differs from the generated file for ``cfg`` and ``root/params.yaml``
    (atomically); True when rewritten."""
    path = Path(root) / "dvc.yaml"
    new = render_dvc_yaml(cfg, read_params(root))
    if path.exists() and path.read_text() == new:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)
    return True
