"""Landing fanned out by Kafka partition, for real: `raw_events` with 2 shards is materialized
through Dagster's multiprocess executor (plan, each shard and commit in its own process, sharing
nothing but the lake) from the embedded broker with 6 partitions.

The known answer is read back from the broker with the plain client: per partition, hour H ends
at the first offset whose Kafka timestamp is at or after the end of H (the high watermark when
none is), and starts where H-1 ended (the log's beginning for the first hour)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import (
    AssetCheckKey,
    Definitions,
    define_asset_job,
    execute_job,
    instance_for_test,
    multiprocess_executor,
    reconstructable,
)

from clickstream_assets.landing import land_hours
from clickstream_tools.generator import produce
from core.ledger import HOUR, partition_key
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from tests.helpers import all_manifests, messy_traffic

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 9, 4, tzinfo=UTC)
END = START + timedelta(hours=3)
LANDED = [START + i * HOUR for i in range(5)]  # receive times end within 1 h of END
AS_OF = LANDED[-1] + timedelta(hours=1, minutes=5)
PARTITIONS = 6
SHARDS = 2
TOPIC = "it.shards"
FIRST_INSTANT = datetime(2026, 1, 1, tzinfo=UTC)


def sharded_landing_job():
    """The landing job with `raw_events` in 2 shards and its checks, on the multiprocess
    executor; rebuilt in each step process from the environment the test sets."""
    from clickstream_assets.assets import build_raw_events
    from clickstream_assets.checks import (
        bronze_rows_match_ranges,
        no_offsets_lost,
        offset_ranges_chain,
    )

    defs = Definitions(
        assets=[build_raw_events(SHARDS)],
        asset_checks=[offset_ranges_chain, no_offsets_lost, bronze_rows_match_ranges],
        resources={
            "kafka": KafkaResource(
                bootstrap_servers=os.environ["CLICKSTREAM_KAFKA_BOOTSTRAP"], topic=TOPIC
            ),
            "lake": LakeResource(url=os.environ["CLICKSTREAM_LAKE_URL"]),
        },
        jobs=[define_asset_job("sharded_landing", executor_def=multiprocess_executor)],
    )
    return defs.resolve_job_def("sharded_landing")


def expected_ranges(kafka: KafkaResource) -> dict[datetime, dict[int, tuple[int, int]]]:
    """Each hour's range per partition, from the records as the broker holds them."""
    expected: dict[datetime, dict[int, tuple[int, int]]] = {hour: {} for hour in LANDED}
    for p in range(PARTITIONS):
        batches = [batch for batch, _ in kafka.read(p, 0)]
        records = pa.Table.from_batches(batches) if batches else None
        high = kafka.high_watermarks({p: 0})[p]
        start = 0
        for hour in LANDED:
            end = high
            if records is not None:
                later = pc.greater_equal(
                    records["kafka_timestamp"], pa.scalar(hour + HOUR, pa.timestamp("ms", "UTC"))
                )
                if pc.any(later).as_py():
                    end = pc.min(records["kafka_offset"].filter(later)).as_py()
            expected[hour][p] = (start, end)
            start = end
    return expected


@pytest.fixture(scope="module")
def landed(broker, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, topic=TOPIC)
    kafka.create_topic(PARTITIONS)
    traffic = messy_traffic(START, END, events=6_000, seed=23, max_late=timedelta(hours=1))
    produce(kafka, traffic.messages, chunk_rows=3_000)
    lake = LakeResource(url=str(root / "lake"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLICKSTREAM_KAFKA_BOOTSTRAP", broker.bootstrap)
        patch.setenv("CLICKSTREAM_LAKE_URL", lake.url)
        with instance_for_test() as instance:
            result = execute_job(
                reconstructable(sharded_landing_job),
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": partition_key(LANDED[0]),
                    "dagster/asset_partition_range_end": partition_key(LANDED[-1]),
                    "clickstream/as_of": AS_OF.isoformat(),
                },
            )
            yield kafka, lake, traffic, result


def test_the_run_lands_in_separate_steps_and_its_checks_pass(landed):
    _, _, _, result = landed
    assert result.success
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {f"raw_events.land_shard_{k}" for k in range(SHARDS)} <= steps
    assert {"raw_events.plan_landing", "raw_events.commit_landing"} <= steps
    materialized = [e.materialization for e in result.get_asset_materialization_events()]
    assert sorted(m.partition for m in materialized) == [partition_key(h) for h in LANDED]
    evaluations = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert {ev.asset_check_key for ev in evaluations} == {
        AssetCheckKey(materialized[0].asset_key, name)
        for name in ("offset_ranges_chain", "no_offsets_lost", "bronze_rows_match_ranges")
    }
    assert all(ev.passed for ev in evaluations)


def test_each_partition_chains_and_every_record_landed_once(landed):
    kafka, lake, traffic, _ = landed
    manifests = all_manifests(lake)
    assert sorted(manifests) == LANDED
    expected = expected_ranges(kafka)
    for hour in LANDED:
        got = {p: (r.start, r.end) for p, r in manifests[hour].partitions.items()}
        assert got == expected[hour], hour
        assert manifests[hour].rows == sum(end - start for start, end in expected[hour].values())
    assert len({p for h in LANDED for p, (s, e) in expected[h].items() if e > s}) == PARTITIONS
    assert sum(m.rows for m in manifests.values()) == traffic.messages.num_rows
    assert kafka.committed() == manifests[LANDED[-1]].ends
    assert list((Path(lake.url) / "bronze" / "_partials").rglob("*.json")) == []


def test_one_step_over_the_same_log_records_the_same(landed, tmp_path):
    kafka, lake, _, _ = landed
    one = LakeResource(url=str(tmp_path / "one"))
    single = land_hours(kafka, one, LANDED, now=AS_OF, first_instant=FIRST_INSTANT)
    sharded = all_manifests(lake)
    for manifest in single:
        assert sharded[manifest.ingest_hour].to_json() == manifest.to_json()
        for r in manifest.partitions.values():
            if r.file:
                assert Path(one.path(r.file)).read_bytes() == Path(lake.path(r.file)).read_bytes()
