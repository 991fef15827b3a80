"""The sensors on a real (temporary) Dagster instance: they request exactly what the ledger owes
(level-triggered: whatever the cursor, the Dagster history or a foreign record says), a day turns
final on the landed watermark, one writer per partition, and the lag the landing sensor records."""

import json
from datetime import UTC, date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterRunStatus,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster_duckdb import DuckDBResource

import clickstream_assets.definitions as definitions
import sensors.landing as landing_module
from clickstream_assets.assets import events, raw_events
from core.ledger import Ledger, MartStamp, inputs_digest, partition_key
from partitions import AS_OF_TAG, STAGE_TAG, first_instant
from partitions import RANGE_END_TAG as RANGE_END
from partitions import RANGE_START_TAG as RANGE_START
from resources.clock import ClockResource
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from resources.warehouse import write_mart_stamp
from sensors.in_flight import in_flight
from sensors.landing import landing_sensor
from tests.helpers import land_range

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


def stamp_day(warehouse: str, day: str, lake: LakeResource, *, final: bool) -> None:
    """Record a mart day as built from its current clean stamps (what the marts asset does
    after dbt), without running dbt: these tests are about what the sensor asks for."""
    ledger = Ledger(lake)
    built = date.fromisoformat(day)
    digest = inputs_digest(ledger.day_stamps([built])[built])
    with duckdb.connect(warehouse) as connection:
        write_mart_stamp(connection, MartStamp(built, digest, final, ledger.landed_through()))


@pytest.fixture
def setup(tmp_path, log):
    lake = LakeResource(url=str(tmp_path / "lake"))
    warehouse = str(tmp_path / "warehouse.duckdb")
    resources = {"kafka": log, "lake": lake, "warehouse": DuckDBResource(database=warehouse)}
    with instance_for_test() as instance:
        yield instance, resources, lake, warehouse


def land(instance, resources, first: str, last: str, now: datetime) -> None:
    land_range(instance, resources, first, last, now.isoformat())


def test_reconcile_requests_what_the_ledger_owes_level_triggered(setup, log):
    instance, resources, lake, warehouse = setup
    reconcile = sensor("reconcile_sensor")
    marts = tuple(sorted(k.to_user_string() for k in definitions.marts.keys))
    now = at(0, 13, 5)
    land(instance, resources, "2026-11-27-10:00", "2026-11-27-12:00", now)
    first = tick(reconcile, instance, None, now, **resources)
    assert requested(first) == [
        (("events",), "2026-11-26-23:00..2026-11-26-23:00"),
        (("events",), "2026-11-27-10:00..2026-11-27-12:00"),
    ]
    assert all(r.tags[AS_OF_TAG] == now.isoformat() for r in first.run_requests or [])
    # Nothing has run: the same work is still owed, whatever the cursor says.
    assert requested(tick(reconcile, instance, first.cursor, now, **resources)) == requested(first)

    for request in first.run_requests or []:
        run(request, resources, instance)
    second = tick(reconcile, instance, first.cursor, now, **resources)
    # Consecutive days build in one run.
    assert requested(second) == [(marts, "2026-11-26..2026-11-27")]
    stamp_day(warehouse, "2026-11-26", lake, final=True)
    stamp_day(warehouse, "2026-11-27", lake, final=False)
    third = tick(reconcile, instance, second.cursor, now, **resources)
    assert requested(third) == []

    # A late event of 11-26 lands at 13:00-14:00: its hour, then its day, are owed again.
    produce(log, 1, [(at(0, 13, 30), at(-1, 23, 45))])
    land(instance, resources, "2026-11-27-13:00", "2026-11-27-13:00", at(0, 14, 5))
    late = tick(reconcile, instance, third.cursor, at(0, 14, 5), **resources)
    assert requested(late) == [(("events",), "2026-11-26-23:00..2026-11-26-23:00")]


def test_a_day_turns_final_on_the_landed_watermark_not_the_wall_clock(setup, log):
    instance, resources, lake, warehouse = setup
    reconcile = sensor("reconcile_sensor")
    marts = tuple(sorted(k.to_user_string() for k in definitions.marts.keys))
    land(instance, resources, "2026-11-27-10:00", "2026-11-27-12:00", at(0, 13, 5))
    for request in tick(reconcile, instance, None, at(0, 13, 5), **resources).run_requests:
        run(request, resources, instance)
    stamp_day(warehouse, "2026-11-26", lake, final=True)
    stamp_day(warehouse, "2026-11-27", lake, final=False)
    # Days later by the wall clock, nothing has landed past 13:00: 11-27 stays provisional.
    assert requested(tick(reconcile, instance, None, at(3, 9), **resources)) == []
    # Landing through 11-28 02:00 is not enough (end of day + 3 h = 03:00) ...
    land(instance, resources, "2026-11-27-13:00", "2026-11-28-01:00", at(3, 9))
    assert requested(tick(reconcile, instance, None, at(3, 9), **resources)) == []
    # ... the ingest hour 02:00-03:00 on every partition is.
    land(instance, resources, "2026-11-28-02:00", "2026-11-28-02:00", at(3, 9))
    assert requested(tick(reconcile, instance, None, at(3, 9), **resources)) == [
        (marts, "2026-11-27")
    ]
    stamp_day(warehouse, "2026-11-27", lake, final=True)
    assert requested(tick(reconcile, instance, None, at(3, 9), **resources)) == []


def test_a_lost_dagster_database_loses_no_work(setup, log, tmp_path):
    instance, resources, lake, warehouse = setup
    reconcile = sensor("reconcile_sensor")
    land(instance, resources, "2026-11-27-10:00", "2026-11-27-12:00", at(0, 13, 5))
    owed = requested(tick(reconcile, instance, None, at(0, 13, 5), **resources))
    # A fresh instance (the old one and every cursor gone) sees the same work owed ...
    with instance_for_test() as fresh:
        assert requested(tick(reconcile, fresh, None, at(0, 13, 5), **resources)) == owed
        assert requested(tick(landing_sensor, fresh, None, at(0, 13, 5), **resources)) == []


def test_foreign_materializations_without_metadata_change_nothing(setup, log):
    instance, resources, lake, warehouse = setup
    reconcile = sensor("reconcile_sensor")
    land(instance, resources, "2026-11-27-10:00", "2026-11-27-12:00", at(0, 13, 5))
    before = requested(tick(reconcile, instance, None, at(0, 13, 5), **resources))
    for key, partition in [("raw_events", "2026-11-27-11:00"), ("events", "2026-11-27-11:00")]:
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=key, partition=partition)
        )
    assert requested(tick(reconcile, instance, None, at(0, 13, 5), **resources)) == before


def test_no_second_writer_while_a_run_is_in_flight(setup, log):
    instance, resources, lake, warehouse = setup
    reconcile = sensor("reconcile_sensor")
    land(instance, resources, "2026-11-27-10:00", "2026-11-27-11:00", at(0, 13, 5))
    for stage, tags in [
        ("landing", {RANGE_START: "2026-11-27-12:00", RANGE_END: "2026-11-27-12:00"}),
        ("cleaning", {RANGE_START: "2026-11-27-10:00", RANGE_END: "2026-11-27-10:00"}),
    ]:
        instance.add_run(
            DagsterRun(
                job_name="__ASSET_JOB",
                status=DagsterRunStatus.STARTED,
                tags=tags | {STAGE_TAG: stage},
            )
        )
    assert requested(tick(landing_sensor, instance, None, at(0, 13, 5), **resources)) == []
    assert requested(tick(reconcile, instance, None, at(0, 13, 5), **resources)) == [
        (("events",), "2026-11-26-23:00..2026-11-26-23:00"),
        (("events",), "2026-11-27-11:00..2026-11-27-11:00"),
    ]


def test_a_mart_run_of_days_in_flight_holds_each_of_its_days():
    with instance_for_test() as instance:
        instance.add_run(
            DagsterRun(
                job_name="__ASSET_JOB",
                status=DagsterRunStatus.STARTED,
                tags={RANGE_START: "2026-11-26", RANGE_END: "2026-11-28", STAGE_TAG: "marts"},
            )
        )
        assert in_flight(instance, "marts") == ["2026-11-26", "2026-11-27", "2026-11-28"]


def test_records_received_before_the_start_date_land_in_the_first_hour(tmp_path):
    log = InMemoryKafka(topic="t", partitions=1)
    start = first_instant
    produce(log, 0, [(start - timedelta(days=3), start - timedelta(days=3))])
    produce(log, 0, [(start + timedelta(minutes=10), start + timedelta(minutes=10))])
    lake = LakeResource(url=str(tmp_path / "lake"))
    with instance_for_test() as instance:
        result = tick(
            landing_sensor,
            instance,
            None,
            start + timedelta(hours=2, minutes=1),
            kafka=log,
            lake=lake,
        )
    assert requested(result) == [
        (("raw_events",), f"{partition_key(start)}..{partition_key(start + timedelta(hours=1))}")
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


def test_a_backlog_over_the_run_budget_lands_in_runs_of_about_the_budget(
    tmp_path, log, monkeypatch
):
    """Hours 10-12 hold 5 records: with a budget of 2 records a run, each run takes the share of
    the owed hours the budget covers (at least one), oldest first."""
    monkeypatch.setattr(landing_module, "LANDING_RUN_RECORDS", 2)
    lake = LakeResource(url=str(tmp_path / "lake"))
    resources = {"kafka": log, "lake": lake}
    with instance_for_test() as instance:
        landed = []
        for _ in range(3):
            result = tick(landing_sensor, instance, None, at(0, 13, 5), **resources)
            (request,) = result.run_requests or []
            landed += requested(result)
            run(request, resources, instance)
        assert landed == [
            (("raw_events",), "2026-11-27-10:00..2026-11-27-10:00"),  # 5 owed: 3 * 2 // 5
            (("raw_events",), "2026-11-27-11:00..2026-11-27-11:00"),  # 3 owed: 2 * 2 // 3
            (("raw_events",), "2026-11-27-12:00..2026-11-27-12:00"),  # 1 owed: within budget
        ]
        assert requested(tick(landing_sensor, instance, None, at(0, 13, 5), **resources)) == []
