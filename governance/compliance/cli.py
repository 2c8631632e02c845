"""``custody query …``: the compliance queries on this installation's database, as JSON or text.

The command line is the installation's operator: it reads every tenant unless ``--tenant`` names
one. ``custody query prompts`` records ``prompts.searched`` like the API does (the searcher is
``--by`` or ``cli:<login>``), because reading private content leaves a trace whoever reads it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from governance.ledger_vocabulary import EVENT_STAGES
from governance.settings import Settings

if TYPE_CHECKING:  # the state (and the storage layer) is imported by the commands that open it
    from governance.state import OpenState


def _open() -> OpenState:
    from governance.state import open_state

    return open_state(Settings(), create=False)


def _print(doc: dict[str, Any], args: argparse.Namespace, columns: tuple[str, ...]) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return
    rows = doc.get("rows", [])
    print("\t".join(columns))
    for row in rows:
        print("\t".join(str(row.get(c, "")) for c in columns))
    if doc.get("next_cursor"):
        print(f"more: --cursor {doc['next_cursor']}", file=sys.stderr)


def _turn_filter(args: argparse.Namespace) -> Any:
    from governance.compliance.queries import TurnFilter

    return TurnFilter(
        tenant=args.tenant,
        actor=args.actor,
        session=args.session,
        model=args.model,
        status=args.status,
        outcome=args.outcome,
        policy=args.policy,
        reviewer=args.reviewer,
        stage=args.stage,
        label=args.label,
        since_ms=args.since,
        until_ms=args.until,
    )


TURN_COLUMNS = ("turn_id", "tenant", "actor", "session", "model", "status", "outcome", "created_ms",
                "first_entry_index")  # fmt: skip


def _turns(args: argparse.Namespace) -> int:
    from governance.compliance.queries import query_turns

    state = _open()
    try:
        page = query_turns(state.engine, _turn_filter(args), cursor=args.cursor, limit=args.limit)
    finally:
        state.close()
    _print(page.to_dict(), args, TURN_COLUMNS)
    return 0


def _events(args: argparse.Namespace) -> int:
    from governance.compliance.queries import EventFilter, query_events

    flt = EventFilter(
        tenant=args.tenant,
        type=args.type,
        turn=args.turn,
        actor=args.actor,
        session=args.session,
        model=args.model,
        reviewer=args.reviewer,
        label=args.label,
        stage=args.stage,
        since_ms=args.since,
        until_ms=args.until,
    )
    state = _open()
    try:
        page = query_events(state.engine, flt, cursor=args.cursor, limit=args.limit)
    finally:
        state.close()
    _print(page.to_dict(), args, ("index", "time_ms", "type", "tenant", "actor", "turn"))
    return 0


def _image(args: argparse.Namespace) -> int:
    from governance.compliance.queries import images_by_hash

    state = _open()
    try:
        rows = images_by_hash(state.engine, args.sha256.lower(), tenant=args.tenant)
    finally:
        state.close()
    doc = {"sha256": args.sha256.lower(), "rows": rows, "count": len(rows)}
    _print(doc, args, ("turn_id", "tenant", "direction", "role", "matched", "created_ms"))
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from governance.compliance.prompt_search import (
        commit_query,
        search_prompts,
        searched_event,
        searched_side_rows,
    )

    state = _open()
    try:
        flt = _turn_filter(args)
        commitments = state.commitments
        found = search_prompts(
            state.engine, commitments, flt, args.text, cursor=args.cursor, limit=args.limit,
            scan=args.scan or state.settings.prompt_search_scan,
        )  # fmt: skip
        query = commit_query(state.blobs, args.text)
        event = searched_event(
            tenant=flt.tenant or "*",
            actor=args.by or f"cli:{getpass.getuser()}",
            query=query,
            query_chars=len(args.text),
            flt=flt,
            found=found,
        )
        entry = state.ledger.append([event], [searched_side_rows(commitments, query)])[0]
    finally:
        state.close()
    doc = {**found.page.to_dict(), "scanned": found.scanned, "recorded_as": entry.index}
    _print(doc, args, (*TURN_COLUMNS, "prompt"))
    return 0


def _proof(args: argparse.Namespace) -> int:
    from governance.compliance.proofs import turn_proofs

    state = _open()
    try:
        doc = turn_proofs(state.ledger, args.turn_id, tenant=args.tenant, may_sign=True)
    finally:
        state.close()
    if doc is None:
        print(f"custody query proof: no turn {args.turn_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2))
    return 0


def _sources(state: OpenState) -> Any:
    from governance.compliance.record import RecordSources
    from governance.state import trust_anchors_pem

    return RecordSources(
        engine=state.engine,
        ledger=state.ledger,
        commitments=state.commitments,
        anchors_pem=trust_anchors_pem(state.settings),
    )


def _record(args: argparse.Namespace) -> int:
    from governance.compliance.record import compliance_record

    state = _open()
    try:
        doc = compliance_record(_sources(state), args.sha256.lower(), tenant=args.tenant)
    finally:
        state.close()
    if doc is None:
        print(f"custody query record: no released output {args.sha256}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2))
    return 0 if doc["complete"] else 3


def _missing(args: argparse.Namespace) -> int:
    from governance.compliance.record import MissingFilter, missing_marking

    flt = MissingFilter(tenant=args.tenant, since_ms=args.since, until_ms=args.until)
    state = _open()
    try:
        page = missing_marking(_sources(state), flt, cursor=args.cursor, limit=args.limit)
    finally:
        state.close()
    doc = page.to_dict()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("turn_id\tsigned_sha256\tmissing")
        for row in doc["rows"]:
            print(f"{row['turn_id']}\t{row['output']['signed_sha256']}\t{','.join(row['missing'])}")
        if doc["next_cursor"]:
            print(f"more: --cursor {doc['next_cursor']}", file=sys.stderr)
    return 0


def _oversight(args: argparse.Namespace) -> int:
    import time

    from governance.compliance.oversight import (
        Period,
        figures_csv,
        oversight_figures,
        parse_prices,
    )

    state = _open()
    try:
        until = args.until or int(time.time() * 1000)
        since = args.since if args.since is not None else until - 30 * 86_400_000
        figures = oversight_figures(
            state.engine,
            Period(args.tenant, since, until),
            rubber_stamp_ms=state.settings.rubber_stamp_ms,
            prices=parse_prices(state.settings.model_prices),
        )
    finally:
        state.close()
    if args.format == "csv":
        sys.stdout.write(figures_csv(figures))
    else:
        print(json.dumps(figures, indent=2))
    return 0


def _common(p: argparse.ArgumentParser, *, paged: bool = True) -> None:
    p.add_argument("--tenant", help="one tenant (default: every tenant)")
    p.add_argument("--actor")
    p.add_argument("--session", help="the x-custody-session value the turns were sent with")
    p.add_argument("--model")
    p.add_argument("--reviewer", help="turns this reviewer decided")
    p.add_argument(
        "--label", help="name=value sent in x-custody-labels, or @version=text (a version label)"
    )
    p.add_argument("--since", type=int, help="milliseconds since 1970 (inclusive)")
    p.add_argument("--until", type=int, help="milliseconds since 1970 (exclusive)")
    if paged:
        p.add_argument("--cursor", help="the next_cursor of the previous page")
        p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print JSON (default: tab-separated)")


def _turn_options(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--status", help="released | failed | interrupted")
    p.add_argument("--outcome", help="the turn's outcome (safety outcome or failure reason)")
    p.add_argument("--policy", choices=("allow", "deny", "review"))
    p.add_argument("--stage", choices=("request", "response"), help="turns held at this stage")


def _reported(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A bad filter or cursor is one line on stderr and exit status 2, as every command's."""

    def run(args: argparse.Namespace) -> int:
        from governance.compliance.oversight import PriceError
        from governance.compliance.queries import QueryError

        try:
            return func(args)
        except (QueryError, PriceError) as exc:
            print(f"custody query {args.query_command}: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody query`` and its subcommands."""
    query = sub.add_parser("query", help="compliance queries: turns, events, images, prompts")
    cmds = query.add_subparsers(dest="query_command", required=True)

    turns = cmds.add_parser("turns", help="turns by tenant, actor, session, model, time, outcome")
    _turn_options(turns)
    turns.set_defaults(func=_reported(_turns))

    events = cmds.add_parser("events", help="ledger events by tenant, type, turn, actor, time")
    _common(events)
    events.add_argument("--type", help="the event type, e.g. policy.decided")
    events.add_argument("--turn")
    events.add_argument(
        "--stage", choices=tuple(EVENT_STAGES), help="the events of this stage of a turn's life"
    )
    events.set_defaults(func=_reported(_events))

    image = cmds.add_parser("image", help="inputs and outputs with this SHA-256, with their turns")
    image.add_argument("sha256")
    image.add_argument("--tenant")
    image.add_argument("--json", action="store_true")
    image.set_defaults(func=_reported(_image))

    prompts = cmds.add_parser("prompts", help="text search in committed prompts (recorded)")
    prompts.add_argument("text")
    _turn_options(prompts)
    prompts.add_argument("--scan", type=int, help="read at most this many turns")
    prompts.add_argument("--by", help="who searches (default cli:<login>)")
    prompts.set_defaults(func=_reported(_prompts))

    record = cmds.add_parser(
        "record", help="an output's compliance record: marking, SB 942 fields, AI Act category"
    )
    record.add_argument("sha256", help="the signed file's SHA-256, or the upstream image's")
    record.add_argument("--tenant")
    record.set_defaults(func=_reported(_record))

    missing = cmds.add_parser("missing-marking", help="outputs lacking a required marking")
    missing.add_argument("--tenant")
    missing.add_argument("--since", type=int)
    missing.add_argument("--until", type=int)
    missing.add_argument("--cursor")
    missing.add_argument("--limit", type=int, default=50, help="outputs read per call")
    missing.add_argument("--json", action="store_true")
    missing.set_defaults(func=_reported(_missing))

    oversight = cmds.add_parser(
        "oversight", help="oversight figures of a tenant and period (JSON or CSV)"
    )
    oversight.add_argument("--tenant", help="one tenant (default: every tenant)")
    oversight.add_argument("--since", type=int, help="ms since 1970 (default: 30 days ago)")
    oversight.add_argument("--until", type=int, help="ms since 1970 (default: now)")
    oversight.add_argument("--format", choices=("json", "csv"), default="json")
    oversight.set_defaults(func=_reported(_oversight))

    proof = cmds.add_parser("proof", help="a turn's entries with inclusion proofs (JSON)")
    proof.add_argument("turn_id")
    proof.add_argument("--tenant")
    proof.set_defaults(func=_reported(_proof))
