"""The asset checks: each pure function on good data and on a crafted gap, overlap or count
mismatch, then a blocking check failing inside a Dagster run and stopping what is downstream."""

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, instance_for_test, materialize

from clickstream_assets.assets import events, raw_events
from clickstream_assets.checks import (
    all_checks,
    bronze_row_problems,
    bronze_rows_match_ranges,
    daily_events_problems,
    event_hour_problems,
    ids_unique,
    offset_range_problems,
    offset_ranges_chain,
    parquet_rows,
    reconciles_with_bronze,
)
from core.ledger import Ledger, Manifest, PartitionRange, manifest_path
from partitions import AS_OF_TAG
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from tests.helpers import produce, value

H = datetime(2026, 11, 27, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


def manifest(hour: datetime, ranges: dict[int, tuple[int, int]]) -> Manifest:
    return Manifest(
        ingest_hour=hour,
        topic="t",
        partitions={
            p: PartitionRange(
                start=s, end=e, rows=e - s, file=f"bronze/{p}.parquet" if e > s else None
            )
            for p, (s, e) in ranges.items()
        },
        event_hours={},
    )


# --- offset_ranges_chain -----------------------------------------------------------------------


def test_chained_ranges_pass():
    manifests = {
        H: manifest(H, {0: (0, 5), 1: (0, 3)}),
        H + HOUR: manifest(H + HOUR, {0: (5, 9), 1: (3, 3), 2: (7, 8)}),  # new partition
    }
    assert offset_range_problems(H, manifests) == []
    assert offset_range_problems(H + HOUR, manifests) == []


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ({0: (6, 9), 1: (3, 4)}, "p0: gap"),
        ({0: (4, 9), 1: (3, 4)}, "p0: overlap"),
        ({0: (5, 4), 1: (3, 4)}, "p0: start 5 > end 4"),
        ({0: (5, 9)}, "p1: partition missing"),
    ],
)
def test_broken_chains_fail(ranges, expected):
    manifests = {H: manifest(H, {0: (0, 5), 1: (0, 3)}), H + HOUR: manifest(H + HOUR, ranges)}
    problems = offset_range_problems(H + HOUR, manifests)
    assert len(problems) == 1 and expected in problems[0]


def test_a_hole_in_the_ledger_fails():
    manifests = {H: manifest(H, {0: (0, 5)}), H + 2 * HOUR: manifest(H + 2 * HOUR, {0: (5, 6)})}
    assert "no manifest for the hour before" in offset_range_problems(H + 2 * HOUR, manifests)[0]
    assert offset_range_problems(H + HOUR, manifests) == ["2026-11-27T11: no manifest"]


# --- bronze_rows_match_ranges ------------------------------------------------------------------


def test_bronze_rows_from_parquet_footers(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    pq.write_table(pa.table({"x": list(range(5))}), tmp_path / "five.parquet")
    assert parquet_rows(lake, ["five.parquet", "absent.parquet"]) == [5, None]
    hour = manifest(H, {0: (10, 15), 1: (3, 3)})
    assert bronze_row_problems(hour, {0: 5, 1: None}) == []
    assert "has 4 rows, range holds 5" in bronze_row_problems(hour, {0: 4, 1: None})[0]
    assert "no bronze file" in bronze_row_problems(hour, {0: None, 1: None})[0]
    assert "has 1 rows, range holds 0" in bronze_row_problems(hour, {0: 5, 1: 1})[0]


# --- reconciles_with_bronze --------------------------------------------------------------------


def test_event_hour_reconciles():
    good = dict(histogram_rows=10, silver_rows=6, quarantined_rows=1, silver_ids_unique=True)
    assert event_hour_problems("E", duplicates=3, **good) == []
    assert event_hour_problems("E", duplicates=None, **good) == []
    assert "!= 10 bronze rows" in event_hour_problems("E", duplicates=2, **good)[0]
    assert "exceeds" in event_hour_problems("E", **{**good, "silver_rows": 10}, duplicates=None)[0]
    assert (
        "more than once"
        in event_hour_problems("E", **{**good, "silver_ids_unique": False}, duplicates=3)[0]
    )
    assert "missing" in event_hour_problems("E", **{**good, "silver_rows": None}, duplicates=3)[0]


def test_silver_ids_are_unique_only_when_none_repeats_and_none_is_missing():
    assert ids_unique(pa.chunked_array([["a", "b"], ["c"]]))
    # A repeat across the file's row groups (chunks) counts as much as one within one.
    assert not ids_unique(pa.chunked_array([["a", "b"], ["b"]]))
    assert not ids_unique(pa.chunked_array([["a", "b", "a"]]))
    assert not ids_unique(pa.chunked_array([["a", None], ["c"]]))
    assert ids_unique(pa.chunked_array([], pa.string()))


# --- daily_events_reconcile --------------------------------------------------------------------


def test_daily_events_reconcile():
    assert daily_events_problems("D", daily_events=7, hourly_events=7, silver_rows=7) == []
    assert daily_events_problems("D", daily_events=7, hourly_events=6, silver_rows=7) != []
    assert daily_events_problems("D", daily_events=7, hourly_events=7, silver_rows=8) != []
    # A day without a valid event has no row; a day with events must have one.
    assert daily_events_problems("D", daily_events=None, hourly_events=0, silver_rows=0) == []
    assert daily_events_problems("D", daily_events=None, hourly_events=0, silver_rows=3) != []


# --- through Dagster ---------------------------------------------------------------------------


def _produce(log: InMemoryKafka, partition: int, times: list[datetime]) -> None:
    produce(log, partition, [(t, value(f"e{partition}-{i}", t)) for i, t in enumerate(times)])


def _evaluations(result) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_checks_pass_on_a_range_run_and_a_broken_range_blocks_cleaning(tmp_path):
    log = InMemoryKafka(topic="t", partitions=2)
    minutes = [H + timedelta(minutes=m) for m in (5, 25, 70, 75, 130)]  # hours 10, 11, 12
    _produce(log, 0, minutes)
    _produce(log, 1, minutes[:3])
    lake = LakeResource(url=str(tmp_path / "lake"))
    resources = {"kafka": log, "lake": lake}
    tags = {AS_OF_TAG: (H + 4 * HOUR).isoformat()}
    assets = [raw_events, events, *all_checks[:-1]]
    with instance_for_test() as instance:
        landed = materialize(
            assets,
            selection=[raw_events.key, events.key],
            resources=resources,
            instance=instance,
            tags=tags
            | {
                "dagster/asset_partition_range_start": "2026-11-27-10:00",
                "dagster/asset_partition_range_end": "2026-11-27-12:00",
            },
        )
        # The checks ride along with the selected assets and pass over the whole range.
        assert _evaluations(landed) == {
            "offset_ranges_chain": True,
            "no_offsets_lost": True,
            "bronze_rows_match_ranges": True,
            "reconciles_with_bronze": True,
        }

        # Corrupt the ledger: hour 11 of partition 0 now skips an offset (a gap after hour 10).
        hour = H + HOUR
        path = tmp_path / "lake" / manifest_path(hour)
        recorded = json.loads(path.read_text())
        recorded["partitions"]["0"]["start"] += 1
        path.write_text(json.dumps(recorded))
        assert Ledger(lake).manifest(hour).partitions[0].start == 3

        rerun = materialize(
            assets,
            selection=[raw_events.key, events.key],
            partition_key="2026-11-27-11:00",
            resources=resources,
            instance=instance,
            tags=tags,
            raise_on_error=False,
        )
        assert not rerun.success
        assert _evaluations(rerun)["offset_ranges_chain"] is False
        assert "reconciles_with_bronze" not in _evaluations(rerun)
        # The blocking check stopped cleaning: events was not materialized again.
        assert not rerun.asset_materializations_for_node("events")
        check = instance.get_latest_asset_check_evaluation_record(offset_ranges_chain.check_key)
        assert check is not None and check.event is not None
        evaluation = check.event.dagster_event.event_specific_data
        assert evaluation.partition == "2026-11-27-11:00" and not evaluation.passed
        assert "p0: gap" in evaluation.metadata["problems"].value[0]


def test_silver_mismatch_fails_the_cleaning_check(tmp_path):
    log = InMemoryKafka(topic="t", partitions=1)
    _produce(log, 0, [H + timedelta(minutes=m) for m in (5, 6, 7)])
    lake = LakeResource(url=str(tmp_path / "lake"))
    resources = {"kafka": log, "lake": lake}
    with instance_for_test() as instance:
        result = materialize(
            [raw_events, events, *all_checks[:-1]],
            selection=[raw_events.key, events.key],
            partition_key="2026-11-27-10:00",
            resources=resources,
            instance=instance,
            tags={AS_OF_TAG: (H + 2 * HOUR).isoformat()},
        )
        assert _evaluations(result)["reconciles_with_bronze"] is True
        # The ledger claims a row of hour 10 that bronze does not hold: cleaning cannot account
        # for it, and the check says so.
        path = tmp_path / "lake" / manifest_path(H)
        recorded = json.loads(path.read_text())
        recorded["event_hours"]["2026-11-27T10"] += 1
        path.write_text(json.dumps(recorded))
        again = materialize(
            [raw_events, events, *all_checks[:-1]],
            selection=[events.key],
            partition_key="2026-11-27-10:00",
            resources=resources,
            instance=instance,
            tags={AS_OF_TAG: (H + 2 * HOUR).isoformat()},
            raise_on_error=False,
        )
        assert _evaluations(again) == {"reconciles_with_bronze": False}


def test_checks_target_the_right_assets():
    assert offset_ranges_chain.check_key.asset_key == raw_events.key
    assert bronze_rows_match_ranges.check_key.asset_key == raw_events.key
    assert reconciles_with_bronze.check_key.asset_key == events.key
    assert all_checks[-1].check_key.asset_key == AssetKey("fct_daily_active_users")


def test_a_hole_is_found_from_the_ledger_start_alone():
    only = {H + 2 * HOUR: manifest(H + 2 * HOUR, {0: (5, 6)})}
    assert offset_range_problems(H + 2 * HOUR, only) == []
    assert (
        "no manifest for the hour before"
        in (offset_range_problems(H + 2 * HOUR, only, first_recorded=H)[0])
    )


def test_freshness_policies_follow_the_allowed_lateness():
    from clickstream_assets.definitions import daily_freshness, defs, hourly_freshness

    hourly = hourly_freshness(timedelta(hours=3))
    assert hourly.fail_window.to_timedelta() == timedelta(hours=4, minutes=15)
    assert hourly.warn_window is not None
    assert hourly.warn_window.to_timedelta() == timedelta(hours=1, minutes=15)
    assert daily_freshness(timedelta(hours=3)).deadline_cron == "0 5 * * *"
    assert daily_freshness(timedelta(minutes=90)).deadline_cron == "30 3 * * *"
    graph = defs.resolve_asset_graph()
    assert graph.get(raw_events.key).freshness_policy == hourly
    assert graph.get(AssetKey("fct_daily_active_users")).freshness_policy == daily_freshness(
        timedelta(hours=3)
    )
