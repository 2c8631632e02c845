"""Helpers for the console tests: accounts made as the CLI makes them, a browser-like client."""

from __future__ import annotations

import re
from typing import Any

import httpx

from governance.accounts.store import Account, Accounts
from governance.auth.lifecycle import Operator
from storage.ledger.leaf import decode_leaf
from tests.conftest import RunningCustody

PASSWORD = "a long enough passphrase"
_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def make_account(
    running: RunningCustody,
    username: str,
    *roles: str,
    tenant: str = "acme",
    password: str = PASSWORD,
    groups: list[str] | None = None,
) -> Account:
    services = running.services
    accounts = Accounts(services.engine, services.ledger)  # type: ignore[attr-defined]
    return accounts.create(
        tenant=tenant,
        username=username,
        password=password,
        roles=list(roles),
        groups=groups,
        by=Operator(actor="console-test", via="cli"),
    )


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


class ConsoleClient:
    """A cookie-keeping client that does what a browser without JavaScript does."""

    def __init__(self, running: RunningCustody) -> None:
        self.http = httpx.Client(base_url=running.base_url, timeout=60, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def sign_in(
        self, username: str, *, tenant: str = "acme", password: str = PASSWORD, next_: str = ""
    ) -> httpx.Response:
        page = self.http.get("/console/sign-in", params={"next": next_} if next_ else None)
        assert page.status_code == 200
        return self.http.post(
            "/console/sign-in",
            data={
                "csrf": csrf_of(page),
                "tenant": tenant,
                "username": username,
                "password": password,
                "next": next_,
            },
        )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post_form(self, path: str, data: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        """POST a form with the session's CSRF token (the same on every page of a session)."""
        token = csrf_of(self.http.get("/console/"))
        return self.http.post(path, data={"csrf": token, **(data or {})}, **kw)


def console_events(running: RunningCustody, *prefixes: str) -> list[dict[str, Any]]:
    ledger = running.services.ledger  # type: ignore[attr-defined]
    docs = [decode_leaf(e.leaf) for e in ledger.entries(0, ledger.size())]
    return [d for d in docs if str(d["type"]).startswith(prefixes)]


def signed_image(running: RunningCustody, photo: bytes, *, key_role: str = "editor") -> bytes:
    """An image Custody signed: one real edit turn through the Gemini route."""
    import base64

    edit = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "make the bicycle teal"},
                    {
                        "inlineData": {
                            "mimeType": "image/png",
                            "data": base64.b64encode(photo).decode(),
                        }
                    },
                ],
            }
        ]
    }
    resp = httpx.post(
        running.base_url + "/v1beta/models/gemini-2.5-flash-image:generateContent",
        json=edit,
        headers={"x-goog-api-key": running.keys[key_role]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    part = next(p for p in resp.json()["candidates"][0]["content"]["parts"] if "inlineData" in p)
    running.services.ledger.issue_checkpoint()  # type: ignore[attr-defined]
    return base64.b64decode(part["inlineData"]["data"])
