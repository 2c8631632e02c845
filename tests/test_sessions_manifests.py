"""Manifests follow the lineage: each output's parentOf ingredient is its actual parent version
(the earlier Content Credentials kept), checked with c2pa-python's Reader, and ``custody verify``
prints the chain back to the upload."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from google.genai import types

from tests.keys_helpers import cli_ok
from tests.session_helpers import (
    EDIT_MODEL,
    images,
    index_graph,
    manifest_store,
    session_of_turn,
    turn_id,
    walk_chain,
)


def test_chat_outputs_walk_back_to_the_upload_and_verify_prints_it(
    custody: Any, photo_bytes: dict[str, bytes], tmp_path: Path
) -> None:
    chat = custody.client().chats.create(model=EDIT_MODEL)
    photo = types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png")
    responses = [chat.send_message([photo, "make it teal"])]
    responses.append(chat.send_message("blur it"))
    responses.append(chat.send_message("darken it"))
    # Back to the first output: a branch.
    first_image = images(responses[0])[0]
    responses.append(
        chat.send_message([types.Part.from_bytes(data=first_image, mime_type="image/png"), "flip"])
    )
    turns = [turn_id(r) for r in responses]
    session = session_of_turn(custody, turns[0])
    graph = index_graph(custody, session)
    parent_of = {v["version"]: v["parent"] for v in graph["versions"]}
    kind_of = {v["version"]: v["kind"] for v in graph["versions"]}
    for response in responses:
        chain = walk_chain(manifest_store(images(response)[0]))
        versions = [c["version"] for c in chain[:-1]]
        # Each manifest's parent is the version the graph names, down to the upload.
        for child, parent in itertools.pairwise(versions):
            assert parent_of[child] == parent
        assert kind_of[parent_of[versions[-1]]] == "upload"
        assert "upload_ingredient" in chain[-1]
        assert {c["session"] for c in chain[:-1]} == {session}
    assert len(walk_chain(manifest_store(images(responses[3])[0]))) == 3, "branch: two edits"

    image = tmp_path / "out.png"
    image.write_bytes(images(responses[2])[0])
    out = cli_ok(custody, "verify", str(image))
    assert f"lineage (session {session})" in out
    lines = [line.strip() for line in out.splitlines()]
    start = next(n for n, line in enumerate(lines) if line.startswith("lineage"))
    steps = lines[start + 1 : start + 5]
    assert steps[0].startswith(graph["versions"][0]["version"][:4])
    assert steps[-1].startswith("origin:") and "no Content Credentials" in steps[-1]
    assert all(kind_of[s.split(":")[0]] == "edit" for s in steps[:3])
