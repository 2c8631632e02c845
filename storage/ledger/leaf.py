"""Ledger leaves: one event as RFC 8785 canonical JSON, with commitments instead of content.

A leaf is ``{"v", "origin", "type", "tenant", "actor", "session", "turn", "time_ms", "body"}``
serialised by RFC 8785 (JCS), so any implementation reproduces the exact bytes. Leaves hold no
floats (number formatting differs between languages) and stay under 64 KiB.

Content (prompts, images, masks, manifests) appears only as a *salted commitment*::

    "salted-sha256:" + base64url(SHA-256(salt || SHA-256(content)))

The content and its 16-byte salt live in the blob store. Anyone holding both can check the
commitment; nobody can guess the content from the leaf (the salt defeats dictionary attacks on
short prompts); erasing the content and salt leaves the tree intact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import rfc8785

from storage.ledger.events import LedgerEvent

LEAF_VERSION = 1
MAX_LEAF_BYTES = 65_535
COMMITMENT_PREFIX = "salted-sha256:"


class LeafError(ValueError):
    """An event that cannot become a leaf (floats, too large, malformed)."""


def _no_floats(value: Any, path: str) -> None:
    if isinstance(value, float):
        raise LeafError(f"ledger leaves hold no floats; {path} is {value!r} (use integers)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise LeafError(f"{path} has a non-string key {key!r}")
            _no_floats(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_floats(item, f"{path}[{i}]")


def leaf_document(origin: str, event: LedgerEvent, time_ms: int) -> dict[str, Any]:
    """The JSON object a leaf serialises."""
    return {
        "v": LEAF_VERSION,
        "origin": origin,
        "type": event.type,
        "tenant": event.tenant,
        "actor": event.actor,
        "session": event.session,
        "turn": event.turn,
        "time_ms": int(time_ms),
        "body": event.body,
    }


def encode_leaf(origin: str, event: LedgerEvent, time_ms: int) -> bytes:
    """The canonical bytes of one event's leaf; refuses floats and leaves of 64 KiB or more."""
    doc = leaf_document(origin, event, time_ms)
    _no_floats(doc, "leaf")
    try:
        data = rfc8785.dumps(doc)
    except Exception as exc:  # rfc8785 raises its own types for unsupported values
        raise LeafError(f"the {event.type} event cannot be canonicalised: {exc}") from exc
    if len(data) > MAX_LEAF_BYTES:
        raise LeafError(
            f"the {event.type} leaf is {len(data):,} bytes; leaves stay under 64 KiB "
            "(put content in the blob store and commit to it)"
        )
    return data


def decode_leaf(leaf: bytes) -> dict[str, Any]:
    """Parse a leaf; raises ``LeafError`` when it is not a version-1 leaf."""
    try:
        doc = json.loads(leaf)
    except ValueError as exc:
        raise LeafError(f"the leaf is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != LEAF_VERSION:
        raise LeafError("the leaf is not a version-1 Custody leaf")
    return doc


def is_canonical(leaf: bytes) -> bool:
    """True when ``leaf`` is exactly the RFC 8785 serialisation of itself."""
    try:
        return bool(rfc8785.dumps(json.loads(leaf)) == leaf)
    except Exception:
        return False


def new_salt() -> bytes:
    """A fresh 16-byte salt for one commitment."""
    return os.urandom(16)


def commit_digest(content_sha256: bytes, salt: bytes) -> str:
    """The commitment to content whose SHA-256 digest is ``content_sha256``."""
    digest = hashlib.sha256(salt + content_sha256).digest()
    return COMMITMENT_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def commit_content(data: bytes, salt: bytes) -> str:
    """The salted commitment to ``data``: SHA-256(salt || SHA-256(data)), base64url."""
    return commit_digest(hashlib.sha256(data).digest(), salt)


def iter_commitments(body: Any, path: str = "body") -> Iterator[tuple[str, str]]:
    """Every (json-path, commitment) inside an event body."""
    if isinstance(body, str):
        if body.startswith(COMMITMENT_PREFIX):
            yield path, body
    elif isinstance(body, dict):
        for key, value in body.items():
            yield from iter_commitments(value, f"{path}.{key}")
    elif isinstance(body, list):
        for i, value in enumerate(body):
            yield from iter_commitments(value, f"{path}[{i}]")
