"""`custody policy diff --replay` lists exactly the turns whose decision changes; test and eval."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from governance.policy.cli import register
from governance.policy.replay import diff_decisions, load_recorded_inputs
from governance.policy.service import PolicyService
from governance.settings import Settings
from storage.db import migrate
from tests.test_policy_service import POLICIES, facts


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _recorded_db(tmp_path: Path, prompts: list[str]) -> Settings:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'c.db'}")
    migrate(settings.effective_database_url)  # a real installation's schema: replay reads only one
    engine = create_engine(settings.effective_database_url)
    service = PolicyService(POLICIES)
    with engine.begin() as conn:
        for i, prompt in enumerate(prompts):
            doc = service.decide_request(facts(prompt, tenant="default")).input_document
            for stage in ("request", "response"):
                conn.execute(
                    text("INSERT INTO decision_inputs (turn_id, stage, input_json, created_ms)"
                         " VALUES (:t, :s, :j, :c)"),
                    {"t": f"turn{i}", "s": stage, "j": json.dumps(doc), "c": 1000 + i},
                )  # fmt: skip
    engine.dispose()
    return settings


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
    candidate = _candidate(tmp_path)
    assert _cli(["policy", "diff", str(POLICIES), str(candidate), "--replay", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replayed"] == 5
    assert [c["turn_id"] for c in out["changed"]] == ["turn1", "turn3"]


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
