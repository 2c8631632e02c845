"""100 seeded random single-byte mutations of a real installation are all caught by ledger verify.

Issue 20 asks: "100 random single-byte mutations of the database files and blob store are all
detected by ``custody ledger verify``, naming the entry". A real gateway (the SDK through
Custody, the emulator upstream) writes a SQLite ledger and its blobs: generations, edits, a chat,
a failed turn. Then, one at a time, one byte is changed (XOR a random non-zero value) and
restored, and verification must fail naming the entry the byte belongs to.

Where the bytes are chosen (the seed is fixed, so a failure is reproducible):

- half in the SQLite file, inside the stored values of the ledger's own tables — the leaf bytes
  and leaf hash of a ``ledger_entries`` row, a ``ledger_hashes`` tree hash, a
  ``blob_commitments`` salt or digest — located on the pages SQLite's ``dbstat`` gives for those
  tables (a byte of free space or of a page header is not ledger data: changing free space
  changes nothing, and a damaged header is SQLite's corruption error, not a ledger's);
- half in the blob store: any byte of any blob file.

The expected entry is the one whose leaf (or leaf hash) holds the byte, or every entry whose leaf
commits to the blob or salt; a tree hash is named by the entry whose append computed it. The
first mutations also run the real ``custody ledger verify --json`` CLI; the rest call the same
``verify_ledger`` in process (the CLI is a wrapper of it) so the run stays well under a minute.
``CUSTODY_TEST_MUTATIONS=1000`` runs a bigger sample with the same seed.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from storage.ledger.leaf import decode_leaf, iter_commitments
from tests.ledger_helpers import ORIGIN, custody_cli

SEED = 20_2604
MUTATIONS = int(os.environ.get("CUSTODY_TEST_MUTATIONS", "100"))  # a soak may ask for more
CLI_RUNS = 2
PREFIX = 200  # bytes of a leaf always stored in its table page (SQLite's minimum local payload)
MODEL = "gemini-2.5-flash-image"


@dataclass(frozen=True)
class Region:
    """Bytes ``start..end`` of ``path`` hold ``what``; a change there must name ``entries``
    (None: any entry)."""

    path: Path
    start: int
    end: int
    what: str
    entries: frozenset[int] | None
    exact: bool = True  # False: the bytes occur in several rows; naming one of them will do


@dataclass
class Installation:
    data_dir: Path
    db: Path
    regions_db: list[Region]
    regions_blobs: list[Region]


def _run_turns(tmp: Path) -> Path:
    from PIL import Image

    from tests.conftest import start_custody

    data_dir = tmp / "custody"
    running = start_custody(data_dir, log_origin=ORIGIN)
    try:
        client: Any = running.client()
        client.models.generate_content(model=MODEL, contents="a red bicycle")
        buffer = __import__("io").BytesIO()
        Image.new("RGB", (64, 48), (120, 90, 60)).save(buffer, "PNG")
        photo = types.Part.from_bytes(data=buffer.getvalue(), mime_type="image/png")
        client.models.generate_content(model=MODEL, contents=[photo, "make the sofa teal"])
        chat = client.chats.create(model=MODEL)
        chat.send_message([photo, "add a vignette"])
        chat.send_message("flatten the fabric")
        with pytest.raises(Exception):  # noqa: B017 - any SDK error: the turn fails upstream
            client.models.generate_content(model=MODEL, contents="[emulator:fault=500] a cat")
    finally:
        running.stop()
    db = data_dir / "custody.db"
    with sqlite3.connect(db) as conn:  # every page in the main file, none in a WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return data_dir


def _occurrences(data: bytes, value: bytes, pages: set[int], page_size: int) -> Iterator[int]:
    at = data.find(value)
    while at != -1:
        if at // page_size + 1 in pages:
            yield at
        at = data.find(value, at + 1)


def _regions(data_dir: Path) -> Installation:
    db = data_dir / "custody.db"
    data = db.read_bytes()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages: dict[str, set[int]] = defaultdict(set)
        for name, pageno in conn.execute("SELECT name, pageno FROM dbstat"):
            pages[name].add(int(pageno))
        entries = conn.execute("SELECT idx, leaf, leaf_hash FROM ledger_entries").fetchall()
        hashes = conn.execute("SELECT idx, hash FROM ledger_hashes").fetchall()
        salts = conn.execute("SELECT commitment, digest, salt FROM blob_commitments").fetchall()
    finally:
        conn.close()
    by_commitment: dict[str, set[int]] = defaultdict(set)
    for idx, leaf, _ in entries:
        for _, commitment in iter_commitments(decode_leaf(bytes(leaf)).get("body")):
            by_commitment[commitment].add(int(idx))
    by_digest: dict[str, set[int]] = defaultdict(set)
    regions: list[Region] = []

    def add(
        value: bytes, table: str, what: str, named: frozenset[int] | None, exact: bool = True
    ) -> bool:
        found = list(_occurrences(data, value, pages[table], page_size))
        if len(found) != 1:
            return False
        regions.append(Region(db, found[0], found[0] + len(value), what, named, exact))
        return True

    for idx, leaf, leaf_hash in entries:
        what, named = f"leaf of entry {idx}", frozenset({idx})
        # A leaf longer than its page's local payload continues on overflow pages: then only
        # its first bytes are contiguous, and they are used when no other row shares them.
        assert add(bytes(leaf), "ledger_entries", what, named) or add(
            bytes(leaf)[:PREFIX], "ledger_entries", what, named
        ), f"the {what} is not found once on the pages of ledger_entries"
        assert add(bytes(leaf_hash), "ledger_entries", f"leaf hash of entry {idx}", named)
    for n, tree_hash in hashes:
        assert add(bytes(tree_hash), "ledger_hashes", f"tree hash #{n}", None)
    for commitment, digest, _ in salts:
        by_digest[digest] |= by_commitment.get(commitment, set())
    for commitment, digest, salt in salts:
        named = frozenset(by_commitment.get(commitment, ()))
        assert named, f"the salt of {commitment} belongs to no ledger entry"
        assert add(bytes(salt), "blob_commitments", f"salt of {commitment[:24]}…", named)
        # The same content committed twice (the chat resends its photo): one digest, two rows.
        hex_digest, shared = digest.encode(), frozenset(by_digest[digest])
        found = list(_occurrences(data, hex_digest, pages["blob_commitments"], page_size))
        regions.extend(
            Region(db, at, at + 64, f"digest {digest[:12]}…", shared, exact=len(found) == 1)
            for at in found
        )
    blob_regions = []
    for path in sorted((data_dir / "blobs").rglob("*")):
        if path.is_file():
            named = frozenset(by_digest.get(path.name, ()))
            assert named, f"blob {path.name} is committed to by no ledger entry"
            size = path.stat().st_size
            blob_regions.append(Region(path, 0, size, f"blob {path.name[:12]}…", named))
    return Installation(data_dir, db, regions, blob_regions)


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    return _regions(_run_turns(tmp_path_factory.mktemp("mutations")))


def _verify_in_process(data_dir: Path) -> tuple[bool, set[int | None], list[str]]:
    from governance.settings import Settings
    from governance.state import open_state
    from storage.blobs import Commitments
    from storage.ledger.note import NoteVerifier
    from storage.ledger.verify import verify_ledger

    state = open_state(Settings(data_dir=data_dir, log_origin=ORIGIN), create=False)
    try:
        report = verify_ledger(
            state.engine,
            origin=ORIGIN,
            verifier=NoteVerifier.from_key_string(state.signer.verifier_key()),
            commitments=Commitments(state.engine, state.blobs),
        )
    finally:
        state.close()
    return report.ok, {f.index for f in report.faults}, [str(f) for f in report.faults]


def _verify_cli(data_dir: Path) -> tuple[bool, set[int | None], list[str]]:
    import json

    out = custody_cli(
        f"sqlite:///{data_dir / 'custody.db'}", data_dir, "ledger", "verify", "--json"
    )
    report = json.loads(out.stdout)
    assert (out.returncode == 0) == report["ok"], out.stderr
    return (
        report["ok"],
        {f["index"] for f in report["faults"]},
        [f["message"] for f in report["faults"]],
    )


def _names_its_entry(region: Region, named: set[int | None]) -> bool:
    assert region.entries is not None
    return region.entries <= named if region.exact else bool(region.entries & named)


def test_the_untouched_installation_verifies(installation: Installation) -> None:
    ok, _, faults = _verify_in_process(installation.data_dir)
    assert ok, faults
    assert len(installation.regions_db) > 100 and len(installation.regions_blobs) > 10


def test_every_random_single_byte_mutation_is_detected_naming_its_entry(
    installation: Installation,
) -> None:
    rng = random.Random(SEED)
    missed: list[str] = []
    for n in range(MUTATIONS):
        pool = installation.regions_db if n % 2 == 0 else installation.regions_blobs
        region = rng.choice(pool)
        offset = rng.randrange(region.start, region.end)
        flip = rng.randrange(1, 256)
        with region.path.open("r+b") as f:
            f.seek(offset)
            original = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([original ^ flip]))
        try:
            verify = _verify_cli if n < CLI_RUNS else _verify_in_process
            ok, named, faults = verify(installation.data_dir)
        finally:
            with region.path.open("r+b") as f:
                f.seek(offset)
                f.write(bytes([original]))
        where = f"mutation {n}: byte {offset - region.start} of the {region.what} (^{flip:#04x})"
        if ok:
            missed.append(f"{where}: not detected")
        elif region.entries is None and not any(i is not None for i in named):
            missed.append(f"{where}: detected but no entry named: {faults[:3]}")
        elif region.entries is not None and not _names_its_entry(region, named):
            missed.append(f"{where}: named {sorted(i for i in named if i is not None)}, "
                          f"expected {sorted(region.entries)}: {faults[:3]}")  # fmt: skip
    assert not missed, "\n".join(missed)
    ok, _, faults = _verify_in_process(installation.data_dir)
    assert ok, faults  # every byte restored


@pytest.mark.parametrize(("byte", "why"), [(0xFF, "not UTF-8"), (ord("z"), "not hex")])
def test_a_digest_that_no_longer_reads_as_one_is_a_fault_not_a_crash(
    installation: Installation, byte: int, why: str
) -> None:
    region = next(r for r in installation.regions_db if r.what.startswith("digest") and r.exact)
    with region.path.open("r+b") as f:
        f.seek(region.start + 7)
        original = f.read(1)
        f.seek(region.start + 7)
        f.write(bytes([byte]))
    try:
        ok, named, faults = _verify_in_process(installation.data_dir)
    finally:
        with region.path.open("r+b") as f:
            f.seek(region.start + 7)
            f.write(original)
    assert not ok and region.entries is not None and region.entries <= named, why
    assert any("stored row (digest, salt) is corrupt" in f for f in faults)
