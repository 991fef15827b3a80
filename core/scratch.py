"""Local scratch space for what a process spills while it works (cleaning's dedup buckets and
copies): never the lake, and gone when the work ends, even when the process does not end well.

A directory is removed by its own process when its work ends. A process killed mid-work (SIGKILL,
the OOM killer, a lost pod's node) cannot do that, and an hour's spill is gigabytes: so every
directory lives under one root and is held by its process through an advisory lock on the
directory itself, which the kernel drops when the process dies, whatever its PID namespace. Each
new directory first removes the directories nobody holds.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT_NAME = "clickstream-scratch"


def scratch_root() -> Path:
    """Where every scratch directory lives: under the system's temporary directory (`TMPDIR`)."""
    return Path(tempfile.gettempdir()) / ROOT_NAME


def _hold(directory: str) -> int | None:
    """A lock held on `directory` (its descriptor), or None when another process holds it."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # removed meanwhile
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sweep_scratch() -> list[str]:
    """Remove the scratch directories no live process holds; returns their names."""
    root = scratch_root()
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        fd = _hold(str(entry))
        if fd is None:
            continue
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        finally:
            os.close(fd)
    return removed


@contextmanager
def scratch_directory(prefix: str) -> Iterator[str]:
    """A new local directory held by this process until the block ends, then removed."""
    scratch_root().mkdir(exist_ok=True)
    sweep_scratch()
    while True:
        directory = tempfile.mkdtemp(prefix=f"{prefix}-", dir=scratch_root())
        fd = _hold(directory)
        # Another process's sweep may have taken it between its creation and this lock: then it
        # is gone (no links left), and a new one is made.
        if fd is not None and os.fstat(fd).st_nlink > 0:
            break
        if fd is not None:
            os.close(fd)
    try:
        yield directory
    finally:
        try:
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(fd)
