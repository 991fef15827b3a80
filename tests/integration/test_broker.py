"""The embedded broker against the real Kafka client: generated traffic goes in and comes back
out per partition with the same keys, values and timestamps."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from clickstream_tools.generator import TrafficSpec, generate, produce
from resources.broker import EmbeddedBroker
from resources.event_log import KafkaUnavailable, partition_for_key
from resources.kafka import KafkaResource

pytestmark = pytest.mark.integration


def test_broker_starts_refuses_a_taken_port_and_stops():
    broker = EmbeddedBroker.on_free_port()
    with broker:
        assert broker.running
        with pytest.raises(KafkaUnavailable, match=str(broker.port)):
            EmbeddedBroker(broker.bootstrap, startup_timeout_s=3).start()
    assert not broker.running
    broker.stop()  # stopping twice is harmless


def test_generated_traffic_round_trips_per_partition(broker):
    partitions = 4
    log = KafkaResource(bootstrap_servers=broker.bootstrap, topic="it.roundtrip")
    log.create_topic(partitions)
    log.create_topic(partitions)  # idempotent
    assert log.partitions() == list(range(partitions))

    start = datetime(2026, 2, 1, tzinfo=UTC)
    traffic = generate(
        TrafficSpec(start=start, end=start + timedelta(hours=6), events=20_000, seed=5)
    )
    progress = []
    produce(log, traffic.messages, chunk_rows=8_000, progress=lambda d, t: progress.append(d))
    assert progress[-1] == traffic.messages.num_rows

    # What each partition should hold, in order: the Java partitioner on the device key.
    expected = defaultdict(list)
    for key, value, ts in zip(
        traffic.messages.column("key").to_pylist(),
        traffic.messages.column("value").to_pylist(),
        traffic.messages.column("timestamp_ms").to_pylist(),
        strict=True,
    ):
        expected[partition_for_key(key, partitions, 0)].append((key, value, ts))

    highs = log.high_watermarks(dict.fromkeys(range(partitions), 0))
    assert sum(highs.values()) == traffic.messages.num_rows
    for p in range(partitions):
        assert highs[p] == len(expected[p])
        got = pa.Table.from_batches([batch for batch, _ in log.read(p, 0, highs[p])])
        assert got.column("kafka_offset").to_pylist() == list(range(highs[p]))
        timestamps = got.column("kafka_timestamp").cast(pa.int64()).to_pylist()
        assert (
            list(
                zip(
                    got.column("kafka_key").to_pylist(),
                    got.column("value").to_pylist(),
                    timestamps,
                    strict=True,
                )
            )
            == expected[p]
        )
    # An exact sub-range reads exactly that range.
    read = list(log.read(0, 10, 25))
    middle = pa.Table.from_batches([batch for batch, _ in read])
    assert middle.column("kafka_offset").to_pylist() == list(range(10, 25))
    assert read[-1][1] == 25  # the next offset to read


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_landing_reads_what_any_producer_codec_wrote(broker, codec):
    """Client apps and collectors choose their own compression: the landing's reader decodes
    each codec Kafka producers offer (kafka-python needs a library for all but gzip)."""
    from kafka import KafkaProducer

    log = KafkaResource(bootstrap_servers=broker.bootstrap, topic=f"it.codec-{codec}")
    log.create_topic(1)
    sent = [(f"d-{i % 7}".encode(), f'{{"event_id": "e-{i}"}}'.encode()) for i in range(3_000)]
    producer = KafkaProducer(
        bootstrap_servers=[broker.bootstrap], compression_type=codec, linger_ms=50
    )
    for key, value in sent:
        producer.send(log.topic, key=key, value=value, partition=0, timestamp_ms=1_700_000_000_000)
    producer.flush()
    producer.close()

    got = pa.Table.from_batches([batch for batch, _ in log.read(0, 0, len(sent))])
    assert list(zip(got["kafka_key"].to_pylist(), got["value"].to_pylist(), strict=True)) == sent
    assert got["kafka_offset"].to_pylist() == list(range(len(sent)))


def test_oldest_timestamp_of_a_partition_and_of_an_empty_one(broker):
    """Where a fresh deployment's ledger starts: the earliest timestamp among a partition's
    first records (a client's clock may put one a little before those it follows)."""
    from kafka import KafkaProducer

    log = KafkaResource(bootstrap_servers=broker.bootstrap, topic="it.oldest")
    log.create_topic(2)
    start = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
    stamps = [start + timedelta(seconds=i) for i in range(5_000)]
    stamps[2] = start - timedelta(minutes=40)  # an earlier clock, third in the log
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], compression_type="zstd")
    for i, stamp in enumerate(stamps):
        producer.send(
            log.topic, value=b"{}", partition=0, timestamp_ms=int(stamp.timestamp() * 1000)
        )
        if i == 2_500:
            producer.flush()  # more than one batch
    producer.flush()
    producer.close()

    assert log.oldest_timestamp(0) == start - timedelta(minutes=40)
    assert log.oldest_timestamp(1) is None


def test_a_read_from_a_paused_broker_fails_with_what_to_fix_and_the_next_one_reads_it_all(broker):
    """The fetches of a read go through kafka-python's network client: a broker that does not
    answer (paused, its data kept) fails the read after the request timeout with what to check,
    and a read once it answers again gets every record."""
    import os
    import signal
    import time

    log = KafkaResource(
        bootstrap_servers=broker.bootstrap, topic="it.paused", request_timeout_ms=2_000
    )
    log.create_topic(1)
    sent = pa.table(
        {
            "key": pa.array([b"d"] * 5_000, pa.binary()),
            "value": pa.array([b'{"n": %d}' % i for i in range(5_000)], pa.binary()),
            "timestamp_ms": pa.array([1_700_000_000_000 + i for i in range(5_000)], pa.int64()),
            "partition": pa.array([0] * 5_000, pa.int32()),
        }
    )
    log.produce(sent)
    pid = broker._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable, match=r"it\.paused\[0\].*is the broker up"):
            list(log.read(0, 0, 5_000))
        assert time.monotonic() - started < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    got = pa.Table.from_batches([batch for batch, _ in log.read(0, 0, 5_000)])
    assert got["value"].to_pylist() == sent["value"].to_pylist()
    assert got["kafka_offset"].to_pylist() == list(range(5_000))
