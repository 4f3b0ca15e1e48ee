"""How fast this machine runs Python while a benchmark runs, printed beside its figures.

A shared 2-core machine is not always as fast: the same full pass at scale 100, code unchanged,
took 137 s one day and 331 s two days later. A figure means little without the speed it was
measured at, so every benchmark times the same CPU-bound loop (20 million iterations of an
empty Python ``for``) when it starts and when it ends, and reports both as ``machine``. Compare
figures only between runs whose loops agree; where they differ, the loop's ratio is a rough
guide to how much of a difference the machine made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

LOOP_ITERATIONS = 20_000_000


def loop_seconds() -> float:
    """Seconds the reference loop takes now."""
    started = time.perf_counter()
    for _ in range(LOOP_ITERATIONS):
        pass
    return round(time.perf_counter() - started, 3)


class MachineSpeed:
    """The loop timed at the start (on creation) and at the end (``report``)."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.start = loop_seconds()
        self.log(f"machine: {self.describe(self.start)} at the start")

    @staticmethod
    def describe(seconds: float) -> str:
        return f"{LOOP_ITERATIONS:,} Python loop iterations in {seconds:.2f} s"

    def report(self) -> dict[str, float | int | None]:
        """``machine`` of a benchmark's JSON line (the end timed now)."""
        end = loop_seconds()
        self.log(f"machine: {self.describe(end)} at the end")
        return {"loop_seconds_start": self.start, "loop_seconds_end": end, "cpus": os.cpu_count()}
