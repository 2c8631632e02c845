"""``custody serve`` as a real process: one banner, uvicorn's line, a clean SIGTERM, a busy port.

Also ``custody verify IMG | head -1``: a closed pipe ends the command quietly, not in a traceback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from google import genai
from google.genai import types

from governance.upstream.embedded import free_port
from tests.serve_helpers import serve_env, wait_healthy

REPO = Path(__file__).resolve().parent.parent


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_serve_announces_once_and_stops_cleanly_on_sigterm(tmp_path, photo_bytes) -> None:
    env = serve_env(tmp_path, GEMINI_API_KEY="ck_app_key_in_the_shell_0000")
    made = _cli(env, "keys", "create", "--role", "editor", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, proc)
        client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base_url))
        response = client.models.generate_content(
            model="gemini-2.5-flash-image",
            contents=[
                types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
                "warmer light",
            ],
        )
        assert response.candidates
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert output.count("built-in GEMINI EMULATOR") == 1, output
    assert (
        "GEMINI_API_KEY is set in this shell; Custody never uses it as its upstream key" in output
    )
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output
    assert "Application shutdown complete" in output
    assert output.rstrip().endswith("Custody stopped: the ledger and the upstream are closed.")
    assert "Traceback" not in output
    verified = _cli(env, "ledger", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout


def test_a_busy_port_is_one_clear_line_before_anything_starts(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = _cli(serve_env(tmp_path), "serve", "--port", str(port))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"custody serve: port {port} on 127.0.0.1 is in use;"
        " choose another with --port or CUSTODY_PORT"
    )
    assert "serving on" not in proc.stdout
    assert not (tmp_path / "data").exists()


def test_a_closed_pipe_ends_verify_without_a_traceback(tmp_path, fixtures_dir) -> None:
    image = fixtures_dir / "credentialed" / "CA.jpg"
    proc = subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "verify", str(image), "--no-ledger"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=serve_env(tmp_path),
        cwd=REPO,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
