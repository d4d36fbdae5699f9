"""The README's and the docs' code blocks, checked so that they cannot rot unseen.

* Python blocks (found by pytest-examples): compiled and linted with the project's ruff settings; a block whose
  info string says ``test="run"`` is run for real in a scratch copy of the project (the few long ones are
  ``slow``).
* Shell blocks (pytest-examples finds Python blocks only; a fence regex finds these and the JSON ones): every ``onevision ...`` command line is parsed by the real command line with ``--help``
  appended, so an unknown command or option (a rename the docs missed) fails here, naming the file and line.
  Nothing is executed: ``--help`` stops each command after its arguments are parsed.
* JSON blocks: valid JSON (what a user pastes into ``curl -d`` must parse).
* Where the docs point: every path they name under ``onevision/``, ``flows/`` or ``tasks/`` exists, every relative
  link resolves, and the stage tables (README "How it fits", docs/architecture.md) list the pipeline's stages in
  its order, so a moved file or a renamed stage cannot leave the map behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples
from typer.testing import CliRunner

from onevision.app.cli import app
from onevision.stages import stage_names
from tests import REPO
from tests.support.defaults import write_defaults

DOCS = [REPO / "README.md", REPO / "docs", REPO / "infra" / "README.md"]
PYTHON = {"py", "python"}
SHELL = {"bash", "sh", "shell", "console"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


FENCE = re.compile(r"^```(?P<lang>[A-Za-z]+)[^\n]*\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    path: Path
    start_line: int  # the line of the block's first line of code, 1-based
    source: str


def _markdown_files() -> list[Path]:
    return sorted(f for d in DOCS for f in ([d] if d.is_file() else d.rglob("*.md")))


def _fenced(langs: set[str]) -> list[Block]:
    out = []
    for path in _markdown_files():
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m["lang"].lower() in langs:
                out.append(Block(path, text.count("\n", 0, m.start("body")) + 1, m["body"]))
    return out


def _examples(langs: set[str]) -> list[CodeExample]:
    return [ex for ex in find_examples(*map(str, DOCS)) if ex.prefix.split()[0].lower() in langs]


def _where(ex: CodeExample | Block, line: int = 0) -> str:
    # pytest-examples counts from the fence line, the shell blocks from their first line of code
    first = ex.start_line + (1 if isinstance(ex, CodeExample) else 0)
    return f"{Path(ex.path).relative_to(REPO)}:{first + line}"


def _id(ex: CodeExample | Block) -> str:
    return _where(ex)


PY_EXAMPLES = _examples(PYTHON)
SHELL_EXAMPLES = _fenced(SHELL)
JSON_EXAMPLES = _fenced({"json"})


def test_the_docs_have_code_blocks_of_each_kind():
    """The collection itself works: a change of pytest-examples or of the fences cannot make this file pass empty."""
    assert len(PY_EXAMPLES) >= 3 and len(SHELL_EXAMPLES) >= 15 and len(JSON_EXAMPLES) >= 2


@pytest.mark.parametrize("example", PY_EXAMPLES, ids=_id)
def test_python_blocks_compile_and_pass_ruff(example: CodeExample, eval_example: EvalExample):
    compile(example.source, _where(example), "exec")
    # The docs' blocks follow the project's ruff settings (pyproject.toml), minus what a snippet cannot have.
    eval_example.set_config(line_length=150, target_version="py311", ruff_ignore=["D"], ruff_select=["E", "F", "I", "W", "B", "UP"])
    eval_example.lint_ruff(example)


def _run_examples() -> list[CodeExample]:
    return [ex for ex in PY_EXAMPLES if ex.prefix_settings().get("test") == "run"]


@pytest.mark.slow
@pytest.mark.parametrize("example", _run_examples(), ids=_id)
def test_runnable_python_blocks_run(example: CodeExample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Blocks marked ``test="run"`` run in a scratch directory holding the project's params.yaml."""
    write_defaults(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(example.source, _where(example), "exec"), {"__name__": "__docs__"})
    assert any(tmp_path.rglob("*")), f"{_where(example)} ran but wrote nothing"


def test_at_least_one_python_block_runs():
    assert _run_examples(), 'no docs block is marked test="run": the docs would only be linted'


@dataclass(frozen=True)
class Command:
    where: str
    argv: list[str]


def shell_commands(ex: Block) -> list[Command]:
    """The ``onevision`` command lines of a shell block: continuations joined, comments, ``$ `` prompts,
    leading ``VAR=value`` assignments and ``[optional]`` placeholders dropped."""
    out, pending, first = [], "", 0
    for i, raw in enumerate(ex.source.splitlines()):
        if not pending:
            first = i
        line = pending + raw.rstrip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"\s#.*$", "", line).removeprefix("$ ").strip()
        line = re.sub(r"\[[^\]]*\]", "", line)  # "[--by NAME]": an optional part, shown but not meant literally
        try:
            words = shlex.split(line)
        except ValueError as err:
            raise AssertionError(f"{_where(ex, first)}: cannot split the shell line {line!r}: {err}") from None
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words and Path(words[0]).name == "onevision":
            out.append(Command(_where(ex, first), words[1:]))
    return out


COMMANDS = [cmd for ex in SHELL_EXAMPLES for cmd in shell_commands(ex)]


def test_the_docs_show_many_onevision_commands():
    assert len(COMMANDS) >= 30, [c.where for c in COMMANDS]


def _parse_with_help(argv: list[str]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEVISION_")}
    return CliRunner().invoke(app, [*argv, "--help"], env=env, catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {' '.join(c.argv[:2])}")
def test_documented_commands_parse(command: Command):
    result = _parse_with_help(command.argv)
    assert result.exit_code == 0, f"{command.where}: `onevision {shlex.join(command.argv)}` is not a valid command line:\n{result.output[-1500:]}"
    assert "Usage" in result.output


@pytest.mark.parametrize("argv", [["retrian", "--profile", "small"], ["retrain", "--profil", "small"], ["data", "imprt"]])
def test_a_misspelt_command_or_option_fails_the_check(argv: list[str]):
    """The check above can fail: what a stale doc would show is refused by the parser."""
    assert _parse_with_help(argv).exit_code != 0


@pytest.mark.parametrize("example", JSON_EXAMPLES, ids=_id)
def test_json_blocks_are_valid_json(example: Block):
    try:
        json.loads(example.source)
    except json.JSONDecodeError as err:
        raise AssertionError(f"{_where(example, err.lineno - 1)}: not valid JSON: {err.msg}") from None


# --------------------------------------------------------------------------- where the docs point

# A path in the code's packages: `onevision/data/tables.py`, `flows/drift.py:drift_monitor` (the path part), `onevision/app/*_cli.py`.
CODE_PATH = re.compile(r"(?<![\w./-])((?:onevision|flows|tasks)/[\w./*-]*)")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def named_paths(text: str) -> list[str]:
    """The code paths ``text`` names; placeholders (``onevision/<package>/stage.py``) are left out."""
    return [m[1].rstrip(".") for m in CODE_PATH.finditer(text) if text[m.end():m.end() + 1] not in ("<", "{")]


def missing_paths(text: str, root: Path = REPO) -> list[str]:
    return [p for p in named_paths(text) if not (any(root.glob(p)) if "*" in p else (root / p).exists())]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_code_path_the_docs_name_exists(path: Path):
    missing = missing_paths(path.read_text())
    assert not missing, f"{path.relative_to(REPO)} names paths that do not exist: {', '.join(sorted(set(missing)))}"


def test_the_architecture_page_and_the_readme_name_code_paths():
    """The check above has something to check where the map is drawn."""
    for name in ("README.md", "docs/architecture.md"):
        assert len(named_paths((REPO / name).read_text())) >= 10, name


def test_a_moved_file_fails_the_path_check():
    text = "see `onevision/data/tables.py`, `flows/drift.py:drift_monitor` and `onevision/app/*_cli.py`; not `onevision/<package>/stage.py`"
    assert missing_paths(text) == []
    assert missing_paths("the check lives in `onevision/monitoring/monitor.py`.") == ["onevision/monitoring/monitor.py"]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path):
    targets = [t for t in LINK.findall(path.read_text()) if "://" not in t and not t.startswith("mailto:")]
    dead = [t for t in targets if not (path.parent / t).exists()]
    assert not dead, f"{path.relative_to(REPO)} links to files that do not exist: {', '.join(dead)}"


def _stage_column(text: str) -> list[str]:
    """The stage names in the first column of a markdown table, in order (a cell may hold several: `pretrain`, `sft`, `dpo`)."""
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return [name for cell in rows for name in re.findall(r"`(\w+)`", cell)]


@pytest.mark.parametrize("where", ["README.md:## How it fits", "docs/architecture.md:## The stage graph"])
def test_the_stage_tables_follow_the_pipeline(where: str):
    name, heading = where.split(":", 1)
    section = (REPO / name).read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    assert _stage_column(section) == list(stage_names()), f"{name}, {heading}: the stage table is not `onevision stage list`"
