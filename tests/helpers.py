"""Helpers shared by test modules: hand-made Kafka records, a pipeline's environment, messy
traffic, the comparison of the warehouse's marts with the generator's independent truth, and
headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from dagster import materialize
from polars.testing import assert_frame_equal

from clickstream_tools.generator import Traffic, TrafficSpec, expected_marts, generate
from core.ledger import Ledger, Manifest, hour_label
from core.settings import Settings
from core.warehouse import MARTS
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from resources.warehouse import read_mart

START = datetime(2026, 1, 1, tzinfo=UTC)
"""The first partition of the hand-made scenarios (CLICKSTREAM_START_DATE's default): before
all of their data."""


def at(hour: int, minute: int = 0, second: int = 0, ms: int = 0) -> datetime:
    """An instant of 2026-11-27, the day of the hand-made scenarios."""
    return datetime(2026, 11, 27, hour, minute, second, ms * 1000, tzinfo=UTC)


def to_ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def value(event_id: str, event_time: datetime | str, **fields) -> bytes:
    """A valid click of device dev-1 with `fields` applied; a field given as `...` is removed."""
    body = {
        "event_id": event_id,
        "event_type": "click",
        "event_time": event_time if isinstance(event_time, str) else event_time.isoformat(),
        "device_id": "dev-1",
    }
    for name, v in fields.items():
        if v is ...:
            body.pop(name)
        else:
            body[name] = v
    return json.dumps(body).encode()


def produce(log: InMemoryKafka, partition: int, rows: list[tuple[datetime, bytes | None]]):
    """Append (receive time, value) records with key dev-1 to one partition."""
    log.produce(
        pa.table(
            {
                "key": pa.array([b"dev-1"] * len(rows), pa.binary()),
                "value": pa.array([v for _, v in rows], pa.binary()),
                "timestamp_ms": pa.array([to_ms(t) for t, _ in rows], pa.int64()),
                "partition": pa.array([partition] * len(rows), pa.int32()),
            }
        )
    )


def land_range(instance, resources: dict, first: str, last: str, as_of: str, **options):
    """Materialize `raw_events` over the ingest hours `first`..`last` (partition keys) at the
    clock `as_of`, as a landing run requested by the sensor is."""
    from clickstream_assets.assets import raw_events
    from partitions import AS_OF_TAG, RANGE_END_TAG, RANGE_START_TAG

    return materialize(
        [raw_events],
        resources=resources,
        instance=instance,
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last, AS_OF_TAG: as_of},
        **options,
    )


def histogram(manifest: Manifest) -> dict[str, int]:
    """A manifest's event-hour histogram by hour label."""
    return {hour_label(h): n for h, n in manifest.event_hours.items()}


def all_manifests(lake: LakeResource) -> dict[datetime, Manifest]:
    """Every manifest the lake's ledger holds, by ingest hour."""
    ledger = Ledger(lake)
    return ledger.manifests(ledger.recorded_hours())


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


class CountingLake:
    """A lake that counts the ledger files it reads (manifests, footers: a file each, however
    they are batched) and its listings."""

    def __init__(self, lake: LakeResource) -> None:
        self._lake = lake
        self.reads = {"read_jsons": 0, "footers_metadata": 0, "list": 0, "list_nested": 0}

    def __getattr__(self, name):
        attribute = getattr(self._lake, name)
        if name in self.reads:

            def counted(*args, **kwargs):
                self.reads[name] += len(args[0]) if isinstance(args[0], list) else 1
                return attribute(*args, **kwargs)

            return counted
        return attribute
