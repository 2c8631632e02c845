"""Helpers of the session tests: a gateway on a given database, turn ids, graphs both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.genai import types

from governance.sessions import graph_from_rows, rebuild_from_ledger
from tests.conftest import RunningCustody, start_custody

EDIT_MODEL = "gemini-2.5-flash-image"


def gateway(tmp_path: Path, db_url: str, **overrides: object) -> RunningCustody:
    return start_custody(tmp_path / "custody", db_url, **overrides)


def turn_id(response: types.GenerateContentResponse) -> str:
    headers = response.sdk_http_response.headers if response.sdk_http_response else {}
    turn = (headers or {}).get("x-custody-turn")
    assert turn, "Custody names the turn in the x-custody-turn header"
    return turn


def images(response: types.GenerateContentResponse) -> list[bytes]:
    parts = response.candidates[0].content.parts if response.candidates else []
    return [p.inline_data.data for p in parts or [] if p.inline_data and p.inline_data.data]


def session_of_turn(custody: RunningCustody, turn: str) -> str:
    """The session a turn joined, as its events name it."""
    sessions = {e["session"] for e in custody.ledger_events(turn)}
    assert len(sessions) == 1, sessions
    (session,) = sessions
    assert isinstance(session, str)
    return session


def index_graph(custody: RunningCustody, session_id: str) -> dict[str, Any]:
    store = custody.services.sessions  # type: ignore[attr-defined]
    row = store.session(session_id)
    assert row is not None, f"no session {session_id} in the index"
    return graph_from_rows(row, store.graph_rows(session_id))


def ledger_graph(custody: RunningCustody, session_id: str) -> dict[str, Any]:
    return rebuild_from_ledger(custody.ledger_events(), session_id)


def version_of_turn(graph: dict[str, Any], turn: str) -> dict[str, Any]:
    (version,) = [v for v in graph["versions"] if v["turn"] == turn and v["kind"] != "upload"]
    return version


def api(custody: RunningCustody, role: str = "editor") -> Any:
    """An httpx client of the native API, authenticated as ``role``."""
    import httpx

    return httpx.Client(
        base_url=custody.base_url, headers={"x-goog-api-key": custody.keys[role]}, timeout=120
    )


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def png(width: int, height: int, colour: tuple[int, int, int] = (255, 255, 255)) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def mask_png(width: int, height: int) -> bytes:
    """A mask: white on the left half (edit there), black elsewhere."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).rectangle((0, 0, width // 2, height), fill=255)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def manifest_store(data: bytes, mime_type: str = "image/png") -> dict[str, Any]:
    """The manifest store of ``data`` as c2pa-python's Reader reports it."""
    import io
    import json

    import c2pa

    reader = c2pa.Reader(mime_type, io.BytesIO(data))
    try:
        return json.loads(reader.json())  # type: ignore[no-any-return]
    finally:
        reader.close()


def custody_assertion(manifest: dict[str, Any]) -> dict[str, Any]:
    (found,) = [a["data"] for a in manifest["assertions"] if a["label"] == "com.custody.turn"]
    return found  # type: ignore[no-any-return]


def walk_chain(store: dict[str, Any]) -> list[dict[str, Any]]:
    """From the active manifest back along ``parentOf`` ingredients: each Custody manifest's
    session facts, and last the ingredient that has no manifest (the upload)."""
    chain: list[dict[str, Any]] = []
    label = store["active_manifest"]
    manifests = store["manifests"]
    while label is not None:
        manifest = manifests[label]
        facts = custody_assertion(manifest)["session"]
        parents = [i for i in manifest.get("ingredients", []) if i["relationship"] == "parentOf"]
        assert len(parents) == 1, parents
        chain.append(facts)
        label = parents[0].get("active_manifest")
        if label is None:
            chain.append({"upload_ingredient": parents[0]["title"]})
    return chain
