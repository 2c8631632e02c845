"""Every ledger event type Custody writes, and the fields of its body: the public record format.

Ledger leaves are Custody's public, signed, permanent format: an auditor reads them with their own
tools years later. So the list of event types and of each body's fields lives here, once, typed
(one ``TypedDict`` per type), and every writer builds its event with ``ledger_event``, which
refuses a type or a field this module does not name (a programming error, caught by the tests)
and applies the one number rule below. ``docs/ledger-format.md`` §11 lists the same types and
fields; ``tests/test_docs_match_code.py`` holds the two against each other.

The number rule (one, for every body): a leaf holds no floating-point number, because RFC 8785
number forms differ across languages, and no integer beyond ±(2^53 − 1), which RFC 8785 cannot
carry. ``ledger_value`` turns an integral float into its integer, any other float into its
shortest decimal text (``repr``: ``0.25`` → ``"0.25"``, ``nan`` → ``"nan"``), and an integer
beyond 2^53 − 1 into its decimal text. Leaves written before this rule (when an upstream's
float in ``upstream.returned.usage`` was multiplied by 1000) stay as they are: the ledger never
rewrites a leaf, and both forms are plain RFC 8785 JSON that ``custody ledger verify`` reads.

Data and pure functions only: this module imports nothing from Custody but the ledger's event
type, so every layer (pipeline, policy, auth, erasure, recovery, the API) may build through it.
"""

import math
from typing import Any, NotRequired, TypedDict

from storage.ledger.events import LedgerEvent

MAX_SAFE_INTEGER = 2**53 - 1


# -- an edit turn --------------------------------------------------------------------------------


class TurnReceived(TypedDict):
    api_version: str
    model: str
    method: str
    stream: bool
    request: str  # commitment to the request as it arrived
    request_bytes: int
    prompt: str | None
    prompt_chars: int
    images: list[dict[str, Any]]
    history_images: int
    file_uris: int
    documents: list[dict[str, Any]]
    process: dict[str, Any]  # who runs the turn, for crash recovery


class UrlInputsFetched(TypedDict):
    request: str  # commitment to the request as it arrived, URLs and all
    request_bytes: int
    decision_id: str  # the request decision that let Custody fetch them
    bundle_revision: str
    inputs: list[dict[str, Any]]  # per URL: where from (host, address), size, commitment


class PolicyDecided(TypedDict):
    decision_id: str
    path: str
    bundle_revision: str
    engine: str
    elapsed_us: int
    outcome: str
    reasons: list[str]
    obligations: dict[str, Any]
    signals: dict[str, Any]
    input: str  # a commitment to the full input the decision was made on (kept for replay)
    stage: str  # "request" | "response"


class ReviewRequested(TypedDict):
    stage: str
    reasons: list[str]


class UpstreamRequested(TypedDict):
    upstream: str
    path: str


class UpstreamAttempt(TypedDict):
    attempt: int  # 1-based
    status: int  # HTTP status, 0: no answer
    outcome: str  # http_N, timeout, transport, circuit_open
    elapsed_us: int
    retry: bool  # another attempt follows
    delay_ms: int  # waited before that attempt
    retry_after_ms: NotRequired[int]  # the upstream's RetryInfo retryDelay
    error: NotRequired[str]  # the transport error or the upstream's message (≤ 512 chars)


class UpstreamReturned(TypedDict):
    status: int
    elapsed_us: int
    model_version: str | None
    response_id: str | None
    finish_reasons: list[str]
    block_reason: str | None
    safety: str | None
    usage: dict[str, Any] | None
    images: int
    stream_complete: bool
    response: NotRequired[str]
    response_bytes: NotRequired[int]
    error: NotRequired[dict[str, Any]]
    attempt: NotRequired[int]  # which attempt answered, when not the first
    gave_up: NotRequired[str]  # why a retryable failure was not retried


class OutputSigned(TypedDict):
    chunk: int
    candidate: int
    part: int
    mime_type: str
    upstream_sha256: str
    signed_sha256: str
    manifest_sha256: str
    upstream_had_credentials: bool
    upstream_credentials: str
    manifest: str  # commitment to the manifest store
    signed_file: str  # commitment to the released file
    # PDQ (hex), its quality and the ISCC Image-Code of the image signed; absent where the
    # image could not be decoded, and in entries written before fingerprints were recorded
    fingerprint: NotRequired[dict[str, Any]]


class TurnReleased(TypedDict):
    status: int
    stream: bool
    stream_complete: bool
    outputs: int
    safety: str
    gateway_us: int
    upstream_us: int
    gateway_version: str
    review_tasks: NotRequired[list[str]]  # the review tasks that approved the turn
    held_turn: NotRequired[str]  # released an approved output held by this earlier turn


class TurnFailed(TypedDict):
    code: int
    status: str
    reason: str
    message: str
    request: NotRequired[str]  # refused before parsing: a commitment to what was sent
    request_bytes: NotRequired[int]


class TurnInterrupted(TypedDict):
    reason: str
    last_event: str
    last_index: int
    age_ms: int
    process: dict[str, Any] | None
    recorded_by: dict[str, Any]


class TurnUndelivered(TypedDict):
    stage: str
    events_sent: int
    events_total: int
    reason: str


# -- calls that are not edit turns, refusals ----------------------------------------------------


class RequestRefused(TypedDict):
    http_method: str
    path: str
    path_chars: int
    code: int
    status: str
    reason: str
    message: str
    api_version: NotRequired[str]
    model: NotRequired[str]
    request_bytes: NotRequired[int]
    request: NotRequired[str]


class RequestsShed(TypedDict):
    since_ms: int  # the first refusal this record counts
    until_ms: int  # the last one
    refused: int
    reasons: dict[str, int]  # OVERLOADED (in-flight limit), LEDGER_PUSHBACK → how many
    keys: dict[str, int]  # key id → how many (the 64 most; the rest under "other")


class ModelsListed(TypedDict):
    api_version: str
    page_size: int | None
    page_token: bool
    models: int
    next_page: bool
    upstream: str
    status: int
    elapsed_us: int
    error: NotRequired[str]


class ModelsFetched(TypedDict):
    api_version: str
    model: str
    upstream: str
    status: int
    elapsed_us: int
    error: NotRequired[str]


class TokensCounted(TypedDict):
    api_version: str
    model: str
    request: str
    request_bytes: int
    decision_id: str
    outcome: str
    total_tokens: int | None
    upstream: str
    status: int
    elapsed_us: int
    error: NotRequired[str]


# -- policy, keys, erasure ------------------------------------------------------------------------


class PolicyReloaded(TypedDict):
    old_revision: str | None
    new_revision: str
    files: Any
    engine: str
    error: NotRequired[str]


class KeyCreated(TypedDict):
    key: dict[str, Any]
    by: dict[str, Any]
    rotated_from: NotRequired[str]


class KeyRevoked(TypedDict):
    key: dict[str, Any]
    by: dict[str, Any]
    reason: str
    revoked_ms: int


class KeyRotated(TypedDict):
    key: dict[str, Any]
    by: dict[str, Any]
    rotated_to: str
    grace_ms: int
    old_key_revoked_ms: int


class KeyExpired(TypedDict):
    key: dict[str, Any]
    by: dict[str, Any]
    state: str


class ContentErased(TypedDict):
    commitments: list[str]
    reason: str
    by: dict[str, Any]
    tenants: list[str]


# -- compliance reads ------------------------------------------------------------------------------


class PromptsSearched(TypedDict):
    """An auditor searched the committed prompts: reading private content leaves a trace."""

    query: str  # a commitment to the query text (the text is in the blob store, erasable)
    query_chars: int
    filters: dict[str, Any]
    results: int
    scanned: int  # turns whose prompts were read
    more: bool


# -- evidence ----------------------------------------------------------------------------------


class EvidenceExported(TypedDict):
    bundle: str
    selection: dict[str, Any]
    disclose: Any  # "all" or the list of fields opened
    entries: int
    checkpoint_size: int
    earlier_checkpoints: int
    openings: int
    withheld: int
    sha256sums_sha256: str  # the SHA-256 of the bundle's SHA256SUMS (its index)
    bytes: int
    timestamped: bool
    via: str  # "cli" | "api"


class CheckpointWitnessRefused(TypedDict):
    size: int
    root: str  # base64, as in the checkpoint
    quorum: int
    cosigned: int
    answers: list[dict[str, Any]]  # per witness: witness, host, status, cosigned, reason


# -- review of held turns -------------------------------------------------------------------------


class ReviewOpened(TypedDict):
    task: str
    stage: str
    group: str
    approvals_required: int
    deadline_ms: int
    on_deadline: str
    escalate_to: str | None
    reviewer_identity: str
    shown_digest: str  # SHA-256 of the RFC 8785 JSON of what the reviewers are shown
    reasons: list[str]


class ReviewClaimed(TypedDict):
    task: str
    round: int
    claimed_until_ms: int


class ReviewDecided(TypedDict):
    task: str
    decision_id: str
    stage: str
    round: int
    group: str
    decision: str
    reviewer_key: str | None
    credit: str  # the reviewer as the policy's reviewer_identity allows
    shown_digest: str
    comment: str | None  # a commitment to the comment
    comment_chars: int
    approvals: int
    approvals_required: int


class ReviewSettledByDecision(TypedDict):
    """``review.approved`` / ``review.rejected`` / ``review.changes_requested``: a decision
    closed the task; ``recorded_late`` alone when the review job recorded it after a crash."""

    task: str
    round: int
    decision_id: NotRequired[str]
    approvals: NotRequired[int]
    shown_digest: NotRequired[str]
    recorded_late: NotRequired[bool]


class ReviewExpired(TypedDict):
    task: str
    round: int
    group: NotRequired[str]
    deadline_ms: NotRequired[int]
    approvals: NotRequired[int]
    approvals_required: NotRequired[int]
    recorded_late: NotRequired[bool]


class ReviewEscalated(TypedDict):
    task: str
    round: int
    group: str
    deadline_ms: int
    approvals: int
    approvals_required: int
    escalated_to: str
    new_deadline_ms: int


class ReviewRefused(TypedDict):
    action: str
    task: str | None
    code: int
    reason: str
    message: str


class ReviewMember(TypedDict):
    """``review.member_added`` / ``review.member_removed``."""

    group: str
    member: str
    by: str


class WebhookChanged(TypedDict):
    """``webhook.registered`` / ``webhook.removed``."""

    webhook: str
    host: str
    by: str


class WebhookAttempted(TypedDict):
    """``webhook.delivered`` / ``webhook.failed``: one delivery attempt."""

    delivery: str
    webhook: str
    host: str
    event: str
    task: str | None
    attempt: int
    status_code: int | None
    final: bool
    error: NotRequired[str]
    next_attempt_ms: NotRequired[int | None]


# -- people's accounts and console sessions -------------------------------------------------------


class AccountCreated(TypedDict):
    account: dict[str, Any]
    by: dict[str, Any]


class AccountDisabled(TypedDict):
    account: dict[str, Any]
    by: dict[str, Any]
    reason: str


class AccountPasswordChanged(TypedDict):
    account: dict[str, Any]
    by: dict[str, Any]
    sessions_ended: int


class ConsoleSignedIn(TypedDict):
    account: dict[str, Any]
    session: str
    expires_ms: int


class ConsoleSignedOut(TypedDict):
    account: dict[str, Any]
    session: str


class ConsoleSignInFailed(TypedDict):
    account: dict[str, Any] | None
    reason: str
    username_chars: NotRequired[int]  # no such account: only the length of what was typed


# -- editing sessions (governance/sessions) -------------------------------------------------------


class SessionCreated(TypedDict):
    origin: str  # "api" (the native API) | "chat" (recognised on a Gemini route)
    keyed: bool  # named by the client's x-custody-session header


class SessionImageAdded(TypedDict):
    turn: str | None  # the Gemini-route turn that brought the image in; None for an upload
    image: str
    version: str | None  # the upload version; None for an image the model made from text
    content: str | None  # commitment to the uploaded bytes
    mime_type: str | None
    width: int | None
    height: int | None
    source: str
    rights_holder: str | None
    licence: str | None
    identifiable_people: bool | None
    consent: str | None


class LineageRecorded(TypedDict):
    turn: str
    kind: str  # "edit" | "rollback"
    status: str  # "released" | "failed"
    intent: str | None  # shared by every target of one linked edit
    image: str
    targets: list[str]  # version ids
    masks: list[str]  # commitments
    references: list[dict[str, str]]  # {"version": id} | {"content": commitment}
    outputs: list[dict[str, Any]]  # {version, image, parent, kind, content}
    part: NotRequired[int]  # a turn of many outputs: this event's slice of them, 1-based
    parts: NotRequired[int]


class VersionLabelled(TypedDict):
    version: str
    label: str


EVENT_BODIES: dict[str, type] = {
    "turn.received": TurnReceived,
    "url_inputs.fetched": UrlInputsFetched,
    "policy.decided": PolicyDecided,
    "review.requested": ReviewRequested,
    "upstream.requested": UpstreamRequested,
    "upstream.attempt": UpstreamAttempt,
    "upstream.returned": UpstreamReturned,
    "output.signed": OutputSigned,
    "turn.released": TurnReleased,
    "turn.failed": TurnFailed,
    "turn.interrupted": TurnInterrupted,
    "turn.undelivered": TurnUndelivered,
    "request.refused": RequestRefused,
    "requests.shed": RequestsShed,
    "models.listed": ModelsListed,
    "models.fetched": ModelsFetched,
    "tokens.counted": TokensCounted,
    "policy.reloaded": PolicyReloaded,
    "key.created": KeyCreated,
    "key.revoked": KeyRevoked,
    "key.rotated": KeyRotated,
    "key.expired": KeyExpired,
    "content.erased": ContentErased,
    "prompts.searched": PromptsSearched,
    "evidence.exported": EvidenceExported,
    "checkpoint.witness_refused": CheckpointWitnessRefused,
    "review.opened": ReviewOpened,
    "review.claimed": ReviewClaimed,
    "review.decided": ReviewDecided,
    "review.approved": ReviewSettledByDecision,
    "review.rejected": ReviewSettledByDecision,
    "review.changes_requested": ReviewSettledByDecision,
    "review.expired": ReviewExpired,
    "review.escalated": ReviewEscalated,
    "review.refused": ReviewRefused,
    "review.member_added": ReviewMember,
    "review.member_removed": ReviewMember,
    "webhook.registered": WebhookChanged,
    "webhook.removed": WebhookChanged,
    "webhook.delivered": WebhookAttempted,
    "webhook.failed": WebhookAttempted,
    "account.created": AccountCreated,
    "account.disabled": AccountDisabled,
    "account.password_changed": AccountPasswordChanged,
    "console.signed_in": ConsoleSignedIn,
    "console.signed_out": ConsoleSignedOut,
    "console.sign_in_failed": ConsoleSignInFailed,
    "session.created": SessionCreated,
    "session.image_added": SessionImageAdded,
    "lineage.recorded": LineageRecorded,
    "version.labelled": VersionLabelled,
}
# The events that close an edit turn (exactly one per turn).
CLOSING_EVENTS = ("turn.released", "turn.failed", "turn.interrupted")


# The stages of a turn's life, by the event types that record them: what the compliance queries'
# ``stage`` filter on events means (docs/api.md). Events outside a turn's life (keys, accounts,
# console sign-ins, webhooks, sessions, checkpoints) belong to no stage.
EVENT_STAGES: dict[str, tuple[str, ...]] = {
    "receive": ("turn.received", "url_inputs.fetched"),
    "decide": ("policy.decided",),
    "review": (
        "review.requested", "review.opened", "review.claimed", "review.decided",
        "review.approved", "review.rejected", "review.changes_requested", "review.expired",
        "review.escalated", "review.refused",
    ),
    "forward": ("upstream.requested", "upstream.attempt", "upstream.returned"),
    "sign": ("output.signed",),
    "release": ("turn.released", "turn.undelivered"),
    "refusal": ("turn.failed", "turn.interrupted", "request.refused"),
}  # fmt: skip


def body_fields(event_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """The (required, optional) body fields of ``event_type``; KeyError for an unknown type."""
    typed: Any = EVENT_BODIES[event_type]
    return frozenset(typed.__required_keys__), frozenset(typed.__optional_keys__)


_FIELDS = {name: body_fields(name) for name in EVENT_BODIES}


def ledger_value(value: Any) -> Any:
    """``value`` under the one number rule (module doc): no floats, no integer beyond 2^53 − 1.

    Also the one shape rule: keys become strings, tuples lists, sets sorted lists, and anything
    else that is not JSON its ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)
        return repr(value)
    if isinstance(value, dict):
        return {str(k): ledger_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [ledger_value(v) for v in items]
    return str(value)


def ledger_body(event_type: str, body: Any) -> dict[str, Any]:
    """``body`` checked against ``event_type``'s fields and under the number rule.

    Raises ``ValueError`` naming the type and the fields when ``body`` has a field this
    vocabulary does not list for it, or lacks a required one: the format changes here first."""
    required, optional = _FIELDS[event_type]
    keys = body.keys()
    if not (required <= keys and keys <= required | optional):
        raise ValueError(
            f"a {event_type} body must have {sorted(required)} (and may have {sorted(optional)});"
            f" this one has {sorted(keys)}: add the field to governance/ledger_vocabulary.py and"
            " docs/ledger-format.md first"
        )
    return ledger_value(body)  # type: ignore[no-any-return]


def ledger_event(
    event_type: str,
    body: Any,
    *,
    tenant: str,
    actor: str,
    session: str | None = None,
    turn: str | None = None,
) -> LedgerEvent:
    """The ``LedgerEvent`` of one of the types above, its body checked and under the number rule."""
    if event_type not in EVENT_BODIES:
        raise ValueError(f"{event_type!r} is not a Custody ledger event type")
    return LedgerEvent(
        type=event_type,
        tenant=tenant,
        actor=actor,
        session=session,
        turn=turn,
        body=ledger_body(event_type, body),
    )
