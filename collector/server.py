"""Run the collector: the Kafka sink, the ASGI app and uvicorn (chosen by measurement; see the
README's "Collection" section), with access logs off."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import uvicorn

from collector.app import CollectorApp
from collector.sink import KafkaSink, SinkConfig
from core.settings import ConfigError, Settings
from resources.event_log import KafkaUnavailable


def listen_address(addr: str) -> tuple[str, int]:
    """`host:port` of CLICKSTREAM_COLLECTOR_ADDR."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"CLICKSTREAM_COLLECTOR_ADDR={addr!r}: use host:port, such as 127.0.0.1:8088"
        )
    return host.strip("[]"), int(port)


TOPIC_PARTITIONS = 4
"""Partitions of the topic when the collector has to create it (as `clickstream generate` does)."""


def open_sink(settings: Settings) -> KafkaSink:
    """The producer on the configured topic (created if missing); fails at start, saying what to
    fix, when the broker does not answer."""
    from kafka.errors import KafkaError

    from resources.kafka import KafkaResource

    try:
        KafkaResource(
            bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic
        ).create_topic(TOPIC_PARTITIONS)
        sink = KafkaSink(
            SinkConfig(
                bootstrap=settings.kafka_bootstrap,
                topic=settings.topic,
                stall_after_s=settings.collector_stall_ms / 1000,
            )
        )
    except KafkaError as error:
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.kafka_bootstrap} ({error!r}): start one "
            "(`clickstream broker`) or set CLICKSTREAM_KAFKA_BOOTSTRAP"
        ) from None
    return sink


def _exit_with_parent() -> None:
    """A worker dies with its supervisor, SIGKILL included (Linux's PR_SET_PDEATHSIG): no orphan
    keeps serving the port, or a producer buffer, behind a restarted collector's back."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: uvicorn's own shutdown only
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the supervisor died before the line above


def create_app() -> CollectorApp:
    """The app of one worker process: uvicorn imports this factory in each worker it spawns."""
    from core.settings import load

    _exit_with_parent()
    return CollectorApp(open_sink(load()), shared_metrics=True)


METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: where each worker's metrics live, for any worker's scrape."""


@contextlib.contextmanager
def shared_metrics_dir():
    """PROMETHEUS_MULTIPROC_DIR for the workers: the operator's (emptied now: a previous run's
    files would add to this one's counts), else a temporary one, removed at exit."""
    given = os.environ.get(METRICS_DIR)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield given
        return
    path = tempfile.mkdtemp(prefix="clickstream-collector-metrics-")
    os.environ[METRICS_DIR] = path  # inherited by the workers uvicorn spawns
    try:
        yield path
    finally:
        del os.environ[METRICS_DIR]
        shutil.rmtree(path, ignore_errors=True)


def serve(settings: Settings, *, access_log: bool = False, workers: int = 1) -> None:
    """Serve on CLICKSTREAM_COLLECTOR_ADDR in the foreground until SIGINT or SIGTERM. With
    several workers, each process has its own producer, probe and watchdog behind one listening
    socket: kafka-python's per-message Python is the ceiling of one process (see the README).
    /readyz then describes the worker that answers, /metrics the whole collector."""
    host, port = listen_address(settings.collector_addr)
    server = dict(
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=access_log,
        log_level="info" if access_log else "warning",
        server_header=False,
    )
    if workers > 1:
        open_sink(settings).close()  # the broker answers and the topic exists, or fail here
        print(f"collector listening on http://{host}:{port} -> {settings.topic}", flush=True)
        with shared_metrics_dir():
            uvicorn.run("collector.server:create_app", factory=True, workers=workers, **server)
        return
    app = CollectorApp(open_sink(settings))
    print(f"collector listening on http://{host}:{port} -> {settings.topic}", flush=True)
    uvicorn.Server(uvicorn.Config(app, **server)).run()


class CollectorProcess:
    """`clickstream collector` in a child process on a free port, for tests, benchmarks and the
    demo; start() waits until /healthz answers. `kill()` is SIGKILL: nothing is flushed."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        argv: list[str] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        from resources.broker import free_port

        self.argv = argv or [sys.executable, "-m", "clickstream_tools.cli", "collector"]
        self.port = free_port()
        self.env = {**os.environ, **env, "CLICKSTREAM_COLLECTOR_ADDR": f"127.0.0.1:{self.port}"}
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CollectorProcess:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the collector exited at start with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response,
            ):
                if response.status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the collector did not answer on {self.url}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
