"""The dbt marts end to end: hand-written silver Parquet, the real dbt through the Dagster asset,
and known answers counted by hand from the fixture rows below.

One module-scoped scenario builds two days, finalizes one, restates it with late events and
rebuilds it unchanged; the tests read the snapshots it took after each step.
"""

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import materialize

from clickstream_assets import marts as marts_module
from clickstream_assets.cleaning import SILVER_SCHEMA
from clickstream_assets.marts import dbt_vars, marts, resolve_as_of, rollup_version
from core.ledger import HOUR, STAMP_KEY, CleanStamp, Ledger, Manifest
from core.settings import Settings
from core.warehouse import MARTS as CONTRACT_MARTS
from partitions import AS_OF_TAG
from resources import dbt as dbt_module
from resources.clock import parse_instant
from resources.dbt import DBT_PROJECT_DIR, DbtRunnerResource, dbt_project, dbt_resource
from resources.lake import LakeResource
from resources.warehouse import read_mart_stamps, read_table, warehouse_resource
from sensors.reconcile import marts_request

MARTS = [*CONTRACT_MARTS, "mart_revisions"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (event_id, event_type, event_time, device_id, user_id, platform, title_id, campaign_id)
DAY1_HOUR05 = [
    ("e01", "page_view", "2026-03-10 05:01", "d1", "u1", "web", None, None),
    ("e02", "play", "2026-03-10 05:02", "d1", "u1", "web", "t1", None),
    ("e03", "play", "2026-03-10 05:03", "d2", "u1", "ios", "t1", None),
    ("e04", "play", "2026-03-10 05:04", "d3", None, "android", "t1", None),
    ("e05", "ad_impression", "2026-03-10 05:05", "d3", None, "android", None, "c1"),
    ("e06", "ad_impression", "2026-03-10 05:06", "d4", "u2", "tv", None, "c1"),
]
DAY1_HOUR10 = [
    ("e07", "play", "2026-03-10 10:07", "d4", "u2", "tv", "t2", None),
    ("e08", "ad_impression", "2026-03-10 10:08", "d4", "u2", "tv", None, "c1"),
    ("e09", "heartbeat", "2026-03-10 10:09", "d5", None, "web", None, None),
    ("e10", "click", "2026-03-10 10:10", "d3", "u3", "android", None, None),
]
DAY2_HOUR01 = [
    ("e11", "page_view", "2026-03-11 01:11", "d1", "u1", "web", None, None),
    ("e12", "page_view", "2026-03-11 01:12", "d6", None, "stb", None, None),
]
# Received at 05:00 on the next day: after day 1's watermark (end of day + 3 h = 03:00).
LATE_DAY1_HOUR10 = [
    ("e13", "play", "2026-03-10 10:13", "d9", "u9", "web", "t1", None),
    ("e14", "page_view", "2026-03-10 10:14", "d9", "u9", "web", None, None),
]
LATE_INGEST_HOUR = "2026-03-11 05:00"
# (event_type, event_time, device_id, user_id, platform, title_id, campaign_id) of a silver row
# with no event_id: dbt's not-null test on stg_events must catch it, on its day only.
BAD_DAY_ROW = ("click", "2026-03-14 02:00", "d1", None, "web", None, None)
# A day whose only hour holds no valid event (everything in it was quarantined).
EMPTY_DAY, EMPTY_HOUR = "2026-03-12", "hour=03"


def write_silver(
    lake: Path,
    rows: list[tuple],
    *,
    part: int = 0,
    ingest_hour: str | None = None,
    stamp: CleanStamp | None = None,
):
    """One silver file for the event hour of the rows, as the cleaning stage writes them (with
    its clean stamp in the footer when `stamp` is given)."""
    records = []
    for offset, (event_id, event_type, time, device, user, platform, title, campaign) in enumerate(
        rows
    ):
        event_time = utc(time)
        event_hour = event_time.replace(minute=0)
        records.append(
            {
                "event_id": event_id,
                "event_type": event_type,
                "event_time": event_time,
                "event_hour": event_hour,
                "device_id": device,
                "user_id": user,
                "session_id": None,
                "platform": platform,
                "title_id": title,
                "campaign_id": campaign,
                "ad_id": None,
                "page": None,
                "app_version": None,
                "position_ms": None,
                "schema_version": 1,
                "properties": None,
                "clock_corrected": False,
                "received_at": event_time,
                "kafka_partition": 0,
                "kafka_offset": offset,
                "ingest_hour": utc(ingest_hour) if ingest_hour else event_hour,
            }
        )
    hour = records[0]["event_hour"]
    directory = lake / "silver" / "events" / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(records, schema=SILVER_SCHEMA)
    if stamp is not None:
        table = table.replace_schema_metadata({STAMP_KEY: stamp.to_bytes()})
    pq.write_table(table, directory / f"part-{part:04d}.parquet")


@dataclass
class Scenario:
    snapshots: dict[str, dict[str, pl.DataFrame]] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks_passed: dict[str, bool] = field(default_factory=dict)
    reported: dict[str, tuple[int, int]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("marts")
    lake = root / "lake"
    env = {
        "CLICKSTREAM_LAKE_URL": str(lake),
        "CLICKSTREAM_WAREHOUSE": str(root / "warehouse.duckdb"),
        "CLICKSTREAM_ALLOWED_LATENESS": "3h",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    write_silver(lake, DAY1_HOUR05)
    write_silver(lake, DAY1_HOUR10)
    write_silver(lake, DAY2_HOUR01)
    empty = lake / "silver" / "events" / f"date={EMPTY_DAY}" / EMPTY_HOUR
    empty.mkdir(parents=True)
    pq.write_table(SILVER_SCHEMA.empty_table(), empty / "part-0000.parquet")
    result = Scenario()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings.from_env()
        warehouse = warehouse_resource(settings)
        ledger = Ledger(LakeResource(url=str(lake)))
        resources = {"dbt": dbt_resource(settings), "warehouse": warehouse, "lake": ledger.lake}

        def build(step: str, day: str, as_of: str, *, by_config: bool = False) -> None:
            # Finality follows what has landed: let every partition have landed through as_of
            # (an empty manifest for the hour before it; the ledger never goes back).
            through, landed = parse_instant(as_of), ledger.landed_through()
            if landed is None or through > landed:
                ledger.record(Manifest(through - HOUR, "t", partitions={}, event_hours={}))
            run = materialize(
                [marts],
                partition_key=day,
                resources=resources,
                tags={} if by_config else {AS_OF_TAG: as_of},
                run_config=(
                    {"ops": {"marts": {"config": {"as_of": as_of}}}} if by_config else None
                ),
                raise_on_error=False,
            )
            if not run.success:
                result.failures[step] = "\n".join(
                    str(event.step_failure_data.error) for event in run.get_step_failure_events()
                )
            result.checks_passed[step] = all(
                check.passed for check in run.get_asset_check_evaluations()
            )
            result.reported[step] = (
                len(run.get_asset_materialization_events()),
                len(run.get_asset_check_evaluations()),
            )
            result.metadata[step] = {
                event.asset_key.path[-1]: event.materialization.metadata
                for event in run.get_asset_materialization_events()
                if event.asset_key
            }
            result.snapshots[step] = {table: read_table(warehouse, table) for table in MARTS}

        # Day 1 at noon: hour 05 is past its watermark (09:00), hour 10 and the day are not.
        build("provisional", "2026-03-10", "2026-03-10T12:00:00Z")
        # After the day's watermark (2026-03-11 03:00): same numbers, now final.
        build("final", "2026-03-10", "2026-03-11T04:00:00Z")
        build("day2", "2026-03-11", "2026-03-12T04:00:00+00:00", by_config=True)
        build("empty", EMPTY_DAY, "2026-03-13T04:00:00Z")
        write_silver(lake, LATE_DAY1_HOUR10, part=1, ingest_hour=LATE_INGEST_HOUR)
        build("restated", "2026-03-10", "2026-03-11T06:00:00Z")
        build("unchanged", "2026-03-10", "2026-03-11T07:00:00Z")
        # A row without an event_id on another day fails that day's data tests, not this one's.
        write_silver(lake, [(None, *BAD_DAY_ROW)])
        build("another day is bad", "2026-03-11", "2026-03-12T05:00:00Z")
        build("bad day", BAD_DAY_ROW[1][:10], "2026-03-15T04:00:00Z")
    return result


def rows(frame: pl.DataFrame, columns: list[str]) -> list[tuple]:
    return sorted(frame.select(columns).iter_rows(), key=repr)


def day(frame: pl.DataFrame, date: str) -> pl.DataFrame:
    return frame.filter(pl.col("event_date") == datetime.fromisoformat(date).date())


# -- known answers (counted by hand from the fixture rows) ---------------------------------------


def test_daily_active_users_follow_the_actor_rule(scenario: Scenario):
    frame = scenario.snapshots["final"]["fct_daily_active_users"]
    # actors u1, device:d3, u2, device:d5, u3; users u1 u2 u3; devices d1..d5; 10 events
    assert rows(frame, ["active_users", "logged_in_users", "active_devices", "events"]) == [
        (5, 3, 5, 10)
    ]


def test_active_users_by_platform(scenario: Scenario):
    frame = scenario.snapshots["final"]["fct_daily_active_users_by_platform"]
    assert rows(frame, ["platform", "active_users"]) == sorted(
        [("web", 2), ("ios", 1), ("android", 2), ("tv", 1)], key=repr
    )


def test_title_plays_and_unique_viewers(scenario: Scenario):
    frame = scenario.snapshots["final"]["fct_daily_title_plays"]
    # t1: u1 twice on two devices, device:d3 once
    assert rows(frame, ["title_id", "plays", "unique_viewers"]) == [("t1", 3, 2), ("t2", 1, 1)]


def test_campaign_impressions_and_reach(scenario: Scenario):
    frame = scenario.snapshots["final"]["fct_daily_campaign_impressions"]
    assert rows(frame, ["campaign_id", "impressions", "unique_viewers"]) == [("c1", 3, 2)]


def test_hourly_events(scenario: Scenario):
    frame = scenario.snapshots["final"]["fct_hourly_events"]
    hour05, hour10 = utc("2026-03-10 05:00"), utc("2026-03-10 10:00")
    expected = [
        (hour05, "page_view", 1, 1),
        (hour05, "play", 3, 2),
        (hour05, "ad_impression", 2, 2),
        (hour10, "play", 1, 1),
        (hour10, "ad_impression", 1, 1),
        (hour10, "heartbeat", 1, 1),
        (hour10, "click", 1, 1),
    ]
    assert rows(frame, ["event_hour", "event_type", "events", "active_users"]) == sorted(
        expected, key=repr
    )


def test_second_day_is_its_own_partition(scenario: Scenario):
    frame = day(scenario.snapshots["day2"]["fct_daily_active_users"], "2026-03-11")
    assert rows(frame, ["active_users", "logged_in_users", "active_devices", "events"]) == [
        (2, 1, 2, 2)
    ]
    # as_of came from run config: after the watermark, so final
    assert rows(frame, ["revision", "is_final"]) == [(1, True)]


def test_a_day_or_hour_without_a_valid_event_has_no_row(scenario: Scenario):
    marts = scenario.snapshots["empty"]
    empty_day = datetime.fromisoformat(EMPTY_DAY).date()
    for table in CONTRACT_MARTS:
        day_of_row = pl.col("event_hour" if table == "fct_hourly_events" else "event_date")
        if table == "fct_hourly_events":
            day_of_row = day_of_row.dt.date()
        assert marts[table].filter(day_of_row == empty_day).is_empty(), table
    assert marts["fct_daily_active_users"]["event_date"].sort().to_list() == [
        datetime(2026, 3, 10).date(),
        datetime(2026, 3, 11).date(),
    ]
    # Day 1 has events in hours 05 and 10 only, day 2 in hour 01 only.
    hours = marts["fct_hourly_events"]["event_hour"].unique().sort().to_list()
    assert hours == [utc("2026-03-10 05:00"), utc("2026-03-10 10:00"), utc("2026-03-11 01:00")]


# -- finalization -----------------------------------------------------------------------------


def test_day_is_provisional_before_the_watermark_and_final_after(scenario: Scenario):
    before = scenario.snapshots["provisional"]["fct_daily_active_users"]
    after = scenario.snapshots["final"]["fct_daily_active_users"]
    noon = utc("2026-03-10 12:00")
    assert rows(before, ["revision", "is_final", "computed_at"]) == [(1, False, noon)]
    # same numbers: only is_final changes; computed_at stays the first computation
    assert rows(after, ["revision", "is_final", "computed_at"]) == [(1, True, noon)]


def test_hours_are_final_on_their_own(scenario: Scenario):
    frame = scenario.snapshots["provisional"]["fct_hourly_events"]
    finality = {row[0].hour: row[1] for row in frame.select("event_hour", "is_final").iter_rows()}
    assert finality == {5: True, 10: False}


# -- revisions --------------------------------------------------------------------------------


def test_restatement_raises_the_revision(scenario: Scenario):
    marts = scenario.snapshots["restated"]
    dau = day(marts["fct_daily_active_users"], "2026-03-10")
    assert rows(dau, ["active_users", "logged_in_users", "active_devices", "events"]) == [
        (6, 4, 6, 12)
    ]
    assert rows(dau, ["revision", "is_final", "computed_at"]) == [
        (2, True, utc("2026-03-11 06:00"))
    ]
    plays = marts["fct_daily_title_plays"]
    assert rows(plays, ["title_id", "plays", "unique_viewers", "revision"]) == [
        ("t1", 4, 3, 2),
        ("t2", 1, 1, 2),
    ]
    # the campaign's numbers did not change: still revision 1, first computation
    campaigns = marts["fct_daily_campaign_impressions"]
    assert rows(campaigns, ["impressions", "revision", "computed_at"]) == [
        (3, 1, utc("2026-03-10 12:00"))
    ]
    # only hour 10 changed
    hourly = marts["fct_hourly_events"].filter(pl.col("event_hour") < utc("2026-03-11 00:00"))
    revisions = {row[0].hour: row[1] for row in hourly.select("event_hour", "revision").iter_rows()}
    assert revisions == {5: 1, 10: 2}


def test_untouched_day_keeps_its_revision(scenario: Scenario):
    dau = day(scenario.snapshots["restated"]["fct_daily_active_users"], "2026-03-11")
    assert rows(dau, ["events", "revision", "is_final"]) == [(2, 1, True)]


def test_restatement_is_recorded_with_its_late_events(scenario: Scenario):
    revisions = scenario.snapshots["restated"]["mart_revisions"]
    late_hour = utc(LATE_INGEST_HOUR)
    assert rows(
        revisions, ["model", "event_date", "revision", "late_events", "late_ingest_hours"]
    ) == sorted(
        [
            (model, datetime(2026, 3, 10).date(), 2, 2, [late_hour])
            for model in [
                "fct_daily_active_users",
                "fct_daily_active_users_by_platform",
                "fct_daily_title_plays",
                "fct_hourly_events",
            ]
        ],
        key=repr,
    )
    hourly = revisions.filter(pl.col("model") == "fct_hourly_events")
    assert hourly["event_hour"].to_list() == [utc("2026-03-10 10:00")]
    assert revisions["revised_at"].unique().to_list() == [utc("2026-03-11 06:00")]
    assert scenario.snapshots["final"]["mart_revisions"].height == 0


def test_rebuild_with_nothing_new_changes_nothing(scenario: Scenario):
    restated, unchanged = scenario.snapshots["restated"], scenario.snapshots["unchanged"]
    for table in MARTS:
        assert (
            restated[table]
            .sort(restated[table].columns)
            .equals(unchanged[table].sort(unchanged[table].columns))
        ), table


# -- the hourly rollup: an hour's build reads that hour's silver -------------------------------


def test_a_day_rebuilt_reads_only_the_hours_whose_silver_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    lake, day_key = tmp_path / "lake", "2026-03-10"
    for name, value in {
        "CLICKSTREAM_LAKE_URL": str(lake),
        "CLICKSTREAM_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    warehouse = warehouse_resource(settings)
    ledger = Ledger(LakeResource(url=str(lake)))
    resources = {"dbt": dbt_resource(settings), "warehouse": warehouse, "lake": ledger.lake}

    def stamp(hour: str, cleaned_at: str) -> CleanStamp:
        return CleanStamp(utc(hour), (utc(hour),), cleaned_at=cleaned_at)

    def build(as_of: str) -> tuple[tuple, dict, dict]:
        """DAU's counts, and per hour of fct_hourly_events: (events, is_final, revision)."""
        # Every partition has landed through as_of (the hour before it is recorded).
        ledger.record(Manifest(utc(as_of) - HOUR, "t", partitions={}, event_hours={}))
        run = materialize(
            [marts], partition_key=day_key, resources=resources, tags={AS_OF_TAG: as_of}
        )
        assert run.success
        dau = read_table(warehouse, "fct_daily_active_users")
        counts = dau.select("active_users", "logged_in_users", "active_devices", "events")
        hours = (
            read_table(warehouse, "fct_hourly_events")
            .group_by(pl.col("event_hour").dt.hour())
            .agg(pl.sum("events"), pl.col("is_final").all(), pl.max("revision"))
        )
        return counts.row(0), {row[0]: row[1:] for row in hours.iter_rows()}

    write_silver(lake, DAY1_HOUR05, stamp=stamp("2026-03-10 05:00", "a"))
    write_silver(lake, DAY1_HOUR10, stamp=stamp("2026-03-10 10:00", "a"))
    # By hand: actors u1, device:d3, u2, device:d5, u3; users u1-u3; devices d1-d5; 10 events.
    # Hour 05 is final at 09:00 (its end + 3 h), hour 10 at 14:00.
    assert build("2026-03-10 12:00") == ((5, 3, 5, 10), {5: (6, True, 1), 10: (4, False, 1)})

    # Hour 10 re-cleaned (a new stamp) with the late rows; hour 05's file replaced behind the
    # ledger's back under its old stamp. Only hour 10 is read again: the forged rows of hour 05
    # (one event of a new user on a new device) do not show, and hour 10's do.
    write_silver(lake, DAY1_HOUR10 + LATE_DAY1_HOUR10, stamp=stamp("2026-03-10 10:00", "b"))
    forged = [("f1", "click", "2026-03-10 05:30", "d8", "u8", "web", None, None)]
    write_silver(lake, forged, stamp=stamp("2026-03-10 05:00", "a"))
    # Distinct counts merge over the hours: u9 and d9 are new, the others were counted.
    assert build("2026-03-10 13:00") == ((6, 4, 6, 12), {5: (6, True, 1), 10: (6, False, 1)})
    # Nothing read again, but the watermark passed hour 10: its rows turn final.
    assert build("2026-03-10 15:00") == ((6, 4, 6, 12), {5: (6, True, 1), 10: (6, True, 1)})

    # Another version of the rollup's SQL rebuilds every hour: now hour 05 holds the forged row,
    # a restatement of a final hour. The stored rollup also has a column this version's SQL
    # no longer makes (as one built before the rollup dropped actor_id): dropped, not an error.
    monkeypatch.setattr(marts_module, "_rollup_version", lambda: "another version")
    with duckdb.connect(settings.warehouse) as connection:
        connection.execute("alter table int_hourly_activity add column actor_id varchar")
    # Hour 10: u2 (d4), device:d5, u3 (d3), u9 (d9); hour 05: u8 (d8). u1, d1, d2 are gone.
    assert build("2026-03-10 16:00") == ((5, 4, 5, 7), {5: (1, True, 2), 10: (6, True, 1)})
    assert "actor_id" not in read_table(warehouse, "int_hourly_activity").columns


def test_days_built_in_one_run_equal_each_day_built_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A catch-up's or backfill's consecutive days go in one run (one dbt build): every mart
    row, revision and stamp is what a run per day writes, and day 1 holds the hand-counted
    numbers."""
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    as_of = "2026-03-12T04:00:00+00:00"

    def built(root: Path, runs: list[tuple[str, str]]) -> tuple[dict, dict]:
        lake = root / "lake"
        monkeypatch.setenv("CLICKSTREAM_LAKE_URL", str(lake))
        monkeypatch.setenv("CLICKSTREAM_WAREHOUSE", str(root / "warehouse.duckdb"))
        settings = Settings.from_env()
        warehouse = warehouse_resource(settings)
        ledger = Ledger(LakeResource(url=str(lake)))
        for rows_, hour in [
            (DAY1_HOUR05, "2026-03-10 05:00"),
            (DAY1_HOUR10, "2026-03-10 10:00"),
            (DAY2_HOUR01, "2026-03-11 01:00"),
        ]:
            write_silver(lake, rows_, stamp=CleanStamp(utc(hour), (utc(hour),), cleaned_at="a"))
        ledger.record(Manifest(utc(as_of) - HOUR, "t", partitions={}, event_hours={}))
        resources = {"dbt": dbt_resource(settings), "warehouse": warehouse, "lake": ledger.lake}
        materialized: dict[str, set[str]] = {}
        for first, last in runs:
            first_day, last_day = (datetime.fromisoformat(d).date() for d in (first, last))
            request = marts_request(list(marts.keys), first_day, last_day, parse_instant(as_of))
            run = materialize(
                [marts],
                resources=resources,
                partition_key=request.partition_key,
                tags=dict(request.tags),
            )
            assert run.success
            for event in run.get_asset_materialization_events():
                materialized.setdefault(event.asset_key.path[-1], set()).add(event.partition)
        tables = {table: read_table(warehouse, table) for table in MARTS}
        stamps = {
            day: (s.inputs_digest, s.is_final)
            for day, s in read_mart_stamps(str(root / "warehouse.duckdb")).items()
        }
        return {t: rows(frame, frame.columns) for t, frame in tables.items()}, {
            "materialized": materialized,
            "stamps": stamps,
        }

    together, together_runs = built(tmp_path / "together", [("2026-03-10", "2026-03-11")])
    alone, alone_runs = built(
        tmp_path / "alone", [("2026-03-10", "2026-03-10"), ("2026-03-11", "2026-03-11")]
    )
    assert together == alone
    assert together_runs == alone_runs
    assert together_runs["materialized"]["fct_daily_active_users"] == {"2026-03-10", "2026-03-11"}
    # By hand: day 1 has actors u1, device:d3, u2, device:d5, u3; users u1-u3; devices d1-d5;
    # 10 events. Day 2: u1 and device:d6; one user; devices d1, d6; 2 events. Both are final
    # (landed through 03:00 after each day's end).
    dau = {row[0].isoformat(): row[1:5] for row in together["fct_daily_active_users"]}
    assert dau == {"2026-03-10": (5, 3, 5, 10), "2026-03-11": (2, 1, 2, 2)}


# -- the asset and the dbt project ------------------------------------------------------------


def test_dbt_tests_pass_and_rows_are_reported(scenario: Scenario):
    assert all(scenario.checks_passed.values())
    # Each day's data tests read that day: the bad row fails its own day only.
    assert list(scenario.failures) == ["bad day"]
    assert "not_null_columns_stg_events_event_id__device_id" in scenario.failures["bad day"]

    def rows_in_partitions(step: str, table: str) -> int:
        return scenario.metadata[step][table]["rows_in_partitions"].value

    assert rows_in_partitions("provisional", "fct_daily_active_users") == 1
    assert rows_in_partitions("restated", "mart_revisions") == 4
    assert rows_in_partitions("unchanged", "mart_revisions") == 0


def test_every_model_and_data_test_is_reported_to_dagster(scenario: Scenario):
    # A materialization per model and a check evaluation per data test, as the manifest counts
    # them: the resource converts only dbt's result events (RESULT_EVENTS) into Dagster's.
    nodes = json.loads(dbt_project.manifest_path.read_text())["nodes"].values()
    models = sum(node["resource_type"] == "model" for node in nodes)
    tests = sum(node["resource_type"] == "test" for node in nodes)
    assert (models, tests) == (9, 16)
    assert scenario.reported["final"] == (models, tests)
    assert scenario.reported["empty"] == (models, tests)


@pytest.mark.parametrize(
    ("configured", "tags", "expected"),
    [
        (
            "2026-03-10T12:00:00+01:00",
            {AS_OF_TAG: "2026-01-01T00:00:00Z"},
            "2026-03-10T11:00:00+00:00",
        ),
        (None, {AS_OF_TAG: "2026-03-10T12:00:00Z"}, "2026-03-10T12:00:00+00:00"),
        (None, {AS_OF_TAG: "2026-03-10T12:00:00"}, "2026-03-10T12:00:00+00:00"),
        (None, {}, "2026-03-12T00:00:00+00:00"),
    ],
)
def test_resolve_as_of_prefers_config_then_tag_then_now(configured, tags, expected):
    assert resolve_as_of(configured, tags, utc("2026-03-12 00:00")) == expected


def test_dbt_vars_carry_the_settings():
    settings = Settings.from_env(
        {"CLICKSTREAM_LAKE_URL": "s3://bucket/lake", "CLICKSTREAM_ALLOWED_LATENESS": "90m"}
    )
    assert dbt_vars(
        ["2026-03-10", "2026-03-11"],
        "2026-03-11T00:00:00+00:00",
        "2026-03-10T22:00:00+00:00",
        settings,
        "/w.duckdb",
        {"2026-03-10": {5: "ab12", 7: None}, "2026-03-11": {}},
    ) == {
        "event_dates": ["2026-03-10", "2026-03-11"],
        "as_of": "2026-03-11T00:00:00+00:00",
        "landed_through": "2026-03-10T22:00:00+00:00",
        "allowed_lateness_minutes": 90,
        "lake_url": "s3://bucket/lake",
        "warehouse_path": "/w.duckdb",
        "rollup_hours": {"2026-03-10": {5: "ab12", 7: None}, "2026-03-11": {}},
    }


def run_dbt(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("dbt")),
            *args,
            "--target-path",
            str(tmp_path / "target"),
        ],
        cwd=DBT_PROJECT_DIR,
        env={
            **os.environ,
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DBT_LOG_PATH": str(tmp_path / "logs"),
        },
        capture_output=True,
        text=True,
        check=False,
    )


def test_dbt_parse_and_docs_generate_work_offline(tmp_path: Path):
    parsed = run_dbt("parse", tmp_path=tmp_path)
    assert parsed.returncode == 0, parsed.stdout
    manifest = json.loads((tmp_path / "target" / "manifest.json").read_text())
    models = {node["name"] for node in manifest["nodes"].values()}
    assert set(MARTS) <= models
    unit_tests = {test["name"] for test in manifest["unit_tests"].values()}
    assert len(unit_tests) >= 3
    docs = run_dbt(
        "docs",
        "generate",
        "--vars",
        offline_vars(tmp_path),
        tmp_path=tmp_path,
    )
    assert docs.returncode == 0, docs.stdout
    assert (tmp_path / "target" / "catalog.json").exists()


def test_one_parse_serves_every_lake_and_warehouse_directory(tmp_path: Path, monkeypatch):
    # dbt parses the whole project again (seconds) when a parse's vars or target differ from the
    # last one's, or when its saved parse fails to load; a run in a new process, its lake and
    # warehouse elsewhere, must find nothing to parse.
    project = tmp_path / "project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    dbt = DbtRunnerResource(project_dir=str(project))

    def manifest_in_a_new_process(root: Path, warehouse: str = "warehouse.duckdb") -> Any:
        monkeypatch.setattr(dbt_module, "_parsed", {})
        return dbt.manifest(
            {"lake_url": str(root / "lake"), "warehouse_path": str(root / warehouse)}
        )

    def files_parsed() -> int:
        perf = json.loads((project / "target" / "perf_info.json").read_text())
        assert perf["is_partial_parse_enabled"]
        return perf["parsed_path_count"]

    manifest_in_a_new_process(tmp_path / "a")
    assert files_parsed() > 0  # the first parse reads every file
    # A process of the other profile target keeps a parse of its own, beside this one.
    dbt_module.parse(project, target="s3")
    manifest = manifest_in_a_new_process(tmp_path / "b")
    assert files_parsed() == 0
    assert manifest.nodes["model.clickstream.stg_events"].database == "warehouse"
    # DuckDB names the catalog after the warehouse file: another name is another parse.
    renamed = manifest_in_a_new_process(tmp_path / "c", "w.duckdb")
    assert renamed.nodes["model.clickstream.stg_events"].database == "w"


SCHEMAS_IN_A_NEW_PROCESS = """
import json, sys
from pathlib import Path
from dbt_common import dataclass_schema
from resources import dbt
built = []
build = dataclass_schema.build_json_schema


def counted(cls, *args, **kwargs):
    built.append(cls.__name__)
    return build(cls, *args, **kwargs)


dataclass_schema.build_json_schema = counted
dbt._json_schemas.path = Path(sys.argv[1])
try:
    dbt.parse(Path(sys.argv[2]), write_json=False)
    outcome = "parsed"
except dbt.DbtError as error:
    outcome = str(error)
print(json.dumps({"built": built, "outcome": outcome}))
"""


def test_a_new_process_reads_dbts_config_schemas_instead_of_building_them(tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    saved = tmp_path / "json_schemas.json"

    def parse_in_a_new_process(schemas_file: Path = saved) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", SCHEMAS_IN_A_NEW_PROCESS, str(schemas_file), str(project)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(dbt_module.__file__).parents[1],
        )
        return json.loads(done.stdout.splitlines()[-1])

    saved.write_text('{"versions": {"dbt-core": "0.1"}, "schemas": []}')  # not these packages'
    first = parse_in_a_new_process()
    assert first["outcome"] == "parsed"
    assert {"Project", "ProfileConfig", "DuckDBCredentials"} <= set(first["built"])
    schemas = json.loads(saved.read_text())["schemas"]
    assert len(schemas) == len(first["built"])
    # Each is what mashumaro builds for the class in this process.
    from dbt_common.dataclass_schema import build_json_schema

    for key, schema in schemas.items():
        module, _, name = key.rpartition(".")
        built = build_json_schema(getattr(importlib.import_module(module), name)).to_dict()
        assert json.loads(json.dumps(built)) == schema, key
    assert parse_in_a_new_process() == {"built": [], "outcome": "parsed"}
    # Where the file cannot be written, each process builds them, as dbt alone would.
    not_a_directory = tmp_path / "a_file"
    not_a_directory.write_text("")
    unsaved = parse_in_a_new_process(not_a_directory / "json_schemas.json")
    assert unsaved["outcome"] == "parsed"
    assert {"Project", "ProfileConfig", "DuckDBCredentials"} <= set(unsaved["built"])
    # Read back, they still refuse what dbt refuses.
    profiles = project / "profiles.yml"
    profiles.write_text(profiles.read_text().replace("threads: 4", "threads: four", 1))
    refused = parse_in_a_new_process()
    assert refused["built"] == []
    assert "'four' is not of type 'integer'" in refused["outcome"]


def test_a_behavior_flag_without_a_source_names_the_module_that_defines_it():
    from dbt_common.behavior_flags import BehaviorFlagRendered

    dbt_module._prepare()
    flag = BehaviorFlagRendered({"name": "a_flag", "default": False, "description": "d"}, {})
    assert flag._behavior_change_event.flag_source == __name__


def offline_vars(tmp_path: Path) -> str:
    """The vars of a dbt command that needs no data: an empty lake and a scratch warehouse."""
    return json.dumps(
        {"lake_url": str(tmp_path / "lake"), "warehouse_path": str(tmp_path / "w.duckdb")}
    )


@pytest.mark.parametrize(
    ("run_vars", "message"),
    [
        ({"event_dates": ["2026-3-10"]}, "var event_dates must name days as YYYY-MM-DD"),
        ({"event_dates": "2026-03-10"}, "var event_dates must be a non-empty list"),
        ({"event_dates": []}, "var event_dates must be a non-empty list"),
        (
            {"event_dates": ["2026-03-10"], "rollup_hours": {"2026-03-10": {"24": None}}},
            "var rollup_hours must map hours from 0 to 23",
        ),
        (
            {"event_dates": ["2026-03-10"], "rollup_hours": {"10": {"5": None}}},
            "var rollup_hours must name days as YYYY-MM-DD",
        ),
    ],
)
def test_malformed_run_vars_fail_the_build_with_what_to_fix(tmp_path: Path, run_vars, message):
    compiled = run_dbt(
        "compile",
        "--select",
        "int_hourly_activity",
        "--vars",
        json.dumps(json.loads(offline_vars(tmp_path)) | run_vars),
        tmp_path=tmp_path,
    )
    assert compiled.returncode != 0
    assert message in compiled.stdout


def test_dbt_unit_tests_pass(tmp_path: Path):
    # A day's build skips the unit tests (they check the SQL's logic, not the day's data).
    tested = run_dbt(
        "test",
        "--select",
        "test_type:unit",
        "--vars",
        offline_vars(tmp_path),
        tmp_path=tmp_path,
    )
    assert tested.returncode == 0, tested.stdout
    assert re.search(r"PASS=[1-9]\d* WARN=0 ERROR=0", tested.stdout), tested.stdout


def test_the_rollup_version_follows_its_model_and_the_models_it_reads():
    manifest = json.loads(dbt_project.manifest_path.read_text())
    version = rollup_version(manifest)

    def with_checksum(node: str, checksum: str) -> dict:
        changed = copy.deepcopy(manifest)
        changed["nodes"][node]["checksum"]["checksum"] = checksum
        return changed

    assert rollup_version(with_checksum("model.clickstream.stg_events", "x")) != version
    assert rollup_version(with_checksum("model.clickstream.int_hourly_activity", "x")) != version
    # A mart reads the rollup; changing it rebuilds no hour.
    assert rollup_version(with_checksum("model.clickstream.fct_daily_active_users", "x")) == version
