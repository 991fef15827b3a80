"""What to generate and what comes out: the spec, the result and the vocabularies of the traffic."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

UNKNOWN_PLATFORM_TEXTS = ("ps5", "roku", "kaios", "smartwatch")

MALFORMED_KINDS = (
    "not_json",
    "json_array",
    "null_value",
    "missing_field",
    "wrong_type",
    "unknown_event_type",
    "bad_event_time",
    "missing_title_id",
    "missing_campaign_id",
    "bad_sent_at",
)
"""Every way the contract says a message is invalid; each injected kind is one reason."""

FUTURE_CLOCK_TOLERANCE_US = 5 * 60 * 1_000_000
SENT_AT_DEADBAND_US = 60 * 1_000_000
US = 1_000_000
MS = 1_000

# (offset minutes, written as "Z" when 0): device time zones; fixed offsets, so no DST.
TZ_OFFSETS_MIN = np.array([0, 0, 60, 330, -480, -300, 540, -180, 120])
TZ_USES_Z = np.array([True, False, False, False, False, False, False, False, False])


@dataclass(frozen=True)
class TrafficSpec:
    """What to generate. `events` wins over `events_per_second`; all rates are shares (0-1)."""

    start: datetime
    end: datetime
    events: int | None = None
    events_per_second: float | None = None
    seed: int = 0
    devices: int | None = None  # default: one device per ~30 events
    titles: int = 500
    campaigns: int = 40
    title_zipf_s: float = 1.1
    campaign_zipf_s: float = 1.0
    signed_in_device_share: float = 0.6
    platform_mix: tuple[tuple[str, float], ...] = (
        ("web", 0.34),
        ("ios", 0.2),
        ("android", 0.26),
        ("tv", 0.1),
        ("stb", 0.08),
        ("unknown", 0.02),
    )
    event_type_mix: tuple[tuple[str, float], ...] = (
        ("page_view", 0.28),
        ("click", 0.2),
        ("play", 0.1),
        ("pause", 0.06),
        ("seek", 0.04),
        ("ad_impression", 0.1),
        ("heartbeat", 0.22),
    )
    peak_hour_utc: float = 20.0
    duplicate_rate: float = 0.03  # events resent at least once (same event_id, same bytes)
    late_rate: float = 0.02  # events received 1 h to `max_late` after they happened
    malformed_rate: float = 0.005  # messages broken in one of MALFORMED_KINDS
    skew_rate: float = 0.003  # events whose device clock is 10 min to 36 h off
    sent_at_device_share: float = 0.7  # devices whose SDK stamps sent_at (clocks then +/-)
    max_late: timedelta = timedelta(days=2)
    max_retry_delay: timedelta = timedelta(hours=6)
    receive_until: datetime | None = None  # no message is received at or after this time

    def __post_init__(self) -> None:
        for name in ("start", "end", "receive_until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"TrafficSpec.{name} must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError("TrafficSpec.end must be after start")
        if self.receive_until is not None and self.receive_until < self.end:
            raise ValueError("TrafficSpec.receive_until must not be before end")
        if self.events is None and self.events_per_second is None:
            raise ValueError("TrafficSpec needs events or events_per_second")

    @property
    def n_events(self) -> int:
        if self.events is not None:
            return int(self.events)
        seconds = (self.end - self.start).total_seconds()
        return round(seconds * float(self.events_per_second or 0))


@dataclass(frozen=True)
class Traffic:
    """Generated messages (key, value, timestamp_ms; sorted by receive time), the ground truth
    (one row per message, same order) and counts of what was injected."""

    spec: TrafficSpec
    messages: pa.Table
    truth: pl.DataFrame
    counts: dict = field(default_factory=dict)
