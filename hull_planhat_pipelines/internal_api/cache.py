"""The cached Planhat user list.

Team members change rarely and listing them is a full fetch, so the list is kept for
``ttl`` seconds (10 minutes, as the seed connector did). The cache is shared by the server's
worker threads: one lock guards its state, and a second makes concurrent misses wait for one
upstream fetch instead of each making its own. A write (create, update, ``cacheclear``) bumps a
generation, so a fetch that started before the write cannot store its now stale result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Users = list[dict[str, Any]]


class UsersCache:
    def __init__(self, ttl: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._fill_lock = threading.Lock()
        self._users: Users | None = None
        self._stored_at = 0.0
        self._generation = 0

    def get(self, fetch: Callable[[], Users]) -> Users:
        """The cached list while fresh; otherwise ``fetch`` it (once, whoever else is waiting)."""
        cached = self._fresh()
        if cached is not None:
            return cached
        with self._fill_lock:
            cached = self._fresh()
            if cached is not None:
                return cached
            with self._lock:
                generation = self._generation
            started = self._clock()
            users = fetch()
            with self._lock:
                if generation == self._generation:
                    self._users, self._stored_at = users, started
            return users

    def clear(self) -> None:
        """Forget the list; a fetch under way will not store what it gets."""
        with self._lock:
            self._users = None
            self._generation += 1

    def _fresh(self) -> Users | None:
        with self._lock:
            if self._users is not None and self._clock() - self._stored_at < self.ttl:
                return self._users
            return None
