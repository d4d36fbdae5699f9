"""Atomic writes: a reader sees the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from onevision import atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"hr@10": 0.5})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text('{"hr@1')
        raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "hr@10": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_writers_that_pick_the_format_by_suffix_still_do(tmp_path):
    with atomic.atomic_path(tmp_path / "a.npz") as tmp:
        np.savez(tmp, x=np.arange(3))
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    assert oct((tmp_path / "a.npz").stat().st_mode & 0o777) != oct(0o600)  # usual permissions, not mkstemp's


def test_a_writer_killed_mid_write_leaves_the_previous_content(tmp_path):
    target = tmp_path / "table.bin"
    atomic.write_bytes(target, b"old" * 10)
    code = ("import sys, time; from onevision import atomic\n"
            f"with atomic.atomic_path({str(target)!r}) as tmp:\n"
            "    with open(tmp, 'wb') as f:\n"
            "        f.write(b'new' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert target.read_bytes() == b"old" * 10
