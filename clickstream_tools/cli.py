"""The `clickstream` console script: the embedded broker, synthetic traffic, the collector, catch-up
and the demo.

Catch-up and the demo live in their own modules and are imported only when asked for, so that
`clickstream broker` starts without loading Dagster.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.settings import ConfigError, Settings, load
from resources.event_log import KafkaUnavailable
from resources.lake_store import LakeUnavailable

START_DATE = "CLICKSTREAM_START_DATE"


def _moment(text: str) -> datetime:
    """An ISO date or date-time; naive means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601, such as 2026-01-01 or 2026-01-01T06:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickstream", description="Clickstream platform: broker, traffic, catch-up, demo."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    broker = commands.add_parser(
        "broker", help="run the embedded Kafka-protocol broker on CLICKSTREAM_KAFKA_BOOTSTRAP"
    )
    broker.add_argument("--verbose", action="store_true", help="show the broker's own log")

    generate = commands.add_parser("generate", help="produce synthetic traffic to the topic")
    generate.add_argument("--start", type=_moment, help="first event time (default: end - hours)")
    generate.add_argument("--end", type=_moment, help="end of the span (default: start + hours)")
    generate.add_argument("--hours", type=float, default=24.0, help="span length (default 24)")
    size = generate.add_mutually_exclusive_group()
    size.add_argument("--events", type=int, help="number of distinct events")
    size.add_argument("--rate", type=float, help="mean events per second (default 10)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--duplicate-rate", type=_share, default=0.03)
    generate.add_argument("--late-rate", type=_share, default=0.02)
    generate.add_argument("--malformed-rate", type=_share, default=0.005)
    generate.add_argument("--skew-rate", type=_share, default=0.003)
    generate.add_argument(
        "--receive-until",
        type=_moment,
        help="no message is received at or after this time (default: the end of the span)",
    )
    generate.add_argument("--partitions", type=int, default=4, help="topic partitions (default 4)")
    generate.add_argument("--expected", metavar="DIR", help="write the expected marts here")
    generate.add_argument(
        "--no-produce", action="store_true", help="generate (and write --expected) only"
    )
    generate.add_argument(
        "--via-collector",
        nargs="?",
        const="",
        metavar="URL",
        help="send through the SDK to a running collector (default URL: "
        "CLICKSTREAM_COLLECTOR_ADDR) instead of producing to the topic; received now",
    )

    collector = commands.add_parser(
        "collector", help="run the HTTP edge collector on CLICKSTREAM_COLLECTOR_ADDR"
    )
    collector.add_argument("--access-log", action="store_true", help="log every request")
    collector.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own producer (/readyz then describes the worker "
        "that answers; /metrics sums them all)",
    )

    catch_up = commands.add_parser("catch-up", help="land and build every closed hour, headless")
    catch_up.add_argument("--until", type=_moment, help="treat hours before this as closed")
    catch_up.add_argument(
        "--verbose", action="store_true", help="also show each run's own log (Dagster, dbt)"
    )

    land_slice = commands.add_parser(
        "land-slice",
        help="land the open hour so far as its next slice (what the slice sensor's job runs)",
    )
    land_slice.add_argument("--at", type=_moment, help="the clock (default: now)")

    demo = commands.add_parser("demo", help="broker, a day of traffic, catch-up and a report")
    demo.add_argument("--events", type=int, default=1_000_000, help="events (default 1,000,000)")
    demo.add_argument("--day", type=_moment, help="the UTC day to generate (default: 2 days ago)")
    demo.add_argument(
        "--verbose", action="store_true", help="also show each run and its log (Dagster, dbt)"
    )
    return parser


def _broker(settings: Settings, args: argparse.Namespace) -> int:
    from resources.broker import EmbeddedBroker

    # `kill` (SIGTERM) stops the broker as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _stop_on_term)
    broker = EmbeddedBroker(settings.kafka_bootstrap, show_output=args.verbose)
    with broker:
        print(f"broker ready on {broker.bootstrap} (in memory; Ctrl-C to stop)", flush=True)
        try:
            code = broker.wait()
        except KeyboardInterrupt:
            print("\nstopping the broker", flush=True)
            return 0
    print(f"the broker exited with code {code}", file=sys.stderr)
    return 1


def _span(args: argparse.Namespace) -> tuple[datetime, datetime]:
    hours = timedelta(hours=args.hours)
    if args.start and args.end:
        return args.start, args.end
    if args.start:
        return args.start, args.start + hours
    end = args.end or datetime.now(UTC).replace(second=0, microsecond=0)
    return end - hours, end


def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream_tools.generator import TrafficSpec, generate, produce, write_expected_marts
    from resources.kafka import KafkaResource

    start, end = _span(args)
    if end <= start:
        raise ConfigError(f"--end {end.isoformat()} is not after --start {start.isoformat()}")
    spec = TrafficSpec(
        start=start,
        end=end,
        events=args.events,
        events_per_second=None if args.events else (args.rate or 10.0),
        seed=args.seed,
        duplicate_rate=args.duplicate_rate,
        late_rate=args.late_rate,
        malformed_rate=args.malformed_rate,
        skew_rate=args.skew_rate,
        receive_until=max(args.receive_until or end, end),
    )
    began = time.perf_counter()
    traffic = generate(spec)
    seconds = time.perf_counter() - began
    rows = traffic.messages.num_rows
    print(
        f"generated {spec.n_events:,} events as {rows:,} messages for "
        f"{start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC in {seconds:.1f} s "
        f"({spec.n_events / max(seconds, 1e-9):,.0f} events/s)",
        flush=True,
    )
    truth = traffic.truth
    if args.via_collector is not None and not args.no_produce:
        truth = _send_via_collector(traffic, args.via_collector or settings.collector_addr)
    if args.expected:
        written = write_expected_marts(truth, args.expected)
        print(f"expected marts: {len(written)} files in {args.expected}", flush=True)
    if args.via_collector is None and not args.no_produce:
        log = KafkaResource(bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic)
        try:
            log.create_topic(args.partitions)
        except Exception as error:  # kafka-python raises several kinds when nobody answers
            raise KafkaUnavailable(
                f"cannot create {settings.topic!r} on {settings.kafka_bootstrap} ({error}): "
                "start a broker (`clickstream broker`) or set CLICKSTREAM_KAFKA_BOOTSTRAP"
            ) from None
        began = time.perf_counter()

        def progress(sent: int, total: int) -> None:
            rate = sent / max(time.perf_counter() - began, 1e-9)
            print(f"\rproduced {sent:,}/{total:,} ({rate:,.0f} msg/s)", end="", flush=True)

        produce(log, traffic.messages, progress=progress, workers=os.cpu_count() or 1)
        print(f" to {settings.topic} on {settings.kafka_bootstrap}", flush=True)
    _summary(traffic.counts)
    return 0


def _send_via_collector(traffic, address: str):
    import urllib.request

    from clickstream_tools.generator import send_via_collector

    url = address if "://" in address else f"http://{address}"
    try:
        urllib.request.urlopen(f"{url}/readyz", timeout=5).close()
    except OSError as error:
        raise KafkaUnavailable(
            f"the collector at {url} is not ready ({error}): start it (`clickstream collector`) "
            "or pass its URL to --via-collector"
        ) from None
    began = time.perf_counter()

    def progress(acknowledged: int, total: int) -> None:
        rate = acknowledged / max(time.perf_counter() - began, 1e-9)
        print(
            f"\racknowledged {acknowledged:,}/{total:,} ({rate:,.0f} events/s)", end="", flush=True
        )

    try:
        truth = send_via_collector(traffic, url, progress=progress)
    except TimeoutError as error:
        raise KafkaUnavailable(f"{error}: is `clickstream collector` running there?") from None
    print(
        f" through the SDK and {url} ({traffic.truth.height - truth.height:,} messages that "
        "are not JSON objects with the SDK's fields left out)",
        flush=True,
    )
    return truth


def _summary(counts: dict) -> None:
    malformed = ", ".join(f"{k} {v:,}" for k, v in counts["malformed"].items() if v)
    lines = [
        ("events", f"{counts['events']:,} ({counts['valid_events']:,} valid and counted)"),
        ("messages", f"{counts['messages']:,}"),
        (
            "duplicates",
            f"{counts['duplicate_messages']:,} extra copies of {counts['duplicated_events']:,} "
            f"events ({counts['duplicated_across_ingest_hours']:,} across ingest hours)",
        ),
        (
            "late",
            f"{counts['late_events']:,} events received 1 h or more late "
            f"({counts['received_after_watermark']:,} after the 3 h watermark)",
        ),
        (
            "skewed clocks",
            f"{counts['skewed_events']:,} events ({counts['skewed_events_retried']:,} retried; "
            f"{counts['clock_corrected_events']:,} counted at receive time)",
        ),
        ("malformed", f"{counts['malformed_messages']:,} messages: {malformed or 'none'}"),
        (
            "received",
            f"{counts['first_receive']:%Y-%m-%d %H:%M:%S} .. "
            f"{counts['last_receive']:%Y-%m-%d %H:%M:%S} UTC",
        ),
    ]
    for name, text in lines:
        print(f"  {name:<14} {text}")


def _collector(settings: Settings, args: argparse.Namespace) -> int:
    from collector.server import serve

    serve(settings, access_log=args.access_log, workers=args.workers)
    return 0


def _stop_on_term(signum, frame):
    raise KeyboardInterrupt


def _terminate(signum, frame):
    """Stop catch-up at once. Every file is written then renamed and every stage is level-
    triggered, so an exit at any line leaves only work that the next catch-up finds owed (and
    the run it interrupted, which the next catch-up fails)."""
    print("catch-up stopped; the next catch-up completes the work", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def _catch_up(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream_tools.catchup import run_catch_up

    # `kill` (SIGTERM) stops catch-up at once; the next catch-up fails the interrupted run,
    # frees its slots and does what the stamps say is still owed.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # Ctrl-C too
    # The work runs on a thread of its own: Dagster takes over SIGTERM on the main thread while
    # it executes a run or a sensor tick, and this thread must stay free to stop at once.
    with ThreadPoolExecutor(1) as worker:
        until = args.until or datetime.now(UTC)
        worker.submit(run_catch_up, settings, until=until, verbose=args.verbose).result()
    return 0


def _land_slice(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream_assets.landing import land_slice
    from resources.event_log import KafkaLog
    from resources.lake_store import Lake

    landed = land_slice(
        KafkaLog(bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic),
        Lake(url=settings.lake_url),
        now=args.at or datetime.now(UTC),
        first_instant=settings.start_datetime,
    )
    if landed is None:
        print("no slice: no open hour after the ledger's head, or another landing won")
    else:
        ranges = {p: [r.start, r.end] for p, r in landed.partitions.items()}
        print(f"{landed.ingest_hour:%Y-%m-%dT%H}: {landed.rows} records landed {ranges}")
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    # Default: two days ago (UTC), so the day, its late arrivals and its watermark are past.
    day = args.day.date() if args.day else datetime.now(UTC).date() - timedelta(days=2)
    if not os.environ.get(START_DATE):
        # The demo's partitions start at its day, so that the UI shows that day, not months of
        # missing partitions; set before Dagster's definitions are imported.
        os.environ[START_DATE] = day.isoformat()
        settings = load()
    from clickstream_tools.demo import record_setting, run_demo

    # `dagster dev` (make ui) loads .env from this directory: the UI sees the same start date.
    record_setting(Path(".env"), START_DATE, settings.start_date.isoformat())
    run_demo(settings, events=args.events, day=day, verbose=args.verbose)
    return 0


_COMMANDS = {
    "broker": _broker,
    "generate": _generate,
    "catch-up": _catch_up,
    "land-slice": _land_slice,
    "demo": _demo,
    "collector": _collector,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Dagster flags the APIs we chose knowingly (single-run backfills, partitioned checks).
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    try:
        settings = load()
        return _COMMANDS[args.command](settings, args)
    except (ConfigError, KafkaUnavailable, LakeUnavailable) as error:
        print(f"clickstream {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
