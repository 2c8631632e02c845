"""Fingerprints this process already computed, by tenant and the SHA-256 of the bytes.

A fingerprint (PDQ and the ISCC Image-Code, ``fingerprint.py``) is a function of an image's
bytes alone, and it costs ~25 ms of CPU for a 1024² PNG. The same bytes come back often: a
session's next turn edits the previous turn's output (the signed file, whose pixels are the
upstream's: c2pa adds a chunk, never a pixel), and apps send their reference images again with
every turn. So the pipeline asks here first, and records every image it fingerprinted — an
input under its own digest, an output under the upstream's digest and the signed file's.

Entries are per tenant: one tenant's turns cannot learn, by timing, which images another
tenant sent. The memo is bounded (least recently used entries go first) and thread-safe;
``None`` (bytes no decoder reads) is remembered like any other result.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from governance.provenance.fingerprint import Fingerprint, fingerprint

DEFAULT_CAPACITY = 4096  # entries; each is ~300 bytes with its key


class FingerprintMemo:
    """A bounded, thread-safe map of (tenant, SHA-256 hex) to the image's fingerprint."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a fingerprint memo holds at least one entry")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], Fingerprint | None] = OrderedDict()
        self._mutex = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tenant: str, sha256: str) -> tuple[bool, Fingerprint | None]:
        """(True, the fingerprint) when these bytes were fingerprinted for ``tenant``, else
        (False, None)."""
        key = (tenant, sha256)
        with self._mutex:
            if key not in self._entries:
                self.misses += 1
                return False, None
            self._entries.move_to_end(key)
            self.hits += 1
            return True, self._entries[key]

    def remember(self, tenant: str, sha256: str, found: Fingerprint | None) -> None:
        key = (tenant, sha256)
        with self._mutex:
            self._entries[key] = found
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def fingerprint(self, tenant: str, data: bytes, sha256: str) -> Fingerprint | None:
        """The fingerprint of ``data`` (whose SHA-256 hex is ``sha256``): remembered, or
        computed and remembered (blocking: run it in a worker thread)."""
        known, found = self.lookup(tenant, sha256)
        if known:
            return found
        found = fingerprint(data)
        self.remember(tenant, sha256, found)
        return found
