"""The cost of one authentication now that liveness is read on every request.

``KeyRing.identify`` of a cached, valid key (one primary-key lookup of ``revoked_ms`` and
``expires_ms`` on its own autocommit connections) against two floors of the same run: the
in-memory part alone (parse, SHA-256 of the secret, constant-time compare: what the old
5-second cache cost on a hit) and a bare ``SELECT 1`` through the pooled SQLAlchemy engine
the lookup would otherwise use. SQLite in a temporary directory and, when reachable,
PostgreSQL (``CUSTODY_TEST_PG_URL``'s server, a scratch database).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from governance.auth.keys import KeyRing, create_key, parse_key, secret_digest
from storage.db import make_engine, migrate

N = 3000
PG_ADMIN = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _per_call_us(fn: Callable[[], object]) -> float:
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(N):
            fn()
        best = min(best, (time.perf_counter() - start) / N * 1e6)
    return best


def _measure(name: str, url: str) -> None:
    migrate(url)
    writer = make_engine(url)
    key = create_key(writer, tenant="acme", actor="bench", roles=["editor"])
    reader: Engine = make_engine(url, immediate=False)
    ring = KeyRing(reader)
    assert ring.authenticate(key) is not None
    parsed = parse_key(key)
    assert parsed is not None
    stored = secret_digest(parsed[1])

    def memory_only() -> bool:
        got = parse_key(key)
        return got is not None and hmac.compare_digest(
            stored, hashlib.sha256(got[1].encode()).hexdigest()
        )

    def select_one() -> object:
        with reader.connect() as conn:
            return conn.execute(text("SELECT 1")).first()

    auth = _per_call_us(lambda: ring.identify(key))
    floor = _per_call_us(select_one)
    memory = _per_call_us(memory_only)
    print(
        f"{name:10s} identify {auth:7.1f} µs/call | SELECT 1 {floor:7.1f} µs | in-memory only"
        f" {memory:5.1f} µs | per-request liveness check adds {auth - memory:7.1f} µs"
    )
    reader.dispose()
    writer.dispose()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _measure("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")
    try:
        import psycopg

        name = f"custody_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # pragma: no cover - depends on the machine
        print(f"postgresql skipped: {exc}")
        return
    try:
        _measure("postgresql", f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}")
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
