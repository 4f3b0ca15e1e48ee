"""Python's garbage collector while a sync runs: its full passes spaced out.

A sync allocates millions of objects, and Python's collector answers with full passes, each
walking every object of the process. Both ways a sync runs space them: the command line's
``hull-planhat sync`` around the whole cycle, and every run Dagster launches (daemon, sensor,
schedule, UI) for the run's lifetime, through the warehouse resource every step uses. The two
nest (the command line executes its runs in its own process): only the outermost changes the
threshold and gives the default back.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

FULL_COLLECTION_SPACING = 100
"""During a sync, the collector's full passes come this many times less often than Python's
default (its young generations are collected as usual). At 100,000 people a full load made 17
full passes at ten times rarer (7.3 s of 122.5 s), one at a hundred (0.6 s of 113.2 s), with the
same peak memory (2,382 and 2,408 MB): a sync's large data is freed by reference counts, not by
full passes. Without the sandboxes in the process (a full ``sync --full`` at 100,000 people
against sandboxes served by another process), Python's default made 56 full passes (10.1 s),
spaced 4 (0.4 s)."""

_guard = threading.Lock()
_depth = 0
_default: tuple[int, int, int] | None = None


@contextlib.contextmanager
def collector_spared() -> Iterator[None]:
    """Spare the block most of the collector's full passes over everything the process holds;
    the default comes back when the outermost such block ends, however it ends.

    Nothing is frozen: freezing what the process held needs a full pass first (11 s a sync
    beside a million-record sandbox), or keeps the garbage frozen with it until the end."""
    global _depth, _default
    with _guard:
        if _depth == 0:
            _default = gc.get_threshold()
            young, middle, old = _default
            gc.set_threshold(young, middle, old * FULL_COLLECTION_SPACING)
        _depth += 1
    try:
        yield
    finally:
        with _guard:
            _depth -= 1
            if _depth == 0 and _default is not None:
                gc.set_threshold(*_default)
                _default = None
