"""The independent oracle: the contract's marts computed from the ground truth by the contract's
rules alone (validity as injected, first received copy, the device-clock rule), never from what
the pipeline wrote."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from clickstream_tools.generator.spec import MALFORMED_KINDS
from core.contract import PLATFORMS


def accepted_events(truth: pl.DataFrame) -> pl.DataFrame:
    """The events the contract counts: valid copies only; per event_id, the first received copy
    (Kafka timestamp, then offset: copies share the device key, hence the partition, and were
    produced in message order). Device clocks: with sent_at, an offset (receive time - sent_at)
    over 60 s is removed from the event time; without, a clock more than 5 minutes ahead of the
    receive time takes the receive time."""
    received = pl.col("kafka_timestamp").cast(pl.Datetime("us", "UTC"))
    offset = received - pl.col("sent_at")
    return (
        truth.filter(pl.col("valid"))
        .sort(["kafka_timestamp_ms", "message_index"])
        .unique("event_id", keep="first", maintain_order=True)
        .with_columns(
            clock_corrected=pl.when(pl.col("sent_at").is_not_null())
            .then(offset.abs() > pl.duration(seconds=60))
            .otherwise((pl.col("event_time") - received) > pl.duration(minutes=5))
        )
        .with_columns(
            event_time=pl.when(pl.col("clock_corrected") & pl.col("sent_at").is_not_null())
            .then(pl.col("event_time") + offset)
            .when(pl.col("clock_corrected"))
            .then(received)
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
        "sent_at_messages": int(truth["sent_at"].is_not_null().sum()),
        "malformed_messages": int((~truth["valid"]).sum()),
        "malformed": {
            kind: int(malformed.filter(pl.col("malformed_reason") == kind)["len"].sum())
            for kind in MALFORMED_KINDS
        },
        "first_receive": truth["kafka_timestamp"].min(),
        "last_receive": truth["kafka_timestamp"].max(),
    }
