"""`custody policy diff --replay` lists exactly the turns whose decision changes; test and eval."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from governance.policy.cli import register
from governance.policy.replay import diff_decisions, load_recorded_inputs
from governance.policy.service import PolicyService
from governance.settings import Settings
from storage.blobs import Commitments, open_blob_store
from storage.db import make_engine, migrate
from tests.test_policy_service import POLICIES, facts

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _recorded_db(tmp_path: Path, prompts: list[str], url: str = "") -> Settings:
    """Decision inputs recorded as the gateway records them: blobs, and rows of commitments."""
    settings = Settings(data_dir=tmp_path, database_url=url or f"sqlite:///{tmp_path / 'c.db'}")
    migrate(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    blobs = open_blob_store("file", data_dir=tmp_path, engine=engine)
    commitments = Commitments(engine, blobs)
    service = PolicyService(POLICIES)
    for i, prompt in enumerate(prompts):
        doc = service.decide_request(facts(prompt, tenant="default")).input_document
        for stage in ("request", "response"):
            committed = commitments.put_committed(json.dumps(doc).encode())
            with engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO decision_inputs (turn_id, stage, input_commitment,"
                         " created_ms) VALUES (:t, :s, :c, :m)"),
                    {"t": f"turn{i}", "s": stage, "c": committed.commitment, "m": 1000 + i},
                )  # fmt: skip
    engine.dispose()
    return settings


def _erase_input(settings: Settings, turn_id: str) -> None:
    engine = make_engine(settings.effective_database_url)
    with engine.connect() as conn:
        commitment = conn.execute(
            text("SELECT input_commitment FROM decision_inputs WHERE turn_id = :t"
                 " AND stage = 'request'"),
            {"t": turn_id},
        ).scalar_one()  # fmt: skip
        digest = conn.execute(
            text("SELECT digest FROM blob_commitments WHERE commitment = :c"), {"c": commitment}
        ).scalar_one()
    commitments = Commitments(
        engine, open_blob_store("file", data_dir=settings.data_dir, engine=engine)
    )
    assert commitments.erase(str(digest), reason="data subject request", actor="dpo@acme")
    engine.dispose()


PROMPTS = [
    "make the sofa teal",  # turn0
    "remove the watermark",  # turn1: deny -> allow under the candidate
    "a red bicycle",  # turn2
    "remove the logo from the mug",  # turn3: deny -> allow
    "make the woman smile",  # turn4: review either way
]


def _candidate(tmp_path: Path) -> Path:
    new = Path(shutil.copytree(POLICIES, tmp_path / "candidate"))
    rules = new / "custody" / "request.rego"
    rules.write_text(rules.read_text().replace('"watermark_removal" in matched', "false"))
    return new


def test_diff_lists_exactly_the_changed_turns(tmp_path: Path) -> None:
    settings = _recorded_db(tmp_path, PROMPTS)
    inputs = load_recorded_inputs(settings, 4)
    assert [t for t, _ in inputs] == ["turn1", "turn2", "turn3", "turn4"]
    changes, total = diff_decisions(POLICIES, _candidate(tmp_path), inputs)
    assert total == 4
    assert [(c.turn_id, c.old_outcome, c.new_outcome) for c in changes] == [
        ("turn1", "deny", "allow"),
        ("turn3", "deny", "allow"),
    ]
    assert "watermark" in changes[0].old_reasons[0]


def test_diff_cli_prints_the_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _recorded_db(tmp_path, PROMPTS)
    monkeypatch.setenv("CUSTODY_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("CUSTODY_DATA_DIR", str(settings.data_dir))
    candidate = _candidate(tmp_path)
    assert _cli(["policy", "diff", str(POLICIES), str(candidate), "--replay", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replayed"] == 5
    assert [c["turn_id"] for c in out["changed"]] == ["turn1", "turn3"]


def test_an_erased_input_is_skipped_with_a_note(db_url: str, tmp_path: Path) -> None:
    settings = _recorded_db(tmp_path, PROMPTS, db_url)
    _erase_input(settings, "turn1")
    notes: list[str] = []
    inputs = load_recorded_inputs(settings, 5, notes=notes)
    assert [t for t, _ in inputs] == ["turn0", "turn2", "turn3", "turn4"]
    assert notes == ["turn turn1: skipped, its recorded request input was erased"]
    changes, total = diff_decisions(POLICIES, _candidate(tmp_path), inputs)
    assert total == 4 and [c.turn_id for c in changes] == ["turn3"]


def test_replay_cli_notes_the_erased_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _recorded_db(tmp_path, PROMPTS)
    _erase_input(settings, "turn3")
    monkeypatch.setenv("CUSTODY_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("CUSTODY_DATA_DIR", str(settings.data_dir))
    candidate = _candidate(tmp_path)
    assert _cli(["policy", "diff", str(POLICIES), str(candidate), "--replay", "5", "--json"]) == 0
    captured = capsys.readouterr()
    assert [c["turn_id"] for c in json.loads(captured.out)["changed"]] == ["turn1"]
    assert "turn turn3: skipped, its recorded request input was erased" in captured.err


def test_policy_test_command_passes_on_the_default_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _cli(["policy", "test", "--policy", str(POLICIES)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert " 0 failed, 0 errors" in summary and int(summary.split()[0]) >= 10


def test_policy_test_command_fails_on_a_failing_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(POLICIES, tmp_path / "p"))
    (root / "custody" / "broken_test.rego").write_text(
        "package custody_broken_test\n\nimport rego.v1\n\n"
        'test_wrong if {\n\td := data.custody.decision with input.stage as "request"\n'
        '\td.outcome == "no-such-outcome"\n}\n'
    )
    assert _cli(["policy", "test", "--policy", str(root)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_policy_eval_dry_runs_a_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = (
        PolicyService(POLICIES).decide_request(facts("put Elon Musk in this photo")).input_document
    )
    path = tmp_path / "input.json"
    path.write_text(json.dumps(doc))
    assert _cli(["policy", "eval", "--input", str(path), "--policy", str(POLICIES)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "deny"
    assert out["input"]["request"]["prompt"] == "[masked]"
