"""The tracker: stamp events at once, keep them in a bounded SQLite queue, send them in batches.

Three parts, each simple on its own. `track()` builds the event and appends it to a small
in-memory buffer (no disk, no network: it returns in microseconds). A writer thread moves the
buffer into SQLite every few milliseconds, dropping the oldest events when the queue is full. A
sender thread posts the oldest events as gzipped batches and deletes them only once the collector
answered 200, which it does only after the broker acknowledged every event.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import math
import os
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_SCHEMA = """
create table if not exists queue (
    id integer primary key autoincrement,  -- never reused: the send order survives deletes
    body blob not null,
    attempts integer not null default 0
)
"""


def uuid7(now: float | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, the version, 74 random bits with the
    variant. Built from bytes (a third of the cost of `uuid.UUID`): it is on track()'s path."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | raw[6] & 0x0F
    raw[8] = 0x80 | raw[8] & 0x3F
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def rfc3339(seconds: float) -> str:
    """`seconds` since the epoch as RFC 3339 in UTC, to the microsecond (rounded as `datetime`
    does), without building a `datetime`: this is on track()'s path."""
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micros:06d}Z"


# One encoder for every event: json.dumps() with options builds a new one on each call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Tracker:
    """Track events of one device and deliver them to a collector at least once.

    `track()` never blocks on the network or the disk. Events wait in a persistent queue of at
    most `max_queue_events` (oldest dropped first, reported to `on_drop(count, reason)` and
    counted in `dropped`); they are sent oldest first, `batch_size` at a time. Each try stamps
    `sent_at` with the device clock and an attempt number; failures back off with full jitter,
    never sooner than the collector's Retry-After. `close()` keeps unsent events for the next
    start; events tracked less than `persist_interval_s` before a crash may be lost.
    """

    def __init__(
        self,
        endpoint: str,
        device_id: str,
        *,
        queue_path: str | os.PathLike[str] | None = None,
        max_queue_events: int = 100_000,
        batch_size: int = 100,
        common: Mapping[str, Any] | None = None,
        on_drop: Callable[[int, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        persist_interval_s: float = 0.02,
    ) -> None:
        if not device_id:
            raise ValueError("Tracker needs a non-empty device_id")
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"endpoint {endpoint!r}: use http(s)://host:port")
        self.endpoint = endpoint
        self.device_id = device_id
        self.common = dict(common or {})
        self.max_queue_events = max_queue_events
        self.batch_size = batch_size
        self.on_drop = on_drop
        self.clock = clock
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.persist_interval_s = persist_interval_s
        self.dropped = 0
        """Events dropped: oldest-first when the queue was full, or rejected by the collector."""
        self.sent = 0
        """Events the collector acknowledged."""
        self.retries = 0
        """Batches sent again after a failed try."""
        self._url = url
        self._path = url.path if url.path not in ("", "/") else "/v1/events"
        self._connection: http.client.HTTPConnection | None = None

        path = Path(queue_path or Path.home() / ".clickstream_sdk" / f"{device_id}.sqlite3")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.queue_path = path
        self._db = self._open()
        self._stored = self._db.execute("select count(*) from queue").fetchone()[0]

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buffer: deque[bytes] = deque()
        self._stopping = False
        self._stop_sending = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="clickstream-writer")
        self._sender = threading.Thread(target=self._send_loop, name="clickstream-sender")
        self._writer.daemon = self._sender.daemon = True
        self._writer.start()
        self._sender.start()

    # --- the caller's side -------------------------------------------------------------------

    def track(self, event_type: str, **fields: Any) -> str:
        """Queue one event and return its event_id (UUIDv7). `fields` are added to the event;
        a replay may pass its own `event_id`, `event_time` or `device_id`."""
        now = self.clock()
        event = {
            "event_id": uuid7(now),
            "event_type": event_type,
            "event_time": rfc3339(now),
            "device_id": self.device_id,
            **self.common,
            **fields,
        }
        body = _encode_json(event).encode()
        with self._lock:
            if self._stopping:
                raise RuntimeError("the tracker is closed")
            self._buffer.append(body)
            if len(self._buffer) == 1:
                self._changed.notify_all()  # the writer sleeps only while the buffer is empty
            overflow = len(self._buffer) > self.max_queue_events
            if overflow:
                self._buffer.popleft()
                self.dropped += 1
        if overflow:
            self._report_drop(1, "queue_full")
        return event["event_id"]

    @property
    def pending(self) -> int:
        """Events tracked and not yet acknowledged (in memory or in the queue)."""
        with self._lock:
            return len(self._buffer) + self._stored

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every tracked event is acknowledged; False if `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            self._changed.notify_all()
            while self._buffer or self._stored:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left if left is not None else 1.0)
        return True

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush for up to `timeout_s`, then stop; unsent events stay queued on disk for the next
        Tracker on the same queue. Returns whether everything was acknowledged."""
        done = self.flush(timeout_s)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._stop_sending.set()
        self._writer.join()
        self._sender.join(self.timeout_s + 1)
        if self._connection is not None:
            self._connection.close()
        return done

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the queue ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.queue_path, isolation_level=None, check_same_thread=False)
        db.execute("pragma journal_mode = wal")
        db.execute("pragma synchronous = normal")  # a power cut may lose the last commits only
        db.execute("pragma busy_timeout = 5000")
        db.execute(_SCHEMA)
        return db

    def _report_drop(self, count: int, reason: str) -> None:
        if self.on_drop is not None:
            with contextlib.suppress(Exception):  # a faulty callback must not stop delivery
                self.on_drop(count, reason)

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                if not self._buffer and not self._stopping:
                    self._changed.wait()
                # Gather a few events per transaction; close() cuts the wait short.
                self._changed.wait_for(lambda: self._stopping, self.persist_interval_s)
                stopping = self._stopping
                bodies = list(self._buffer)
                self._buffer.clear()
            if bodies:
                self._persist(bodies)
            if stopping:
                self._db.close()
                return

    def _persist(self, bodies: list[bytes]) -> None:
        with self._lock:
            excess = max(0, self._stored + len(bodies) - self.max_queue_events)
        from_disk = 0
        db = self._db
        db.execute("begin immediate")
        try:
            if excess:
                from_disk = min(excess, self._stored)
                db.execute(
                    "delete from queue where id in (select id from queue order by id limit ?)",
                    (from_disk,),
                )
                bodies = bodies[excess - from_disk :]
            db.executemany("insert into queue (body) values (?)", ((b,) for b in bodies))
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
        with self._changed:
            self._stored += len(bodies) - from_disk
            self.dropped += excess
            self._changed.notify_all()
        if excess:
            self._report_drop(excess, "queue_full")

    # --- delivery ----------------------------------------------------------------------------

    def _send_loop(self) -> None:
        db = self._open()
        failures = 0
        limit = self.batch_size
        try:
            while not self._stop_sending.is_set():
                rows = db.execute(
                    "select id, body, attempts from queue order by id limit ?", (limit,)
                ).fetchall()
                if not rows:
                    with self._changed:
                        if not self._stored and not self._stopping:
                            self._changed.wait(0.5)
                    continue
                attempt = max(row[2] for row in rows) + 1
                first, last = rows[0][0], rows[-1][0]
                # Counted before the try, so that an attempt cut short by a crash still counts.
                db.execute(
                    "update queue set attempts = ? where id between ? and ?", (attempt, first, last)
                )
                status, retry_after, detail = self._post([row[1] for row in rows], attempt)
                if status == 200:
                    self._remove(db, first, last)
                    failures, limit = 0, self.batch_size
                    with self._changed:
                        self.sent += len(rows)
                    continue
                if status == 413 and len(rows) > 1:
                    limit = max(1, len(rows) // 2)  # the collector's limits: send less at once
                    continue
                if status in (400, 413):
                    # The collector will never take these bytes; say so rather than loop forever.
                    self._remove(db, first, last)
                    with self._changed:
                        self.dropped += len(rows)
                    self._report_drop(len(rows), f"rejected: {status} {detail}")
                    continue
                failures += 1
                with self._changed:
                    self.retries += 1
                jitter = random.uniform(
                    0, min(self.backoff_cap_s, self.backoff_base_s * 2**failures)
                )
                self._stop_sending.wait(max(jitter, retry_after))
        finally:
            db.close()

    def _remove(self, db: sqlite3.Connection, first: int, last: int) -> None:
        # rowcount, not the batch size: the writer may have dropped some of these meanwhile.
        removed = db.execute("delete from queue where id between ? and ?", (first, last)).rowcount
        with self._changed:
            self._stored -= removed
            self._changed.notify_all()

    def _post(self, bodies: list[bytes], attempt: int) -> tuple[int, float, str]:
        """One try: (status, Retry-After seconds, detail); status 0 when nobody answered."""
        envelope = b"".join(
            [
                b'{"sent_at":"',
                rfc3339(self.clock()).encode(),
                b'","attempt":',
                str(attempt).encode(),
                b',"events":[',
                b",".join(bodies),
                b"]}",
            ]
        )
        payload = gzip.compress(envelope, compresslevel=5)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        try:
            if self._connection is None:
                kind = (
                    http.client.HTTPSConnection
                    if self._url.scheme == "https"
                    else http.client.HTTPConnection
                )
                self._connection = kind(self._url.hostname, self._url.port, timeout=self.timeout_s)
            self._connection.request("POST", self._path, payload, headers)
            response = self._connection.getresponse()
            detail = response.read().decode("utf-8", "replace")[:200]
        except (OSError, http.client.HTTPException) as error:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            return 0, 0.0, str(error)
        retry_after = 0.0
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(response.getheader("Retry-After"))
        return response.status, retry_after, detail
