"""Helpers for the evidence-bundle tests: a session with a held turn, the CLIs, zip surgery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google import genai
from google.genai import types

from governance.review import desk_for
from tests.conftest import RunningCustody, start_custody
from tests.review_helpers import add_member, api, decide

MODEL = "gemini-2.5-flash-image"
SESSION = "s-sofa"
REPO = Path(__file__).resolve().parent.parent

POLICY = """package custody

default decision := {"outcome": "allow", "reasons": [], "obligations": {}}

decision := {"outcome": "review", "reasons": ["the test policy reviews 'needs-a-human'"],
  "obligations": {"review_wait_s": 60}} if {
  contains(lower(input.request.prompt), "needs-a-human")
}
"""


def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "custody.rego").write_text(POLICY)
    return folder


def start(tmp_path: Path, database_url: str = "", **kw: Any) -> RunningCustody:
    return start_custody(tmp_path / "custody", database_url, policy_dir=policy_dir(tmp_path), **kw)


def session_client(custody: RunningCustody, session: str = SESSION) -> genai.Client:
    opts = types.HttpOptions(base_url=custody.base_url, headers={"x-custody-session": session})
    return genai.Client(api_key=custody.keys["editor"], http_options=opts)


@dataclass(frozen=True)
class Driven:
    """What ``run_session`` did: the chat turns' prompts as the ledger commits to them (the
    texts of a turn, joined), Custody's id of the session, and the rollback's answer (``turn``,
    ``versions``: the new version, ``target``: the version rolled back to)."""

    prompts: list[str]
    session: str
    rollback: dict[str, Any]


def run_session(custody: RunningCustody, photo: bytes) -> Driven:
    """Three google-genai turns of one session (an edit of a photo inside a drawn mask, a held
    turn a reviewer approves, a follow-up), then a rollback to the photograph through the native
    sessions API (``POST /api/v1/sessions/{id}/rollback``), which rejects the masked edit."""
    client = session_client(custody)
    add_member(custody, "reviewers", "reviewer@acme")
    prompts = [
        "make the sofa teal",
        "needs-a-human: flatten the fabric",
        "brighten it a little",
    ]
    image = types.Part.from_bytes(data=photo, mime_type="image/jpeg")
    mask = types.Part.from_bytes(data=mask_png(), mime_type="image/png")
    client.models.generate_content(
        model=MODEL, contents=[image, "mask: the sofa", mask, prompts[0]]
    )
    out: dict[str, Any] = {}

    def held() -> None:
        out["r"] = client.models.generate_content(model=MODEL, contents=prompts[1])

    thread = threading.Thread(target=held, daemon=True)
    thread.start()
    desk = desk_for(custody.services)  # type: ignore[arg-type]
    end = time.monotonic() + 60
    task = None
    while task is None and time.monotonic() < end:
        found = api(custody, custody.keys["reviewer"], "GET", "/api/v1/reviews").json()["reviews"]
        task = desk.get(found[0]["id"]) if found else None
        time.sleep(0.1)
    assert task is not None, "the held turn opened no review task"
    assert decide(custody, custody.keys["reviewer"], task, "approve", "fine").status_code == 200
    thread.join(60)
    assert "r" in out
    client.models.generate_content(model=MODEL, contents=prompts[2])
    rollback = roll_back_to_the_photograph(custody)
    return Driven(
        ["mask: the sofa\n" + prompts[0], *prompts[1:]], native_session(custody), rollback
    )


def native_session(custody: RunningCustody) -> str:
    """The id Custody gave the editor's one session (the client named it SESSION)."""
    listed = api(custody, custody.keys["editor"], "GET", "/api/v1/sessions").json()["sessions"]
    assert len(listed) == 1, listed
    return str(listed[0]["session_id"])


def roll_back_to_the_photograph(custody: RunningCustody) -> dict[str, Any]:
    """``POST /api/v1/sessions/{id}/rollback`` to the photograph the first turn edited inside
    the mask (rejecting that masked edit); the rollback's answer, with ``target``."""
    session = native_session(custody)
    editor = custody.keys["editor"]
    graph = api(custody, editor, "GET", f"/api/v1/sessions/{session}").json()
    uploads = [v for v in graph["versions"] if v["kind"] == "upload"]
    assert len(uploads) == 1, graph["versions"]
    target = uploads[0]["version"]
    back = api(
        custody, editor, "POST", f"/api/v1/sessions/{session}/rollback", json={"version": target}
    )
    assert back.status_code == 200, back.text
    return {**back.json(), "target": target}


def mask_png() -> bytes:
    """A drawn mask: white where the edit may change the image."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(img).rectangle((10, 20, 50, 40), fill=255)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def custody_env(custody: RunningCustody) -> dict[str, str]:
    settings = custody.services.settings  # type: ignore[attr-defined]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")},
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
    }


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=300,
    )


def offline_env(home: Path) -> dict[str, str]:
    """An environment that knows no Custody installation: only the bundle and the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "cfg"))
    env["PYTHONPATH"] = str(REPO)
    return env


def members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def rewrite(bundle: Path, out: Path, name: str, data: bytes) -> Path:
    """A copy of ``bundle`` with member ``name`` replaced by ``data`` (a tamperer's zip)."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, data if info.filename == name else src.read(info))
    return out


def flip_one_byte(data: bytes) -> bytes:
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def openings(bundle: Path) -> list[dict[str, Any]]:
    text = members(bundle)["openings.jsonl"].decode()
    return [json.loads(line) for line in text.splitlines()]
