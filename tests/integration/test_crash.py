"""Crash safety, for real: `clickstream catch-up` runs as a subprocess against the embedded broker
and is killed (SIGKILL) while landing, while cleaning and while dbt builds the marts, or stopped
with SIGTERM; then it runs again to the end, and the marts equal the generator's independent
expectation. Losing the Dagster instance entirely after landing loses nothing either.

Nothing is mocked: the kill lands wherever the process happens to be when the lake shows the
stage has begun, and the next run must work out what is owed from the lake alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clickstream_tools.generator import produce
from resources.kafka import KafkaResource
from tests.helpers import assert_marts_match, local_env, messy_traffic

pytestmark = pytest.mark.integration

START = datetime(2026, 6, 10, 1, tzinfo=UTC)
END = START + timedelta(hours=20)
UNTIL = END + timedelta(hours=5)


def _started(stage: str, root: Path) -> bool:
    """Whether the lake shows `stage` under way."""
    lake = root / "lake"
    if stage == "landing":
        return any((lake / "bronze").glob("date=*/hour=*/*.parquet")) or any(
            (lake / "bronze").glob("date=*/hour=*/.*.tmp")
        )
    if stage == "cleaning":
        return (lake / "silver").exists()
    return (root / "warehouse.duckdb").exists()


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clickstream_tools.cli", *args],
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _catch_up(env: dict[str, str], until: datetime = UNTIL) -> subprocess.Popen:
    return _cli(env, "catch-up", "--until", until.isoformat())


def _land_slice(env: dict[str, str], at: datetime) -> subprocess.Popen:
    return _cli(env, "land-slice", "--at", at.isoformat())


def _deployment(broker, root: Path, topic: str) -> tuple[KafkaResource, dict[str, str]]:
    """A topic of 3 partitions on the broker, and the environment of a deployment reading it
    into a lake and warehouse under `root`."""
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic)
    kafka.create_topic(3)
    (root / "tmp").mkdir()
    env = local_env(
        root,
        TMPDIR=str(root / "tmp"),  # where a killed cleaning's spill would stay
        CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap,
        CLICKSTREAM_TOPIC=topic,
        CLICKSTREAM_START_DATE=START.date().isoformat(),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
    )
    return kafka, env


def _traffic():
    return messy_traffic(START, END, events=6_000, seed=21, max_late=timedelta(hours=4))


def _stop_when(process: subprocess.Popen, started, what: str, sig=signal.SIGKILL) -> None:
    """Send `sig` once `started()` (the lake shows `what` under way), and wait for the end."""
    deadline = time.monotonic() + 300
    while not started():
        assert process.poll() is None, f"ended before {what}: {process.stdout.read()}"
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(timeout=60)  # a guard against a hang, not a measure of speed
    assert process.returncode != 0


@pytest.fixture
def traffic_in(broker, tmp_path, request):
    topic = f"it.crash.{request.node.name[-40:].replace('[', '.').replace(']', '')}"
    kafka, env = _deployment(broker, tmp_path, topic)
    traffic = _traffic()
    produce(kafka, traffic.messages, chunk_rows=6_000)
    return traffic, env, tmp_path


@pytest.mark.parametrize(
    ("stage", "sig"),
    [
        ("landing", signal.SIGKILL),
        ("cleaning", signal.SIGKILL),
        ("marts", signal.SIGKILL),
        ("cleaning", signal.SIGTERM),
    ],
    ids=["kill-landing", "kill-cleaning", "kill-dbt", "term-cleaning"],
)
def test_a_killed_catch_up_is_repaired_by_the_next(traffic_in, stage, sig):
    traffic, env, root = traffic_in
    process = _catch_up(env)
    _stop_when(process, lambda: _started(stage, root), stage, sig)
    if sig == signal.SIGTERM:
        # Stopped by its handler, at once, not by finishing the run in progress first.
        assert process.returncode == 128 + signal.SIGTERM
        assert "catch-up stopped" in process.stdout.read()

    spills = root / "tmp" / "clickstream-scratch"
    left = sorted(p.name for p in spills.glob("*"))
    began = time.monotonic()
    rerun = _catch_up(env)
    output, _ = rerun.communicate(timeout=900)
    print(f"recovery after {sig.name} during {stage}: {time.monotonic() - began:.1f} s")
    assert rerun.returncode == 0, output
    assert_marts_match(env["CLICKSTREAM_WAREHOUSE"], traffic.truth)
    # The killed process's spill directories (cleaning's, if any) were removed by the next one.
    print(f"scratch directories left by the {sig.name}: {left}")
    assert list(spills.glob("*")) == []
    # And a third run finds nothing owed.
    settled = _catch_up(env)
    output, _ = settled.communicate(timeout=300)
    assert settled.returncode == 0, output
    assert "landing " not in output and "cleaning " not in output and "marts " not in output


def test_a_lost_dagster_instance_loses_nothing(traffic_in):
    traffic, env, root = traffic_in
    _stop_when(_catch_up(env), lambda: _started("cleaning", root), "cleaning")
    # Every run record, event, cursor and concurrency slot goes.
    shutil.rmtree(env["DAGSTER_HOME"])
    rerun = _catch_up(env)
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output
    assert_marts_match(env["CLICKSTREAM_WAREHOUSE"], traffic.truth)


SLICED = START + timedelta(hours=19)
"""The hour landed in slices (the traffic's peak): its first slice at :20, its second at :40."""


def _received(messages, start: datetime | None, end: datetime):
    import pyarrow.compute as pc

    ts = messages.column("timestamp_ms")
    mask = pc.less(ts, int(end.timestamp() * 1000))
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(ts, int(start.timestamp() * 1000)))
    return messages.filter(mask)


def _slice_files(folder: Path, piece: int) -> bool:
    return any(folder.glob(f"*.slice-{piece}.parquet*")) or any(folder.glob(f".*.slice-{piece}.*"))


@pytest.mark.parametrize("kill", ["slice-begun", "slice-written", "close"])
def test_a_killed_slice_or_close_of_a_sliced_hour_is_repaired(broker, tmp_path, kill):
    """The log grows while the peak hour is open: its slices land as it arrives, one landing (a
    slice, or the hour's at its close) is killed once it has begun writing, and the next landings
    and catch-up still make the marts equal the generator's expectation, with no slice file left
    that the hour's manifest does not list."""
    kafka, env = _deployment(broker, tmp_path, f"it.crash.sliced.{kill}")
    traffic = _traffic()
    messages = traffic.messages.sort_by("timestamp_ms")
    lake = tmp_path / "lake"
    hour_dir = lake / f"bronze/date={SLICED:%Y-%m-%d}/hour={SLICED:%H}"
    first, second = SLICED + timedelta(minutes=20), SLICED + timedelta(minutes=40)

    def run(process: subprocess.Popen) -> str:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output
        return output

    produce(kafka, _received(messages, None, first), chunk_rows=6_000)
    run(_catch_up(env, SLICED))
    if kill == "slice-begun":
        marker = lake / f"bronze/_slices/{SLICED:%Y-%m-%dT%H}"
        _stop_when(_land_slice(env, first), marker.exists, "slice 0")
    if kill == "slice-written":
        _stop_when(_land_slice(env, first), lambda: _slice_files(hour_dir, 0), "slice 0's files")
    assert "records landed" in run(_land_slice(env, first))
    produce(kafka, _received(messages, first, second), chunk_rows=6_000)
    assert "records landed" in run(_land_slice(env, second))
    produce(kafka, _received(messages, second, UNTIL), chunk_rows=6_000)
    if kill == "close":
        partials = lake / f"bronze/_partials/{SLICED:%Y-%m-%dT%H}"
        _stop_when(_catch_up(env), partials.exists, "the close of the sliced hour")
    run(_catch_up(env))
    assert_marts_match(env["CLICKSTREAM_WAREHOUSE"], traffic.truth)
    manifest = json.loads((lake / f"bronze/_manifests/{SLICED:%Y-%m-%dT%H}.json").read_text())
    listed = {
        piece["file"]
        for entry in manifest["partitions"].values()
        for piece in entry.get("pieces", [entry])
        if piece["file"]
    }
    assert any(".slice-1" in f for f in listed), "the hour was landed in slices"
    on_disk = {str(f.relative_to(lake)) for f in hour_dir.glob("*.parquet")}
    assert on_disk == listed
    quarantine = lake / "quarantine/landing" / hour_dir.relative_to(lake / "bronze")
    assert {
        f"bronze/{f.relative_to(lake / 'quarantine/landing')}" for f in quarantine.glob("*.slice-*")
    } <= listed
    assert not (lake / f"bronze/_slices/{SLICED:%Y-%m-%dT%H}").exists()
