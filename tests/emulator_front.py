"""The emulator as a separate upstream with a front that may answer some requests itself.

A test subclasses ``EmulatorFront`` and overrides ``answer``: given a POST's body, it returns
``(status, JSON document)`` to send instead of the emulator's answer, or None to let the
emulator answer (the body is replayed to it unchanged).
"""

from __future__ import annotations

import json
from typing import Any

from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator import EmulatorConfig, create_emulator_app


class EmulatorFront:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.emulator = create_emulator_app(config or EmulatorConfig())

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await self._app(scope, receive, send)  # a plain function: uvicorn's ASGI 3 form

        self.server = ThreadedServer(app).start()

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """What to answer this POST with instead of the emulator; None: the emulator answers."""
        return None

    def stop(self) -> None:
        self.server.stop()

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.emulator(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        own = self.answer(body)
        if own is not None:
            status, document = own
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": json.dumps(document).encode()})
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # type: ignore[no-any-return]
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.emulator(scope, replay, send)
