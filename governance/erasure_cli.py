"""``custody erase DIGEST_OR_COMMITMENT --reason "..."``: erase content, recorded in the ledger.

The CLI acts with the installation's own authority (it holds the database), like an operator:
it may erase any tenant's content. It prints which tenants' records referred to the content and
the ledger entries of the ``content.erased`` events.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from governance.settings import Settings


def _erase(args: argparse.Namespace) -> int:
    from governance.auth.lifecycle import Operator
    from governance.erasure import ContentEraser, ErasureError
    from governance.state import open_state

    # Content to erase exists only in an installation: never make one (a new, empty installation
    # would answer "no such content" about data that is still held elsewhere).
    state = open_state(Settings(), create=False)
    try:
        eraser = ContentEraser(state.engine, state.ledger, state.commitments)
        target = eraser.find(args.target)
        done = eraser.erase(
            target,
            reason=args.reason,
            by=Operator(actor=args.by or f"cli:{getpass.getuser()}", via="cli"),
        )
    except ErasureError as exc:
        print(f"custody erase: {exc}", file=sys.stderr)
        return 2
    finally:
        state.close()
    if args.json:
        print(json.dumps(done.to_json(), indent=2))
        return 0
    owners = ", ".join(repr(t) for t in sorted(target.tenants)) or "no tenant"
    gone = "destroyed" if done.blob_was_present else "already gone from the blob store"
    copies = (
        f" {len(target.copies)} blob(s) holding copies of it (request bodies, decision inputs)"
        " were erased with it;"
        if target.copies
        else ""
    )
    print(
        f"Erased: the content ({len(target.commitments)} commitment(s), referenced by {owners})"
        f" is {gone} and its salts emptied;{copies} recorded as ledger entr"
        f"{'y' if len(done.entries) == 1 else 'ies'} {', '.join(map(str, done.entries))}."
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody erase``."""
    erase = sub.add_parser("erase", help="erase content (a blob) on an authorised request")
    erase.add_argument(
        "target", metavar="DIGEST_OR_COMMITMENT", help="its SHA-256 digest or a commitment to it"
    )
    erase.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    erase.add_argument("--by", default="", help="who requests it (default cli:<user>)")
    erase.add_argument("--json", action="store_true", help="print JSON")
    erase.set_defaults(func=_erase)
