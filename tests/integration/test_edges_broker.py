"""Odd but real records through the real Kafka protocol (the embedded broker) and catch-up: a
far-future Kafka timestamp in mid-partition, a record received before the start date and an event
dated before it, `user_id: false` and `0` on several devices, and two copies of one event
re-stamped into two hours and sent to two partitions. The expected marts are counted by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest

from core.ledger import Ledger
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from tests.helpers import configured, local_env

pytestmark = pytest.mark.integration

D = datetime(2026, 5, 4, tzinfo=UTC)
TOPIC = "it.edges"


def at(hour: int, minute: int = 0, second: int = 0, day: int = 0) -> datetime:
    return D + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def record(partition: int, received: datetime, event_id: str, event_time: datetime, **fields):
    body = {
        "event_id": event_id,
        "event_type": "click",
        "event_time": event_time.isoformat(),
        "device_id": fields.pop("device_id"),
    } | fields
    return partition, int(received.timestamp() * 1000), body


RECORDS = [
    record(0, at(10, 5), "a1", at(10, 5), device_id="dA", user_id="u1"),
    record(0, datetime(2031, 1, 1, tzinfo=UTC), "a2", at(10, 20), device_id="dA"),
    record(0, at(10, 40), "a3", at(10, 40), device_id="dB", user_id=False),
    record(0, at(11, 10), "a4", at(11, 10), device_id="dC", user_id=0),
    record(0, at(11, 59, 50), "x", at(11, 59, 45), device_id="dD"),
    record(0, at(12, 30), "a5", at(12, 30), device_id="dE", event_type="play", title_id="t1"),
    record(1, at(23, 30, day=-1), "b0", at(23, 29, day=-1), device_id="dG"),
    record(1, at(0, 10), "b1", at(22, 0, day=-1), device_id="dG"),
    record(1, at(12, 0, 20), "x", at(12, 0, 15), device_id="dD"),
    record(1, at(12, 40), "b2", at(12, 40), device_id="dF", user_id="u2", event_type="page_view"),
]


@pytest.fixture(scope="module")
def built(broker, tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    env = local_env(
        root,
        CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap,
        CLICKSTREAM_TOPIC=TOPIC,
        CLICKSTREAM_START_DATE=D.date().isoformat(),
    )
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, topic=TOPIC)
    kafka.create_topic(2)
    kafka.produce(
        pa.table(
            {
                "partition": pa.array([r[0] for r in RECORDS], pa.int32()),
                "timestamp_ms": pa.array([r[1] for r in RECORDS], pa.int64()),
                "key": pa.array([r[2]["device_id"].encode() for r in RECORDS], pa.binary()),
                "value": pa.array([json.dumps(r[2]).encode() for r in RECORDS], pa.binary()),
            }
        )
    )
    # A process of its own: the partitions start at CLICKSTREAM_START_DATE, read once at start.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clickstream_tools.cli",
            "catch-up",
            "--until",
            at(14, 10).isoformat(),
        ],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with configured(env) as settings:
        yield settings


def query(settings, sql: str) -> list[tuple]:
    with duckdb.connect(settings.warehouse, read_only=True) as connection:
        connection.execute("set TimeZone = 'UTC'")
        return connection.execute(sql).fetchall()


def test_daily_active_users_count_each_actor_and_event_once(built):
    assert query(
        built,
        "select event_date, active_users, logged_in_users, active_devices, events "
        "from fct_daily_active_users order by all",
    ) == [(date(2026, 5, 4), 5, 2, 4, 5)]  # no row for the day before the start


def test_hourly_events_put_the_restamped_event_in_its_first_copys_hour(built):
    rows = query(
        built,
        "select hour(event_hour), event_type, events, active_users from fct_hourly_events "
        "order by all",
    )
    assert rows == [
        (10, "click", 2, 2),
        (11, "click", 1, 1),
        (12, "page_view", 1, 1),
        (12, "play", 1, 1),
    ]


def test_plays_and_quarantine_reasons(built):
    assert query(built, "select title_id, plays, unique_viewers from fct_daily_title_plays") == [
        ("t1", 1, 1)
    ]
    assert query(
        built, "select reason, count(*) from quarantined_events group by reason order by reason"
    ) == [("before_start_date", 2), ("wrong_type:user_id", 2)]


def test_every_record_landed_and_the_future_timestamp_was_counted(built):
    ledger = Ledger(LakeResource(url=built.lake_url))
    manifests = ledger.manifests(ledger.recorded_hours())
    assert sum(m.rows for m in manifests.values()) == len(RECORDS)
    assert sum(m.future_timestamps for m in manifests.values()) == 1
    assert min(manifests) == D  # what was received before the start landed in the first hour
