"""The SDK on its own, offline (nobody listens at its endpoint): ids and times stamped at track(),
and what close() leaves in the queue on disk. Delivery is tested against a real collector in
tests/integration/test_collection.py."""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from datetime import UTC, datetime

import pytest
from clickstream_sdk import Tracker, uuid7
from clickstream_sdk.tracker import rfc3339

from resources.broker import free_port


def queued_ids(path) -> list[str]:
    """The event ids in the queue file, in send order, read with plain SQLite."""
    with sqlite3.connect(path) as db:
        rows = db.execute("select body from queue order by id").fetchall()
    return [json.loads(body)["event_id"] for (body,) in rows]


@pytest.fixture
def offline(tmp_path):
    """A tracker factory whose endpoint refuses connections."""

    def make(**options) -> Tracker:
        return Tracker(
            f"http://127.0.0.1:{free_port()}",
            "dev-offline",
            queue_path=tmp_path / "queue.sqlite3",
            **options,
        )

    return make


def test_uuid7_carries_the_millisecond_version_and_variant():
    now = 1_795_000_000.123456
    ids = [uuid7(now) for _ in range(1_000)]
    parsed = [uuid.UUID(text) for text in ids]
    assert len(set(ids)) == 1_000
    assert all(str(u) == text for u, text in zip(parsed, ids, strict=True))
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert {u.int >> 80 for u in parsed} == {1_795_000_000_123}


def test_rfc3339_matches_datetime_to_the_microsecond():
    rng = random.Random(7)
    seconds = [0.0, 1.9999996, 1_795_000_000.5, *(rng.uniform(0, 4e9) for _ in range(2_000))]
    for value in seconds:
        expected = datetime.fromtimestamp(value, UTC).isoformat(timespec="microseconds")
        assert rfc3339(value) == expected.removesuffix("+00:00") + "Z"


def test_close_persists_everything_tracked_in_order(offline, tmp_path):
    tracker = offline(persist_interval_s=60.0)  # nothing reaches disk before close()
    ids = [tracker.track("click", n=i) for i in range(500)]
    assert tracker.pending == 500
    assert tracker.close(timeout_s=0) is False  # offline: nothing acknowledged
    assert queued_ids(tmp_path / "queue.sqlite3") == ids
    with pytest.raises(RuntimeError, match="closed"):
        tracker.track("click")


def test_a_full_queue_drops_the_oldest_in_memory_and_on_disk(offline, tmp_path):
    drops: list[tuple[int, str]] = []
    tracker = offline(max_queue_events=30, on_drop=lambda n, why: drops.append((n, why)))
    first = [tracker.track("click", n=i) for i in range(20)]
    tracker.close(timeout_s=0)
    assert queued_ids(tmp_path / "queue.sqlite3") == first
    # Reopened on the same queue: 25 more overflow it by 15, taken from the oldest on disk.
    tracker = offline(max_queue_events=30, on_drop=lambda n, why: drops.append((n, why)))
    assert tracker.pending == 20
    more = [tracker.track("click", n=i) for i in range(25)]
    tracker.close(timeout_s=0)
    assert queued_ids(tmp_path / "queue.sqlite3") == (first + more)[-30:]
    assert tracker.dropped == 15
    assert sum(n for n, _ in drops) == 15 and {why for _, why in drops} == {"queue_full"}
