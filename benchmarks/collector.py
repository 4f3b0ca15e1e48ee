"""How long Python's garbage collector ran while a benchmark measured, printed beside its figures.

A full collection walks every object the process holds. In a benchmark whose sandboxes serve
from the same process, that includes their seed data (about 7 million objects at scale 1,000),
so a single full pass can cost seconds, and whether it falls inside a short pass is luck: the
same 1% pass at scale 1,000 took 27.6 s with one full pass of 8.1 s in it. A real sync does
not hold the sandboxes. Reported per pass, the collector's seconds tell such a pass apart from
a slow pipeline.
"""

from __future__ import annotations

import gc
import time
from typing import Any

FULL = 2
"""The oldest generation: a collection of it is a full pass."""


class CollectorClock:
    """The collector's wall seconds and passes per generation between ``__enter__`` and
    ``__exit__`` (``gc.callbacks``; collections of every thread count, as they stop them all)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.passes = [0, 0, 0]
        self.longest_full = 0.0
        self._started: float | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            generation = int(info["generation"])
            took = time.perf_counter() - self._started
            self.seconds[generation] += took
            self.passes[generation] += 1
            if generation == FULL:
                self.longest_full = max(self.longest_full, took)
            self._started = None

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def report(self) -> dict[str, float | int]:
        return {
            "seconds": round(sum(self.seconds), 2),
            "full_seconds": round(self.seconds[FULL], 2),
            "full_passes": self.passes[FULL],
            "longest_full_seconds": round(self.longest_full, 2),
        }
