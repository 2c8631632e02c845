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
