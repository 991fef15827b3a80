"""`clickstream demo`: the embedded broker, a day of synthetic traffic, catch-up, a summary and an
HTML report. The figures come from the lake, the warehouse and Dagster's metadata; the generator's
own answer is used only to check the marts."""

from __future__ import annotations

import html
import math
import os
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
from dagster import AssetKey, DagsterInstance

from clickstream_tools.catchup import CatchUpReport, instance_for, run_catch_up
from clickstream_tools.generator import (
    TrafficSpec,
    expected_marts,
    generate,
    produce,
    write_expected_marts,
)
from core.ledger import Ledger
from core.settings import Settings
from resources.broker import EmbeddedBroker, answers_metadata
from resources.kafka import KafkaResource, KafkaUnavailable
from resources.lake import LakeResource
from resources.warehouse import read_mart

TOPIC_PARTITIONS = 4
DAY = timedelta(days=1)


def default_day(today: date | None = None) -> date:
    """Two days ago (UTC): the whole day, its late arrivals and its watermark are in the past."""
    return (today or datetime.now(UTC).date()) - 2 * DAY


def run_demo(
    settings: Settings,
    *,
    events: int = 1_000_000,
    day: date | None = None,
    open_browser: bool = False,
    seed: int = 0,
    fresh: bool = True,
    report_dir: str | Path | None = None,
    log=None,
) -> dict:
    """Run the demo end to end and return its summary (also printed through `log`)."""
    log = log or partial(print, flush=True)  # progress must show while it runs, even when piped
    day = day or default_day()
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
        log(f"started the embedded broker on {broker.bootstrap} (in memory)")
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
        traffic = generate(
            TrafficSpec(
                start=start,
                end=start + DAY,
                events=events,
                seed=seed,
                receive_until=start + DAY + timedelta(hours=3),
            )
        )
        timings["generate"] = time.perf_counter() - began
        log(
            f"generated {events:,} events of {day} as {traffic.messages.num_rows:,} messages "
            f"in {timings['generate']:.1f} s"
        )
        write_expected_marts(traffic.truth, data_dir / "expected")

        began = time.perf_counter()

        def progress(sent: int, total: int) -> None:
            rate = sent / max(time.perf_counter() - began, 1e-9)
            log(f"produced {sent:,}/{total:,} messages ({rate:,.0f} msg/s)")

        produce(kafka, traffic.messages, chunk_rows=100_000, progress=progress)
        timings["produce"] = time.perf_counter() - began

        began = time.perf_counter()
        report = run_catch_up(settings, until=until, instance=instance, log=log)
        timings["catch-up"] = time.perf_counter() - began
    finally:
        if broker is not None:
            broker.stop()

    summary = summarize(settings, lake, instance, report, traffic.truth, day)
    summary["timings"] = {**timings, **{f"  {k}": v for k, v in report.seconds_by_stage().items()}}
    summary["report"] = str(write_report(settings, lake, summary, report_dir / "index.html"))
    print_summary(summary, log)
    if open_browser:
        import webbrowser

        webbrowser.open(Path(summary["report"]).resolve().as_uri())
    return summary


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
    log(f"reset the lake ({settings.lake_url}), the warehouse and {home}")


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


def _lake_frame(lake: LakeResource, pattern: str, columns: list[str]) -> pl.DataFrame:
    paths = lake.fs.glob(lake.path(pattern))
    if not paths:
        return pl.DataFrame(schema=columns)
    frame = pl.from_arrow(pq.read_table(paths, filesystem=lake.fs, columns=columns))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _warehouse(settings: Settings, query: str) -> pl.DataFrame:
    with duckdb.connect(settings.warehouse, read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        return con.sql(query).pl()


def marts_match(settings: Settings, truth: pl.DataFrame) -> dict[str, bool]:
    """Whether each warehouse mart equals the generator's independent computation."""
    matches = {}
    for name, expected in expected_marts(truth).items():
        got = read_mart(settings.warehouse, name, expected.columns)
        if name == "fct_daily_active_users":
            got = got.filter(pl.col("events") > 0)  # days with nothing valid keep a zero row
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
    quarantined = _warehouse(
        settings,
        "select reason, count(*) as n from quarantined_events group by all order by n desc",
    )
    silver = _lake_frame(lake, "silver/events/*/*/*.parquet", ["clock_corrected"])
    dau = _warehouse(
        settings, f"select * from fct_daily_active_users where event_date = '{day.isoformat()}'"
    )
    titles = _warehouse(
        settings,
        "select title_id, sum(plays) as plays, sum(unique_viewers) as viewers "
        f"from fct_daily_title_plays where event_date = '{day.isoformat()}' "
        "group by all order by plays desc, title_id limit 10",
    )
    campaigns = _warehouse(
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
            "runs": len(report.runs),
            "failed_runs": sum(not run["success"] for run in report.runs),
        },
        "marts_match": marts_match(settings, truth),
    }


def print_summary(summary: dict, log=print) -> None:
    dau, pipe = summary["dau"], summary["pipeline"]
    lines = [
        f"\n== {summary['day']} ==",
        f"active users {dau.get('active_users', 0):,} (signed in {dau.get('logged_in_users', 0):,})"
        f", devices {dau.get('active_devices', 0):,}, events {dau.get('events', 0):,}",
        "top titles    "
        + ", ".join(f"{t['title_id']} {t['plays']:,}" for t in summary["top_titles"][:5]),
        "top campaigns "
        + ", ".join(f"{c['campaign_id']} {c['reach']:,}" for c in summary["top_campaigns"][:5]),
        "\n== what the pipeline did ==",
        f"landed        {pipe['landed_rows']:,} rows in {pipe['ingest_hours_landed']} ingest hours",
        f"cleaned       {pipe['clean_events']:,} events in "
        f"{pipe['event_hours_cleaned']} event hours",
        f"duplicates    {pipe['duplicates_removed']:,} removed",
        f"late events   {pipe['late_events']:,}",
        f"clock fixed   {pipe['clock_corrected']:,} events counted at receive time",
        "quarantined   "
        + (", ".join(f"{r} {n:,}" for r, n in pipe["quarantined"].items()) or "none"),
        f"runs          {pipe['runs']} ({pipe['failed_runs']} failed)",
        "\n== timings ==",
        *(f"{stage:<13} {seconds:7.1f} s" for stage, seconds in summary["timings"].items()),
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


# --- the report: Polars computes, the SVG is drawn here (no scripts, nothing fetched) ---------

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 10, 40


def _text(x: float, y: float, text: object, anchor: str = "middle", size: int = 11) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}">'
        f"{html.escape(str(text))}</text>"
    )


def _svg(title: str, body: list[str]) -> str:
    return (
        f'<figure><figcaption>{html.escape(title)}</figcaption><svg role="img" '
        f'aria-label="{html.escape(title)}" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg></figure>"
    )


def _legend(names: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = TOP + 14 * i
        color = PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect x="{WIDTH - RIGHT + 10}" y="{y}" width="10" height="10" fill="{color}"/>'
        )
        out.append(_text(WIDTH - RIGHT + 24, y + 9, name, "start"))
    return out


def _axis_y(top: float, scale_max: float, log_scale: bool = False) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    out = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#888"/>']
    for k in range(5):
        fraction = k / 4
        value = (10 ** (fraction * math.log10(scale_max + 1)) - 1) if log_scale else fraction * top
        y = HEIGHT - BOTTOM - fraction * plot_h
        out.append(_text(LEFT - 6, y + 4, f"{value:,.0f}", "end", 10))
    return out


def bar_chart(
    title: str,
    labels: list[str],
    series: dict[str, list[float]],
    *,
    log_scale: bool = False,
) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((v for values in series.values() for v in values), default=0) or 1

    def height(v: float) -> float:
        if log_scale:
            return plot_h * math.log10(v + 1) / math.log10(peak + 1)
        return plot_h * v / peak

    body = _axis_y(peak, peak, log_scale)
    group_w = plot_w / max(len(labels), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for s, (name, values) in enumerate(series.items()):
        for i, v in enumerate(values):
            x = LEFT + i * group_w + group_w * 0.1 + s * bar_w
            h = height(v)
            body.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[s % len(PALETTE)]}"><title>{html.escape(name)} '
                f"{html.escape(labels[i])}: {v:,.0f}</title></rect>"
            )
    step = max(1, len(labels) // 12)
    for i, label in enumerate(labels):
        if i % step == 0:
            body.append(_text(LEFT + (i + 0.5) * group_w, HEIGHT - BOTTOM + 14, label, size=10))
    if len(series) > 1:
        body += _legend(list(series))
    return _svg(title + (" (log scale)" if log_scale else ""), body)


def line_chart(title: str, labels: list[str], series: dict[str, list[float]]) -> str:
    """One line per series over shared x labels (hours)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((v for values in series.values() for v in values), default=0) or 1
    body = _axis_y(peak, peak)
    n = max(len(labels) - 1, 1)
    for s, (_, values) in enumerate(series.items()):
        points = " ".join(
            f"{LEFT + i * plot_w / n:.1f},{HEIGHT - BOTTOM - plot_h * v / peak:.1f}"
            for i, v in enumerate(values)
        )
        color = PALETTE[s % len(PALETTE)]
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
    step = max(1, len(labels) // 6)
    for i, label in enumerate(labels):
        if i % step == 0:
            body.append(_text(LEFT + i * plot_w / n, HEIGHT - BOTTOM + 14, label, size=10))
    body += _legend(list(series))
    return _svg(title, body)


def hbar_chart(title: str, labels: list[str], values: list[float], unit: str) -> str:
    """Horizontal bars, largest first, each labelled with its value."""
    plot_w = WIDTH - LEFT - RIGHT
    peak = max(values, default=0) or 1
    row_h = (HEIGHT - TOP - 10) / max(len(labels), 1)
    body = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = TOP + i * row_h
        w = plot_w * v / peak
        body.append(_text(LEFT - 6, y + row_h * 0.65, label, "end", 10))
        body.append(
            f'<rect x="{LEFT}" y="{y + row_h * 0.15:.1f}" width="{w:.1f}" '
            f'height="{row_h * 0.7:.1f}" fill="{PALETTE[0]}"/>'
        )
        body.append(_text(LEFT + w + 6, y + row_h * 0.65, f"{v:,.0f} {unit}", "start", 10))
    return _svg(title, body)


LATENESS_BUCKETS = (
    ("on time", 0, 1),
    ("1 h", 1, 2),
    ("2 h", 2, 3),
    ("3-5 h", 3, 6),
    ("6-11 h", 6, 12),
    ("12-23 h", 12, 24),
    ("24-47 h", 24, 48),
    ("48 h+", 48, 10**6),
)


def report_charts(settings: Settings, lake: LakeResource) -> dict[str, str]:
    """Chart title -> SVG figure, from the warehouse and the lake."""
    charts: dict[str, str] = {}
    by_platform = _warehouse(
        settings,
        "select strftime(event_date, '%Y-%m-%d') as day, platform, active_users "
        "from fct_daily_active_users_by_platform order by all",
    ).pivot(on="platform", index="day", values="active_users")
    platforms = [c for c in by_platform.columns if c != "day"]
    title = "Daily active users by platform"
    charts[title] = bar_chart(
        title,
        by_platform["day"].to_list(),
        {p: by_platform[p].fill_null(0).to_list() for p in platforms},
    )

    hourly = _warehouse(
        settings,
        "select strftime(event_hour, '%d %H:00') as hour, event_type, events "
        "from fct_hourly_events order by all",
    ).pivot(on="event_type", index="hour", values="events", sort_columns=True)
    title = "Hourly events by type"
    charts[title] = line_chart(
        title,
        hourly["hour"].to_list(),
        {t: hourly[t].fill_null(0).to_list() for t in hourly.columns if t != "hour"},
    )

    titles = _warehouse(
        settings,
        "select title_id, sum(plays) as plays from fct_daily_title_plays "
        "group by all order by plays desc, title_id limit 10",
    )
    title = "Top titles by plays"
    charts[title] = hbar_chart(title, titles["title_id"].to_list(), titles["plays"].to_list(), "")
    reach = _warehouse(
        settings,
        "select campaign_id, sum(unique_viewers) as reach from fct_daily_campaign_impressions "
        "group by all order by reach desc, campaign_id limit 10",
    )
    title = "Campaign reach (distinct viewers)"
    charts[title] = hbar_chart(
        title, reach["campaign_id"].to_list(), reach["reach"].to_list(), "viewers"
    )

    silver = _lake_frame(lake, "silver/events/*/*/*.parquet", ["event_hour", "ingest_hour"])
    lateness = silver.select(
        hours=((pl.col("ingest_hour") - pl.col("event_hour")).dt.total_hours()).clip(0)
    )["hours"]
    counts = [
        int(((lateness >= low) & (lateness < high)).sum()) for _, low, high in LATENESS_BUCKETS
    ]
    title = "Late-arrival profile: ingest hour minus event hour, landed events"
    charts[title] = bar_chart(
        title, [b[0] for b in LATENESS_BUCKETS], {"events": counts}, log_scale=True
    )

    bronze = _lake_frame(lake, "bronze/*/*/*.parquet", ["value"])
    copies = (
        bronze.select(
            event_id=pl.col("value").cast(pl.String, strict=False).str.json_path_match("$.event_id")
        )
        .drop_nulls()
        .group_by("event_id")
        .len()
        .group_by(copies=pl.col("len").clip(1, 5))
        .len()
        .sort("copies")
    )
    labels = ["1 (no duplicate)", "2", "3", "4", "5+"]
    per_copies = dict(zip(copies["copies"], copies["len"], strict=True))
    title = "Duplicate profile: copies received per event_id"
    charts[title] = bar_chart(
        title, labels, {"events": [per_copies.get(k, 0) for k in range(1, 6)]}, log_scale=True
    )
    return charts


def write_report(settings: Settings, lake: LakeResource, summary: dict, path: Path) -> Path:
    """A self-contained HTML page: the summary and inline SVG charts."""
    charts = report_charts(settings, lake)
    pipe = summary["pipeline"]
    rows = [
        ("landed rows", f"{pipe['landed_rows']:,}"),
        ("clean events", f"{pipe['clean_events']:,}"),
        ("duplicates removed", f"{pipe['duplicates_removed']:,}"),
        ("late events", f"{pipe['late_events']:,}"),
        ("clock-corrected", f"{pipe['clock_corrected']:,}"),
        *((f"quarantined: {r}", f"{n:,}") for r, n in pipe["quarantined"].items()),
        *((f"time: {s.strip()}", f"{v:.1f} s") for s, v in summary.get("timings", {}).items()),
        *(
            (f"check: {m}", "equals expectation" if ok else "DIFFERS")
            for m, ok in summary["marts_match"].items()
        ),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Clickstream demo {summary["day"]}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }}
figcaption {{ font-weight: 600; margin-bottom: .3rem; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ text-align: left; padding: .15rem .8rem; border-bottom: 1px solid #eee; }}
</style></head><body>
<h1>Clickstream demo: {summary["day"]}</h1>
<p>{summary["dau"].get("active_users", 0):,} active users,
{summary["dau"].get("events", 0):,} events.
Open the Dagster UI on the same data: <code>make ui</code>.</p>
<table>{table}</table>
<main>{"".join(charts.values())}</main>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
