"""The layers, checked by import-linter (contracts in pyproject.toml) and an AST scan.

* flows -> tasks -> onevision: the flows (``flows/``) use the tasks (``tasks/``), the tasks the library, and
  the package, its command line included, never imports ``flows`` or ``tasks`` (the command line loads the flow
  files by path, as a worker does);
* the library (every module of ``onevision`` outside ``onevision.app``) imports neither Prefect nor the
  application layer, not even inside a function (grimp, import-linter's graph, reads those too);
* no import cycle between sibling modules or packages, at any depth;
* no module imports another module's private (``_name``) names.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests import REPO

LINT = Path(sys.executable).parent / "lint-imports"
APPLICATION = {"app", "__main__"}  # the command line, the flows and tasks; `python -m onevision`


def _lint(cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(env_path or REPO)}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout[-2000:]


def test_the_library_contract_covers_every_module_outside_the_application_layer():
    """A new top-level module or package of the library cannot escape the contract by not being listed."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (library,) = [c for c in config["contracts"] if c["id"] == "library"]
    package = REPO / "onevision"
    children = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert {m.removeprefix("onevision.") for m in library["source_modules"]} == children - APPLICATION


def _copy(tmp_path: Path) -> Path:
    for package in ("onevision", "flows", "tasks"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_a_library_module_importing_prefect_breaks_the_contract(tmp_path):
    """The contract can fail: the same package with one lazy `import prefect` in the library."""
    victim = _copy(tmp_path) / "onevision" / "evaluation" / "metrics.py"
    victim.write_text(victim.read_text() + "\n\ndef _lazy():\n    import prefect  # noqa: F401\n")
    result = _lint(tmp_path, tmp_path)
    assert result.returncode == 1 and "onevision.evaluation.metrics -> prefect" in result.stdout, result.stdout[-3000:]


def test_the_command_line_importing_a_flow_module_breaks_the_contract(tmp_path):
    """The command line runs flows by file path only: `from flows.drift import ...` in it breaks the layers."""
    victim = _copy(tmp_path) / "onevision" / "app" / "monitoring_cli.py"
    victim.write_text(victim.read_text() + "\n\ndef _lazy():\n    from flows.drift import drift_monitor  # noqa: F401\n")
    result = _lint(tmp_path, tmp_path)
    assert result.returncode == 1 and "onevision.app.monitoring_cli -> flows.drift" in result.stdout, result.stdout[-3000:]


def _private_imports(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("onevision", "flows", "tasks"):
                found += [f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    assert [found for package in ("onevision", "flows", "tasks") for found in _private_imports(REPO / package)] == []


MAX_LINES = 450


def test_library_files_stay_short_or_say_why():
    """One idea per file: a file of onevision/ over MAX_LINES lines opens with a one-line "# Long on purpose: ..." reason."""
    texts = {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "onevision").rglob("*.py"))}
    long = {name: n for name, text in texts.items()
            if (n := len(text.splitlines())) > MAX_LINES and not text.startswith("# Long on purpose: ")}
    assert not long, f"split these by idea, or give a one-line '# Long on purpose: <why>' at the top: {long}"
