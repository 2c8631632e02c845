"""Policy reloads across replicas: one active revision in the database, every replica converges.

Two real gateways on one database, each reading its own copy of the policy files (as two hosts
would). A change loaded by one becomes the active revision; the other, whose files still differ,
says so (``/readyz`` 503, ``custody_policy_revision_active`` 0) while its decisions go on naming
the revision they ran on; once its files match, its next reload tick converges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from governance.background import reload_policy
from storage import policy_revisions
from tests.conftest import start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"


def _change(policy_dir: Path) -> None:
    tenants = policy_dir / "custody" / "tenants" / "data.json"
    data = json.loads(tenants.read_text())
    data["acme"]["thumbnails"] = True
    tenants.write_text(json.dumps(data))


def _gauge(running: object) -> float:
    from governance.auth.keys import create_key

    key = create_key(
        running.services.engine,  # type: ignore[attr-defined]
        tenant="custody",
        actor="ops@custody",
        roles=["operator"],
    )
    base_url = running.base_url  # type: ignore[attr-defined]
    text = httpx.get(
        f"{base_url}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=30
    ).text
    line = next(x for x in text.splitlines() if x.startswith("custody_policy_revision_active "))
    return float(line.split()[1])


def test_replicas_converge_to_the_active_policy_revision(db_url: str, tmp_path: Path) -> None:
    dirs = [tmp_path / "pa", tmp_path / "pb"]
    for d in dirs:
        shutil.copytree(REPO_POLICIES, d)
    a = start_custody(tmp_path / "a", db_url, policy_dir=dirs[0], policy_reload_ms=0)
    b = start_custody(
        tmp_path / "b",
        db_url,
        policy_dir=dirs[1],
        policy_reload_ms=0,
        log_key_file=tmp_path / "a" / "ledger-note.key",
    )
    try:
        pa, pb = a.services.policy, b.services.policy  # type: ignore[attr-defined]
        start = pa.bundle_revision
        assert pb.bundle_revision == start
        for r in (a, b):
            assert httpx.get(f"{r.base_url}/readyz", timeout=30).status_code == 200

        _change(dirs[0])
        reload_policy(a.services)
        found = policy_revisions.active(a.services.engine)  # type: ignore[attr-defined]
        assert found is not None and found.revision == pa.bundle_revision != start

        reload_policy(b.services)  # b re-reads its files: they still differ
        assert pb.bundle_revision == start
        ready = httpx.get(f"{b.base_url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["policy"] == "not the active revision of the replicas"
        assert _gauge(b) == 0
        assert _gauge(a) == 1

        _change(dirs[1])  # the same files reach b's host
        reload_policy(b.services)
        assert pb.bundle_revision == pa.bundle_revision
        assert httpx.get(f"{b.base_url}/readyz", timeout=30).status_code == 200
        assert _gauge(b) == 1
        reloads = [e for e in b.ledger_events() if e["type"] == "policy.reloaded"]
        assert [e["body"]["new_revision"] for e in reloads].count(pa.bundle_revision) == 2
    finally:
        for r in (a, b):
            r.stop()
