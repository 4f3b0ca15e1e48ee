"""One deliverer at a time per warehouse: an ``flock`` beside the DuckDB file."""

import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_WAIT_ENV_VAR = "HULL_PLANHAT_LOCK_WAIT"
DEFAULT_DELIVERY_LOCK_WAIT = 60.0
"""Seconds a second deliverer waits for the warehouse lock before it is refused."""
HOLDER_RECORD_TRIES = 50
HOLDER_RECORD_PAUSE = 0.02
"""A refusal reads an empty holder record again this often, this far apart (one second in all):
a holder writes its record just after it takes the lock and clears it just before it lets go."""


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse's delivery lock (``holder`` says who, if known)."""

    def __init__(self, path: str, holder: dict[str, Any], waited: float) -> None:
        self.path = path
        self.holder = holder
        self.waited = waited
        who = (
            f"pid {holder.get('pid', '?')}, run {holder.get('run_id', '?')}, "
            f"since {holder.get('since', '?')}"
            if holder
            else "an unknown process"
        )
        super().__init__(
            f"another sync holds the warehouse {path} ({who}); refused after waiting "
            f"{waited:g}s. Run again when it has finished."
        )


def lock_path(database: str) -> str:
    """The lock file beside the DuckDB file (the DuckDB file's own lock is per connection)."""
    return f"{database}.lock"


def lock_wait_seconds() -> float:
    raw = os.environ.get(LOCK_WAIT_ENV_VAR)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_DELIVERY_LOCK_WAIT
    except ValueError:
        return DEFAULT_DELIVERY_LOCK_WAIT


_HELD: dict[str, list[Any]] = {}
"""Locks this process holds, by real path: [open file, depth]. Re-entrant within a process, so
the CLI's whole-sync lock covers the delivery steps it runs in process."""
_HELD_GUARD = threading.Lock()


def read_holder(database: str) -> dict[str, Any]:
    """Who holds (or last held) the lock, as written by the holder; {} when unknown."""
    try:
        text = Path(lock_path(database)).read_text()
        found = json.loads(text) if text.strip() else {}
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder_record(database: str, handle: Any, sleeper: Callable[[float], None]) -> Any:
    """The holder's record for a refusal; None when the lock came free meanwhile and ``handle``
    took it. A refusal in the instant between a holder's lock and its record would otherwise
    name nobody."""
    for _ in range(HOLDER_RECORD_TRIES):
        holder = read_holder(database)
        if holder:
            return holder
        sleeper(HOLDER_RECORD_PAUSE)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return None
    return {}


@contextmanager
def delivery_lock(
    database: str,
    run_id: str,
    *,
    wait: float | None = None,
    sleeper: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold the warehouse's delivery lock: one deliverer (CLI sync or Dagster delivery step)
    per warehouse. Waits up to ``wait`` seconds, then raises ``WarehouseBusy`` naming the holder.
    The lock is an ``flock`` on ``<warehouse>.lock``: the kernel releases it when the holder
    dies, even by SIGKILL, so a crashed run never blocks the next one."""
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(lock_path(database))
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    handle = open(key, "a+")  # noqa: SIM115 - held for the lock's lifetime
    budget = lock_wait_seconds() if wait is None else wait
    deadline = clock() + budget
    pause = 0.1
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if clock() >= deadline:
                holder = _holder_record(database, handle, sleeper)
                if holder is None:  # let go while its record was read: this handle holds it
                    break
                handle.close()
                raise WarehouseBusy(database, holder, budget) from None
            sleeper(pause)
            pause = min(pause * 2, 2.0)
    handle.seek(0)
    handle.truncate()
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    handle.write(json.dumps({"pid": os.getpid(), "run_id": run_id, "since": since}))
    handle.flush()
    entry = [handle, 1]
    with _HELD_GUARD:
        _HELD[key] = entry
    try:
        yield
    finally:
        with _HELD_GUARD:
            entry[1] -= 1
            if entry[1] <= 0:
                _HELD.pop(key, None)
        if entry[1] <= 0:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
