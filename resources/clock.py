"""The clock sensors and runs work to: the wall clock, or a fixed instant for headless catch-up
and tests, so that the same definitions replay any point in time."""

from datetime import UTC, datetime

from dagster import ConfigurableResource


class ClockResource(ConfigurableResource):
    as_of: str | None = None
    """ISO 8601 instant to treat as now; None means the wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC) if self.as_of is None else parse_instant(self.as_of)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant; one without an offset is UTC."""
    instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).astimezone(UTC)
