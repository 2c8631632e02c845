"""The caller's ``x-custody-*`` headers and the model segment of a route, checked before a turn.

Contract: the documented limits are the constants below; a value over them is refused with a
400 that names the limit (and, on a model route, is recorded as ``request.refused``):

- ``x-custody-session``: at most ``MAX_SESSION_CHARS`` characters from ``[A-Za-z0-9._:@/+=~-]``
  (a UUID, a ULID, an app's own id). It is stamped on every ledger event of the turn, so an
  unbounded value would overflow the 64 KiB leaf.
- ``x-custody-labels``: ``key=value`` pairs separated by commas, at most ``MAX_LABELS_CHARS``
  characters and ``MAX_LABELS`` pairs; keys ``[A-Za-z0-9_.-]``, at most 64 characters; values
  printable ASCII without a comma, at most 256 characters. Labels feed the policy: a pair the
  policy cannot read must be refused, not silently dropped.
- the model segment: Gemini's model-id alphabet (``[a-z0-9][a-z0-9._-]*``, at most 128
  characters, an optional ``models/`` prefix). Anything else would reach the upstream URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from governance.api.errors import GeminiError

SESSION_HEADER = "x-custody-session"
LABELS_HEADER = "x-custody-labels"
MAX_SESSION_CHARS = 128
MAX_LABELS_CHARS = 2048
MAX_LABELS = 32
MAX_MODEL_CHARS = 128

_SESSION = re.compile(r"[A-Za-z0-9._:@/+=~-]+")
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL_VALUE = re.compile(r"[\x20-\x2b\x2d-\x7e]{0,256}")  # printable ASCII except ','
_MODEL = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _bad(message: str, reason: str) -> GeminiError:
    return GeminiError(400, message, status="INVALID_ARGUMENT", reason=reason)


def check_custody_headers(headers: Mapping[str, str]) -> GeminiError | None:
    """The refusal for a malformed ``x-custody-session`` or ``x-custody-labels``, or None."""
    session = headers.get(SESSION_HEADER)
    if session is not None:
        if len(session) > MAX_SESSION_CHARS:
            return _bad(
                f"The {SESSION_HEADER} header is {len(session):,} characters long; Custody"
                f" accepts at most {MAX_SESSION_CHARS}. Send a short id (a UUID, for example).",
                "SESSION_HEADER_INVALID",
            )
        if not _SESSION.fullmatch(session):
            return _bad(
                f"The {SESSION_HEADER} header may contain only letters, digits and . _ : @ / + ="
                " ~ - (no spaces or control characters). Send a short id (a UUID, for example).",
                "SESSION_HEADER_INVALID",
            )
    labels = headers.get(LABELS_HEADER)
    if labels is not None:
        problem = _labels_problem(labels)
        if problem:
            return _bad(
                f"The {LABELS_HEADER} header is malformed: {problem}. Send comma-separated"
                f" key=value pairs, e.g. '{LABELS_HEADER}: asset=production, consent=obtained'.",
                "LABELS_HEADER_INVALID",
            )
    return None


def _labels_problem(labels: str) -> str | None:
    if len(labels) > MAX_LABELS_CHARS:
        return f"{len(labels):,} characters, at most {MAX_LABELS_CHARS} are accepted"
    pairs = [p for p in labels.split(",") if p.strip()]
    if len(pairs) > MAX_LABELS:
        return f"{len(pairs)} labels, at most {MAX_LABELS} are accepted"
    for i, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep:
            return f"label {i} has no '='"
        if not _LABEL_KEY.fullmatch(key.strip()):
            return (
                f"label {i}'s key must be 1-64 letters, digits, '_', '.' or '-'"
                " (no control characters)"
            )
        if not _LABEL_VALUE.fullmatch(value.strip()):
            return f"label {i}'s value must be at most 256 printable ASCII characters, no commas"
    return None


def check_model(model: str) -> GeminiError | None:
    """The refusal for a model segment outside Gemini's model-id alphabet, or None."""
    name = model.removeprefix("models/")
    if len(name) <= MAX_MODEL_CHARS and _MODEL.fullmatch(name):
        return None
    shown = name[:64].encode("unicode_escape").decode("ascii")
    return _bad(
        f"'{shown}' is not a Gemini model name: use lowercase letters, digits, '.', '_' and '-'"
        f" (at most {MAX_MODEL_CHARS} characters), e.g. gemini-2.5-flash-image.",
        "MODEL_NAME_INVALID",
    )
