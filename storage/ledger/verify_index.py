"""Verify the index tables the API and lookups serve against the ledger's leaves.

The ``turns``, ``turn_images`` and ``decision_inputs`` rows, and the ``blob_commitments`` salts,
are not part of the tree: a table owner can edit them without touching a leaf. So every value in
them is checked against the turn's events (the ``ledger_entries`` columns ``turn_id``/``type``
were checked against the leaf bytes first, by ``verify``):

- a turn with a closing event (``turn.released``/``turn.failed``/``turn.interrupted``) has a
  ``turns`` row, and every ``turns`` row has events; status and outcome follow the closing event;
  tenant, actor, session, model, route and first index follow the leaves; model version, finish
  and block reason and upstream status of a released turn follow its ``upstream.returned``;
- values the leaves hold only as commitments are opened with the recorded salt: the request and
  prompt SHA-256, every input image's SHA-256 (``turn.received``); output rows equal the
  ``output.signed`` events; decision-input rows equal the ``policy.decided`` commitments;
- index rows of no turn, an emptied salt without a ``blob_erasures`` row, and an erasure row
  whose content no ``content.erased`` event names are faults.

A ``turn.received`` whose image list was too long for its leaf holds it as a blob
(``images_blob``, ``images_count``): the list is opened through ``contents`` and checked like one
in the leaf; when it cannot be opened (erased, no blob store given) only its count is checked.

Streams the ``turns`` table in batches by key (memory bounded by the batch), with one query per
table per batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine, bindparam, inspect, text

from storage.ledger.leaf import LeafError, commit_digest, decode_leaf
from storage.ledger.verify_fingerprints import TABLE, check_fingerprints, fingerprint_rows

BATCH = 500
CLOSING = {"turn.released": "released", "turn.failed": "failed", "turn.interrupted": "interrupted"}
TURN_FIELDS = (
    "turn_id, tenant, actor, session_id, model, api_version, method, status, outcome,"
    " prompt_sha256, request_sha256, upstream_status, model_version, finish_reason,"
    " block_reason, first_entry_index"
)

FaultSink = Callable[[int | None, str, str, str | None], None]  # (index, kind, message, row)
UNREAD = "images_unread"  # set on a decoded body whose spilled image list could not be opened


@runtime_checkable
class ContentOpener(Protocol):
    """Opens a commitment to its content (``storage.blobs.Commitments``); None when erased."""

    def open(self, commitment: str) -> bytes | None: ...


@dataclass
class _Events:
    """The leaves of one turn, in index order."""

    docs: list[tuple[int, dict[str, Any]]]

    def of(self, type_: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, d) for i, d in self.docs if d.get("type") == type_]

    def first(self, type_: str) -> dict[str, Any] | None:
        found = self.of(type_)
        return found[0][1] if found else None

    def closing(self) -> tuple[int, dict[str, Any]] | None:
        found = [(i, d) for i, d in self.docs if d.get("type") in CLOSING]
        return found[-1] if found else None


def _in(sql: str, *names: str) -> Any:
    return text(sql).bindparams(*(bindparam(n, expanding=True) for n in names))


def verify_index(engine: Engine, fault: FaultSink, contents: ContentOpener | None = None) -> int:
    """Check every index row against the leaves; report faults through ``fault``. Returns the
    number of ``turns`` rows checked. ``contents`` opens image lists spilled to blobs."""
    names = set(inspect(engine).get_table_names())
    if not {"turns", "turn_images", "decision_inputs", "blob_commitments"} <= names:
        return 0
    checked = 0
    with engine.connect() as conn:
        closing = ", ".join(f"'{t}'" for t in CLOSING)
        for idx, turn_id in conn.execute(
            text(
                f"SELECT c.idx, c.turn_id FROM ledger_entries c WHERE c.type IN ({closing})"
                " AND c.turn_id IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM turns t WHERE t.turn_id = c.turn_id) ORDER BY c.idx"
            )
        ):
            fault(int(idx), "index", f"turn {turn_id} closes here but has no turns row", None)
        fingerprints = TABLE in names  # from migration 0009 on
        for table in ("turn_images", "decision_inputs", *((TABLE,) if fingerprints else ())):
            for row_id, turn_id in conn.execute(
                text(
                    f"SELECT id, turn_id FROM {table} WHERE NOT EXISTS"
                    f" (SELECT 1 FROM turns t WHERE t.turn_id = {table}.turn_id) ORDER BY id"
                )
            ):
                fault(
                    None, "index", f"the row belongs to no turn ({turn_id})", f"{table} id={row_id}"
                )
        _check_erasures(conn, fault)
        after = ""
        while True:
            rows = (
                conn.execute(
                    text(
                        f"SELECT {TURN_FIELDS} FROM turns WHERE turn_id > :after"
                        " ORDER BY turn_id LIMIT :n"
                    ),
                    {"after": after, "n": BATCH},
                )
                .mappings()
                .all()
            )
            if not rows:
                break
            _check_batch(
                conn, [dict(r) for r in rows], fault, fingerprints=fingerprints, contents=contents
            )
            checked += len(rows)
            after = str(rows[-1]["turn_id"])
    return checked


def _check_erasures(conn: Connection, fault: FaultSink) -> None:
    for commitment, digest in conn.execute(
        text(
            "SELECT b.commitment, b.digest FROM blob_commitments b WHERE length(b.salt) = 0"
            " AND NOT EXISTS (SELECT 1 FROM blob_erasures e WHERE e.digest = b.digest)"
        )
    ):
        fault(
            None,
            "erasure",
            f"the salt of blob {digest} was emptied without a recorded erasure",
            f"blob_commitments commitment={commitment}",
        )
    erased: set[str] = set()
    for (leaf,) in conn.execute(
        text("SELECT leaf FROM ledger_entries WHERE type = 'content.erased'")
    ):
        try:
            body = decode_leaf(bytes(leaf)).get("body", {})
        except LeafError:
            continue
        erased.update(c for c in body.get("commitments", []) if isinstance(c, str))
    for row_id, digest in conn.execute(text("SELECT id, digest FROM blob_erasures ORDER BY id")):
        # The salts this erasure emptied (the same content committed again later keeps its own).
        emptied = {
            str(c)
            for (c,) in conn.execute(
                text(
                    "SELECT commitment FROM blob_commitments WHERE digest = :d AND length(salt) = 0"
                ),
                {"d": digest},
            )
        }
        if not emptied <= erased:
            fault(
                None,
                "erasure",
                f"blob {digest} is recorded as erased but no content.erased event names its"
                " commitments",
                f"blob_erasures id={row_id}",
            )


def _check_batch(
    conn: Connection,
    turns: list[dict[str, Any]],
    fault: FaultSink,
    *,
    fingerprints: bool,
    contents: ContentOpener | None = None,
) -> None:
    ids = [str(t["turn_id"]) for t in turns]
    events: dict[str, _Events] = {i: _Events([]) for i in ids}
    for idx, turn_id, leaf in conn.execute(
        _in(
            "SELECT idx, turn_id, leaf FROM ledger_entries WHERE turn_id IN :ids ORDER BY idx",
            "ids",
        ),
        {"ids": ids},
    ):
        try:
            events[str(turn_id)].docs.append((int(idx), decode_leaf(bytes(leaf))))
        except LeafError:
            continue  # already a fault of the leaf
    for ev in events.values():
        for _, doc in ev.docs:
            if doc.get("type") == "turn.received":
                _read_spilled_images(doc.get("body") or {}, contents)
    images: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in conn.execute(
        _in("SELECT * FROM turn_images WHERE turn_id IN :ids ORDER BY id", "ids"), {"ids": ids}
    ).mappings():
        images[str(r["turn_id"])].append(dict(r))
    inputs: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in conn.execute(
        _in("SELECT * FROM decision_inputs WHERE turn_id IN :ids ORDER BY id", "ids"), {"ids": ids}
    ).mappings():
        inputs[str(r["turn_id"])].append(dict(r))
    wanted: set[str] = set()
    for ev in events.values():
        for _, doc in ev.docs:
            body = doc.get("body") or {}
            wanted.update(
                c for c in (body.get("request"), body.get("prompt")) if isinstance(c, str)
            )
            for img in body.get("images", []) if doc.get("type") == "turn.received" else []:
                if isinstance(img, dict) and isinstance(img.get("commitment"), str):
                    wanted.add(img["commitment"])
    salts: dict[str, bytes] = {}
    if wanted:
        for c, salt in conn.execute(
            _in("SELECT commitment, salt FROM blob_commitments WHERE commitment IN :c", "c"),
            {"c": sorted(wanted)},
        ):
            salts[str(c)] = bytes(salt)
    prints = fingerprint_rows(conn, ids) if fingerprints else {}
    for turn in turns:
        tid = str(turn["turn_id"])
        _check_turn(turn, events[tid], images[tid], inputs[tid], salts, fault)
        if fingerprints:
            docs = [d for _, d in events[tid].docs]
            check_fingerprints(tid, turn["tenant"], docs, prints[tid], salts, fault)


def _read_spilled_images(body: dict[str, Any], contents: ContentOpener | None) -> None:
    """Put a spilled image list back in ``body["images"]``, or mark it unread."""
    spilled = body.get("images_blob")
    if "images" in body or not isinstance(spilled, str):
        return
    data = contents.open(spilled) if contents is not None else None
    try:
        listed = json.loads(data) if data is not None else None
    except ValueError:
        listed = None
    if isinstance(listed, list):
        body["images"] = listed
    else:
        body[UNREAD] = True


def _opens(sha256: Any, commitment: str, salts: dict[str, bytes]) -> bool | None:
    """Whether the plain SHA-256 ``sha256`` opens ``commitment`` (None: the salt was erased)."""
    salt = salts.get(commitment)
    if salt is None:
        return False
    if not salt:
        return None
    try:
        return commit_digest(bytes.fromhex(str(sha256)), salt) == commitment
    except ValueError:
        return False


def _check_turn(
    turn: dict[str, Any],
    ev: _Events,
    images: list[dict[str, Any]],
    inputs: list[dict[str, Any]],
    salts: dict[str, bytes],
    fault: FaultSink,
) -> None:
    tid = turn["turn_id"]
    where = f"turns turn_id={tid}"

    def bad(column: str, expected: Any) -> None:
        fault(
            None,
            "index",
            f"{column} is {turn.get(column)!r} but the turn's events say {expected!r}",
            where,
        )

    if not ev.docs:
        fault(None, "index", "the row has no ledger events", where)
        return
    first_idx, first = ev.docs[0]
    closing = ev.closing()
    if closing is None:
        fault(None, "index", "the row has no closing event in the ledger", where)
        return
    # A turn whose every event went in its closing append cannot know its first index then.
    one_append = all(d.get("time_ms") == closing[1].get("time_ms") for _, d in ev.docs)
    for column, expected in (
        ("tenant", first.get("tenant")),
        ("actor", first.get("actor")),
        ("session_id", first.get("session")),
        ("first_entry_index", first_idx),
        ("status", CLOSING[closing[1]["type"]]),
    ):
        if column == "first_entry_index" and turn.get(column) is None and one_append:
            continue
        if turn.get(column) != expected:
            bad(column, expected)
    cbody = closing[1].get("body") or {}
    status = CLOSING[closing[1]["type"]]
    outcome = {
        "released": cbody.get("safety"),
        "failed": cbody.get("reason") or cbody.get("status"),
        "interrupted": cbody.get("reason"),
    }[status]
    if turn.get("outcome") != outcome:
        bad("outcome", outcome)
    received = ev.first("turn.received")
    rbody = (received or {}).get("body") or {}
    if received is not None:
        for column, key in (
            ("model", "model"),
            ("api_version", "api_version"),
            ("method", "method"),
        ):
            if turn.get(column) != rbody.get(key):
                bad(column, rbody.get(key))
    returned = ev.first("upstream.returned")
    if status == "released" and returned is not None:
        ubody = returned.get("body") or {}
        reasons = ubody.get("finish_reasons") or []
        for column, expected in (
            ("model_version", ubody.get("model_version")),
            ("finish_reason", reasons[0] if reasons else None),
            ("block_reason", ubody.get("block_reason")),
            ("upstream_status", ubody.get("status")),
        ):
            if turn.get(column) != expected:
                bad(column, expected)
    failed = ev.first("turn.failed")
    request_c = rbody.get("request") or ((failed or {}).get("body") or {}).get("request")
    for column, commitment in (
        ("request_sha256", request_c),
        ("prompt_sha256", rbody.get("prompt")),
    ):
        if isinstance(commitment, str) and _opens(turn.get(column), commitment, salts) is False:
            fault(None, "index", f"{column} does not open the leaf's commitment", where)
    _check_images(tid, rbody, ev, status, images, salts, fault)
    expected_inputs = sorted(
        (str((d.get("body") or {}).get("stage")), str((d.get("body") or {}).get("input")))
        for _, d in ev.of("policy.decided")
        if isinstance((d.get("body") or {}).get("input"), str)
    )
    stored_inputs = sorted((str(r["stage"]), str(r["input_commitment"])) for r in inputs)
    if stored_inputs != expected_inputs:
        fault(
            None,
            "index",
            f"decision_inputs rows {stored_inputs} do not equal the policy.decided"
            f" commitments {expected_inputs}",
            f"decision_inputs turn_id={tid}",
        )


def _check_images(
    tid: str,
    rbody: dict[str, Any],
    ev: _Events,
    status: str,
    images: list[dict[str, Any]],
    salts: dict[str, bytes],
    fault: FaultSink,
) -> None:
    inputs = [r for r in images if r["direction"] == "input"]
    outputs = [r for r in images if r["direction"] != "input"]
    if rbody.get(UNREAD):  # an image list in a blob that cannot be opened: its count only
        if len(inputs) != rbody.get("images_count"):
            fault(
                None,
                "index",
                f"{len(inputs)} input image rows, but turn.received counts"
                f" {rbody.get('images_count')}",
                f"turn_images turn_id={tid}",
            )
        return
    leaf_inputs = [i for i in rbody.get("images", []) if isinstance(i, dict)]
    if len(inputs) != len(leaf_inputs) and (inputs or status != "interrupted"):
        fault(
            None,
            "index",
            f"{len(inputs)} input image rows, but turn.received lists {len(leaf_inputs)}",
            f"turn_images turn_id={tid}",
        )
    for row, img in zip(_by_position(inputs), _by_leaf_position(leaf_inputs), strict=False):
        fields = (
            ("role", img.get("role")),
            ("content_index", img.get("content")),
            ("part_index", img.get("part")),
            ("mime_type", img.get("mime_type")),
            ("size", img.get("bytes")),
            ("width", img.get("width")),
            ("height", img.get("height")),
        )
        wrong = [c for c, v in fields if row.get(c) != v]
        if _opens(row.get("sha256"), str(img.get("commitment")), salts) is False:
            wrong.append("sha256")
        if wrong:
            fault(
                None,
                "index",
                f"{', '.join(wrong)} disagree with turn.received",
                f"turn_images id={row['id']}",
            )
    signed = [d.get("body") or {} for _, d in ev.of("output.signed")]
    if status != "released":
        signed = []
    if len(outputs) != len(signed):
        fault(
            None,
            "index",
            f"{len(outputs)} output image rows, but the ledger has {len(signed)} output.signed",
            f"turn_images turn_id={tid}",
        )
    leaf_out = sorted(
        signed,
        key=lambda b: (b.get("candidate", 0), _part(b)),
    )
    for row, body in zip(_by_position(outputs), leaf_out, strict=False):
        expected: tuple[tuple[str, Any], ...] = (
            ("content_index", body.get("candidate")),
            ("part_index", _part(body)),
            ("mime_type", body.get("mime_type")),
            ("sha256", body.get("upstream_sha256")),
            ("signed_sha256", body.get("signed_sha256")),
            ("manifest_sha256", body.get("manifest_sha256")),
        )
        wrong = [c for c, v in expected if row.get(c) != v]
        if wrong:
            fault(
                None,
                "index",
                f"{', '.join(wrong)} disagree with output.signed",
                f"turn_images id={row['id']}",
            )


def _part(body: dict[str, Any]) -> int:
    chunk, part = int(body.get("chunk") or 0), int(body.get("part") or 0)
    return part if chunk == 0 else chunk * 1000 + part


def _by_position(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (int(r["content_index"] or 0), int(r["part_index"] or 0)))


def _by_leaf_position(images: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(images, key=lambda i: (int(i.get("content") or 0), int(i.get("part") or 0)))
