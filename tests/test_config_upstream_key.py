"""The upstream key comes only from Custody's own settings; a Custody key never reaches upstream.

The SDK reads ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY`` for an app's *Custody* key. The gateway
used to read them too, so a shell set up for an app sent the Custody key to Google. These tests
put a recording upstream (the emulator behind an ASGI wrapper that keeps every header and query)
on a real port and drive a real gateway with the real SDK.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import start_custody
from google.genai import types

from governance.settings import ConfigError, Settings
from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator import create_emulator_app

CUSTODY_LOOKALIKE = "ck_shellkey_0123456789abcdef"


class RecordingUpstream:
    """The emulator, recording every request's headers and query string before serving it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.inner = create_emulator_app()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append(
                {
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "headers": [
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                    ],
                }
            )
        await self.inner(scope, receive, send)

    def seen_text(self) -> str:
        return "\n".join(
            r["path"] + "?" + r["query"] + "\n" + "\n".join(f"{k}: {v}" for k, v in r["headers"])
            for r in self.requests
        )


@pytest.fixture()
def recorder() -> Any:
    rec = RecordingUpstream()
    server = ThreadedServer(rec).start()
    try:
        yield rec, server.base_url
    finally:
        server.stop()


def test_sdk_key_variables_never_become_the_upstream_key(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", CUSTODY_LOOKALIKE)
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-not-for-custody")
    monkeypatch.delenv("CUSTODY_UPSTREAM_API_KEY", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_upstream_key == ""
    assert settings.uses_emulator, "an SDK key in the shell must not leave emulator mode"
    assert settings.ignored_sdk_key_variables == ["GEMINI_API_KEY", "GOOGLE_API_KEY"]


def test_upstream_key_from_a_secret_file(monkeypatch, tmp_path) -> None:
    secret = tmp_path / "gemini-key"
    secret.write_text("AIza-from-a-mounted-secret\n")
    monkeypatch.setenv("CUSTODY_UPSTREAM_API_KEY_FILE", str(secret))
    key = Settings(data_dir=tmp_path).upstream_key()
    assert key.value == "AIza-from-a-mounted-secret"
    assert key.source == f"CUSTODY_UPSTREAM_API_KEY_FILE ({secret})"
    monkeypatch.setenv("CUSTODY_UPSTREAM_API_KEY", "AIza-inline")
    with pytest.raises(ConfigError, match="keep one of them"):
        Settings(data_dir=tmp_path).upstream_key()


@pytest.mark.parametrize("via", ["CUSTODY_UPSTREAM_API_KEY", "CUSTODY_UPSTREAM_API_KEY_FILE"])
def test_serve_refuses_a_custody_key_as_upstream_key(tmp_path, via) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env["CUSTODY_DATA_DIR"] = str(tmp_path / "data")
    if via == "CUSTODY_UPSTREAM_API_KEY":
        env[via] = CUSTODY_LOOKALIKE
    else:
        (tmp_path / "key").write_text(CUSTODY_LOOKALIKE)
        env[via] = str(tmp_path / "key")
    proc = subprocess.run(
        [sys.executable, "-m", "governance.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a Custody key" in lines[0] and via in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "serving on" not in proc.stdout
    assert not (tmp_path / "data").exists(), "a refused start must create nothing"


@pytest.mark.parametrize("upstream_key", ["", "AIza-the-real-google-key"])
def test_no_custody_key_ever_reaches_the_upstream(
    monkeypatch, tmp_path, recorder, photo_bytes, upstream_key
) -> None:
    rec, base_url = recorder
    monkeypatch.setenv("GEMINI_API_KEY", CUSTODY_LOOKALIKE)  # the app's shell, as the README says
    monkeypatch.setenv("GOOGLE_API_KEY", CUSTODY_LOOKALIKE)
    running = start_custody(
        tmp_path / "custody",
        upstream_base_url=base_url,
        upstream_api_key=upstream_key,
    )
    try:
        photo = photo_bytes["sample1.png"]
        client = running.client("editor")
        response = client.models.generate_content(
            model="gemini-2.5-flash-image",
            contents=[
                types.Part.from_bytes(data=photo, mime_type="image/png"),
                "make the sky a little warmer",
            ],
        )
        assert response.candidates, "the turn must go through the recording upstream"
        chat = client.chats.create(model="gemini-2.5-flash-image")
        chat.send_message("draw a lighthouse")
        for chunk in client.models.generate_content_stream(
            model="gemini-2.5-flash-image", contents="a teal sofa"
        ):
            assert chunk is not None
    finally:
        running.stop()
    assert len(rec.requests) >= 3
    seen = rec.seen_text()
    for key in [*running.keys.values(), CUSTODY_LOOKALIKE]:
        assert key not in seen, "a Custody key was sent upstream"
    assert "ck_" not in seen
    sent_keys = {v for r in rec.requests for k, v in r["headers"] if k == "x-goog-api-key"}
    assert sent_keys == ({upstream_key} if upstream_key else set())
