"""``custody verify IMAGE``: Content Credentials state, ingredient chain and the ledger record."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governance.settings import Settings


def _run(args: argparse.Namespace) -> int:
    from governance.provenance.verify import verify_image, verify_independently
    from governance.settings import Settings
    from governance.state import trust_anchors_pem

    settings = Settings()
    data = Path(args.image).read_bytes()
    anchors = Path(args.anchors).read_text() if args.anchors else trust_anchors_pem(settings)
    result = verify_image(data, None, anchors)
    independent = verify_independently(data, None, anchors) if result.state != "none" else None
    record, lookup, installed = (None, "not looked up (--no-ledger)", True)
    similar: dict[str, Any] | None = None
    if not args.no_ledger:
        record, lookup, installed, similar = _ledger_record(
            settings, data, result.custody, manifest=result.state != "none"
        )
    if record is None and not args.no_ledger:
        hint = ""
        if result.custody and not installed:
            hint = "; a Custody image needs its ledger (or --no-ledger to check the file alone)"
        print(f"custody verify: {lookup}{hint}", file=sys.stderr)
    if args.json:
        out = {"c2pa": result.to_dict(), "ledger": record, "ledger_lookup": lookup}
        out["fingerprint_lookup"] = similar
        out["independent"] = asdict(independent) if independent else None
        print(json.dumps(out, indent=2, default=str))
    else:
        _print(args.image, result, independent, record)
        if similar is not None:
            _print_candidates(similar)
        if record is None:
            print(f"  ledger: {lookup}")
    if result.state == "Invalid" or (record is not None and not record["proofs_verified"]):
        return 1
    # A Custody image checked without the installation it names is not an answer ("Valid", no
    # record): refuse, as the ledger commands do, rather than exit 0.
    return 2 if result.custody and not installed else 0


def _ledger_record(
    settings: Settings, data: bytes, custody: dict[str, Any] | None, *, manifest: bool
) -> tuple[dict[str, Any] | None, str, bool, dict[str, Any] | None]:
    """The image's turn record in this installation's ledger, a sentence on the lookup,
    whether there was an installation to look in, and — for a file with no manifest whose hash
    names no turn — the fingerprint lookup (every tenant: the CLI runs as the operator)."""
    from governance.provenance.fingerprint_lookup import look_up_by_fingerprint
    from governance.provenance.lookup import turn_for_hash, turn_record
    from governance.state import StateError, open_state

    try:
        state = open_state(settings, create=False)
    except StateError as exc:
        return None, f"the image was not looked up: {exc}", False, None
    where = f"the ledger at {settings.masked_database_url}"
    try:
        ref = (custody or {}).get("ledger") or {}
        turn_id = ref.get("turn_id") if ref.get("log_origin") == settings.log_origin else None
        ledger = state.ledger
        turn_id = turn_id or turn_for_hash(ledger.read_engine, hashlib.sha256(data).hexdigest())
        record = None
        similar = None
        found = f"found in {where}"
        if turn_id:
            record = turn_record(ledger, turn_id, viewer_tenant=None, commitments=state.commitments)
        if record is None and not manifest:
            lookup = look_up_by_fingerprint(
                ledger.read_engine, ledger, data, viewer_tenant=None, commitments=state.commitments
            )
            similar = lookup.to_dict()
            if lookup.candidates:
                record = lookup.candidates[0].record
                found = f"found by its fingerprints in {where} (nearest of the candidates)"
        if record is None:
            return None, f"no record of this image in {where}", True, similar
        from governance.provenance.approvals import approval_checks

        record["approvals"] = approval_checks(
            ledger, custody, record, hashlib.sha256(data).hexdigest()
        )
        return record, found, True, similar
    finally:
        state.close()


def _print(name, result, independent, record) -> None:  # type: ignore[no-untyped-def]
    labels = {
        "Trusted": "Trusted — intact, signed by a certificate under a trusted anchor",
        "Valid": "Valid — intact, but the signer is not under a trusted anchor",
        "Invalid": "Invalid — the Content Credentials do not verify",
        "none": "no Content Credentials in this file",
    }
    print(f"{name}: {labels.get(result.state, result.state)}")
    for reason in result.reasons:
        print(f"  why: {reason}")
    if result.error:
        print(f"  error: {result.error}")
    if result.signer:
        print(f"  signed by: {result.signer}")
    if independent is not None:
        verdict = "agrees" if independent.state == result.state else "DISAGREES"
        print(
            f"  independent check (encypher-c2pa): {independent.state}, {verdict}"
            f" (integrity {independent.integrity}, trust {independent.trust})"
        )
    # The chain lists each ingredient once (a manifest shared by many turns appears where it is
    # nearest the top), indented by depth.
    for link in result.ingredients:
        indent = "  " * link.depth
        state = "no Content Credentials" if link.state == "none" else link.state
        line = f"{indent}ingredient [{link.relationship}] {link.title}: {state}"
        if link.custody_turn and link.custody_turn not in link.title:
            line += f" (Custody turn {link.custody_turn})"
        print(line + ("; " + "; ".join(link.reasons) if link.reasons else ""))
    if result.custody:
        c = result.custody
        print(
            f"  Custody turn {c.get('turn_id')} by {c.get('actor')} ({c.get('tenant')}),"
            f" model {c.get('model_version')}"
        )
        synthid = (c.get("synthid") or {}).get("statement")
        print(f"  generator: {c.get('generator')}" + (f"; SynthID: {synthid}" if synthid else ""))
        policy = c.get("policy") or {}
        revision = str(policy.get("bundle_revision"))[:12]
        print(f"  policy: {policy.get('outcome')} (revision {revision})")
    _print_lineage(result.lineage)
    for check in (record or {}).get("approvals") or []:
        covered = "covered these bytes" if check["covers_these_bytes"] else "DOES NOT COVER them"
        print(
            f"  approved by {check['reviewer']} ({check['group']}, {check['stage']} review,"
            f" task {check['task']}): {covered}"
        )
    if record:
        state = "every entry proven" if record["proofs_verified"] else "PROOF FAILED"
        cp = record["checkpoint"]
        count = len(record["events"])
        print(f"  ledger: {count} events, {state} against checkpoint size {cp['size']}")
        for ev in record["events"]:
            print(f"    #{ev['index']} {ev['type']}")


def _print_candidates(similar: dict[str, Any]) -> None:
    """The fingerprint lookup of a file with no manifest whose bytes are unknown."""
    print(f"  fingerprint lookup: {similar['note']}")
    for c in similar["candidates"]:
        record = c["ledger"] or {}
        proven = "every entry proven" if record.get("proofs_verified") else "PROOF FAILED"
        print(
            f"    turn {c['turn_id']} ({c['direction']} image): PDQ distance {c['pdq_distance']}"
            f" of {c['pdq_bits']}, ISCC distance {c['iscc_distance']} of 64;"
            f" {len(record.get('events') or [])} ledger events, {proven}"
        )


def _print_lineage(chain: list[dict[str, Any]]) -> None:
    """The version chain back to the upload (``provenance.lineage_chain``)."""
    if not chain:
        return
    print(f"  lineage (session {chain[0].get('session')}), newest first:")
    for step in chain:
        if "origin" in step:
            had = "with Content Credentials" if step["credentials"] else "no Content Credentials"
            print(f"    origin: {step['origin']} ({had})")
            continue
        parent = step.get("parent_version")
        what = f"{step.get('kind')} of {parent}" if parent else f"{step.get('kind')}"
        print(f"    {step.get('version')}: {what} (turn {step.get('turn')})")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("verify", help="verify an image's Content Credentials and its record")
    parser.add_argument("image")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--anchors", help="PEM trust anchors (default: the configured ones)")
    parser.add_argument("--no-ledger", action="store_true", help="do not look the image up")
    parser.set_defaults(func=_run)
