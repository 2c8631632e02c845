"""Gemini's model routes, passed through: ``models.list``, ``models.get`` and ``countTokens``.

- ``GET /{v1,v1beta}/models`` (``pageSize``, ``pageToken``) and ``GET /{v1,v1beta}/models/{model}``
- ``POST /{v1,v1beta}/models/{model}:countTokens``

Each is authenticated like a turn, forwarded with Custody's upstream key (never the caller's:
``UpstreamClient`` forwards only content headers) and recorded before the answer is sent: one
ledger event per call (``models.listed``, ``models.fetched``, ``tokens.counted``), whose
``turn`` field is the call's id, returned in ``x-custody-turn``.

``countTokens`` carries content, so it passes the same gate as a turn: ``parse_request`` and the
request policy with the same facts. A ``deny`` is refused like a turn (``policy.decided`` +
``request.refused``). A ``review`` outcome still counts: counting tokens releases nothing and
calls no model, so there is nothing for a reviewer to hold; the decision is recorded all the
same. The rate-limit place a decision reserves is given back at once, since no image is made —
but a tenant whose budget is spent is refused counting too (the policy decides on the same facts).
The request body is kept as a salted commitment (``tokens.counted.request``), never in the leaf.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from governance.api.custody_headers import SESSION_HEADER, check_custody_headers, check_model
from governance.api.deps import get_services, require_role
from governance.api.errors import GeminiError, not_served
from governance.api.gemini_routes import API_VERSIONS, METHODS, checked_body, refuse
from governance.auth.principal import Principal
from governance.ledger_vocabulary import ledger_event
from governance.pipeline.errors import TurnError
from governance.pipeline.parse import InputLimits, parse_request
from governance.pipeline.policy_facts import request_facts
from governance.pipeline.refusal import MAX_MESSAGE_CHARS, clip, new_record_id
from governance.pipeline.turn_types import TurnRequest
from governance.upstream.client import UpstreamResult, parse_json_object
from storage.ledger.events import LedgerEvent

router = APIRouter()
log = logging.getLogger("custody")

LIST_PARAMS = ("pageSize", "pageToken")


def _event(
    request: Request, principal: Principal, record_id: str, type_: str, body: dict[str, Any]
) -> LedgerEvent:
    return ledger_event(
        type_,
        body,
        tenant=principal.tenant,
        actor=principal.actor,
        session=request.headers.get(SESSION_HEADER),
        turn=record_id,
    )


def _upstream_facts(result: UpstreamResult, label: str) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "upstream": label,
        "status": result.status,
        "elapsed_us": round(result.elapsed_ms * 1000),
    }
    if result.status != 200:
        facts["error"] = clip(_upstream_error(result).message, MAX_MESSAGE_CHARS)
    return facts


def _upstream_error(result: UpstreamResult) -> GeminiError:
    """The upstream's failure as the Gemini error to hand on (its own code and details)."""
    if result.status == 0:
        return GeminiError(
            502,
            f"Custody could not reach the upstream: {result.transport_error}.",
            status="UNAVAILABLE",
            reason="UPSTREAM_ERROR",
        )
    doc = parse_json_object(result.body) or {}
    found = doc.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    if result.status == 200:
        return GeminiError(
            502,
            "The upstream answered HTTP 200 with a body that is not a JSON object.",
            status="UNAVAILABLE",
            reason="UPSTREAM_ERROR",
        )
    details = err.get("details") if isinstance(err.get("details"), list) else []
    return GeminiError(
        result.status,
        str(err.get("message") or f"The upstream answered HTTP {result.status}."),
        status=str(err.get("status") or "") or None,
        reason="UPSTREAM_ERROR",
        details=details,
    )


def _answer(result: UpstreamResult, document: dict[str, Any] | None, record_id: str) -> Response:
    """The upstream's JSON as it came (HTTP 200 exactly), or its error in Gemini's envelope."""
    if result.status != 200 or document is None:
        raise _upstream_error(result).for_turn(record_id)
    return Response(
        result.body, media_type="application/json", headers={"x-custody-turn": record_id}
    )


def _ok_document(result: UpstreamResult) -> dict[str, Any] | None:
    return parse_json_object(result.body) if result.status == 200 else None


@router.get("/{api_version}/models")
async def list_models(
    api_version: str,
    request: Request,
    principal: Principal = Depends(require_role("editor")),  # noqa: B008
) -> Response:
    """``models.list``: the upstream's models, one page at a time."""
    if api_version not in API_VERSIONS:
        raise await refuse(request, principal, not_served(request.url.path, 404, "GET"))
    problem = check_custody_headers(request.headers)
    if problem is not None:  # the session id is stamped on the record: it must fit a leaf
        raise await refuse(request, principal, problem, facts={"api_version": api_version})
    s = get_services(request)
    params = {k: request.query_params[k] for k in LIST_PARAMS if k in request.query_params}
    result = await s.upstream.get_resource(
        f"/{api_version}/models", {k.lower(): v for k, v in request.headers.items()}, params
    )
    document = _ok_document(result)
    models = document.get("models") if document else None
    page_size = params.get("pageSize", "")
    record_id = new_record_id()
    body = {
        "api_version": api_version,
        "page_size": int(page_size) if page_size.isdigit() and len(page_size) < 10 else None,
        "page_token": "pageToken" in params,  # opaque and unbounded: only whether one was sent
        "models": len(models) if isinstance(models, list) else 0,
        "next_page": bool(document and document.get("nextPageToken")),
        **_upstream_facts(result, s.upstream.label),
    }
    event = _event(request, principal, record_id, "models.listed", body)
    await s.run_blocking(s.ledger.append, [event])
    return _answer(result, document, record_id)


@router.get("/{api_version}/models/{model}")
async def get_model(
    api_version: str,
    model: str,
    request: Request,
    principal: Principal = Depends(require_role("editor")),  # noqa: B008
) -> Response:
    """``models.get``: one model's resource from the upstream."""
    name, colon, method = model.partition(":")
    if api_version not in API_VERSIONS or colon:
        served_post = colon and method in (*METHODS, "countTokens")
        code = 405 if served_post and api_version in API_VERSIONS else 404
        raise await refuse(request, principal, not_served(request.url.path, code, "GET"))
    problem = check_model(name) or check_custody_headers(request.headers)
    if problem is not None:
        raise await refuse(request, principal, problem, facts={"api_version": api_version})
    s = get_services(request)
    name = name.removeprefix("models/")
    result = await s.upstream.get_resource(
        f"/{api_version}/models/{name}", {k.lower(): v for k, v in request.headers.items()}, {}
    )
    document = _ok_document(result)
    record_id = new_record_id()
    body = {"api_version": api_version, "model": name, **_upstream_facts(result, s.upstream.label)}
    await s.run_blocking(
        s.ledger.append, [_event(request, principal, record_id, "models.fetched", body)]
    )
    return _answer(result, document, record_id)


def generate_request_of(body: bytes) -> bytes:
    """The generateContent request a countTokens body describes: Gemini accepts ``contents``
    or a whole ``generateContentRequest``; the policy sees the same request either way."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # parse_request says what is wrong with it
    if isinstance(document, dict) and not document.get("contents"):
        inner = document.get("generateContentRequest")
        if isinstance(inner, dict):
            return orjson.dumps(inner)
    return body


@router.post("/{api_version}/models/{model}:countTokens")
async def count_tokens(
    api_version: str,
    model: str,
    request: Request,
    principal: Principal = Depends(require_role("editor")),  # noqa: B008
) -> Response:
    """``countTokens``: policy-checked like a turn, then counted by the upstream."""
    if api_version not in API_VERSIONS:
        raise await refuse(request, principal, not_served(request.url.path, 404, "POST"))
    s = get_services(request)
    body = await checked_body(request, principal, api_version, model)
    name = model.removeprefix("models/")
    record_id = new_record_id()
    facts: dict[str, Any] = {"api_version": api_version, "model": name}
    try:
        limits = InputLimits.from_tenant(
            s.policy.tenant_settings(principal.tenant), s.policy.tenant_settings("default")
        )
        parsed = await s.run_blocking(
            parse_request,
            generate_request_of(body),
            max_pixels=s.settings.max_image_pixels,
            limits=limits,
        )
    except TurnError as err:
        raise await refuse(
            request, principal, err.for_turn(record_id), body=body, facts=facts
        ) from None
    headers = {k.lower(): v for k, v in request.headers.items()}
    call = TurnRequest(
        api_version=api_version,
        model=name,
        method="countTokens",
        body=body,
        headers=headers,
        params=dict(request.query_params),
    )
    decision = await s.run_blocking(s.policy.decide_request, request_facts(principal, call, parsed))
    # Counting makes no image: the rate-limit place the decision reserved is given back.
    await s.run_blocking(s.policy.release_reservation, decision.decision_id)
    request_c, input_c = await s.run_blocking(
        s.content.commitments.put_committed_many,
        [(body, None), (orjson.dumps(decision.input_document, option=orjson.OPT_SORT_KEYS), None)],
    )
    decided = {**decision.record(), "stage": "request", "input": input_c.commitment}
    decided_event = _event(request, principal, record_id, "policy.decided", decided)
    facts.update(request=request_c.commitment, request_bytes=len(body))
    if decision.outcome == "deny" or parsed.files:
        code = int(decision.obligations.get("status_code", 403) or 403)
        named = decision.obligations.get("error_reason")
        reason = named if isinstance(named, str) and named.isupper() else None
        message = (
            "Custody's policy refused this countTokens request: "
            + "; ".join(decision.reasons)
            + f" (decision {decision.decision_id}, policy revision"
            f" {decision.bundle_revision[:12]})."
        )
        if decision.outcome != "deny":  # allowed, but a URL never reaches the upstream unseen
            code, reason = 400, "URL_INPUT_DENIED"
            message = (
                "countTokens does not fetch URL inputs (fileData.fileUri), and Custody forwards"
                " no content it has not seen: send the content inline as inlineData."
            )
        denial = GeminiError(
            code,
            message,
            reason=reason or ("RATE_LIMITED" if code == 429 else "POLICY_DENIED"),
        )
        denial.metadata["decision_id"] = decision.decision_id
        log.warning(
            "countTokens %s denied: tenant=%s actor=%s decision=%s reasons=%s",
            record_id,
            principal.tenant,
            principal.actor,
            decision.decision_id,
            "; ".join(decision.reasons),
        )
        raise await refuse(
            request, principal, denial.for_turn(record_id), facts=facts, preceding=[decided_event]
        )

    # The decision is durable before the content leaves for the upstream (as a turn's intent).
    await s.run_blocking(s.ledger.append, [decided_event])
    params = {k: v for k, v in request.query_params.items() if k != "key"}
    result = await s.upstream.post(
        f"/{api_version}/models/{name}:countTokens", body, headers, params
    )
    document = _ok_document(result)
    total = document.get("totalTokens") if document else None
    counted = {
        **facts,
        "decision_id": decision.decision_id,
        "outcome": decision.outcome,
        "total_tokens": total if isinstance(total, int) and not isinstance(total, bool) else None,
        **_upstream_facts(result, s.upstream.label),
    }
    counted_event = _event(request, principal, record_id, "tokens.counted", counted)
    await s.run_blocking(s.ledger.append, [counted_event])
    return _answer(result, document, record_id)
