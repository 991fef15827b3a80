"""What the sensors decide, as pure functions: which hours to land, which partitions to rebuild,
when a day becomes final. The sensors and the headless catch-up both call these."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from clickstream_assets.landing import parse_hour_label

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def floor_hour(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def closed_hours(first: datetime, now: datetime, *, limit: int) -> list[datetime]:
    """Consecutive hours from `first` that have closed by `now`, at most `limit` of them."""
    hours: list[datetime] = []
    hour = first
    while hour + HOUR <= now and len(hours) < limit:
        hours.append(hour)
        hour += HOUR
    return hours


def day_final_at(day: date, lateness: timedelta) -> datetime:
    """The watermark: a day is provisional until its end plus the allowed lateness."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + DAY + lateness


def contiguous_runs(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hours grouped into (first, last) runs of consecutive hours."""
    runs: list[tuple[datetime, datetime]] = []
    for hour in sorted(set(hours)):
        if runs and hour - runs[-1][1] == HOUR:
            runs[-1] = (runs[-1][0], hour)
        else:
            runs.append((hour, hour))
    return runs


@dataclass
class Propagation:
    """The late-data sensor's state and decisions for one tick."""

    event_hours: list[datetime] = field(default_factory=list)
    days: list[date] = field(default_factory=list)
    pending_final: list[date] = field(default_factory=list)


def propagate(
    landed_event_hours: list[str],
    cleaned_hours: list[datetime],
    pending_final: list[date],
    *,
    now: datetime,
    lateness: timedelta,
) -> Propagation:
    """Decide the rebuilds for one tick.

    - every event hour that a new landing holds events of is cleaned again (late data included,
      whatever its age: bronze keeps every event);
    - every day with a newly cleaned hour gets its marts rebuilt;
    - a day rebuilt while provisional is rebuilt once more when its watermark passes, to become
      final; days that receive nothing new are left alone.
    """
    hours = sorted({parse_hour_label(h) for h in landed_event_hours})
    touched = {h.date() for h in cleaned_hours}
    due = {d for d in pending_final if day_final_at(d, lateness) <= now}
    days = sorted(touched | due)
    pending = sorted(
        (set(pending_final) - due) | {d for d in touched if day_final_at(d, lateness) > now}
    )
    return Propagation(event_hours=hours, days=days, pending_final=pending)
