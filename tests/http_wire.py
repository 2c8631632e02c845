"""One HTTP/1.1 message read off a raw socket: its start line, lower-cased headers and the body
its Content-Length announces (for tests that speak the wire themselves)."""

from __future__ import annotations

import socket


def read_message(sock: socket.socket) -> tuple[str, dict[str, str], bytes] | None:
    """The next message on ``sock``; None when it closes before a whole head arrived."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0], headers, body[:length]
