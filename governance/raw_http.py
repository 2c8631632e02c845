"""Complete HTTP/1.1 error responses for connections no ASGI app has seen.

The connection guard answers before a request is parsed (``governance.connection_guard``), and
the health port's process has no app at all (``governance.health_listener``): both write these
bytes themselves, in Gemini's error envelope. Data and pure functions only: stdlib imports.
"""

from __future__ import annotations

import json


def raw_error_response(
    code: int, phrase: str, status: str, reason: str, message: str, retry: int
) -> bytes:
    """A complete HTTP/1.1 response in Gemini's error envelope, for a request not yet parsed."""
    body = json.dumps(
        {
            "error": {
                "code": code,
                "message": message,
                "status": status,
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": reason,
                        "domain": "custody",
                    }
                ],
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {code} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
        + (f"retry-after: {retry}\r\n" if retry else "")
        + "\r\n"
    )
    return head.encode() + body
