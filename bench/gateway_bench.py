"""Latency Custody adds to a 1024x1024 PNG edit: SDK → Custody → emulator vs SDK → emulator.

Both paths run in the same run, interleaved request by request, against the same emulator
process, with the real google-genai SDK as the client. Custody and the emulator each run in their
own process (as in production), so the client's threads do not share their interpreter.
Printed: p50/p99 of each path, the added latency (via − direct) and the ratio.
"""

from __future__ import annotations

import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from google import genai
from google.genai import types
from PIL import Image

from governance.upstream.embedded import free_port

MODEL = "gemini-2.5-flash-image"
CUSTODY = [sys.executable, "-m", "governance.cli"]


def _png_1024() -> bytes:
    # Noise over a gradient compresses like a photograph (about 1.5 MB), not like a test card.
    base = Image.radial_gradient("L").resize((1024, 1024))
    noise = Image.effect_noise((1024, 1024), 40)
    img = Image.merge("RGB", (base, noise, Image.blend(base, noise, 0.5)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _wait(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _one_call(client: genai.Client, image: bytes) -> float:
    start = time.perf_counter()
    client.models.generate_content(
        model=MODEL,
        contents=[types.Part.from_bytes(data=image, mime_type="image/png"), "make it teal"],
    )
    return (time.perf_counter() - start) * 1000


def _run(
    clients: int, rounds: int, direct: genai.Client, via: genai.Client, image: bytes
) -> tuple[list[float], list[float]]:
    direct_ms: list[float] = []
    via_ms: list[float] = []

    def worker(_: int) -> None:
        for _ in range(rounds):  # interleaved: each worker alternates direct and via
            direct_ms.append(_one_call(direct, image))
            via_ms.append(_one_call(via, image))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return direct_ms, via_ms


def main(rounds_1: int = 40, rounds_16: int = 4) -> None:
    work = Path(tempfile.mkdtemp(prefix="custody-bench-"))
    emu_port, gw_port = free_port(), free_port()
    env = {
        **os.environ,
        "CUSTODY_DATA_DIR": str(work / "data"),
        "CUSTODY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{emu_port}",
        "CUSTODY_EMULATOR": "on",
        "CUSTODY_PORT": str(gw_port),
    }
    procs = [
        subprocess.Popen(
            [*CUSTODY, "emulator", "--port", str(emu_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*CUSTODY, "serve", "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait(f"http://127.0.0.1:{emu_port}/v1beta/models")
        _wait(f"http://127.0.0.1:{gw_port}/healthz")
        key = (
            subprocess.run(
                [*CUSTODY, "keys", "create", "--role", "editor", "--tenant", "bench"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        direct = genai.Client(
            api_key="bench", http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{emu_port}")
        )
        via = genai.Client(
            api_key=key, http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{gw_port}")
        )
        image = _png_1024()
        _run(1, 3, direct, via, image)  # warm-up: connections, caches, PKI, Rego
        print(
            f"\nGateway added latency, 1024x1024 PNG edit ({len(image) / 1e6:.2f} MB image),"
            " SDK → Custody → emulator vs SDK → emulator, interleaved in one run"
        )
        print(
            f"{'clients':>8} {'n':>5} {'direct p50':>11} {'direct p99':>11} {'via p50':>9}"
            f" {'via p99':>9} {'added p50':>10} {'added p99':>10} {'ratio p50':>10}"
        )
        for clients, rounds in ((1, rounds_1), (16, rounds_16)):
            d, v = _run(clients, rounds, direct, via, image)
            d50, d99, v50, v99 = (
                _percentile(d, 50),
                _percentile(d, 99),
                _percentile(v, 50),
                _percentile(v, 99),
            )
            print(
                f"{clients:>8} {len(v):>5} {d50:>9.1f}ms {d99:>9.1f}ms {v50:>7.1f}ms"
                f" {v99:>7.1f}ms {v50 - d50:>+8.1f}ms {v99 - d99:>+8.1f}ms {v50 / d50:>9.2f}x"
            )
            if clients == 1:  # one client: requests are strictly paired, so pair them
                paired = statistics.median(b - a for a, b in zip(d, v, strict=True))
                print(f"{'':>8} median of paired differences: {paired:+.1f} ms")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
