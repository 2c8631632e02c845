"""The compliance record per output and the missing-marking query (issue 18, item 3).

Real turns through a real gateway (emulator upstream): a generation from text, an edit of a
photograph and an edit the caller says depicts a real person. Each output's record must name its
C2PA trust status, the SB 942 fields with locations that resolve — read back with c2pa's own
Reader, not with Custody's code — and the AI Act category the default policy assigned (recorded
in the turn's ``policy.decided``). An erased signed file makes its output show up in the
missing-marking query. The provider's own credentials kept as an ingredient are checked on files
signed directly (a second PKI stands in for Google's), as in tests/test_provenance_ingredients.py.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import c2pa
import httpx
import pytest

from governance.compliance.record import marking_of
from governance.provenance.pki import ensure_dev_pki
from governance.provenance.types import InputImage
from tests.conftest import RunningCustody, start_custody
from tests.test_provenance_signing import make_ctx, make_signer

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


@pytest.fixture()
def gateway(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path / "custody", db_url)
    try:
        yield running
    finally:
        running.stop()


def _turn(
    custody: RunningCustody, parts: list[dict[str, Any]], labels: str = "", key: str = "editor"
) -> bytes:
    headers = {"x-goog-api-key": custody.keys[key]}
    if labels:
        headers["x-custody-labels"] = labels
    resp = httpx.post(
        f"{custody.base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": parts}]},
        headers=headers,
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    out = next(p for p in resp.json()["candidates"][0]["content"]["parts"] if "inlineData" in p)
    return base64.b64decode(out["inlineData"]["data"])


def _photo_part(data: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(data).decode()}}


def _get(
    custody: RunningCustody, path: str, role: str = "auditor", **params: Any
) -> httpx.Response:
    return httpx.get(
        custody.base_url + path,
        params=params,
        headers={"x-goog-api-key": custody.keys[role]},
        timeout=60,
    )


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _store(data: bytes, anchors: str) -> dict[str, Any]:
    """The manifest store as c2pa's Reader (c2pa-rs) reports it."""
    settings = {"verify": {"remote_manifest_fetch": False}, "trust": {"user_anchors": anchors}}
    reader = c2pa.Reader(
        "image/png", io.BytesIO(data), context=c2pa.Context(c2pa.Settings.from_dict(settings))
    )
    try:
        return json.loads(reader.json())  # type: ignore[no-any-return]
    finally:
        reader.close()


def _resolve(store: dict[str, Any], location: dict[str, Any]) -> Any:
    """Follow a record's location (manifest, assertion label, JSON pointer) in ``store``."""
    node: Any = store["manifests"][location["manifest"]]
    if location["assertion"] is not None:
        node = next(a["data"] for a in node["assertions"] if a["label"] == location["assertion"])
    for token in [t for t in location["pointer"].split("/") if t]:
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


@pytest.fixture()
def outputs(gateway: RunningCustody, photo_bytes: dict[str, bytes]) -> dict[str, bytes]:
    photo = photo_bytes["sample1.png"]
    return {
        "generated": _turn(gateway, [{"text": "a red bicycle"}]),
        "edited": _turn(gateway, [{"text": "make the sofa teal"}, _photo_part(photo)]),
        "deep_fake": _turn(
            gateway, [{"text": "a bicycle in a park"}], labels="depicts=real_person"
        ),
        "globex": _turn(gateway, [{"text": "a globex bicycle"}], key="other-tenant-editor"),
    }


def test_each_output_record_names_its_marking_and_where_it_sits(gateway, outputs) -> None:
    anchors = gateway.services.signer.trust_anchors_pem()  # type: ignore[attr-defined]
    expected = {
        "generated": "fully_generated",
        "edited": "partially_edited",
        "deep_fake": "deep_fake",
    }
    for name, category in expected.items():
        data = outputs[name]
        resp = _get(gateway, f"/api/v1/query/outputs/{_sha(data)}/record")
        assert resp.status_code == 200, resp.text
        record = resp.json()
        assert record["complete"] and record["missing"] == [], record["missing"]
        marking = record["marking"]
        assert marking["c2pa"]["state"] == "Trusted"
        binding = marking["soft_binding"]  # the ISCC Image-Code every signed manifest carries
        assert binding["present"] is True and binding["alg"] == "io.iscc.v0", binding
        assert binding["location"]["assertion"] == "c2pa.soft-binding"
        assert marking["synthid"]["status"] == "not claimed"  # the emulator claims none
        assert marking["upstream_credentials"] == {
            "carried": "none", "kept_as_ingredient": None, "ingredient": None,
        }  # fmt: skip
        # The AI Act category is the one the policy recorded for the turn.
        ai_act = record["ai_act"]
        assert ai_act["category"] == category
        decided = gateway.services.ledger.entry(ai_act["ledger_index"])  # type: ignore[attr-defined]
        assert decided.event.type == "policy.decided"
        assert decided.event.body["obligations"]["disclosure"] == category
        # Every SB 942 field's location resolves, in c2pa-rs's own report, to the stated value.
        store = _store(data, anchors)
        sb942 = marking["sb942"]
        for field in ("provider", "system", "time", "identifier"):
            assert sb942[field]["present"], field
            assert _resolve(store, sb942[field]["location"]) == sb942[field]["value"], field
        assert sb942["provider"]["value"] == "custody-emulator (NOT Google Gemini)"
        assert sb942["system"]["value"]["name"] == "custody-emulator"
        assert sb942["identifier"]["value"] == store["active_manifest"]
        assert sb942["time"]["value"].endswith("Z")
        assert record["output"]["signed_sha256"] == _sha(data)


def test_a_provider_credentialed_output_keeps_them_and_synthid_is_as_google_states(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    signer = make_signer(ensure_dev_pki(tmp_path / "pki"))
    provider = make_signer(ensure_dev_pki(tmp_path / "provider-pki"))  # stands in for Google's
    photo = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    upstream = provider.sign_output(photo, "image/png", make_ctx([])).data
    edited = InputImage(photo, "image/png", "0" * 64, "parent", "in")
    out = signer.sign_output(upstream, "image/png", make_ctx([edited]))
    marking = marking_of(
        out.data, "image/png", signer.trust_anchors_pem(), out.upstream_credentials
    )
    assert marking["upstream_credentials"]["carried"] == "provider"
    assert marking["upstream_credentials"]["kept_as_ingredient"] is True
    assert marking["upstream_credentials"]["ingredient"]["state"] == "Valid"
    assert marking["synthid"]["status"] == "stated by Google, not verified by Custody"
    # Signed without the upstream's credentials (as a naive gateway would): reported lost.
    bare = signer.sign_output(photo, "image/png", make_ctx([edited]))
    lost = marking_of(bare.data, "image/png", signer.trust_anchors_pem(), "provider")
    assert lost["upstream_credentials"]["kept_as_ingredient"] is False


def test_missing_marking_lists_an_output_whose_file_was_erased(gateway, outputs) -> None:
    assert _get(gateway, "/api/v1/query/outputs/missing-marking").json()["rows"] == []
    edited = _sha(outputs["edited"])
    erased = httpx.post(
        gateway.base_url + "/api/v1/erasures",
        json={"digest": edited, "reason": "test: a lawful erasure of the released file"},
        headers={"x-goog-api-key": gateway.keys["admin"]},
        timeout=60,
    )
    assert erased.status_code == 200, erased.text
    rows = _get(gateway, "/api/v1/query/outputs/missing-marking").json()["rows"]
    assert [r["output"]["signed_sha256"] for r in rows] == [edited]
    assert "c2pa_manifest" in rows[0]["missing"]
    assert rows[0]["marking"]["file_available"] is False
    # Paging one output per call still finds it, with a cursor to go on.
    seen, cursor, calls = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = _get(gateway, "/api/v1/query/outputs/missing-marking", **params).json()
        seen += [r["output"]["signed_sha256"] for r in page["rows"]]
        cursor, calls = page["next_cursor"], calls + 1
        if not cursor:
            break
    assert seen == [edited] and calls >= 3


def test_records_stay_behind_the_tenant_wall(gateway, outputs) -> None:
    theirs = _sha(outputs["globex"])
    assert _get(gateway, f"/api/v1/query/outputs/{theirs}/record").status_code == 404
    assert (
        _get(
            gateway, f"/api/v1/query/outputs/{_sha(outputs['edited'])}/record", role="editor"
        ).status_code
        == 403
    )
    assert _get(gateway, "/api/v1/query/outputs/missing-marking", role="editor").status_code == 403
    assert (
        _get(gateway, "/api/v1/query/outputs/missing-marking", tenant="globex").status_code == 403
    )
    bad = _get(gateway, "/api/v1/query/outputs/xyz/record")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400


def test_cli_record_exits_3_when_a_marking_is_missing(gateway, outputs) -> None:
    import os
    import subprocess
    import sys

    settings = gateway.services.settings  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
    }

    def record(sha: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "governance.cli", "query", "record", sha],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    ok = record(_sha(outputs["generated"]))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ai_act"]["category"] == "fully_generated"
    erased = httpx.post(
        gateway.base_url + "/api/v1/erasures",
        json={"digest": _sha(outputs["generated"]), "reason": "test"},
        headers={"x-goog-api-key": gateway.keys["admin"]},
        timeout=60,
    )
    assert erased.status_code == 200, erased.text
    missing = record(_sha(outputs["generated"]))
    assert missing.returncode == 3 and "c2pa_manifest" in json.loads(missing.stdout)["missing"]
