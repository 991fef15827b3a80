"""Delivering generated traffic: straight to the topic (receive times as generated), or through the
SDK and the collector (receive times are now, stamped by the collector)."""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from clickstream_tools.generator.spec import Traffic
from resources.event_log import EventLog, key_partitions

_TRACKED = ("event_id", "event_type", "event_time", "device_id")
"""An element the SDK can send as generated has these keys (whatever their values)."""


def produce(
    log: EventLog,
    messages: pa.Table,
    *,
    chunk_rows: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> int:
    """Send `messages` in receive-time order, `chunk_rows` at a time; returns the count sent.

    kafka-python's send is a Python loop per record (about 20k messages/s a process here), so
    with `workers` above 1, and a log that opens again in other processes, each worker process
    sends the messages of its share of the partitions: order within a partition, all that Kafka
    keeps, is the same."""
    total = messages.num_rows
    workers = min(workers, len(log.partitions())) if log.process_safe else 1
    if workers > 1 and "partition" not in messages.column_names:
        partitions = key_partitions(messages.column("key"), len(log.partitions()))
        messages = messages.append_column("partition", pa.array(partitions, pa.int32()))
    sent = 0
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
        for offset in range(0, total, chunk_rows):
            chunk = messages.slice(offset, chunk_rows)
            if pool is None:
                log.produce(chunk)
            else:
                share = pc.remainder(pc.fill_null(chunk.column("partition"), 0), workers)
                shares = [chunk.filter(pc.equal(share, w)) for w in range(workers)]
                for done in [pool.submit(_send, log.opener(), s) for s in shares]:
                    done.result()
            sent += chunk.num_rows
            if progress is not None:
                progress(sent, total)
    return sent


def _send(open_log: Callable[[], EventLog], messages: pa.Table) -> None:
    open_log().produce(messages)


def send_via_collector(
    traffic: Traffic,
    endpoint: str,
    *,
    queue_dir: str | Path | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> pl.DataFrame:
    """Replay the traffic as devices would: every message that is a JSON object with the four
    keys the SDK always writes goes through `clickstream_sdk.Tracker.track` (its own event_id,
    event_time and device_id kept) to the collector at `endpoint`. The SDK stamps sent_at with
    this machine's clock and the collector the receive time, so the generated receive times and
    sent_at values do not apply: returns the ground truth of what was sent, with
    `kafka_timestamp` and `sent_at` set to the moment each message was tracked (within the
    transit delay of what the collector stamps: never a correction). `clock` is the devices'
    clock, the same as the collector's."""
    from clickstream_sdk import Tracker

    values = traffic.messages.column("value").to_pylist()
    # A broken sent_at stays (the collector keeps an element's own), so that the event stays as
    # invalid as generated; a generated valid one gives way to the SDK's.
    broken_sent_at = (traffic.truth["malformed_reason"] == "bad_sent_at").fill_null(False)
    with tempfile.TemporaryDirectory(dir=queue_dir) as tmp:
        tracker = Tracker(
            endpoint,
            "clickstream-generate",
            queue_path=Path(tmp) / "queue.sqlite3",
            max_queue_events=len(values) + 1,
            batch_size=500,
            clock=clock,
        )
        sent_rows: list[int] = []
        tracked_ms: list[int] = []
        # One call per event, as devices make them: the SDK's API is per event.
        for index, (value, keep_sent_at) in enumerate(zip(values, broken_sent_at, strict=True)):
            event = _object(value)
            if event is None:
                continue
            if not keep_sent_at:
                event.pop("sent_at", None)
            tracker.track(event.pop("event_type"), **event)
            sent_rows.append(index)
            tracked_ms.append(int(clock() * 1000))
            if progress is not None and len(sent_rows) % 10_000 == 0:
                progress(tracker.sent, len(values))
        delivered = tracker.flush(timeout_s)
        tracker.close(0)
        if not delivered:
            raise TimeoutError(
                f"the collector at {endpoint} acknowledged {tracker.sent:,} of "
                f"{len(sent_rows):,} events within {timeout_s:.0f} s"
            )
        if progress is not None:
            progress(tracker.sent, len(values))
    received = pl.Series("kafka_timestamp_ms", tracked_ms, dtype=pl.Int64)
    moment = pl.from_epoch(received, "ms").dt.replace_time_zone("UTC")
    return (
        traffic.truth[sent_rows]
        .with_columns(kafka_timestamp_ms=received)
        .with_columns(kafka_timestamp=moment, sent_at=moment.cast(pl.Datetime("us", "UTC")))
    )


def _object(value: bytes | None) -> dict | None:
    if value is None:
        return None
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not all(key in event for key in _TRACKED):
        return None
    return event
