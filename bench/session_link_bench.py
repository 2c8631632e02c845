"""What recognising a chat turn's session costs, against parsing the same request, same run.

A Gemini chat resends its history; ``governance.sessions.linking.link_chat_turn`` looks the
resent images up by hash in the session index and loads the session's versions. The baseline is
``parse_request`` of the same request body — work every turn already does (decode every image,
read its header, hash it). Sessions of 5, 50 and 500 versions (the history resends the last 5
outputs; the rest is older graph), on SQLite. Reported: medians and linking / parsing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from PIL import Image

from governance.pipeline.parse import parse_request
from governance.sessions.lineage import new_id
from governance.sessions.linking import SeenImage, link_chat_turn
from storage.db import make_engine, migrate
from storage.sessions import SessionStore, session_side_rows

SIZES = (5, 50, 500)
ROUNDS = 60


def _png(n: int) -> bytes:
    img = Image.effect_noise((256, 256), 30 + n % 50).convert("RGB")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _seed(engine: object, versions: int, history: list[bytes]) -> None:
    """One session of ``versions`` versions; the last ones are the history's images."""
    session, image, now = new_id("ses"), new_id("img"), int(time.time() * 1000)
    rows: dict[str, list[dict[str, object]]] = {
        "edit_sessions": [
            {"session_id": session, "tenant": "acme", "actor": "bench@acme", "origin": "chat",
             "client_key": None, "title": None, "created_ms": now}
        ],
        "session_images": [
            {"image_id": image, "session_id": session, "source": "bench", "rights_holder": None,
             "licence": None, "identifiable_people": None, "consent": None, "created_ms": now}
        ],
        "session_versions": [],
    }  # fmt: skip
    parent = None
    digests = [hashlib.sha256(f"old-{n}".encode()).hexdigest() for n in range(versions)]
    for n, data in enumerate(history):
        digests[versions - len(history) + n] = hashlib.sha256(data).hexdigest()
    for n, digest in enumerate(digests):
        version = new_id("ver")
        rows["session_versions"].append(
            {"version_id": version, "session_id": session, "image_id": image, "tenant": "acme",
             "actor": "bench@acme", "parent_version": parent, "turn_id": None,
             "kind": "upload" if n == 0 else "edit", "sha256": digest,
             "commitment": "salted-sha256:" + "0" * 64, "mime_type": "image/png",
             "width": 256, "height": 256, "created_ms": now + n}
        )  # fmt: skip
        parent = version
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for side in session_side_rows(rows):
            table = ", ".join(side.columns)
            marks = ", ".join(f":{c}" for c in side.columns)
            from sqlalchemy import text

            conn.execute(
                text(f"INSERT INTO {side.table} ({table}) VALUES ({marks})"),
                [dict(zip(side.columns, r, strict=True)) for r in side.rows],
            )


def _body(history: list[bytes]) -> bytes:
    contents = []
    for n, data in enumerate(history):
        contents.append({"role": "user", "parts": [{"text": f"edit {n}"}]})
        inline = {"mimeType": "image/png", "data": base64.b64encode(data).decode()}
        contents.append({"role": "model", "parts": [{"inlineData": inline}]})
    contents.append({"role": "user", "parts": [{"text": "make it teal"}]})
    return orjson.dumps({"contents": contents})


def main() -> None:
    history = [_png(n) for n in range(5)]
    body = _body(history)
    print(f"request: {len(body):,} bytes, {len(history)} history images of 256x256")
    print(f"{'versions':>9} {'parse ms':>9} {'link ms':>8} {'link/parse':>11}")
    for versions in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            migrate(url)
            engine = make_engine(url, immediate=False)
            _seed(engine, versions, history)
            store = SessionStore(engine)
            parse_ms, link_ms = [], []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                parsed = parse_request(body, max_pixels=50_000_000)
                t1 = time.perf_counter()
                seen = [
                    SeenImage(i.sha256, i.role, None, i.mime_type, i.width, i.height)
                    for i in parsed.images
                ]
                lineage = link_chat_turn(
                    store, tenant="acme", actor="bench@acme", client_key=None, images=seen
                )
                t2 = time.perf_counter()
                assert lineage.parent_version is not None and not lineage.new_session
                parse_ms.append((t1 - t0) * 1000)
                link_ms.append((t2 - t1) * 1000)
            engine.dispose()
        p, lk = statistics.median(parse_ms), statistics.median(link_ms)
        print(f"{versions:>9} {p:>9.2f} {lk:>8.2f} {lk / p:>10.2f}x")


if __name__ == "__main__":
    main()
