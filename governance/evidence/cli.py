"""``custody export`` (write an evidence bundle) and ``custody verify-bundle`` (check one offline).

``export`` opens this installation's state like ``custody ledger proof``: it signs a checkpoint
first when the newest does not cover the log, so every selected entry is proven. ``verify-bundle``
opens nothing but the zip: it runs where Custody's database and keys are not.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path


def _export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from governance.evidence.export import ExportError, Selection, time_window
    from governance.evidence.exporting import (
        checkpoint_for_export,
        export_to_file,
        keys_for,
        new_bundle_id,
    )
    from governance.evidence.layout import parse_disclosure
    from governance.evidence.timestamp import TimestampError
    from governance.settings import Settings
    from governance.state import open_state, trust_anchors_pem

    try:
        disclose = parse_disclosure(args.disclose)
        since_ms, until_ms = time_window(args.since, args.until, ("--since", "--until"))
    except ValueError as exc:
        print(f"custody export: {exc}", file=sys.stderr)
        return 2
    selection = Selection(
        tenant=args.tenant,
        session=args.session,
        turn=args.turn,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    handed = [Path(p).read_text() for p in args.since_checkpoint or []]
    settings = Settings()
    state = open_state(settings, create=False)
    bar = tqdm(
        total=0,
        unit="entry",
        disable=not args.progress and not sys.stderr.isatty(),
        file=sys.stderr,
        desc="exporting",
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        if done % 100 == 0 or done == total:
            bar.refresh()

    try:
        ledger = state.ledger
        checkpoint = checkpoint_for_export(settings, ledger, sign=True)
        timestamp = None
        if settings.evidence_tsa_url:
            from governance.evidence.timestamp import TsaClient

            timestamp = TsaClient(settings.evidence_tsa_url).timestamp
        bundle_id = new_bundle_id()
        result = export_to_file(
            Path(args.out),
            bundle_id=bundle_id,
            ledger=ledger,
            commitments=state.commitments,
            keys=keys_for(settings, ledger, trust_anchors_pem(settings)),
            selection=selection,
            checkpoint=checkpoint,
            disclose=disclose,
            actor=args.by or f"cli:{getpass.getuser()}",
            since_checkpoints=handed,
            progress=progress,
            timestamp=timestamp,
            via="cli",
        )
    except (ExportError, TimestampError) as exc:
        print(f"custody export: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        state.close()
    print(
        f"Wrote {args.out}: bundle {result.bundle_id}, {result.entries} entries proven against"
        f" the checkpoint of size {result.checkpoint_size}, {result.openings} commitments opened,"
        f" {result.withheld} withheld. Check it with: custody verify-bundle {args.out}"
        f" --log-key '{state.signer.verifier_key()}'"
    )
    return 0


def _verify_bundle(args: argparse.Namespace) -> int:
    from governance.evidence.verify import ExtraCheck, verify_bundle

    checks: list[ExtraCheck] = []
    if args.witness or args.quorum:
        from governance.evidence.verify import cosignature_check

        checks.append(cosignature_check(args.witness or [], args.quorum or 0))
    from governance.evidence.timestamp import timestamp_check

    checks.append(timestamp_check(Path(args.tsa_root).read_bytes() if args.tsa_root else None))
    log_key = args.log_key
    if Path(log_key).is_file():
        log_key = Path(log_key).read_text().strip()
    report = verify_bundle(Path(args.bundle), log_key=log_key, extra_checks=checks)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody export`` and ``custody verify-bundle``."""
    export = sub.add_parser(
        "export", help="write an evidence bundle (zip) anyone can verify offline"
    )
    export.add_argument("--tenant", required=True)
    export.add_argument("--session", help="only this session's entries")
    export.add_argument("--turn", help="only this turn's entries")
    export.add_argument("--since", help="entries at or after this time (ISO 8601 or ms)")
    export.add_argument("--until", help="entries before this time (ISO 8601 or ms)")
    export.add_argument("--out", required=True, help="the zip file to write")
    export.add_argument(
        "--disclose",
        default="none",
        help="which committed content to open: none (commitments only), prompts, all, or a comma"
        " list of fields (prompt,mask,input,reference,request,comment,…); signed images always",
    )
    export.add_argument(
        "--since-checkpoint",
        action="append",
        metavar="FILE",
        help="a checkpoint note the recipient holds: the bundle proves it consistent",
    )
    export.add_argument("--by", help="who exports (default cli:<user>)")
    export.add_argument("--progress", action="store_true", help="show the progress bar")
    export.set_defaults(func=_export)

    verify = sub.add_parser(
        "verify-bundle", help="verify an evidence bundle offline with the log's key"
    )
    verify.add_argument("bundle")
    verify.add_argument(
        "--log-key", required=True, help="the log's note verifier key (or a file holding it)"
    )
    verify.add_argument("--tsa-root", help="PEM root certificate of the RFC 3161 TSA to trust")
    verify.add_argument(
        "--witness", action="append", help="a witness's cosignature verifier key (repeat)"
    )
    verify.add_argument(
        "--quorum", type=int, help="how many of the --witness keys must have cosigned"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_verify_bundle)
