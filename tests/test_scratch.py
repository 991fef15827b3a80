"""Scratch directories: a process killed with its spill on disk leaves it to the next one to
remove, and nobody removes a live process's. Real processes, really killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core.scratch import scratch_directory, scratch_root, sweep_scratch

HOLDER = """
import sys
from core.scratch import scratch_directory
with scratch_directory("clean") as directory:
    with open(f"{directory}/bucket-0.arrow", "wb") as spill:
        spill.write(b"x" * 1_000_000)
    print(directory, flush=True)
    sys.stdin.read()  # until the test closes it, or kills this process
"""


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """This test's own system temporary directory, for it and for the processes it starts."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return tmp_path


def _holder() -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    directory = Path(process.stdout.readline().strip())
    assert directory.is_dir() and (directory / "bucket-0.arrow").stat().st_size == 1_000_000
    return process, directory


def test_a_killed_processs_spill_is_removed_and_a_live_ones_kept(tmpdir_env):
    killed, orphan = _holder()
    live, held = _holder()
    assert orphan.parent == held.parent == scratch_root() == tmpdir_env / "clickstream-scratch"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert orphan.is_dir()  # nothing removes it at the kill

    with scratch_directory("clean") as mine:
        assert not orphan.exists()
        assert (held / "bucket-0.arrow").exists()
        # Nor does another sweep take a directory this process holds.
        assert sweep_scratch() == []
        assert Path(mine).is_dir()
    assert not Path(mine).exists()

    live.stdin.close()  # it ends well and removes its own
    assert live.wait(timeout=60) == 0
    assert not held.exists()
    assert list(scratch_root().iterdir()) == []


def test_a_sweep_removes_only_what_nobody_holds(tmpdir_env):
    live, held = _holder()
    killed, orphan = _holder()
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert sweep_scratch() == [orphan.name]
    assert held.is_dir() and not orphan.exists()
    live.kill()
    live.wait(timeout=60)
    assert sweep_scratch() == [held.name]
    assert list(scratch_root().iterdir()) == []
