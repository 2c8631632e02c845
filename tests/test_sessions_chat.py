"""Sessions from the Gemini routes with no client change: a google-genai chat is recognised by
the hashes of the images it resends, going back to an earlier image is a branch, two chats of
one user never mix, two users never share a session, and the ledger alone rebuilds the graph."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from google.genai import types

from tests.session_helpers import (
    EDIT_MODEL,
    gateway,
    images,
    index_graph,
    ledger_graph,
    manifest_store,
    session_of_turn,
    turn_id,
    version_of_turn,
    walk_chain,
)

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


def _photo(photo_bytes: dict[str, bytes]) -> types.Part:
    return types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png")


def test_five_turn_chat_with_a_branch_at_turn_four(
    tmp_path: Path, db_url: str, photo_bytes: dict[str, bytes]
) -> None:
    custody = gateway(tmp_path, db_url)
    try:
        chat = custody.client().chats.create(model=EDIT_MODEL)  # type: ignore[attr-defined]
        first = chat.send_message([_photo(photo_bytes), "make the sofa teal"])
        second = chat.send_message("blur the background")
        third = chat.send_message("darken it")
        # Turn 4 goes back to the image of turn 2 (sent again, as a user would pick it).
        fourth = chat.send_message(
            [types.Part.from_bytes(data=images(second)[0], mime_type="image/png"), "crop square"]
        )
        fifth = chat.send_message("invert the colours")
        turns = [turn_id(r) for r in (first, second, third, fourth, fifth)]
        sessions = {session_of_turn(custody, t) for t in turns}
        assert len(sessions) == 1, "every turn of the chat joined one session"
        (session,) = sessions
        graph = index_graph(custody, session)
        assert graph["origin"] == "chat" and graph["actor"] == "editor@acme"
        (upload,) = [v for v in graph["versions"] if v["kind"] == "upload"]
        assert upload["turn"] == turns[0]
        v = [version_of_turn(graph, t) for t in turns]
        assert v[0]["parent"] == upload["version"]
        assert v[1]["parent"] == v[0]["version"]
        assert v[2]["parent"] == v[1]["version"]
        assert v[3]["parent"] == v[1]["version"], "turn 4 branches from turn 2's version"
        assert v[4]["parent"] == v[3]["version"]
        assert {x["image"] for x in v} == {upload["image"]}
        assert len(graph["images"]) == 1 and graph["images"][0]["source"] == "gemini-request"
        for n, t in enumerate(turns):
            (turn,) = [x for x in graph["turns"] if x["turn"] == t]
            assert turn["status"] == "released" and turn["outputs"] == [v[n]["version"]]
        assert ledger_graph(custody, session) == graph, "the ledger alone rebuilds the graph"
        # Every output's manifest chain walks back to the upload (c2pa-python's Reader).
        parent_of = {x["version"]: x["parent"] for x in graph["versions"]}
        for response, version in zip((first, second, third, fourth, fifth), v, strict=True):
            chain = walk_chain(manifest_store(images(response)[0]))
            steps = [c["version"] for c in chain[:-1]]
            assert steps[0] == version["version"]
            assert all(parent_of[a] == b for a, b in itertools.pairwise(steps))
            assert parent_of[steps[-1]] == upload["version"] and "upload_ingredient" in chain[-1]
    finally:
        custody.stop()


def test_two_concurrent_chats_of_one_user_never_mix(
    tmp_path: Path, db_url: str, photo_bytes: dict[str, bytes]
) -> None:
    custody = gateway(tmp_path, db_url)
    try:
        client = custody.client()
        found: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        def run_chat(name: str, edits: list[str]) -> None:
            try:
                chat = client.chats.create(model=EDIT_MODEL)  # type: ignore[attr-defined]
                found[name] = [turn_id(chat.send_message([_photo(photo_bytes), edits[0]]))]
                for edit in edits[1:]:
                    found[name].append(turn_id(chat.send_message(edit)))
            except BaseException as exc:  # reported below, in the test's own thread
                errors.append(exc)

        threads = [
            threading.Thread(target=run_chat, args=("a", ["make it teal", "blur", "darken"])),
            threading.Thread(target=run_chat, args=("b", ["make it red", "flip", "brighten"])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        session_a = {session_of_turn(custody, t) for t in found["a"]}
        session_b = {session_of_turn(custody, t) for t in found["b"]}
        assert len(session_a) == 1 and len(session_b) == 1
        assert session_a != session_b, "two chats from one public image stay two sessions"
        for session, turns in ((session_a.pop(), found["a"]), (session_b.pop(), found["b"])):
            graph = index_graph(custody, session)
            assert sorted(t["turn"] for t in graph["turns"]) == sorted(turns)
            assert ledger_graph(custody, session) == graph
    finally:
        custody.stop()


def test_two_users_sending_one_image_never_share_a_session(
    custody: object, photo_bytes: dict[str, bytes]
) -> None:
    editor = custody.client("editor")  # type: ignore[attr-defined]
    admin = custody.client("admin")  # type: ignore[attr-defined]
    one = editor.models.generate_content(model=EDIT_MODEL, contents=[_photo(photo_bytes), "teal"])
    other = admin.models.generate_content(model=EDIT_MODEL, contents=[_photo(photo_bytes), "teal"])
    # The editor now sends back the admin's output: still not the admin's session.
    again = editor.models.generate_content(
        model=EDIT_MODEL,
        contents=[types.Part.from_bytes(data=images(other)[0], mime_type="image/png"), "blur"],
    )
    s1, s2, s3 = (session_of_turn(custody, turn_id(r)) for r in (one, other, again))  # type: ignore[arg-type]
    assert len({s1, s2, s3}) == 3


def test_the_session_header_overrides_the_hashes(
    custody: object, photo_bytes: dict[str, bytes]
) -> None:
    client = custody.client()  # type: ignore[attr-defined]
    config = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"x-custody-session": "campaign-42"})
    )
    first = client.models.generate_content(
        model=EDIT_MODEL, contents=[_photo(photo_bytes), "make it teal"], config=config
    )
    # A new photo, no shared history: the header alone puts it in the same session.
    second = client.models.generate_content(
        model=EDIT_MODEL,
        contents=[
            types.Part.from_bytes(data=photo_bytes["earth_apollo17.jpg"], mime_type="image/jpeg"),
            "make it red",
        ],
        config=config,
    )
    s1, s2 = (session_of_turn(custody, turn_id(r)) for r in (first, second))  # type: ignore[arg-type]
    assert s1 == s2
    graph = index_graph(custody, s1)  # type: ignore[arg-type]
    assert len(graph["images"]) == 2 and len(graph["turns"]) == 2
    assert ledger_graph(custody, s1) == graph  # type: ignore[arg-type]


def test_concurrent_first_turns_naming_one_session_share_it(
    tmp_path: Path, db_url: str, photo_bytes: dict[str, bytes]
) -> None:
    custody = gateway(tmp_path, db_url)
    try:
        client = custody.client()
        config = types.GenerateContentConfig(
            http_options=types.HttpOptions(headers={"x-custody-session": "batch-7"})
        )
        turns: list[str] = []
        errors: list[BaseException] = []

        def one(colour: str) -> None:
            try:
                response = client.models.generate_content(  # type: ignore[attr-defined]
                    model=EDIT_MODEL, contents=[_photo(photo_bytes), f"make it {colour}"],
                    config=config,
                )  # fmt: skip
                turns.append(turn_id(response))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(c,)) for c in ("red", "teal", "gold")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        sessions = {session_of_turn(custody, t) for t in turns}
        assert len(sessions) == 1, "one key, one session, however the turns raced"
        (session,) = sessions
        graph = index_graph(custody, session)
        assert sorted(t["turn"] for t in graph["turns"]) == sorted(turns)
        assert ledger_graph(custody, session) == graph
    finally:
        custody.stop()
