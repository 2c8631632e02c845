"""The native session API: uploads with provenance, a linked edit on four images with one
excluded, a mask on one target only, a wrong-size mask refused, labels, a chain of edits whose
manifests walk back to the upload (c2pa-python's Reader), and the ledger rebuilding the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.session_helpers import (
    api,
    b64,
    custody_assertion,
    gateway,
    index_graph,
    ledger_graph,
    manifest_store,
    mask_png,
    png,
    walk_chain,
)

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def _upload(client: Any, session: str, colour: tuple[int, int, int], **facts: Any) -> str:
    response = client.post(
        f"/api/v1/sessions/{session}/images",
        json={
            "data": b64(png(96, 64, colour)),
            "mime_type": "image/png",
            "source": "studio shoot 2026-11",
            "rights_holder": "Acme Studio",
            "licence": "all rights reserved",
            "identifiable_people": False,
            **facts,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["version"])


def _content(client: Any, session: str, version: str) -> bytes:
    response = client.get(f"/api/v1/sessions/{session}/versions/{version}/content")
    assert response.status_code == 200, response.text
    return bytes(response.content)


def test_linked_edit_masks_labels_and_a_chain_back_to_the_upload(
    tmp_path: Path, db_url: str
) -> None:
    custody = gateway(tmp_path, db_url)
    try:
        client = api(custody)
        session = client.post("/api/v1/sessions", json={"title": "autumn shots"}).json()["session"]
        uploads = [_upload(client, session, c) for c in COLOURS]
        mask = mask_png(96, 64)
        response = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={
                "instruction": "make it teal",
                "targets": [
                    {"version": uploads[0], "mask": b64(mask)},
                    {"version": uploads[1]},
                    {"version": uploads[2], "exclude": True},
                    {"version": uploads[3]},
                ],
            },
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        results = answer["results"]
        assert [r["status"] for r in results] == ["released", "released", "excluded", "released"]
        assert results[0]["masked"] and not results[1]["masked"]
        outputs = {r["target"]: r["versions"][0] for r in results if r["status"] == "released"}
        graph = client.get(f"/api/v1/sessions/{session}").json()
        versions = {v["version"]: v for v in graph["versions"]}
        for target, out in outputs.items():
            assert versions[out]["parent"] == target and versions[out]["kind"] == "edit"
            assert versions[out]["image"] == versions[target]["image"]
        assert not any(v["parent"] == uploads[2] for v in graph["versions"]), "excluded"
        intents = {t["intent"] for t in graph["turns"]}
        assert intents == {answer["intent"]}, "one linked edit, one intent"
        assert len(graph["images"]) == 4
        assert graph["images"][0]["rights_holder"] == "Acme Studio"

        # The mask is the masked output's inputTo ingredient, and in no other output.
        for target, out in outputs.items():
            store = manifest_store(_content(client, session, out))
            active = store["manifests"][store["active_manifest"]]
            masks = [
                i
                for i in active.get("ingredients", [])
                if i["relationship"] == "inputTo" and i["title"].startswith("mask")
            ]
            assert len(masks) == (1 if target == uploads[0] else 0), (target, masks)
            assert custody_assertion(active)["session"]["version"] == out
            chain = walk_chain(store)  # back to the upload, by c2pa-python's Reader
            assert [c.get("version") for c in chain[:1]] == [out]
            assert chain[0]["parent_version"] == target and "upload_ingredient" in chain[1]

        # A second edit on the masked output: its chain walks back to the upload.
        first_out = outputs[uploads[0]]
        second = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={"instruction": "blur it", "targets": [{"version": first_out}]},
        ).json()["results"][0]
        assert second["status"] == "released", second
        chain = walk_chain(manifest_store(_content(client, session, second["versions"][0])))
        assert [c.get("version") for c in chain[:2]] == [second["versions"][0], first_out]
        assert chain[0]["parent_version"] == first_out
        assert chain[1]["parent_version"] == uploads[0]
        assert chain[1]["session"] == session and chain[1]["intent"] == answer["intent"]
        assert "upload_ingredient" in chain[2]

        labelled = client.post(
            f"/api/v1/sessions/{session}/versions/{first_out}/labels",
            json={"label": "approved for campaign"},
        )
        assert labelled.status_code == 200, labelled.text
        timeline = client.get(f"/api/v1/sessions/{session}/timeline").json()
        assert [len(t["outputs"]) for t in timeline["turns"]] == [1, 1, 1, 1]
        assert timeline["labels"][0]["label"] == "approved for campaign"

        graph = index_graph(custody, session)
        assert graph["labels"] == [
            {"version": first_out, "label": "approved for campaign", "by": "editor@acme"}
        ]
        assert ledger_graph(custody, session) == graph, "the ledger alone rebuilds the graph"
        shown = client.get(f"/api/v1/sessions/{session}").json()
        for v in shown["versions"]:
            for detail in ("sha256", "mime_type", "created_ms"):
                v.pop(detail)
        shown.pop("title"), shown.pop("tenant")
        assert shown == ledger_graph(custody, session), "the API's graph, from the ledger alone"
    finally:
        custody.stop()


def test_a_mask_of_the_wrong_size_is_a_clear_400_and_recorded(custody: Any) -> None:
    client = api(custody)
    session = client.post("/api/v1/sessions", json={}).json()["session"]
    version = _upload(client, session, COLOURS[0])
    response = client.post(
        f"/api/v1/sessions/{session}/turns",
        json={
            "instruction": "make it teal",
            "targets": [{"version": version}],
            "mask": b64(mask_png(64, 64)),
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "64x64" in error["message"] and "96x64" in error["message"]
    assert error["details"][0]["reason"] == "MASK_SIZE_MISMATCH"
    refused = [e for e in custody.ledger_events() if e["type"] == "request.refused"]
    assert refused[-1]["body"]["reason"] == "MASK_SIZE_MISMATCH"
    assert refused[-1]["session"] == session
    graph = client.get(f"/api/v1/sessions/{session}").json()
    assert graph["turns"] == [], "nothing ran"


def test_who_may_see_and_change_a_session(custody: Any) -> None:
    editor = api(custody)
    session = editor.post("/api/v1/sessions", json={}).json()["session"]
    version = _upload(editor, session, COLOURS[1])
    assert api(custody, "auditor").get(f"/api/v1/sessions/{session}").status_code == 200
    assert api(custody, "reviewer").get(f"/api/v1/sessions/{session}").status_code == 200
    outsider = api(custody, "other-tenant-editor")
    assert outsider.get(f"/api/v1/sessions/{session}").status_code == 404
    assert outsider.get(f"/api/v1/sessions/{session}/versions/{version}/content").status_code == 404
    # The tenant's admin holds every role (it may read), but the session is the editor's.
    label = {"label": "mine"}
    path = f"/api/v1/sessions/{session}/versions/{version}/labels"
    assert api(custody, "auditor").post(path, json=label).status_code == 403
    assert api(custody, "admin").post(path, json=label).status_code == 403
    assert api(custody, "auditor").post("/api/v1/sessions", json={}).status_code == 403
    bad = editor.post(
        f"/api/v1/sessions/{session}/images",
        json={"data": b64(b"not an image"), "mime_type": "image/png", "source": "x"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400


def test_a_bad_body_is_a_recorded_400(custody: Any) -> None:
    client = api(custody)
    session = client.post("/api/v1/sessions", json={}).json()["session"]
    response = client.post(
        f"/api/v1/sessions/{session}/turns", json={"instruction": "teal", "targets": []}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "targets" in error["message"]
    refused = [e for e in custody.ledger_events() if e["type"] == "request.refused"]
    assert refused[-1]["body"]["reason"] == "BAD_SESSION_REQUEST"
    assert refused[-1]["session"] == session
    assert client.post(f"/api/v1/sessions/{session}/rollback", content=b"{").status_code == 400
