"""Console accounts: the store and ``custody accounts`` beside a running gateway, on SQLite and
PostgreSQL. Every step is a ledger event with no password or hash in it; disabling an account or
changing its password ends its sessions at once; failed sign-ins throttle the account in every
process, since they are counted on its row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from governance.accounts.store import AccountError, Accounts
from governance.auth.lifecycle import Operator
from tests.console_helpers import PASSWORD, ConsoleClient, console_events, make_account
from tests.keys_helpers import cli, cli_ok, gateway, leaves, verify_ok

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

BY = Operator(actor="test", via="cli")


@pytest.fixture()
def served(tmp_path: Path, db_url: str):
    with gateway(tmp_path / "custody", db_url) as running:
        yield running


def _password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "password.txt"
    path.write_text(password + "\n")
    return str(path)


def test_cli_creates_lists_disables_and_resets_accounts_recording_each_step(
    served, tmp_path: Path
) -> None:
    secret = "first password of bob"
    out = cli_ok(
        served,
        "accounts", "create", "--tenant", "acme", "--username", "bob", "--role", "reviewer",
        "--also", "auditor", "--groups", "legal,brand", "--display-name", "Bob Reviewer",
        "--password-file", _password_file(tmp_path, secret),
    )  # fmt: skip
    assert "Created a reviewer account 'bob' for tenant 'acme'" in out
    listed = json.loads(cli_ok(served, "accounts", "list", "--json"))
    assert [(a["username"], a["roles"], a["groups"], a["state"]) for a in listed] == [
        ("bob", ["auditor", "reviewer"], ["brand", "legal"], "active")
    ]
    assert "hash" not in json.dumps(listed)
    table = cli_ok(served, "accounts", "list", "--tenant", "acme")
    assert "Bob Reviewer" in table and "active" in table

    browser = ConsoleClient(served)
    assert browser.sign_in("bob", password=secret).status_code == 303
    assert browser.get("/console/ledger").status_code == 200

    newer = "second password of bob"
    cli_ok(
        served, "accounts", "set-password", "--tenant", "acme", "--username", "bob",
        "--password-file", _password_file(tmp_path, newer),
    )  # fmt: skip
    assert browser.get("/console/ledger").status_code == 303  # the session ended with it
    assert browser.sign_in("bob", password=secret).status_code == 401
    assert browser.sign_in("bob", password=newer).status_code == 303

    out = cli_ok(served, "accounts", "disable", "--tenant", "acme", "--username", "bob",
                 "--reason", "left the company")  # fmt: skip
    assert "Disabled account 'bob'" in out
    assert browser.get("/console/").status_code == 303
    assert browser.sign_in("bob", password=newer).status_code == 401
    browser.close()

    types = [e["type"] for e in console_events(served, "account.", "console.")]
    assert types == [
        "account.created",
        "console.signed_in",
        "account.password_changed",
        "console.sign_in_failed",
        "console.signed_in",
        "account.disabled",
        "console.sign_in_failed",
    ]
    disabled = console_events(served, "account.disabled")[0]
    assert disabled["body"]["reason"] == "left the company"
    assert disabled["body"]["by"]["via"] == "cli"
    changed = console_events(served, "account.password_changed")[0]
    assert changed["body"]["sessions_ended"] == 1
    failed = console_events(served, "console.sign_in_failed")
    assert [f["body"]["reason"] for f in failed] == ["bad_password", "disabled"]
    for leaf in leaves(served):  # no password and no argon2 hash in any leaf
        assert secret.encode() not in leaf and newer.encode() not in leaf
        assert b"$argon2" not in leaf
    verify_ok(served)


def test_cli_refuses_bad_input_with_one_line(served, tmp_path: Path) -> None:
    short = _password_file(tmp_path, "short")
    done = cli(served, "accounts", "create", "--tenant", "acme", "--username", "carol",
               "--role", "auditor", "--password-file", short)  # fmt: skip
    assert done.returncode == 2 and "at least 12 characters" in done.stderr
    # No terminal and no file: refused rather than reading a password from argv or stdin.
    done = cli(served, "accounts", "create", "--tenant", "acme", "--username", "carol",
               "--role", "auditor")  # fmt: skip
    assert done.returncode == 2 and "--password-file" in done.stderr
    good = _password_file(tmp_path, PASSWORD)
    done = cli(served, "accounts", "create", "--tenant", "acme", "--username", "no spaces",
               "--role", "auditor", "--password-file", good)  # fmt: skip
    assert done.returncode == 2 and "is not valid" in done.stderr
    make_account(served, "dave", "auditor")
    done = cli(served, "accounts", "create", "--tenant", "acme", "--username", "dave",
               "--role", "auditor", "--password-file", good)  # fmt: skip
    assert done.returncode == 2 and "already has an account 'dave'" in done.stderr
    done = cli(served, "accounts", "disable", "--tenant", "acme", "--username", "nobody")
    assert done.returncode == 2 and "has no account 'nobody'" in done.stderr
    assert [e["type"] for e in console_events(served, "account.")] == ["account.created"]


def test_the_same_username_in_two_tenants_is_two_accounts(served) -> None:
    acme = make_account(served, "erin", "auditor", tenant="acme")
    globex = make_account(served, "erin", "auditor", tenant="globex", password="globex passphrase")
    assert acme.account_id != globex.account_id
    browser = ConsoleClient(served)
    assert browser.sign_in("erin", tenant="globex", password=PASSWORD).status_code == 401
    assert browser.sign_in("erin", tenant="globex", password="globex passphrase").status_code == 303
    browser.close()


def test_failed_sign_ins_throttle_the_account_in_every_process(served) -> None:
    make_account(served, "frank", "auditor")
    services = served.services
    # Two stores on the same database stand for two gateway processes.
    first = Accounts(services.engine, services.ledger, max_failures=3, lockout_ms=60_000)
    second = Accounts(services.engine, services.ledger, max_failures=3, lockout_ms=60_000)
    assert first.check_sign_in("acme", "frank", "wrong one").reason == "bad_password"
    assert second.check_sign_in("acme", "frank", "wrong two").reason == "bad_password"
    third = first.check_sign_in("acme", "frank", "wrong three")
    assert third.reason == "bad_password" and third.retry_after_ms == 60_000
    # Now even the right password is refused, by the other process too, until the lockout ends.
    refused = second.check_sign_in("acme", "frank", PASSWORD)
    assert refused.reason == "throttled" and 0 < refused.retry_after_ms <= 60_000
    # A new password (set by an administrator) lifts it.
    first.set_password("acme", "frank", "a brand new passphrase", by=BY)
    assert second.check_sign_in("acme", "frank", "a brand new passphrase").reason == "ok"
    assert first.check_sign_in("acme", "nobody", PASSWORD).reason == "unknown_account"


def _refusal(resp) -> tuple[int, str]:
    found = re.search(r'class="error"[^>]*>([^<]*)<', resp.text)
    return resp.status_code, re.sub(r"in \d+ s", "in N s", found.group(1) if found else "")


def test_a_name_that_matches_no_account_is_throttled_like_an_account(served) -> None:
    """The sign-in page answers a wrong password for an existing account and any password for a
    name that matches none the same way, attempt by attempt, 429 included: its throttling does
    not tell which accounts exist. Counted in the database, so every replica agrees."""
    make_account(served, "harriet", "auditor")
    browser = ConsoleClient(served)
    try:
        known = [_refusal(browser.sign_in("harriet", password=f"wrong {i}")) for i in range(7)]
        unknown = [_refusal(browser.sign_in("harriett", password=f"wrong {i}")) for i in range(7)]
    finally:
        browser.close()
    assert known == unknown, (known, unknown)
    assert [status for status, _ in known] == [401] * 4 + [429] * 3
    misses = Accounts(served.services.engine, served.services.ledger)
    assert misses.check_sign_in("acme", "harriett", PASSWORD).reason == "throttled"
    failed = console_events(served, "console.sign_in_failed")
    assert "harriett" not in json.dumps(failed)  # a name that matched none: only its length


def test_store_refuses_unknown_roles_and_a_second_disable(served) -> None:
    accounts = Accounts(served.services.engine, served.services.ledger)
    with pytest.raises(AccountError, match="Unknown role"):
        accounts.create(tenant="acme", username="gina", password=PASSWORD, roles=["boss"], by=BY)
    accounts.create(tenant="acme", username="gina", password=PASSWORD, roles=["reviewer"], by=BY)
    accounts.disable("acme", "gina", by=BY)
    with pytest.raises(AccountError, match="already disabled") as caught:
        accounts.disable("acme", "gina", by=BY)
    assert caught.value.code == 409


def test_an_accounts_groups_are_its_review_desk_memberships(served) -> None:
    """One source of membership: groups given at creation are the desk's memberships (recorded
    as ``review.member_added``), and a membership removed later is gone from the account too."""
    from governance.review.groups import ReviewGroups

    services = served.services
    groups = ReviewGroups(services.engine, services.ledger)
    groups.add(tenant="acme", group="legal", actor="carol", by="admin@acme")  # before the account
    made = make_account(served, "carol", "reviewer", groups=["brand", "legal"])
    assert made.groups == ("brand", "legal")
    members = {(m.group, m.actor, m.added_by) for m in groups.members("acme")}
    assert members == {("legal", "carol", "admin@acme"), ("brand", "carol", "console-test")}
    added = [e for e in console_events(served, "review.member_added")]
    assert [(e["body"]["group"], e["body"]["by"]) for e in added] == [
        ("legal", "admin@acme"),
        ("brand", "console-test"),
    ]

    groups.remove(tenant="acme", group="brand", actor="carol", by="admin@acme")
    accounts = Accounts(services.engine, services.ledger)
    assert accounts.require("acme", "carol").groups == ("legal",)
    assert [a.groups for a in accounts.list_accounts(tenant="acme")] == [("legal",)]
    browser = ConsoleClient(served)
    assert browser.sign_in("carol").status_code == 303
    assert "legal" in browser.get("/console/").text
    browser.close()
