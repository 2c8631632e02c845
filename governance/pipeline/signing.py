"""Stage 5, sign: every output image of a turn gets C2PA Content Credentials.

What a manifest says about the generator comes from the facts of this turn: the upstream's
endpoint, the configured emulator flag and the ``modelVersion`` the upstream answered with
(``governance.upstream.identity``) — never from a default. ``sign_one`` is blocking (c2pa and
hashing): the orchestrator runs one per image in worker threads.
"""

from __future__ import annotations

from governance import __version__
from governance.ledger_vocabulary import OutputSigned
from governance.pipeline.errors import TurnError
from governance.pipeline.response import OutputImage
from governance.pipeline.turn_types import SignedItem, TurnState
from governance.provenance.fingerprint import Fingerprint
from governance.provenance.signer import OutputSigner
from governance.provenance.types import Approval, InputImage, ProvenanceContext, ProvenanceError
from governance.upstream.identity import identify_upstream


class OutputSigning:
    """Signs outputs with the organisation's signer, describing this gateway's upstream."""

    def __init__(
        self,
        signer: OutputSigner,
        *,
        upstream_base_url: str,
        is_emulator: bool,
        log_origin: str,
        training_mining: str,
    ) -> None:
        self._signer = signer
        self._upstream_base_url = upstream_base_url
        self._is_emulator = is_emulator
        self._log_origin = log_origin
        self._training_mining = training_mining

    def context(self, state: TurnState) -> ProvenanceContext:
        """What every manifest of this turn says (the leaf index of ``turn.received`` anchors
        them in the ledger)."""
        parsed, summary, decision, stored = (
            state.parsed,
            state.summary,
            state.decision,
            state.stored,
        )
        assert parsed is not None and summary is not None and decision is not None
        assert stored is not None
        inputs = [
            InputImage(
                data=img.data,
                mime_type=img.mime_type,
                sha256=img.sha256,
                role=img.role,  # type: ignore[arg-type]
                title=f"input {n + 1} ({img.mime_type})",
            )
            for n, img in enumerate(parsed.edited_images)
        ]
        disclose = bool(decision.obligations.get("disclose_prompt"))
        upstream = identify_upstream(
            self._upstream_base_url,
            is_emulator=self._is_emulator,
            model_version=summary.model_version,
        )
        return ProvenanceContext(
            turn_id=state.turn_id,
            tenant=state.principal.tenant,
            actor=state.principal.actor,
            model=state.request.model,
            model_version=summary.model_version or state.request.model,
            is_emulator=self._is_emulator,
            upstream=upstream,
            inputs=inputs,
            prompt_commitment=stored.prompt_commitment,
            prompt_text=parsed.prompt if disclose else None,
            mask_commitments=stored.mask_commitments,
            policy={
                "bundle_revision": decision.bundle_revision,
                "outcome": decision.outcome,
                "reasons": list(decision.reasons),
            },
            approvals=manifest_approvals(state),
            ledger_ref={
                "log_origin": self._log_origin,
                "turn_id": state.turn_id,
                "leaf_index": state.first_index,
            },
            gateway_version=__version__,
            training_mining=self._training_mining,
            thumbnails=bool(decision.obligations.get("thumbnails", False)),
        )

    def sign_one(
        self,
        img: OutputImage,
        ctx: ProvenanceContext,
        soft_binding: str | None,
        upstream_sha256: str,
    ) -> SignedItem:
        """Sign one image exactly as the upstream returned it (never re-encoded); a file c2pa
        cannot sign fails the turn with a 502 naming the upstream, so nothing goes out unsigned.

        ``soft_binding`` is the image's ISCC Image-Code (``OutputPrint.iscc``): it goes into the
        manifest as the ``c2pa.soft-binding`` assertion (the signed file has the same pixels).
        ``upstream_sha256`` is the SHA-256 hex of ``img.data`` (hashed beside the fingerprint).
        The item's ``fingerprint`` is the orchestrator's to fill in (computed beside this)."""
        try:
            out = self._signer.sign_output(img.data, img.mime_type, ctx, soft_binding=soft_binding)
        except ProvenanceError as exc:
            # The walk already read the image's header; c2pa failing on its structure is the
            # upstream's fault, and nothing unsigned may go out instead.
            raise TurnError(
                502,
                f"The upstream's {img.mime_type} image at candidates[{img.candidate}].content"
                f".parts[{img.part}] could not be signed ({exc}); nothing was released.",
                reason="UPSTREAM_MALFORMED",
            ) from exc
        position = (img.chunk, img.candidate, img.part)
        return SignedItem(position, upstream_sha256, out)


def manifest_approvals(state: TurnState) -> list[Approval]:
    """Every approval of the review tasks that let this turn through (either gate)."""
    return [
        Approval(
            reviewer=a.credit,
            identity=a.identity,
            group=a.group,
            decision_id=a.decision_id,
            time_ms=a.time_ms,
            task=task.task_id,
            stage=task.stage,
            turn=task.turn_id,
            shown=task.shown,
            shown_digest=a.shown_digest,
            ledger_index=a.ledger_index,
        )
        for task in state.review_tasks
        for a in task.approvals_for_manifest()
    ]


def signed_body(item: SignedItem, ref: dict[str, str]) -> OutputSigned:
    """The ``output.signed`` event: published hashes (the file is public once released) and
    the commitments to the signed file and its manifest."""
    chunk, candidate, part = item.position
    body: OutputSigned = {
        "chunk": chunk,
        "candidate": candidate,
        "part": part,
        "mime_type": item.output.mime_type,
        "upstream_sha256": item.upstream_sha256,
        "signed_sha256": item.output.sha256,
        "manifest_sha256": item.output.manifest_sha256,
        "upstream_had_credentials": item.output.upstream_had_credentials,
        "upstream_credentials": item.output.upstream_credentials,
        "manifest": ref["manifest"],
        "signed_file": ref["signed_file"],
    }
    if item.fingerprint is not None:
        body["fingerprint"] = fingerprint_body(item.fingerprint)
    return body


def fingerprint_body(found: Fingerprint) -> dict[str, str | int]:
    """The published fingerprints of a released image (the file is public; so is its look)."""
    return found.to_dict()
