"""The demo's HTML report: what the warehouse and the lake hold, as a header table and six charts
that matplotlib draws as inline SVG, so the page is one file with no script and nothing fetched."""

from __future__ import annotations

import html
import io
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
from matplotlib import cycler, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from core.settings import Settings
from resources.lake import LakeResource

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
SIZE_INCHES = (6.6, 2.8)
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
_STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, searchable
    "font.size": 8,
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.color": "#e5e5e5",
    "axes.axisbelow": True,
}
_THOUSANDS = FuncFormatter(lambda value, _: f"{value:,.0f}")


# --- readers -----------------------------------------------------------------------------------


def warehouse_frame(settings: Settings, query: str) -> pl.DataFrame:
    """The result of `query` on the warehouse (read-only, times in UTC)."""
    with duckdb.connect(settings.warehouse, read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        return con.sql(query).pl()


def lake_frame(lake: LakeResource, pattern: str, columns: list[str]) -> pl.DataFrame:
    """`columns` of every lake Parquet file matching `pattern` (empty when none does)."""
    paths = lake.fs.glob(lake.path(pattern))
    if not paths:
        return pl.DataFrame(schema=columns)
    frame = pl.from_arrow(pq.read_table(paths, filesystem=lake.fs, columns=columns))
    assert isinstance(frame, pl.DataFrame)
    return frame


# --- charts: each returns a <figure> holding one inline SVG --------------------------------------


def _figure(title: str, draw) -> str:
    """Draw on a fresh figure (no pyplot: no global state) and inline it as SVG under `title`."""
    # A salt per chart keeps the SVG element ids unique across the page.
    with rc_context({**_STYLE, "svg.hashsalt": title}):
        figure = Figure(figsize=SIZE_INCHES, layout="constrained")
        draw(figure.add_subplot())
        buffer = io.StringIO()
        figure.savefig(
            buffer, format="svg", metadata=dict.fromkeys(("Creator", "Date", "Format", "Type"))
        )
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: it is inline HTML
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>"


def bar_chart(
    title: str, labels: list[str], series: dict[str, list[float]], *, log_scale: bool = False
) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    title += " (log scale)" if log_scale else ""

    def draw(axes) -> None:
        width = 0.8 / max(len(series), 1)
        for s, (name, values) in enumerate(series.items()):
            offsets = [i - 0.4 + width * (s + 0.5) for i in range(len(labels))]
            axes.bar(offsets, values, width, label=name)
        axes.set_xticks(range(len(labels)), labels)
        if log_scale:
            axes.set_yscale("symlog", linthresh=1)
        axes.yaxis.set_major_formatter(_THOUSANDS)
        if len(series) > 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)

    return _figure(title, draw)


def line_chart(title: str, labels: list[str], series: dict[str, list[float]]) -> str:
    """One line per series over shared x labels (hours)."""

    def draw(axes) -> None:
        for name, values in series.items():
            axes.plot(range(len(labels)), values, label=name, linewidth=1.5)
        step = max(1, len(labels) // 6)
        axes.set_xticks(range(0, len(labels), step), labels[::step])
        axes.yaxis.set_major_formatter(_THOUSANDS)
        axes.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)

    return _figure(title, draw)


def hbar_chart(title: str, labels: list[str], values: list[float], unit: str) -> str:
    """Horizontal bars, largest at the top, each labelled with its value."""

    def draw(axes) -> None:
        bars = axes.barh(labels, values)
        axes.invert_yaxis()
        axes.bar_label(bars, [f"{v:,.0f} {unit}".strip() for v in values], padding=3)
        axes.xaxis.set_major_formatter(_THOUSANDS)
        axes.grid(False)
        axes.margins(x=0.15)

    return _figure(title, draw)


def report_charts(settings: Settings, lake: LakeResource) -> dict[str, str]:
    """Chart title -> <figure>, from the warehouse and the lake (Polars computes, matplotlib
    draws)."""
    charts: dict[str, str] = {}
    by_platform = warehouse_frame(
        settings,
        "select strftime(event_date, '%Y-%m-%d') as day, platform, active_users "
        "from fct_daily_active_users_by_platform order by all",
    ).pivot(on="platform", index="day", values="active_users")
    title = "Daily active users by platform"
    charts[title] = bar_chart(
        title,
        by_platform["day"].to_list(),
        {p: by_platform[p].fill_null(0).to_list() for p in by_platform.columns if p != "day"},
    )

    hourly = warehouse_frame(
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

    titles = warehouse_frame(
        settings,
        "select title_id, sum(plays) as plays from fct_daily_title_plays "
        "group by all order by plays desc, title_id limit 10",
    )
    title = "Top titles by plays"
    charts[title] = hbar_chart(title, titles["title_id"].to_list(), titles["plays"].to_list(), "")
    reach = warehouse_frame(
        settings,
        "select campaign_id, sum(unique_viewers) as reach from fct_daily_campaign_impressions "
        "group by all order by reach desc, campaign_id limit 10",
    )
    title = "Campaign reach (distinct viewers)"
    charts[title] = hbar_chart(
        title, reach["campaign_id"].to_list(), reach["reach"].to_list(), "viewers"
    )

    silver = lake_frame(lake, "silver/events/*/*/*.parquet", ["event_hour", "ingest_hour"])
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

    bronze = lake_frame(lake, "bronze/*/*/*.parquet", ["value"])
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
    per_copies = dict(zip(copies["copies"], copies["len"], strict=True))
    title = "Duplicate profile: copies received per event_id"
    charts[title] = bar_chart(
        title,
        ["1 (no duplicate)", "2", "3", "4", "5+"],
        {"events": [per_copies.get(k, 0) for k in range(1, 6)]},
        log_scale=True,
    )
    return charts


def write_report(settings: Settings, lake: LakeResource, summary: dict, path: Path) -> Path:
    """A self-contained HTML page: the summary table and the charts."""
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
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }}
figcaption {{ font-weight: 600; margin-bottom: .3rem; }}
figure svg {{ width: 100%; height: auto; }}
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
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)  # write-then-rename: a reader never sees half a page
    return path
