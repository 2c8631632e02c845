"""``custody ledger verify`` for ``image_fingerprints``: the lookup's rows against the leaves.

A fingerprint lookup answers from ``image_fingerprints``, outside the leaf bytes, so a table owner
who edits a row could point a lookup at another turn. Each row is held to what the ledger says:

- an output row equals the ``fingerprint`` of the ``output.signed`` event at its position (PDQ,
  quality, ISCC code) and names its ``upstream_sha256``; every ``output.signed`` that lists a
  fingerprint has its row;
- an input row's SHA-256 opens the commitment of the ``turn.received`` image at its position
  (inputs' fingerprints are not in leaves, by design — see docs/provenance.md — so a row can be
  tied to its image but not its hash to the pixels: that needs the blob, which may be erased);
- every row's tenant is its turn's, and its 16 band columns are the bands of its PDQ hash (the
  lookup reads the bands: an edited band would hide the row from it).

Faults name the row (``image_fingerprints id=…``), like the other index checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, bindparam, text

from storage.fingerprint_index import pdq_bands
from storage.ledger.leaf import commit_digest
from storage.schema.fingerprints import BAND_COLUMNS

FaultSink = Callable[[int | None, str, str, str | None], None]
TABLE = "image_fingerprints"


def fingerprint_rows(conn: Connection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The ``image_fingerprints`` rows of these turns, by turn."""
    rows: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    query = text(f"SELECT * FROM {TABLE} WHERE turn_id IN :ids ORDER BY id").bindparams(
        bindparam("ids", expanding=True)
    )
    for r in conn.execute(query, {"ids": ids}).mappings():
        rows[str(r["turn_id"])].append(dict(r))
    return rows


def _part(body: dict[str, Any]) -> int:
    chunk, part = int(body.get("chunk") or 0), int(body.get("part") or 0)
    return part if chunk == 0 else chunk * 1000 + part


def _opens(sha256: Any, commitment: Any, salts: dict[str, bytes]) -> bool | None:
    salt = salts.get(str(commitment))
    if salt is None:
        return False
    if not salt:
        return None  # erased: nothing left to open
    try:
        return bool(commit_digest(bytes.fromhex(str(sha256)), salt) == commitment)
    except ValueError:
        return False


def check_fingerprints(
    tid: str,
    tenant: Any,
    docs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    salts: dict[str, bytes],
    fault: FaultSink,
) -> None:
    """Check one turn's fingerprint rows against its decoded leaves ``docs``."""

    def bad(row: dict[str, Any], message: str) -> None:
        fault(None, "index", message, f"{TABLE} id={row['id']}")

    signed = {
        (int(b.get("candidate") or 0), _part(b)): b
        for b in ((d.get("body") or {}) for d in docs if d.get("type") == "output.signed")
        if isinstance(b.get("fingerprint"), dict)
    }
    received = next((d for d in docs if d.get("type") == "turn.received"), None)
    leaf_inputs = {
        (int(i.get("content") or 0), int(i.get("part") or 0)): i
        for i in ((received or {}).get("body") or {}).get("images", [])
        if isinstance(i, dict)
    }
    seen: set[tuple[int, int]] = set()
    for row in rows:
        position = (int(row["content_index"]), int(row["part_index"]))
        if row["tenant"] != tenant:
            bad(row, f"tenant {row['tenant']!r} is not the turn's ({tenant!r})")
        try:
            banded = tuple(row[b] for b in BAND_COLUMNS) == pdq_bands(str(row["pdq"]))
        except ValueError:
            banded = False
        if not banded:
            bad(row, "the band columns b0..b15 are not the bands of its pdq")
        if row["direction"] == "output":
            body = signed.get(position)
            if body is None:
                bad(row, "no output.signed event lists a fingerprint at this position")
                continue
            seen.add(position)
            fp = body["fingerprint"]
            expected = (
                ("pdq", fp.get("pdq")),
                ("pdq_quality", fp.get("pdq_quality")),
                ("iscc", fp.get("iscc")),
                ("sha256", body.get("upstream_sha256")),
            )
            wrong = [c for c, v in expected if row.get(c) != v]
            if wrong:
                bad(row, f"{', '.join(wrong)} disagree with output.signed")
        else:
            img = leaf_inputs.get(position)
            if img is None and ((received or {}).get("body") or {}).get("images_unread"):
                continue  # its image list is in a blob that cannot be opened (erased)
            if img is None:
                bad(row, "turn.received lists no input image at this position")
            elif _opens(row.get("sha256"), img.get("commitment"), salts) is False:
                bad(row, "sha256 does not open the commitment of turn.received")
    for position in sorted(set(signed) - seen):
        fault(
            None,
            "index",
            f"output.signed lists a fingerprint at {position} but there is no row",
            f"{TABLE} turn_id={tid}",
        )
