"""API keys never reach a log line: ``key=<anything>`` is rewritten to ``key=[redacted]``.

Gemini clients may send their key as ``?key=...``, and uvicorn's access log prints the full path
with its query string; error logs and Custody's own may quote a URL too. A ``logging.Filter`` on
each logger that writes such lines rewrites the record before any handler formats it: the message
and every string argument (uvicorn's access formatter reads its arguments positionally, so they
are rewritten in place, never folded into the message). Any parameter whose name ends in ``key``
(``key``, ``api_key``, ``x-goog-api-key``) is redacted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

KEY_PARAM = re.compile(r"(key=)[^&\s\"'#]+", re.IGNORECASE)
REDACTED = r"\1[redacted]"
# Loggers that may print a request URL (a filter applies only to records logged on its own logger,
# not to those propagated from children, so each is named): uvicorn's, Custody's, the HTTP client's.
LOGGERS = (
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "custody",
    "custody.policy",
    "custody.emulator",
    "httpx",
)


def redact(text: str) -> str:
    """``text`` with the value of every ``...key=`` parameter replaced by ``[redacted]``."""
    return KEY_PARAM.sub(REDACTED, text) if "key=" in text.lower() else text


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class KeyRedactingFilter(logging.Filter):
    """Rewrites ``key=...`` in a record's message and arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


def install_key_redaction(names: tuple[str, ...] = LOGGERS) -> None:
    """Put one ``KeyRedactingFilter`` on each named logger (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, KeyRedactingFilter) for f in logger.filters):
            logger.addFilter(KeyRedactingFilter())
