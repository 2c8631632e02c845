"""Keep every ledger event body under the 64 KiB leaf limit, whatever callers or upstreams send.

Contract: ``bound_body(body, commit)`` returns ``body`` unchanged when its JSON is small (the
common case: one ``orjson.dumps``). Otherwise every value larger than ``MAX_FIELD_BYTES`` is moved
out of the leaf into a committed blob, recursively through nested objects:

- a long string keeps a ``PREVIEW_CHARS`` preview under its key, with ``<key>_chars`` (its full
  length) and ``<key>_full`` (a salted commitment to its UTF-8 text);
- a large list or object is replaced by ``<key>_blob`` (a commitment to its canonical JSON),
  ``<key>_bytes`` and, for a list, ``<key>_count``.

Why: a leaf that overflows is a 500 that loses the event itself (a 429 from upstream masked, a
turn with 500 images unrecorded). The full value stays verifiable — the commitment is in the
leaf, the bytes and salt in the blob store, durable before the leaf like all turn content.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

MAX_FIELD_BYTES = 2_048  # a single value above this leaves the leaf
MAX_BODY_BYTES = 32_768  # a body above this after bounding gives up its largest fields too
FAST_PATH_BYTES = 16_384
PREVIEW_CHARS = 512

Commit = Callable[[bytes], str]
_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_JSON)
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: the leaf encoder decides
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode()


def _size(value: Any) -> int:
    return len(_json(value))


def bound_body(body: dict[str, Any], commit: Commit) -> dict[str, Any]:
    """``body`` with every oversized value replaced by a commitment (see the module doc)."""
    if _size(body) <= FAST_PATH_BYTES:
        return body
    bounded = _bound_object(body, commit)
    while _size(bounded) > MAX_BODY_BYTES:  # many mid-sized fields: spill the largest
        key = max(
            (k for k, v in bounded.items() if isinstance(v, dict | list | str)),
            key=lambda k: _size(bounded[k]),
            default=None,
        )
        if key is None:
            break
        bounded = {**bounded, **_spill(key, bounded.pop(key), commit)}
    return bounded


def _bound_object(value: dict[str, Any], commit: Commit) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if _size(item) <= MAX_FIELD_BYTES:
            out[key] = item
            continue
        if isinstance(item, dict):
            inner = _bound_object(item, commit)
            if _size(inner) <= 4 * MAX_FIELD_BYTES:
                out[key] = inner
                continue
        out.update(_spill(str(key), item, commit))
    return out


def _spill(key: str, item: Any, commit: Commit) -> dict[str, Any]:
    if isinstance(item, str):
        return {
            key: item[:PREVIEW_CHARS],
            f"{key}_chars": len(item),
            f"{key}_full": commit(item.encode("utf-8", "surrogatepass")),
        }
    data = _json(item)
    spilled: dict[str, Any] = {f"{key}_blob": commit(data), f"{key}_bytes": len(data)}
    if isinstance(item, list):
        spilled[f"{key}_count"] = len(item)
    return spilled
