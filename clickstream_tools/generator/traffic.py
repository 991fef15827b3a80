"""The draws: a device population, events on a diurnal curve, device clocks and delivery (late
arrivals, retries, skewed clocks with or without sent_at), malformed messages; then the messages
and the ground truth behind them. Vectorized throughout (numpy draws, Polars string building)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa

from clickstream_tools.generator.oracle import injection_counts
from clickstream_tools.generator.spec import (
    FUTURE_CLOCK_TOLERANCE_US,
    MALFORMED_KINDS,
    MS,
    SENT_AT_DEADBAND_US,
    TZ_OFFSETS_MIN,
    UNKNOWN_PLATFORM_TEXTS,
    US,
    Traffic,
    TrafficSpec,
)
from clickstream_tools.generator.values import json_value, rfc3339
from core.contract import TITLE_EVENTS

MESSAGE_SCHEMA = pa.schema(
    [("key", pa.binary()), ("value", pa.binary()), ("timestamp_ms", pa.int64())]
)
"""`Traffic.messages`: what a client would send to Kafka, and when the broker received it."""
MESSAGE_SLICE_ROWS = 1_000_000
"""Messages converted to Arrow at a time: binary's 32-bit offsets hold 2 GiB, a day's values
pass that near 5M events."""
MAX_TRANSIT_US = 5 * US
"""The longest network transit of a request: sent_at is stamped this close to the receive time."""


def _epoch_us(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * US)


def _weights(pairs: tuple[tuple[str, float], ...]) -> tuple[list[str], np.ndarray]:
    names = [name for name, _ in pairs]
    weights = np.array([w for _, w in pairs], dtype=float)
    return names, weights / weights.sum()


def _zipf_p(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> pl.Series:
    raw = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8)
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), n, [None, pa.py_buffer(raw)])
    return pl.Series(array.cast(pa.binary())).bin.encode("hex")


def _log_uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), n))


def _diurnal(hour: np.ndarray, peak: float) -> np.ndarray:
    """Relative traffic by hour of day: an evening peak, a smaller morning bump, a night floor."""

    def bump(center: float, width: float) -> np.ndarray:
        distance = np.abs((hour - center + 12) % 24 - 12)
        return np.exp(-(distance**2) / (2 * width**2))

    return 0.2 + bump(peak, 2.5) + 0.35 * bump(8.0, 2.0)


@dataclass(frozen=True)
class _Population:
    devices: pl.DataFrame  # device, device_id, platform_text, tz, user
    appetite: np.ndarray
    phase_s: np.ndarray
    stamps_sent_at: np.ndarray


def _population(spec: TrafficSpec, n: int, rng: np.random.Generator) -> _Population:
    """Devices with a platform, a time zone, maybe a signed-in user, an appetite, and an SDK that
    stamps sent_at or not. Drawn from the seed only, so that consecutive spans share devices."""
    n_devices = spec.devices or int(np.clip(n // 30, 20, 2_000_000))
    platform_names, platform_p = _weights(spec.platform_mix)
    device_platform = rng.choice(len(platform_names), n_devices, p=platform_p)
    device_platform_text = np.array(platform_names, dtype=object)[device_platform]
    unknown = device_platform_text == "unknown"
    device_platform_text[unknown] = np.array(UNKNOWN_PLATFORM_TEXTS, dtype=object)[
        rng.integers(0, len(UNKNOWN_PLATFORM_TEXTS), int(unknown.sum()))
    ]
    device_tz = rng.integers(0, len(TZ_OFFSETS_MIN), n_devices)
    signed_in = rng.random(n_devices) < spec.signed_in_device_share
    n_users = max(1, int(signed_in.sum() * 0.75))  # some users sign in on several devices
    device_user = np.where(signed_in, rng.integers(0, n_users, n_devices), -1)
    appetite = rng.lognormal(0.0, 1.2, n_devices)
    phase_s = rng.integers(0, 1800, n_devices)
    devices = pl.DataFrame(
        {
            "device": np.arange(n_devices),
            "device_id": ("dev-" + _hex(rng, n_devices, 6)).to_numpy(),
            "platform_text": pl.Series(device_platform_text.tolist(), dtype=pl.String),
            "tz": device_tz,
            "user": device_user,
        }
    )
    stamps_sent_at = rng.random(n_devices) < spec.sent_at_device_share
    return _Population(devices, appetite, phase_s, stamps_sent_at)


def _moments(spec: TrafficSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """When each event truly happened (microseconds), on the diurnal curve."""
    start_us, end_us = _epoch_us(spec.start), _epoch_us(spec.end)
    minutes = int(np.ceil((end_us - start_us) / (60 * US)))
    minute_start_us = start_us + np.arange(minutes, dtype=np.int64) * 60 * US
    hour_of_day = (minute_start_us // US % 86400) / 3600
    curve = _diurnal(hour_of_day, spec.peak_hour_utc)
    t_us = minute_start_us[rng.choice(minutes, n, p=curve / curve.sum())] + rng.integers(
        0, 60 * US, n
    )
    return np.minimum(t_us, end_us - 1)


@dataclass(frozen=True)
class _Clocks:
    is_skewed: np.ndarray
    is_late: np.ndarray
    clock_ahead_us: np.ndarray  # device clock minus true time; negative when behind
    delay_us: np.ndarray  # from the event to its first receipt
    precision: np.ndarray  # fraction digits of event_time
    event_time_us: np.ndarray  # what the device stamped


def _clocks(
    spec: TrafficSpec, t_us: np.ndarray, sent_at: np.ndarray, rng: np.random.Generator
) -> _Clocks:
    """Most events arrive within seconds; some come late (offline queue); some device clocks are
    off by 10 min to 36 h (ahead, or either way where the SDK stamps sent_at, since the contract
    corrects both then); a few are slightly ahead, within the tolerance that leaves them be."""
    n = len(t_us)
    role = rng.random(n)
    is_skewed = role < spec.skew_rate
    is_late = (role >= spec.skew_rate) & (role < spec.skew_rate + spec.late_rate)
    drifting = ~is_skewed & ~is_late & (rng.random(n) < 0.01)
    clock_ahead_us = np.zeros(n, dtype=np.int64)
    clock_ahead_us[is_skewed] = (
        _log_uniform(rng, 600, 36 * 3600, int(is_skewed.sum())) * US
    ).astype(np.int64)
    clock_ahead_us[drifting] = rng.integers(0, 4 * 60 * US, int(drifting.sum()))
    delay_us = (rng.exponential(1.5, n) * US).astype(np.int64) + 50 * MS
    late_max_s = max(3601.0, spec.max_late.total_seconds())
    delay_us[is_late] = (_log_uniform(rng, 3600, late_max_s, int(is_late.sum())) * US).astype(
        np.int64
    )
    precision = rng.choice(np.array([0, 3, 6]), n, p=[0.3, 0.5, 0.2])
    behind = rng.random(n) < 0.5
    clock_ahead_us = np.where(sent_at & is_skewed & behind, -clock_ahead_us, clock_ahead_us)
    # A drifting clock with sent_at stays inside the 60 s deadband by a margin wider than any
    # transit, so that every copy of an event gets the same verdict (and a consumer comparing at
    # milliseconds or microseconds too).
    deadband_margin = SENT_AT_DEADBAND_US - MAX_TRANSIT_US - 15 * US
    clock_ahead_us = np.where(sent_at & drifting, clock_ahead_us % deadband_margin, clock_ahead_us)
    step = 10 ** (6 - precision)
    event_time_us = (t_us + clock_ahead_us) // step * step
    return _Clocks(is_skewed, is_late, clock_ahead_us, delay_us, precision, event_time_us)


@dataclass(frozen=True)
class _Copies:
    event_of_msg: np.ndarray
    copy_no: np.ndarray
    receive_ms: np.ndarray
    sent_at_us: np.ndarray  # the device clock when the copy was sent; NaT-free, masked later


def _copies(
    spec: TrafficSpec, t_us: np.ndarray, clocks: _Clocks, rng: np.random.Generator
) -> _Copies:
    """Retries: the SDK resends an event minutes to hours later (stamping sent_at anew each time);
    skewed events get retried more often so that a corrected event with several copies always
    exists. Each copy is received its retry delay after the previous one."""
    is_skewed = clocks.is_skewed
    n = len(t_us)
    retry_p = np.where(is_skewed, max(0.5, spec.duplicate_rate), spec.duplicate_rate)
    extra = np.where(rng.random(n) < retry_p, rng.geometric(0.7, n), 0)
    if is_skewed.any() and not (extra[is_skewed] > 0).any():
        extra[np.flatnonzero(is_skewed)[0]] = 1
    copies = 1 + extra
    event_of_msg = np.repeat(np.arange(n), copies)
    m = len(event_of_msg)
    copy_no = np.arange(m) - np.repeat(np.cumsum(copies) - copies, copies)
    retry_delay_us = np.where(
        copy_no == 0,
        0,
        np.where(
            rng.random(m) < 0.1,
            rng.integers(0, 2 * US, m),  # an immediate resend, sometimes in the same millisecond
            (_log_uniform(rng, 5, max(6.0, spec.max_retry_delay.total_seconds()), m) * US).astype(
                np.int64
            ),
        ),
    )
    chain_start = np.cumsum(copies) - copies
    elapsed = np.cumsum(retry_delay_us)
    receive_us = (
        (t_us + clocks.delay_us)[event_of_msg] + elapsed - np.repeat(elapsed[chain_start], copies)
    )
    if spec.receive_until is not None:
        # Squeeze a chain that would end past the horizon into what is left, keeping its order.
        horizon_us = _epoch_us(spec.receive_until) - MS
        chain_end = np.maximum.reduceat(receive_us, chain_start)[event_of_msg]
        origin = t_us[event_of_msg]
        room = np.maximum(horizon_us - origin, 0)
        over = chain_end > horizon_us
        scale = np.where(over, room / np.maximum(chain_end - origin, 1), 1.0)
        receive_us = np.where(
            over, origin + ((receive_us - origin) * scale).astype(np.int64), receive_us
        )
    receive_ms = receive_us // MS
    # Keep every copy clear of the 5-minute boundary by a margin, so that a consumer comparing at
    # millisecond or microsecond precision reaches the same verdict.
    ahead = clocks.event_time_us[event_of_msg] - receive_ms * MS
    near = np.abs(ahead - FUTURE_CLOCK_TOLERANCE_US) < 2 * US
    receive_ms = np.where(near, receive_ms - 5 * MS, receive_ms)
    # sent_at: the device clock a short transit before the receipt.
    transit_us = np.minimum(
        (rng.exponential(0.2, m) * US).astype(np.int64) + 20 * MS, MAX_TRANSIT_US
    )
    sent_at_us = receive_ms * MS - transit_us + clocks.clock_ahead_us[event_of_msg]
    return _Copies(event_of_msg, copy_no.astype(np.int32), receive_ms, sent_at_us)


def _malformed(spec: TrafficSpec, m: int, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """Any copy can be broken; kinds are dealt round-robin so that all appear."""
    n_bad = int(round(m * spec.malformed_rate))
    bad_rows = rng.choice(m, n_bad, replace=False) if n_bad else np.array([], dtype=np.int64)
    bad_kind = np.full(m, None, dtype=object)
    bad_kind[bad_rows] = np.array(MALFORMED_KINDS, dtype=object)[
        rng.permutation(np.arange(n_bad) % len(MALFORMED_KINDS))
    ]
    bad_variant = rng.integers(0, 60, m)  # divisible by every kind's number of variants
    return bad_kind.tolist(), bad_variant


def generate(spec: TrafficSpec) -> Traffic:
    """Draw the traffic described by `spec`; the same spec (and seed) gives the same bytes."""
    n = spec.n_events
    start_us, end_us = _epoch_us(spec.start), _epoch_us(spec.end)
    population = _population(spec, n, np.random.default_rng([spec.seed, 0]))
    rng = np.random.default_rng([spec.seed, 1, start_us // US, end_us // US, n])

    # --- events: when (diurnal curve), who, what
    t_us = _moments(spec, n, rng)
    appetite = population.appetite
    device = rng.choice(len(appetite), n, p=appetite / appetite.sum())
    type_names, type_p = _weights(spec.event_type_mix)
    event_type = np.array(type_names)[rng.choice(len(type_names), n, p=type_p)]
    has_title = np.isin(event_type, TITLE_EVENTS) | (
        np.isin(event_type, ("page_view", "click", "heartbeat")) & (rng.random(n) < 0.4)
    )
    title_rank = rng.choice(spec.titles, n, p=_zipf_p(spec.titles, spec.title_zipf_s)) + 1
    is_ad = event_type == "ad_impression"
    campaign_rank = rng.choice(spec.campaigns, n, p=_zipf_p(spec.campaigns, spec.campaign_zipf_s))
    stamps_sent_at = population.stamps_sent_at[device]

    clocks = _clocks(spec, t_us, stamps_sent_at, rng)
    copies = _copies(spec, t_us, clocks, rng)
    bad_kind, bad_variant = _malformed(spec, len(copies.event_of_msg), rng)

    # --- per-event columns, then one row per message
    session_bucket = (t_us // US + population.phase_s[device]) // 1800
    events = pl.DataFrame(
        {
            "event": np.arange(n),
            "event_id": _hex(rng, n, 16),
            "device": device,
            "event_type": event_type,
            "t_us": t_us,
            "event_time_us": clocks.event_time_us,
            "precision": clocks.precision,
            "signed_out": rng.random(n) < 0.03,
            "user_style": rng.integers(0, 2, n),
            "no_session": rng.random(n) < 0.02,
            "session_bucket": session_bucket,
            "title_rank": np.where(has_title, title_rank, 0),
            "campaign_rank": np.where(is_ad, campaign_rank + 1, 0),
            "ad_slot": rng.integers(1, 6, n),
            "position_ms": rng.integers(0, 7_200_000, n),
            "page_idx": rng.integers(0, 5, n),
            "extra_idx": rng.integers(0, 20, n),
            "is_late": clocks.is_late,
            "is_skewed": clocks.is_skewed,
            "stamps_sent_at": stamps_sent_at,
        }
    ).join(population.devices, on="device", how="left")
    events = events.with_columns(
        event_id=pl.concat_str(
            [
                pl.col("event_id").str.slice(0, 8),
                pl.col("event_id").str.slice(8, 4),
                pl.col("event_id").str.slice(12, 4),
                pl.col("event_id").str.slice(16, 4),
                pl.col("event_id").str.slice(20, 12),
            ],
            separator="-",
        ),
        user_id=pl.when((pl.col("user") >= 0) & ~pl.col("signed_out")).then(
            pl.format("user-{}", pl.col("user").cast(pl.String).str.zfill(6))
        ),
        session_id=pl.when(~pl.col("no_session")).then(
            pl.format("{}-{}", pl.col("device_id"), pl.col("session_bucket"))
        ),
        title_id=pl.when(pl.col("title_rank") > 0).then(
            pl.format("title-{}", pl.col("title_rank").cast(pl.String).str.zfill(4))
        ),
        campaign_id=pl.when(pl.col("campaign_rank") > 0).then(
            pl.format("cmp-{}", pl.col("campaign_rank").cast(pl.String).str.zfill(3))
        ),
        event_time_text=rfc3339(),
    )

    messages = (
        pl.DataFrame(
            {
                "event": copies.event_of_msg,
                "copy": copies.copy_no,
                "kafka_timestamp_ms": copies.receive_ms,
                "sent_at_us": copies.sent_at_us,
                "malformed_reason": pl.Series(bad_kind, dtype=pl.String),
                "variant": bad_variant,
            }
        )
        .join(events, on="event", how="left", maintain_order="left")
        .with_columns(sent_at_us=pl.when("stamps_sent_at").then("sent_at_us"))
    )
    is_bad = pl.col("malformed_reason").is_not_null()
    messages = (
        pl.concat(
            [
                messages.filter(~is_bad).with_columns(value=json_value(broken=False)),
                messages.filter(is_bad).with_columns(value=json_value(broken=True)),
            ]
        )
        # Ties in receive time keep generation order: an event's copies stay in copy order.
        .sort("kafka_timestamp_ms", "event", "copy")
    )
    messages = messages.with_row_index("message_index")

    columns = messages.select(
        key=pl.col("device_id").cast(pl.Binary),
        value=pl.col("value").cast(pl.Binary),
        timestamp_ms="kafka_timestamp_ms",
    )
    table = pa.concat_tables(
        columns.slice(start, MESSAGE_SLICE_ROWS).to_arrow().cast(MESSAGE_SCHEMA)
        for start in range(0, max(columns.height, 1), MESSAGE_SLICE_ROWS)
    )
    utc = "UTC"
    truth = messages.select(
        pl.col("message_index").cast(pl.Int64),
        pl.col("event").cast(pl.Int64).alias("event_index"),
        "copy",
        "kafka_timestamp_ms",
        pl.from_epoch("kafka_timestamp_ms", "ms")
        .dt.replace_time_zone(utc)
        .alias("kafka_timestamp"),
        "event_id",
        "event_type",
        pl.from_epoch("event_time_us", "us").dt.replace_time_zone(utc).alias("event_time"),
        "event_time_text",
        pl.from_epoch("sent_at_us", "us").dt.replace_time_zone(utc).alias("sent_at"),
        pl.from_epoch("t_us", "us").dt.replace_time_zone(utc).alias("true_time"),
        "device_id",
        "user_id",
        "session_id",
        "platform_text",
        "title_id",
        "campaign_id",
        pl.col("malformed_reason").is_null().alias("valid"),
        "malformed_reason",
        "is_late",
        "is_skewed",
    )
    return Traffic(spec=spec, messages=table, truth=truth, counts=injection_counts(truth))
