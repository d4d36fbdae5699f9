"""Atomic file writes: write a temporary file next to the target, then rename it over the target.

A reader (a later stage, a reviewer's command, the drift monitor) sees either
the previous file or the complete new one, never half of it, even when the
writer is killed (SIGKILL, OOM, a lost node) in the middle. ``os.replace`` is
atomic within one filesystem, which is why the temporary file lives in the
target's own folder.

    with atomic_path(out / "table.parquet") as tmp:
        frame.to_parquet(tmp)
    write_json(out / "metrics.json", metrics)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed onto ``path`` when the block succeeds, removed
    when it fails. The temporary name keeps the suffix, so writers that pick a format by suffix (``savefig``,
    ``np.savez``) write the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the target gets the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = True, default=None) -> Path:
    """``obj`` as JSON with a trailing newline."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")
