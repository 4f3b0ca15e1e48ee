"""Warehouse connections served by kept in-memory DuckDB instances that attach the file.

``duckdb.connect(path)`` builds a database instance and its closing checkpoints and destroys
it: about 14 ms a connection before any work, paid by every short write (a one-record delivery
commits its journal a few hundred times a run). Attaching the file to an in-memory instance the
process keeps costs about 1 ms, and detaching it checkpoints and releases the file's lock just
as closing did. So the rule "open for one step, never held across an HTTP call" keeps its
meaning: when the last connection to a file closes, the file is detached and other processes
may take it.

Each file is attached to an instance of its own (``information_schema`` then lists that file's
tables only) under its stem, as ``duckdb.connect`` names it. Connections to a file already
attached in this process share the attachment (each its own cursor), as connections to one
instance did; asking for the other mode while it is attached is refused, as DuckDB refuses it.
An instance whose configuration a connection locked (operator SQL is run locked down) is closed
with its last connection instead of serving the next file.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

IDLE_INSTANCES = 1
"""In-memory instances kept while no file is attached to them: a process works on one
warehouse; another file pays for an instance of its own."""
KEEP_BELOW_BYTES = 64 * 2**20
"""An instance is closed, not kept, when its buffers held this much as its file was detached or
the process grew this much while it was attached: detaching frees its memory to the allocator
but not to the system (a full load's step would keep its high-water mark for the life of the
process), closing returns it, as closing a connection did. A short write (a journal commit:
about 20 MB of buffers, the process not growing) stays under it."""
RESERVED_CATALOGS = frozenset({"memory", "system", "temp", "main"})


@dataclass
class _Attachment:
    host: duckdb.DuckDBPyConnection
    catalog: str
    read_only: bool
    resident_at_attach: int
    users: int = 0


_guard = threading.RLock()  # a finalizer may close a connection while it is held
_attached: dict[str, _Attachment] = {}
_idle: list[duckdb.DuckDBPyConnection] = []
_owner_pid = os.getpid()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _catalog(path: str) -> str:
    stem = Path(path).stem or "warehouse"
    return f"{stem}_warehouse" if stem.lower() in RESERVED_CATALOGS else stem


def _forget_inherited() -> None:
    """A forked child does not use its parent's instances (their threads did not follow)."""
    global _owner_pid
    if os.getpid() != _owner_pid:
        _attached.clear()
        _idle.clear()
        _owner_pid = os.getpid()


def _host() -> duckdb.DuckDBPyConnection:
    return _idle.pop() if _idle else duckdb.connect(":memory:")


def _resident() -> int:
    """The process's resident bytes (Linux; 0 elsewhere: the buffers alone decide)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _locked(host: duckdb.DuckDBPyConnection) -> bool:
    row = host.execute("select current_setting('lock_configuration')").fetchone()
    return bool(row) and str(row[0]).lower() == "true"


def open_connection(path: str, *, read_only: bool) -> WarehouseConnection:
    """A connection to ``path``'s tables (its default catalog); ``close()`` it when done."""
    key = os.path.abspath(path)
    with _guard:
        _forget_inherited()
        attachment = _attached.get(key)
        if attachment is None:
            host = _host()
            catalog = _catalog(key)
            mode = " (read_only)" if read_only else ""
            try:
                # spills go beside the file, as a connection to the file would put them
                host.execute(f"set temp_directory = {_literal(key + '.tmp')}")
                host.execute(f"attach {_literal(key)} as {_quote(catalog)}{mode}")
            except BaseException:
                _release_host(host)
                raise
            attachment = _Attachment(host, catalog, read_only, _resident())
            _attached[key] = attachment
        elif attachment.read_only != read_only:
            wanted = "read-only" if read_only else "read-write"
            raise duckdb.ConnectionException(
                f"{key} is open {'read-only' if attachment.read_only else 'read-write'} in this"
                f" process: it cannot also be opened {wanted} until those connections close"
            )
        cursor = attachment.host.cursor()
        try:
            cursor.execute(f"use {_quote(attachment.catalog)}")
        except BaseException:
            cursor.close()
            if not attachment.users:
                _detach(key, attachment)
            raise
        attachment.users += 1
    return WarehouseConnection(cursor, key)


def _buffered(host: duckdb.DuckDBPyConnection) -> int:
    row = host.execute("select coalesce(sum(memory_usage_bytes), 0) from duckdb_memory()")
    return int(row.fetchone()[0])  # type: ignore[index]


def _release_host(host: duckdb.DuckDBPyConnection) -> None:
    """Keep an unlocked instance with nothing attached for the next file; close the rest."""
    with suppress(duckdb.Error):
        if len(_idle) < IDLE_INSTANCES and not _locked(host):
            _idle.append(host)
            return
    host.close()


def _detach(key: str, attachment: _Attachment) -> None:
    """The file's last connection closed: checkpoint and release its lock."""
    _attached.pop(key, None)
    host = attachment.host
    grew = _resident() - attachment.resident_at_attach
    with suppress(duckdb.Error):
        if grew < KEEP_BELOW_BYTES and _buffered(host) < KEEP_BELOW_BYTES and not _locked(host):
            host.execute(f"detach {_quote(attachment.catalog)}")
            _release_host(host)
            return
    host.close()  # closing the instance detaches (and checkpoints) the file all the same


def _close(key: str, cursor: duckdb.DuckDBPyConnection) -> None:
    with _guard:
        attachment = _attached.get(key)
        try:
            cursor.close()
        finally:
            if attachment is not None:
                attachment.users -= 1
                if attachment.users <= 0:
                    _detach(key, attachment)


class WarehouseConnection:
    """A DuckDB connection to the warehouse file (a cursor of the instance that attached it):
    everything a ``DuckDBPyConnection`` does, and ``close()`` detaches the file once no other
    connection of this process uses it."""

    __slots__ = ("_cursor", "_key", "_open", "_pid")

    def __init__(self, cursor: duckdb.DuckDBPyConnection, key: str) -> None:
        self._cursor = cursor
        self._key = key
        self._open = True
        self._pid = os.getpid()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def execute(self, *args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        return self._cursor.execute(*args, **kwargs)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._pid == os.getpid():
            _close(self._key, self._cursor)

    def __enter__(self) -> WarehouseConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a connection dropped without close() releases the file as a dropped one did (a
        # finalizer cannot raise)
        with suppress(Exception):
            self.close()
