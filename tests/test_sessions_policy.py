"""The provenance facts an uploader states reach the policy (``input.session.lineage``): an edit
of identifiable people without consent is denied and recorded, the same edit with consent runs."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import start_custody
from tests.session_helpers import api, b64, png

POLICY = """package custody

default decision := {"outcome": "allow", "reasons": [], "obligations": {}}

decision := {"outcome": "deny", "reasons": ["identifiable people without consent"],
  "obligations": {}} if {
  some f in input.session.lineage
  f.identifiable_people
  f.consent != "given"
}
"""


def test_policy_reads_the_uploaded_images_provenance(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "custody.rego").write_text(POLICY)
    custody = start_custody(tmp_path / "custody", policy_dir=policies)
    try:
        client = api(custody)
        session = client.post("/api/v1/sessions", json={}).json()["session"]
        versions = {}
        for consent in ("refused", "given"):
            versions[consent] = client.post(
                f"/api/v1/sessions/{session}/images",
                json={
                    "data": b64(png(40, 40, (90, 90, 90))),
                    "mime_type": "image/png",
                    "source": "street photo",
                    "identifiable_people": True,
                    "consent": consent,
                },
            ).json()["version"]
        answer = client.post(
            f"/api/v1/sessions/{session}/turns",
            json={
                "instruction": "make it teal",
                "targets": [{"version": versions["refused"]}, {"version": versions["given"]}],
            },
        ).json()
        denied, allowed = answer["results"]
        assert denied["status"] == "failed" and denied["code"] == 403, denied
        assert denied["reason"] == "POLICY_DENIED"
        assert allowed["status"] == "released", allowed
        decided = [
            e
            for e in custody.ledger_events(denied["turn"])
            if e["type"] == "policy.decided" and e["body"]["stage"] == "request"
        ]
        assert decided[0]["body"]["reasons"] == ["identifiable people without consent"]
        assert decided[0]["session"] == session
    finally:
        custody.stop()
