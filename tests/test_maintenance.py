"""Maintenance: the lake's retention deletes exactly the hand-counted whole partitions that no kept
partition needs, bad retention settings fail at start, and the run-history purge deletes finished
runs past the horizon with their events, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance, asset, instance_for_test, materialize

from clickstream_assets.maintenance import (
    TIERS,
    lake_retention_job,
    partitions_present,
    plan_retention,
    purge_run_history_job,
)
from core.ledger import Manifest, hour_dir, manifest_path
from core.settings import ConfigError, Retention, Settings
from resources.clock import ClockResource
from resources.lake import LakeResource

NOW = datetime(2026, 6, 10, tzinfo=UTC)
POLICY = Retention(bronze=timedelta(days=30), silver=timedelta(days=20), quarantine=timedelta(10))


def h(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def manifest(ingest: str, *event_hours: str) -> Manifest:
    return Manifest(
        ingest_hour=h(ingest), topic="t", partitions={}, event_hours={h(e): 1 for e in event_hours}
    )


LEDGER = {
    # end 06:00 + 30 d is long past; it holds its own hour and the hour before: goes.
    h("2026-05-01T05"): manifest("2026-05-01T05", "2026-05-01T04", "2026-05-01T05"),
    # ends at midnight; 30 days later is exactly NOW: goes (the horizon is inclusive).
    h("2026-05-10T23"): manifest("2026-05-10T23", "2026-05-10T22"),
    # expired itself, but holds an event of 2026-05-11T02 (a device clock ahead), which is not:
    # cleaning that hour again would need this file, so it stays.
    h("2026-05-09T10"): manifest("2026-05-09T10", "2026-05-09T10", "2026-05-11T02"),
    # inside the horizon.
    h("2026-05-20T00"): manifest("2026-05-20T00", "2026-05-20T00"),
}
PRESENT = {
    # 2026-05-02T00 has files but no manifest: a landing in flight, never touched.
    "bronze": [*LEDGER, h("2026-05-02T00")],
    # The day 2026-05-20 ended 20 days before NOW (both hours go), 2026-05-21 did not.
    "silver": [h("2026-05-20T00"), h("2026-05-20T23"), h("2026-05-21T00")],
    "landing_quarantine": [h("2026-05-30T23"), h("2026-05-31T00")],
    "cleaning_quarantine": [h("2026-05-01T04")],
}


def test_retention_plans_exactly_the_expired_whole_partitions():
    plan = plan_retention(POLICY, now=NOW, ledger=LEDGER, present=PRESENT)
    assert plan.bronze == [h("2026-05-01T05"), h("2026-05-10T23")]
    assert plan.silver == [h("2026-05-20T00"), h("2026-05-20T23")]
    assert plan.landing_quarantine == [h("2026-05-30T23")]
    assert plan.cleaning_quarantine == [h("2026-05-01T04")]


def test_forever_deletes_nothing():
    forever = Retention(bronze=None, silver=None, quarantine=None)
    plan = plan_retention(forever, now=NOW + timedelta(days=3650), ledger=LEDGER, present=PRESENT)
    assert plan.by_tier() == {tier: [] for tier in TIERS}


def _lay_out(lake: LakeResource) -> None:
    for tier, hours in PRESENT.items():
        for hour in hours:
            lake.write_bytes(f"{TIERS[tier]}/{hour_dir(hour)}/part-0000.parquet", b"x")
    for hour, entry in LEDGER.items():
        lake.write_json(manifest_path(hour), entry.to_json())


def _hours_left(lake: LakeResource, tier: str) -> list[str]:
    root = TIERS[tier]
    return [
        f"{d}/{hh}"
        for d in lake.list(root)
        if d.startswith("date=")
        for hh in lake.list(f"{root}/{d}")
    ]


def test_the_job_deletes_those_folders_and_keeps_the_ledger(tmp_path, monkeypatch):
    lake = LakeResource(url=str(tmp_path / "lake"))
    _lay_out(lake)
    monkeypatch.setenv("CLICKSTREAM_RETENTION_BRONZE", "30d")
    monkeypatch.setenv("CLICKSTREAM_RETENTION_SILVER", "20d")
    monkeypatch.setenv("CLICKSTREAM_RETENTION_QUARANTINE", "10d")
    result = lake_retention_job.execute_in_process(
        resources={"lake": lake, "clock": ClockResource(as_of=NOW.isoformat())}
    )
    assert result.success
    assert _hours_left(lake, "bronze") == [
        "date=2026-05-02/hour=00",
        "date=2026-05-09/hour=10",
        "date=2026-05-20/hour=00",
    ]
    assert _hours_left(lake, "silver") == ["date=2026-05-21/hour=00"]
    assert _hours_left(lake, "landing_quarantine") == ["date=2026-05-31/hour=00"]
    assert _hours_left(lake, "cleaning_quarantine") == []
    assert not lake.exists("bronze/date=2026-05-01")  # emptied day folders go too
    assert len(lake.list("bronze/_manifests")) == len(LEDGER)


def test_only_day_folders_past_the_horizon_are_listed(tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    _lay_out(lake)
    present = partitions_present(lake, POLICY, NOW)
    # A day folder is listed once its first hour has expired: 2026-05-21 and 2026-05-31 are not.
    assert present["silver"] == [h("2026-05-20T00"), h("2026-05-20T23")]
    assert present["landing_quarantine"] == [h("2026-05-30T23")]
    forever = Retention(bronze=None, silver=None, quarantine=None)
    assert partitions_present(lake, forever, NOW) == {}


@pytest.mark.parametrize(
    ("bronze", "silver", "hint"),
    [
        ("12h", "forever", "whole number of days"),
        ("0d", "forever", "whole number of days"),
        ("a year", "forever", "such as 400d"),
        ("400d", "forever", "keep bronze at least as long as silver"),
        ("30d", "31d", "keep bronze at least as long as silver"),
    ],
)
def test_a_bad_retention_fails_at_start_with_the_fix(bronze, silver, hint):
    env = {"CLICKSTREAM_RETENTION_BRONZE": bronze, "CLICKSTREAM_RETENTION_SILVER": silver}
    with pytest.raises(ConfigError, match=hint):
        Settings.from_env(env)


def test_retention_defaults_keep_everything_and_parse_days():
    assert Settings.from_env({}).retention == Retention(None, None, None)
    env = {
        "CLICKSTREAM_RETENTION_BRONZE": "400d",
        "CLICKSTREAM_RETENTION_SILVER": "90d",
        "CLICKSTREAM_RETENTION_QUARANTINE": " FOREVER",
    }
    assert Settings.from_env(env).retention == Retention(
        timedelta(days=400), timedelta(days=90), None
    )


@asset
def probe() -> None:
    """A trivial asset whose runs fill the history."""


def _finished_runs(instance: DagsterInstance) -> list[str]:
    return [r.dagster_run.run_id for r in instance.get_run_records(ascending=True)]


def test_the_purge_deletes_finished_runs_past_the_horizon_oldest_first():
    with instance_for_test() as instance:
        runs = [materialize([probe], instance=instance).run_id for _ in range(3)]
        assert _finished_runs(instance) == runs

        def purge(days_later: int, batch: int) -> None:
            clock = ClockResource(
                as_of=(datetime.now(UTC) + timedelta(days=days_later)).isoformat()
            )
            result = purge_run_history_job.execute_in_process(
                instance=instance,
                resources={"clock": clock},
                run_config={
                    "ops": {"purge_run_history": {"config": {"keep_days": 90, "batch": batch}}}
                },
            )
            assert result.success

        purge(days_later=89, batch=10)  # nothing is 90 days old yet; only the purge run is added
        assert _finished_runs(instance)[:3] == runs
        purge(days_later=91, batch=2)  # the two oldest go (a bounded batch), events included
        left = _finished_runs(instance)
        assert runs[0] not in left and runs[1] not in left and runs[2] in left
        assert instance.all_logs(runs[0]) == []
        assert instance.all_logs(runs[2]) != []
