"""``custody authorship SESSION_OR_VERSION --out report.pdf|report.html|report.json``.

Opens this installation's state like ``custody export`` (an operator's command: any tenant).
A version id (``ver_…``) names its session and is the report's final version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SUFFIXES = (".pdf", ".html", ".json")


def _authorship(args: argparse.Namespace) -> int:
    from governance.authorship import AuthorshipError, build_report
    from governance.authorship.render import to_html, to_pdf
    from governance.settings import Settings
    from governance.state import open_state
    from storage.sessions import SessionStore

    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        print(f"custody authorship: --out must end in {', '.join(SUFFIXES)}", file=sys.stderr)
        return 2
    state = open_state(Settings(), create=False)
    try:
        store = SessionStore(state.engine)
        version = None
        session_id = args.id
        if args.id.startswith("ver_"):
            row = store.version(args.id)
            version, session_id = args.id, (row or {}).get("session_id", "")
        session = store.session(session_id) if session_id else None
        if session is None:
            print(f"custody authorship: no session or version {args.id!r}", file=sys.stderr)
            return 1
        report = build_report(
            state.ledger,
            store,
            state.commitments,
            session,
            version=version,
            open_content=not args.commitments_only,
        )
    except AuthorshipError as exc:
        print(f"custody authorship: {exc}", file=sys.stderr)
        return 1
    finally:
        state.close()
    suffix = out.suffix.lower()
    if suffix == ".pdf":
        out.write_bytes(to_pdf(report, args.base_url))
    elif suffix == ".html":
        out.write_text(to_html(report, args.base_url), encoding="utf-8")
    else:
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(
        f"Wrote {out}: session {report['session']}, {report['human_acts']} human and"
        f" {report['ai_acts']} AI acts from {report['entries']} ledger entries."
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("authorship", help="write a session's authorship report (PDF, HTML or JSON)")
    p.add_argument("id", help="a session id (ses_…) or a version id (ver_…, the final version)")
    p.add_argument("--out", required=True, help="report.pdf, report.html or report.json")
    p.add_argument(
        "--commitments-only",
        action="store_true",
        help="show prompts and masks as commitments, without thumbnails",
    )
    p.add_argument("--base-url", default="", help="the gateway's URL, prefixed to the ledger links")
    p.set_defaults(func=_authorship)
