"""``custody ledger …``: verify the whole log, print checkpoints and offline proofs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from governance.settings import Settings

if TYPE_CHECKING:  # the state (and the storage layer) is imported by the commands that open it
    from governance.state import OpenState


def _open() -> OpenState:
    """This installation's state, read-only: never creates a ledger to report on."""
    from governance.state import open_state

    return open_state(Settings(), create=False)


def _verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage.ledger.note import NoteVerifier
    from storage.ledger.verify import verify_ledger

    state = _open()
    verifier = NoteVerifier.from_key_string(args.vkey or state.signer.verifier_key())
    published = [Path(p).read_text() for p in args.checkpoint or []]
    bar = tqdm(
        total=0,
        unit="entry",
        disable=args.json or (not sys.stderr.isatty() and not args.progress),
        file=sys.stderr,
        desc="verifying",
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = verify_ledger(
            state.engine,
            origin=state.settings.log_origin,
            verifier=verifier,
            commitments=state.commitments,
            trusted_checkpoints=published,
            progress=progress,
        )
    finally:
        bar.close()
        state.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def _checkpoint(args: argparse.Namespace) -> int:
    state = _open()
    try:
        ledger = state.ledger
        cp = ledger.issue_checkpoint() if args.issue else ledger.latest_checkpoint()
    finally:
        state.close()
    sys.stdout.write(cp.note)
    return 0


def _vkey(_: argparse.Namespace) -> int:
    state = _open()
    state.close()
    print(state.signer.verifier_key())
    return 0


def _proof(args: argparse.Namespace) -> int:
    from storage.ledger.proof_file import format_proof

    state = _open()
    ledger = state.ledger
    try:
        cp = ledger.latest_checkpoint()
        if args.index >= cp.size:
            cp = ledger.issue_checkpoint()
        if args.index >= cp.size:
            print(
                f"custody ledger proof: entry {args.index} does not exist ({cp.size} entries)",
                file=sys.stderr,
            )
            return 2
        path = ledger.prove_inclusion(args.index, cp.size)
        sys.stdout.write(format_proof(args.index, path, cp.note))
        if args.leaf_out:
            Path(args.leaf_out).write_bytes(ledger.entry(args.index).leaf)
    finally:
        state.close()
    return 0


def _verify_proof(args: argparse.Namespace) -> int:
    from storage.ledger.note import NoteError, NoteVerifier
    from storage.ledger.proof_file import verify_proof

    text = Path(args.proof).read_text()
    leaf = Path(args.leaf).read_bytes()
    try:
        cp = verify_proof(text, leaf, NoteVerifier.from_key_string(args.vkey), args.origin)
    except (ValueError, NoteError) as exc:
        print(f"INVALID: {exc}")
        return 1
    print(f"OK: the leaf is in the log {cp.origin!r} under its checkpoint of size {cp.size}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody ledger`` and its subcommands."""
    ledger = sub.add_parser("ledger", help="verify the ledger, print checkpoints and proofs")
    cmds = ledger.add_subparsers(dest="ledger_command", required=True)

    verify = cmds.add_parser("verify", help="recompute every leaf, the tree and every checkpoint")
    verify.add_argument(
        "--checkpoint",
        action="append",
        help="an earlier published checkpoint note to check consistency against",
    )
    verify.add_argument("--vkey", help="the log's verifier key (default: this installation's)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--progress", action="store_true", help="show the progress bar")
    verify.set_defaults(func=_verify)

    checkpoint = cmds.add_parser("checkpoint", help="print the latest signed checkpoint")
    checkpoint.add_argument("--issue", action="store_true", help="sign a new one now")
    checkpoint.set_defaults(func=_checkpoint)

    vkey = cmds.add_parser("vkey", help="print the log's verifier key (publish it)")
    vkey.set_defaults(func=_vkey)

    proof = cmds.add_parser("proof", help="print an offline inclusion proof (C2SP tlog-proof)")
    proof.add_argument("index", type=int)
    proof.add_argument("--leaf-out", help="also write the entry's leaf bytes to this file")
    proof.set_defaults(func=_proof)

    vproof = cmds.add_parser("verify-proof", help="check an offline proof, without the database")
    vproof.add_argument("proof")
    vproof.add_argument(
        "--leaf", required=True, help="the leaf bytes (from `ledger proof --leaf-out`)"
    )
    vproof.add_argument("--vkey", required=True)
    vproof.add_argument("--origin", required=True)
    vproof.set_defaults(func=_verify_proof)
