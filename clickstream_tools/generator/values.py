"""The message bytes: each event's JSON value built column-wise from fragments, and broken on
purpose where the ground truth says so."""

from __future__ import annotations

import polars as pl

from clickstream_tools.generator.spec import MALFORMED_KINDS, TZ_OFFSETS_MIN, TZ_USES_Z, US
from core.contract import TITLE_EVENTS


def pick(options: tuple[str, ...] | list[str], index: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(list(options))).gather(index)


def _field(name: str, value: pl.Expr, *, quoted: bool = True) -> pl.Expr:
    """`,"name":"value"` (or unquoted), or empty when the value is null: the field is absent."""
    quote = '"' if quoted else ""
    text = pl.concat_str([pl.lit(f',"{name}":{quote}'), value.cast(pl.String), pl.lit(quote)])
    return pl.when(value.is_not_null()).then(text).otherwise(pl.lit(""))


def rfc3339() -> pl.Expr:
    """The device's local wall time with its offset, at 0, 3 or 6 fraction digits."""
    offset_min = pick([str(v) for v in TZ_OFFSETS_MIN], pl.col("tz")).cast(pl.Int64)
    uses_z = pick(["1" if v else "0" for v in TZ_USES_Z], pl.col("tz")) == "1"
    local = pl.from_epoch(pl.col("event_time_us") + offset_min * 60 * US, "us")
    fraction = (pl.col("event_time_us") % US).cast(pl.String).str.zfill(6)
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


def json_value(*, broken: bool) -> pl.Expr:
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
            required("event_type", pick(_UNKNOWN_TYPES, variant % len(_UNKNOWN_TYPES))),
        ),
        (
            is_kind["missing_title_id"] & ~event_type.is_in(TITLE_EVENTS),
            pl.lit(',"event_type":"play"'),
        ),
        (is_kind["missing_campaign_id"], pl.lit(',"event_type":"ad_impression"')),
    )
    naive = pl.from_epoch("event_time_us", "us").dt.strftime("%Y-%m-%dT%H:%M:%S")
    bad_time = pick(_BAD_TIMES, variant % len(_BAD_TIMES))
    f_event_time = unless(
        required("event_time", pl.col("event_time_text")),
        (is_kind["missing_field"] & (variant % 6 == 3), pl.lit("")),
        (
            is_kind["wrong_type"] & (variant % 5 == 2),
            pl.format(',"event_time":{}', pl.col("event_time_us") // US),
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
    # The SDK's sent_at, at microseconds in UTC; broken as the wrong type or unparseable.
    sent_at_text = pl.from_epoch("sent_at_us", "us").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    f_sent_at = unless(
        _field("sent_at", sent_at_text),
        (is_kind["bad_sent_at"] & (variant % 3 == 0), pl.lit(',"sent_at":1764329000')),
        (is_kind["bad_sent_at"] & (variant % 3 == 1), pl.lit(',"sent_at":"now"')),
        (is_kind["bad_sent_at"], pl.lit(',"sent_at":"2026-11-28 10:00:00"')),
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
            _field("page", pl.when(~is_app).then(pick(_PAGES, pl.col("page_idx")))),
            _field("app_version", pl.when(is_app).then(pl.lit("7.12.0"))),
            _field("position_ms", pl.when(media).then(pl.col("position_ms")), quoted=False),
            pl.when(pl.col("extra_idx") < len(_EXTRAS))
            .then(pick(_EXTRAS, pl.col("extra_idx").clip(0, len(_EXTRAS) - 1)))
            .otherwise(pl.lit("")),
            f_sent_at,
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
