"""clickstream_sdk: the Python client of the clickstream collector (DESIGN.md part 2).

`Tracker.track()` stamps an event (UUIDv7 id, device time) and returns at once; a background
thread keeps the events in a bounded SQLite queue that survives restarts and sends them in gzipped
batches, stamping `sent_at` and the attempt number on every try.
"""

from clickstream_sdk.tracker import Tracker, uuid7

__all__ = ["Tracker", "uuid7"]
