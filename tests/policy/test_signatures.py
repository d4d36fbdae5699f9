"""Functions with six or more parameters take them keyword-only.

The rule, checked by an AST scan of every module of ``onevision`` (``onevision.app`` included), ``flows`` and
``tasks``: a function
or method with 6 or more parameters (not counting ``self``/``cls``, ``*args`` or ``**kwargs``) has at most
2 positional ones; the others come after a bare ``*`` (``def f(cfg, root, *, a, b, c, d)``). Exceptions
only where a framework calls the function positionally, each in ``EXCEPTIONS`` with its reason.
"""

from __future__ import annotations

import ast

from tests import REPO

PACKAGES = [REPO / "onevision", REPO / "flows", REPO / "tasks"]
MIN_PARAMS = 6  # from this many parameters on ...
MAX_POSITIONAL = 2  # ... at most this many may be positional

# "onevision/path/to/module.py:Qualified.name" -> why a framework needs the parameters positional.
# None at present (no nn.Module.forward or callback has six or more parameters).
EXCEPTIONS: dict[str, str] = {}


def violations(source: str, path: str = "<string>") -> list[tuple[str, int]]:
    """``(qualified name, line)`` of every function in ``source`` that breaks the rule."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", True)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                positional = [*child.args.posonlyargs, *child.args.args]
                static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in child.decorator_list)
                if in_class and not static and positional and positional[0].arg in ("self", "cls"):
                    positional = positional[1:]
                if len(positional) + len(child.args.kwonlyargs) >= MIN_PARAMS and len(positional) > MAX_POSITIONAL:
                    found.append((f"{prefix}{child.name}", child.lineno))
                visit(child, f"{prefix}{child.name}.", False)
            else:
                visit(child, prefix, in_class)

    visit(ast.parse(source, filename=path), "", False)
    return found


def _scan() -> dict[str, int]:
    """``"onevision/...py:name" -> line`` for every violation in the packages."""
    out = {}
    for path in sorted(p for package in PACKAGES for p in package.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for name, line in violations(path.read_text(encoding="utf-8"), rel):
            out[f"{rel}:{name}"] = line
    return out


def test_functions_with_six_or_more_parameters_take_them_keyword_only():
    found = _scan()
    bad = [f"{key.split(':')[0]}:{line}:{key.split(':')[1]}" for key, line in found.items() if key not in EXCEPTIONS]
    assert not bad, (
        f"{len(bad)} function(s) with {MIN_PARAMS}+ parameters take more than {MAX_POSITIONAL} positionally; "
        "put the others after a bare '*' (and pass them by keyword at every call site):\n" + "\n".join(bad)
    )


def test_every_exception_is_still_needed():
    found = _scan()
    stale = [key for key in EXCEPTIONS if key not in found]
    assert not stale, f"these exceptions no longer break the rule (or were renamed): drop them from EXCEPTIONS: {stale}"
    assert all(reason.strip() for reason in EXCEPTIONS.values()), "every exception needs its reason"


def test_the_scan_catches_a_violation():
    source = '''
def six_positional(a, b, c, d, e, f): ...
def fine(cfg, root, *, a, b, c, d): ...
def five(a, b, c, d, e): ...
def varargs_do_not_count(a, b, c, d, e, *args, **kwargs): ...
def three_then_star(a, b, c, *, d, e, f): ...
def positional_only(a, b, c, /, d, e, f): ...
async def coroutine(a, b, c, d, e, f): ...
class Model:
    def __init__(self, a, b, *, c, d, e, f): ...
    def method(self, a, b, c, d, e, f): ...
    @classmethod
    def build(cls, a, b, c, *, d, e, f): ...
    @staticmethod
    def static(self, a, b, *, c, d, e): ...
    def outer(self):
        def inner(a, b, c, d, e, f): ...
'''
    assert violations(source) == [
        ("six_positional", 2),
        ("three_then_star", 6),
        ("positional_only", 7),
        ("coroutine", 8),
        ("Model.method", 11),
        ("Model.build", 13),
        ("Model.static", 15),
        ("Model.outer.inner", 17),
    ]
