"""The event log: one interface over Kafka (kafka-python) and an in-memory log for unit tests.

Landing needs only exact-range reads (fetches from an offset, with the high watermark they
report) and group commits, so the interface stays that small; `end_offsets` and
`offsets_for_times` are deliberately unused because brokers disagree on them.

This module does not import Dagster (resources.kafka holds the Dagster resource over KafkaLog):
the generator's producer processes import it, and Dagster would be most of their start-up.
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from operator import attrgetter
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from kafka.partitioner.default import murmur2
from pydantic import BaseModel

RECORD_SCHEMA = pa.schema(
    [
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
        ("kafka_key", pa.binary()),
        ("value", pa.binary()),
    ]
)
"""What a read yields: the records of one Kafka partition, in offset order, as received."""
FETCH_BYTES = 8 * 1024 * 1024
"""What a fetch asks of a partition; the broker sends a larger first record batch whole."""
FETCH_RETRY_S = 0.1
"""The pause before a fetch is retried after the broker could not answer it."""
OLDEST_FETCH_BYTES = 64 * 1024
"""What a fetch asks of a partition to find its oldest timestamp: its first record batch."""


class KafkaUnavailable(RuntimeError):
    """The broker or topic cannot be used; the message says what to fix."""


class OffsetsGone(KafkaUnavailable):
    """A read asked for offsets that the log no longer holds (retention deleted them): Kafka's
    OFFSET_OUT_OF_RANGE, never a silent jump to what is left."""

    def __init__(self, topic: str, partition: int, offset: int, beginning: int | None) -> None:
        self.partition, self.offset, self.beginning = partition, offset, beginning
        super().__init__(
            f"{topic}[{partition}] no longer holds offset {offset}"
            + (f" (the log begins at {beginning})" if beginning is not None else "")
        )


Positioned = tuple[pa.RecordBatch, int]
"""Records read, and the offset to read next: past the last record, and past any offsets that
hold no record (transaction markers, compacted records) before the next one."""


class EventLog(ABC):
    """A partitioned, append-only log of (key, value, timestamp) records."""

    topic: str
    process_safe: ClassVar[bool] = False
    """Whether a copy of this log in another process reads the same records."""

    def opener(self) -> Callable[[], EventLog]:
        """A picklable callable that opens this log again, in another thread or (when
        process_safe) another process; the default hands the same object to threads."""
        return lambda: self

    @abstractmethod
    def partitions(self) -> list[int]:
        """The topic's partitions; raises KafkaUnavailable when the broker or topic is missing."""

    @abstractmethod
    def beginning_offset(self, partition: int) -> int:
        """The first offset the log still holds."""

    @abstractmethod
    def read(
        self, partition: int, start_offset: int, end_offset: int | None = None
    ) -> Iterator[Positioned]:
        """Records from `start_offset` up to `end_offset` (exclusive), or up to the high
        watermark seen while reading when `end_offset` is None, each batch with the next
        offset; the last next offset is where the read ended. Raises OffsetsGone when
        `start_offset` is below the log's beginning."""

    def oldest_timestamp(self, partition: int) -> datetime | None:
        """The earliest Kafka timestamp among the partition's first records (its first batch),
        None when it holds none."""
        reader = self.read(partition, self.beginning_offset(partition))
        try:
            batch = next((b for b, _ in reader if b.num_rows), None)
        finally:
            reader.close()
        return None if batch is None else pc.min(batch.column("kafka_timestamp")).as_py()

    @abstractmethod
    def high_watermarks(self, positions: dict[int, int]) -> dict[int, int]:
        """The high watermark of each partition in `positions` (the offset to fetch from)."""

    @abstractmethod
    def commit(self, offsets: dict[int, int]) -> None:
        """Commit `offsets` (next offset to read) to the landing consumer group."""

    @abstractmethod
    def committed(self) -> dict[int, int]:
        """The landing consumer group's committed offsets."""

    @abstractmethod
    def produce(self, records: pa.Table) -> None:
        """Append records (columns key, value, timestamp_ms, optional partition) and flush."""

    @abstractmethod
    def create_topic(self, partitions: int) -> None:
        """Create the topic if it does not exist."""


def _batch(partition: int, offsets, timestamps, keys, values) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.repeat(pa.scalar(partition, pa.int32()), len(offsets)),
            pa.array(offsets, pa.int64()),
            pa.array(timestamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
        ],
        schema=RECORD_SCHEMA,
    )


def decode_records(
    partition: int, record_set: bytes, start: int, end: int | None = None
) -> Positioned:
    """The records of a fetch response's record set from `start` up to `end` (exclusive; None
    for no end), and the offset to read next: past the last whole record batch (a transaction
    marker's control batch, and offsets that compaction emptied, included), at most `end`. A
    trailing partial batch is left for the next fetch. aiokafka's C decoder reads the batches
    (kafka-python's own decoder is Python code per record: about 11 us a record against 1.3).

    Each record batch becomes columns at once, so that its record objects die young, and the
    cyclic garbage collector is paused meanwhile: decoding makes no cycles, and in a process
    holding many objects (a Dagster run's) the collections that the allocations trigger took
    three quarters of the decoding."""
    from aiokafka.record.memory_records import MemoryRecords
    from kafka.errors import CorruptRecordError

    batches = MemoryRecords(record_set)
    decoded: list[pa.RecordBatch] = []
    after = start
    with _collector_paused():
        while (batch := batches.next_batch()) is not None:
            if not batch.validate_crc():
                raise CorruptRecordError(
                    f"partition {partition}: the record batch before offset {batch.next_offset} "
                    "fails its checksum"
                )
            if not batch.is_control_batch and (records := list(batch)):
                decoded.append(_batch(partition, *(list(map(f, records)) for f in _FIELDS)))
            after = batch.next_offset
    records = pa.concat_batches(decoded) if decoded else _batch(partition, [], [], [], [])
    if end is not None:
        after = min(after, end)
    offsets = records.column("kafka_offset")
    if records.num_rows and (offsets[0].as_py() < start or offsets[-1].as_py() >= after):
        records = records.filter(pc.and_(pc.greater_equal(offsets, start), pc.less(offsets, after)))
    return records, max(after, start)


_FIELDS = [attrgetter(name) for name in ("offset", "timestamp", "key", "value")]
"""A decoded record's fields, in `_batch`'s order."""


class _CollectorPause:
    """The cyclic garbage collector off while any thread is inside, back on (if it was on) when
    the last one leaves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._resume:
                    gc.enable()


_collector_paused = _CollectorPause()


def _sendable(records: pa.Table, partitions: list) -> Iterator[tuple]:
    """(key, value, timestamp_ms, partition) of each record to produce."""
    return zip(
        records.column("key").to_pylist(),
        records.column("value").to_pylist(),
        records.column("timestamp_ms").to_pylist(),
        partitions,
        strict=True,
    )


def partition_for_key(key: bytes | None, partitions: int, fallback: int) -> int:
    """The Java client's partitioner (murmur2), so the fake places keys as Kafka does."""
    if key is None:
        return fallback % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def key_partitions(keys: pa.ChunkedArray | pa.Array, partitions: int) -> list[int | None]:
    """The partition of each key by the Java client's partitioner, hashing each distinct key
    once; None for a null key (the producer then picks one)."""
    import polars as pl  # here, not at the top: only producing needs it

    frame = pl.DataFrame({"key": pl.Series(keys, dtype=pl.Binary)})
    distinct = frame.unique("key").drop_nulls()
    hashed = [partition_for_key(key, partitions, 0) for key in distinct["key"].to_list()]
    distinct = distinct.with_columns(partition=pl.Series(hashed, dtype=pl.Int32))
    return frame.join(distinct, on="key", how="left", maintain_order="left")["partition"].to_list()


class _Fetcher:
    """Fetch requests for one partition through kafka-python's network client, which keeps the
    connections, the protocol and the metadata; the record sets come back raw, for
    `decode_records`."""

    def __init__(self, log: KafkaLog, partition: int) -> None:
        from kafka import TopicPartition
        from kafka.net.compat import KafkaNetClient

        self.log, self.tp = log, TopicPartition(log.topic, partition)
        self.client = KafkaNetClient(
            bootstrap_servers=log.bootstrap_servers.split(","),
            request_timeout_ms=log.request_timeout_ms,
            receive_message_max_bytes=2 * log.fetch_bytes + 1024 * 1024,
            allow_auto_create_topics=False,
        )
        self.leader: int | None = None

    def fetch(self, offset: int, deadline: float) -> tuple[bytes, int] | None:
        """The record set at `offset` and the partition's high watermark; None when the broker
        cannot answer yet (no leader known, a connection lost): the caller retries until its
        deadline. Raises OffsetsGone when the log no longer holds `offset`."""
        import kafka.errors as errors
        from kafka.protocol.consumer import FetchRequest

        wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
        try:
            if self.leader is None:
                update = self.client.cluster.add_topic(self.tp.topic)
                if not update.is_done:
                    self.client.poll(timeout_ms=min(wait_ms, 500), future=update)
                leader = self.client.cluster.leader_for_partition(self.tp)
                if leader is None or leader == -1:
                    self.client.cluster.request_update()
                    return None
                self.leader = leader
            request = FetchRequest(
                max_wait_ms=500,
                min_bytes=1,
                max_bytes=self.log.fetch_bytes,
                isolation_level=0,  # read uncommitted, as the consumer did
                topics=[
                    FetchRequest.FetchTopic(
                        topic=self.tp.topic,
                        partitions=[
                            FetchRequest.FetchTopic.FetchPartition(
                                partition=self.tp.partition,
                                fetch_offset=offset,
                                partition_max_bytes=self.log.fetch_bytes,
                                current_leader_epoch=-1,
                                log_start_offset=-1,
                            )
                        ],
                    )
                ],
                max_version=12,  # topics by name (version 13 names them by id)
            )
            response = self.client.send_and_receive(self.leader, request, timeout_ms=wait_ms)
        except errors.KafkaError:
            self.leader = None  # connection lost or timed out: look the leader up again
            return None
        data = response.responses[0].partitions[0]
        error = errors.for_code(data.error_code)
        if error is errors.OffsetOutOfRangeError:
            raise OffsetsGone(
                self.tp.topic,
                self.tp.partition,
                offset,
                self.log.beginning_offset(self.tp.partition),
            )
        if error is not errors.NoError:
            if not error.retriable:
                raise KafkaUnavailable(f"{self.tp.topic}[{self.tp.partition}]: {error.__name__}")
            if error.invalid_metadata:
                self.leader = None
                self.client.cluster.request_update()
            return None
        return bytes(data.records or b""), int(data.high_watermark)

    def close(self) -> None:
        self.client.close()


class KafkaLog(BaseModel, EventLog):
    """The real topic, through kafka-python."""

    bootstrap_servers: str
    topic: str
    group_id: str = "clickstream-landing"
    fetch_bytes: int = FETCH_BYTES
    process_safe: ClassVar[bool] = True
    request_timeout_ms: int = 10_000

    def opener(self) -> Callable[[], EventLog]:
        # The settings, opened as the plain client: Dagster's resource objects do not survive
        # pickling, and a worker process need not import Dagster.
        return partial(KafkaLog, **self.model_dump())

    def _consumer(self, *, group: bool = False, fetch_max_wait_ms: int = 500):
        from kafka import KafkaConsumer
        from kafka.errors import KafkaConnectionError, KafkaTimeoutError

        try:
            return KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers.split(","),
                group_id=self.group_id if group else None,
                enable_auto_commit=False,
                auto_offset_reset="none",  # a deleted offset is an error, never a jump
                max_partition_fetch_bytes=8 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
                fetch_max_wait_ms=fetch_max_wait_ms,
                request_timeout_ms=max(self.request_timeout_ms, 10_001),
                session_timeout_ms=6_000,
                heartbeat_interval_ms=2_000,
            )
        except (KafkaTimeoutError, KafkaConnectionError):
            raise KafkaUnavailable(
                f"no Kafka broker answers at {self.bootstrap_servers}: start one "
                "(`clickstream broker`) or set CLICKSTREAM_KAFKA_BOOTSTRAP"
            ) from None

    def partitions(self) -> list[int]:
        consumer = self._consumer()
        try:
            found = consumer.partitions_for_topic(self.topic)
        finally:
            consumer.close()
        if not found:
            raise KafkaUnavailable(
                f"topic {self.topic!r} does not exist on {self.bootstrap_servers}: create it "
                "(`clickstream generate` does) or set CLICKSTREAM_TOPIC"
            )
        return sorted(found)

    def beginning_offset(self, partition: int) -> int:
        from kafka import TopicPartition

        consumer = self._consumer()
        try:
            tp = TopicPartition(self.topic, partition)
            return int(consumer.beginning_offsets([tp])[tp])
        finally:
            consumer.close()

    def read(
        self, partition: int, start_offset: int, end_offset: int | None = None
    ) -> Iterator[Positioned]:
        if end_offset is not None and end_offset <= start_offset:
            return
        fetcher = _Fetcher(self, partition)
        try:
            position = start_offset
            deadline = time.monotonic() + self.request_timeout_ms / 1000
            while True:
                fetched = fetcher.fetch(position, deadline)
                if fetched is not None:
                    record_set, high = fetched
                    batch, after = decode_records(partition, record_set, position, end_offset)
                    if after > position:
                        yield batch, after
                        position = after
                        deadline = time.monotonic() + self.request_timeout_ms / 1000
                    stop = end_offset if end_offset is not None else high
                    if position >= stop:
                        return
                else:
                    time.sleep(FETCH_RETRY_S)
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"{self.topic}[{partition}] returned nothing past offset {position} for "
                        f"{self.request_timeout_ms} ms (wanted up to {end_offset}): is the "
                        "broker up?"
                    )
        finally:
            fetcher.close()

    def oldest_timestamp(self, partition: int) -> datetime | None:
        # One small fetch: the partition's first record batch, not a whole fetch's worth.
        first = self.model_copy(update={"fetch_bytes": OLDEST_FETCH_BYTES})
        return EventLog.oldest_timestamp(first, partition)

    def high_watermarks(self, positions: dict[int, int]) -> dict[int, int]:
        from kafka import TopicPartition

        # At the head of the log, the broker answers a fetch at once with its high watermark
        # instead of holding it for new records, and short polls see it: a caught-up lag tick
        # took 0.6 s (the broker's default 500 ms wait, then the poll's 200 ms), now 0.03 s.
        consumer = self._consumer(fetch_max_wait_ms=10)
        try:
            tps = {p: TopicPartition(self.topic, p) for p in positions}
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                consumer.seek(tp, positions[p])
            result: dict[int, int] = {}
            deadline = time.monotonic() + self.request_timeout_ms / 1000
            while len(result) < len(tps) and time.monotonic() < deadline:
                consumer.poll(timeout_ms=20, max_records=1, update_offsets=False)
                for p, tp in tps.items():
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        result[p] = int(hw)
            missing = set(tps) - set(result)
            if missing:
                raise KafkaUnavailable(
                    f"no high watermark for {self.topic} partitions {sorted(missing)}"
                )
            return result
        finally:
            consumer.close()

    def commit(self, offsets: dict[int, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        consumer = self._consumer(group=True)
        try:
            consumer.commit(
                {
                    TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in offsets.items()
                }
            )
        finally:
            consumer.close()

    def committed(self) -> dict[int, int]:
        from kafka import TopicPartition

        consumer = self._consumer(group=True)
        try:
            result = {}
            for p in consumer.partitions_for_topic(self.topic) or []:
                offset = consumer.committed(TopicPartition(self.topic, p))
                if offset is not None:
                    result[p] = int(offset)
            return result
        finally:
            consumer.close()

    def produce(self, records: pa.Table) -> None:
        from kafka import KafkaProducer

        # Producing is the client's per-record Python loop: give it as little to do per record
        # as possible. Large, lingering, zstd-compressed batches (cheaper than gzip to compress
        # and, for landing, to decompress) cut the sends and the bytes the broker writes;
        # partitions computed per distinct key (devices send many events) skip the client's
        # partitioner on every record.
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            linger_ms=100,
            batch_size=1024 * 1024,
            compression_type="zstd",
            max_request_size=16 * 1024 * 1024,
            acks="all",
        )
        try:
            if "partition" in records.column_names:
                partitions = records.column("partition").to_pylist()
            else:
                count = len(producer.partitions_for(self.topic))
                partitions = key_partitions(records.column("key"), count)
            for key, value, ts, partition in _sendable(records, partitions):
                producer.send(
                    self.topic, key=key, value=value, timestamp_ms=ts, partition=partition
                )
            producer.flush()
        finally:
            producer.close()

    def create_topic(self, partitions: int) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers.split(","))
        try:
            admin.create_topics(
                [NewTopic(self.topic, num_partitions=partitions, replication_factor=1)]
            )
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()


class InMemoryKafka(EventLog):
    """A Kafka topic in memory, for unit tests, with Kafka's offset semantics: offsets are
    positions, not counts (compaction and transaction markers leave offsets without a record),
    retention moves the beginning, and reading below the beginning is an error."""

    def __init__(self, topic: str = "clickstream.events", partitions: int = 2) -> None:
        self.topic = topic
        # Per partition: offsets, and the (timestamp_ms, key, value) at each, in offset order.
        self._offsets: dict[int, list[int]] = {p: [] for p in range(partitions)}
        self._records: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {
            p: [] for p in range(partitions)
        }
        self._next = dict.fromkeys(range(partitions), 0)
        self._beginning = dict.fromkeys(range(partitions), 0)
        self._committed: dict[int, int] = {}
        self._lock = threading.Lock()
        self._round_robin = 0

    def partitions(self) -> list[int]:
        return sorted(self._records)

    def beginning_offset(self, partition: int) -> int:
        return self._beginning[partition]

    def read(
        self, partition: int, start_offset: int, end_offset: int | None = None
    ) -> Iterator[Positioned]:
        with self._lock:
            if start_offset < self._beginning[partition]:
                raise OffsetsGone(self.topic, partition, start_offset, self._beginning[partition])
            offsets = self._offsets[partition]
            records = self._records[partition]
            high = self._next[partition]
        stop = high if end_offset is None else min(end_offset, high)
        lo = bisect.bisect_left(offsets, start_offset)
        hi = bisect.bisect_left(offsets, stop)
        chunk = 1000
        for first in range(lo, hi, chunk):
            last = min(first + chunk, hi)
            rows = records[first:last]
            after = offsets[last] if last < hi else stop
            yield (
                _batch(
                    partition,
                    offsets[first:last],
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                ),
                after,
            )
        if lo == hi and stop > start_offset:
            yield _batch(partition, [], [], [], []), stop

    def high_watermarks(self, positions: dict[int, int]) -> dict[int, int]:
        with self._lock:
            return {p: self._next[p] for p in positions}

    def commit(self, offsets: dict[int, int]) -> None:
        self._committed.update(offsets)

    def committed(self) -> dict[int, int]:
        return dict(self._committed)

    def produce(self, records: pa.Table) -> None:
        n = len(self._records)
        partitions = (
            records.column("partition").to_pylist()
            if "partition" in records.column_names
            else [None] * records.num_rows
        )
        with self._lock:
            for key, value, ts, partition in _sendable(records, partitions):
                if partition is None:
                    partition = partition_for_key(key, n, self._round_robin)
                    self._round_robin += 1
                self._offsets[partition].append(self._next[partition])
                self._records[partition].append((int(ts), key, value))
                self._next[partition] += 1

    def create_topic(self, partitions: int) -> None:
        for p in range(partitions):
            self._offsets.setdefault(p, [])
            self._records.setdefault(p, [])
            self._next.setdefault(p, 0)
            self._beginning.setdefault(p, 0)

    def truncate_before(self, partition: int, offset: int) -> None:
        """Drop records below `offset`, as retention does."""
        keep = bisect.bisect_left(self._offsets[partition], offset)
        self._offsets[partition] = self._offsets[partition][keep:]
        self._records[partition] = self._records[partition][keep:]
        self._beginning[partition] = offset

    def compact(self, partition: int, offsets: set[int]) -> None:
        """Remove the records at `offsets`, as compaction does: the offsets stay used."""
        pairs = [
            (o, r)
            for o, r in zip(self._offsets[partition], self._records[partition], strict=True)
            if o not in offsets
        ]
        self._offsets[partition] = [o for o, _ in pairs]
        self._records[partition] = [r for _, r in pairs]

    def append_marker(self, partition: int) -> None:
        """A transaction marker: it takes an offset and is never delivered."""
        self._next[partition] += 1
