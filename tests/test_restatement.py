"""Restatement end to end through the headless catch-up: late events for a final day raise that
day's revision and are recorded in mart_revisions; an untouched day is not rebuilt; a catch-up
with nothing new does nothing."""

import json
from datetime import UTC, date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from dagster import instance_for_test

from clickstream_assets.checks import daily_events_reconcile
from clickstream_tools.catchup import run_catch_up
from core.settings import Settings
from resources.event_log import InMemoryKafka

DAY = datetime(2026, 11, 20, tzinfo=UTC)
BEFORE = DAY - timedelta(days=1)
LATER = DAY + timedelta(days=3)


def events(prefix: str, times: list[tuple[datetime, datetime]]) -> pa.Table:
    """Valid clicks, one per (received at, event_time), each with its own event_id."""
    values = [
        json.dumps(
            {
                "event_id": f"{prefix}-{i}",
                "event_type": "click",
                "event_time": event_time.isoformat(),
                "device_id": f"dev-{i % 3}",
                "platform": "web",
            }
        ).encode()
        for i, (_, event_time) in enumerate(times)
    ]
    return pa.table(
        {
            "key": pa.array([f"dev-{i % 3}".encode() for i in range(len(times))], pa.binary()),
            "value": pa.array(values, pa.binary()),
            "timestamp_ms": pa.array(
                [int(received.timestamp() * 1000) for received, _ in times], pa.int64()
            ),
        }
    )


def on_time(day: datetime, count: int, step_minutes: int) -> list[tuple[datetime, datetime]]:
    moments = [day + timedelta(minutes=7 + step_minutes * i) for i in range(count)]
    return [(t + timedelta(seconds=2), t) for t in moments]


def query(warehouse: str, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(warehouse, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def revision(warehouse: str, day: datetime) -> tuple:
    (row,) = query(
        warehouse,
        "select revision, is_final, events from fct_daily_active_users where event_date = ?",
        [day.date()],
    )
    return row


def mart_runs(report) -> list[str]:
    """The days the report's mart runs built (a run of consecutive days builds them all)."""
    days = []
    for run in report.runs:
        if run["stage"] == "marts":
            first, _, last = run["partitions"].partition("..")
            day, end = date.fromisoformat(first), date.fromisoformat(last or first)
            while day <= end:
                days.append(day.isoformat())
                day += timedelta(days=1)
    return sorted(days)


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("CLICKSTREAM_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("CLICKSTREAM_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    return Settings.from_env()


def test_late_events_restate_a_final_day_and_nothing_else(settings):
    kafka = InMemoryKafka(partitions=2)
    # Both days fit in the first landing run (24 ingest hours from BEFORE 22:00).
    kafka.produce(events("before", on_time(BEFORE + timedelta(hours=22), 12, 9)))
    kafka.produce(events("day", on_time(DAY, 40, 30)))

    def catch_up(until: datetime):
        return run_catch_up(
            settings, until=until, instance=instance, resources={"kafka": kafka}, log=lambda _: None
        )

    with instance_for_test() as instance:
        first = catch_up(DAY + timedelta(days=1, hours=8))
        assert all(run["success"] for run in first.runs)
        assert mart_runs(first) == [BEFORE.date().isoformat(), DAY.date().isoformat()]
        assert revision(settings.warehouse, DAY) == (1, True, 40)
        assert revision(settings.warehouse, BEFORE) == (1, True, 12)
        assert query(settings.warehouse, "select count(*) from mart_revisions") == [(0,)]

        # Days later: late events of DAY arrive in two ingest hours, with fresh events of LATER.
        late = [
            (LATER + timedelta(hours=10, minutes=5 + i), DAY + timedelta(hours=5, minutes=i))
            for i in range(4)
        ] + [
            (LATER + timedelta(hours=11, minutes=30 + i), DAY + timedelta(hours=17, minutes=i))
            for i in range(3)
        ]
        kafka.produce(events("late", late))
        kafka.produce(events("later", on_time(LATER + timedelta(hours=9), 6, 10)))

        second = catch_up(LATER + timedelta(days=1, hours=6))
        assert all(run["success"] for run in second.runs)
        # DAY is restated and LATER built; BEFORE, untouched, is not rebuilt.
        assert mart_runs(second) == [DAY.date().isoformat(), LATER.date().isoformat()]
        assert revision(settings.warehouse, DAY) == (2, True, 40 + len(late))
        assert revision(settings.warehouse, BEFORE) == (1, True, 12)
        assert revision(settings.warehouse, LATER) == (1, True, 6)
        ((late_events, ingest_hours, rev),) = query(
            settings.warehouse,
            "select late_events, late_ingest_hours, revision from mart_revisions "
            "where model = 'fct_daily_active_users' and event_date = ?",
            [DAY.date()],
        )
        assert (late_events, rev) == (len(late), 2)
        assert [h.astimezone(UTC) for h in ingest_hours] == [
            LATER + timedelta(hours=10),
            LATER + timedelta(hours=11),
        ]
        revised_days = query(settings.warehouse, "select distinct event_date from mart_revisions")
        assert revised_days == [(DAY.date(),)]

        # The reconciliation check ran with the marts and passed.
        check = instance.get_latest_asset_check_evaluation_record(daily_events_reconcile.check_key)
        assert check is not None and check.event is not None
        assert check.event.dagster_event.event_specific_data.passed

        # Nothing new: no run, no revision.
        revisions = query(settings.warehouse, "select count(*) from mart_revisions")
        third = catch_up(LATER + timedelta(days=1, hours=6))
        assert third.runs == []
        assert query(settings.warehouse, "select count(*) from mart_revisions") == revisions
        assert revision(settings.warehouse, DAY) == (2, True, 40 + len(late))
