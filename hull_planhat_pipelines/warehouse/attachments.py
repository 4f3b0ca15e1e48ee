"""Warehouse connections served by kept in-memory DuckDB instances that attach the file.

``duckdb.connect(path)`` builds a database instance and its closing checkpoints and destroys
it: about 14 ms a connection before any work, paid by every short write (a one-record delivery
commits its journal a few hundred times a run). Attaching the file to an in-memory instance the
process keeps costs about 1 ms, and detaching it checkpoints and releases the file's lock just
as closing did. So the rule "open for one step, never held across an HTTP call" keeps its
meaning: when the last connection to a file closes, the file is detached and other processes
may take it.

Each file is attached to an instance of its own (``information_schema`` then lists that file's
tables only) under its name up to the first dot, as ``duckdb.connect`` names it. Connections to a file already
attached in this process share the attachment (each its own cursor), as connections to one
instance did; asking for the other mode while it is attached is refused, as DuckDB refuses it.
An instance whose configuration a connection locked (operator SQL is run locked down) is closed
with its last connection instead of serving the next file. Settings a connection changes
(``SET``) apply to its instance, so they outlive it when the instance is kept: the warehouse
layer changes none but the lockdown.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from hull_planhat_pipelines.sync.hull.batch import ident, quote
from hull_planhat_pipelines.sync.operator_sql import is_locked_down

IDLE_INSTANCES = 1
"""In-memory instances kept while no file is attached to them: a process works on one
warehouse; another file pays for an instance of its own."""
KEEP_BELOW_BYTES = 32 * 2**20
"""An instance is closed, not kept, when its buffers held this much as its file was detached,
or when the process has grown this much since the instance was created: detaching frees an
instance's memory to its allocator but not to the system, so a kept instance would carry every
step's high-water mark into the next ones; closing returns it, as closing a connection did.
Short writes (a journal commit: about 20 MB of buffers, the process not growing) keep theirs."""
RESERVED_CATALOGS = frozenset({"memory", "system", "temp", "main"})
FILE_BLOCKS_KEPT_BYTES = 16 * 2**20
"""Blocks of the attached file an instance keeps cached after a statement. DuckDB keeps every
block a query read until its memory limit presses, so a step holds every column it ever
scanned until the file detaches: 300 MB of raw Copper rows through a first load's whole
mapping, or the key columns of every profile through an incremental step. Beyond this, the
least recently used are evicted after each statement; a later read takes them from the file
(the system's page cache) again."""
LOOK_AFTER_SECONDS = 0.002
LOOK_EVERY_STATEMENTS = 64
"""Asking the instance what it holds costs about a millisecond: asked after a statement that
took longer than ``LOOK_AFTER_SECONDS`` (reading 16 MB of blocks takes more), and after every
``LOOK_EVERY_STATEMENTS`` short ones (a journal commits a few hundred times a run)."""


@dataclass
class _Attachment:
    host: duckdb.DuckDBPyConnection
    catalog: str
    read_only: bool
    resident_at_birth: int
    """The process's resident bytes when ``host`` was created."""
    users: int = 0
    short_statements: int = 0
    """Statements run since the cached blocks were last looked at (``_drop_file_blocks``)."""


_guard = threading.Lock()
_state = threading.local()
_attached: dict[str, _Attachment] = {}
_idle: list[tuple[duckdb.DuckDBPyConnection, int]] = []
"""Kept instances with nothing attached, each with the resident bytes at its creation."""
_dropped: list[WarehouseConnection] = []
"""Connections finalized (garbage-collected) while their thread was changing the state above:
closed as soon as that change is complete, never in the middle of it."""


def _reset_after_fork() -> None:
    """A forked child uses none of its parent's instances (their threads did not follow), and
    a lock another thread held at the fork would never be released in it."""
    global _guard, _state
    _guard, _state = threading.Lock(), threading.local()
    _attached.clear()
    _idle.clear()
    _dropped.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@contextmanager
def _changing() -> Iterator[None]:
    """Hold the guard while the attachments change; connections finalized meanwhile (a
    collection can run at any allocation) are closed at the end, not re-entrantly."""
    with _guard:
        _state.active = True
        try:
            yield
        finally:
            try:
                while _dropped:
                    with suppress(duckdb.Error):
                        _dropped.pop()._release()
            finally:
                _state.active = False


def _catalog(path: str) -> str:
    name = Path(path).name.split(".")[0] or "warehouse"
    return f"{name}_warehouse" if name.lower() in RESERVED_CATALOGS else name


def _host() -> tuple[duckdb.DuckDBPyConnection, int]:
    if _idle:
        return _idle.pop()
    born = _resident()
    return duckdb.connect(":memory:"), born


def _resident() -> int:
    """The process's resident bytes (Linux; 0 elsewhere: the buffers alone decide)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _buffered(host: duckdb.DuckDBPyConnection) -> int:
    row = host.execute("select coalesce(sum(memory_usage_bytes), 0) from duckdb_memory()")
    return int(row.fetchone()[0])  # type: ignore[index]


def open_connection(path: str, *, read_only: bool) -> WarehouseConnection:
    """A connection to ``path``'s tables (its default catalog); ``close()`` it when done."""
    key = os.path.abspath(path)
    with _changing():
        attachment = _attached.get(key)
        if attachment is None:
            attachment = _attach(key, read_only=read_only)
        elif attachment.read_only != read_only:
            held = "read-only" if attachment.read_only else "read-write"
            wanted = "read-only" if read_only else "read-write"
            raise duckdb.ConnectionException(
                f"{key} is open {held} in this process: it cannot also be opened {wanted}"
                " until those connections close"
            )
        attachment.users += 1  # before anything else: the attachment is in use from here
        cursor: duckdb.DuckDBPyConnection | None = None
        try:
            cursor = attachment.host.cursor()
            cursor.execute(f"use {ident(attachment.catalog)}")
        except BaseException:
            if cursor is not None:
                cursor.close()
            _let_go(key, attachment)
            raise
    return WarehouseConnection(cursor, key, attachment)


def _spill_beside(host: duckdb.DuckDBPyConnection, key: str) -> bool:
    """Point ``host``'s spills beside the file, as a connection to the file would put them.

    An instance that has spilled keeps its temporary directory: DuckDB refuses to set it again,
    even to the same path. False when ``host`` spilled elsewhere (it cannot serve ``key``)."""
    wanted = key + ".tmp"
    row = host.execute("select current_setting('temp_directory')").fetchone()
    if row is not None and row[0] == wanted:
        return True
    try:
        host.execute(f"set temp_directory = {quote(wanted)}")
    except duckdb.NotImplementedException:
        return False
    return True


def _attach(key: str, *, read_only: bool) -> _Attachment:
    host, born = _host()
    catalog = _catalog(key)
    mode = " (read_only)" if read_only else ""
    try:
        if not _spill_beside(host, key):  # a kept instance that spilled for another file
            host.close()
            host, born = duckdb.connect(":memory:"), _resident()
            _spill_beside(host, key)
        host.execute(f"attach {quote(key)} as {ident(catalog)}{mode}")
    except BaseException:
        _release_host(host, born)
        raise
    attachment = _Attachment(host, catalog, read_only, born)
    _attached[key] = attachment
    return attachment


def _let_go(key: str, attachment: _Attachment, *, checkpoint: bool = True) -> None:
    """One user fewer; the last one detaches the file (if it is still this attachment)."""
    attachment.users -= 1
    if attachment.users <= 0 and _attached.get(key) is attachment:
        _detach(key, attachment, checkpoint=checkpoint)


def _release_host(host: duckdb.DuckDBPyConnection, born: int) -> None:
    """Keep an unlocked instance with nothing attached for the next file; close the rest."""
    with suppress(duckdb.Error):
        if len(_idle) < IDLE_INSTANCES and not is_locked_down(host):
            _idle.append((host, born))
            return
    host.close()


def _give_back_memory(host: duckdb.DuckDBPyConnection) -> None:
    """Return to the system what a detached file's blocks held: freed buffers stay resident
    in DuckDB's allocator (a closed instance gives them back, a kept one does not) until it is
    flushed, which lowering the memory limit does. The limit is restored at once; a failure
    raises, and the instance is then closed, not kept. Nothing is evicted to disk: a kept
    instance holds no tables of its own."""
    try:
        host.execute("set memory_limit = '1MB'")
    finally:
        host.execute("reset memory_limit")


def _drop_file_blocks(attachment: _Attachment, keep: int | None = None) -> None:
    """Evict the cached blocks of the attached file beyond ``keep`` (by default
    ``FILE_BLOCKS_KEPT_BYTES``).

    The memory limit is lowered, for one statement, to what the instance holds besides the
    file's blocks plus that allowance, and restored at once. DuckDB evicts a file's blocks
    before any other buffer (they are dropped, not written), so temporary tables and the
    results and writes in progress stay in memory and nothing spills to disk: a test holds
    DuckDB to that. Only with one connection open on the attachment (under the guard, so none
    opens meanwhile): a statement of another connection could find the limit lowered."""
    host = attachment.host
    with _changing():
        if attachment.users != 1:
            return
        file_blocks, others = host.execute(
            "select coalesce(sum(memory_usage_bytes) filter (where tag = 'BASE_TABLE'), 0),"
            " coalesce(sum(memory_usage_bytes) filter (where tag <> 'BASE_TABLE'), 0)"
            " from duckdb_memory()"
        ).fetchone()  # type: ignore[misc]
        keep = FILE_BLOCKS_KEPT_BYTES if keep is None else keep
        if file_blocks <= keep or is_locked_down(host):
            return
        try:
            host.execute(f"set memory_limit = '{int(others) + keep}B'")
        except duckdb.Error:
            pass  # nothing evicted: a statement is never failed for it
        finally:
            host.execute("reset memory_limit")


def drop_cached_blocks(conn: duckdb.DuckDBPyConnection) -> None:
    """Evict every cached block of the file ``conn`` (a warehouse connection) reads, before a
    lock down: a locked instance cannot lower its memory limit, so whatever it has cached
    stays until its last connection closes, beside everything the operator's query reads."""
    if isinstance(conn, WarehouseConnection):
        _drop_file_blocks(conn._attachment, keep=0)


def _detach(key: str, attachment: _Attachment, *, checkpoint: bool = True) -> None:
    """The file's last connection closed: checkpoint and release its lock.

    ``checkpoint=False``: the lock is released, the committed writes stay in the file's
    write-ahead log (durable; whoever opens the file next replays it, a read-only opener
    included) until a later detach checkpoints them."""
    del _attached[key]
    host = attachment.host
    grew = _resident() - attachment.resident_at_birth
    with suppress(duckdb.Error):
        if grew < KEEP_BELOW_BYTES and _buffered(host) < KEEP_BELOW_BYTES:
            if checkpoint:
                host.execute(f"detach {ident(attachment.catalog)}")
            else:
                host.execute("set checkpoint_on_detach = 'DISABLED'")
                try:
                    host.execute(f"detach {ident(attachment.catalog)}")
                finally:
                    host.execute("reset checkpoint_on_detach")
            _give_back_memory(host)
            _release_host(host, attachment.resident_at_birth)  # a locked one is closed there
            return
    host.close()  # closing the instance detaches (and checkpoints) the file all the same


class WarehouseConnection:
    """A DuckDB connection to the warehouse file (a cursor of the instance that attached it):
    everything a ``DuckDBPyConnection`` does, and ``close()`` detaches the file once no other
    connection of this process uses it."""

    __slots__ = ("_attachment", "_cursor", "_key", "_open", "_pid")

    def __init__(
        self, cursor: duckdb.DuckDBPyConnection, key: str, attachment: _Attachment
    ) -> None:
        self._cursor = cursor
        self._key = key
        self._attachment = attachment
        self._open = True
        self._pid = os.getpid()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def execute(self, *args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        began = time.perf_counter()
        result = self._cursor.execute(*args, **kwargs)
        attachment = self._attachment
        attachment.short_statements += 1
        if (
            time.perf_counter() - began > LOOK_AFTER_SECONDS
            or attachment.short_statements >= LOOK_EVERY_STATEMENTS
        ):
            attachment.short_statements = 0
            _drop_file_blocks(attachment)
        return result

    def cursor(self) -> WarehouseConnection:
        """Another connection to the same file (a plain cursor would see the instance's own
        catalog, not the file's)."""
        return open_connection(self._key, read_only=self._attachment.read_only)

    def close(self, *, checkpoint: bool = True) -> None:
        """Release this connection; the last one of the file detaches it, by default with a
        checkpoint. ``checkpoint=False`` leaves the writes in the write-ahead log, for a writer
        that commits often and checkpoints every few commits (``_detach``)."""
        if not self._open:
            return
        self._open = False
        if self._pid != os.getpid():
            return  # a forked child leaves its parent's connections alone
        if getattr(_state, "active", False):
            _dropped.append(self)  # finalized mid-change: closed once the change is complete
            return
        with _changing():
            self._release(checkpoint=checkpoint)

    def _release(self, *, checkpoint: bool = True) -> None:
        try:
            self._cursor.close()
        finally:
            _let_go(self._key, self._attachment, checkpoint=checkpoint)

    def __enter__(self) -> WarehouseConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a connection dropped without close() releases the file as a dropped one did (a
        # finalizer cannot raise)
        with suppress(Exception):
            self.close()
