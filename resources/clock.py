"""The clock sensors and runs work to: the wall clock, or a fixed instant for headless catch-up
and tests, so that the same definitions replay any point in time."""

from datetime import UTC, datetime

from dagster import ConfigurableResource


class ClockResource(ConfigurableResource):
    as_of: str | None = None
    """ISO 8601 instant to treat as now; None means the wall clock."""

    def now(self) -> datetime:
        if self.as_of is None:
            return datetime.now(UTC)
        instant = datetime.fromisoformat(self.as_of)
        return instant if instant.tzinfo else instant.replace(tzinfo=UTC)
