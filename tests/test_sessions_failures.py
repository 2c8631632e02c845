"""A linked edit with one target failing upstream leaves the others released and the failure
recorded, and retrying that target completes the set; a rollback makes no upstream call and its
re-signed output verifies."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from governance.provenance.verify import verify_image
from tests.conftest import RunningCustody, start_custody
from tests.emulator_front import EmulatorFront
from tests.session_helpers import api, b64, index_graph, ledger_graph, png

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

FAILING = (13, 13, 13)  # the colour of the image whose first edit the upstream refuses


class FlakyUpstream(EmulatorFront):
    """The emulator as a separate upstream that fails, once, the edit of one image (by its
    colour), and counts the calls it got."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    def calls(self) -> int:
        return sum(1 for e in self.emulator.state.request_log if e["action"] == "generateContent")

    def _is_failing_image(self, body: bytes) -> bool:
        import base64

        parts = json.loads(body)["contents"][-1]["parts"]
        for part in parts:
            data = (part.get("inlineData") or {}).get("data")
            if data:
                pixel = (
                    Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB").getpixel((0, 0))
                )
                return pixel == FAILING
        return False

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]] | None:
        if self.failed == 0 and self._is_failing_image(body):
            self.failed += 1
            overloaded = {"code": 503, "message": "The model is overloaded"}
            return 503, {"error": {**overloaded, "status": "UNAVAILABLE"}}
        return None


@pytest.fixture()
def upstream() -> Iterator[FlakyUpstream]:
    up = FlakyUpstream()
    try:
        yield up
    finally:
        up.stop()


def _gateway(tmp_path: Path, db_url: str, upstream: FlakyUpstream) -> RunningCustody:
    return start_custody(
        tmp_path / "custody",
        db_url,
        upstream_base_url=upstream.server.base_url,
        emulator="on",
        upstream_api_key="",
    )


def _upload(client: Any, session: str, colour: tuple[int, int, int]) -> str:
    response = client.post(
        f"/api/v1/sessions/{session}/images",
        json={"data": b64(png(80, 60, colour)), "mime_type": "image/png", "source": "test"},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["version"])


def test_linked_edit_partial_failure_then_retry_completes_the_set(
    tmp_path: Path, db_url: str, upstream: FlakyUpstream
) -> None:
    custody = _gateway(tmp_path, db_url, upstream)
    try:
        client = api(custody)
        session = client.post("/api/v1/sessions", json={}).json()["session"]
        targets = [_upload(client, session, c) for c in ((220, 30, 30), FAILING, (30, 30, 220))]
        first = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={"instruction": "make it gold", "targets": [{"version": v} for v in targets]},
        ).json()
        statuses = [r["status"] for r in first["results"]]
        assert statuses == ["released", "failed", "released"], first
        failed = first["results"][1]
        assert failed["code"] == 503 and failed["turn"]
        events = custody.ledger_events(failed["turn"])
        assert events[-1]["type"] == "turn.failed"
        recorded = [
            e
            for e in custody.ledger_events()
            if e["type"] == "lineage.recorded" and e["body"]["turn"] == failed["turn"]
        ]
        assert recorded[0]["body"]["status"] == "failed"
        assert recorded[0]["body"]["targets"] == [targets[1]]
        assert recorded[0]["body"]["intent"] == first["intent"]

        retry = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={
                "instruction": "make it gold",
                "targets": [{"version": targets[1]}],
                "intent": first["intent"],
            },
        ).json()
        assert retry["results"][0]["status"] == "released", retry
        graph = client.get(f"/api/v1/sessions/{session}").json()
        released = [t for t in graph["turns"] if t["status"] == "released"]
        assert {t["intent"] for t in graph["turns"]} == {first["intent"]}
        assert sorted(t["targets"][0] for t in released) == sorted(targets), "the set is whole"
        assert ledger_graph(custody, session) == index_graph(custody, session)
    finally:
        custody.stop()


def test_rollback_makes_no_upstream_call_and_its_output_verifies(
    tmp_path: Path, db_url: str, upstream: FlakyUpstream
) -> None:
    custody = _gateway(tmp_path, db_url, upstream)
    try:
        client = api(custody)
        session = client.post("/api/v1/sessions", json={}).json()["session"]
        upload = _upload(client, session, (10, 120, 60))
        v1 = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={"instruction": "make it teal", "targets": [{"version": upload}]},
        ).json()["results"][0]["versions"][0]
        v2 = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={"instruction": "darken it", "targets": [{"version": v1}]},
        ).json()["results"][0]["versions"][0]
        calls = upstream.calls()
        response = client.post(f"/api/v1/sessions/{session}/rollback", json={"version": v1})
        assert response.status_code == 200, response.text
        rolled = response.json()
        assert upstream.calls() == calls, "a rollback never calls the upstream"
        types_ = [e["type"] for e in custody.ledger_events(rolled["turn"])]
        assert "upstream.requested" not in types_ and "upstream.returned" not in types_
        assert types_[-1] == "turn.released"
        (version,) = rolled["versions"]
        graph = client.get(f"/api/v1/sessions/{session}").json()
        made = next(v for v in graph["versions"] if v["version"] == version)
        assert made["kind"] == "rollback" and made["parent"] == v1
        assert v2 in {v["version"] for v in graph["versions"]}
        data = client.get(f"/api/v1/sessions/{session}/versions/{version}/content").content
        anchors = custody.services.signer.trust_anchors_pem()  # type: ignore[attr-defined]
        found = verify_image(data, "image/png", anchors)
        assert found.state == "Trusted", found
        assert found.custody is not None and found.custody["session"]["kind"] == "rollback"
        assert ledger_graph(custody, session) == index_graph(custody, session)
    finally:
        custody.stop()
