"""The file names and formats of an evidence bundle: what the exporter writes and the verifier
reads (data and pure functions only).

A bundle is a zip::

    index.json                 what this bundle is (format, log origin, selection, counts)
    checkpoint.txt             the ONE signed checkpoint every proof is against
    entries/<index>.json       the exact leaf bytes of each selected entry
    proofs/<index>.tlog-proof  C2SP tlog-proof of that entry against checkpoint.txt
    checkpoints/<size>.txt     earlier checkpoints (published by the log or held by the recipient)
    consistency/<size>.txt     RFC 6962 consistency proof from checkpoints/<size>.txt to
                               checkpoint.txt, one base64 hash a line
    openings.jsonl             one line per opened commitment: entry, path, field, salt, file
    content/<sha256>           committed content (prompts, masks, inputs, …) by its SHA-256
    images/<sha256>.<ext>      the signed images the entries released
    manifests/<sha256>.c2pa    their C2PA manifest stores
    keys/log.vkey              the log's note verifier key (compare it with the published one)
    keys/c2pa-chain.pem        the C2PA signing chain, end-entity first
    keys/c2pa-anchors.pem      the trust anchors the images were verified under
    timestamps/checkpoint.tsr  RFC 3161 token over checkpoint.txt's body (when one was made)
    SHA256SUMS                 sha256sum(1) lines for every other file: the bundle index
    VERIFY.md                  how to verify with third-party tools
    index.html                 a browsable summary for people

A future version adds files; a verifier of this version reports files it does not know as
faults only when SHA256SUMS does not list them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

FORMAT = "custody-evidence-bundle/v1"
INDEX = "index.json"
CHECKPOINT = "checkpoint.txt"
SUMS = "SHA256SUMS"
OPENINGS = "openings.jsonl"
VERIFY_MD = "VERIFY.md"
INDEX_HTML = "index.html"
LOG_KEY = "keys/log.vkey"
C2PA_CHAIN = "keys/c2pa-chain.pem"
C2PA_ANCHORS = "keys/c2pa-anchors.pem"
TIMESTAMP = "SHA256SUMS.tsr"  # RFC 3161 token over SHA256SUMS (when a TSA is configured)
CHECKPOINT_TIMESTAMP = "timestamps/checkpoint.tsr"  # RFC 3161 token over checkpoint.txt's body

COMMITMENT_PREFIX = "salted-sha256:"
_IMAGE_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/heic": "heic"}
_ENTRY_FILE = re.compile(r"entries/([0-9]{12})\.json")
_PROOF_FILE = re.compile(r"proofs/([0-9]{12})\.tlog-proof")
_CHECKPOINT_FILE = re.compile(r"checkpoints/([0-9]{1,19})\.txt")

# The disclosure presets: which commitment fields are opened (the salt and the content shipped).
# Released images and their manifests are always shipped: they were published when released.
ALWAYS_OPENED = frozenset({"signed_file", "manifest"})
PRESETS: dict[str, frozenset[str] | None] = {
    "none": frozenset(),
    "prompts": frozenset({"prompt"}),
    "all": None,  # every field
}


def entry_file(index: int) -> str:
    return f"entries/{index:012d}.json"


def proof_file(index: int) -> str:
    return f"proofs/{index:012d}.tlog-proof"


def checkpoint_file(size: int) -> str:
    return f"checkpoints/{size}.txt"


def consistency_file(size: int) -> str:
    return f"consistency/{size}.txt"


def content_file(digest: str) -> str:
    return f"content/{digest}"


def image_file(digest: str, mime_type: str) -> str:
    return f"images/{digest}.{_IMAGE_EXT.get(mime_type, 'bin')}"


def manifest_file(digest: str) -> str:
    return f"manifests/{digest}.c2pa"


def entry_of(name: str) -> int | None:
    """The entry index an ``entries/`` or ``proofs/`` file name carries, else None."""
    m = _ENTRY_FILE.fullmatch(name) or _PROOF_FILE.fullmatch(name)
    return int(m.group(1)) if m else None


def is_entry_file(name: str) -> bool:
    return _ENTRY_FILE.fullmatch(name) is not None


def checkpoint_size_of(name: str) -> int | None:
    m = _CHECKPOINT_FILE.fullmatch(name)
    return int(m.group(1)) if m else None


def parse_disclosure(spec: str) -> frozenset[str] | None:
    """``none`` | ``prompts`` | ``all`` | a comma list of fields (``prompt,mask,input``); None
    means every field."""
    spec = spec.strip()
    if spec in PRESETS:
        return PRESETS[spec]
    fields = frozenset(f.strip() for f in spec.split(",") if f.strip())
    if not fields or any(not re.fullmatch(r"[a-z_]{1,64}", f) for f in fields):
        raise ValueError(
            f"--disclose takes none, prompts, all or a comma list of fields such as"
            f" prompt,mask,input; not {spec!r}"
        )
    return fields


def discloses(fields: frozenset[str] | None, field: str) -> bool:
    return field in ALWAYS_OPENED or fields is None or field in fields


def _child(path: str, key: str) -> str:
    # The path syntax of ``storage.ledger.leaf.iter_commitments``.
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def commitment_fields(
    body: Any, path: str = "body", field: str = "body"
) -> Iterator[tuple[str, str, str]]:
    """Every (path, field, commitment) in an event body, in document order.

    ``field`` names what a commitment is for: its key (``prompt``, ``request``, ``signed_file``,
    ``comment``, …), or for an item of a list of dicts with a ``role`` (``images``), that role
    (``input``, ``mask``, ``reference``), and for ``documents`` items ``document``."""
    if isinstance(body, str):
        if body.startswith(COMMITMENT_PREFIX):
            yield path, field, body
    elif isinstance(body, dict):
        role = body.get("role")
        for key, value in body.items():
            name = str(key)
            sub = name
            if name == "commitment":
                sub = str(role) if isinstance(role, str) and role else field
            yield from commitment_fields(value, _child(path, name), sub)
    elif isinstance(body, list | tuple):
        item = "document" if field == "documents" else field
        for i, value in enumerate(body):
            yield from commitment_fields(value, f"{path}[{i}]", item)
