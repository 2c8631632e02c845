"""One export, as the CLI and the API make it: write the bundle file, then record the export.

The ``evidence.exported`` event is appended only once the file is complete (its SHA256SUMS digest
is in the event), so the ledger names every bundle that left, and a failed export leaves no file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from governance.evidence.export import (
    ExportError,
    ExportResult,
    Keys,
    Progress,
    Selection,
    write_bundle,
)
from governance.ledger_vocabulary import ledger_event
from governance.provenance.pki import DevPki
from governance.settings import Settings
from storage.blobs import Commitments
from storage.ledger.checkpoint import Checkpoint
from storage.ledger.log import Ledger
from storage.ledger.note import split_note
from storage.ledger.timestamps import CheckpointTimestamps


def new_bundle_id() -> str:
    return "eb_" + secrets.token_hex(12)


def keys_for(settings: Settings, ledger: Ledger, anchors_pem: str) -> Keys:
    """The keys a recipient checks against: the note verifier key and the C2PA chain."""
    if settings.signing_cert_file is not None:
        chain = Path(settings.signing_cert_file).read_bytes()
    else:
        dev = DevPki(settings.data_dir / "pki").signer_chain
        chain = dev.read_bytes() if dev.is_file() else b""
    return Keys(ledger.signer.verifier_key(), chain, anchors_pem.encode())


class NotYetWitnessed(ExportError):
    """No checkpoint has a quorum of witness cosignatures yet (a retry later may succeed)."""


def checkpoint_for_export(settings: Settings, ledger: Ledger, *, sign: bool) -> Checkpoint:
    """The checkpoint a bundle proves against: with witnesses configured, the newest one their
    quorum cosigned (with the cosignatures); otherwise the newest signed one, after signing one
    of the whole log first when ``sign`` (the CLI, which holds the key)."""
    from governance.witness.config import witness_policy
    from storage.ledger.witnessed import published_checkpoint

    policy = witness_policy(settings)
    if policy is not None:
        cp = published_checkpoint(ledger.engine, ledger.origin, policy.keys, policy.quorum)
        if cp is None:
            raise NotYetWitnessed(
                "no checkpoint has been cosigned by the witness quorum yet: see the"
                " checkpoint.witness_refused events, or wait for the next checkpoint"
            )
        return cp
    cp = ledger.latest_checkpoint()
    if sign and cp.size < ledger.size():
        cp = ledger.issue_checkpoint()
    return cp


def export_to_file(
    path: Path,
    *,
    bundle_id: str,
    ledger: Ledger,
    commitments: Commitments,
    keys: Keys,
    selection: Selection,
    checkpoint: Checkpoint,
    disclose: frozenset[str] | None,
    actor: str,
    since_checkpoints: Sequence[str] = (),
    progress: Progress | None = None,
    timestamp: Callable[[bytes], bytes] | None = None,
    via: str,
) -> ExportResult:
    """Write the bundle to ``path`` (via a temporary file beside it) and record the export."""
    partial = path.with_name(path.name + ".partial")
    if timestamp is not None:
        stamps = CheckpointTimestamps(ledger.engine)
        if checkpoint.size > 0 and stamps.get(checkpoint.size) is None:
            stamps.add(checkpoint.size, timestamp(split_note(checkpoint.note)[0].encode()))
    try:
        with partial.open("wb") as out:
            result = write_bundle(
                out,
                bundle_id=bundle_id,
                ledger=ledger,
                commitments=commitments,
                keys=keys,
                selection=selection,
                checkpoint=checkpoint,
                disclose=disclose,
                since_checkpoints=since_checkpoints,
                exported_by=actor,
                progress=progress,
                timestamp=timestamp,
            )
            out.flush()
            os.fsync(out.fileno())
        ledger.append(
            [
                ledger_event(
                    "evidence.exported",
                    {
                        "bundle": bundle_id,
                        "selection": selection.to_dict(),
                        "disclose": "all" if disclose is None else sorted(disclose),
                        "entries": result.entries,
                        "checkpoint_size": result.checkpoint_size,
                        "earlier_checkpoints": len(result.earlier_checkpoints),
                        "openings": result.openings,
                        "withheld": result.withheld,
                        "sha256sums_sha256": result.sums_sha256,
                        "bytes": result.bytes,
                        "timestamped": timestamp is not None,
                        "via": via,
                    },
                    tenant=selection.tenant,
                    actor=actor,
                    session=selection.session,
                    turn=None,
                )
            ]
        )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return result
