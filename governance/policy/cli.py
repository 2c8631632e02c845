"""``custody policy``: test (run the Rego tests), eval (dry-run a decision), diff (replay)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _policy_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "policy", None):
        return Path(args.policy)
    from governance.settings import Settings

    return Settings().policy_dir


def _test(args: argparse.Namespace) -> int:
    from governance.policy import EngineError
    from governance.policy.bundle import BundleError, load_bundle
    from governance.policy.engine_regopy import run_rego_tests

    root = _policy_dir(args)
    try:
        bundle = load_bundle(root)
        results = run_rego_tests(bundle)
    except (BundleError, EngineError) as exc:
        print(f"custody policy test: {exc}", file=sys.stderr)
        return 2
    for r in results:
        if args.verbose or r.status != "pass":
            line = f"{r.status.upper():5} {r.file}: data.{r.package}.{r.name}"
            print(line + (f" — {r.detail}" if r.detail else ""))
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "fail" for r in results)
    errors = sum(r.status == "error" for r in results)
    print(
        f"{passed} passed, {failed} failed, {errors} errors "
        f"({len(bundle.tests)} test files in {root}, revision {bundle.revision[:12]})"
    )
    if not results:
        print("custody policy test: no test_* rules found in *_test.rego files", file=sys.stderr)
        return 1
    return 0 if failed == 0 and errors == 0 else 1


def _eval(args: argparse.Namespace) -> int:
    from governance.policy.service import PolicyService

    try:
        document: Any = json.loads(Path(args.input).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"custody policy eval: cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(document, dict):
        print(f"custody policy eval: {args.input} must hold a JSON object", file=sys.stderr)
        return 2
    document.setdefault("stage", "request")
    service = PolicyService(_policy_dir(args))
    try:
        decision = service.evaluate_document(document, fresh_signals=not args.keep_signals)
    finally:
        service.close()
    out = decision.record()
    out["input"] = decision.input_document if args.unmasked else out["input"]
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from governance.policy.replay import diff_decisions, load_recorded_inputs
    from governance.settings import Settings
    from governance.state import StateError

    notes: list[str] = []
    try:
        inputs = load_recorded_inputs(Settings(), args.replay, notes=notes)
    except StateError as exc:
        print(f"custody policy diff: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"custody policy diff: cannot read recorded decisions: {exc}", file=sys.stderr)
        return 2
    changes, total = diff_decisions(Path(args.old), Path(args.new), inputs)
    for note in notes:
        print(f"custody policy diff: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"replayed": total, "changed": [c.as_dict() for c in changes]}, indent=2))
        return 0
    for c in changes:
        print(f"turn {c.turn_id}: {c.old_outcome} -> {c.new_outcome}")
        print(f"    old: {'; '.join(c.old_reasons) or '(no reason)'}")
        print(f"    new: {'; '.join(c.new_reasons) or '(no reason)'}")
    print(f"{total} recorded turns re-decided, {len(changes)} would change")
    return 0


def register(subparsers: Any) -> None:
    """Add ``custody policy {test,eval,diff}`` to the top-level parser."""
    policy = subparsers.add_parser("policy", help="test, dry-run and compare Rego policies")
    sub = policy.add_subparsers(dest="policy_command", required=True)

    test = sub.add_parser("test", help="run the *_test.rego tests with the in-process engine")
    test.add_argument("--policy", default=None, help="policy directory (default: settings)")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    test.set_defaults(func=_test)

    ev = sub.add_parser("eval", help="dry-run one decision on an input document (JSON file)")
    ev.add_argument("--input", required=True, help="the contract input document")
    ev.add_argument("--policy", default=None, help="policy directory (default: settings)")
    ev.add_argument(
        "--keep-signals", action="store_true", help="use input.signals as given, do not reclassify"
    )
    ev.add_argument("--unmasked", action="store_true", help="print the input without masking")
    ev.set_defaults(func=_eval)

    diff = sub.add_parser("diff", help="re-decide recorded turns under two policies")
    diff.add_argument("old", help="the policy directory in force")
    diff.add_argument("new", help="the candidate policy directory")
    diff.add_argument("--replay", type=int, required=True, metavar="N", help="last N turns")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=_diff)
