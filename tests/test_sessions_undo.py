"""A model that answers "undo" with an earlier image of the chat (as Gemini, and the emulator,
may do) makes a rollback: Custody recognises the returned bytes as that earlier version and the
new version branches from it, in the graph and in its manifest."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from tests.conftest import RunningCustody, start_custody
from tests.emulator_front import EmulatorFront
from tests.session_helpers import (
    EDIT_MODEL,
    images,
    index_graph,
    ledger_graph,
    manifest_store,
    session_of_turn,
    turn_id,
    version_of_turn,
    walk_chain,
)


class UndoingUpstream(EmulatorFront):
    """The emulator, except that "undo" is answered with the first model image of the history."""

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]] | None:
        document = json.loads(body)
        last = " ".join(p.get("text", "") for p in document["contents"][-1]["parts"])
        if "undo" not in last:
            return None
        earlier = next(
            p["inlineData"]
            for c in document["contents"]
            if c.get("role") == "model"
            for p in c["parts"]
            if "inlineData" in p
        )
        candidate = {
            "content": {"role": "model", "parts": [{"inlineData": earlier}]},
            "finishReason": "STOP",
            "index": 0,
        }
        return 200, {"candidates": [candidate], "modelVersion": "custody-emulator-undo"}


@pytest.fixture()
def upstream() -> Iterator[UndoingUpstream]:
    up = UndoingUpstream()
    try:
        yield up
    finally:
        up.stop()


def test_an_undo_answered_with_an_earlier_image_is_a_rollback_to_it(
    tmp_path: Path, upstream: UndoingUpstream, photo_bytes: dict[str, bytes]
) -> None:
    custody: RunningCustody = start_custody(
        tmp_path / "custody",
        upstream_base_url=upstream.server.base_url,
        emulator="on",
        upstream_api_key="",
    )
    try:
        chat = custody.client().chats.create(model=EDIT_MODEL)  # type: ignore[attr-defined]
        photo = types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png")
        first = chat.send_message([photo, "make it teal"])
        second = chat.send_message("blur it")
        third = chat.send_message("darken it")
        undone = chat.send_message("undo the last two changes")
        turns = [turn_id(r) for r in (first, second, third, undone)]
        session = session_of_turn(custody, turns[0])
        assert {session_of_turn(custody, t) for t in turns} == {session}
        graph = index_graph(custody, session)
        v1 = version_of_turn(graph, turns[0])
        back = version_of_turn(graph, turns[3])
        assert back["kind"] == "rollback" and back["parent"] == v1["version"]
        chain = walk_chain(manifest_store(images(undone)[0]))
        assert chain[0]["version"] == back["version"]
        assert chain[0]["kind"] == "rollback" and chain[0]["parent_version"] == v1["version"]
        assert chain[1]["version"] == v1["version"], "its parentOf is turn 1's manifest"
        assert base64.b64encode(images(undone)[0]) != base64.b64encode(images(first)[0])
        assert ledger_graph(custody, session) == graph
    finally:
        custody.stop()
