"""Sign-in attempts per client address: a sliding one-minute window, in this process.

Per-account throttling lives on the account's row (``governance.accounts.store``), shared by
every process; this bounds how fast one address can try many accounts (or flood the ledger with
``console.sign_in_failed``) against one process.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

WINDOW_S = 60.0
MAX_CLIENTS = 10_000  # addresses tracked; the oldest is forgotten first


class ClientThrottle:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._refusing: set[str] = set()  # clients refused since their last admitted attempt
        self._lock = threading.Lock()

    def admit(self, client: str, now: float | None = None) -> tuple[float, bool]:
        """``(0, False)`` when ``client`` may try now (the attempt is counted), else the seconds
        to wait and whether this is the first refusal since its last admitted attempt."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            while times and times[0] <= now - WINDOW_S:
                times.popleft()
            self._seen[client] = times
            if len(self._seen) > MAX_CLIENTS:
                forgotten, _ = self._seen.popitem(last=False)
                self._refusing.discard(forgotten)
            if len(times) >= self.per_minute:
                first = client not in self._refusing
                self._refusing.add(client)
                return times[0] + WINDOW_S - now, first
            self._refusing.discard(client)
            times.append(now)
            return 0.0, False
