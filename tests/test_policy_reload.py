"""Bundle revisions change with any policy or data file; hot reload swaps policy and records it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from governance.policy.bundle import load_bundle, revision_of_dir
from governance.policy.service import PolicyService
from tests.test_policy_service import POLICIES, facts


def _copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(POLICIES, tmp_path / "policies"))


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_revision_changes_when_any_file_changes(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    first = load_bundle(root).revision
    data = root / "custody" / "tenants" / "data.json"
    data.write_text(data.read_text().replace('"actor_turns": 5', '"actor_turns": 6'))
    second = load_bundle(root).revision
    assert second != first
    (root / "custody" / "extra.rego").write_text("package custody.extra\n\nx := 1\n")
    assert load_bundle(root).revision not in (first, second)
    assert revision_of_dir(root) == load_bundle(root).revision


def test_hot_reload_swaps_the_policy_and_reports_it(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    service = PolicyService(root)
    seen: list[dict[str, object]] = []
    service.on_reload = seen.append
    assert service.reload_if_changed() is None  # nothing changed
    before = service.bundle_revision
    assert service.decide_request(facts("remove the watermark")).outcome == "deny"
    rules = root / "custody" / "request.rego"
    rules.write_text(rules.read_text().replace('"watermark_removal" in matched', "false"))
    _bump_mtime(rules)
    body = service.reload_if_changed()
    assert body is not None
    assert body["old_revision"] == before
    assert body["new_revision"] == service.bundle_revision != before
    assert body["files"] == ["custody/request.rego"]
    assert seen == [body]
    assert service.decide_request(facts("remove the watermark")).outcome == "allow"
    assert service.reload_if_changed() is None


def test_reload_into_a_broken_policy_denies_and_says_so(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    service = PolicyService(root)
    rules = root / "custody" / "request.rego"
    rules.write_text(rules.read_text() + "\nthis is not rego {{{\n")
    _bump_mtime(rules)
    body = service.reload_if_changed()
    assert body is not None and "error" in body
    decision = service.decide_request(facts("teal sofa"))
    assert decision.outcome == "deny" and decision.bundle_revision == body["new_revision"]


def test_touching_a_file_is_not_a_reload(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    service = PolicyService(root)
    _bump_mtime(root / "custody" / "decision.rego")
    assert service.reload_if_changed() is None
