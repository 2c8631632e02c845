"""Dependencies shared by every route: the service container and the authenticated caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Depends, Request

from governance.api.errors import GeminiError
from governance.auth.principal import Principal

if TYPE_CHECKING:
    from governance.services import Services


def get_services(request: Request) -> Services:
    """The process-wide service container built by ``governance.app.create_app``."""
    return request.app.state.services  # type: ignore[no-any-return]


def presented_key(request: Request) -> str:
    """The API key as Gemini clients send it: ``x-goog-api-key``, ``?key=`` or a Bearer token."""
    key = request.headers.get("x-goog-api-key")
    if key:
        return key.strip()
    key = request.query_params.get("key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return ""


_REFUSED = {
    "malformed": "API key not valid: Custody keys look like ck_<id>_<secret>. Ask your Custody"
    " administrator for a key (`custody keys create`).",
    "unknown": "API key not valid: Custody does not know this key. Ask your Custody"
    " administrator for a key (`custody keys create`).",
    "revoked": "API key revoked: this key was revoked or rotated and is refused. Ask your Custody"
    " administrator for its replacement (`custody keys list` shows what it was rotated to).",
    "expired": "API key expired: this key has passed its expiry. Ask your Custody administrator"
    " for a new key (`custody keys rotate` or `custody keys create`).",
}


def authenticate(request: Request) -> Principal:
    """The caller's principal; a Gemini-shaped 401 when the key is missing, 403 when unknown."""
    key = presented_key(request)
    if not key:
        raise GeminiError(
            401,
            "Custody needs an API key: send it in the x-goog-api-key header (the google-genai SDK"
            " does this when you pass api_key), ?key= or Authorization: Bearer.",
            reason="API_KEY_MISSING",
        )
    principal = get_services(request).keys.identify(key)
    if not isinstance(principal, Principal):
        raise GeminiError(403, _REFUSED[principal], reason="API_KEY_INVALID")
    request.state.principal = principal
    return principal


def require_role(role: str) -> Callable[[Principal], Principal]:
    """A dependency that admits callers holding ``role`` (admins hold every role)."""

    def _check(principal: Principal = Depends(authenticate)) -> Principal:  # noqa: B008
        if not principal.has_role(role):
            raise GeminiError(
                403,
                f"This route needs the '{role}' role; the key of {principal.actor!r} has"
                f" {', '.join(sorted(principal.roles))}.",
                reason="ROLE_REQUIRED",
            )
        return principal

    return _check
