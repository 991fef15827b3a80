"""The Dagster UI serves this code location: `dagster-webserver` on a free port, the asset catalog
rendered by a real headless Chromium, and the landing, cleaning and mart assets on the page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from resources.broker import free_port
from tests.helpers import browser

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ("raw_events", "events", "fct_daily_active_users")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "dagster"),
        "CLICKSTREAM_LAKE_URL": str(root / "lake"),
        "CLICKSTREAM_WAREHOUSE": str(root / "warehouse.duckdb"),
    }
    (root / "dagster").mkdir()
    # The repository's instance settings, its SQLite storage included, as `make ui` copies them.
    shutil.copyfile(ROOT / "dagster.yaml", root / "dagster" / "dagster.yaml")
    log = (root / "webserver.log").open("wb")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-webserver")),
            *("-w", str(ROOT / "workspace.yaml"), "-p", str(port), "-h", "127.0.0.1"),
        ],
        cwd=root,  # not the repository: Dagster would load a developer's .env (make demo's)
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (root / "webserver.log").read_text()[-2000:]
            try:
                _get(f"{url}/server_info")
                break
            except OSError:
                assert time.monotonic() < deadline, "dagster-webserver did not serve in 120 s"
                time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_the_code_location_loads_with_its_assets(webserver):
    url, _ = webserver
    query = {"query": "{ assetNodes { assetKey { path } } }"}
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        nodes = json.load(response)["data"]["assetNodes"]
    keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
    assert set(ASSETS) <= keys


def test_a_browser_renders_the_assets(webserver):
    url, root = webserver
    dom = browser(root, "--window-size=1400,900", "--dump-dom", f"{url}/assets").stdout.decode(
        "utf-8", "replace"
    )
    for name in ASSETS:
        assert f">{name}<" in dom, f"{name} is not on the rendered asset catalog"
    screenshot = root / "asset-graph.png"
    browser(root, "--window-size=1400,900", f"--screenshot={screenshot}", f"{url}/asset-groups")
    assert screenshot.stat().st_size > 10_000
