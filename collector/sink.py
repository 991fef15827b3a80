"""The collector's side of Kafka: produce a batch and wait, without blocking, for every ack.

One kafka-python producer (acks=all, idempotent, compressed) serves every request. Its futures
resolve on the producer's I/O thread; a per-batch countdown wakes the event loop once, when the
last message is acknowledged or the first fails. A bounded number of events may be in flight.
Two threads watch the broker: a watchdog that declares it stalled when events have waited
`stall_after_s` and no ack at all came back meanwhile (under load acks keep coming; idle, nothing
waits), and a probe that asks for its metadata four times a second, which also finds an idle
broker gone and is the only one to declare it back. When either finds the broker silent, readiness
flips and every request still waiting is answered at once (the app then refuses new ones before
even parsing them), so no request waits out a stalled broker for longer than the detection takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from resources.event_log import partition_for_key


@dataclass(frozen=True)
class SinkConfig:
    bootstrap: str
    topic: str
    ack_timeout_s: float = 1.0  # one batch's wait, should the broker ack others but not it
    stall_after_s: float = 0.1  # the watchdog's threshold (CLICKSTREAM_COLLECTOR_STALL_MS)
    max_in_flight_events: int = 50_000  # the bound on the producer's (unbounded) buffer
    compression_type: str | None = "gzip"
    linger_ms: int = 5
    probe_interval_s: float = 0.25
    probe_timeout_s: float = 0.5


def make_producer(config: SinkConfig) -> KafkaProducer:
    """The collector's producer: acks from every in-sync replica, idempotent (the default), so
    that the producer's own retries add no copies."""
    return KafkaProducer(
        bootstrap_servers=config.bootstrap.split(","),
        acks="all",
        compression_type=config.compression_type,
        linger_ms=config.linger_ms,
        batch_size=256 * 1024,
        max_request_size=16 * 1024 * 1024,  # one element may be up to the 10 MiB body
        max_block_ms=2_000,
    )


class Unavailable(Exception):
    """The broker cannot take this batch now; the client should retry later."""


class AckWatch:
    """The watchdog's evidence: events in flight, and when the broker last made progress (its
    last ack, or the first send after an idle spell). Times are the caller's clock; not
    thread-safe (the sink holds its lock)."""

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.progress_at = now

    def sent(self, count: int, now: float) -> None:
        if self.in_flight == 0:
            self.progress_at = now
        self.in_flight += count

    def settled(self, count: int, now: float) -> None:
        """`count` events answered, acknowledged or failed: either way the broker (or the
        producer) moved."""
        self.in_flight -= count
        self.progress_at = now

    def unscheduled(self, late_s: float, now: float) -> None:
        """The watchdog woke `late_s` after it asked to: this process was not running (another
        took the cores, or the interpreter's lock), and nor was the thread that reads the acks.
        That silence is ours, not the broker's."""
        if late_s > 0:
            self.progress_at = min(now, self.progress_at + late_s)

    def stalled(self, now: float, after_s: float) -> bool:
        """Events in flight, none answered for `after_s`, and the oldest of them sent more than
        `after_s` ago. One timestamp tells both: while events stay in flight, those still
        waiting at the last ack (or at the first send) are older than it, and none came back
        since."""
        return self.in_flight > 0 and now - self.progress_at > after_s


class _Countdown:
    """Settles one asyncio future after `remaining` ack callbacks, or at the first failure."""

    __slots__ = ("done", "error", "loop", "remaining", "sink")

    def __init__(self, sink: KafkaSink, remaining: int, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.remaining = remaining
        self.loop = loop
        self.done: asyncio.Future[BaseException | None] = loop.create_future()
        self.error: BaseException | None = None

    def settle(self, result: object, count: int = 1) -> None:
        failed = isinstance(result, BaseException)
        sink = self.sink
        with sink._lock:
            sink._watch.settled(count, time.monotonic())
            self.remaining -= count
            first_error = failed and self.error is None
            if first_error:
                self.error = result  # type: ignore[assignment]
            finished = first_error or (self.remaining == 0 and self.error is None)
        if finished:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.done.done():
            self.done.set_result(self.error)

    def abandon(self, error: BaseException) -> None:
        """Answer now, whatever the acks do later (event-loop thread)."""
        if not self.done.done():
            self.done.set_result(error)


class KafkaSink:
    """Produces batches to the topic and reports broker readiness."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self._producer = make_producer(config)
        # Fetch the topic's metadata now, so that no request waits for it (and a missing topic
        # is found at start). Each key's partition is hashed once (devices send many batches),
        # as KafkaResource.produce does, instead of by the client's pure-Python murmur2 on every
        # message; partitions added to the topic later are used after a restart.
        partitions = len(self._producer.partitions_for(config.topic))
        self._partition_of = functools.lru_cache(maxsize=2**16)(
            functools.partial(partition_for_key, partitions=partitions, fallback=0)
        )
        self._admin = KafkaAdminClient(
            bootstrap_servers=config.bootstrap.split(","),
            request_timeout_ms=int(config.probe_timeout_s * 1000),
        )
        self._lock = threading.Lock()
        self._watch = AckWatch(time.monotonic())
        self._waiting: set[_Countdown] = set()  # touched on the event loop's thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stalled = False
        self._closing = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe_loop, name="broker-probe", daemon=True),
            threading.Thread(target=self._watchdog_loop, name="ack-watchdog", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def ready(self) -> bool:
        """Whether the broker takes writes, as far as the probe and the watchdog tell."""
        return not self._stalled

    @property
    def in_flight(self) -> int:
        return self._watch.in_flight

    async def deliver(self, messages: list[tuple[bytes | None, bytes]], timestamp_ms: int) -> None:
        """Produce every message and return once the broker acknowledged them all; raises
        Unavailable otherwise: at once when the broker is found stalled, after the ack timeout
        at most."""
        if not messages:
            return
        count = len(messages)
        self._loop = asyncio.get_running_loop()
        with self._lock:
            if self._watch.in_flight + count > self.config.max_in_flight_events:
                raise Unavailable("too many events waiting for the broker")
            self._watch.sent(count, time.monotonic())
        countdown = _Countdown(self, count, self._loop)
        sent = 0
        try:
            for key, value in messages:
                future = self._producer.send(
                    self.config.topic,
                    value=value,
                    key=key,
                    timestamp_ms=timestamp_ms,
                    partition=None if key is None else self._partition_of(key),
                )
                future.add_both(countdown.settle)
                sent += 1
        except Exception as error:  # the producer refused the rest (buffer full, closed)
            countdown.settle(error, count - sent)
        self._waiting.add(countdown)
        try:
            error = await asyncio.wait_for(
                asyncio.shield(countdown.done), self.config.ack_timeout_s
            )
        except TimeoutError:
            raise Unavailable(
                f"the broker did not acknowledge within {self.config.ack_timeout_s:g} s"
            ) from None
        finally:
            self._waiting.discard(countdown)
        if isinstance(error, Unavailable):
            raise error
        if error is not None:
            raise Unavailable(f"the broker refused the batch: {error!r}")

    def _stall(self, reason: str) -> None:
        """Not ready until the probe sees the broker again, and every request still waiting is
        answered now. Called from the watchdog's or the probe's thread: the flag is set first, so
        a request that passed the readiness check meanwhile is already waiting when the answers
        go out (on the event loop's thread)."""
        self._stalled = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._answer_waiting, reason)

    def _answer_waiting(self, reason: str) -> None:
        for countdown in self._waiting:
            countdown.abandon(Unavailable(reason))

    def _watchdog_loop(self) -> None:
        after_s = self.config.stall_after_s
        tick_s = after_s / 4
        woke = time.monotonic()
        while not self._closing.wait(tick_s):
            now = time.monotonic()
            with self._lock:
                self._watch.unscheduled(now - woke - tick_s, now)
                stalled = self._watch.stalled(now, after_s)
            woke = now
            if stalled and not self._stalled:
                self._stall(f"the broker acknowledged nothing for {after_s * 1000:.0f} ms")

    def _probe_loop(self) -> None:
        while not self._closing.wait(self.config.probe_interval_s):
            try:
                self._admin.describe_cluster()
            except Exception:  # any failure to answer means the same: not ready
                self._stall("the broker does not answer its metadata probe")
            else:
                self._stalled = False

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is buffered (up to `timeout_s`) and stop."""
        self._closing.set()
        for thread in self._threads:
            thread.join()
        with contextlib.suppress(Exception):
            self._admin.close()
        began = time.monotonic()
        self._producer.flush(timeout=timeout_s)
        self._producer.close(timeout=max(0.0, timeout_s - (time.monotonic() - began)))
