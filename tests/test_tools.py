"""The demo's own pieces without a pipeline: the setting it leaves for `make ui`, and the
report's charts (inline SVG that holds the data it was given)."""

from __future__ import annotations

import re

from clickstream_tools.demo import record_setting
from clickstream_tools.report import PALETTE, bar_chart, hbar_chart, line_chart


def test_record_setting_replaces_its_line_and_keeps_the_others(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("AWS_REGION=eu-west-1\nCLICKSTREAM_START_DATE=2026-01-01\n")
    record_setting(env_file, "CLICKSTREAM_START_DATE", "2026-11-26")
    assert env_file.read_text() == "AWS_REGION=eu-west-1\nCLICKSTREAM_START_DATE=2026-11-26\n"
    fresh = tmp_path / "fresh.env"
    record_setting(fresh, "CLICKSTREAM_START_DATE", "2026-11-26")
    assert fresh.read_text() == "CLICKSTREAM_START_DATE=2026-11-26\n"


def _bars(svg: str, colour: str) -> int:
    return len(re.findall(rf"fill: {colour}", svg))


def test_charts_are_inline_svg_with_one_mark_per_value():
    grouped = bar_chart("By platform", ["d1", "d2", "d3"], {"web": [3, 2, 1], "ios": [1, 2, 3]})
    assert grouped.startswith("<figure><figcaption>By platform</figcaption><svg")
    assert "<?xml" not in grouped and "<script" not in grouped
    # Three bars per series, and each series' legend key.
    assert _bars(grouped, PALETTE[0]) == 3 + 1 and _bars(grouped, PALETTE[1]) == 3 + 1
    assert ">web<" in grouped and ">ios<" in grouped  # the legend, as text

    top = hbar_chart("Top", ["t1", "t2"], [1500, 20], "viewers")
    assert _bars(top, PALETTE[0]) == 2
    assert "1,500 viewers" in top

    lines = line_chart("Hourly", ["00:00", "01:00", "02:00"], {"play": [1, 5, 2]})
    assert len(re.findall(rf"stroke: {PALETTE[0]}", lines)) >= 1

    log_scale = bar_chart("Late", ["on time", "1 h"], {"events": [10_000, 0]}, log_scale=True)
    assert "Late (log scale)" in log_scale


def test_each_chart_has_its_own_element_ids():
    first = bar_chart("A", ["x"], {"s": [1]})
    second = bar_chart("B", ["x"], {"s": [1]})
    clip_ids = set(re.findall(r'clipPath id="(\w+)"', first))
    assert clip_ids and not clip_ids & set(re.findall(r'clipPath id="(\w+)"', second))
