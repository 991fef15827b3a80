"""The collector's side of Kafka: produce a batch and wait, without blocking, for every ack.

One kafka-python producer (acks=all, idempotent, compressed) serves every request. Its futures
resolve on the producer's I/O thread; a per-batch countdown wakes the event loop once, when the
last message is acknowledged or the first fails. A bounded number of events may be in flight, and
a probe thread asks the broker for its metadata four times a second. When the probe or an ack
timeout finds the broker silent, readiness flips and every request still waiting is answered at
once (the app then refuses new ones before even parsing them), so no request waits out a stalled
broker for longer than the detection takes.
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

from resources.kafka import partition_for_key


@dataclass(frozen=True)
class SinkConfig:
    bootstrap: str
    topic: str
    ack_timeout_s: float = 1.0
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


class _Countdown:
    """Settles one asyncio future after `remaining` ack callbacks, or at the first failure."""

    __slots__ = ("done", "error", "lock", "loop", "remaining", "sink")

    def __init__(self, sink: KafkaSink, remaining: int, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.remaining = remaining
        self.loop = loop
        self.done: asyncio.Future[BaseException | None] = loop.create_future()
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def settle(self, result: object, count: int = 1) -> None:
        failed = isinstance(result, BaseException)
        with self.lock:
            self.remaining -= count
            first_error = failed and self.error is None
            if first_error:
                self.error = result  # type: ignore[assignment]
            finished = first_error or (self.remaining == 0 and self.error is None)
        self.sink._release(count)
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
        self.in_flight = 0
        self._waiting: set[_Countdown] = set()  # touched on the event loop's thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe_ok = True
        self._stalled = False
        self._closing = threading.Event()
        self._probe = threading.Thread(target=self._probe_loop, name="broker-probe", daemon=True)
        self._probe.start()

    @property
    def ready(self) -> bool:
        """Whether the broker takes writes, as far as the last probe and the last acks tell."""
        return self._probe_ok and not self._stalled

    def _release(self, count: int) -> None:
        with self._lock:
            self.in_flight -= count

    async def deliver(self, messages: list[tuple[bytes | None, bytes]], timestamp_ms: int) -> None:
        """Produce every message and return once the broker acknowledged them all; raises
        Unavailable (quickly: at most the ack timeout) otherwise."""
        if not messages:
            return
        count = len(messages)
        self._loop = asyncio.get_running_loop()
        with self._lock:
            if self.in_flight + count > self.config.max_in_flight_events:
                raise Unavailable("too many events waiting for the broker")
            self.in_flight += count
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
            reason = f"the broker did not acknowledge within {self.config.ack_timeout_s:g} s"
            self._stall(reason)
            raise Unavailable(reason) from None
        finally:
            self._waiting.discard(countdown)
        if isinstance(error, Unavailable):
            raise error
        if error is not None:
            raise Unavailable(f"the broker refused the batch: {error!r}")
        self._stalled = False

    def _stall(self, reason: str) -> None:
        """Not ready until the probe or an ack says otherwise; every waiting request is answered
        now (on the event loop's thread): the broker is known to be silent."""
        self._stalled = True
        for countdown in self._waiting:
            countdown.abandon(Unavailable(reason))

    def _probe_loop(self) -> None:
        while not self._closing.wait(self.config.probe_interval_s):
            try:
                self._admin.describe_cluster()
                ok = True
            except Exception:  # any failure to answer means the same: not ready
                ok = False
            self._probe_ok = ok
            if ok:
                self._stalled = False
            elif self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    self._loop.call_soon_threadsafe(
                        self._stall, "the broker does not answer its metadata probe"
                    )

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is buffered (up to `timeout_s`) and stop."""
        self._closing.set()
        self._probe.join()
        with contextlib.suppress(Exception):
            self._admin.close()
        began = time.monotonic()
        self._producer.flush(timeout=timeout_s)
        self._producer.close(timeout=max(0.0, timeout_s - (time.monotonic() - began)))
