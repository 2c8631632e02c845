"""The documentation names what the code has: every setting, every CLI command, every event type.

Settings are read from ``Settings.model_fields`` and commands from the real argparse parser, so a
setting or command added without its documentation fails here; the README's table of the default
tenants is checked against ``policies/custody/tenants/data.json``. The repository is
self-contained: no test or benchmark reads from outside it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from governance.cli import build_parser
from governance.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _all_docs() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))])


def _setting_names() -> list[str]:
    return sorted(f"CUSTODY_{name.upper()}" for name in Settings.model_fields)


def test_every_setting_is_documented_in_operations() -> None:
    operations = (DOCS / "operations.md").read_text()
    spelled = set(re.findall(r"`(CUSTODY_[A-Z0-9_]+)`", operations))  # each name in full
    missing = [name for name in _setting_names() if name not in spelled]
    assert not missing, f"docs/operations.md does not document {missing}"


def test_operations_documents_no_setting_that_does_not_exist() -> None:
    known = set(_setting_names()) | {"CUSTODY_CONFIG", "CUSTODY_TEST_PG_URL"}
    operations = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"`(CUSTODY_[A-Z0-9_]+)`", operations))
    unknown = sorted(n for n in documented if n not in known and not n.endswith("_"))
    assert not unknown, f"docs/operations.md documents settings that do not exist: {unknown}"


EVENT_TYPE = re.compile(
    r"\"((?:turn|policy|review|upstream|output|key|content|models|tokens|request|account"
    r"|console|webhook|prompts)\.[a-z_]+)\""
)


def test_every_ledger_event_type_is_documented() -> None:
    emitted = {
        name
        for path in (ROOT / "governance").rglob("*.py")
        for name in EVENT_TYPE.findall(path.read_text())
    }
    assert len(emitted) >= 15, "the scan no longer finds the event types"
    ledger_format = (DOCS / "ledger-format.md").read_text()
    missing = sorted(name for name in emitted if f"`{name}`" not in ledger_format)
    assert not missing, f"docs/ledger-format.md does not document the events {missing}"


def _commands(parser: argparse.ArgumentParser, prefix: str = "custody") -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}"
                nested = _commands(sub, full)
                out.extend(nested or [full])
    return out


def test_every_cli_command_is_documented() -> None:
    text = _all_docs()
    missing = [cmd for cmd in _commands(build_parser()) if cmd not in text]
    assert not missing, f"README.md or docs/ do not mention {missing}"


def test_no_test_or_benchmark_reads_outside_the_repository() -> None:
    offenders = []
    for folder in ("tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == Path(__file__).name:
                continue
            source = path.read_text()
            if re.search(r"parents\[[2-9]\]|\.\./shared|[\"']shared[\"']\s*/", source):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"these files reach outside the repository: {offenders}"


def _documented_bodies() -> dict[str, tuple[set[str], set[str]]]:
    """docs/ledger-format.md §11: each event type's fields, always present and when they apply."""
    text = (DOCS / "ledger-format.md").read_text()
    section = text.split("## 11. Event bodies", 1)[1].split("\n## ", 1)[0]
    bodies: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            always, optional = (set(re.findall(r"`([a-z0-9_]+)`", c)) for c in cells[1:])
            bodies[cells[0].strip("`")] = (always, optional)
    return bodies


def test_every_event_type_and_body_field_is_documented() -> None:
    """The ledger vocabulary (the code's one list of event types and body fields) and
    docs/ledger-format.md §11 name the same types with the same fields."""
    from governance.ledger_vocabulary import EVENT_BODIES, body_fields

    documented = _documented_bodies()
    assert sorted(documented) == sorted(EVENT_BODIES), "§11 and the vocabulary list other types"
    for event_type in EVENT_BODIES:
        required, optional = body_fields(event_type)
        assert documented[event_type] == (set(required), set(optional)), (
            f"docs/ledger-format.md §11 gives {event_type} other fields than"
            f" governance/ledger_vocabulary.py: {documented[event_type]} vs"
            f" {(set(required), set(optional))}"
        )


def test_the_code_writes_only_event_types_of_the_vocabulary() -> None:
    """Every event type the code names is one the vocabulary defines (and so documented)."""
    from governance.ledger_vocabulary import EVENT_BODIES

    emitted = {
        name
        for path in (ROOT / "governance").rglob("*.py")
        for name in EVENT_TYPE.findall(path.read_text())
    }
    assert emitted <= set(EVENT_BODIES), sorted(emitted - set(EVENT_BODIES))


def _readme_tenant_rows() -> dict[str, str]:
    """The README's "default tenants" table: tenant → the text of its row."""
    text = (ROOT / "README.md").read_text()
    table = text.split("**The default tenants**", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_readme_says_what_each_default_tenant_enforces() -> None:
    tenants = json.loads((ROOT / "policies" / "custody" / "tenants" / "data.json").read_text())
    rows = _readme_tenant_rows()
    assert set(rows) == set(tenants), "one README row per tenant of data.json"
    for name, settings in tenants.items():
        row = rows[name]
        wanted = [f"`{m}`" for m in settings.get("allowed_models", [])]
        if settings.get("reviewer_group", "reviewers") != "reviewers" or name == "default":
            wanted.append(f"`{settings['reviewer_group']}`")
        if settings.get("escalate_to"):
            wanted.append(f"`{settings['escalate_to']}`")
        per_minute = settings.get("rate_limits", {}).get("per_minute", {})
        if name != "acme":  # acme's limits are the default's, and its row says so
            wanted += [f"{per_minute[k]:,} turns" for k in ("actor_turns",) if k in per_minute]
        limits = settings.get("input_limits", {})
        if "max_prompt_chars" in limits:
            wanted.append(f"prompts ≤ {limits['max_prompt_chars']:,} characters")
        if settings.get("production_approvals", 1) > 1:
            wanted.append(f"{settings['production_approvals']} approvals")
        missing = [w for w in wanted if w not in row]
        assert not missing, f"the README's row of tenant {name!r} does not say {missing}"
