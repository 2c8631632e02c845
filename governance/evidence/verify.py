"""Verify an evidence bundle offline: nothing but the zip and the log key the recipient expects.

Checks, each fault naming the bundle file and the ledger entry it concerns:

1. every file against ``SHA256SUMS`` (and no file unlisted, none missing);
2. ``checkpoint.txt`` signed by the expected key, for the log ``index.json`` names;
3. each ``entries/N.json`` a canonical leaf of that log, proven by ``proofs/N.tlog-proof``
   against exactly that checkpoint, and every entry the index counts present;
4. each earlier checkpoint signed, and ``consistency/S.txt`` proving it a prefix of the
   checkpoint;
5. each line of ``openings.jsonl``: the commitment is in its entry at its path, and the file and
   salt open it;
6. each signed image: its SHA-256 is its ``output.signed`` entry's, its C2PA manifest validates
   (c2pa-python) under the bundle's anchors, names the entry's turn, and its manifest store's
   SHA-256 is the entry's;
7. the RFC 3161 timestamp over ``SHA256SUMS``, when a TSA root is given or a token is present.

Memory is constant in the number of entries beyond the zip's central directory (``zipfile`` keeps
one ``ZipInfo`` a member): members are hashed 1 MiB at a time, ``SHA256SUMS`` in the exporter's
order is matched line k to member k (any other order builds a table of its names),
``openings.jsonl`` is read line by line, and a leaf is decoded when its entry or its openings are
checked, then dropped (the exporter writes the openings in entry order, so each leaf is decoded
twice at most). Only the entries that fail are remembered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from governance.evidence import layout
from storage.ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from storage.ledger.leaf import LeafError, commit_digest, decode_leaf, is_canonical
from storage.ledger.merkle import ProofError, check_consistency, check_inclusion, leaf_hash
from storage.ledger.note import NoteError, NoteVerifier
from storage.ledger.proof_file import ProofFileError, parse_proof, verify_proof

# Files every bundle has; a bundle without one of them is faulty.
_REQUIRED = (layout.INDEX, layout.CHECKPOINT, layout.SUMS, layout.OPENINGS, layout.LOG_KEY)


@dataclass(frozen=True)
class Fault:
    """One thing that does not verify: in which file, for which entry, and what."""

    file: str
    entry: int | None
    message: str

    def line(self) -> str:
        where = self.file if self.entry is None else f"{self.file} (ledger entry {self.entry})"
        return f"FAULT {where}: {self.message}"


@dataclass
class BundleReport:
    """The verdict on one bundle, for a person (``summary``) or a program (``to_dict``)."""

    bundle: str
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    origin: str | None = None
    checkpoint_size: int | None = None
    events: Counter[str] = field(default_factory=Counter)  # proven entries by type (and kind)

    @property
    def ok(self) -> bool:
        return not self.faults

    def fault(self, file: str, entry: int | None, message: str) -> None:
        self.faults.append(Fault(file, entry, message))

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "ok": self.ok,
            "origin": self.origin,
            "checkpoint_size": self.checkpoint_size,
            "checked": self.checked,
            "events": dict(sorted(self.events.items())),
            "faults": [asdict(f) for f in self.faults],
            "notes": self.notes,
        }

    def summary(self) -> str:
        head = (
            f"The evidence bundle {self.bundle} VERIFIES."
            if self.ok
            else f"The evidence bundle {self.bundle} DOES NOT VERIFY: {len(self.faults)} fault(s)."
        )
        lines = [head]
        if self.origin:
            lines.append(
                f"Log {self.origin}, checkpoint of {self.checkpoint_size} entries, signed by the"
                " key you gave."
            )
        words = {
            "files": "files match SHA256SUMS",
            "entries": "entries are proven in the log",
            "consistency": "earlier checkpoints are consistent with it",
            "openings": "commitments are opened by the content shipped",
            "images": "images carry valid Content Credentials tied to their entries",
            "cosignatures": "witness cosignatures verify",
            "timestamp": "RFC 3161 timestamps verify",
        }
        for key, text in words.items():
            if key in self.checked:
                lines.append(f"  {self.checked[key]:>7} {text}")
        if self.events:
            lines.append("The proven entries record:")
            lines += [f"  {n:>7} {what}" for what, n in sorted(self.events.items())]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f.line() for f in self.faults]
        return "\n".join(lines)


# A second check of the cosigned checkpoint and the timestamp is plugged in by their modules.
ExtraCheck = Callable[["_Bundle", BundleReport], None]


class _Bundle:
    """The zip, read member by member; a member that cannot be read is a fault, not a crash.
    Names are looked up in the zip's own directory (no second copy of them is kept)."""

    CHUNK = 1 << 20

    def __init__(self, zf: zipfile.ZipFile, report: BundleReport) -> None:
        self.zf = zf
        self.report = report
        self._leaf: tuple[int, dict[str, Any]] | None = None  # the last leaf decoded
        self.anchors: str | None = None  # keys/c2pa-anchors.pem, read at the first image

    @property
    def names(self) -> Iterator[str]:
        return (i.filename for i in self.zf.infolist() if not i.is_dir())

    def has(self, name: str) -> bool:
        try:
            return not self.zf.getinfo(name).is_dir()
        except KeyError:
            return False

    def read(self, name: str, entry: int | None = None) -> bytes | None:
        if not self.has(name):
            self.report.fault(name, entry, "the file is missing from the bundle")
            return None
        try:
            return self.zf.read(name)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            self.report.fault(name, entry, f"the file cannot be read from the zip: {exc}")
            return None

    def sha256(self, member: str | zipfile.ZipInfo, entry: int | None = None) -> str | None:
        """The member's SHA-256 (hex), read ``CHUNK`` bytes at a time."""
        digest = hashlib.sha256()
        try:
            with self.zf.open(member) as data:
                while chunk := data.read(self.CHUNK):
                    digest.update(chunk)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            name = member if isinstance(member, str) else member.filename
            self.report.fault(name, entry, f"the file cannot be read from the zip: {exc}")
            return None
        return digest.hexdigest()

    def text(self, name: str, entry: int | None = None) -> str | None:
        data = self.read(name, entry)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.report.fault(name, entry, "the file is not UTF-8 text")
            return None

    def lines(self, name: str) -> Iterator[str]:
        """The member's lines, one at a time (a read or UTF-8 error ends them with a fault)."""
        if not self.has(name):
            self.report.fault(name, None, "the file is missing from the bundle")
            return
        try:
            with self.zf.open(name) as raw, io.TextIOWrapper(raw, encoding="utf-8") as lines:
                for line in lines:
                    yield line.rstrip("\n")
        except UnicodeDecodeError:
            self.report.fault(name, None, "the file is not UTF-8 text")
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            self.report.fault(name, None, f"the file cannot be read from the zip: {exc}")

    def leaf(self, index: int) -> dict[str, Any] | None:
        """Entry ``index``'s decoded leaf (already verified by ``_check_entries``), the last
        one kept: the openings of one entry are consecutive."""
        if self._leaf is not None and self._leaf[0] == index:
            return self._leaf[1]
        data = self.read(layout.entry_file(index), index)
        if data is None:
            return None
        try:
            doc = decode_leaf(data)
        except LeafError:
            return None
        self._leaf = (index, doc)
        return doc


def verify_bundle(
    path: Path,
    *,
    log_key: str,
    extra_checks: Sequence[ExtraCheck] = (),
    check_images: bool = True,
) -> BundleReport:
    """Verify the bundle at ``path`` against the log verifier key ``log_key``."""
    report = BundleReport(str(path))
    try:
        verifier = NoteVerifier.from_key_string(log_key.strip())
    except (NoteError, ValueError) as exc:
        report.fault("--log-key", None, f"the log key given is not a note verifier key: {exc}")
        return report
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        report.fault(str(path), None, f"this is not a readable zip file: {exc}")
        return report
    with zf:
        bundle = _Bundle(zf, report)
        _check_sums(bundle, report)
        index = _read_index(bundle, report)
        if index is None:
            return report
        report.origin = str(index.get("origin"))
        shipped = bundle.text(layout.LOG_KEY)
        if shipped is not None and shipped.strip() != log_key.strip():
            report.fault(
                layout.LOG_KEY,
                None,
                "the bundle names another log key than the one you gave: it was not exported"
                " by that log, or the key was replaced",
            )
        checkpoint = _check_checkpoint(bundle, report, verifier, report.origin)
        unproven = _check_entries(bundle, report, verifier, report.origin, checkpoint, index)
        if checkpoint is not None:
            _check_consistency(bundle, report, verifier, report.origin, checkpoint)
        _check_openings(bundle, report, unproven, check_images)
        for check in extra_checks:
            check(bundle, report)
    return report


def _sum_line(line: str) -> tuple[str, str] | None:
    """(hex digest, name) of a ``sha256sum`` line, or None for a malformed one."""
    digest, sep, name = line.partition("  ")
    if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest, name


def _checked_members(bundle: _Bundle) -> Iterator[zipfile.ZipInfo]:
    """The members ``SHA256SUMS`` must list: all but itself and its timestamp."""
    for info in bundle.zf.infolist():
        if not info.is_dir() and info.filename not in (layout.SUMS, layout.TIMESTAMP):
            yield info


def _sums_follow_the_zip(bundle: _Bundle) -> bool:
    """Whether ``SHA256SUMS`` lists every member once, in the zip's order, in well-formed
    lines: how the exporter writes it (each line as its member goes in)."""
    if not bundle.has(layout.SUMS):
        return False
    members = _checked_members(bundle)
    try:
        with bundle.zf.open(layout.SUMS) as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
            for line in text:
                parsed = _sum_line(line.rstrip("\n"))
                info = next(members, None)
                if parsed is None or info is None or parsed[1] != info.filename:
                    return False
    except (UnicodeDecodeError, zipfile.BadZipFile, OSError, ValueError):
        return False
    return next(members, None) is None


def _check_sums(bundle: _Bundle, report: BundleReport) -> None:
    """Every member against its ``SHA256SUMS`` line. In the exporter's order, line k is member
    k's and nothing is kept; in any other order a table of the listed names is built."""
    if not _sums_follow_the_zip(bundle):
        _check_sums_by_name(bundle, report)
        return
    for line, info in zip(bundle.lines(layout.SUMS), _checked_members(bundle), strict=False):
        expected = _sum_line(line)
        entry = layout.entry_of(info.filename)
        got = bundle.sha256(info, entry)
        if got is None or expected is None:
            continue
        if got != expected[0]:
            report.fault(
                info.filename,
                entry,
                f"its SHA-256 differs from the one {layout.SUMS} lists: it was changed",
            )
        else:
            report.count("files")


def _check_sums_by_name(bundle: _Bundle, report: BundleReport) -> None:
    listed: dict[str, str] = {}
    for n, line in enumerate(bundle.lines(layout.SUMS), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            report.fault(layout.SUMS, None, f"line {n} is not a sha256sum line: {line[:120]!r}")
            continue
        listed[name] = digest
    for name in bundle.names:
        expected = listed.pop(name, None)
        if name in (layout.SUMS, layout.TIMESTAMP):
            continue
        entry = layout.entry_of(name)
        if expected is None:
            report.fault(name, entry, f"the file is not listed in {layout.SUMS}")
            continue
        got = bundle.sha256(name, entry)
        if got is None:
            continue
        if got != expected:
            report.fault(
                name, entry, f"its SHA-256 differs from the one {layout.SUMS} lists: it was changed"
            )
        else:
            report.count("files")
    for name in listed:  # what is left was listed but is not in the zip
        report.fault(name, layout.entry_of(name), f"{layout.SUMS} lists it, but it is missing")


def _read_index(bundle: _Bundle, report: BundleReport) -> dict[str, Any] | None:
    for name in _REQUIRED:
        if not bundle.has(name):
            report.fault(name, None, "a required file of every bundle is missing")
    data = bundle.read(layout.INDEX)
    if data is None:
        return None
    try:
        index = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        report.fault(layout.INDEX, None, f"the index is not JSON: {exc}")
        return None
    if not isinstance(index, dict) or index.get("format") != layout.FORMAT:
        report.fault(layout.INDEX, None, f"this is not a {layout.FORMAT} bundle")
        return None
    return index


def _check_checkpoint(
    bundle: _Bundle, report: BundleReport, verifier: NoteVerifier, origin: str
) -> Checkpoint | None:
    note = bundle.text(layout.CHECKPOINT)
    if note is None:
        return None
    try:
        cp = open_checkpoint(note, verifier, origin)
    except CheckpointError as exc:
        report.fault(layout.CHECKPOINT, None, str(exc))
        return None
    report.checkpoint_size = cp.size
    return cp


def _check_entries(
    bundle: _Bundle,
    report: BundleReport,
    verifier: NoteVerifier,
    origin: str,
    checkpoint: Checkpoint | None,
    index: dict[str, Any],
) -> set[int]:
    """Each leaf against its proof, in the zip's order; the indexes of the entries that do NOT
    verify (empty for a sound bundle: nothing grows with the entries). Their events are counted
    in ``report.events``."""
    unproven: set[int] = set()
    held = 0
    for name in bundle.names:
        i = layout.entry_of(name)
        if i is None:
            continue
        if not layout.is_entry_file(name):  # a proof: its entry must be there
            if not bundle.has(layout.entry_file(i)):
                report.fault(name, i, "a proof without its entry")
            continue
        held += 1
        if not _check_entry(bundle, report, verifier, origin, checkpoint, i):
            unproven.add(i)
    if index.get("entries") != held:
        report.fault(
            layout.INDEX,
            None,
            f"the index counts {index.get('entries')} entries but the bundle holds {held}",
        )
    return unproven


def _check_entry(
    bundle: _Bundle,
    report: BundleReport,
    verifier: NoteVerifier,
    origin: str,
    checkpoint: Checkpoint | None,
    i: int,
) -> bool:
    """Entry ``i``'s leaf against its proof; whether it is proven."""
    name = layout.entry_file(i)
    leaf = bundle.read(name, i)
    proof = bundle.text(layout.proof_file(i), i)
    if leaf is None or proof is None:
        return False
    try:
        doc = decode_leaf(leaf)
    except LeafError as exc:
        report.fault(name, i, f"not a ledger leaf: {exc}")
        return False
    if not is_canonical(leaf):
        report.fault(name, i, "the leaf is not in RFC 8785 canonical form: it was re-encoded")
    if doc.get("origin") != origin:
        report.fault(name, i, f"the leaf names log {doc.get('origin')!r}, not {origin!r}")
    try:
        parsed = parse_proof(proof)
        if parsed.index != i:
            raise ProofFileError(f"the proof is for entry {parsed.index}, not {i}")
        if checkpoint is not None and parsed.note != checkpoint.note:
            raise ProofFileError(
                f"the proof is against another checkpoint than {layout.CHECKPOINT}"
            )
        if checkpoint is None:  # its own fault is reported; this proof's note stands alone
            verify_proof(proof, leaf, verifier, origin)
        else:  # the note is checkpoint.txt's, whose signature was verified once
            _prove(parsed.hashes, checkpoint, i, leaf)
    except (ProofFileError, CheckpointError) as exc:
        report.fault(name, i, f"not proven by {layout.proof_file(i)}: {exc}")
        return False
    report.count("entries")
    report.events[_event_name(doc)] += 1
    return True


def _event_name(doc: dict[str, Any]) -> str:
    """The entry's event type; a lineage entry's with its kind (edit, rollback, upload)."""
    kind = (doc.get("body") or {}).get("kind") if isinstance(doc.get("body"), dict) else None
    name = str(doc.get("type"))[:64]
    return f"{name} ({str(kind)[:32]})" if name == "lineage.recorded" and kind else name


def _prove(path: list[bytes], cp: Checkpoint, index: int, leaf: bytes) -> None:
    if index >= cp.size:
        raise ProofFileError(f"entry {index} cannot be proven by a checkpoint of {cp.size} entries")
    try:
        check_inclusion(path, cp.size, cp.root, index, leaf_hash(leaf))
    except ProofError as exc:
        raise ProofFileError(
            f"these leaf bytes are not entry {index} of {cp.origin} at size {cp.size}: {exc}"
        ) from exc


def _check_consistency(
    bundle: _Bundle, report: BundleReport, verifier: NoteVerifier, origin: str, cp: Checkpoint
) -> None:
    sizes = {s for n in bundle.names if (s := layout.checkpoint_size_of(n)) is not None}
    proofs = {n for n in bundle.names if n.startswith("consistency/")}
    for name in proofs - {layout.consistency_file(s) for s in sizes}:
        report.fault(name, None, "a consistency proof without its checkpoint")
    for size in sorted(sizes):
        name = layout.checkpoint_file(size)
        note = bundle.text(name)
        proof_text = bundle.text(layout.consistency_file(size))
        if note is None or proof_text is None:
            continue
        try:
            old = open_checkpoint(note, verifier, origin)
            if old.size != size:
                raise CheckpointError(f"it is of size {old.size}, not {size} as its name says")
            hashes = [base64.b64decode(line, validate=True) for line in proof_text.split()]
            check_consistency(hashes, cp.size, cp.root, old.size, old.root)
        except (CheckpointError, ProofError, binascii.Error, ValueError) as exc:
            report.fault(
                name,
                None,
                f"checkpoint {size} is not proven a prefix of checkpoint {cp.size}"
                f" ({layout.consistency_file(size)}): {exc}",
            )
            continue
        report.count("consistency")


def _lookup(body: Any, path: str) -> str | None:
    found = {p: c for p, _, c in layout.commitment_fields(body)}
    return found.get(path)


def _check_openings(
    bundle: _Bundle, report: BundleReport, unproven: set[int], check_images: bool
) -> None:
    """Every opening line, read one at a time; each signed image as its line is reached."""
    for n, line in enumerate(bundle.lines(layout.OPENINGS), 1):
        where = f"{layout.OPENINGS} line {n}"
        try:
            item = json.loads(line)
            entry = int(item["entry"])
            commitment, path = str(item["commitment"]), str(item["path"])
        except (ValueError, KeyError, TypeError) as exc:
            report.fault(layout.OPENINGS, None, f"line {n} is not an opening: {exc}")
            continue
        if not bundle.has(layout.entry_file(entry)):
            report.fault(layout.OPENINGS, entry, f"line {n} opens an entry not in the bundle")
            continue
        if entry in unproven:
            continue  # the entry's own fault is reported already
        doc = bundle.leaf(entry)
        if doc is None:
            continue  # it verified a moment ago: the read's own fault is reported
        if _lookup(doc.get("body"), path) != commitment:
            report.fault(
                layout.OPENINGS,
                entry,
                f"line {n}: entry {entry} holds no commitment {commitment} at {path}",
            )
            continue
        if "withheld" in item:
            if item["withheld"] == "erased":
                report.notes.append(f"entry {entry} {path}: the content was erased on request")
            continue
        name = str(item.get("file"))
        if not bundle.has(name):
            report.fault(name, entry, "the file is missing from the bundle")
            continue
        try:
            salt = base64.b64decode(str(item["salt"]), validate=True)
        except (KeyError, binascii.Error, ValueError) as exc:
            report.fault(layout.OPENINGS, entry, f"line {n}: the salt is not base64: {exc}")
            continue
        digest = bundle.sha256(name, entry)
        if digest is None:
            continue
        if commit_digest(bytes.fromhex(digest), salt) != commitment:
            report.fault(
                name,
                entry,
                f"does not open the commitment at {path} of entry {entry} ({where}):"
                " the content or the salt was changed",
            )
            continue
        report.count("openings")
        if check_images and item.get("field") == "signed_file":
            _check_image(bundle, report, name, entry, doc)


def _check_image(
    bundle: _Bundle, report: BundleReport, name: str, entry: int, doc: dict[str, Any]
) -> None:
    from governance.provenance.verify import verify_image

    body = doc.get("body") or {}
    data = bundle.read(name, entry)
    if data is None:
        return
    if doc.get("type") != "output.signed" or hashlib.sha256(data).hexdigest() != body.get(
        "signed_sha256"
    ):
        report.fault(name, entry, "the image is not the one its output.signed entry records")
        return
    if bundle.anchors is None:
        bundle.anchors = bundle.text(layout.C2PA_ANCHORS) or ""
    result = verify_image(data, body.get("mime_type"), bundle.anchors)
    if result.state != "Trusted":
        why = "; ".join(result.reasons) or result.error or result.state
        report.fault(name, entry, f"its Content Credentials do not verify ({result.state}): {why}")
        return
    turn = (result.custody or {}).get("turn_id")
    if turn != doc.get("turn"):
        report.fault(
            name,
            entry,
            f"its manifest names turn {turn!r}, but its ledger entry is of turn"
            f" {doc.get('turn')!r}",
        )
        return
    manifest = layout.manifest_file(str(body.get("manifest_sha256")))
    if bundle.has(manifest):
        shipped = bundle.sha256(manifest, entry)
        if shipped is not None and shipped != body.get("manifest_sha256"):
            report.fault(manifest, entry, "the manifest store is not the one signed")
            return
    report.count("images")


def cosignature_check(witness_keys: Sequence[str], quorum: int) -> ExtraCheck:
    """A check that ``checkpoint.txt`` carries valid cosignatures of at least ``quorum`` of
    ``witness_keys`` (C2SP tlog-cosignature lines in the note)."""
    from storage.ledger.cosignature import CosignatureError, WitnessKey, cosignatures_in

    def check(bundle: _Bundle, report: BundleReport) -> None:
        keys = []
        for text in witness_keys:
            try:
                keys.append(WitnessKey.from_key_string(text))
            except CosignatureError as exc:
                report.fault("--witness", None, str(exc))
        note = bundle.text(layout.CHECKPOINT)
        if note is None:
            return
        good, problems = cosignatures_in(note, keys)
        for problem in problems:
            report.fault(layout.CHECKPOINT, None, problem)
        if len(good) < quorum:
            report.fault(
                layout.CHECKPOINT,
                None,
                f"{len(good)} of the {len(keys)} witnesses you trust cosigned the checkpoint;"
                f" the quorum is {quorum}",
            )
        report.count("cosignatures", len(good))
        for cosig in good:
            report.notes.append(
                f"cosigned by witness {cosig.witness} at {cosig.timestamp} (Unix s)"
            )

    return check
