"""Synthetic clickstream traffic with known answers: Kafka messages and the truth behind them.

Everything is vectorized (numpy draws, Polars string building). The ground truth says, for every
message, what was meant and what was broken on purpose; `expected_marts` turns it into the five
contract marts by the contract's rules alone, as the oracle for end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from core.contract import PLATFORMS, TITLE_EVENTS
from resources.kafka import EventLog

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
)
"""Every way the contract says a message is invalid; each injected kind is one reason."""

FUTURE_CLOCK_TOLERANCE_US = 5 * 60 * 1_000_000
_US = 1_000_000
_MS = 1_000

# (offset minutes, written as "Z" when 0): device time zones; fixed offsets, so no DST.
_TZ_OFFSETS_MIN = np.array([0, 0, 60, 330, -480, -300, 540, -180, 120])
_TZ_USES_Z = np.array([True, False, False, False, False, False, False, False, False])


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
    skew_rate: float = 0.003  # events whose device clock is 10 min to 36 h ahead
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


def _epoch_us(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * _US)


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


def _pick(options: tuple[str, ...] | list[str], index: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(list(options))).gather(index)


def _field(name: str, value: pl.Expr, *, quoted: bool = True) -> pl.Expr:
    """`,"name":"value"` (or unquoted), or empty when the value is null: the field is absent."""
    quote = '"' if quoted else ""
    text = pl.concat_str([pl.lit(f',"{name}":{quote}'), value.cast(pl.String), pl.lit(quote)])
    return pl.when(value.is_not_null()).then(text).otherwise(pl.lit(""))


def generate(spec: TrafficSpec) -> Traffic:
    """Draw the traffic described by `spec`; the same spec (and seed) gives the same bytes."""
    n = spec.n_events
    start_us, end_us = _epoch_us(spec.start), _epoch_us(spec.end)
    # The population depends on the seed only, so that consecutive spans share devices.
    pop_rng = np.random.default_rng([spec.seed, 0])
    rng = np.random.default_rng([spec.seed, 1, start_us // _US, end_us // _US, n])

    # --- population: devices with a platform, a time zone, maybe a signed-in user, an appetite
    n_devices = spec.devices or int(np.clip(n // 30, 20, 2_000_000))
    platform_names, platform_p = _weights(spec.platform_mix)
    device_platform = pop_rng.choice(len(platform_names), n_devices, p=platform_p)
    device_platform_text = np.array(platform_names, dtype=object)[device_platform]
    unknown = device_platform_text == "unknown"
    device_platform_text[unknown] = np.array(UNKNOWN_PLATFORM_TEXTS, dtype=object)[
        pop_rng.integers(0, len(UNKNOWN_PLATFORM_TEXTS), int(unknown.sum()))
    ]
    device_tz = pop_rng.integers(0, len(_TZ_OFFSETS_MIN), n_devices)
    signed_in = pop_rng.random(n_devices) < spec.signed_in_device_share
    n_users = max(1, int(signed_in.sum() * 0.75))  # some users sign in on several devices
    device_user = np.where(signed_in, pop_rng.integers(0, n_users, n_devices), -1)
    device_appetite = pop_rng.lognormal(0.0, 1.2, n_devices)
    device_phase_s = pop_rng.integers(0, 1800, n_devices)
    devices = pl.DataFrame(
        {
            "device": np.arange(n_devices),
            "device_id": ("dev-" + _hex(pop_rng, n_devices, 6)).to_numpy(),
            "platform_text": pl.Series(device_platform_text.tolist(), dtype=pl.String),
            "tz": device_tz,
            "user": device_user,
        }
    )

    # --- events: when (diurnal curve), who, what
    minutes = int(np.ceil((end_us - start_us) / (60 * _US)))
    minute_start_us = start_us + np.arange(minutes, dtype=np.int64) * 60 * _US
    hour_of_day = (minute_start_us // _US % 86400) / 3600
    curve = _diurnal(hour_of_day, spec.peak_hour_utc)
    t_us = minute_start_us[rng.choice(minutes, n, p=curve / curve.sum())] + rng.integers(
        0, 60 * _US, n
    )
    t_us = np.minimum(t_us, end_us - 1)
    device = rng.choice(n_devices, n, p=device_appetite / device_appetite.sum())
    type_names, type_p = _weights(spec.event_type_mix)
    event_type_idx = rng.choice(len(type_names), n, p=type_p)
    event_type = np.array(type_names)[event_type_idx]
    needs_title = np.isin(event_type, TITLE_EVENTS)
    has_title = needs_title | (
        np.isin(event_type, ("page_view", "click", "heartbeat")) & (rng.random(n) < 0.4)
    )
    title_rank = rng.choice(spec.titles, n, p=_zipf_p(spec.titles, spec.title_zipf_s)) + 1
    is_ad = event_type == "ad_impression"
    campaign_rank = rng.choice(spec.campaigns, n, p=_zipf_p(spec.campaigns, spec.campaign_zipf_s))

    # Clocks and delivery: most events arrive within seconds; some come late (offline queue),
    # some devices run ahead (skewed, corrected by the contract), a few slightly ahead (not).
    role = rng.random(n)
    is_skewed = role < spec.skew_rate
    is_late = (role >= spec.skew_rate) & (role < spec.skew_rate + spec.late_rate)
    drifting = ~is_skewed & ~is_late & (rng.random(n) < 0.01)
    clock_ahead_us = np.zeros(n, dtype=np.int64)
    clock_ahead_us[is_skewed] = (
        _log_uniform(rng, 600, 36 * 3600, int(is_skewed.sum())) * _US
    ).astype(np.int64)
    clock_ahead_us[drifting] = rng.integers(0, 4 * 60 * _US, int(drifting.sum()))
    delay_us = (rng.exponential(1.5, n) * _US).astype(np.int64) + 50 * _MS
    late_max_s = max(3601.0, spec.max_late.total_seconds())
    delay_us[is_late] = (_log_uniform(rng, 3600, late_max_s, int(is_late.sum())) * _US).astype(
        np.int64
    )
    precision = rng.choice(np.array([0, 3, 6]), n, p=[0.3, 0.5, 0.2])
    step = 10 ** (6 - precision)
    event_time_us = (t_us + clock_ahead_us) // step * step

    # Retries: the SDK resends the same bytes minutes to hours later; skewed events get retried
    # more often so that a future-clock event with several copies always exists.
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
            rng.integers(0, 2 * _US, m),  # an immediate resend, sometimes in the same millisecond
            (_log_uniform(rng, 5, max(6.0, spec.max_retry_delay.total_seconds()), m) * _US).astype(
                np.int64
            ),
        ),
    )
    # Each copy is received its retry delay after the previous one.
    chain_start = np.cumsum(copies) - copies
    elapsed = np.cumsum(retry_delay_us)
    receive_us = (t_us + delay_us)[event_of_msg] + elapsed - np.repeat(elapsed[chain_start], copies)
    if spec.receive_until is not None:
        # Squeeze a chain that would end past the horizon into what is left, keeping its order.
        horizon_us = _epoch_us(spec.receive_until) - _MS
        chain_end = np.maximum.reduceat(receive_us, chain_start)[event_of_msg]
        origin = t_us[event_of_msg]
        room = np.maximum(horizon_us - origin, 0)
        over = chain_end > horizon_us
        scale = np.where(over, room / np.maximum(chain_end - origin, 1), 1.0)
        receive_us = np.where(
            over, origin + ((receive_us - origin) * scale).astype(np.int64), receive_us
        )
    receive_ms = receive_us // _MS
    # Keep every copy clear of the 5-minute boundary by a margin, so that a consumer comparing at
    # millisecond or microsecond precision reaches the same verdict.
    ahead = event_time_us[event_of_msg] - receive_ms * _MS
    near = np.abs(ahead - FUTURE_CLOCK_TOLERANCE_US) < 2 * _US
    receive_ms = np.where(near, receive_ms - 5 * _MS, receive_ms)

    # Malformed messages: any copy can be broken; kinds are dealt round-robin so all appear.
    n_bad = int(round(m * spec.malformed_rate))
    bad_rows = rng.choice(m, n_bad, replace=False) if n_bad else np.array([], dtype=np.int64)
    bad_kind = np.full(m, None, dtype=object)
    bad_kind[bad_rows] = np.array(MALFORMED_KINDS, dtype=object)[
        rng.permutation(np.arange(n_bad) % len(MALFORMED_KINDS))
    ]
    bad_variant = rng.integers(0, 60, m)  # divisible by every kind's number of variants

    # --- per-event columns, then one row per message
    session_bucket = (t_us // _US + device_phase_s[device]) // 1800
    events = pl.DataFrame(
        {
            "event": np.arange(n),
            "event_id": _hex(rng, n, 16),
            "device": device,
            "event_type": event_type,
            "t_us": t_us,
            "event_time_us": event_time_us,
            "precision": precision,
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
            "is_late": is_late,
            "is_skewed": is_skewed,
        }
    ).join(devices, on="device", how="left")
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
        event_time_text=_rfc3339(),
    )

    messages = pl.DataFrame(
        {
            "event": event_of_msg,
            "copy": copy_no.astype(np.int32),
            "kafka_timestamp_ms": receive_ms,
            "malformed_reason": pl.Series(bad_kind.tolist(), dtype=pl.String),
            "variant": bad_variant,
        }
    ).join(events, on="event", how="left", maintain_order="left")
    is_bad = pl.col("malformed_reason").is_not_null()
    messages = (
        pl.concat(
            [
                messages.filter(~is_bad).with_columns(value=_json_value(broken=False)),
                messages.filter(is_bad).with_columns(value=_json_value(broken=True)),
            ]
        )
        # Ties in receive time keep generation order: an event's copies stay in copy order.
        .sort("kafka_timestamp_ms", "event", "copy")
    )
    messages = messages.with_row_index("message_index")

    table = pa.table(
        {
            "key": messages["device_id"].cast(pl.Binary).to_arrow(),
            "value": messages["value"].cast(pl.Binary).to_arrow(),
            "timestamp_ms": messages["kafka_timestamp_ms"].to_arrow(),
        }
    )
    table = table.cast(
        pa.schema([("key", pa.binary()), ("value", pa.binary()), ("timestamp_ms", pa.int64())])
    )
    truth = messages.select(
        pl.col("message_index").cast(pl.Int64),
        pl.col("event").cast(pl.Int64).alias("event_index"),
        "copy",
        "kafka_timestamp_ms",
        pl.from_epoch("kafka_timestamp_ms", "ms")
        .dt.replace_time_zone("UTC")
        .alias("kafka_timestamp"),
        "event_id",
        "event_type",
        pl.from_epoch("event_time_us", "us").dt.replace_time_zone("UTC").alias("event_time"),
        "event_time_text",
        pl.from_epoch("t_us", "us").dt.replace_time_zone("UTC").alias("true_time"),
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


def _rfc3339() -> pl.Expr:
    """The device's local wall time with its offset, at 0, 3 or 6 fraction digits."""
    offset_min = _pick([str(v) for v in _TZ_OFFSETS_MIN], pl.col("tz")).cast(pl.Int64)
    uses_z = _pick(["1" if v else "0" for v in _TZ_USES_Z], pl.col("tz")) == "1"
    local = pl.from_epoch(pl.col("event_time_us") + offset_min * 60 * _US, "us")
    fraction = (pl.col("event_time_us") % _US).cast(pl.String).str.zfill(6)
    fraction_text = (
        pl.when(pl.col("precision") == 0)
        .then(pl.lit(""))
        .when(pl.col("precision") == 3)
        .then(pl.concat_str([pl.lit("."), fraction.str.slice(0, 3)]))
        .otherwise(pl.concat_str([pl.lit("."), fraction]))
    )
    absolute = offset_min.abs()
    offset_text = (
        pl.when(uses_z)
        .then(pl.lit("Z"))
        .otherwise(
            pl.concat_str(
                [
                    pl.when(offset_min < 0).then(pl.lit("-")).otherwise(pl.lit("+")),
                    (absolute // 60).cast(pl.String).str.zfill(2),
                    pl.lit(":"),
                    (absolute % 60).cast(pl.String).str.zfill(2),
                ]
            )
        )
    )
    return pl.concat_str([local.dt.strftime("%Y-%m-%dT%H:%M:%S"), fraction_text, offset_text])


_PAGES = ("/", "/browse", "/search", "/account", "/title")
_EXTRAS = (
    ',"properties":{"referrer":"search","experiment":"B"}',
    ',"properties":{"referrer":"home_row","row":3}',
    ',"properties":{"network":"wifi"}',
    ',"sdk":"clickstream-js/4.2.1"',
    ',"schema_version":2,"properties":{"bitrate_kbps":4500}',
)
_BAD_TIMES = ("yesterday", "2026-02-30T10:00:00Z", "2026-01-01T25:61:00Z", "", "{naive}")
_UNKNOWN_TYPES = ("purchase", "PageView", "scroll", "")


def _json_value(*, broken: bool) -> pl.Expr:
    """The message value: a JSON object built from fragments; with `broken`, then broken as
    `malformed_reason` says (a null result is a Kafka null value). Only the few malformed rows
    take the broken route, because every branch of a when/then chain costs a pass."""
    kind = pl.col("malformed_reason")
    variant = pl.col("variant")
    is_kind = {k: kind.eq(k).fill_null(False) for k in MALFORMED_KINDS}
    is_app = pl.col("platform_text").is_in(["ios", "android", "tv", "stb"])
    event_type = pl.col("event_type")
    media = event_type.is_in(["play", "pause", "seek", "heartbeat"])

    def required(name: str, value: pl.Expr) -> pl.Expr:
        return pl.concat_str([pl.lit(f',"{name}":"'), value, pl.lit('"')])

    def unless(default: pl.Expr, *cases: tuple[pl.Expr, pl.Expr]) -> pl.Expr:
        if not broken:
            return default
        chain = pl.when(cases[0][0]).then(cases[0][1])
        for condition, value in cases[1:]:
            chain = chain.when(condition).then(value)
        return chain.otherwise(default)

    f_event_id = unless(
        required("event_id", pl.col("event_id")),
        (is_kind["missing_field"] & (variant % 6 == 0), pl.lit("")),
        (is_kind["missing_field"] & (variant % 6 == 1), pl.lit(',"event_id":""')),
        (is_kind["wrong_type"] & (variant % 5 == 0), pl.format(',"event_id":{}', pl.col("event"))),
    )
    f_event_type = unless(
        required("event_type", event_type),
        (is_kind["missing_field"] & (variant % 6 == 2), pl.lit("")),
        (is_kind["wrong_type"] & (variant % 5 == 1), pl.lit(',"event_type":3')),
        (
            is_kind["unknown_event_type"],
            required("event_type", _pick(_UNKNOWN_TYPES, variant % len(_UNKNOWN_TYPES))),
        ),
        (
            is_kind["missing_title_id"] & ~event_type.is_in(TITLE_EVENTS),
            pl.lit(',"event_type":"play"'),
        ),
        (is_kind["missing_campaign_id"], pl.lit(',"event_type":"ad_impression"')),
    )
    naive = pl.from_epoch("event_time_us", "us").dt.strftime("%Y-%m-%dT%H:%M:%S")
    bad_time = _pick(_BAD_TIMES, variant % len(_BAD_TIMES))
    f_event_time = unless(
        required("event_time", pl.col("event_time_text")),
        (is_kind["missing_field"] & (variant % 6 == 3), pl.lit("")),
        (
            is_kind["wrong_type"] & (variant % 5 == 2),
            pl.format(',"event_time":{}', pl.col("event_time_us") // _US),
        ),
        (
            is_kind["bad_event_time"],
            required("event_time", pl.when(bad_time == "{naive}").then(naive).otherwise(bad_time)),
        ),
    )
    f_device_id = unless(
        required("device_id", pl.col("device_id")),
        (is_kind["missing_field"] & (variant % 6 == 4), pl.lit("")),
        (is_kind["missing_field"] & (variant % 6 == 5), pl.lit(',"device_id":""')),
        (is_kind["wrong_type"] & (variant % 5 == 3), pl.lit(',"device_id":null')),
        (is_kind["wrong_type"] & (variant % 5 == 4), pl.lit(',"device_id":42')),
    )
    # Anonymous events say so either with an explicit null or by leaving the field out.
    f_user_id = (
        pl.when(pl.col("user_id").is_not_null())
        .then(required("user_id", pl.col("user_id")))
        .when(pl.col("user_style") == 0)
        .then(pl.lit(',"user_id":null'))
        .otherwise(pl.lit(""))
    )
    f_title_id = unless(
        _field("title_id", pl.col("title_id")),
        (is_kind["missing_title_id"] & (variant % 2 == 0), pl.lit("")),
        (is_kind["missing_title_id"], pl.lit(',"title_id":null')),
    )
    ad_id = pl.format("{}-ad{}", pl.col("campaign_id"), pl.col("ad_slot"))
    f_campaign = unless(
        pl.concat_str([_field("campaign_id", pl.col("campaign_id")), _field("ad_id", ad_id)]),
        (is_kind["missing_campaign_id"] & (variant % 2 == 0), pl.lit("")),
        (is_kind["missing_campaign_id"], pl.lit(',"campaign_id":null')),
    )
    body = pl.concat_str(
        [
            f_event_id,
            f_event_type,
            f_event_time,
            f_device_id,
            f_user_id,
            _field("session_id", pl.col("session_id")),
            required("platform", pl.col("platform_text")),
            f_title_id,
            f_campaign,
            _field("page", pl.when(~is_app).then(_pick(_PAGES, pl.col("page_idx")))),
            _field("app_version", pl.when(is_app).then(pl.lit("7.12.0"))),
            _field("position_ms", pl.when(media).then(pl.col("position_ms")), quoted=False),
            pl.when(pl.col("extra_idx") < len(_EXTRAS))
            .then(_pick(_EXTRAS, pl.col("extra_idx").clip(0, len(_EXTRAS) - 1)))
            .otherwise(pl.lit("")),
        ]
    )
    obj = pl.concat_str([pl.lit("{"), body.str.strip_prefix(","), pl.lit("}")])
    return unless(
        obj,
        (is_kind["not_json"] & (variant % 3 == 0), obj.str.slice(0, obj.str.len_chars() // 2)),
        (
            is_kind["not_json"] & (variant % 3 == 1),
            pl.format("event=page_view&device={}", pl.col("device_id")),
        ),
        (
            is_kind["not_json"],
            pl.concat_str([pl.lit("{'event_id': '"), pl.col("event_id"), pl.lit("'}")]),
        ),
        (is_kind["json_array"], pl.concat_str([pl.lit("["), obj, pl.lit("]")])),
        (is_kind["null_value"] & (variant % 2 == 0), pl.lit(None, dtype=pl.String)),
        (is_kind["null_value"], pl.lit("null")),
    )


def accepted_events(truth: pl.DataFrame) -> pl.DataFrame:
    """The events the contract counts: valid copies only; per event_id, the first received copy
    (Kafka timestamp, then offset: copies share the device key, hence the partition, and were
    produced in message order); a device clock more than 5 minutes ahead of the receive time
    takes the receive time."""
    return (
        truth.filter(pl.col("valid"))
        .sort(["kafka_timestamp_ms", "message_index"])
        .unique("event_id", keep="first", maintain_order=True)
        .with_columns(
            clock_corrected=(pl.col("event_time") - pl.col("kafka_timestamp"))
            > pl.duration(minutes=5)
        )
        .with_columns(
            event_time=pl.when(pl.col("clock_corrected"))
            .then(pl.col("kafka_timestamp").cast(pl.Datetime("us", "UTC")))
            .otherwise(pl.col("event_time")),
            platform=pl.when(pl.col("platform_text").is_in(PLATFORMS))
            .then(pl.col("platform_text"))
            .otherwise(pl.lit("other")),
            actor=pl.coalesce(pl.col("user_id"), pl.concat_str([pl.lit("device:"), "device_id"])),
        )
        .with_columns(
            event_date=pl.col("event_time").dt.date(),
            event_hour=pl.col("event_time").dt.truncate("1h"),
        )
    )


def expected_marts(truth: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The five contract marts (without revision, is_final, computed_at) from the ground truth."""
    events = accepted_events(truth)
    count = pl.len().cast(pl.Int64)

    def distinct(column: str) -> pl.Expr:
        return pl.col(column).drop_nulls().n_unique().cast(pl.Int64)

    plays = events.filter(pl.col("event_type") == "play")
    impressions = events.filter(pl.col("event_type") == "ad_impression")
    return {
        "fct_daily_active_users": events.group_by("event_date")
        .agg(
            active_users=distinct("actor"),
            logged_in_users=distinct("user_id"),
            active_devices=distinct("device_id"),
            events=count,
        )
        .sort("event_date"),
        "fct_daily_active_users_by_platform": events.group_by("event_date", "platform")
        .agg(active_users=distinct("actor"))
        .sort("event_date", "platform"),
        "fct_daily_title_plays": plays.group_by("event_date", "title_id")
        .agg(plays=count, unique_viewers=distinct("actor"))
        .sort("event_date", "title_id"),
        "fct_daily_campaign_impressions": impressions.group_by("event_date", "campaign_id")
        .agg(impressions=count, unique_viewers=distinct("actor"))
        .sort("event_date", "campaign_id"),
        "fct_hourly_events": events.group_by("event_hour", "event_type")
        .agg(events=count, active_users=distinct("actor"))
        .sort("event_hour", "event_type"),
    }


def write_expected_marts(truth: pl.DataFrame, directory: str | Path) -> list[Path]:
    """Write each expected mart to `directory/<mart>.parquet`, and the truth beside them."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in expected_marts(truth).items():
        path = target / f"{name}.parquet"
        frame.write_parquet(path)
        written.append(path)
    truth.write_parquet(target / "ground_truth.parquet")
    written.append(target / "ground_truth.parquet")
    return written


def injection_counts(truth: pl.DataFrame, allowed_lateness: timedelta = timedelta(hours=3)) -> dict:
    """What was injected, for the demo summary and for tests of the rates."""
    per_event = truth.group_by("event_index").agg(
        copies=pl.len(),
        is_late=pl.col("is_late").first(),
        is_skewed=pl.col("is_skewed").first(),
        first_hour=pl.col("kafka_timestamp").min().dt.truncate("1h"),
        last_hour=pl.col("kafka_timestamp").max().dt.truncate("1h"),
    )
    accepted = accepted_events(truth)
    watermark = pl.col("event_hour") + pl.duration(hours=1) + allowed_lateness
    malformed = truth.filter(~pl.col("valid")).group_by("malformed_reason").len()
    return {
        "events": per_event.height,
        "messages": truth.height,
        "valid_events": accepted.height,
        "duplicate_messages": int((truth["copy"] > 0).sum()),
        "duplicated_events": int((per_event["copies"] > 1).sum()),
        "duplicated_across_ingest_hours": int(
            (per_event["first_hour"] != per_event["last_hour"]).sum()
        ),
        "late_events": int(per_event["is_late"].sum()),
        "received_after_watermark": accepted.filter(pl.col("kafka_timestamp") >= watermark).height,
        "skewed_events": int(per_event["is_skewed"].sum()),
        "skewed_events_retried": int(
            per_event.filter(pl.col("is_skewed") & (pl.col("copies") > 1)).height
        ),
        "clock_corrected_events": int(accepted["clock_corrected"].sum()),
        "malformed_messages": int((~truth["valid"]).sum()),
        "malformed": {
            kind: int(malformed.filter(pl.col("malformed_reason") == kind)["len"].sum())
            for kind in MALFORMED_KINDS
        },
        "first_receive": truth["kafka_timestamp"].min(),
        "last_receive": truth["kafka_timestamp"].max(),
    }


def produce(
    log: EventLog,
    messages: pa.Table,
    *,
    chunk_rows: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send `messages` in receive-time order, `chunk_rows` at a time; returns the count sent."""
    total = messages.num_rows
    sent = 0
    for offset in range(0, total, chunk_rows):
        chunk = messages.slice(offset, chunk_rows)
        log.produce(chunk)
        sent += chunk.num_rows
        if progress is not None:
            progress(sent, total)
    return sent
