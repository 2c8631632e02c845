"""The values one edit turn is made of, shared by the orchestrator and every stage.

Data only: no stage logic, no I/O. ``TurnState`` is the one record of a running turn — what came
in, what each stage found, what is queued for the ledger — so a stage takes the state (and the
collaborators it uses) instead of ten loose arguments, and a new stage (a review gate) reads and
adds to the same record.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governance.auth.principal import Principal
    from governance.content import TurnContent
    from governance.pipeline.parse import ParsedRequest
    from governance.pipeline.response import ResponseSummary
    from governance.policy.decision import Decision, RequestFacts
    from governance.provenance.fingerprint import Fingerprint
    from governance.provenance.types import SignedOutput
    from governance.review import ReviewTask
    from governance.sessions.lineage import Lineage, SessionHint
    from governance.upstream.client import UpstreamResult
    from storage.ledger.events import LedgerEvent

SESSION_HEADER = "x-custody-session"


@dataclass(frozen=True)
class TurnRequest:
    """One Gemini call as it arrived: route facts, headers, raw body."""

    api_version: str
    model: str
    method: str  # "generateContent" | "streamGenerateContent" (| "countTokens", not a turn)
    body: bytes
    headers: dict[str, str]
    params: dict[str, str]
    hint: SessionHint | None = None  # a native-API turn's place in its session

    @property
    def stream(self) -> bool:
        return self.method == "streamGenerateContent"

    @property
    def upstream_path(self) -> str:
        return f"/{self.api_version}/models/{self.model}:{self.method}"

    @property
    def session(self) -> str | None:
        return self.headers.get(SESSION_HEADER)


@dataclass(frozen=True)
class StoredRequest:
    """The request's content as committed: salted commitments for the ledger, and the plain
    SHA-256 of the request and prompt (hashed once, for the erasable ``turns`` index)."""

    request_commitment: str
    request_sha256: str
    prompt_commitment: str | None
    prompt_sha256: str | None
    image_commitments: list[str]
    mask_commitments: list[str]  # the manifest names masks only this way
    document_commitments: list[str] = field(default_factory=list)  # non-image inputs


@dataclass(frozen=True)
class OutputPrint:
    """An output image's fingerprints, computed in a worker thread from the moment the
    upstream's answer is read (the response gate and the answer's blob go on meanwhile): the
    ISCC Image-Code first, which the signer waits for (the manifest's soft binding), then the
    whole ``Fingerprint``, computed while c2pa signs."""

    iscc: asyncio.Future[str | None]
    found: asyncio.Future[Fingerprint | None]
    sha256: asyncio.Future[str]  # of the upstream's bytes, hashed in a worker thread meanwhile


@dataclass(frozen=True)
class SignedItem:
    """One signed output and where it goes back into the response."""

    position: tuple[int, int, int]  # (stream chunk, candidate, part)
    upstream_sha256: str
    output: SignedOutput
    fingerprint: Fingerprint | None = None  # of the pixels signed (its ISCC is the soft binding)


@dataclass
class TurnOutcome:
    """What to send back: the signed documents, each already serialised (off the event loop)."""

    documents: list[dict[str, Any]]
    serialised: list[bytes]  # orjson of each document, in order
    stream: bool
    turn_id: str
    tenant: str = ""
    actor: str = ""
    session: str | None = None
    lineage: Lineage | None = None


@dataclass
class TurnState:
    """Everything one running turn knows; each stage fills in its part, in this order."""

    request: TurnRequest
    principal: Principal
    turn_id: str
    content: TurnContent
    started: float = field(default_factory=time.perf_counter)
    # receive
    parsed: ParsedRequest | None = None
    # the inputs' fingerprints (one per edited image, None where undecodable), computed in a
    # worker thread while the turn goes on; awaited by the closing append
    input_fingerprints: asyncio.Future[list[Fingerprint | None]] | None = None
    stored: StoredRequest | None = None
    request_sha256: str | None = None  # of the body, from its commitment (hashed once)
    lineage: Lineage | None = None  # the turn's place in its session
    # decide (request gate)
    facts: RequestFacts | None = None
    decision: Decision | None = None
    # review (either gate): the identical request's newest task, the tasks that approved this
    # turn (their approvals go into every manifest), and an approved held output to release
    review_hash: str | None = None
    prior: ReviewTask | None = None
    review_tasks: list[ReviewTask] = field(default_factory=list)
    replay: ReviewTask | None = None
    # forward
    result: UpstreamResult | None = None
    upstream_phase_ms: float | None = None  # every attempt and wait, when retried
    documents: list[dict[str, Any]] = field(default_factory=list)
    summary: ResponseSummary | None = None
    # decide (response gate)
    response_decision: Decision | None = None
    # sign: the outputs' fingerprints (started when the answer is read), the signed outputs
    output_prints: list[OutputPrint] | None = None
    signed: list[SignedItem] = field(default_factory=list)
    # record
    events: list[LedgerEvent] = field(default_factory=list)
    first_index: int | None = None  # of turn.received: anchors every manifest in the ledger
    held: bool = False  # a gate held the turn for review (its rate-limit place stays reserved)
    released: bool = False

    @property
    def session_id(self) -> str | None:
        """The session every event of the turn names: the one it joined, else the header's."""
        return self.lineage.session_id if self.lineage is not None else self.request.session

    @property
    def upstream_ms(self) -> float:
        """Time spent on the upstream: the answer's, or (retried) the whole upstream phase."""
        if self.upstream_phase_ms is not None:
            return self.upstream_phase_ms
        return self.result.elapsed_ms if self.result is not None else 0.0

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
