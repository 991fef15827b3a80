"""The demo that `make demo` runs, on a small day: a real broker on a free port, the lake,
warehouse and Dagster instance under tmp_path; the marts must equal the independent expectation
and the report must hold its charts, as a real headless Chromium renders them."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from clickstream_tools.demo import run_demo
from clickstream_tools.report import PALETTE
from core.settings import Settings
from resources.broker import free_port
from tests.helpers import assert_marts_match, browser

pytestmark = pytest.mark.integration

DAY = date(2026, 3, 10)
CHART_TITLES = (
    "Daily active users by platform",
    "Hourly events by type",
    "Top titles by plays",
    "Campaign reach",
    "Late-arrival profile",
    "Duplicate profile",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    env = {
        "CLICKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "CLICKSTREAM_LAKE_URL": str(root / "lake"),
        "CLICKSTREAM_WAREHOUSE": str(root / "warehouse.duckdb"),
        "DAGSTER_HOME": str(root / "dagster"),
    }
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings.from_env()
        summary = run_demo(settings, events=20_000, day=DAY, log=lines.append)
        yield settings, summary, lines, root


def test_the_demo_marts_equal_the_expectation(demo):
    settings, summary, _, root = demo
    assert summary["marts_match"] and all(summary["marts_match"].values())
    assert summary["pipeline"]["failed_runs"] == 0
    assert summary["pipeline"]["duplicates_removed"] > 0
    assert summary["pipeline"]["late_events"] > 0
    assert summary["pipeline"]["quarantined"]
    # Checked here again, independently of the demo's own comparison.
    assert_marts_match(settings.warehouse, pl.read_parquet(root / "expected/ground_truth.parquet"))


def test_the_demo_prints_a_summary(demo):
    _, summary, lines, _ = demo
    text = "\n".join(lines)
    assert "equals the independent expectation" in text
    assert "DIFFERS" not in text
    assert summary["report"] in text
    assert "make ui" in text


def test_the_demo_prints_one_line_per_stage(demo):
    _, _, lines, _ = demo
    stages = ("generate", "produce", "landing", "cleaning", "marts", "report")
    printed = [line.split()[0] for line in lines if line.split() and line.split()[0] in stages]
    assert printed == list(stages)
    for line in lines:
        if line.split() and line.split()[0] in stages:
            assert re.match(r"\w+ +\d+\.\d s  \S", line), line  # and how long it took


def test_the_report_holds_every_chart(demo):
    _, summary, _, root = demo
    report = root / "report" / "index.html"
    assert summary["report"] == str(report)
    page = report.read_text()
    # Self-contained: nothing to run and nothing to fetch (SVG namespaces are names, not fetches).
    assert "<script" not in page and "http" not in re.sub(r"http://www\.w3\.org/[\w/.]+", "", page)
    figures = re.findall(r"<figure><figcaption>(.*?)</figcaption><svg(.*?)</svg>", page, re.S)
    assert len(figures) == len(CHART_TITLES)
    for title in CHART_TITLES:
        body = next((svg for caption, svg in figures if caption.startswith(title)), None)
        assert body is not None, f"no chart {title!r}"
        # Bars are filled, lines stroked, in the first series' colour: the chart holds data.
        assert PALETTE[0] in body, f"chart {title!r} draws nothing"


def test_a_browser_renders_the_report_charts(demo):
    _, summary, _, root = demo
    screenshot = root / "report.png"
    browser(
        root, "--window-size=1400,2600", f"--screenshot={screenshot}", f"file://{summary['report']}"
    )
    pixels = (imread(screenshot)[..., :3] * 255).round()

    def painted(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=-1) <= 8).sum())

    # Six charts of bars and lines in the first series' colour, two with a second series.
    assert painted(PALETTE[0]) > 20_000
    assert painted(PALETTE[1]) > 1_000
