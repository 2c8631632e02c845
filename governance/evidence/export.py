"""Write an evidence bundle: selected entries with their proofs, streamed into a zip.

Memory stays constant in the size of the selection except for the zip's central directory: the
entries are read from the database in batches of ``BATCH``, each file goes into the zip as it is
made, and the parts that list every entry (``SHA256SUMS``, ``openings.jsonl``, ``index.html``)
are spooled to temporary files and copied in at the end. Every proof is against one checkpoint
(the newest; the CLI signs one first when the newest does not cover the log), so a recipient
checks one signature for the whole bundle.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import text

from governance import __version__
from governance.evidence import layout
from storage.blobs import Commitment, Commitments
from storage.ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from storage.ledger.events import Entry
from storage.ledger.log import Ledger
from storage.ledger.merkle import ProofError, check_consistency, prove_inclusion
from storage.ledger.proof_file import format_proof
from storage.ledger.store import entry_from_row, hash_reader
from storage.ledger.timestamps import CheckpointTimestamps
from storage.sessions import SessionStore

BATCH = 500
Progress = Callable[[int, int], None]


class ExportError(ValueError):
    """An export that cannot be made as asked (the message says what to change)."""


@dataclass(frozen=True)
class Selection:
    """Which entries go into a bundle: one tenant's, optionally one session or turn, a time
    window ``[since_ms, until_ms)``."""

    tenant: str
    session: str | None = None
    turn: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "session": self.session,
            "turn": self.turn,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
        }


MAX_TIME_MS = 2**62  # the ledger's times are milliseconds since 1970 in a signed 64-bit column


def time_ms(value: int | str | None, name: str) -> int | None:
    """A bound of the time window: milliseconds since 1970, or an ISO 8601 time (one without a
    zone is UTC). ``ValueError`` names ``name`` and the forms it takes."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} takes an ISO 8601 time or milliseconds, not {value!r}")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{name} takes an ISO 8601 time (2026-12-03T08:00:00Z) or milliseconds since"
                f" 1970, not {value[:64]!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = int(moment.timestamp() * 1000)
    if not 0 <= value <= MAX_TIME_MS:
        raise ValueError(f"{name} must be from 1970 on (0 to 2^62 milliseconds), not {value}")
    return value


def time_window(
    since: int | str | None, until: int | str | None, names: tuple[str, str] = ("since", "until")
) -> tuple[int | None, int | None]:
    """``[since, until)`` in milliseconds (``time_ms``); an empty window is a ``ValueError``."""
    start, end = time_ms(since, names[0]), time_ms(until, names[1])
    if start is not None and end is not None and end <= start:
        raise ValueError(
            f"{names[1]} ({end} ms) is not after {names[0]} ({start} ms): the window [since,"
            " until) would hold nothing"
        )
    return start, end


@dataclass(frozen=True)
class Keys:
    """What a recipient needs besides the bundle's own files: published keys and chains."""

    log_vkey: str
    c2pa_chain_pem: bytes
    c2pa_anchors_pem: bytes


@dataclass
class ExportResult:
    """What was written: counts, the checkpoint, and the SHA-256 of the bundle index."""

    bundle_id: str
    entries: int
    checkpoint_size: int
    openings: int
    withheld: int
    images: int
    files: int
    bytes: int
    sums_sha256: str
    earlier_checkpoints: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.bundle_id,
            "entries": self.entries,
            "checkpoint_size": self.checkpoint_size,
            "openings": self.openings,
            "withheld": self.withheld,
            "images": self.images,
            "files": self.files,
            "bytes": self.bytes,
            "sha256sums_sha256": self.sums_sha256,
            "earlier_checkpoints": self.earlier_checkpoints,
        }


# --- selecting entries -----------------------------------------------------------------------


def _where(sel: Selection, size: int) -> tuple[str, dict[str, Any]]:
    clauses = ["tenant = :tenant", "idx < :size"]
    params: dict[str, Any] = {"tenant": sel.tenant, "size": size}
    if sel.turn is not None:
        clauses.append("turn_id = :turn")
        params["turn"] = sel.turn
    if sel.since_ms is not None:
        clauses.append("time_ms >= :since")
        params["since"] = sel.since_ms
    if sel.until_ms is not None:
        clauses.append("time_ms < :until")
        params["until"] = sel.until_ms
    return " AND ".join(clauses), params


def count_candidates(ledger: Ledger, sel: Selection, size: int) -> int:
    """How many entries the database filters pass (the session filter reads the leaves)."""
    where, params = _where(sel, size)
    with ledger.read_engine.connect() as conn:
        return int(
            conn.execute(text(f"SELECT count(*) FROM ledger_entries WHERE {where}"), params).one()[
                0
            ]
        )


def select_entries(ledger: Ledger, sel: Selection, size: int) -> Iterator[Entry]:
    """The selected entries below ``size``, in index order."""
    for batch in select_batches(ledger, sel, size):
        yield from batch


def select_batches(ledger: Ledger, sel: Selection, size: int) -> Iterator[list[Entry]]:
    """The selected entries below ``size``, in index order, ``BATCH`` rows a query."""
    where, params = _where(sel, size)
    sessions = (
        SessionStore(ledger.read_engine).session_ids_for(sel.tenant, sel.session)
        if sel.session is not None
        else None
    )
    after = -1
    while True:
        with ledger.read_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT idx, time_ms, leaf, leaf_hash FROM ledger_entries"
                    f" WHERE {where} AND idx > :after ORDER BY idx LIMIT {BATCH}"
                ),
                {**params, "after": after},
            ).all()
        if not rows:
            return
        batch = []
        for idx, time_ms, leaf, lh in rows:
            entry = entry_from_row(int(idx), int(time_ms), bytes(leaf), bytes(lh))
            if sessions is None or entry.event.session in sessions:
                batch.append(entry)
        if batch:
            yield batch
        after = int(rows[-1][0])


# --- the zip ----------------------------------------------------------------------------------


class _ZipSink:
    """Files into a zip, one at a time, each hashed as it is written for ``SHA256SUMS``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.zip = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self.sums = tempfile.TemporaryFile("w+b")  # noqa: SIM115 (closed by ``finish``)
        self.names: set[str] = set()
        self.bytes = 0

    def _info(self, name: str, compress: bool) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        return info

    def add(self, name: str, data: bytes, *, compress: bool = True, listed: bool = True) -> None:
        if name in self.names:
            return
        self.names.add(name)
        self.zip.writestr(self._info(name, compress), data)
        self.bytes += len(data)
        if listed:
            self.sums.write(f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode())

    def add_spooled(self, name: str, spool: IO[bytes], *, listed: bool = True) -> str:
        """Copy a temporary file in, 1 MiB at a time; its SHA-256 (hex)."""
        spool.seek(0)
        digest = hashlib.sha256()
        self.names.add(name)
        with self.zip.open(self._info(name, True), "w", force_zip64=True) as dst:
            while chunk := spool.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
                self.bytes += len(chunk)
        if listed:
            self.sums.write(f"{digest.hexdigest()}  {name}\n".encode())
        return digest.hexdigest()

    def abandon(self) -> None:
        """Close the zip and the sums spool if ``finish`` did not (no-op after it)."""
        if not self.sums.closed:
            self.sums.close()
        if self.zip.fp is not None:
            self.zip.close()

    def finish(self) -> str:
        """Add ``SHA256SUMS`` and close; the SHA-256 of ``SHA256SUMS``."""
        sha = self.add_spooled(layout.SUMS, self.sums, listed=False)
        self.sums.close()
        self.zip.close()
        return sha


# --- index.html ------------------------------------------------------------------------------

_HTML_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evidence bundle {id}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}}code{{font-size:.85em}}img{{max-width:12rem}}</style>
</head><body>
<h1>Evidence bundle {id}</h1>
<p>Ledger <code>{origin}</code>, tenant <code>{tenant}</code>. Every entry below is proven against
the signed checkpoint <a href="checkpoint.txt">checkpoint.txt</a> (size {size}). To check it
yourself, read <a href="VERIFY.md">VERIFY.md</a>; nothing here is to be trusted before that.</p>
<table><tr><th>entry</th><th>time (UTC)</th><th>event</th><th>actor</th><th>turn</th>
<th>content</th></tr>
"""


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _row_html(entry: Entry, cells: list[str]) -> bytes:
    ev, leaf, proof = entry.event, layout.entry_file(entry.index), layout.proof_file(entry.index)
    return (
        f'<tr id="e{entry.index}"><td><a href="{leaf}">{entry.index}</a>'
        f' (<a href="{proof}">proof</a>)</td><td>{_utc(entry.time_ms)}</td>'
        f"<td>{html.escape(ev.type)}</td><td>{html.escape(ev.actor)}</td>"
        f"<td><code>{html.escape(ev.turn or '')}</code></td><td>{'<br>'.join(cells)}</td></tr>\n"
    ).encode()


# --- the writer ------------------------------------------------------------------------------


@dataclass
class _Earlier:
    checkpoint: Checkpoint
    handed: bool  # given by the recipient (not only published by the log)


def _earlier_checkpoints(
    ledger: Ledger, target: Checkpoint, handed: Sequence[str]
) -> dict[int, _Earlier]:
    out = {cp.size: _Earlier(cp, False) for cp in ledger.checkpoints() if 0 < cp.size < target.size}
    verifier = ledger.signer.verifier()
    for note in handed:
        try:
            cp = open_checkpoint(note, verifier, ledger.origin)
        except CheckpointError as exc:
            raise ExportError(f"a --since-checkpoint is not this log's checkpoint: {exc}") from exc
        if cp.size > target.size:
            raise ExportError(
                f"a --since-checkpoint has {cp.size} entries, more than the newest checkpoint"
                f" ({target.size}): wait for the next checkpoint, then export again"
            )
        if cp.size == target.size:
            if cp.root != target.root:
                raise ExportError(
                    f"the --since-checkpoint of size {cp.size} has another root than this log's"
                    " checkpoint of that size: the log forked, or that checkpoint is not ours"
                )
            continue
        if cp.size > 0:
            out[cp.size] = _Earlier(cp, True)
    return out


def write_bundle(
    out: IO[bytes],
    *,
    bundle_id: str,
    ledger: Ledger,
    commitments: Commitments,
    keys: Keys,
    selection: Selection,
    checkpoint: Checkpoint,
    disclose: frozenset[str] | None,
    since_checkpoints: Sequence[str] = (),
    exported_by: str,
    progress: Progress | None = None,
    timestamp: Callable[[bytes], bytes] | None = None,
) -> ExportResult:
    """Stream the bundle of ``selection`` (entries below ``checkpoint.size``) into ``out``.

    ``disclose`` is the set of commitment fields opened (None: all; see ``layout``);
    ``since_checkpoints`` are checkpoint notes the recipient already holds, proven consistent
    with ``checkpoint``. ``timestamp`` (an RFC 3161 client) is handed ``SHA256SUMS``.
    """
    with ExitStack() as stack:
        earlier = _earlier_checkpoints(ledger, checkpoint, since_checkpoints)
        total = count_candidates(ledger, selection, checkpoint.size)
        sink = _ZipSink(out)
        stack.callback(sink.abandon)  # closes what ``finish`` did not (an export that failed)
        openings = stack.enter_context(tempfile.TemporaryFile("w+b"))
        page = stack.enter_context(tempfile.TemporaryFile("w+b"))
        page.write(
            _HTML_HEAD.format(
                id=html.escape(bundle_id),
                origin=html.escape(ledger.origin),
                tenant=html.escape(selection.tenant),
                size=checkpoint.size,
            ).encode()
        )
        result = ExportResult(bundle_id, 0, checkpoint.size, 0, 0, 0, 0, 0, "")
        result.earlier_checkpoints = sorted(earlier)
        sink.add(layout.CHECKPOINT, checkpoint.note.encode())
        stamp = CheckpointTimestamps(ledger.engine).get(checkpoint.size)
        if stamp is not None:
            sink.add(layout.CHECKPOINT_TIMESTAMP, stamp, compress=False)
        first = last = None
        reader = stack.enter_context(hash_reader(ledger.read_engine))
        for batch in select_batches(ledger, selection, checkpoint.size):
            known = commitments.openings(
                [
                    c
                    for e in batch
                    for _, name, c in layout.commitment_fields(e.event.body)
                    if layout.discloses(disclose, name)
                ]
            )
            for entry in batch:
                path = prove_inclusion(checkpoint.size, entry.index, reader)
                sink.add(layout.entry_file(entry.index), entry.leaf)
                sink.add(
                    layout.proof_file(entry.index),
                    format_proof(entry.index, path, checkpoint.note).encode(),
                )
                cells = _open_commitments(
                    entry, sink, openings, commitments, known, disclose, result
                )
                page.write(_row_html(entry, cells))
                result.entries += 1
                first = entry.index if first is None else first
                last = entry.index
                if progress is not None:
                    progress(result.entries, total)
        if result.entries == 0:
            raise ExportError(
                f"no entries of tenant {selection.tenant!r} match {selection.to_dict()} below the"
                f" checkpoint of size {checkpoint.size}: widen the selection, or wait for the next"
                " checkpoint if the entries are newer"
            )
        for size in sorted(earlier):
            cp = earlier[size].checkpoint
            proof = ledger.prove_consistency(size, checkpoint.size)
            try:
                check_consistency(proof, checkpoint.size, checkpoint.root, size, cp.root)
            except ProofError as exc:
                raise ExportError(
                    f"checkpoint {size} is not consistent with checkpoint {checkpoint.size}: {exc}"
                    " (run `custody ledger verify`)"
                ) from exc
            sink.add(layout.checkpoint_file(size), cp.note.encode())
            sink.add(
                layout.consistency_file(size),
                "".join(base64.b64encode(h).decode() + "\n" for h in proof).encode(),
            )
        sink.add(layout.LOG_KEY, (keys.log_vkey + "\n").encode())
        sink.add(layout.C2PA_CHAIN, keys.c2pa_chain_pem)
        sink.add(layout.C2PA_ANCHORS, keys.c2pa_anchors_pem)
        sink.add_spooled(layout.OPENINGS, openings)
        page.write(b"</table>\n</body></html>\n")
        sink.add_spooled(layout.INDEX_HTML, page)
        index = {
            "format": layout.FORMAT,
            "id": bundle_id,
            "origin": ledger.origin,
            "log_key": keys.log_vkey,
            "checkpoint_size": checkpoint.size,
            "selection": selection.to_dict(),
            "disclose": "all" if disclose is None else sorted(disclose),
            "entries": result.entries,
            "first_index": first,
            "last_index": last,
            "openings": result.openings,
            "withheld": result.withheld,
            "images": result.images,
            "earlier_checkpoints": result.earlier_checkpoints,
            "handed_checkpoints": sorted(s for s, e in earlier.items() if e.handed),
            "created_ms": int(time.time() * 1000),
            "exported_by": exported_by,
            "custody_version": __version__,
            "timestamped": timestamp is not None,
        }
        sink.add(layout.INDEX, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
        sink.add(layout.VERIFY_MD, verify_md(ledger.origin, keys.log_vkey).encode())
        if timestamp is not None:
            sink.sums.seek(0)
            token = timestamp(sink.sums.read())
            sink.sums.seek(0, 2)
            sink.add(layout.TIMESTAMP, token, compress=False, listed=False)
        result.files = len(sink.names) + 1
        result.bytes = sink.bytes
        result.sums_sha256 = sink.finish()
        return result


def _open_commitments(
    entry: Entry,
    sink: _ZipSink,
    openings: IO[bytes],
    commitments: Commitments,
    known: dict[str, Commitment],
    disclose: frozenset[str] | None,
    result: ExportResult,
) -> list[str]:
    """Ship the content and salt of each disclosed commitment of ``entry``; the HTML cells."""
    cells: list[str] = []
    body = entry.event.body
    for path, field_name, commitment in layout.commitment_fields(body):
        line: dict[str, Any] = {
            "entry": entry.index,
            "path": path,
            "field": field_name,
            "commitment": commitment,
        }
        opened = known.get(commitment) if layout.discloses(disclose, field_name) else None
        data = commitments.blobs.get(opened.digest) if opened and opened.salt else None
        if not layout.discloses(disclose, field_name):
            line["withheld"] = "not disclosed in this bundle"
            result.withheld += 1
            cells.append(f"{html.escape(field_name)}: withheld (commitment only)")
        elif opened is None or data is None:
            state = "erased" if opened is not None and not opened.salt else "missing"
            line["withheld"] = state
            result.withheld += 1
            cells.append(f"{html.escape(field_name)}: {state}")
        else:
            name = _file_for(entry, field_name, opened.digest)
            sink.add(name, data, compress=not name.startswith("images/"))
            line["file"] = name
            line["salt"] = base64.b64encode(opened.salt).decode()
            result.openings += 1
            if name.startswith("images/"):
                result.images += 1
                cells.append(f'<a href="{name}"><img src="{name}" alt="signed output"></a>')
            else:
                cells.append(f'{html.escape(field_name)}: <a href="{name}">opened</a>')
        openings.write(json.dumps(line, sort_keys=True).encode() + b"\n")
    return cells


def _file_for(entry: Entry, field_name: str, digest: str) -> str:
    if entry.event.type == "output.signed" and field_name == "signed_file":
        return layout.image_file(digest, str(entry.event.body.get("mime_type", "")))
    if entry.event.type == "output.signed" and field_name == "manifest":
        return layout.manifest_file(digest)
    return layout.content_file(digest)


def verify_md(origin: str, vkey: str) -> str:
    """The recipient's instructions: our verifier, then tools nobody at Custody wrote."""
    return f"""# Verifying this evidence bundle

This bundle holds entries of the transparency log `{origin}`, each with a proof against one
signed checkpoint. Get the log's verifier key from the operator's published copy, not only
from `keys/log.vkey` inside the bundle; it must read:

    {vkey}

## 1. With Custody (checks everything below at once, offline)

    custody verify-bundle BUNDLE.zip --log-key '{vkey}'

Add `--witness KEY --quorum N` to require witness cosignatures and `--tsa-root ROOT.pem` to
check the RFC 3161 timestamp. The exit status is non-zero on any fault; every fault names the
file and the ledger entry.

## 2. With third-party tools

Unzip the bundle first (`unzip BUNDLE.zip -d bundle && cd bundle`).

1. **Every file is the one exported**: `sha256sum -c SHA256SUMS` (GNU coreutils).
2. **Timestamp** (when `SHA256SUMS.tsr` is present): `openssl ts -verify -data SHA256SUMS
   -in SHA256SUMS.tsr -CAfile TSA-ROOT.pem -untrusted TSA-CHAIN.pem`.
3. **Checkpoint signature** (C2SP signed-note, Ed25519): Go's
   `golang.org/x/mod/sumdb/note.Open(checkpoint, note.VerifierList(note.NewVerifier(KEY)))`.
4. **Each entry is in the log**: the leaf hash is `SHA-256(0x00 ‖ entries/N.json)`; the audit
   path is in `proofs/N.tlog-proof` (C2SP tlog-proof). Check it with any RFC 6962 verifier:
   Go `golang.org/x/mod/sumdb/tlog.CheckRecord`, Trillian `proof.VerifyInclusion`, Python
   `rekor-verifier` or the Merkle verifier of `sigstore`, or RFC 9162 §2.1.3.2 by hand.
5. **History was not rewritten**: each `checkpoints/S.txt` is an earlier checkpoint;
   `consistency/S.txt` is the RFC 6962 consistency proof from it to `checkpoint.txt`
   (Trillian `proof.VerifyConsistency`, `rekor-verifier`, RFC 9162 §2.1.4.2).
6. **Opened content**: each line of `openings.jsonl` names an entry, the commitment in it and a
   file with its salt: `commitment = "salted-sha256:" + base64url-nopad(SHA-256(salt ‖
   SHA-256(file)))`. Lines marked `withheld` were not disclosed (or were erased on request).
7. **Images**: `c2patool images/FILE` or c2pa-python's `Reader`, trusting
   `keys/c2pa-anchors.pem`; the image's SHA-256 is the `signed_sha256` of its `output.signed`
   entry, and its manifest's `com.custody.turn` assertion names that entry's turn.
"""
