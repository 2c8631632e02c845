"""C2SP signed notes (checked against Go's sumdb/note test vector) and tlog checkpoints."""

from __future__ import annotations

import base64
import hashlib

import pytest

from storage.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    format_checkpoint,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
)
from storage.ledger.note import (
    CallbackNoteSigner,
    Ed25519NoteSigner,
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_note,
    split_note,
)

# The published vector of golang.org/x/mod/sumdb/note (note_test.go).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngo"
    "tpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox"
    "33WWd1RvMc+QQ=\n"
)
ORIGIN = "custody.test/log"


@pytest.fixture(scope="module")
def peter() -> NoteVerifier:
    return NoteVerifier.from_key_string(PETER_VKEY)


@pytest.fixture(scope="module")
def enoch() -> NoteVerifier:
    return NoteVerifier.from_key_string(ENOCH_VKEY)


# --- keys ------------------------------------------------------------------------------------


def test_go_verifier_key_loads_with_its_name_and_key_hash(peter: NoteVerifier) -> None:
    assert peter.name == "PeterNeumann"
    assert peter.key_hash == 0xC74F20A3
    assert peter.key_string() == PETER_VKEY
    digest = hashlib.sha256(b"PeterNeumann\n\x01" + peter.public_key).digest()
    assert int.from_bytes(digest[:4], "big") == peter.key_hash


def test_go_signer_key_loads_and_matches_its_verifier_key() -> None:
    signer = Ed25519NoteSigner.from_key_string(PETER_SKEY)
    assert signer.name == "PeterNeumann" and signer.key_hash == 0xC74F20A3
    assert signer.verifier_key() == PETER_VKEY
    assert signer.key_string() == PETER_SKEY


def test_every_mangled_go_verifier_key_is_refused() -> None:
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteError):
                    NoteVerifier.from_key_string(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        mangled = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(NoteError):
            NoteVerifier.from_key_string(mangled)
    # Go's own extra cases: wrong key length, unknown algorithm (each with an adjusted hash).
    for bad in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ):
        with pytest.raises(NoteError):
            NoteVerifier.from_key_string(bad)


def test_every_mangled_go_signer_key_is_refused() -> None:
    for i in range(len(PETER_SKEY) + 1):
        for j in range(i + 1, len(PETER_SKEY) + 1):
            if (i, j) != (0, len(PETER_SKEY)):
                with pytest.raises(NoteError):
                    Ed25519NoteSigner.from_key_string(PETER_SKEY[i:j])
    for i in range(len(PETER_SKEY)):
        mangled = PETER_SKEY[:i] + chr(ord(PETER_SKEY[i]) + 1) + PETER_SKEY[i + 1 :]
        with pytest.raises(NoteError):
            Ed25519NoteSigner.from_key_string(mangled)


def test_generated_keys_round_trip_through_their_strings() -> None:
    signer = Ed25519NoteSigner.generate("custody.test/log")
    again = Ed25519NoteSigner.from_key_string(signer.key_string())
    assert again.verifier_key() == signer.verifier_key()
    verifier = NoteVerifier.from_key_string(signer.verifier_key())
    assert (verifier.name, verifier.key_hash) == (signer.name, signer.key_hash)
    assert signer.key_string().startswith("PRIVATE+KEY+custody.test/log+")


def test_key_names_with_spaces_or_plus_are_refused() -> None:
    for name in ("", "a b", "a+b", "tab\there"):
        with pytest.raises(NoteError):
            Ed25519NoteSigner.generate(name)


# --- signing and opening notes ---------------------------------------------------------------


def test_signing_reproduces_go_signed_note_byte_for_byte() -> None:
    signer = Ed25519NoteSigner.from_key_string(PETER_SKEY)
    assert sign_note(signer, TEXT) == TEXT + "\n" + PETER_SIG


def test_go_signed_note_opens_and_ignores_the_unknown_signer(peter: NoteVerifier) -> None:
    assert open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter]) == TEXT
    assert open_note(TEXT + "\n" + ENOCH_SIG + PETER_SIG, [peter]) == TEXT


def test_note_with_two_known_signers_opens(peter: NoteVerifier, enoch: NoteVerifier) -> None:
    assert open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter, enoch]) == TEXT
    _, sigs = split_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG)
    assert [(s.name, s.key_hash) for s in sigs] == [
        ("PeterNeumann", 0xC74F20A3),
        ("EnochRoot", 0xAF0CFE78),
    ]


def test_note_without_a_known_signature_is_refused(peter: NoteVerifier) -> None:
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        open_note(TEXT + "\n" + ENOCH_SIG, [peter])
    with pytest.raises(NoteError):
        open_note(TEXT + "\n" + PETER_SIG, [])


def test_a_known_key_with_a_bad_signature_rejects_the_note(peter: NoteVerifier) -> None:
    forged = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="does not verify"):
        open_note(TEXT + "\n" + forged, [peter])
    with pytest.raises(NoteError, match="does not verify"):
        open_note(TEXT + "\n" + PETER_SIG + forged, [peter])


def test_changing_any_byte_of_the_text_breaks_the_signature(peter: NoteVerifier) -> None:
    for i, ch in enumerate(TEXT):
        if ch == "\n":
            continue
        changed = TEXT[:i] + chr(ord(ch) ^ 0x01) + TEXT[i + 1 :]
        with pytest.raises(NoteError):
            open_note(changed + "\n" + PETER_SIG, [peter])


def test_same_name_but_another_key_hash_is_an_unknown_key(peter: NoteVerifier) -> None:
    other = Ed25519NoteSigner.generate("PeterNeumann")
    note = sign_note(other, TEXT)
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        open_note(note, [peter])


@pytest.mark.parametrize(
    "note",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        "\ud800" + TEXT + "\n" + PETER_SIG,
        TEXT
        + "\n"
        + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngo"
        "tpRZb6KE6RyyBwJnAM=\n",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
        TEXT + "\n" + "— PeterNeumann \n",
        TEXT + "\n" + "— PeterNeumann AAAA\n",
    ],
)
def test_malformed_notes_are_refused(peter: NoteVerifier, note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, [peter])


def test_sign_requires_text_ending_in_newline() -> None:
    signer = Ed25519NoteSigner.generate("k")
    with pytest.raises(NoteError):
        sign_note(signer, "abc")
    with pytest.raises(NoteError):
        sign_note(signer, "a\x00b\n")


def test_note_text_may_contain_blank_lines(peter: NoteVerifier) -> None:
    signer = Ed25519NoteSigner.from_key_string(PETER_SKEY)
    text = "first\n\nsecond\n"
    assert open_note(sign_note(signer, text), [peter]) == text


def test_verifier_accepts_only_the_exact_message_and_signature(peter: NoteVerifier) -> None:
    sig = base64.b64decode(PETER_SIG.split(" ")[2])[4:]
    assert peter.verify(TEXT.encode(), sig)
    assert not peter.verify(TEXT.encode() + b"x", sig)
    assert not peter.verify(TEXT.encode(), sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not peter.verify(TEXT.encode(), sig[:10])


# --- checkpoints -----------------------------------------------------------------------------

ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def log_key() -> NoteSigner:
    return Ed25519NoteSigner.generate(ORIGIN)


def test_checkpoint_body_is_origin_size_and_base64_root() -> None:
    assert format_checkpoint(ORIGIN, 16, ROOT) == (
        f"{ORIGIN}\n16\n{base64.b64encode(ROOT).decode()}\n"
    )


def test_signed_checkpoint_opens_to_the_same_values(log_key: NoteSigner) -> None:
    cp = sign_checkpoint(log_key, ORIGIN, 12345, ROOT)
    assert cp == Checkpoint(ORIGIN, 12345, ROOT, cp.note)
    assert cp.note.startswith(format_checkpoint(ORIGIN, 12345, ROOT) + "\n— ")
    assert open_checkpoint(cp.note, log_key.verifier(), ORIGIN) == cp


def test_checkpoint_for_another_log_is_refused(log_key: NoteSigner) -> None:
    cp = sign_checkpoint(log_key, "other.test/log", 3, ROOT)
    with pytest.raises(CheckpointError, match=r"for log 'other\.test/log'"):
        open_checkpoint(cp.note, log_key.verifier(), ORIGIN)


def test_checkpoint_signed_by_another_key_is_refused(log_key: NoteSigner) -> None:
    impostor = Ed25519NoteSigner.generate(ORIGIN)
    cp = sign_checkpoint(impostor, ORIGIN, 3, ROOT)
    with pytest.raises(CheckpointError, match="not validly signed"):
        open_checkpoint(cp.note, log_key.verifier(), ORIGIN)


def test_checkpoint_with_a_changed_size_or_root_is_refused(log_key: NoteSigner) -> None:
    cp = sign_checkpoint(log_key, ORIGIN, 16, ROOT)
    other_root = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    for changed in (
        cp.note.replace("\n16\n", "\n17\n", 1),
        cp.note.replace(base64.b64encode(ROOT).decode(), other_root, 1),
    ):
        with pytest.raises(CheckpointError):
            open_checkpoint(changed, log_key.verifier(), ORIGIN)


def test_checkpoint_extension_lines_are_allowed(log_key: NoteSigner) -> None:
    body = format_checkpoint(ORIGIN, 5, ROOT) + "ext one\next two\n"
    assert parse_checkpoint_body(body) == (ORIGIN, 5, ROOT)
    cp = open_checkpoint(sign_note(log_key, body), log_key.verifier(), ORIGIN)
    assert (cp.size, cp.root) == (5, ROOT)


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n16\n",
        f"{ORIGIN}\n16\n{base64.b64encode(ROOT).decode()}",
        f"{ORIGIN}\n016\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n²\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n 16\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n16\nnot base64!\n",
        f"{ORIGIN}\n16\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"\n16\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n16\n{base64.b64encode(ROOT).decode()}\n\next\n",
    ],
)
def test_malformed_checkpoint_bodies_are_refused(body: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint_body(body)


def test_format_checkpoint_refuses_impossible_values() -> None:
    for origin, size, root in (
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, 1, b"x"),
    ):
        with pytest.raises(CheckpointError):
            format_checkpoint(origin, size, root)


# --- a signer behind a callback (an HSM or KMS) ---------------------------------------------


class _RemoteKms:
    """Stands in for a signing service: holds the private key, signs bytes it is sent."""

    def __init__(self, skey: str) -> None:
        self._key = Ed25519NoteSigner.from_key_string(skey)
        self.requests: list[bytes] = []

    @property
    def public_key(self) -> bytes:
        return self._key.public_key

    def sign(self, msg: bytes) -> bytes:
        self.requests.append(msg)
        return self._key.sign(msg)


def test_a_callback_signer_reproduces_go_signed_note_byte_for_byte(peter: NoteVerifier) -> None:
    kms = _RemoteKms(PETER_SKEY)
    signer = CallbackNoteSigner("PeterNeumann", kms.public_key, kms.sign)
    assert signer.verifier_key() == PETER_VKEY
    assert sign_note(signer, TEXT) == TEXT + "\n" + PETER_SIG
    assert kms.requests == [TEXT.encode()]  # the service sees the note text, nothing else
    assert open_note(sign_note(signer, TEXT), [peter]) == TEXT


def test_a_callback_signed_checkpoint_opens_with_the_published_verifier_key() -> None:
    kms = _RemoteKms(Ed25519NoteSigner.generate(ORIGIN).key_string())
    signer = CallbackNoteSigner(ORIGIN, kms.public_key, kms.sign)
    cp = sign_checkpoint(signer, ORIGIN, 42, ROOT)
    verifier = NoteVerifier.from_key_string(signer.verifier_key())
    assert open_checkpoint(cp.note, verifier, ORIGIN) == cp


def test_a_callback_that_signs_with_another_key_is_refused_before_anything_is_published() -> None:
    wrong = Ed25519NoteSigner.generate(ORIGIN)
    signer = CallbackNoteSigner(ORIGIN, Ed25519NoteSigner.generate(ORIGIN).public_key, wrong.sign)
    with pytest.raises(NoteError, match="its own verifier key rejects"):
        sign_checkpoint(signer, ORIGIN, 1, ROOT)
    garbage = CallbackNoteSigner(ORIGIN, wrong.public_key, lambda msg: b"short")
    with pytest.raises(NoteError, match="64-byte"):
        sign_note(garbage, TEXT)
