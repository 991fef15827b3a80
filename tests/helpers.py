"""Helpers shared by test modules: a pipeline's environment, messy traffic, the comparison of the
warehouse's marts with the generator's independent truth, and headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from clickstream_tools.generator import Traffic, TrafficSpec, expected_marts, generate
from core.settings import Settings
from core.warehouse import MARTS
from resources.warehouse import read_mart


def assert_mart_matches(warehouse: str, mart: str, truth: pl.DataFrame) -> None:
    """Mart `mart` in the warehouse equals the generator's own computation from `truth`."""
    expected = expected_marts(truth)[mart]
    got = read_mart(warehouse, mart, expected.columns)
    assert got.height > 0, f"{mart} is empty"
    assert_frame_equal(got, expected.sort(expected.columns), check_dtypes=False)


def assert_marts_match(warehouse: str, truth: pl.DataFrame) -> None:
    """Every contract mart in the warehouse equals the independent computation from `truth`."""
    for mart in MARTS:
        assert_mart_matches(warehouse, mart, truth)


def local_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for a pipeline whose lake, warehouse and Dagster home live under `root`."""
    return {
        "CLICKSTREAM_LAKE_URL": str(root / "lake"),
        "CLICKSTREAM_WAREHOUSE": str(root / "warehouse.duckdb"),
        "DAGSTER_HOME": str(root / "dagster"),
    } | extra


@contextmanager
def configured(env: dict[str, str]) -> Iterator[Settings]:
    """The settings of `env`, with `env` in place for code that reads it at run time (dbt)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield Settings.from_env()


def messy_traffic(
    start: datetime, end: datetime, *, events: int, seed: int, max_late: timedelta | None = None
) -> Traffic:
    """Traffic with every anomaly at a visible rate; everything is received within 6 h of `end`,
    or `max_late` when given (then also received within it)."""
    late = {"max_late": max_late} if max_late else {}
    return generate(
        TrafficSpec(
            start=start,
            end=end,
            events=events,
            seed=seed,
            duplicate_rate=0.05,
            late_rate=0.03,
            malformed_rate=0.01,
            skew_rate=0.01,
            receive_until=end + (max_late or timedelta(hours=6)),
            **late,
        )
    )


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
]


def chromium() -> str:
    """Debian's chromium (`make test` installs it when missing)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    # Not a skip: a browser test that silently skips proves nothing.
    assert found, "headless Chromium is missing: apt-get install -y chromium"
    return found


def browser(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile under `root`."""
    profile = root / f"chromium-{time.monotonic_ns()}"
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        timeout=120,
        check=True,
    )
