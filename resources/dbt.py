"""dbt: the project, the CLI resource that runs it, and a manifest that exists on a clean clone.

The dbt executable is the one installed beside this Python, so a venv never picks up another dbt
from PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from core.settings import Settings, load

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """The `dbt` next to sys.executable (the venv's), else whatever `dbt` is on PATH."""
    beside = Path(sys.executable).with_name("dbt")
    return os.fspath(beside) if beside.exists() else "dbt"


def dbt_target(settings: Settings) -> str:
    """The profile target: `s3` attaches s3fs for an s3:// lake, `local` reads paths directly."""
    return "s3" if settings.lake_url.startswith("s3://") else "local"


def ensure_manifest(project: DbtProject = dbt_project) -> Path:
    """Return the path of target/manifest.json, running `dbt parse` first if it is missing.

    The manifest is a build artifact (not committed), and @dbt_assets needs it at import time,
    so a clean clone must be able to produce it without a warehouse or a lake.
    """
    manifest = Path(project.manifest_path)
    if not manifest.exists():
        subprocess.run(
            [
                dbt_executable(),
                "parse",
                "--quiet",
                "--project-dir",
                os.fspath(project.project_dir),
                "--profiles-dir",
                os.fspath(project.profiles_dir or project.project_dir),
            ],
            check=True,
            cwd=project.project_dir,
            env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        )
    return manifest


def dbt_resource(settings: Settings | None = None) -> DbtCliResource:
    """The dbt CLI resource for this project and the settings' lake."""
    settings = settings or load()
    return DbtCliResource(
        project_dir=dbt_project,
        dbt_executable=dbt_executable(),
        target=dbt_target(settings),
    )
