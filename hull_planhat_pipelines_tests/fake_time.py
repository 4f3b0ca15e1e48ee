"""One fake clock for the clients' throttles and backoff, and for the sandboxes' limits."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class FakeTime:
    """Sleeping moves the clock forward at once and is recorded: tests never wait."""

    now: float = 1_000_000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    monotonic = time = clock

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def utc(self) -> datetime:
        """The same clock as a datetime, for sandboxes that stamp records."""
        return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now)


class ManualClock:
    """A datetime clock that moves only when told to (sandboxes stamp records with it)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
