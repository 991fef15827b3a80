"""The warehouse's contract marts, read from the dbt project, which holds the one list: dbt's
mart_revisions loops over it and Python (row counts, checks, tests) reads it here."""

from __future__ import annotations

from pathlib import Path

import yaml

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"


def _mart_periods() -> dict[str, str]:
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text(encoding="utf-8"))
    return dict(project["vars"]["marts"])


# Mart -> the column of the period it is finalized and revised by (event_date or event_hour).
MART_PERIODS: dict[str, str] = _mart_periods()
MARTS: tuple[str, ...] = tuple(MART_PERIODS)
