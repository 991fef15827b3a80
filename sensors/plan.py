"""What the sensors decide, from the ledger alone: which hours to land, which event hours to
clean, which days to build. The sensors and the headless catch-up both call these.

Level-triggered: a partition is owed work when what it records it was built from (its stamp)
differs from what the ledger holds now, whatever happened before (a crash at any line, a lost
Dagster database, an overlapping run). The only memory between ticks is `settled_from`, the
first ingest hour not yet proven settled: a cache that bounds the read, never a decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeVar

from core.ledger import (
    HOUR,
    Ledger,
    MartStamp,
    day_final_at,
    day_start,
    inputs_digest,
)


def closed_hours(first: datetime, now: datetime, *, limit: int) -> list[datetime]:
    """Consecutive hours from `first` that have closed by `now`, at most `limit` of them."""
    hours: list[datetime] = []
    hour = first
    while hour + HOUR <= now and len(hours) < limit:
        hours.append(hour)
        hour += HOUR
    return hours


LANDING_RUN_RECORDS = 50_000_000
"""About how many records one landing run takes on when landing is behind (after an outage):
12-19 minutes of landing on this project's 2-core machine (44-67k records/s), so that a crash
re-does at most that much and each run's hours go on to cleaning as it ends. A backlog within it
lands in one run, however many hours it spans (each run costs seconds of its own)."""
OWED_HOURS_READ = 8 * 24
"""The most closed hours, from the oldest owed, that one tick names (8 days: more than the log's
default 7-day retention); after a longer outage the next tick goes on where this run ends."""


def landing_run_hours(owed: int, lag_records: int, budget: int) -> int:
    """How many of `owed` closed hours (oldest first) one landing run takes, from the records
    the log holds beyond the ledger (`lag_records`): all of them while those fit `budget`, else
    as many as `budget` covers at the backlog's average hour, and at least one."""
    if lag_records <= budget:
        return owed
    return max(1, owed * budget // lag_records)


def next_slice(
    head: datetime | None, landed: list[datetime], now: datetime, interval: timedelta
) -> tuple[datetime, int] | None:
    """The open hour's slice owed at `now`, as (hour, slice): the hour after the ledger's `head`
    while it is open, once its last slice (`landed`: when each was landed) or its start is
    `interval` old. None when nothing has landed (the first hour lands whole) or that hour has
    closed (the hour's landing lands the rest)."""
    if head is None:
        return None
    hour = head + HOUR
    if not hour <= now < hour + HOUR:
        return None
    return (hour, len(landed)) if now - max(landed, default=hour) >= interval else None


P = TypeVar("P", date, datetime)


def contiguous_runs(
    periods: Iterable[P], step: timedelta = HOUR, most: int | None = None
) -> list[tuple[P, P]]:
    """Sorted periods (hours, or days with `step` one day) grouped into (first, last) runs of
    consecutive ones, each at most `most` long."""
    runs: list[tuple[P, P]] = []
    length = 0
    for period in sorted(set(periods)):
        if runs and period - runs[-1][1] == step and (most is None or length < most):
            runs[-1] = (runs[-1][0], period)
            length += 1
        else:
            runs.append((period, period))
            length = 1
    return runs


@dataclass
class Plan:
    """One tick's decisions."""

    event_hours: list[datetime] = field(default_factory=list)
    """Event hours whose clean stamp differs from the ledger: clean them."""
    days: list[date] = field(default_factory=list)
    """Days whose mart stamp differs from their clean stamps, or that turned final."""
    settled_from: datetime | None = None
    """The first ingest hour that the next tick must examine."""


def plan_rebuilds(
    ledger: Ledger,
    mart_stamps: Mapping[date, MartStamp],
    *,
    settled_from: datetime | None,
    first_hour: datetime,
    now: datetime,
    lateness: timedelta,
) -> Plan:
    """Decide what is owed, reading the ledger in proportion to what changed since
    `settled_from` (None: since the beginning, as after a lost Dagster database).

    - an event hour named by a landing since `settled_from` is owed when its clean stamp's
      inputs differ from the ledger's index and claims for it (late data included, whatever
      its age: bronze keeps every event);
    - a day is owed when it has clean hours and no mart stamp, or its clean stamps differ from
      those its mart stamp recorded, or it was built provisional and the landed watermark has
      passed its end plus the allowed lateness; days wait while any of their hours is owed;
    - only partitions that exist are named: event hours from `first_hour` that have closed.
    """
    recorded = ledger.recorded_hours()
    known = set(recorded)
    examined = [h for h in recorded if settled_from is None or h >= settled_from]
    candidates: set[datetime] = set()
    for manifest in ledger.manifests(examined).values():
        candidates.update(manifest.hours_to_rebuild())
    candidates = {h for h in candidates if h >= first_hour and h + HOUR <= now}
    candidate_days = {h.date() for h in candidates} | {
        d for d, s in mart_stamps.items() if not s.is_final
    }
    # A day partition exists from its own start (every candidate hour's day has started). The
    # clean stamps of all their hours are read at once: on S3 one round trip, not one an hour.
    days = sorted(day for day in candidate_days if day_start(day) <= now)
    day_stamps = ledger.day_stamps(days)
    stamps = {stamp.event_hour: stamp for of_day in day_stamps.values() for stamp in of_day}
    owed_hours = sorted(
        hour
        for hour in candidates
        if (inputs := ledger.inputs(hour, known))
        and ((stamp := stamps.get(hour)) is None or stamp.inputs != inputs)
    )
    landed_through = recorded[-1] + HOUR if recorded else None
    waiting = {hour.date() for hour in owed_hours}
    plan = Plan(event_hours=owed_hours)
    for day in days:
        if day in waiting or not day_stamps[day]:
            continue  # no clean hour, no event: a day without a valid event has no row
        digest = inputs_digest(day_stamps[day])
        final = landed_through is not None and landed_through >= day_final_at(day, lateness)
        built = mart_stamps.get(day)
        if built is None or built.inputs_digest != digest or (final and not built.is_final):
            plan.days.append(day)
    named = {h.date() for h in candidates}
    settled = not owed_hours and not named.intersection(plan.days)
    plan.settled_from = recorded[-1] + HOUR if settled and recorded else settled_from
    return plan
