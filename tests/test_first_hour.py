"""The first hour as a new user lives it, black-box: real ``custody`` processes, from a shell.

What an acceptance run from a fresh clone found: the standalone emulator announced itself and then
failed on a busy port, never printed uvicorn's startup line and died by SIGTERM (status 143); a
relative ``CUSTODY_DATA_DIR`` (or ``file:`` blob store) made a new one in every directory; a bad
``CUSTODY_BLOB_STORE`` was a traceback; ``custody keys create`` made a new installation without a
word, so the key was refused by a gateway that used another; a ``custody.toml`` in the current
directory was ignored in silence.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from governance.cli import build_parser
from governance.upstream.embedded import free_port

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    env.update(extra)
    return env


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_the_standalone_emulator_refuses_a_busy_port_in_one_line(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = _cli(_env(tmp_path), tmp_path, "emulator", "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"custody emulator: port {port} on 127.0.0.1 is in use; choose another with --port"
    )
    assert "EMULATOR" not in proc.stdout, "nothing is announced for a port it cannot serve"


def test_the_standalone_emulator_announces_once_and_exits_0_on_sigterm(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "custody emulator exited during start-up"
            assert time.monotonic() < deadline, "custody emulator did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1beta/models", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert output.count("CUSTODY GEMINI EMULATOR") == 1, output
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


def test_a_relative_data_dir_is_refused_by_every_command(tmp_path) -> None:
    env = _env(tmp_path, CUSTODY_DATA_DIR="custody-data")
    for args in (
        ["serve", "--port", str(free_port())],
        ["keys", "create", "--role", "editor", "--tenant", "acme"],
        ["ledger", "verify"],
    ):
        proc = _cli(env, tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (args, proc.stderr)
        assert "CUSTODY_DATA_DIR is the relative path 'custody-data'" in lines[0]
        assert f"absolute path (from here that is {tmp_path / 'custody-data'})" in lines[0]
        assert "OK" not in proc.stdout and "serving on" not in proc.stdout
    assert not (tmp_path / "custody-data").exists(), "a refused command creates nothing"


def test_a_blob_store_that_cannot_work_is_refused_in_one_line_by_every_command(tmp_path) -> None:
    data = tmp_path / "data"
    for value, says in (
        ("s3", "'s3' is not a blob store"),
        ("file:blobs", "'file:blobs' is not a blob store: use 'file', 'file:/an/absolute/path'"),
        ("database", "CUSTODY_BLOB_STORE=database keeps content in PostgreSQL, but the database"),
    ):
        env = _env(tmp_path, CUSTODY_DATA_DIR=str(data), CUSTODY_BLOB_STORE=value)
        for args in (["serve", "--port", str(free_port())], ["ledger", "verify"]):
            proc = _cli(env, tmp_path, *args)
            assert proc.returncode == 2, (value, args, proc.stdout, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and says in lines[0] and "CUSTODY_BLOB_STORE" in lines[0], lines
            assert "serving on" not in proc.stdout
    assert not data.exists() and not (tmp_path / "blobs").exists(), "a refusal creates nothing"


def test_keys_create_says_when_it_makes_a_new_installation(tmp_path) -> None:
    data = tmp_path / "data"
    env = _env(tmp_path, CUSTODY_DATA_DIR=str(data))
    first = _cli(env, tmp_path, "keys", "create", "--role", "editor", "--tenant", "acme")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Created an editor key ")
    assert first.stdout.strip().splitlines()[-1].startswith("ck_"), "the key is the last line"
    assert f"there was no installation at {data}; creating one" in first.stderr
    assert "unless it uses the same data directory" in first.stderr
    second = _cli(env, Path("/"), "keys", "create", "--role", "admin", "--tenant", "acme")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("Created an admin key ")
    assert second.stderr == "", "the installation exists now, from any directory"
    listed = _cli(env, REPO, "keys", "list")
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 3, listed.stdout
    first_id = first.stdout.strip().splitlines()[-1].split("_")[1]
    rotated = _cli(env, tmp_path, "keys", "rotate", first_id, "--grace", "2h")
    assert rotated.returncode == 0, rotated.stderr
    after = _cli(env, tmp_path, "keys", "list").stdout.splitlines()
    assert after[0].split()[5:8] == ["STATE", "CREATED", "EXPIRES"]
    row = next(line.split() for line in after if line.startswith(first_id))
    assert row[5] == "rotating" and row[7] != "-", "the end of the grace period is shown"


def test_doctor_names_a_custody_toml_here_that_it_does_not_read(tmp_path) -> None:
    here = tmp_path / "project"
    here.mkdir()
    (here / "custody.toml").write_text(f'data_dir = "{tmp_path / "elsewhere"}"\n')
    env = _env(tmp_path, CUSTODY_DATA_DIR=str(tmp_path / "data"))
    proc = _cli(env, here, "doctor")
    assert proc.returncode == 1, "no installation: doctor says MISSING and fails"
    unread = here / "custody.toml"
    assert f"{unread} is not read; set CUSTODY_CONFIG={unread} to use it" in proc.stdout
    assert f"data dir:      {tmp_path / 'data'}  [env]" in proc.stdout
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "data").exists()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _documented_invocations() -> list[str]:
    """Every ``custody …`` the README and docs/ show: in backticks, and in shell blocks."""
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted(REPO.glob("docs/*.md"))])
    found = re.findall(r"`(?:\.venv/bin/)?(custody [^`]+)`", text)
    found += re.findall(r"^(?:\.venv/bin/)?(custody [^\n#]+)", text, flags=re.MULTILINE)
    return found


def test_every_documented_command_and_option_exists() -> None:
    root = build_parser()
    checked = 0
    for invocation in _documented_invocations():
        words = re.sub(r"[\[\]]|\\\|", " ", invocation).split()[1:]
        parser, path = root, ["custody"]
        while words and (sub := _subparsers(parser)) and not words[0].startswith("-"):
            if "|" in words[0]:  # alternatives: `custody ledger verify|checkpoint|vkey`
                missing = [w for w in words[0].split("|") if w not in sub]
                assert not missing, f"`{invocation}`: no {missing}"
                break
            if words[0] not in sub:
                assert words[0] in {"…", "...", "COMMAND"}, f"`{invocation}`: no {words[0]!r}"
                break
            path.append(words.pop(0))
            parser = sub[path[-1]]
        assert len(path) > 1, f"`{invocation}` names no command"
        if _subparsers(parser):
            continue  # a group named on its own (`custody ledger …`)
        options = {o for action in parser._actions for o in action.option_strings}
        for word in words:
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                assert flag in options, f"`{invocation}`: {' '.join(path)} has no {flag}"
        checked += 1
    assert checked >= 30, "the docs show the commands"


def test_verify_of_a_custody_image_without_its_installation_refuses(
    tmp_path, custody, photo_bytes
) -> None:
    from google.genai import types

    response = custody.client("editor").models.generate_content(
        model="gemini-2.5-flash-image",
        contents=[
            types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
            "warmer light",
        ],
    )
    signed = next(p.inline_data.data for p in response.candidates[0].content.parts if p.inline_data)
    image = tmp_path / "released.png"
    image.write_bytes(signed)
    nowhere = tmp_path / "nowhere"
    env = _env(tmp_path, CUSTODY_DATA_DIR=str(nowhere))
    refused = _cli(env, tmp_path, "verify", str(image))
    assert refused.returncode == 2, refused.stdout
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and str(nowhere) in lines[0] and "--no-ledger" in lines[0], lines
    assert "ledger: the image was not looked up" in refused.stdout
    alone = _cli(env, tmp_path, "verify", str(image), "--no-ledger")
    assert alone.returncode == 0, alone.stderr
    assert not nowhere.exists(), "verify created an installation"


def test_no_custody_key_reaches_the_upstream_on_the_model_routes(
    monkeypatch, tmp_path, photo_bytes
) -> None:
    """models.list, models.get and countTokens are passed through too: with the app's key in the
    header, in ``?key=`` and as a bearer token, the upstream sees only Custody's own key."""
    from conftest import start_custody
    from test_config_upstream_key import CUSTODY_LOOKALIKE, RecordingUpstream

    from governance.upstream.embedded import ThreadedServer

    monkeypatch.setenv("GEMINI_API_KEY", CUSTODY_LOOKALIKE)
    recorder = RecordingUpstream()
    upstream = ThreadedServer(recorder).start()
    running = start_custody(
        tmp_path / "custody", upstream_base_url=upstream.base_url, upstream_api_key="AIza-real"
    )
    try:
        client = running.client("editor")
        assert [m.name for m in client.models.list()], "the model list comes through"
        assert client.models.get(model="gemini-2.5-flash-image").name
        assert client.models.count_tokens(model="gemini-2.5-flash-image", contents="a sofa")
        key = running.keys["editor"]
        base = f"{running.base_url}/v1beta/models"
        for request in (
            httpx.Request("GET", f"{base}?key={key}"),
            httpx.Request("GET", base, headers={"authorization": f"Bearer {key}"}),
            httpx.Request(
                "POST",
                f"{base}/gemini-2.5-flash-image:countTokens?key={key}",
                json={"contents": [{"parts": [{"text": "a sofa"}]}]},
            ),
        ):
            assert httpx.Client().send(request).status_code == 200
    finally:
        running.stop()
        upstream.stop()
    paths = {r["path"] for r in recorder.requests}
    assert any(p.endswith(":countTokens") for p in paths) and any(
        p.endswith("/models") for p in paths
    ), paths
    seen = recorder.seen_text()
    assert "ck_" not in seen, "a Custody key was sent upstream"
    sent = {v for r in recorder.requests for k, v in r["headers"] if k == "x-goog-api-key"}
    assert sent == {"AIza-real"}
