"""The open hour landed in slices: the close leaves only the hour's last minutes to land, and
what the lake holds afterwards is what landing the hour whole gives.

The known answer is the same log landed hour by hour, without slices, into another lake, and
the receive times of the generated messages."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import build_sensor_context, instance_for_test

from clickstream_assets.assets import land_open_hour
from clickstream_assets.checks import bronze_row_problems, partition_rows
from clickstream_assets.cleaning import clean_hour
from clickstream_assets.definitions import defs
from clickstream_assets.landing import (
    commit_landing,
    land_hours,
    land_shard,
    land_slice,
    plan_landing,
)
from core.ledger import HOUR, Ledger, Manifest, slices_dir
from core.settings import ConfigError, Settings
from resources.clock import ClockResource
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from sensors.landing import slice_sensor
from sensors.plan import next_slice
from tests.helpers import START, all_manifests, at, messy_traffic, to_ms

H9, H10, H11 = at(9), at(10), at(11)
SLICE_TIMES = [at(10, 15), at(10, 30), at(10, 45)]
CLOSED = at(14)
"""Every ingest hour up to 13:00 has closed: the rest of the traffic lands whole."""


@pytest.fixture(scope="module")
def messages() -> pa.Table:
    traffic = messy_traffic(H9, at(12), events=6_000, seed=11, max_late=timedelta(hours=2))
    return traffic.messages.sort_by("timestamp_ms")


def received_before(messages: pa.Table, start: datetime | None, end: datetime) -> pa.Table:
    ts = messages.column("timestamp_ms")
    mask = pc.less(ts, to_ms(end))
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(ts, to_ms(start)))
    return messages.filter(mask)


def land(log, lake, hours, now) -> list[Manifest]:
    return land_hours(log, lake, hours, now=now, first_instant=START)


def slice_at(log, lake, now) -> Manifest | None:
    return land_slice(log, lake, now=now, first_instant=START)


def closing_hours() -> list[datetime]:
    return [H10 + i * HOUR for i in range(4)]


@pytest.fixture(scope="module")
def whole(messages, tmp_path_factory) -> LakeResource:
    """The reference: every hour landed whole after it closed."""
    log = InMemoryKafka(topic="t", partitions=3)
    log.produce(messages)
    lake = LakeResource(url=str(tmp_path_factory.mktemp("whole")))
    land(log, lake, [H9, *closing_hours()], CLOSED)
    return lake


def sliced_log(messages: pa.Table, lake: LakeResource) -> InMemoryKafka:
    """The log as it grows: 09:00 landed whole at its close, then hour 10 sliced as it goes."""
    log = InMemoryKafka(topic="t", partitions=3)
    log.produce(received_before(messages, None, H10))
    land(log, lake, [H9], H10)
    previous = H10
    for instant in SLICE_TIMES:
        log.produce(received_before(messages, previous, instant))
        assert slice_at(log, lake, instant) is not None
        previous = instant
    log.produce(received_before(messages, previous, CLOSED))
    return log


def lake_files(lake: LakeResource, root: str) -> dict[str, bytes]:
    base = Path(lake.path(""))
    return {
        str(path.relative_to(base)): path.read_bytes()
        for path in sorted((base / root).rglob("*.parquet"))
    }


def summary(manifest: Manifest) -> tuple:
    """What an hour records, whatever pieces it was landed in."""
    return (
        {p: (e.start, e.end, e.rows, e.lost) for p, e in manifest.partitions.items()},
        manifest.event_hours,
        manifest.quarantined,
        manifest.corrected,
        manifest.future_timestamps,
    )


def silver(lake: LakeResource, hours) -> pa.Table:
    events = []
    for hour in hours:
        clean_hour(lake, hour, first_instant=START, now=CLOSED)
        events.append(
            lake.read_parquet([f"silver/events/{hour:date=%Y-%m-%d/hour=%H}/part-0000.parquet"])
        )
    return pa.concat_tables(events).sort_by("event_id")


def test_an_hour_landed_in_slices_records_what_it_records_landed_whole(messages, whole, tmp_path):
    lake = LakeResource(url=str(tmp_path))
    log = sliced_log(messages, lake)
    recorded = Ledger(lake).slices(H10)
    assert len(recorded) == 3
    land(log, lake, closing_hours(), CLOSED)

    sliced, reference = all_manifests(lake), all_manifests(whole)
    assert {h: summary(m) for h, m in sliced.items()} == {
        h: summary(m) for h, m in reference.items()
    }
    # Hour 10 holds the records received in it, counted from the generator's receive times.
    in_hour = received_before(messages, H10, H11).num_rows
    assert sliced[H10].rows == in_hour > 0
    # Each partition lists its slices, then the range landed at the close, chained.
    for entry in sliced[H10].partitions.values():
        assert [part.slice for part in entry.parts][:-1] == list(range(len(entry.parts) - 1))
        assert all(a.end == b.start for a, b in zip(entry.parts, entry.parts[1:], strict=False))
        assert sum(part.rows for part in entry.parts) == entry.rows
    assert max(len(e.parts) for e in sliced[H10].partitions.values()) == 4
    manifests = list(sliced.values())
    for manifest, rows in zip(manifests, partition_rows(lake, manifests), strict=True):
        assert bronze_row_problems(manifest, rows) == []
    assert not lake.exists(slices_dir(H10))

    event_hours = sorted(set().union(*(m.event_hours for m in reference.values())))
    assert silver(lake, event_hours).equals(silver(whole, event_hours))
    assert quarantined(lake) == quarantined(whole)


def quarantined(lake: LakeResource) -> list[tuple]:
    base = Path(lake.path("quarantine/landing"))
    files = [str(p.relative_to(Path(lake.path("")))) for p in base.rglob("*.parquet")]
    table = lake.read_parquet(files)
    return sorted(
        zip(
            *(table.column(c).to_pylist() for c in ("kafka_partition", "kafka_offset", "reason")),
            strict=True,
        )
    )


def test_slicing_needs_an_open_hour_after_the_ledgers_head(messages, tmp_path):
    lake = LakeResource(url=str(tmp_path))
    log = InMemoryKafka(topic="t", partitions=3)
    log.produce(received_before(messages, None, at(10, 20)))
    # Nothing has landed: the first hour lands whole, where the log begins.
    assert slice_at(log, lake, at(9, 30)) is None
    land(log, lake, [H9], H10)
    # Hour 10 has closed by 11:00: the hour's landing lands it, not a slice.
    assert slice_at(log, lake, H11) is None
    assert Ledger(lake).slices(H10) == []
    assert [f for f in lake_files(lake, "bronze") if ".slice-" in f] == []
    [first] = [slice_at(log, lake, at(10, 20))]
    assert first.rows == received_before(messages, H10, at(10, 20)).num_rows
    # Nothing new: the next slice is empty and starts where the first ended.
    second = slice_at(log, lake, at(10, 25))
    assert second.rows == 0 and second.ends == first.ends


def test_a_slice_recorded_after_the_hours_landing_planned_is_swept(messages, whole, tmp_path):
    lake = LakeResource(url=str(tmp_path))
    log = sliced_log(messages, lake)
    plan = plan_landing(log, lake, [H10], now=CLOSED, first_instant=START)
    assert plan.slices == 3
    late = slice_at(log, lake, at(10, 55))  # records slice 3; the plan starts at slice 2's end
    assert late is not None and late.rows > 0
    land_shard(log, lake, plan, 0)
    commit_landing(log, lake, plan)
    land(log, lake, closing_hours()[1:], CLOSED)

    sliced, reference = all_manifests(lake), all_manifests(whole)
    assert summary(sliced[H10]) == summary(reference[H10])
    assert all(part.slice != 3 for e in sliced[H10].partitions.values() for part in e.parts)
    assert [f for f in lake_files(lake, "bronze") if ".slice-3" in f] == []
    assert [f for f in lake_files(lake, "quarantine") if ".slice-3" in f] == []
    assert quarantined(lake) == quarantined(whole)
    assert not lake.exists(slices_dir(H10))


def test_a_slice_another_landing_recorded_first_keeps_its_bytes(messages, tmp_path, monkeypatch):
    lake = LakeResource(url=str(tmp_path))
    log = InMemoryKafka(topic="t", partitions=3)
    log.produce(received_before(messages, None, H10))
    land(log, lake, [H9], H10)
    log.produce(received_before(messages, H10, at(10, 20)))
    winner = slice_at(log, lake, at(10, 20))
    kept = lake_files(lake, "bronze")
    log.produce(received_before(messages, at(10, 20), at(10, 40)))
    # A landing that read the slices before the winner recorded: it lands slice 0 again, to
    # later offsets, over the winner's files, and then loses the record.
    read_slices, calls = Ledger.slices, []

    def stale_first(self, hour):
        calls.append(hour)
        return [] if len(calls) == 1 else read_slices(self, hour)

    monkeypatch.setattr(Ledger, "slices", stale_first)
    assert slice_at(log, lake, at(10, 40)) is None
    monkeypatch.undo()
    assert Ledger(lake).slices(H10) == [winner]
    assert lake_files(lake, "bronze") == kept


def test_relanding_a_sliced_hour_writes_the_same_bytes(messages, tmp_path):
    lake = LakeResource(url=str(tmp_path))
    log = sliced_log(messages, lake)
    land(log, lake, closing_hours(), CLOSED)
    before = lake_files(lake, "bronze/date=2026-11-27/hour=10")
    assert any(".slice-" in f for f in before)
    [again] = land(log, lake, [H10], CLOSED)
    assert again == all_manifests(lake)[H10]
    assert lake_files(lake, "bronze/date=2026-11-27/hour=10") == before


# -- the setting, the decision, the sensor and the job ---------------------------------------------


@pytest.mark.parametrize("text", ["0m", "45s", "31m", "1h", "five", "5"])
def test_a_bad_slice_interval_fails_at_start_naming_the_variable(text):
    with pytest.raises(ConfigError, match=r"CLICKSTREAM_LANDING_SLICES=.*from 1m to 30m"):
        Settings.from_env({"CLICKSTREAM_LANDING_SLICES": text})


def test_slices_are_off_unless_configured():
    assert Settings.from_env({}).landing_slices is None
    assert Settings.from_env({"CLICKSTREAM_LANDING_SLICES": "5m"}).landing_slices == timedelta(
        minutes=5
    )


FIVE = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("head", "landed", "now", "owed"),
    [
        (None, [], at(10, 30), None),  # nothing landed: the first hour lands whole
        (H9, [], at(10, 4), None),  # the open hour is not 5 minutes old
        (H9, [], at(10, 5), (H10, 0)),
        (H9, [at(10, 5)], at(10, 9), None),
        (H9, [at(10, 5), at(10, 10)], at(10, 16), (H10, 2)),
        (H9, [at(10, 5)], H11, None),  # closed: the hour's landing lands the rest
        (H9, [], at(12, 30), None),  # landing is behind: hours land whole
    ],
)
def test_the_slice_owed_follows_the_ledger(head, landed, now, owed):
    assert next_slice(head, landed, now, FIVE) == owed


def test_the_sensor_requests_the_slice_the_ledger_owes_and_the_job_lands_it(
    messages, tmp_path, monkeypatch
):
    lake = LakeResource(url=str(tmp_path))
    log = InMemoryKafka(topic="t", partitions=3)
    log.produce(received_before(messages, None, at(10, 20)))
    land(log, lake, [H9], H10)
    resources = {"lake": lake, "kafka": log}
    with instance_for_test() as instance:

        def tick(now: datetime):
            with build_sensor_context(
                instance=instance,
                resources={**resources, "clock": ClockResource(as_of=now.isoformat())},
                definitions=defs,
            ) as context:
                return slice_sensor.evaluate_tick(context)

        monkeypatch.delenv("CLICKSTREAM_LANDING_SLICES", raising=False)
        assert not tick(at(10, 20)).run_requests
        monkeypatch.setenv("CLICKSTREAM_LANDING_SLICES", "5m")
        [request] = tick(at(10, 20)).run_requests
        assert request.run_key == "slice:2026-11-27T10:0"
        result = land_open_hour.execute_in_process(
            resources=resources, instance=instance, tags=dict(request.tags)
        )
        assert result.success
        [landed] = Ledger(lake).slices(H10)
        assert landed.rows == received_before(messages, H10, at(10, 20)).num_rows
        assert not tick(at(10, 24)).run_requests  # the slice is 4 minutes old
        [request] = tick(at(10, 25)).run_requests
        assert request.run_key == "slice:2026-11-27T10:1"
        assert not tick(H11).run_requests  # closed: the landing sensor's
