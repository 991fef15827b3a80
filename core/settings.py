"""The one place that reads the environment: every configuration variable of the contract.

A bad value fails at start with a message that names the variable and says what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

DEFAULTS = {
    "CLICKSTREAM_KAFKA_BOOTSTRAP": "localhost:9092",
    "CLICKSTREAM_TOPIC": "clickstream.events",
    "CLICKSTREAM_LAKE_URL": "data/lake",
    "CLICKSTREAM_WAREHOUSE": "data/warehouse.duckdb",
    "CLICKSTREAM_START_DATE": "2026-01-01",
    "CLICKSTREAM_ALLOWED_LATENESS": "3h",
    "DAGSTER_HOME": ".dagster_home",
    "CLICKSTREAM_RETENTION_BRONZE": "forever",
    "CLICKSTREAM_RETENTION_SILVER": "forever",
    "CLICKSTREAM_RETENTION_QUARANTINE": "forever",
    "CLICKSTREAM_COLLECTOR_ADDR": "127.0.0.1:8088",
    "CLICKSTREAM_COLLECTOR_STALL_MS": "100",
    "CLICKSTREAM_LANDING_SHARDS": "1",
    "CLICKSTREAM_LANDING_SLICES": "off",
    "CLICKSTREAM_EXECUTOR": "multiprocess",
}
EXECUTORS = ("multiprocess", "k8s")
"""Where a run's steps run: processes of the run's pod or machine, or each step a pod of its own
(dagster-k8s's `k8s_job_executor`, under the K8sRunLauncher)."""

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which variable and how to fix it."""


def parse_duration(text: str, *, variable: str) -> timedelta:
    """Parse `90m`, `3h`, `1d` or `45s` into a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(
            f"{variable}={text!r} is not a duration: use a whole number and a unit, "
            "such as 30m, 3h or 1d"
        )
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def parse_shards(text: str, *, variable: str) -> int:
    """A landing shard count: a whole number, 1 or more."""
    if not re.fullmatch(r"\s*\d+\s*", text) or int(text) < 1:
        raise ConfigError(
            f"{variable}={text!r} is not a shard count: use a whole number of 1 or more "
            "(1 lands every Kafka partition in one step; K splits them into K steps)"
        )
    return int(text)


def parse_stall_ms(text: str, *, variable: str) -> int:
    """The collector's stall threshold: whole milliseconds, from 20 (the watchdog wakes four
    times per threshold) to 999 (under each batch's own 1 s ack timeout)."""
    if not re.fullmatch(r"\s*\d+\s*", text) or not 20 <= int(text) <= 999:
        raise ConfigError(
            f"{variable}={text!r} is not a stall threshold: use a whole number of milliseconds "
            "from 20 to 999 (the broker counts as stalled when events have waited that long and "
            "no ack came back meanwhile)"
        )
    return int(text)


SLICES_OFF = "off"
SLICE_BOUNDS = (timedelta(minutes=1), timedelta(minutes=30))


def parse_slices(text: str, *, variable: str) -> timedelta | None:
    """How often the open hour lands a slice: `off` (None: each hour lands whole at its close)
    or a duration from 1m to 30m, such as 5m."""
    if text.strip().lower() == SLICES_OFF:
        return None
    low, high = SLICE_BOUNDS
    match = _DURATION.match(text)
    interval = parse_duration(text, variable=variable) if match else None
    if interval is None or not low <= interval <= high:
        raise ConfigError(
            f"{variable}={text!r} is not a slice interval: use off (each hour lands whole when it "
            "closes) or a duration from 1m to 30m, such as 5m (the open hour lands that often, "
            "so its close leaves only the last minutes to land)"
        )
    return interval


FOREVER = "forever"


def parse_retention(text: str, *, variable: str) -> timedelta | None:
    """`forever` (None: never deleted) or a whole number of days, such as `400d`."""
    if text.strip().lower() == FOREVER:
        return None
    match = _DURATION.match(text)
    if not match or match[2] != "d" or int(match[1]) < 1:
        raise ConfigError(
            f"{variable}={text!r} is not a retention: use forever or a whole number of days, "
            "such as 400d"
        )
    return timedelta(days=int(match[1]))


@dataclass(frozen=True)
class Retention:
    """How long each lake tier keeps a partition after its period ends; None keeps it forever."""

    bronze: timedelta | None
    silver: timedelta | None
    quarantine: timedelta | None

    @classmethod
    def from_values(cls, value: Mapping[str, str]) -> Retention:
        days = {
            tier: parse_retention(value[name], variable=name)
            for tier, name in (
                ("bronze", "CLICKSTREAM_RETENTION_BRONZE"),
                ("silver", "CLICKSTREAM_RETENTION_SILVER"),
                ("quarantine", "CLICKSTREAM_RETENTION_QUARANTINE"),
            )
        }
        bronze, silver = days["bronze"], days["silver"]
        # A silver hour inside its horizon must stay rebuildable from bronze.
        if bronze is not None and (silver is None or silver > bronze):
            raise ConfigError(
                f"CLICKSTREAM_RETENTION_BRONZE={value['CLICKSTREAM_RETENTION_BRONZE']!r} is "
                f"shorter than CLICKSTREAM_RETENTION_SILVER="
                f"{value['CLICKSTREAM_RETENTION_SILVER']!r}: silver is rebuilt from bronze, so "
                "keep bronze at least as long as silver (or forever)"
            )
        return cls(**days)


def _absolute(url: str) -> str:
    if "://" in url:
        return url.rstrip("/")
    return os.path.abspath(url)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    topic: str
    lake_url: str
    warehouse: str
    start_date: date
    allowed_lateness: timedelta
    dagster_home: str
    retention: Retention
    collector_addr: str = DEFAULTS["CLICKSTREAM_COLLECTOR_ADDR"]
    collector_stall_ms: int = 100
    landing_shards: int = 1
    landing_slices: timedelta | None = None
    """How often the open hour lands a slice (None: hours land whole at their close)."""
    executor: str = "multiprocess"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        value = {name: source.get(name) or default for name, default in DEFAULTS.items()}
        try:
            start_date = date.fromisoformat(value["CLICKSTREAM_START_DATE"])
        except ValueError:
            raise ConfigError(
                f"CLICKSTREAM_START_DATE={value['CLICKSTREAM_START_DATE']!r} is not a date: "
                "use YYYY-MM-DD, such as 2026-01-01"
            ) from None
        lateness = parse_duration(
            value["CLICKSTREAM_ALLOWED_LATENESS"], variable="CLICKSTREAM_ALLOWED_LATENESS"
        )
        lake_url = value["CLICKSTREAM_LAKE_URL"]
        if "://" in lake_url and not lake_url.startswith(("s3://", "file://")):
            raise ConfigError(
                f"CLICKSTREAM_LAKE_URL={lake_url!r}: use a local path or s3://bucket/prefix"
            )
        if value["CLICKSTREAM_EXECUTOR"] not in EXECUTORS:
            raise ConfigError(
                f"CLICKSTREAM_EXECUTOR={value['CLICKSTREAM_EXECUTOR']!r} is not an executor: use "
                "multiprocess (steps are processes of the run's pod or machine) or k8s (each step "
                "its own pod, with the K8sRunLauncher)"
            )
        if not value["CLICKSTREAM_TOPIC"].strip():
            raise ConfigError("CLICKSTREAM_TOPIC is empty: name the events topic")
        return cls(
            kafka_bootstrap=value["CLICKSTREAM_KAFKA_BOOTSTRAP"],
            topic=value["CLICKSTREAM_TOPIC"],
            lake_url=_absolute(lake_url),
            warehouse=_absolute(value["CLICKSTREAM_WAREHOUSE"]),
            start_date=start_date,
            allowed_lateness=lateness,
            dagster_home=os.path.abspath(value["DAGSTER_HOME"]),
            retention=Retention.from_values(value),
            collector_addr=value["CLICKSTREAM_COLLECTOR_ADDR"],
            collector_stall_ms=parse_stall_ms(
                value["CLICKSTREAM_COLLECTOR_STALL_MS"], variable="CLICKSTREAM_COLLECTOR_STALL_MS"
            ),
            landing_shards=parse_shards(
                value["CLICKSTREAM_LANDING_SHARDS"], variable="CLICKSTREAM_LANDING_SHARDS"
            ),
            landing_slices=parse_slices(
                value["CLICKSTREAM_LANDING_SLICES"], variable="CLICKSTREAM_LANDING_SLICES"
            ),
            executor=value["CLICKSTREAM_EXECUTOR"],
        )

    @property
    def start_datetime(self) -> datetime:
        return datetime(
            self.start_date.year, self.start_date.month, self.start_date.day, tzinfo=UTC
        )


def load() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings.from_env()
