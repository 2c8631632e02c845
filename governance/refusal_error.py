"""One error shape for operations below the API that an API answers with a status code.

Key lifecycle steps and erasures refuse for reasons a caller must see (unknown key, another
tenant's content); the routers turn ``code``, ``message`` and ``reason`` into Gemini's envelope,
the CLIs print ``message``. Data only: it imports nothing from Custody.
"""

from __future__ import annotations


class Refusal(Exception):
    """A step that cannot be done; ``code`` is the HTTP status an API answers with."""

    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
