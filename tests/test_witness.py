"""Witnessed checkpoints against a real C2SP tlog-witness (``aics-witness`` in ``.venv-witness``).

Custody submits each new checkpoint with its consistency proof; the witness's cosignature is
stored and served at ``/api/v1/ledger/checkpoint/cosigned``; an evidence bundle carries it and
``custody verify-bundle --witness KEY --quorum 1`` checks it. A forked log (another tree of the
same size, signed with the same key) is refused by the witness (422), reported as
``checkpoint.witness_refused`` and never published; so is a checkpoint below the quorum.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from governance.witness.config import Witness, WitnessPolicy
from governance.witness.publisher import WitnessPublisher
from storage.ledger import open_ledger
from storage.ledger.cosignature import WitnessKey, cosignatures_in
from storage.ledger.note import load_or_create_note_signer
from storage.ledger.witnessed import published_checkpoint
from tests.conftest import _skip_or_fail
from tests.evidence_helpers import SESSION, cli, custody_env, offline_env, run_session, start
from tests.ledger_helpers import event
from tests.review_helpers import api

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

REPO = Path(__file__).resolve().parent.parent
WITNESS_BIN = REPO / ".venv-witness" / "bin" / "aics-witness"
ORIGIN = "custody.local/ledger"  # the default CUSTODY_LOG_ORIGIN
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "photos"


@dataclass
class RunningWitness:
    url: str
    vkey: str
    config: Path
    process: subprocess.Popen[bytes]

    def spec(self) -> str:
        return f"{self.url} {self.vkey}"

    def evidence(self) -> str:
        return _witness("evidence", config=self.config).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _witness(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AICS_WITNESS_CONFIG": str(config)}
    done = subprocess.run(
        [str(WITNESS_BIN), *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def start_witness(folder: Path, log_vkey: str) -> RunningWitness:
    if not WITNESS_BIN.exists():
        _skip_or_fail(f"{WITNESS_BIN} is missing: run `make witness-venv`")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "witness.json"
    vkey = _witness("init", "--name", "witness.test/w1", config=config).stdout.split()[0]
    _witness("add-log", "--origin", ORIGIN, "--vkey", log_vkey, config=config)
    port = _free_port()
    proc = subprocess.Popen(
        [str(WITNESS_BIN), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return RunningWitness(url, vkey, config, proc)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the witness did not start")


@pytest.fixture()
def log_key(tmp_path: Path) -> str:
    """Custody's note key, made before the gateway starts so the witness can be told of it."""
    (tmp_path / "custody").mkdir()
    signer = load_or_create_note_signer(tmp_path / "custody" / "ledger-note.key", ORIGIN)
    return signer.verifier_key()


@pytest.fixture()
def witness(tmp_path: Path, log_key: str) -> Iterator[RunningWitness]:
    running = start_witness(tmp_path / "witness", log_key)
    try:
        yield running
    finally:
        running.process.terminate()
        running.process.wait(10)


def _wait_cosigned(custody: object, at_least: int) -> str:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        resp = api(custody, custody.keys["auditor"], "GET", "/api/v1/ledger/checkpoint/cosigned")  # type: ignore[attr-defined]
        if resp.status_code == 200 and int(resp.text.split("\n")[1]) >= at_least:
            return resp.text
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of size {at_least} was cosigned")


def test_checkpoints_are_cosigned_served_bundled_and_verified(
    tmp_path: Path, witness: RunningWitness, log_key: str
) -> None:
    custody = start(tmp_path, witnesses=[witness.spec()], witness_quorum=1)
    try:
        run_session(custody, (FIXTURES / "IMG_0003.jpg").read_bytes())
        signed = api(custody, custody.keys["admin"], "POST", "/api/v1/ledger/checkpoint")
        size = int(signed.text.split("\n")[1])
        note = _wait_cosigned(custody, size)
        good, problems = cosignatures_in(note, [WitnessKey.from_key_string(witness.vkey)])
        assert len(good) == 1 and not problems
        assert note.startswith(signed.text.rpartition("\n\n")[0])
        # the witness's own view (its monitoring endpoint) is that checkpoint
        origin_hex = hashlib.sha256(ORIGIN.encode()).hexdigest()
        theirs = httpx.get(f"{witness.url}/{origin_hex}/checkpoint", timeout=10).text
        assert theirs.split("\n")[:3] == note.split("\n")[:3]
        assert (
            api(custody, custody.keys["auditor"], "GET", "/api/v1/ledger/checkpoint").text[:40]
            == note[:40]
        )
        env = {**custody_env(custody), "CUSTODY_WITNESSES": f'["{witness.spec()}"]'}
        env["CUSTODY_WITNESS_QUORUM"] = "1"
        out = tmp_path / "witnessed.zip"
        done = cli("export", "--tenant", "acme", "--session", SESSION, "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
    finally:
        custody.stop()
    lonely = tmp_path / "elsewhere"
    lonely.mkdir()
    args = ["verify-bundle", str(out), "--log-key", log_key, "--quorum", "1"]
    ok = cli(*args, "--witness", witness.vkey, env=offline_env(lonely), cwd=lonely)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "witness cosignatures verify" in ok.stdout
    stranger = WitnessKey("witness.test/w1", b"", os.urandom(32))
    stranger = WitnessKey(stranger.name, stranger.expected_id(), stranger.public_key)
    bad = cli(*args, "--witness", stranger.key_string(), env=offline_env(lonely), cwd=lonely)
    assert bad.returncode == 1
    assert "FAULT checkpoint.txt: 0 of the 1 witnesses you trust cosigned" in bad.stdout


def test_a_forked_log_is_refused_by_the_witness_and_reported(
    tmp_path: Path, witness: RunningWitness, log_key: str, db_url: str
) -> None:
    key = tmp_path / "custody" / "ledger-note.key"
    honest = open_ledger(f"sqlite:///{tmp_path / 'honest.db'}", origin=ORIGIN, signer=key)
    forked = open_ledger(db_url, origin=ORIGIN, signer=key)
    policy = WitnessPolicy(
        (Witness(witness.url, WitnessKey.from_key_string(witness.vkey)),), 1, 10.0
    )
    try:
        honest.append([event(i) for i in range(5)])
        cp = honest.issue_checkpoint()
        first = WitnessPublisher(honest, policy).publish(cp)
        assert first.published, [a.to_dict() for a in first.answers]
        honest.append([event(i) for i in range(5, 9)])
        second = WitnessPublisher(honest, policy).publish(honest.issue_checkpoint())
        assert second.published, [a.to_dict() for a in second.answers]  # consistent: cosigned
        # The fork: the same key signs another tree of the size the witness cosigned
        forked.append([event(100 + i) for i in range(9)])
        fork_cp = forked.issue_checkpoint()
        assert fork_cp.size == second.checkpoint.size and fork_cp.root != second.checkpoint.root
        refused = WitnessPublisher(forked, policy).publish(fork_cp)
        assert not refused.published
        assert refused.answers[0].status == 422, refused.answers[0].to_dict()
        assert "fork" in refused.answers[0].reason
        leaves = [e.event for e in forked.entries(0, forked.size())]
        reports = [e for e in leaves if e.type == "checkpoint.witness_refused"]
        assert len(reports) == 1
        body = reports[0].body
        assert body["size"] == fork_cp.size and body["cosigned"] == 0 and body["quorum"] == 1
        assert body["root"] == base64.b64encode(fork_cp.root).decode()
        assert published_checkpoint(forked.engine, ORIGIN, policy.keys, 1) is None
        assert published_checkpoint(honest.engine, ORIGIN, policy.keys, 1) is not None
        assert base64.b64encode(fork_cp.root).decode() in witness.evidence()
    finally:
        honest.close()
        forked.close()


def test_below_the_quorum_no_checkpoint_is_published(
    tmp_path: Path, witness: RunningWitness
) -> None:
    # a second witness that never answers (its key is a well-formed one nobody holds)
    second = WitnessKey("witness.test/w2", b"", os.urandom(32))
    second = WitnessKey(second.name, second.expected_id(), second.public_key)
    unreachable = f"http://127.0.0.1:{_free_port()} {second.key_string()}"
    custody = start(tmp_path, witnesses=[witness.spec(), unreachable], witness_quorum=2)
    try:
        custody.client("editor").models.generate_content(  # type: ignore[attr-defined]
            model="gemini-2.5-flash-image", contents="a teal sofa"
        )
        end = time.monotonic() + 60
        refused: list[dict[str, object]] = []
        while not refused and time.monotonic() < end:
            refused = [
                e for e in custody.ledger_events() if e["type"] == "checkpoint.witness_refused"
            ]
            time.sleep(0.1)
        assert refused, "no refusal was recorded"
        body = refused[0]["body"]
        assert body["quorum"] == 2 and body["cosigned"] == 1  # type: ignore[index]
        answers = body["answers"]  # type: ignore[index]
        assert [a["cosigned"] for a in answers] == [True, False]
        assert "no answer" in answers[1]["reason"]
        for path in ("/api/v1/ledger/checkpoint", "/api/v1/ledger/checkpoint/cosigned"):
            resp = api(custody, custody.keys["auditor"], "GET", path)
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["details"][0]["reason"] == "NOT_YET_WITNESSED"
        made = api(custody, custody.keys["auditor"], "POST", "/api/v1/evidence/bundles", json={})
        assert made.status_code == 503
    finally:
        custody.stop()
