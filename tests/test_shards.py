"""Landing fanned out by Kafka partition: K shards (plan, one step per shard, commit) record
the same manifests and write the same bronze bytes as one step does, each partition's range
chained on its own, and nothing is recorded until the commit.

Known answers are counted from the records each test produces: in partition p, hour H holds the
offsets of the records received before H ends and not before H starts (receive times rise with
the offset here, so a count is an offset)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from dagster import instance_for_test, materialize

from clickstream_assets.assets import build_raw_events, raw_events
from clickstream_assets.landing import (
    LandingPlan,
    commit_landing,
    land_hours,
    land_shard,
    plan_landing,
    shard_partitions,
)
from core.ledger import PARTIALS, Ledger, Manifest, bronze_file, partition_key
from core.settings import ConfigError, Settings
from partitions import AS_OF_TAG, RANGE_END_TAG, RANGE_START_TAG
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from tests.helpers import START, all_manifests, at, produce, value

HOURS = [at(10), at(11), at(12)]
NOW = at(13, 5)
PARTITIONS = 5
EMPTY = 4
"""A partition that never receives anything: it still has a range, [0, 0), every hour."""


def received(partition: int) -> list[datetime]:
    """Receive times of partition `partition`: a different pace each, from 10:00 into 13:xx."""
    if partition == EMPTY:
        return []
    step = timedelta(minutes=7 + 4 * partition, seconds=13 * partition)
    times, t = [], at(10, 2 * partition)
    while t < at(13, 30):
        times.append(t)
        t += step
    return times


@pytest.fixture
def log() -> InMemoryKafka:
    """Every partition but one receives records: valid clicks, a few malformed values (landing
    quarantine) and a few future device clocks (corrected copies)."""
    log = InMemoryKafka(topic="t", partitions=PARTITIONS)
    for p in range(PARTITIONS):
        rows = []
        for i, t in enumerate(received(p)):
            if i % 9 == 4:
                rows.append((t, b"not json"))
            elif i % 7 == 3:
                rows.append((t, value(f"p{p}-{i}", t + timedelta(hours=2))))
            else:
                rows.append((t, value(f"p{p}-{i}", t - timedelta(minutes=i % 50))))
        if rows:
            produce(log, p, rows)
    return log


def expected_ranges() -> dict[datetime, dict[int, tuple[int, int]]]:
    """Per hour, per partition: [records received before the hour, before its end)."""
    return {
        hour: {
            p: (
                sum(t < hour for t in received(p)),
                sum(t < hour + timedelta(hours=1) for t in received(p)),
            )
            for p in range(PARTITIONS)
        }
        for hour in HOURS
    }


def land_sharded(log, lake: LakeResource, shards: int, *, until: int | None = None):
    """Plan, the shards (each as its own step would: only the plan read back from the lake),
    then commit; `until` stops after that many shards, as a crash would."""
    plan = plan_landing(log, lake, HOURS, now=NOW, first_instant=START, shards=shards)
    for shard in range(shards if until is None else until):
        land_shard(log, lake, LandingPlan.read(lake, plan.first_hour, plan.token), shard)
    return commit_landing(log, lake, LandingPlan.read(lake, plan.first_hour, plan.token))


def ranges(manifest: Manifest) -> dict[int, tuple[int, int]]:
    return {p: (r.start, r.end) for p, r in manifest.partitions.items()}


def bronze_bytes(lake: LakeResource, manifests: list[Manifest]) -> dict[str, bytes]:
    return {
        r.file: Path(lake.path(r.file)).read_bytes()
        for m in manifests
        for r in m.partitions.values()
        if r.file
    }


def test_shards_split_the_partitions_by_remainder():
    assert shard_partitions(range(7), 0, 3) == [0, 3, 6]
    assert shard_partitions(range(7), 1, 3) == [1, 4]
    assert shard_partitions(range(7), 2, 3) == [2, 5]
    assert shard_partitions([4, 1], 0, 1) == [1, 4]


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_landing_records_what_one_step_records(log, tmp_path, shards):
    one = LakeResource(url=str(tmp_path / "one"))
    many = LakeResource(url=str(tmp_path / "many"))
    single = land_hours(log, one, HOURS, now=NOW, first_instant=START)
    sharded = land_sharded(log, many, shards)

    expected = expected_ranges()
    assert [m.ingest_hour for m in sharded] == HOURS
    for manifest in sharded:
        hour = manifest.ingest_hour
        assert ranges(manifest) == expected[hour]
        assert manifest.rows == sum(end - start for start, end in expected[hour].values())
    assert [m.to_json() for m in sharded] == [m.to_json() for m in single]
    assert sum(m.quarantined.get("not_json", 0) for m in sharded) > 0
    assert sum(len(m.corrected) for m in sharded) > 0
    assert bronze_bytes(many, sharded) == bronze_bytes(one, single)
    # The ledger holds the same, the consumer group the last ends, and no partial is left.
    assert [m.to_json() for m in all_manifests(many).values()] == [m.to_json() for m in single]
    assert log.committed() == sharded[-1].ends
    assert list((tmp_path / "many" / PARTIALS).rglob("*.json")) == []


def test_a_crash_before_the_commit_records_nothing_and_the_rerun_lands_the_same(log, tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    with pytest.raises(RuntimeError, match="the shard landing partition 1 failed"):
        land_sharded(log, lake, 2, until=1)  # shard 1 (partitions 1, 3) never ran
    assert Ledger(lake).recorded_hours() == []
    left = {
        f: Path(lake.path(f)).read_bytes()
        for f in (bronze_file(h, p) for h in HOURS for p in (0, 2))
    }

    manifests = land_sharded(log, lake, 2)
    assert [ranges(m) for m in manifests] == list(expected_ranges().values())
    assert {f: Path(lake.path(f)).read_bytes() for f in left} == left


def test_a_commit_retried_after_recording_some_hours_records_the_rest(log, tmp_path, monkeypatch):
    lake = LakeResource(url=str(tmp_path / "lake"))
    plan = plan_landing(log, lake, HOURS, now=NOW, first_instant=START, shards=2)
    for shard in range(2):
        land_shard(log, lake, plan, shard)
    commit = Ledger.commit

    def crash_at_the_second_hour(ledger, manifest):
        if manifest.ingest_hour == HOURS[1]:
            raise OSError("the object store went away")
        return commit(ledger, manifest)

    monkeypatch.setattr(Ledger, "commit", crash_at_the_second_hour)
    with pytest.raises(OSError):
        commit_landing(log, lake, plan)
    assert Ledger(lake).recorded_hours() == HOURS[:1]
    monkeypatch.setattr(Ledger, "commit", commit)

    manifests = commit_landing(log, lake, plan)  # the step's retry
    assert [m.ingest_hour for m in manifests] == HOURS
    assert [ranges(m) for m in manifests] == list(expected_ranges().values())


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_a_bad_shard_count_names_the_variable_and_the_fix(text):
    with pytest.raises(
        ConfigError, match=r"CLICKSTREAM_LANDING_SHARDS=.*whole number of 1 or more"
    ):
        Settings.from_env({"CLICKSTREAM_LANDING_SHARDS": text})


def test_the_shard_count_defaults_to_one_step():
    assert Settings.from_env({}).landing_shards == 1
    assert Settings.from_env({"CLICKSTREAM_LANDING_SHARDS": "4"}).landing_shards == 4


def test_a_bad_shard_count_stops_the_code_location_from_loading(tmp_path):
    env = os.environ | {"CLICKSTREAM_LANDING_SHARDS": "none", "DAGSTER_HOME": str(tmp_path)}
    loaded = subprocess.run(
        [sys.executable, "-c", "import clickstream_assets.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode != 0
    assert "CLICKSTREAM_LANDING_SHARDS='none' is not a shard count" in loaded.stderr


def landed_metadata(raw_events, log, lake: LakeResource) -> dict[str, dict]:
    """Materialize `raw_events` over HOURS at NOW; each partition's metadata."""
    with instance_for_test() as instance:
        result = materialize(
            [raw_events],
            resources={"kafka": log, "lake": lake},
            instance=instance,
            tags={
                RANGE_START_TAG: partition_key(HOURS[0]),
                RANGE_END_TAG: partition_key(HOURS[-1]),
                AS_OF_TAG: NOW.isoformat(),
            },
        )
    assert result.success
    return {
        e.materialization.partition: {
            name: entry.value for name, entry in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def test_the_sharded_asset_shows_what_the_one_step_asset_shows(log, tmp_path):
    sharded = build_raw_events(3)
    assert sharded.key == raw_events.key
    assert set(sharded.node_def.node_dict) == {
        "plan_landing",
        "land_shard_0",
        "land_shard_1",
        "land_shard_2",
        "commit_landing",
    }
    one = landed_metadata(raw_events, log, LakeResource(url=str(tmp_path / "one")))
    many = landed_metadata(sharded, log, LakeResource(url=str(tmp_path / "many")))
    assert sorted(many) == [partition_key(h) for h in HOURS]
    assert many == one
    expected = expected_ranges()
    for hour in HOURS:
        assert many[partition_key(hour)]["offset_ranges"] == {
            str(p): list(r) for p, r in expected[hour].items()
        }
