"""Ledger leaves (RFC 8785 canonical JSON) and salted commitments to content."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from storage.ledger.events import LedgerEvent
from storage.ledger.leaf import (
    COMMITMENT_PREFIX,
    LEAF_VERSION,
    MAX_LEAF_BYTES,
    LeafError,
    commit,
    commit_content,
    commit_digest,
    decode_leaf,
    encode_leaf,
    is_canonical,
    iter_commitments,
    new_salt,
)

ORIGIN = "custody.test/log"


def _event(body: dict[str, object] | None = None, **fields: object) -> LedgerEvent:
    base: dict[str, object] = {"type": "turn.received", "tenant": "acme", "actor": "alice"}
    base.update(fields)
    return LedgerEvent(body=body or {}, **base)  # type: ignore[arg-type]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- leaves ----------------------------------------------------------------------------------


def test_leaf_is_rfc8785_canonical_json_with_sorted_keys_and_no_spaces() -> None:
    event = _event({"z": 1, "a": ["é", True, None]}, session="s1", turn="t1")
    assert (
        encode_leaf(ORIGIN, event, 1700000000123)
        == (
            '{"actor":"alice","body":{"a":["é",true,null],"z":1},"origin":"custody.test/log",'
            '"session":"s1","tenant":"acme","time_ms":1700000000123,"turn":"t1",'
            '"type":"turn.received","v":1}'
        ).encode()
    )


def test_leaf_keeps_absent_session_and_turn_as_null() -> None:
    doc = decode_leaf(encode_leaf(ORIGIN, _event(), 5))
    assert doc["session"] is None and doc["turn"] is None


def test_leaf_decodes_to_what_was_encoded() -> None:
    body = {"prompt": COMMITMENT_PREFIX + "x", "n": [1, 2, {"k": "v"}], "ok": False}
    doc = decode_leaf(encode_leaf(ORIGIN, _event(body, turn="t9"), 42))
    assert doc == {
        "v": LEAF_VERSION,
        "origin": ORIGIN,
        "type": "turn.received",
        "tenant": "acme",
        "actor": "alice",
        "session": None,
        "turn": "t9",
        "time_ms": 42,
        "body": body,
    }


def test_same_event_gives_the_same_bytes_whatever_the_key_order() -> None:
    a = encode_leaf(ORIGIN, _event({"a": 1, "b": {"c": 2, "d": 3}}), 7)
    b = encode_leaf(ORIGIN, _event({"b": {"d": 3, "c": 2}, "a": 1}), 7)
    assert a == b
    assert is_canonical(a)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"score": 0.5}, "leaf.body.score"),
        ({"a": [1, {"b": 2.0}]}, "leaf.body.a[1].b"),
        ({"weird key": float("nan")}, 'leaf.body["weird key"]'),
        ({"x": [float("inf")]}, "leaf.body.x[0]"),
    ],
)
def test_floats_are_refused_and_the_error_names_where(body: dict[str, object], path: str) -> None:
    with pytest.raises(LeafError) as err:
        encode_leaf(ORIGIN, _event(body), 1)
    assert path in str(err.value)
    assert "float" in str(err.value)


def test_values_json_cannot_hold_or_reproduce_are_refused() -> None:
    for body in ({1: "int key"}, {"big": 2**60}, {"bytes": b"raw"}, {"s": "\ud800"}):
        with pytest.raises(LeafError):
            encode_leaf(ORIGIN, _event(body), 1)  # type: ignore[arg-type]


def test_bad_time_or_event_fields_are_refused() -> None:
    for time_ms in (-1, 1.5, True):
        with pytest.raises(LeafError):
            encode_leaf(ORIGIN, _event(), time_ms)  # type: ignore[arg-type]
    with pytest.raises(LeafError):
        encode_leaf(ORIGIN, _event(type=""), 1)
    with pytest.raises(LeafError):
        encode_leaf(ORIGIN, _event(session=3), 1)


def _leaf_of_size(size: int) -> bytes:
    empty = len(encode_leaf(ORIGIN, _event({"pad": ""}), 1))
    return encode_leaf(ORIGIN, _event({"pad": "x" * (size - empty)}), 1)


def test_leaf_of_65535_bytes_is_accepted() -> None:
    assert len(_leaf_of_size(MAX_LEAF_BYTES)) == MAX_LEAF_BYTES == 64 * 1024 - 1


def test_leaf_of_64_kib_is_refused_with_its_size() -> None:
    with pytest.raises(LeafError) as err:
        _leaf_of_size(64 * 1024)
    assert "65,536 bytes" in str(err.value)
    assert "blob store" in str(err.value)


def test_decode_refuses_what_is_not_a_version_1_leaf() -> None:
    good = encode_leaf(ORIGIN, _event(), 1)
    for bad in (
        b"not json",
        b"[1,2]",
        good.replace(b'"v":1', b'"v":2'),
        b'{"v":1,"v":1}',
        b'{"v":1,"x":NaN}',
        b"\xff\xfe",
    ):
        with pytest.raises(LeafError):
            decode_leaf(bad)


def test_is_canonical_spots_reformatted_leaves() -> None:
    leaf = encode_leaf(ORIGIN, _event({"a": 1}), 1)
    assert is_canonical(leaf)
    assert not is_canonical(json.dumps(json.loads(leaf), indent=1).encode())
    assert not is_canonical(leaf + b" ")
    assert not is_canonical(b"garbage")


# --- commitments -----------------------------------------------------------------------------


def test_commit_is_salted_sha256_in_base64url_without_padding() -> None:
    salt = bytes(range(16))
    expected = COMMITMENT_PREFIX + _b64url(hashlib.sha256(salt + b"hello").digest())
    assert commit(b"hello", salt) == expected
    assert "=" not in expected and len(expected) == len(COMMITMENT_PREFIX) + 43


def test_commit_content_is_over_the_salt_and_the_content_digest() -> None:
    salt, data = new_salt(), b"a prompt about cats"
    digest = hashlib.sha256(data).digest()
    expected = COMMITMENT_PREFIX + _b64url(hashlib.sha256(salt + digest).digest())
    assert commit_content(data, salt) == expected
    assert commit_digest(digest, salt) == expected
    assert commit(digest, salt) == expected
    assert commit(data, salt) != expected  # the raw-content primitive is a different commitment


def test_commit_digest_refuses_something_that_is_not_a_sha256_digest() -> None:
    with pytest.raises(ValueError):
        commit_digest(b"short", new_salt())


def test_salts_are_fresh_16_bytes_and_change_the_commitment() -> None:
    salts = {new_salt() for _ in range(100)}
    assert len(salts) == 100 and all(len(s) == 16 for s in salts)
    a, b = list(salts)[:2]
    assert commit_content(b"same", a) != commit_content(b"same", b)


def test_iter_commitments_finds_every_commitment_with_its_path() -> None:
    c1, c2, c3 = (commit_content(b"%d" % i, new_salt()) for i in range(3))
    body = {
        "prompt": c1,
        "note": "plain text",
        "images": [{"data": c2, "mime": "image/png"}, {"data": "salted-sha1:nope"}],
        "odd key": {"x": c3},
        "count": 2,
    }
    assert list(iter_commitments(body)) == [
        ("body.prompt", c1),
        ("body.images[0].data", c2),
        ('body["odd key"].x', c3),
    ]
    assert list(iter_commitments("just a string")) == []


def test_the_fast_encoder_gives_exactly_the_rfc8785_bytes() -> None:
    """The stdlib fast path must agree with rfc8785 byte for byte wherever it is used."""
    import random

    import rfc8785

    from storage.ledger.events import LedgerEvent
    from storage.ledger.leaf import LeafError, encode_leaf

    rng = random.Random(8785)
    alphabet = [
        "a",
        "Z",
        "0",
        " ",
        '"',
        "\\\\",
        "/",
        "\\n",
        "\\t",
        "\\x00",
        "\\x1f",
        "\\x7f",
        "é",
        "ß",
        "\\u2028",
        "\\u20ac",
        "😀",
        "\\ufeff",
        "日",
    ]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    def value(depth: int) -> object:
        kind = rng.randint(0, 6 if depth < 3 else 3)
        if kind == 0:
            return rng.choice([None, True, False])
        if kind == 1:
            return rng.choice(
                [0, -1, 1, 2**53 - 1, -(2**53 - 1), 2**53, 10**20, rng.randint(-9, 9)]
            )
        if kind in (2, 3):
            return text()
        if kind == 4:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {
            rng.choice(["a", "b", "é", "\\ufb01", "😀", "z1", "A"]) + text(): value(depth + 1)
            for _ in range(rng.randint(0, 4))
        }

    for _ in range(2000):
        body = {"k" + text(): value(0) for _ in range(rng.randint(0, 5))}
        event = LedgerEvent(type="t", tenant="acme", actor="a", body=body)
        doc = {
            "v": 1,
            "origin": "o",
            "type": "t",
            "tenant": "acme",
            "actor": "a",
            "session": None,
            "turn": None,
            "time_ms": 1,
            "body": body,
        }
        try:
            expected = rfc8785.dumps(doc)
        except Exception:  # rfc8785 refuses (e.g. integers beyond 2^53): so must we
            with pytest.raises(LeafError):
                encode_leaf("o", event, 1)
            continue
        assert encode_leaf("o", event, 1) == expected


def test_the_append_fast_path_equals_the_checked_path_or_steps_aside() -> None:
    """``_fast_leaf`` (no paths, the document written key by key) gives the bytes of the fully
    checked encoder, or None for anything it does not vouch for (then the checked one decides)."""
    import enum
    import random

    from storage.ledger.leaf import _fast_leaf, _slow_leaf

    class Kind(enum.StrEnum):
        T = "turn.received"

    class Big(enum.IntEnum):
        ONE = 1

    rng = random.Random(6962)
    plain_strings = ["", "a", "é", '"q"', "\\", "\u2028", "😀", "t1-2", "\x00", "\x7f"]
    plain_scalars = [None, True, False, 0, -7, 2**53 - 1, -(2**53 - 1), 10**15]
    odd = [Kind.T, Big.ONE, 2**53, -(2**53), 1.5, float("nan"), b"x", {1, 2}]

    def pick(plain: list[object], weird: bool) -> object:
        return rng.choice(odd) if weird and rng.random() < 0.1 else rng.choice(plain)

    def value(depth: int, weird: bool) -> object:
        kind = rng.randint(0, 4 if depth < 3 else 1)
        if kind == 0:
            return pick(plain_scalars, weird)
        if kind == 1:
            return pick(plain_strings, weird)
        if kind == 2:
            return [value(depth + 1, weird) for _ in range(rng.randint(0, 3))]
        if kind == 3:
            return tuple(value(depth + 1, weird) for _ in range(rng.randint(0, 3)))
        keys: list[object] = ["k", "é", "b a", 1, "z"] if weird else ["k", "b a", "z", "A"]
        return {rng.choice(keys): value(depth + 1, weird) for _ in range(3)}

    fast = slow_only = 0
    for _ in range(3000):
        weird = rng.random() < 0.5
        event = LedgerEvent(
            type=pick(["t", "policy.decided"], weird),  # type: ignore[arg-type]
            tenant=pick(["acme", "ünï"], weird),  # type: ignore[arg-type]
            actor=rng.choice(["a", ""]) if weird else "a",
            session=pick([None, "s"], weird),  # type: ignore[arg-type]
            turn=pick([None, "t\u2028"], weird),  # type: ignore[arg-type]
            body={
                rng.choice(["a", "b", 1, "ü"] if weird else ["a", "b"]): value(0, weird)
                for _ in range(rng.randint(0, 3))
            },
        )
        time_ms = (
            pick([0, 1700000000123], weird)
            if rng.random() < 0.9
            else rng.choice([2**53, -1, True, 1.0])
        )
        got = _fast_leaf(ORIGIN, event, time_ms)  # type: ignore[arg-type]
        try:
            want: bytes | None = _slow_leaf(ORIGIN, event, time_ms)  # type: ignore[arg-type]
        except Exception:
            want = None
        if got is None:
            slow_only += 1
        else:
            fast += 1
            assert got == want
    assert fast > 300 and slow_only > 300
