"""Lag against the real Kafka protocol (the embedded broker): what `measure_lag` reports equals
the records produced after the landed ends, and the consumer group holds those ends."""

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from dagster import instance_for_test

from core.ledger import Ledger
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from sensors.landing import first_hour_to_land, measure_lag
from tests.helpers import land_range

pytestmark = pytest.mark.integration

TOPIC = "it.lag"
H = datetime(2026, 11, 27, 10, tzinfo=UTC)


def records(rows: list[tuple[int, datetime]], tag: str) -> pa.Table:
    """(Kafka partition, receive time) rows as valid clicks."""
    values = [
        json.dumps(
            {
                "event_id": f"{tag}-{i}",
                "event_type": "click",
                "event_time": t.isoformat(),
                "device_id": f"d{p}",
            }
        ).encode()
        for i, (p, t) in enumerate(rows)
    ]
    return pa.table(
        {
            "key": pa.array([f"d{p}".encode() for p, _ in rows], pa.binary()),
            "value": pa.array(values, pa.binary()),
            "timestamp_ms": pa.array([int(t.timestamp() * 1000) for _, t in rows], pa.int64()),
            "partition": pa.array([p for p, _ in rows], pa.int32()),
        }
    )


def test_lag_and_committed_offsets_match_what_was_produced(broker, tmp_path):
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, topic=TOPIC)
    kafka.create_topic(3)
    # Hours 10 and 11 will land; the hour-12 records mark where hour 11 ends.
    first = [
        (p, H + timedelta(minutes=7 * i + p)) for i in range(20) for p in range(3) if i % 3 != p
    ]
    first += [(0, H + timedelta(hours=2, minutes=1)), (2, H + timedelta(hours=2, minutes=3))]
    kafka.produce(records(first, "a"))

    lake = LakeResource(url=str(tmp_path / "lake"))
    with instance_for_test() as instance:
        result = land_range(
            instance,
            {"kafka": kafka, "lake": lake},
            "2026-11-27-10:00",
            "2026-11-27-11:00",
            (H + timedelta(hours=2, minutes=5)).isoformat(),
        )
        assert result.success

    # More arrives after the landing, in hours 12 and 13.
    more = [(i % 3, H + timedelta(hours=2, minutes=10 + 9 * i)) for i in range(11)]
    kafka.produce(records(more, "b"))

    # Independent answer: per partition, everything received at or after 12:00 is waiting.
    landed_until = H + timedelta(hours=2)
    produced = Counter(p for p, _ in first + more)
    waiting = Counter(p for p, t in first + more if t >= landed_until)
    landed_ends = {p: produced[p] - waiting[p] for p in range(3)}
    assert all(waiting[p] for p in range(3))

    head = Ledger(lake).head()
    assert head is not None and head.ingest_hour == H + timedelta(hours=1)
    assert head.ends == landed_ends
    now = H + timedelta(hours=3, minutes=30)
    lag = measure_lag(kafka, head, now, first_hour_to_land(kafka, head))
    assert {p: v["records"] for p, v in lag.items()} == {p: waiting[p] for p in range(3)}
    assert all(v["seconds"] == (now - landed_until).total_seconds() > 0 for v in lag.values())
    assert kafka.committed() == landed_ends
