"""Evidence bundles: exported from a real session, verified offline, tamper-evident file by file.

A session of three google-genai turns (an edit of a photograph inside a drawn mask, a turn held
for review and approved in the review API, a follow-up) and a rollback to the photograph through
the native sessions API is exported with ``custody export``; ``custody verify-bundle`` then checks
the zip in a process that knows no installation, with the server stopped and its database moved
away, and its report names the rollback among the events it proved. The session's authorship
report lists the rollback in order, on entries the bundle holds. Its proofs also pass two RFC
6962 verifiers nobody here wrote (``rekor-verifier`` and the Merkle verifier inside ``sigstore``),
its images c2pa-python and encypher-c2pa. Changing one byte of any file of the bundle (in a zip
rebuilt around it, as a tamperer would) makes verification fail and name that file, and the entry
where there is one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from governance.evidence import layout
from governance.evidence.verify import verify_bundle
from governance.provenance.verify import verify_independently
from storage.ledger.checkpoint import parse_checkpoint_body
from storage.ledger.note import split_note
from storage.ledger.proof_file import parse_proof
from tests.evidence_helpers import (
    SESSION,
    Driven,
    cli,
    custody_env,
    flip_one_byte,
    mask_png,
    members,
    offline_env,
    openings,
    rewrite,
    run_session,
    start,
)
from tests.review_helpers import api

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "photos"


@dataclass
class Exported:
    bundle: Path
    vkey: str
    driven: Driven
    authorship: dict[str, Any]  # the session's authorship report (JSON), read before the export

    @property
    def prompts(self) -> list[str]:
        return self.driven.prompts


def _export(tmp_path: Path, db_url: str, *extra: str) -> Exported:
    custody = start(tmp_path, db_url)
    try:
        driven = run_session(custody, (FIXTURES / "IMG_0003.jpg").read_bytes())
        authorship = api(
            custody,
            custody.keys["auditor"],
            "GET",
            f"/api/v1/sessions/{driven.session}/authorship",
        ).json()
        env = custody_env(custody)
        vkey = cli("ledger", "vkey", env=env).stdout.strip()
        out = tmp_path / "evidence.zip"
        done = cli(
            "export",
            "--tenant",
            "acme",
            "--session",
            SESSION,
            "--out",
            str(out),
            *extra,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "Wrote" in done.stdout
        exported = [e for e in custody.ledger_events() if e["type"] == "evidence.exported"]
        assert len(exported) == 1
        assert (
            exported[0]["body"]["sha256sums_sha256"]
            == hashlib.sha256(members(out)["SHA256SUMS"]).hexdigest()
        )
    finally:
        custody.stop()
    return Exported(out, vkey, driven, authorship)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """One bundle (SQLite, every field disclosed) for the tamper tests."""
    tmp = tmp_path_factory.mktemp("bundle")
    return _export(tmp, "", "--disclose", "all")


def test_a_session_bundle_verifies_offline_with_the_server_stopped_and_the_database_gone(
    tmp_path: Path, db_url: str
) -> None:
    got = _export(tmp_path, db_url, "--disclose", "prompts")
    shutil.move(tmp_path / "custody", tmp_path / "moved-away")  # key, blobs, SQLite file
    lonely = tmp_path / "elsewhere"
    lonely.mkdir()
    bundle = shutil.copy(got.bundle, lonely / "bundle.zip")
    done = cli(
        "verify-bundle",
        str(bundle),
        "--log-key",
        got.vkey,
        "--json",
        env=offline_env(lonely),
        cwd=lonely,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] and report["faults"] == []
    files = members(Path(bundle))
    entries = [n for n in files if n.startswith("entries/")]
    assert report["checked"]["entries"] == len(entries)
    leaves = [json.loads(files[n]) for n in entries]
    types = [leaf["type"] for leaf in leaves]
    # the client named its session SESSION; its events carry the session Custody attached it to
    assert len({leaf["session"] for leaf in leaves}) == 1
    assert str(leaves[0]["session"]).startswith("ses_")
    assert types.count("turn.released") == 4  # three chat turns and the rollback
    assert "review.decided" in types and "review.opened" in types
    assert report["checked"]["images"] == types.count("output.signed") == 4
    lineage = [leaf for leaf in leaves if leaf["type"] == "lineage.recorded"]
    assert [leaf["body"]["kind"] for leaf in lineage] == ["edit", "edit", "edit", "rollback"]
    assert len(lineage[0]["body"]["masks"]) == 1  # the first edit was inside the drawn mask
    rollback = lineage[-1]
    assert rollback["body"]["turn"] == got.driven.rollback["turn"], rollback["body"]
    assert rollback["body"]["outputs"][0]["version"] == got.driven.rollback["versions"][0]
    events = report["events"]
    assert events["lineage.recorded (rollback)"] == 1 and events["review.decided"] == 1
    assert events["lineage.recorded (edit)"] == 3
    # --disclose prompts: the three prompts are opened, the photograph and requests withheld
    lines = openings(Path(bundle))
    opened = {files[line["file"]].decode() for line in lines if line["field"] == "prompt"}
    # the rollback's instruction is Custody's own, committed as its turn's prompt
    assert opened == {*got.prompts, f"Roll back to version {got.driven.rollback['target']}"}
    assert all("withheld" in line for line in lines if line["field"] in ("parent", "request"))
    assert [line["field"] for line in lines].count("mask") == 1  # the drawn mask, withheld
    assert all("withheld" in line for line in lines if line["field"] == "mask")
    assert not any(n.startswith("content/") and files[n][:2] == b"\xff\xd8" for n in files)
    plain = cli("verify-bundle", str(bundle), "--log-key", got.vkey, env=offline_env(lonely))
    assert plain.returncode == 0 and "VERIFIES" in plain.stdout
    assert "1 lineage.recorded (rollback)" in " ".join(plain.stdout.split())


HUMAN_ACTS = ["prompt", "mask", "session", "upload", "prompt", "review", "prompt", "rollback"]


def test_the_authorship_report_of_the_session_lists_the_rollback_in_order_on_bundled_entries(
    exported: Exported,
) -> None:
    """The chat session's report: every human act in ledger order (the first turn's prompt and
    mask come before the session its photograph opened), the rollback last, choosing the
    photograph over the masked edit; every entry an act names is in the bundle, as its type."""
    report = exported.authorship
    assert report["session"] == exported.driven.session
    human = [a for a in report["acts"] if a["who"] == "human"]
    assert [a["kind"] for a in human] == HUMAN_ACTS, [a["kind"] for a in human]
    indexes = [a["entries"][0]["index"] for a in report["acts"]]
    assert indexes == sorted(indexes), "acts in ledger order"
    rollback = human[-1]
    assert rollback["chosen"] == exported.driven.rollback["target"]
    upload = human[3]
    masked = next(a for a in report["acts"] if a["kind"] == "generation")
    assert rollback["rejected"] == masked["versions"], (rollback, masked)
    assert upload["version"] == exported.driven.rollback["target"]
    assert rollback["turn"] == exported.driven.rollback["turn"]
    files = members(exported.bundle)
    for act in report["acts"]:
        for ref in act["entries"]:
            leaf = json.loads(files[layout.entry_file(ref["index"])])
            assert leaf["type"] == ref["type"], (act["kind"], ref)


def test_the_proofs_pass_rekor_verifier_and_the_merkle_verifier_of_sigstore(
    exported: Exported,
) -> None:
    from rekor_verifier.merkle_proof import DEFAULT_HASHER, verify_consistency, verify_inclusion
    from sigstore._internal import merkle as sigstore_merkle

    files = members(exported.bundle)
    _, size, root = parse_checkpoint_body(split_note(files["checkpoint.txt"].decode())[0])
    proofs = [n for n in files if n.startswith("proofs/")]
    assert proofs
    for name in proofs:
        proof = parse_proof(files[name].decode())
        leaf = files[layout.entry_file(proof.index)]
        leaf_hash = hashlib.sha256(b"\x00" + leaf).digest()
        verify_inclusion(  # raises on a bad proof
            DEFAULT_HASHER,
            proof.index,
            size,
            leaf_hash.hex(),
            [h.hex() for h in proof.hashes],
            root.hex(),
        )
        inner, border = sigstore_merkle._decomp_inclusion_proof(proof.index, size)
        assert len(proof.hashes) == inner + border
        got = sigstore_merkle._chain_inner(
            sigstore_merkle._hash_leaf(leaf), proof.hashes[:inner], proof.index
        )
        assert sigstore_merkle._chain_border_right(got, proof.hashes[inner:]) == root
    earlier = [n for n in files if n.startswith("checkpoints/")]
    assert earlier, "the gateway signed checkpoints during the session"
    for name in earlier:
        _, old_size, old_root = parse_checkpoint_body(split_note(files[name].decode())[0])
        hashes = files[f"consistency/{old_size}.txt"].decode().split()
        verify_consistency(
            DEFAULT_HASHER,
            old_size,
            size,
            [base64.b64decode(h).hex() for h in hashes],
            old_root.hex(),
            root.hex(),
        )


def test_disclose_all_opens_the_mask_and_the_photograph(exported: Exported) -> None:
    files = members(exported.bundle)
    lines = {line["field"]: line for line in openings(exported.bundle)}
    assert files[lines["mask"]["file"]] == mask_png()
    assert files[lines["parent"]["file"]] == (FIXTURES / "IMG_0003.jpg").read_bytes()


def test_the_images_pass_encypher_c2pa_under_the_shipped_anchors(exported: Exported) -> None:
    files = members(exported.bundle)
    anchors = files["keys/c2pa-anchors.pem"].decode()
    images = [n for n in files if n.startswith("images/")]
    assert len(images) == 4  # the rollback re-signed the photograph
    for name in images:
        assert verify_independently(files[name], None, anchors).ok, name


def _target(files: dict[str, bytes], pattern: str) -> tuple[str, int | None]:
    """The first file matching ``pattern`` and the entry a fault must name (None: none)."""
    if "*" not in pattern:
        return pattern, None
    prefix = pattern.split("*")[0]
    name = sorted(n for n in files if n.startswith(prefix))[0]
    if prefix in ("entries/", "proofs/"):
        return name, layout.entry_of(name)
    if prefix in ("content/", "images/", "manifests/"):
        text = files["openings.jsonl"].decode().splitlines()
        for line in map(json.loads, text):
            if line.get("file") == name:
                return name, int(line["entry"])
    return name, None


KINDS = [
    "index.json",
    "checkpoint.txt",
    "SHA256SUMS",
    "openings.jsonl",
    "keys/log.vkey",
    "keys/c2pa-chain.pem",
    "keys/c2pa-anchors.pem",
    "VERIFY.md",
    "index.html",
    "entries/*",
    "proofs/*",
    "checkpoints/*",
    "consistency/*",
    "content/*",
    "images/*",
    "manifests/*",
]


@pytest.mark.parametrize("kind", KINDS)
def test_one_flipped_byte_fails_verification_naming_the_file_and_entry(
    exported: Exported, tmp_path: Path, kind: str
) -> None:
    files = members(exported.bundle)
    name, entry = _target(files, kind)
    bad = rewrite(exported.bundle, tmp_path / "bad.zip", name, flip_one_byte(files[name]))
    report = verify_bundle(bad, log_key=exported.vkey)
    assert not report.ok
    named = [f for f in report.faults if f.file == name or name in f.message]
    assert named, report.summary()
    if entry is not None:
        assert any(f.entry == entry for f in named), report.summary()
    assert name in report.summary()


def _all_files(bundle: Path) -> Iterator[str]:
    yield from sorted(members(bundle))


def test_every_file_of_the_bundle_is_covered(exported: Exported, tmp_path: Path) -> None:
    """Not one file of the bundle can change unnoticed (the kinds above, over every file)."""
    files = members(exported.bundle)
    for name in _all_files(exported.bundle):
        bad = rewrite(exported.bundle, tmp_path / "bad.zip", name, flip_one_byte(files[name]))
        report = verify_bundle(bad, log_key=exported.vkey, check_images=False)
        assert not report.ok, name
        assert name in report.summary(), name


def test_a_removed_entry_or_another_log_key_fails(exported: Exported, tmp_path: Path) -> None:
    files = members(exported.bundle)
    victim = sorted(n for n in files if n.startswith("entries/"))[1]
    sums = b"".join(
        line + b"\n"
        for line in files["SHA256SUMS"].splitlines()
        if not line.endswith(victim.encode())
    )
    src = rewrite(exported.bundle, tmp_path / "a.zip", "SHA256SUMS", sums)
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "b.zip", "w") as zout:
        for info in zin.infolist():
            if info.filename != victim:
                zout.writestr(info.filename, zin.read(info))
    report = verify_bundle(tmp_path / "b.zip", log_key=exported.vkey, check_images=False)
    assert not report.ok
    assert any(victim in f.line() or f.file == "index.json" for f in report.faults)
    from storage.ledger.note import Ed25519NoteSigner

    stranger = Ed25519NoteSigner.generate("custody.local/ledger").verifier_key()
    report = verify_bundle(exported.bundle, log_key=stranger, check_images=False)
    assert not report.ok
    assert any(f.file == "checkpoint.txt" for f in report.faults)


def test_export_refuses_bad_input_clearly(exported: Exported, tmp_path: Path) -> None:
    done = cli("export", "--tenant", "acme", "--out", str(tmp_path / "x.zip"), "--disclose", "X!")
    assert done.returncode == 2 and "--disclose takes" in done.stderr
    assert not (tmp_path / "x.zip").exists()


def test_sums_listed_in_another_order_are_checked_by_name(
    exported: Exported, tmp_path: Path
) -> None:
    """The verifier matches SHA256SUMS line k to member k when the lines follow the zip, as
    the exporter writes them; lines in another order are as valid and checked name by name."""
    files = members(exported.bundle)
    shuffled = b"".join(line + b"\n" for line in reversed(files["SHA256SUMS"].splitlines()))
    other = rewrite(exported.bundle, tmp_path / "reordered.zip", "SHA256SUMS", shuffled)
    report = verify_bundle(other, log_key=exported.vkey, check_images=False)
    assert report.ok, report.summary()
    assert report.checked["files"] == len(files) - 1
    victim = sorted(n for n in files if n.startswith("entries/"))[2]
    bad = rewrite(other, tmp_path / "bad.zip", victim, flip_one_byte(files[victim]))
    report = verify_bundle(bad, log_key=exported.vkey, check_images=False)
    assert not report.ok
    assert any(f.file == victim and f.entry == layout.entry_of(victim) for f in report.faults)
