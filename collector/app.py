"""The collector's HTTP side: a plain ASGI app (four routes need no framework).

`POST /v1/events` checks only the envelope and the limits (the pipeline judges the events, so bad
ones reach quarantine with their evidence), turns each element into one Kafka message stamped with
the receive time, and answers 200 only once the broker acknowledged all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from collector.sink import Unavailable

MAX_WIRE_BYTES = 1024 * 1024
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_EVENTS = 1_000
RETRY_AFTER_S = 1

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Sink(Protocol):
    ready: bool
    in_flight: int

    async def deliver(
        self, messages: list[tuple[bytes | None, bytes]], timestamp_ms: int
    ) -> None: ...

    def close(self) -> None: ...


class Rejected(Exception):
    """A request the collector answers with `status` and a message naming the rule."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


GAUGE_REFRESH_S = 0.5
"""How often each worker of a collector with several writes its gauges for the others' scrapes."""


class Metrics:
    """The Prometheus series of one collector. `shared`: several worker processes, each counting
    into prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, set up by `serve`),
    so that a scrape of any worker sums them all."""

    def __init__(self, *, shared: bool = False) -> None:
        disable_created_metrics()  # the *_created series only double the scrape
        self.shared = shared
        self.registry = CollectorRegistry()
        self.scraped = self.registry
        if shared:
            self.scraped = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.scraped)
        prefix = "clickstream_collector"
        self.requests = Counter(
            f"{prefix}_requests", "HTTP requests to /v1/events by status", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.events = Counter(
            f"{prefix}_events", "Events acknowledged by the broker", registry=self.registry
        )
        self.received_bytes = Counter(
            f"{prefix}_received_bytes", "Request body bytes on the wire", registry=self.registry
        )
        self.retried_batches = Counter(
            f"{prefix}_retried_batches", "Batches whose attempt number is above 1",
            registry=self.registry,
        )  # fmt: skip
        self.broker_seconds = Histogram(
            f"{prefix}_broker_ack_seconds", "From produce to the last ack of a batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            f"{prefix}_events_in_flight", "Events produced and not yet acknowledged",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.ready = Gauge(
            f"{prefix}_broker_ready", "1 while the broker takes writes (in every worker)",
            registry=self.registry, multiprocess_mode="livemin",
        )  # fmt: skip

    def observe(self, sink: Sink) -> None:
        self.in_flight.set(sink.in_flight)
        self.ready.set(1 if sink.ready else 0)


def _json(status: int, body: dict, extra: list[tuple[bytes, bytes]] = ()) -> tuple:
    return status, orjson.dumps(body), [(b"content-type", b"application/json"), *extra]


def _envelope(body: bytes) -> tuple[list, str | None, int]:
    """The events, the batch's sent_at and its attempt number, or Rejected(400/413) naming what
    is wrong."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Rejected(400, f"the body is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise Rejected(400, 'the body must be {"sent_at": "<RFC 3339>", "events": [...]}')
    sent_at = document.get("sent_at")
    if sent_at is not None and not isinstance(sent_at, str):
        raise Rejected(400, "sent_at must be an RFC 3339 string")
    events = document["events"]
    if len(events) > MAX_EVENTS:
        raise Rejected(413, f"{len(events):,} events in one batch: the limit is {MAX_EVENTS:,}")
    attempt = document.get("attempt")
    return events, sent_at, attempt if isinstance(attempt, int) else 1


def to_messages(events: list, sent_at: str | None) -> list[tuple[bytes | None, bytes]]:
    """One (key, value) per element, whatever it holds: the key is its device_id when that is a
    string, the value the element with the batch's sent_at where it has none."""
    messages = []
    for element in events:
        key = None
        if isinstance(element, dict):
            if sent_at is not None and element.get("sent_at") is None:
                element["sent_at"] = sent_at
            device_id = element.get("device_id")
            if isinstance(device_id, str):
                key = device_id.encode()
        messages.append((key, orjson.dumps(element)))
    return messages


def _decode(raw: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise Rejected(400, f"Content-Encoding {encoding!r}: send gzip or no encoding")
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error as error:
        raise Rejected(400, f"the body is not valid gzip: {error}") from None
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(413, f"the body is over {MAX_BODY_BYTES // 2**20} MiB decompressed")
    if not inflater.eof:
        raise Rejected(400, "the gzip body is truncated")
    return body


async def _read_body(scope: dict, receive: Receive) -> bytes | None:
    """The raw body, at most MAX_WIRE_BYTES (else Rejected 413); None if the client left."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_WIRE_BYTES:
            raise Rejected(413, f"the body is over {MAX_WIRE_BYTES // 2**20} MiB on the wire")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_WIRE_BYTES:
            raise Rejected(413, f"the body is over {MAX_WIRE_BYTES // 2**20} MiB on the wire")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class CollectorApp:
    """The ASGI application over a sink (the Kafka producer, or a fake in unit tests)."""

    def __init__(
        self, sink: Sink, *, clock: Callable[[], float] = time.time, shared_metrics: bool = False
    ) -> None:
        self.sink = sink
        self.clock = clock  # the receive time's source
        self.metrics = Metrics(shared=shared_metrics)

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        route = (scope["method"], scope["path"])
        if route == ("POST", "/v1/events"):
            response = await self._events(scope, receive)
            if response is None:
                return
        elif route == ("GET", "/healthz"):
            response = _json(200, {"status": "ok"})
        elif route == ("GET", "/readyz"):
            ready = self.sink.ready
            response = _json(200 if ready else 503, {"ready": ready})
        elif route == ("GET", "/metrics"):
            self.metrics.observe(self.sink)
            body = generate_latest(self.metrics.scraped)
            response = 200, body, [(b"content-type", b"text/plain; version=0.0.4")]
        else:
            response = _json(404, {"error": f"no route {scope['method']} {scope['path']}"})
        status, body, headers = response
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _events(self, scope: dict, receive: Receive) -> tuple | None:
        received_ms = int(self.clock() * 1000)
        status, response = 200, None
        try:
            raw = await _read_body(scope, receive)
            if raw is None:
                return None
            self.metrics.received_bytes.inc(len(raw))
            if not self.sink.ready:  # refused before any parsing: an outage costs no CPU
                raise Unavailable("the broker does not take writes")
            encoding = ""
            for name, value in scope["headers"]:
                if name == b"content-encoding":
                    encoding = value.decode("latin-1").strip().lower()
            events, sent_at, attempt = _envelope(_decode(raw, encoding))
            if attempt > 1:
                self.metrics.retried_batches.inc()
            messages = to_messages(events, sent_at)
            began = time.perf_counter()
            await self.sink.deliver(messages, received_ms)
            self.metrics.broker_seconds.observe(time.perf_counter() - began)
            self.metrics.events.inc(len(messages))
            response = _json(200, {"accepted": len(messages)})
        except Rejected as rejected:
            status = rejected.status
            response = _json(status, {"error": str(rejected)})
        except Unavailable as unavailable:
            status = 503
            response = _json(
                503,
                {"error": str(unavailable)},
                [(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
        self.metrics.requests.labels(str(status)).inc()
        return response

    async def _refresh_gauges(self) -> None:
        """A scrape reads the other workers' gauges from their files: keep them current."""
        while True:
            self.metrics.observe(self.sink)
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        refresh = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.metrics.shared:
                    refresh = asyncio.create_task(self._refresh_gauges())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if refresh is not None:
                    refresh.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await refresh
                    multiprocess.mark_process_dead(os.getpid())  # out of the live gauges
                self.sink.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
