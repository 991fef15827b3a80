"""The sensors on a real (temporary) Dagster instance: what they request after several landings
in one tick, when a provisional day is requested again, that the cursor prevents repeats, and the
lag the landing sensor records."""

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from dagster import AssetKey, build_sensor_context, instance_for_test, materialize

import clickstream_assets.definitions as definitions
from clickstream_assets.assets import AS_OF_TAG, events, raw_events
from resources.clock import ClockResource
from resources.kafka import InMemoryKafka
from resources.lake import LakeResource
from sensors.landing import landing_sensor

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
DAY = datetime(2026, 11, 27, tzinfo=UTC)


def at(day_offset: int, hour: int, minute: int = 0) -> datetime:
    return DAY + timedelta(days=day_offset, hours=hour, minutes=minute)


def produce(log: InMemoryKafka, partition: int, rows: list[tuple[datetime, datetime]]) -> None:
    """Records (received at, event_time) to one partition."""
    values = [
        json.dumps(
            {
                "event_id": f"{partition}-{received.isoformat()}-{i}",
                "event_type": "click",
                "event_time": event_time.isoformat(),
                "device_id": "d",
            }
        ).encode()
        for i, (received, event_time) in enumerate(rows)
    ]
    log.produce(
        pa.table(
            {
                "key": pa.array([b"d"] * len(rows), pa.binary()),
                "value": pa.array(values, pa.binary()),
                "timestamp_ms": pa.array([int(r.timestamp() * 1000) for r, _ in rows], pa.int64()),
                "partition": pa.array([partition] * len(rows), pa.int32()),
            }
        )
    )


def sensor(name: str):
    (found,) = [s for s in definitions.all_sensors if s.name == name]
    return found


def tick(sensor_def, instance, cursor, now: datetime, **resources):
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"clock": ClockResource(as_of=now.isoformat()), **resources},
        definitions=definitions.defs,
    ) as context:
        return sensor_def.evaluate_tick(context)


def requested(result) -> list[tuple[tuple[str, ...], str]]:
    """Each run request as (asset names, partition or start..end)."""
    out = []
    for request in result.run_requests or []:
        names = tuple(sorted(k.to_user_string() for k in request.asset_selection))
        part = request.partition_key or f"{request.tags[RANGE_START]}..{request.tags[RANGE_END]}"
        out.append((names, part))
    return out


def run(request, resources, instance):
    """Run a request as the daemon would (its selection, partition and tags)."""
    result = materialize(
        [raw_events, events],
        selection=list(request.asset_selection),
        partition_key=request.partition_key,
        tags=dict(request.tags),
        resources=resources,
        instance=instance,
    )
    assert result.success


@pytest.fixture
def log() -> InMemoryKafka:
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(0, 10, 5), at(0, 10, 5)), (at(0, 11, 10), at(0, 11, 9))])
    # A late event of the day before (already final) arrives at 11:20.
    produce(log, 1, [(at(0, 10, 30), at(0, 10, 29)), (at(0, 11, 20), at(-1, 23, 30))])
    produce(log, 0, [(at(0, 12, 40), at(0, 12, 40))])
    return log


def test_late_data_sensor_requests_what_the_landings_affect(tmp_path, log):
    resources = {"kafka": log, "lake": LakeResource(url=str(tmp_path / "lake"))}
    late_data = sensor("late_data_sensor")
    marts = sorted(k.to_user_string() for k in definitions.marts.keys)
    now = at(0, 13, 5)
    with instance_for_test() as instance:
        # Three ingest hours land in one run, before the sensor ticks.
        materialize(
            [raw_events],
            resources=resources,
            instance=instance,
            tags={
                RANGE_START: "2026-11-27-10:00",
                RANGE_END: "2026-11-27-12:00",
                AS_OF_TAG: now.isoformat(),
            },
        )
        first = tick(late_data, instance, None, now)
        assert requested(first) == [
            (("events",), "2026-11-26-23:00..2026-11-26-23:00"),
            (("events",), "2026-11-27-10:00..2026-11-27-12:00"),
        ]
        assert all(r.tags[AS_OF_TAG] == now.isoformat() for r in first.run_requests or [])
        # The same cursor sees nothing new.
        assert requested(tick(late_data, instance, first.cursor, now)) == []

        for request in first.run_requests or []:
            run(request, resources, instance)
        second = tick(late_data, instance, first.cursor, now)
        assert requested(second) == [
            (tuple(marts), "2026-11-26"),
            (tuple(marts), "2026-11-27"),
        ]
        assert json.loads(second.cursor)["pending_final"] == ["2026-11-27"]
        assert requested(tick(late_data, instance, second.cursor, now)) == []

        # The provisional day comes back once, when its watermark (end of day + 3 h) passes.
        final_at = at(1, 3)
        assert (
            requested(tick(late_data, instance, second.cursor, final_at - timedelta(minutes=1)))
            == []
        )
        due = tick(late_data, instance, second.cursor, final_at)
        assert requested(due) == [(tuple(marts), "2026-11-27")]
        assert json.loads(due.cursor)["pending_final"] == []
        assert requested(tick(late_data, instance, due.cursor, at(1, 9))) == []


def test_a_landing_that_failed_its_blocking_check_propagates_nothing(tmp_path, log):
    lake_root = tmp_path / "lake"
    resources = {"kafka": log, "lake": LakeResource(url=str(lake_root))}
    late_data = sensor("late_data_sensor")
    now = at(0, 13, 5)
    tags = {AS_OF_TAG: now.isoformat()}
    with instance_for_test() as instance:
        materialize(
            [raw_events],
            resources=resources,
            instance=instance,
            tags=tags | {RANGE_START: "2026-11-27-10:00", RANGE_END: "2026-11-27-12:00"},
        )
        cursor = tick(late_data, instance, None, now).cursor
        # Hour 12's recorded range is corrupted (an overlap) and the hour is re-landed with its
        # checks: the blocking check fails, and the sensor holds that landing back.
        path = lake_root / "bronze/_manifests/2026-11-27T12.json"
        recorded = json.loads(path.read_text())
        recorded["partitions"]["0"]["start"] -= 1
        path.write_text(json.dumps(recorded))
        broken = materialize(
            [raw_events, *definitions.all_checks[:2]],
            partition_key="2026-11-27-12:00",
            resources=resources,
            instance=instance,
            tags=tags,
            raise_on_error=False,
        )
        assert not broken.success
        assert broken.asset_materializations_for_node("raw_events")
        assert requested(tick(late_data, instance, cursor, now)) == []

        # Once the ledger is repaired, re-landing the hour propagates again.
        recorded["partitions"]["0"]["start"] += 1
        path.write_text(json.dumps(recorded))
        materialize(
            [raw_events, *definitions.all_checks[:2]],
            partition_key="2026-11-27-12:00",
            resources=resources,
            instance=instance,
            tags=tags,
        )
        assert requested(tick(late_data, instance, cursor, now)) == [
            (("events",), "2026-11-27-12:00..2026-11-27-12:00")
        ]


def test_landing_sensor_requests_closed_hours_and_records_lag(tmp_path, log):
    lake = LakeResource(url=str(tmp_path / "lake"))
    resources = {"kafka": log, "lake": lake}
    landing = landing_sensor
    with instance_for_test() as instance:
        first = tick(landing, instance, None, at(0, 13, 5), **resources)
        assert requested(first) == [(("raw_events",), "2026-11-27-10:00..2026-11-27-12:00")]
        # Before any landing, the whole backlog is lag, counted from its oldest record's hour.
        (backlog,) = first.asset_events
        assert backlog.metadata["lag_records"].value == 5
        assert backlog.metadata["lag_seconds"].value == (at(0, 13, 5) - at(0, 10)).total_seconds()
        (request,) = first.run_requests or []
        run(request, resources, instance)

        # Two more records arrive during 13:00; at 13:30 the hour has not closed.
        produce(log, 1, [(at(0, 13, 10), at(0, 13, 10)), (at(0, 13, 20), at(0, 13, 20))])
        waiting = tick(landing, instance, None, at(0, 13, 30), **resources)
        assert requested(waiting) == []
        (observation,) = waiting.asset_events
        assert observation.asset_key == AssetKey("kafka_topic")
        assert observation.metadata["lag_records"].value == 2
        assert observation.metadata["lag_seconds"].value == 30 * 60
        assert observation.metadata["lag_by_partition"].value == {
            "0": {"records": 0, "seconds": 0.0},
            "1": {"records": 2, "seconds": 1800.0},
        }

        closed = tick(landing, instance, None, at(0, 14, 1), **resources)
        assert requested(closed) == [(("raw_events",), "2026-11-27-13:00..2026-11-27-13:00")]
