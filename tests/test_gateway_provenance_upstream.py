"""Behind a non-Google upstream the manifests say so; Custody's own earlier outputs chain once.

A real gateway forwards to a standalone Custody emulator over ``CUSTODY_UPSTREAM_BASE_URL`` (no
emulator flag, no key: the gateway cannot know from its settings that this is not Google). The
real google-genai SDK drives it; every released file is read back with c2pa's Reader.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from governance.provenance.lookup import turn_for_hash
from governance.provenance.verify import verify_image
from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator import EmulatorConfig, create_emulator_app
from tests.conftest import RunningCustody, start_custody
from tests.test_provenance_signing import active_manifest, assertion

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"
# Turns 3 and 5 ask for nothing the emulator recognises: it returns the history image unchanged,
# i.e. an earlier Custody output carrying Custody's manifest — the echo that once doubled the tree.
CHAT = [
    "make it teal",
    "now rotate it 90 degrees",
    "keep it exactly as it is",
    "mirror it",
    "that is fine, no change",
    "make it grayscale",
]


@pytest.fixture()
def emulator() -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_emulator_app(EmulatorConfig())).start()
    try:
        yield server
    finally:
        server.stop()


class PosingAsGemini:
    """The emulator behind a proxy that says its answers are Gemini's own: every ``modelVersion``
    is rewritten to a Google model version. The endpoint (http on 127.0.0.1) is not Google's."""

    MODEL_VERSION = re.compile(rb'"modelVersion":\s*"custody-emulator[^"]*"')

    def __init__(self) -> None:
        self.inner = create_emulator_app(EmulatorConfig())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def rewrite(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = self.MODEL_VERSION.sub(
                b'"modelVersion": "gemini-2.5-flash-image"', b"".join(chunks)
            )
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})

        await self.inner(scope, receive, rewrite)


def _gateway(tmp_path: Path, emulator: ThreadedServer, database_url: str = "") -> RunningCustody:
    return start_custody(
        tmp_path / "custody",
        database_url,
        upstream_base_url=emulator.base_url,
        emulator="auto",
        upstream_api_key="",
    )


@pytest.fixture()
def gateway(tmp_path: Path, emulator: ThreadedServer) -> Iterator[RunningCustody]:
    running = _gateway(tmp_path, emulator)
    try:
        yield running
    finally:
        running.stop()


def _image_of(response: types.GenerateContentResponse) -> bytes:
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    images = [p.inline_data.data for p in parts if p.inline_data and p.inline_data.data]
    assert len(images) == 1, parts
    return images[0]  # type: ignore[return-value]


def _turn_of(response: types.GenerateContentResponse) -> str:
    return (response.sdk_http_response.headers or {})["x-custody-turn"]  # type: ignore[union-attr]


def _verify_json(gateway: RunningCustody, image: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-m", "governance.cli", "verify", str(image), "--json"],
        capture_output=True,
        text=True,
        env={"CUSTODY_DATA_DIR": str(gateway.services.settings.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parent.parent,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _claims_google(manifest: dict) -> list[str]:  # type: ignore[type-arg]
    """Every statement in a manifest that names Google, Gemini as the agent, or SynthID."""
    custody = assertion(manifest, "com.custody.turn")
    found = []
    if custody["generator"] == "google-gemini" or not custody["emulator"]:
        found.append(f"generator {custody['generator']!r}, emulator {custody['emulator']}")
    synthid = custody["synthid"]
    if "provider" in synthid or "Google states" in synthid["statement"] or synthid.get("watermark"):
        found.append(f"synthid {custody['synthid']!r}")
    for action in assertion(manifest, "c2pa.actions.v2")["actions"]:
        agent = action.get("softwareAgent") or {}
        if "gemini" in str(agent.get("name", "")).lower():
            found.append(f"{action['action']} softwareAgent {agent!r}")
    return found


def test_behind_a_standalone_emulator_no_manifest_claims_google_or_synthid(
    gateway: RunningCustody, photo_bytes: dict[str, bytes]
) -> None:
    client = gateway.client()
    anchors = gateway.services.signer.trust_anchors_pem()  # type: ignore[attr-defined]
    edit = client.models.generate_content(  # type: ignore[attr-defined]
        model=MODEL,
        contents=[
            types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
            "make it teal",
        ],
    )
    generated = client.models.generate_content(  # type: ignore[attr-defined]
        model=MODEL, contents="a lighthouse at dusk"
    )
    for response in (edit, generated):
        assert response.model_version.startswith("custody-emulator")
        signed = _image_of(response)
        manifest = active_manifest(signed, "image/png", anchors)
        assert _claims_google(manifest) == []
        custody = assertion(manifest, "com.custody.turn")
        assert custody["upstream"] == {"kind": "custody-emulator", "host": "127.0.0.1"}
        assert "no SynthID" in custody["synthid"]["statement"]
        assert custody["model_version"] == response.model_version
        actions = assertion(manifest, "c2pa.actions.v2")["actions"]
        agents = [a["softwareAgent"] for a in actions if "softwareAgent" in a]
        assert {"name": "custody-emulator", "version": response.model_version} in agents


def test_an_upstream_that_is_not_google_is_not_named_google_whatever_its_model_version(
    tmp_path: Path, photo_bytes: dict[str, bytes]
) -> None:
    posing = ThreadedServer(PosingAsGemini()).start()
    gateway = _gateway(tmp_path, posing)
    try:
        anchors = gateway.services.signer.trust_anchors_pem()  # type: ignore[attr-defined]
        response = gateway.client().models.generate_content(  # type: ignore[attr-defined]
            model=MODEL,
            contents=[
                types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
                "make it teal",
            ],
        )
        assert response.model_version == "gemini-2.5-flash-image", "the proxy says Gemini"
        signed = _image_of(response)
        manifest = active_manifest(signed, "image/png", anchors)
        custody = assertion(manifest, "com.custody.turn")
        assert custody["upstream"] == {"kind": "unknown", "host": "127.0.0.1"}
        assert custody["emulator"] is False
        assert custody["generator"] == "unknown upstream at 127.0.0.1 (not Google's endpoint)"
        assert custody["synthid"] == {
            "statement": "not stated: the upstream 127.0.0.1 is not Google's endpoint;"
            " Custody makes no watermark claim",
            "verified": False,
        }
        agents = [
            a["softwareAgent"]
            for a in assertion(manifest, "c2pa.actions.v2")["actions"]
            if "softwareAgent" in a
        ]
        assert {"name": "model served by 127.0.0.1", "version": "gemini-2.5-flash-image"} in agents
        assert not any("gemini" in str(a.get("name", "")).lower() for a in agents), agents
        image = tmp_path / "proxied.png"
        image.write_bytes(signed)
        report = _verify_json(gateway, image)
        assert report["c2pa"]["state"] == "Trusted"
        text = json.dumps(report)
        assert "google-gemini" not in text and "Google states" not in text
    finally:
        gateway.stop()
        posing.stop()


def test_six_turn_chat_lists_each_ingredient_once(
    gateway: RunningCustody, photo_bytes: dict[str, bytes], tmp_path: Path
) -> None:
    chat = gateway.client().chats.create(model=MODEL)  # type: ignore[attr-defined]
    photo = types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png")
    turns, last = [], b""
    for n, prompt in enumerate(CHAT):
        response = chat.send_message([photo, prompt] if n == 0 else prompt)
        turns.append(_turn_of(response))
        last = _image_of(response)
    path = tmp_path / "turn6.png"
    path.write_bytes(last)
    report = _verify_json(gateway, path)
    assert report["c2pa"]["state"] == "Trusted"
    links = report["c2pa"]["ingredients"]
    manifests = [link["manifest"] for link in links if link["manifest"]]
    assert len(manifests) == len(set(manifests)), Counter(manifests)
    plain = [(link["title"], link["depth"]) for link in links if not link["manifest"]]
    assert len(plain) == len(set(plain)), plain
    # Turns 1..5 each appear once, as an earlier Custody output; the original photo once.
    earlier = Counter(link["custody_turn"] for link in links if link["custody_turn"])
    assert earlier == Counter(turns[:5]), (earlier, turns)
    assert [link["title"] for link in links if not link["manifest"]] == [
        "parent: input 1 (image/png)"
    ]
    for link in links:
        if link["custody_turn"]:
            assert "earlier Custody output" in link["title"], link
            assert "provider" not in link["title"], link
    # The echoed turns were recorded as such in the ledger, not as the provider's credentials.
    for n in (2, 4):
        (signed,) = [e for e in gateway.ledger_events(turns[n]) if e["type"] == "output.signed"]
        assert signed["body"]["upstream_credentials"] == "custody", signed
        assert signed["body"]["upstream_had_credentials"] is False
    # And the human-readable report prints one line per ingredient.
    out = subprocess.run(
        [sys.executable, "-m", "governance.cli", "verify", str(path), "--no-ledger"],
        capture_output=True,
        text=True,
        env={"CUSTODY_DATA_DIR": str(gateway.services.settings.data_dir), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parent.parent,
        timeout=180,
    )
    lines = [line for line in out.stdout.splitlines() if "ingredient [" in line]
    assert len(lines) == len(links) == len(set(lines)), out.stdout


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_an_echoed_earlier_custody_output_is_one_ingredient_not_the_providers(
    tmp_path: Path,
    emulator: ThreadedServer,
    photo_bytes: dict[str, bytes],
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    url = "" if database == "sqlite" else request.getfixturevalue("pg_url")
    gateway = _gateway(tmp_path, emulator, url)
    try:
        client = gateway.client()
        anchors = gateway.services.signer.trust_anchors_pem()  # type: ignore[attr-defined]
        first = client.models.generate_content(  # type: ignore[attr-defined]
            model=MODEL,
            contents=[
                types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
                "make it teal",
            ],
        )
        earlier, earlier_turn = _image_of(first), _turn_of(first)
        # The earlier output comes back as the input; the emulator returns it unchanged.
        echo = client.models.generate_content(  # type: ignore[attr-defined]
            model=MODEL,
            contents=[types.Part.from_bytes(data=earlier, mime_type="image/png"), "as it is"],
        )
        result = verify_image(_image_of(echo), "image/png", anchors)
        assert result.state == "Trusted", result.reasons
        direct = [link for link in result.ingredients if link.depth == 1]
        assert [(link.relationship, link.title) for link in direct] == [
            ("parentOf", f"earlier Custody output (turn {earlier_turn})")
        ]
        assert direct[0].custody_turn == earlier_turn and direct[0].state == "Trusted"
        assert result.custody is not None
        assert result.custody["upstream_credentials"] is False
        assert result.custody["upstream_credentials_kind"] == "custody"
        (signed,) = [
            e for e in gateway.ledger_events(_turn_of(echo)) if e["type"] == "output.signed"
        ]
        assert signed["body"]["upstream_credentials"] == "custody"
        assert signed["body"]["upstream_had_credentials"] is False
        # By its hash, the earlier file belongs to the turn that released it, not to the echo.
        read_engine = gateway.services.read_engine  # type: ignore[attr-defined]
        assert turn_for_hash(read_engine, hashlib.sha256(earlier).hexdigest()) == earlier_turn
        # An edit of the earlier output (not an echo): the input is the parent, chained once.
        edited = client.models.generate_content(  # type: ignore[attr-defined]
            model=MODEL,
            contents=[types.Part.from_bytes(data=earlier, mime_type="image/png"), "blur it"],
        )
        chain = verify_image(_image_of(edited), "image/png", anchors).ingredients
        assert [(link.depth, link.title) for link in chain] == [
            (1, f"parent: earlier Custody output (turn {earlier_turn})"),
            (2, "parent: input 1 (image/png)"),
        ]
    finally:
        gateway.stop()
