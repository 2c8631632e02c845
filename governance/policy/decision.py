"""The policy's facts (what a turn asks for, what the model returned) and its decisions.

A ``Decision`` carries what OPA's decision logs carry — decision id, policy path, bundle revision,
masked input, result, engine, elapsed time — and ``record()`` turns it into the body of a
``policy.decided`` ledger event: numbers under the ledger's one rule
(``governance.ledger_vocabulary.ledger_value``), sensitive fields masked, well under the ledger's
64 KiB leaf limit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from governance.ledger_vocabulary import ledger_value

Outcome = Literal["allow", "deny", "review", "review_output"]
OUTCOMES: tuple[Outcome, ...] = ("allow", "deny", "review", "review_output")
DECISION_PATH = "custody/decision"
MASKED = "[masked]"
# A decision record stays well below the ledger's 64 KiB leaf limit, whatever the input holds.
MAX_RECORD_BYTES = 32 * 1024


@dataclass(frozen=True)
class ImageFacts:
    """One input image as policy sees it: role, type, size, dimensions, hash, credentials."""

    role: str  # "parent" | "reference" | "mask"
    mime_type: str
    size: int
    width: int | None  # None when the header does not say (an HEIF without 'ispe')
    height: int | None
    sha256: str
    has_content_credentials: bool


@dataclass(frozen=True)
class DocumentFacts:
    """One non-image input (PDF, text, audio, video): its sniffed and declared type, size, hash."""

    mime_type: str
    declared_mime_type: str
    size: int
    sha256: str
    history: bool


@dataclass(frozen=True)
class FileFacts:
    """A ``fileData`` reference: content Custody cannot see; where it points and its type."""

    uri: str  # without query string, fragment or user info
    scheme: str
    host: str
    mime_type: str | None


@dataclass(frozen=True)
class RequestFacts:
    """Who asks for which edit, with which inputs, in which session, under which labels."""

    tenant: str
    actor: str
    roles: tuple[str, ...] | frozenset[str]
    model: str
    prompt: str
    images: tuple[ImageFacts, ...]
    session_id: str | None
    session_turn_count: int
    lineage: tuple[Any, ...]
    labels: dict[str, str]
    # Every piece of text the upstream reads, as (field, text): field is "systemInstruction",
    # "history", "model", "new", "thought", "structured" or "attachment". Empty: classify
    # ``prompt`` alone.
    texts: tuple[tuple[str, str], ...] = ()
    documents: tuple[DocumentFacts, ...] = ()
    files: tuple[FileFacts, ...] = ()
    # The rest of what the upstream acts on: tools, tool config, generation config, history size.
    shape: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseFacts:
    """What the upstream returned: model version, safety outcome, text, output images."""

    model_version: str
    finish_reasons: tuple[str, ...]
    block_reason: str | None
    text: str
    output_count: int
    output_sizes: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Decision:
    """One policy decision and everything its ledger record needs."""

    decision_id: str
    path: str
    outcome: Outcome
    reasons: tuple[str, ...]
    obligations: dict[str, Any]
    bundle_revision: str
    signals: dict[str, Any]
    input_masked: dict[str, Any]
    elapsed_us: int
    engine: str
    # The full, unmasked input (kept by the pipeline for replay, never put in the ledger).
    input_document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """The ``policy.decided`` ledger event body: the ledger's number rule, fields masked."""
        body: dict[str, Any] = {
            "decision_id": self.decision_id,
            "path": self.path,
            "bundle_revision": self.bundle_revision,
            "engine": self.engine,
            "elapsed_us": int(self.elapsed_us),
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "obligations": ledger_value(self.obligations),
            "signals": ledger_value(self.signals),
            "input": ledger_value(self.input_masked),
        }
        size = len(orjson.dumps(body))
        if size > MAX_RECORD_BYTES:  # keep the record; replace the oversized input by its digest
            digest = hashlib.sha256(orjson.dumps(body["input"], option=orjson.OPT_SORT_KEYS))
            body["input"] = {"omitted_bytes": size, "sha256": digest.hexdigest()}
            body["signals"] = {name: {"matched": _matched(s)} for name, s in self.signals.items()}
        return body


def _matched(signal: Any) -> bool:
    return bool(signal.get("matched")) if isinstance(signal, dict) else bool(signal)


def mask_input(document: dict[str, Any], pointers: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``document`` with every JSON pointer in ``pointers`` replaced by ``[masked]``.

    Pointers follow OPA's decision-log masking (``/request/prompt``); a missing path is skipped.
    A ``*`` segment masks the field in every element of a list (``/request/images/*/sha256``).
    """
    masked: dict[str, Any] = orjson.loads(orjson.dumps(document))
    for pointer in pointers:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")]
        if parts and parts[0] == "input":  # OPA writes "/input/..."; accept both spellings
            parts = parts[1:]
        if parts:
            _mask_path(masked, parts)
    return masked


def _mask_path(node: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    children: list[int] | list[str]
    if head == "*" and isinstance(node, list):
        children = list(range(len(node)))
    elif isinstance(node, dict) and head in node:
        children = [head]
    elif isinstance(node, list) and head.isdigit() and int(head) < len(node):
        children = [int(head)]
    else:
        return
    for key in children:
        if rest:
            _mask_path(node[key], rest)
        elif node[key] not in (None, "", [], {}):
            node[key] = MASKED
