"""Catch-up against the real Kafka protocol (the embedded broker), not the in-memory log: the
marts equal the independent expectation and the consumer group holds the landed ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import instance_for_test

from clickstream_tools.catchup import run_catch_up
from clickstream_tools.generator import produce
from core.ledger import Ledger
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from tests.helpers import (
    all_manifests,
    assert_marts_match,
    configured,
    local_env,
    messy_traffic,
)

pytestmark = pytest.mark.integration

START = datetime(2026, 4, 2, 6, tzinfo=UTC)
END = START + timedelta(hours=8)
UNTIL = END + timedelta(hours=6)
TOPIC = "it.catch-up"


@pytest.fixture(scope="module")
def landed(broker, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-broker")
    env = local_env(root, CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap, CLICKSTREAM_TOPIC=TOPIC)
    with configured(env) as settings:
        kafka = KafkaResource(bootstrap_servers=broker.bootstrap, topic=TOPIC)
        kafka.create_topic(4)
        traffic = messy_traffic(START, END, events=12_000, seed=11, max_late=timedelta(hours=4))
        produce(kafka, traffic.messages, chunk_rows=5_000)
        with instance_for_test() as instance:
            report = run_catch_up(settings, until=UNTIL, instance=instance, log=lambda _: None)
        yield settings, kafka, traffic, report


def test_catch_up_over_the_real_broker_matches_the_expectation(landed):
    settings, _, traffic, report = landed
    assert {run["stage"] for run in report.runs} == {"landing", "cleaning", "marts"}
    assert all(run["success"] for run in report.runs)
    assert_marts_match(settings.warehouse, traffic.truth)


def test_every_message_landed_once(landed):
    settings, _, traffic, _ = landed
    manifests = all_manifests(LakeResource(url=settings.lake_url))
    assert sum(m.rows for m in manifests.values()) == traffic.messages.num_rows


def test_the_consumer_group_holds_the_landed_ends(landed):
    settings, kafka, _, _ = landed
    last = Ledger(LakeResource(url=settings.lake_url)).head()
    assert last is not None
    landed_ends = last.ends
    assert kafka.committed() == landed_ends
    assert kafka.high_watermarks(dict.fromkeys(landed_ends, 0)) == landed_ends
