"""`clickstream demo`: the embedded broker, a day of synthetic traffic, catch-up, a summary and an
HTML report (clickstream_tools/report.py). The figures come from the lake, the warehouse and
Dagster's metadata; the generator's own answer is used only to check the marts."""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import polars as pl
from dagster import AssetKey, DagsterInstance

from clickstream_tools.catchup import CatchUpReport, instance_for, run_catch_up
from clickstream_tools.generator import (
    TrafficSpec,
    expected_marts,
    generate,
    produce,
    write_expected_marts,
)
from clickstream_tools.report import lake_frame, warehouse_frame, write_report
from core.ledger import Ledger
from core.settings import Settings
from resources.broker import EmbeddedBroker, answers_metadata
from resources.event_log import KafkaUnavailable
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.warehouse import read_mart

TOPIC_PARTITIONS = 4
DAY = timedelta(days=1)


def record_setting(env_file: Path, name: str, value: str) -> None:
    """Set `name=value` in a dotenv file (other lines kept), which `dagster dev` loads from its
    working directory: `make ui` then sees what the demo ran with."""
    lines = env_file.read_text(encoding="utf-8").splitlines() if env_file.exists() else []
    kept = [line for line in lines if line.split("=", 1)[0].strip() != name]
    temporary = env_file.with_name(env_file.name + ".tmp")
    temporary.write_text("\n".join([*kept, f"{name}={value}"]) + "\n", encoding="utf-8")
    temporary.replace(env_file)


def _status(text: str) -> None:
    """A transient progress line on a terminal, overwritten by the next line; nothing otherwise."""
    if sys.stderr.isatty():
        print(f"\r{text[:100]}\x1b[K", end="", file=sys.stderr, flush=True)


def _stage(log, name: str, what: str, seconds: float) -> None:
    if sys.stderr.isatty():
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    log(f"{name:<9} {seconds:6.1f} s  {what}")


def run_demo(
    settings: Settings,
    *,
    day: date,
    events: int = 1_000_000,
    open_browser: bool = False,
    seed: int = 0,
    fresh: bool = True,
    report_dir: str | Path | None = None,
    verbose: bool = False,
    log=None,
) -> dict:
    """Run the demo end to end and return its summary, printed through `log` one line per stage
    (each catch-up run and Dagster's and dbt's own lines too when `verbose`)."""
    log = log or partial(print, flush=True)  # progress must show while it runs, even when piped
    if day < settings.start_date:
        raise ValueError(f"--day {day} is before CLICKSTREAM_START_DATE={settings.start_date}")
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    until = start + DAY + settings.allowed_lateness + timedelta(hours=1)
    data_dir = Path(settings.warehouse).parent
    report_dir = Path(report_dir) if report_dir else data_dir / "report"
    lake = LakeResource(url=settings.lake_url)
    timings: dict[str, float] = {}

    broker = None
    if not answers_metadata(settings.kafka_bootstrap):
        broker = EmbeddedBroker(settings.kafka_bootstrap).start()
        log(f"broker    started on {broker.bootstrap} (in memory)")
    try:
        kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic)
        kafka.create_topic(TOPIC_PARTITIONS)
        held = sum(kafka.high_watermarks(dict.fromkeys(kafka.partitions(), 0)).values())
        if held:
            raise KafkaUnavailable(
                f"topic {settings.topic!r} on {settings.kafka_bootstrap} already holds {held:,} "
                "records: the demo needs an empty topic (restart `clickstream broker` or set "
                "CLICKSTREAM_TOPIC)"
            )
        if fresh:
            _reset(settings, lake, log)
        instance = instance_for(settings)

        began = time.perf_counter()
        _status(f"generating {events:,} events of {day}")
        traffic = generate(
            TrafficSpec(
                start=start,
                end=start + DAY,
                events=events,
                seed=seed,
                receive_until=start + DAY + timedelta(hours=3),
            )
        )
        write_expected_marts(traffic.truth, data_dir / "expected")
        timings["generate"] = time.perf_counter() - began
        messages = traffic.messages.num_rows
        _stage(
            log,
            "generate",
            f"{events:,} events of {day} as {messages:,} messages",
            timings["generate"],
        )

        began = time.perf_counter()

        def progress(sent: int, total: int) -> None:
            rate = sent / max(time.perf_counter() - began, 1e-9)
            _status(f"producing {sent:,}/{total:,} messages ({rate:,.0f} msg/s)")

        produce(
            kafka,
            traffic.messages,
            chunk_rows=100_000,
            progress=progress,
            workers=os.cpu_count() or 1,
        )
        timings["produce"] = time.perf_counter() - began
        rate = messages / max(timings["produce"], 1e-9)
        _stage(
            log,
            "produce",
            f"{messages:,} messages to {settings.topic} ({rate:,.0f} msg/s)",
            timings["produce"],
        )

        began = time.perf_counter()
        report = run_catch_up(
            settings,
            until=until,
            instance=instance,
            log=log if verbose else _status,
            verbose=verbose,
        )
        timings["catch-up"] = time.perf_counter() - began
    finally:
        if broker is not None:
            broker.stop()

    summary = summarize(settings, lake, instance, report, traffic.truth, day)
    by_stage = report.seconds_by_stage()
    for stage, what in _catch_up_lines(summary["pipeline"], report).items():
        _stage(log, stage, what, by_stage.get(stage, 0.0))
    summary["timings"] = {**timings, **{f"  {k}": v for k, v in by_stage.items()}}
    began = time.perf_counter()
    summary["report"] = str(write_report(settings, lake, summary, report_dir / "index.html"))
    _stage(log, "report", summary["report"], time.perf_counter() - began)
    print_summary(summary, log)
    if open_browser:
        import webbrowser

        webbrowser.open(Path(summary["report"]).resolve().as_uri())
    return summary


def _catch_up_lines(pipe: dict, report: CatchUpReport) -> dict[str, str]:
    """What each catch-up stage did, in counts read from what it wrote."""
    runs = dict.fromkeys(("landing", "cleaning", "marts"), 0)
    for run in report.runs:
        runs[run["stage"]] = runs.get(run["stage"], 0) + 1

    def plural(count: int, noun: str) -> str:
        return f"{count:,} {noun}{'' if count == 1 else 's'}"

    def counted(stage: str) -> str:
        return plural(runs[stage], "run")

    quarantined = sum(pipe["quarantined"].values())
    return {
        "landing": f"{pipe['landed_rows']:,} rows in {pipe['ingest_hours_landed']} ingest hours"
        f", {counted('landing')}",
        "cleaning": f"{pipe['clean_events']:,} events in {pipe['event_hours_cleaned']} event "
        f"hours ({pipe['duplicates_removed']:,} duplicates, {quarantined:,} quarantined)"
        f", {counted('cleaning')}",
        "marts": f"{plural(pipe['mart_days'], 'day')} of marts, {counted('marts')}",
    }


def _reset(settings: Settings, lake: LakeResource, log) -> None:
    """Start from nothing: a fresh broker has fresh offsets, so the old ledger must go too."""
    for tree in ("bronze", "silver", "quarantine"):
        lake.remove(tree)
    if os.path.exists(settings.warehouse):
        os.remove(settings.warehouse)
    home = Path(settings.dagster_home)
    if home.exists():
        for child in home.iterdir():
            if child.name != "dagster.yaml":  # the instance settings `make` copied in
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    log(f"reset     the lake ({settings.lake_url}), the warehouse and {home}")


def _latest_metadata(instance: DagsterInstance, asset: str) -> dict[str, dict]:
    """The metadata of the latest materialization of each partition of `asset`."""
    latest: dict[str, dict] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(AssetKey(asset), limit=1000, cursor=cursor)
        for record in result.records:
            materialization = record.asset_materialization
            if materialization and materialization.partition not in latest:
                latest[materialization.partition or ""] = {
                    k: v.value for k, v in materialization.metadata.items()
                }
        if not result.has_more:
            return latest
        cursor = result.cursor


def marts_match(settings: Settings, truth: pl.DataFrame) -> dict[str, bool]:
    """Whether each warehouse mart equals the generator's independent computation."""
    matches = {}
    for name, expected in expected_marts(truth).items():
        got = read_mart(settings.warehouse, name, expected.columns)
        expected = expected.sort(expected.columns)
        matches[name] = got.shape == expected.shape and got.cast(expected.schema).equals(expected)
    return matches


def summarize(
    settings: Settings,
    lake: LakeResource,
    instance: DagsterInstance,
    report: CatchUpReport,
    truth: pl.DataFrame,
    day: date,
) -> dict:
    """What the marts say and what the pipeline did, read from what it wrote."""
    ledger = Ledger(lake)
    manifests = ledger.manifests(ledger.recorded_hours())
    cleaned = _latest_metadata(instance, "events")
    quarantined = warehouse_frame(
        settings,
        "select reason, count(*) as n from stg_quarantined_events group by all order by n desc",
    )
    silver = lake_frame(lake, "silver/events/*/*/*.parquet", ["clock_corrected"])
    dau = warehouse_frame(
        settings, f"select * from fct_daily_active_users where event_date = '{day.isoformat()}'"
    )
    titles = warehouse_frame(
        settings,
        "select title_id, sum(plays) as plays, sum(unique_viewers) as viewers "
        f"from fct_daily_title_plays where event_date = '{day.isoformat()}' "
        "group by all order by plays desc, title_id limit 10",
    )
    campaigns = warehouse_frame(
        settings,
        "select campaign_id, sum(impressions) as impressions, sum(unique_viewers) as reach "
        f"from fct_daily_campaign_impressions where event_date = '{day.isoformat()}' "
        "group by all order by reach desc, campaign_id limit 10",
    )
    return {
        "day": day.isoformat(),
        "dau": dau.to_dicts()[0] if dau.height else {},
        "top_titles": titles.to_dicts(),
        "top_campaigns": campaigns.to_dicts(),
        "pipeline": {
            "ingest_hours_landed": len(manifests),
            "landed_rows": sum(m.rows for m in manifests.values()),
            "event_hours_cleaned": len(cleaned),
            "clean_events": sum(int(m.get("events", 0)) for m in cleaned.values()),
            "duplicates_removed": sum(int(m.get("duplicates", 0)) for m in cleaned.values()),
            "late_events": sum(int(m.get("late_events", 0)) for m in cleaned.values()),
            "clock_corrected": int(silver["clock_corrected"].sum()) if silver.height else 0,
            "quarantined": dict(zip(quarantined["reason"], quarantined["n"], strict=True)),
            "mart_days": int(
                warehouse_frame(settings, "select count(*) from fct_daily_active_users").item()
            ),
            "runs": len(report.runs),
            "failed_runs": sum(not run["success"] for run in report.runs),
        },
        "marts_match": marts_match(settings, truth),
    }


def print_summary(summary: dict, log=print) -> None:
    """What the marts say, what the pipeline found, and the check; the stage lines came first."""
    dau, pipe = summary["dau"], summary["pipeline"]
    lines = [
        f"\n== {summary['day']} ==",
        f"active users {dau.get('active_users', 0):,} (signed in {dau.get('logged_in_users', 0):,})"
        f", devices {dau.get('active_devices', 0):,}, events {dau.get('events', 0):,}",
        "top titles    "
        + ", ".join(f"{t['title_id']} {t['plays']:,}" for t in summary["top_titles"][:5]),
        "top campaigns "
        + ", ".join(f"{c['campaign_id']} {c['reach']:,}" for c in summary["top_campaigns"][:5]),
        "\n== what the pipeline found ==",
        f"late events   {pipe['late_events']:,}",
        f"clock fixed   {pipe['clock_corrected']:,} events counted at receive time",
        "quarantined   "
        + (", ".join(f"{r} {n:,}" for r, n in pipe["quarantined"].items()) or "none"),
        f"runs          {pipe['runs']} ({pipe['failed_runs']} failed)",
        "\n== check ==",
        *(
            f"{name:<36} {'equals' if ok else 'DIFFERS FROM'} the independent expectation"
            for name, ok in summary["marts_match"].items()
        ),
        f"\nreport: {summary['report']}",
        "Open the Dagster UI on the same data: make ui",
    ]
    for line in lines:
        log(line)
