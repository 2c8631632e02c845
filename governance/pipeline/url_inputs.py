"""Stage 1b, URL inputs: a ``fileData`` URL the policy allows is fetched by Custody and inlined.

The upstream never sees the URL. Where the request decision carries the ``fetch_url_inputs``
obligation, every ``fileData`` part's URL is fetched through the outbound guard
(``governance.outbound``: allow-listed schemes and hosts, public addresses only after DNS and on
every redirect, size and time limits) and the part is rewritten as ``inlineData`` with the
fetched bytes — declared as the part's own ``mimeType``, else the response's media type. The
rewritten request is then parsed like any other (so the bytes are sniffed: an image that is not
what it claims is refused), committed, decided again and forwarded. Without the obligation a
request with ``fileData`` is refused: Custody never forwards content it did not see.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from dataclasses import dataclass, replace
from typing import Any

import orjson

from governance.ledger_vocabulary import UrlInputsFetched
from governance.outbound import FetchedUrl, UrlFetcher, UrlInputError
from governance.pipeline.errors import TurnError
from governance.pipeline.parse import FileReference, ParsedRequest
from governance.pipeline.turn_types import TurnRequest
from governance.policy.decision import Decision

FETCH_OBLIGATION = "fetch_url_inputs"
MAX_URL_INPUTS = 16
_FILE_KEYS = ("fileData", "file_data")


@dataclass(frozen=True)
class InlinedRequest:
    """The request with every URL input replaced by the fetched bytes, and what was fetched."""

    request: TurnRequest
    fetched: list[tuple[FileReference, FetchedUrl]]
    original_body: bytes  # the request as it arrived, URLs and all
    decision: Decision  # the decision that let Custody fetch them


def refused_url_inputs(parsed: ParsedRequest) -> TurnError:
    """The 400 for URL inputs the policy did not allow Custody to fetch."""
    return TurnError(
        400,
        f"The request holds {len(parsed.files)} URL input(s) (fileData.fileUri). Custody does not"
        " forward content it has not seen, and this tenant's policy does not let Custody fetch"
        ' URL inputs (tenant setting url_inputs: "fetch"); send the content inline as'
        " inlineData.",
        reason="URL_INPUT_DENIED",
    )


class UrlInliner:
    """Fetches a request's URL inputs and inlines them; the fetcher is the outbound guard."""

    def __init__(self, fetcher: UrlFetcher) -> None:
        self.fetcher = fetcher

    async def inline(
        self, request: TurnRequest, parsed: ParsedRequest, decision: Decision
    ) -> InlinedRequest:
        """``request`` with its ``fileData`` parts as ``inlineData``; a 400 when a URL is
        refused or cannot be fetched, naming which and why."""
        files = parsed.files
        if len(files) > MAX_URL_INPUTS:
            raise TurnError(
                400,
                f"The request holds {len(files)} URL inputs; Custody fetches at most"
                f" {MAX_URL_INPUTS} per request.",
                reason="TOO_MANY_INPUTS",
            )
        results = await asyncio.gather(
            *(self.fetcher.fetch(f.uri) for f in files), return_exceptions=True
        )
        fetched: list[tuple[FileReference, FetchedUrl]] = []
        for ref, result in zip(files, results, strict=True):
            where = f"contents[{ref.content_index}].parts[{ref.part_index}].fileData"
            if isinstance(result, UrlInputError):
                raise TurnError(400, f"{where}: {result.message}.", reason=result.reason)
            if isinstance(result, BaseException):
                raise result
            fetched.append((ref, result))
        body = orjson.dumps(_rewritten(parsed.document, fetched))
        return InlinedRequest(replace(request, body=body), fetched, request.body, decision)


def _rewritten(
    document: dict[str, Any], fetched: list[tuple[FileReference, FetchedUrl]]
) -> dict[str, Any]:
    out = copy.deepcopy(document)
    contents = out["contents"] if isinstance(out["contents"], list) else [out["contents"]]
    if not isinstance(document["contents"], list):
        out["contents"] = contents
    for ref, got in fetched:
        part = contents[ref.content_index]["parts"][ref.part_index]
        mime = ref.mime_type or got.content_type
        if not mime:
            raise TurnError(
                400,
                f"contents[{ref.content_index}].parts[{ref.part_index}].fileData has no mimeType"
                " and the URL's response named no Content-Type; declare the mimeType.",
                reason="MISSING_MIME_TYPE",
            )
        if "inlineData" in part or "inline_data" in part:
            raise TurnError(
                400,
                f"contents[{ref.content_index}].parts[{ref.part_index}] has both fileData and"
                " inlineData; send one per part.",
                reason="DUPLICATE_FIELD",
            )
        for key in _FILE_KEYS:
            part.pop(key, None)
        part["inlineData"] = {"mimeType": mime, "data": base64.b64encode(got.data).decode()}
    return out


def fetched_body(inlined: InlinedRequest, original: str, contents: list[str]) -> UrlInputsFetched:
    """The ``url_inputs.fetched`` body: the commitment to the request as it arrived, the
    decision that allowed the fetch, and for each URL where its bytes came from (host and
    address, never the path or query: a signed URL's token is a credential) and their
    commitment. ``turn.received`` before it describes the request as forwarded."""
    return {
        "request": original,
        "request_bytes": len(inlined.original_body),
        "decision_id": inlined.decision.decision_id,
        "bundle_revision": inlined.decision.bundle_revision,
        "inputs": [
            {
                "content": ref.content_index,
                "part": ref.part_index,
                "host": got.host,
                "final_host": got.final_host,
                "address": got.address,
                "redirects": got.redirects,
                "status": got.status,
                "mime_type": ref.mime_type or got.content_type,
                "bytes": len(got.data),
                "commitment": commitment,
            }
            for (ref, got), commitment in zip(inlined.fetched, contents, strict=True)
        ],
    }
