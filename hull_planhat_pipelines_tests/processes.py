"""Processes the tests start: finding them in ``/proc``, waiting for them to go, killing a
sync at a chosen moment. Shared by the browser test, the delivery fault tests and the
session-end check that no process outlives the suite."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

SESSION_MARK = "HPP_TEST_SESSION"
"""Environment variable set for the whole test session (and so inherited by every process a
test starts with the session's environment); its value names this session only. Not a
``HULL_``/``DAGSTER_`` name: some tests pass the environment on without those."""


def stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has ended; only its parent's wait is missing
    return int(fields[1]), fields[19]


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def descendants(root: int) -> set[tuple[int, str]]:
    """``root`` and every live process below it, as (pid, start time) pairs."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        if found := stat(pid):
            children.setdefault(found[0], []).append(pid)
    found_all: set[tuple[int, str]] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if found := stat(pid):
            found_all.add((pid, found[1]))
        todo += children.get(pid, [])
    return found_all


def marked(name: str, value: str) -> set[tuple[int, str]]:
    """Live processes whose environment holds ``name=value`` (whoever their parent now is:
    an orphaned code server is re-parented to init but keeps its environment)."""
    wanted = f"{name}={value}".encode()
    found: set[tuple[int, str]] = set()
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and (info := stat(pid)):
            found.add((pid, info[1]))
    return found


def alive(processes: set[tuple[int, str]]) -> list[int]:
    """The pids of ``processes`` still running (the same process: same start time)."""
    return [pid for pid, started in processes if (s := stat(pid)) and s[1] == started]


def wait_gone(processes: set[tuple[int, str]], seconds: float) -> list[int]:
    """Poll until every one of ``processes`` has ended; the pids left after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill_when(
    command: list[str], env: Mapping[str, str], reached: threading.Event, timeout: float
) -> subprocess.Popen:
    """Start ``command``, SIGKILL it the moment ``reached`` is set (as a crash would), and
    return it once it is reaped; fails if ``reached`` is not set within ``timeout``."""
    proc = subprocess.Popen(
        command, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert reached.wait(timeout), f"never reached the moment to kill: {command}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None and not reached.is_set():
            proc.kill()
        proc.wait(timeout)
    return proc
