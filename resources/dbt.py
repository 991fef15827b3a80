"""dbt: the project, its preparer, and a resource that runs dbt inside this process.

dbt runs through its programmatic runner (dbtRunner) rather than a `dbt` subprocess per day: the
project is parsed once per process (partial parsing keeps even that short) and every build
reuses the parsed manifest, so a day rebuilt costs its SQL, not dbt's start-up and a parse. The
manifest depends only on the name of the warehouse file (DuckDB names its catalog after it); the
lake's location and every other var are read when a model runs, so one parse serves every day,
lake and warehouse directory, and dbt's partial parse (kept in target/, a directory per profile
target) serves every process. A process's first dbt command is spared two costs of dbt's own
start that depend on nothing of the project (`_prepare`): 2.6-2.7 s -> 2.0-2.1 s for a mart
run in a new process (the bench's day), the runs after it unchanged.

dbt's own log lines go to the Dagster run log (one message per build, and each error as it
happens), never to the console of a catch-up or demo.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, ConfigurableResource
from dagster_dbt import DagsterDbtTranslator, DbtProject

from core.settings import DEFAULTS, Settings, load
from core.warehouse import DBT_PROJECT_DIR

DEFAULT_WAREHOUSE = Path(DEFAULTS["CLICKSTREAM_WAREHOUSE"])
LOCAL_TARGET = "local"
"""The profile's target for a lake on a local path; its saved parse is the one in target/."""


class DbtError(RuntimeError):
    """dbt failed; the message holds dbt's errors."""


def _common_args(project_dir: Path, target: str, target_path: Path) -> list[str]:
    args = ["--project-dir", os.fspath(project_dir), "--profiles-dir", os.fspath(project_dir)]
    args += ["--target-path", os.fspath(target_path)]
    # No console or file log from dbt: callbacks receive every event (see `_invoke`).
    args += ["--log-level", "none", "--log-level-file", "none"]
    # Always named: dbt re-parses from scratch when a parse's target differs from the last one's.
    return args + ["--target", target]


_lock = threading.Lock()  # dbt keeps global state (flags, adapters): one invocation at a time


def _release_warehouse() -> None:
    """dbt-duckdb keeps its DuckDB instance open between invocations; close it, so that the
    caller (and the next process) can open the warehouse file, which has one writer at a time."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    if DuckDBConnectionManager._ENV is not None:
        DuckDBConnectionManager.env().close()
        DuckDBConnectionManager.close_all_connections()


class _JsonSchemas:
    """The JSON schemas of dbt's config classes, kept in a file from one process to the next.

    dbt validates the project, the profile and its flags against JSON schemas that mashumaro
    builds from dbt's dataclasses the first time each is needed in a process: 0.27-0.5 s of every
    process's first parse, which each mart run pays where a run is a process of its own. A
    schema depends only on the installed packages, so the file holds the schemas under those
    packages' versions and a process reads them back; a class it does not hold is built, as dbt
    would, and added. Installed over `dbtClassMixin.json_schema` (dbt is pinned): one schema
    object per class and process, as dbt's own cache keeps."""

    PACKAGES = ("dbt-core", "dbt-common", "dbt-adapters", "dbt-duckdb", "mashumaro")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schemas: dict[str, dict] = {}
        self.added = False

    def versions(self) -> dict[str, str]:
        found = {name: importlib.metadata.version(name) for name in self.PACKAGES}
        return found | {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}

    def install(self) -> None:
        from dbt_common.dataclass_schema import dbtClassMixin

        try:
            saved = json.loads(self.path.read_text())
            if saved["versions"] == self.versions() and isinstance(saved["schemas"], dict):
                self.schemas = saved["schemas"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none saved yet, or unreadable: built as needed, saved afresh
        build = dbtClassMixin.__dict__["json_schema"].__func__

        def json_schema(cls) -> dict:
            key = f"{cls.__module__}.{cls.__qualname__}"
            if key not in self.schemas:
                self.schemas[key] = build(cls)
                self.added = True
            return self.schemas[key]

        dbtClassMixin.json_schema = classmethod(json_schema)

    def save(self) -> None:
        """Write the schemas if this process built any (temporary file, then rename). Where
        target/ cannot be written, each process builds them, as dbt alone would."""
        if not self.added:
            return
        self.added = False
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"versions": self.versions(), "schemas": self.schemas}))
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


_json_schemas = _JsonSchemas(DBT_PROJECT_DIR / "target" / "json_schemas.json")


def _behavior_flag_source() -> str:
    """The module that defines a behavior flag without a source (dbt_common's default, from the
    calling frames' globals). dbt_common finds it with `inspect.stack()`, whose first call in a
    process maps every loaded module to its file (44k `lstat`s in a Dagster run: 0.3 s of each
    process's first dbt command, for a name that only dbt's deprecation messages show)."""
    from dbt_common import behavior_flags

    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name and name != behavior_flags.__name__:
            return name
        frame = frame.f_back
    return "Unknown"


_prepared = False


def _prepare() -> None:
    """Once a process, before its first dbt command: dbt's start without the two costs above."""
    global _prepared
    if not _prepared:
        from dbt_common.behavior_flags import BehaviorFlagRendered

        BehaviorFlagRendered._default_source = staticmethod(_behavior_flag_source)
        _json_schemas.install()
        _prepared = True


def _invoke(args: list[str], manifest: Any = None) -> tuple[Any, list[Any]]:
    from dbt.adapters.factory import cleanup_connections
    from dbt.cli.main import dbtRunner

    events: list[Any] = []
    with _lock:
        _prepare()
        try:
            result = dbtRunner(manifest=manifest, callbacks=[events.append]).invoke(args)
        finally:
            cleanup_connections()
            _release_warehouse()
            _json_schemas.save()
    if not result.success and result.exception is not None:
        raise DbtError(f"dbt {args[0]} failed: {result.exception}") from result.exception
    return result, events


def parse(
    project_dir: Path,
    *,
    target: str = LOCAL_TARGET,
    warehouse_path: str | os.PathLike[str] = DEFAULT_WAREHOUSE,
    write_json: bool = True,
) -> Any:
    """Parse the project in-process (partial parsing on) and return dbt's Manifest; with
    `write_json`, a parse for the `local` target also writes target/manifest.json, which
    @dbt_assets reads at import. A run's parse writes none: serializing the manifest is a
    quarter of a process's first parse, and the file a run imported from is already there."""
    # dbt keeps one saved parse per target directory: another profile target parses beside it.
    target_path = project_dir / "target" / ("" if target == LOCAL_TARGET else target)
    args = ["parse", *_common_args(project_dir, target, target_path)]
    # The one var a parse is given: the warehouse file's name, which names the catalog in every
    # relation. dbt re-parses the whole project (seconds) when a parse's vars differ from the
    # last one's, so the directory is left out: it is rendered when models run.
    args += ["--vars", json.dumps({"warehouse_path": Path(warehouse_path).name})]
    if not write_json:
        args.append("--no-write-json")
    result, events = _invoke(args)
    if not result.success:
        raise DbtError("dbt parse failed:\n" + "\n".join(_messages(events, errors_only=True)))
    return result.result


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
# @dbt_assets reads the manifest at import. Under `dagster dev` the project's preparer re-parses
# to pick up edits; a clean clone parses once, in-process (never a `dbt parse` subprocess).
dbt_project.prepare_if_dev()
if not dbt_project.manifest_path.exists():
    parse(DBT_PROJECT_DIR)


def dbt_target(settings: Settings) -> str:
    """The profile target: `s3` attaches s3fs for an s3:// lake, `local` reads paths directly."""
    return "s3" if settings.lake_url.startswith("s3://") else LOCAL_TARGET


def _messages(events: list[Any], *, errors_only: bool = False) -> list[str]:
    from dbt_common.events.base_types import EventLevel

    wanted = {EventLevel.ERROR} if errors_only else {EventLevel.INFO, EventLevel.WARN}
    wanted |= {EventLevel.ERROR}
    return [e.info.msg for e in events if e.info.level in wanted and e.info.msg]


RESULT_EVENTS = frozenset({"LogSeedResult", "LogModelResult", "LogSnapshotResult", "LogTestResult"})
"""The dbt events that dagster-dbt turns into Dagster events (an Output per model, a check result
per test: `DbtCoreCliEventMessage.is_result_event`). A build fires hundreds of others (its SQL,
timings, adapter lines: ~690 for a day's 25 nodes); only these are converted to dicts (protobuf's
MessageToDict: ~40 ms a build for all of them, measured on the bench's day)."""

_parsed: dict[tuple[str, str, str], Any] = {}
"""Manifests parsed in this process, by (project, target, warehouse file name)."""


class DbtRunnerResource(ConfigurableResource):
    """Runs dbt commands in this process against the project, reusing one parsed manifest."""

    project_dir: str = os.fspath(DBT_PROJECT_DIR)
    target: str = LOCAL_TARGET

    def manifest(self, run_vars: Mapping[str, Any]) -> Any:
        project = Path(self.project_dir)
        warehouse_path = run_vars.get("warehouse_path", DEFAULT_WAREHOUSE)
        key = (os.fspath(project), self.target, Path(warehouse_path).name)
        if key not in _parsed:
            _parsed[key] = parse(
                project, target=self.target, warehouse_path=warehouse_path, write_json=False
            )
        return _parsed[key]

    def build(
        self,
        context: AssetExecutionContext,
        run_vars: Mapping[str, Any],
        translator: DagsterDbtTranslator,
        *,
        extra_args: tuple[str, ...] = (),
    ) -> Iterator[Any]:
        """`dbt build` of the context's selection with `run_vars`; yields Dagster events (an
        Output per model, an AssetCheckResult per test) and raises DbtError if dbt failed."""
        from dagster_dbt.asset_utils import (
            get_manifest_and_translator_from_dbt_assets,
            get_subset_selection_for_context,
        )
        from dagster_dbt.core.dbt_cli_event import DbtCoreCliEventMessage
        from dbt_common.events.base_types import EventLevel
        from dbt_common.events.functions import msg_to_dict

        project = Path(self.project_dir)
        manifest_json, _, _ = get_manifest_and_translator_from_dbt_assets([context.assets_def])
        selection, indirect = get_subset_selection_for_context(
            context=context,
            manifest=manifest_json,
            select="fqn:*",
            exclude=None,
            selector=None,
            dagster_dbt_translator=translator,
            current_dbt_indirect_selection_env=None,
        )
        args = ["build", *_common_args(project, self.target, project / "target")]
        args += ["--no-write-json", "--vars", json.dumps(dict(run_vars)), *selection, *extra_args]
        if indirect:
            args += ["--indirect-selection", indirect]
        result, events = _invoke(args, manifest=self.manifest(run_vars))
        for event in events:
            if event.info.level == EventLevel.ERROR and event.info.msg:
                context.log.error(event.info.msg)
            if event.info.name not in RESULT_EVENTS:
                continue
            message = DbtCoreCliEventMessage(
                raw_event=msg_to_dict(event), event_history_metadata={}
            )
            yield from message.to_default_asset_events(
                manifest=manifest_json,
                dagster_dbt_translator=translator,
                context=context,
                project=dbt_project,
            )
        # The whole dbt log as one message: the run log keeps it without an event per line.
        context.log.info("dbt build " + " ".join(selection) + "\n" + "\n".join(_messages(events)))
        if not result.success:
            errors = "\n".join(_messages(events, errors_only=True))
            raise DbtError(f"dbt build failed:\n{errors}")


def dbt_resource(settings: Settings | None = None) -> DbtRunnerResource:
    """The in-process dbt resource for this project and the settings' lake."""
    settings = settings or load()
    return DbtRunnerResource(target=dbt_target(settings))
