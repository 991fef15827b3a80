"""Two versions of the code on the same stage and data, run in alternation: is a change faster?

    .venv/bin/python benchmarks/compare.py --base main [--rounds 7] [--stage clean-hour]
                                           [--lake DIR] [--events 1000000]

On a shared machine one run of a stage moves by a fifth or more from the next, more than most
changes move it; the same stage run by the base revision (a git worktree) and by this working
tree, in alternation (ABBA, so that a drifting machine favours neither), each in a fresh process
on a fresh copy of the same landed lake, gives paired figures. It prints each round, then per
version the median wall and CPU seconds and peak memory, and in how many rounds this tree was
faster.

Stages:
- clean-hour: `clean_hour` on one landed ingest hour of --events events (generated and landed
  once, by this tree, as `bench.py --only hour` does), or on the hour of a --lake with one.
- clean-day: `clean_hours` over every event hour of --lake (a landed lake, for example a `bench.py
  --only day` run's `day/lake`), in one `CleaningRun`, as the cleaning asset runs them.
- marts: one Dagster run of the marts of every day of --lake's events (a cleaned lake: silver
  included), into a fresh warehouse and Dagster home, as a catch-up builds them: cold, dbt's
  parse included (each tree's saved parse is made before the first round).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import bench  # puts this tree first on sys.path: a measured process puts its own tree back

ROOT = Path(__file__).resolve().parents[1]


def run_stage(stage: str, lake_dir: str) -> dict:
    """In a fresh process whose sys.path starts with the tree under test: clean the lake, or
    build its days' marts."""
    import time

    import pyarrow.dataset as ds

    from clickstream_assets.cleaning import CleaningRun, clean_hour, clean_hours
    from core.ledger import Ledger
    from resources.lake import LakeResource

    lake = LakeResource(url=lake_dir)
    ledger = Ledger(lake)
    manifests = ledger.manifests(ledger.recorded_hours()).values()
    hours = sorted({hour for m in manifests for hour in m.event_hours})
    now = max(m.ingest_hour for m in manifests) + timedelta(hours=2)
    if stage == "marts":  # imported and counted before the clock starts
        from clickstream_assets.definitions import defs  # noqa: F401

        settings = bench._deployment(Path(lake_dir).parent, "localhost:9", "compare")
        rows = ds.dataset(f"{lake_dir}/silver/events", format="parquet").count_rows()
    start_rss = bench.rss_bytes()
    wall, cpu = time.perf_counter(), time.process_time()
    if stage == "marts":
        bench._build_marts(settings, now, hours[0].date(), hours[-1].date())
    elif stage == "clean-hour":
        hour = max(hours, key=lambda h: sum(m.event_hours.get(h, 0) for m in manifests))
        rows = clean_hour(lake, hour, first_instant=hours[0], now=now).stamp.bronze_rows
    else:
        run = CleaningRun.of(lake)
        cleaned = clean_hours(lake, hours, first_instant=hours[0], now=now, run=run)
        rows = sum(c.stamp.bronze_rows for c in cleaned)
    return {
        "rows": rows,
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "peak_mib": (bench.peak_rss_bytes() - start_rss) / 2**20,
    }


def _measure(tree: Path, stage: str, landed: Path, scratch: Path) -> dict:
    """The stage run by the code of `tree` on a fresh copy of the landed lake (cleaned, for the
    marts), with a fresh warehouse and Dagster home."""
    lake = scratch / "lake"
    for made in (lake, scratch / "dagster"):
        shutil.rmtree(made, ignore_errors=True)
    for made in scratch.glob("warehouse.duckdb*"):
        made.unlink()
    kept = () if stage == "marts" else ("silver", "cleaning", "_copies")
    shutil.copytree(landed, lake, ignore=shutil.ignore_patterns(*kept))
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import compare; "
        f"sys.path.insert(0, {str(tree)!r}); "
        f"print(json.dumps(compare.run_stage({stage!r}, {str(lake)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=scratch
    )
    shutil.rmtree(lake)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _landed_hour(events: int, workdir: Path) -> Path:
    """One ingest hour of `events` events landed by this tree, as the bench's hour stage."""
    hour = bench.DAY + timedelta(hours=20)
    records, lake = workdir / "records.parquet", workdir / "landed"
    bench.write_hour_records(str(records), events, hour)
    bench.hour_stage("landing", str(records), str(lake), hour.isoformat())
    records.unlink()
    return lake


def _worktree(revision: str, workdir: Path) -> Path:
    tree = workdir / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), revision],
        check=True,
        capture_output=True,
    )
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument(
        "--stage", choices=["clean-hour", "clean-day", "marts"], default="clean-hour"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--lake", type=Path, help="a landed lake (clean-day needs one; marts a cleaned one)"
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="clean-hour's hour")
    args = parser.parse_args()
    if args.stage in ("clean-day", "marts") and args.lake is None:
        parser.error(f"{args.stage} needs --lake: a landed lake, such as a bench run's day/lake")

    workdir = Path(tempfile.mkdtemp(prefix="clickstream-compare-"))
    base = _worktree(args.base, workdir)
    try:
        landed = args.lake or _landed_hour(args.events, workdir)
        trees = {"base": base, "this": ROOT}
        for tree in trees.values() if args.stage == "marts" else ():
            # A saved dbt parse in each tree: every measured run's parse is a partial one.
            parse = "from resources.dbt import DBT_PROJECT_DIR, parse; parse(DBT_PROJECT_DIR)"
            code = f"import sys; sys.path.insert(0, {str(tree)!r}); {parse}"
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        runs: dict[str, list[dict]] = {"base": [], "this": []}
        for round_ in range(args.rounds):
            order = ["base", "this"] if round_ % 2 == 0 else ["this", "base"]
            for name in order:
                runs[name].append(_measure(trees[name], args.stage, landed, workdir))
            b, t = runs["base"][-1], runs["this"][-1]
            print(
                f"round {round_ + 1}: base {b['wall']:.2f} s (CPU {b['cpu']:.2f} s), "
                f"this {t['wall']:.2f} s (CPU {t['cpu']:.2f} s)",
                flush=True,
            )
        rows = {r["rows"] for rs in runs.values() for r in rs}
        print(f"\n`{' '.join(['benchmarks/compare.py', *sys.argv[1:]])}`, base {args.base}")
        read = "silver" if args.stage == "marts" else "bronze"
        print(f"{args.stage}: {', '.join(f'{r:,}' for r in sorted(rows))} {read} rows\n")
        print("| version | wall, median (min-max) | CPU, median | peak above start, median |")
        print("|---|---|---|---|")
        for name, rs in runs.items():
            walls = [r["wall"] for r in rs]
            print(
                f"| {name} | {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f})"
                f" | {statistics.median(r['cpu'] for r in rs):.2f} s"
                f" | {statistics.median(r['peak_mib'] for r in rs):,.0f} MiB |"
            )
        pairs = list(zip(runs["base"], runs["this"], strict=True))
        faster = sum(t["wall"] < b["wall"] for b, t in pairs)
        cheaper = sum(t["cpu"] < b["cpu"] for b, t in pairs)
        ratio = statistics.median(b["wall"] / t["wall"] for b, t in pairs)
        print(
            f"\nthis tree faster in {faster} of {len(pairs)} rounds, cheaper in CPU in {cheaper};"
            f" median paired speed-up {ratio:.2f}x"
        )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
