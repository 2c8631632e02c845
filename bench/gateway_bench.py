"""What Custody adds to a 1024x1024 PNG edit, and what it costs the gateway process.

SDK → Custody → emulator against SDK → emulator, interleaved request by request in one run and
against the same emulator process, with the real google-genai SDK as the client. Custody and the
emulator each run in their own process (``custody serve`` and ``custody emulator``, as in
production), so the client's threads share neither interpreter. Every call sends new bytes (the
same pixels with a ``tEXt`` chunk numbering the call), so the gateway fingerprints every input
as it would an image never seen before; ``--same-input`` sends one file throughout (the gateway's
fingerprint memo then answers for it, as in a session editing its last output). Three runs:
unary at 1 client, unary at 16 clients, and the streamed edit (``streamGenerateContent?alt=sse``)
at 1 client.

Every latency figure is a difference (via − direct) or a ratio against the same run's direct path;
the machine is shared, so absolute figures from another run would not compare. For each run the
gateway's RSS (``VmRSS``, and the high-water mark ``VmHWM``) is read from ``/proc/<pid>/status`` and
its CPU seconds (utime + stime from ``/proc/<pid>/stat``) are taken before and after, divided by
the turns it served. ``--quick`` (or ``CUSTODY_BENCH_QUICK=1``) runs a short version for a
developer; its percentiles are rough.

``--floor`` (or ``CUSTODY_BENCH_FLOOR=1``) measures the same three runs a second time through
``bench.passthrough_proxy`` in place of Custody: a third process that forwards bytes and does
nothing else, on the same server and client libraries. Its added latency is what one Python hop
costs on this machine before any governance; the floor's runs follow Custody's, so the two
never share the cores.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from google import genai
from google.genai import types
from PIL import Image

from governance.upstream.embedded import free_port

MODEL = "gemini-2.5-flash-image"
CUSTODY = [sys.executable, "-m", "governance.cli"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# Targets from the issue (added latency in ms, RSS in MiB); reported as met or missed, never
# asserted.
TARGET_ADDED_P50_1 = 20.0
TARGET_ADDED_P99_1 = 60.0
TARGET_ADDED_P50_16 = 100.0
TARGET_ADDED_P50_STREAM = 25.0
TARGET_RSS_MIB = 300.0


def quick() -> bool:
    """Whether a developer asked for the short run: ``--quick`` or ``CUSTODY_BENCH_QUICK=1``."""
    return "--quick" in sys.argv[1:] or os.environ.get("CUSTODY_BENCH_QUICK", "") not in ("", "0")


def photo_like_png(side: int = 1024, noise: float = 40) -> bytes:
    """A PNG that compresses like a photograph (noise over a gradient), not like a test card."""
    base = Image.radial_gradient("L").resize((side, side))
    grain = Image.effect_noise((side, side), noise)
    img = Image.merge("RGB", (base, grain, Image.blend(base, grain, 0.5)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class ProcessSample:
    """One reading of a process: resident set, its high-water mark, CPU seconds so far."""

    rss_mib: float
    hwm_mib: float
    cpu_s: float


def sample_process(pid: int) -> ProcessSample:
    """Read ``pid``'s VmRSS and VmHWM (``/proc/<pid>/status``) and utime+stime (``stat``)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    with open(f"/proc/{pid}/stat") as stat:
        # the command name may hold spaces: fields count from after its closing parenthesis
        after = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(after[11]), int(after[12])
    return ProcessSample(fields["VmRSS"], fields["VmHWM"], (utime + stime) / CLOCK_TICKS)


def memory_breakdown(pid: int) -> dict[str, float]:
    """``/proc/<pid>/smaps_rollup`` in MiB (Rss, Anonymous, file-backed and swap lines)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass(frozen=True)
class Stack:
    """A running emulator and gateway, one gateway client per actor, and the gateway's pid.

    Each client thread is its own actor (its own key), as editors are: the default policy's
    per-actor rate limit (120 turns a minute) would otherwise refuse a benchmark's turns.
    """

    direct: genai.Client
    vias: list[genai.Client]
    gateway_pid: int
    gateway: subprocess.Popen[bytes]
    floor: genai.Client | None = None  # through bench.passthrough_proxy, with ``--floor``
    floor_pid: int = 0

    def via(self, actor: int) -> genai.Client:
        return self.vias[actor % len(self.vias)]


@contextlib.contextmanager
def running_stack(
    gateway_env: dict[str, str] | None = None,
    gateway_command: list[str] | None = None,
    gateway_stdout: int | None = subprocess.DEVNULL,
    actors: int = 16,
    with_floor: bool = False,
) -> Iterator[Stack]:
    """Start ``custody emulator`` and ``custody serve`` (or ``gateway_command``) in their own
    processes on a fresh data directory; yield SDK clients for both; stop both with SIGINT.
    ``with_floor`` starts ``bench.passthrough_proxy`` in front of the emulator as well."""
    work = Path(tempfile.mkdtemp(prefix="custody-bench-"))
    emu_port, gw_port, floor_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "CUSTODY_DATA_DIR": str(work / "data"),
        "CUSTODY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{emu_port}",
        "CUSTODY_EMULATOR": "on",
        "CUSTODY_PORT": str(gw_port),
    }
    emulator = subprocess.Popen(
        [*CUSTODY, "emulator", "--port", str(emu_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway = subprocess.Popen(
        gateway_command or [*CUSTODY, "serve", "--log-level", "warning"],
        env={**env, **(gateway_env or {})},
        stdout=gateway_stdout,
        stderr=subprocess.DEVNULL,
    )
    floor = (
        subprocess.Popen(
            [sys.executable, "-m", "bench.passthrough_proxy", "--port", str(floor_port),
             "--upstream", f"http://127.0.0.1:{emu_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if with_floor
        else None
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{emu_port}/v1beta/models", emulator)
        _wait(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        if floor is not None:
            _wait(f"http://127.0.0.1:{floor_port}/v1beta/models", floor)

        def create_key(actor: int) -> str:
            command = [*CUSTODY, "keys", "create", "--role", "editor", "--tenant", "bench"]
            created = subprocess.run(
                [*command, "--actor", f"bench-editor-{actor}"],
                env=env,
                capture_output=True,
                text=True,
            )
            if created.returncode != 0:  # say why: a bare CalledProcessError hides stderr
                raise RuntimeError(
                    f"custody keys create exited {created.returncode}: {created.stderr.strip()}"
                )
            return created.stdout.strip().splitlines()[-1]

        with ThreadPoolExecutor(4) as pool:
            keys = list(pool.map(create_key, range(actors)))
        direct = genai.Client(
            api_key="bench",
            http_options=types.HttpOptions(
                base_url=f"http://127.0.0.1:{emu_port}", timeout=300_000
            ),
        )
        vias = [
            genai.Client(
                api_key=key,
                http_options=types.HttpOptions(
                    base_url=f"http://127.0.0.1:{gw_port}", timeout=300_000
                ),
            )
            for key in keys
        ]
        floor_client = (
            genai.Client(
                api_key="bench",
                http_options=types.HttpOptions(
                    base_url=f"http://127.0.0.1:{floor_port}", timeout=300_000
                ),
            )
            if floor is not None
            else None
        )
        yield Stack(direct, vias, gateway.pid, gateway, floor_client, floor.pid if floor else 0)
    finally:
        procs = (gateway, emulator) if floor is None else (gateway, floor, emulator)
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # A 1,000-turn run leaves ~10 GB of blobs: gone with the stack, or a few runs fill a disk.
        shutil.rmtree(work, ignore_errors=True)


def with_floor() -> bool:
    """Whether to measure the pass-through floor too (``--floor`` or ``CUSTODY_BENCH_FLOOR=1``)."""
    return "--floor" in sys.argv[1:] or os.environ.get("CUSTODY_BENCH_FLOOR", "") not in ("", "0")


def same_input() -> bool:
    """Whether every call sends the very same bytes (``--same-input`` or
    ``CUSTODY_BENCH_SAME_INPUT=1``): then the gateway's fingerprint memo answers for the input
    from the second turn on, as it does in a session whose next turn edits the last output."""
    flag = os.environ.get("CUSTODY_BENCH_SAME_INPUT", "")
    return "--same-input" in sys.argv[1:] or flag not in ("", "0")


_CALLS = itertools.count()
_IHDR_END = 8 + 25  # the PNG signature, then IHDR (length, type, 13 bytes, CRC)


def fresh_png(image: bytes) -> bytes:
    """``image`` with a ``tEXt`` chunk numbering this call: new bytes (a new SHA-256, so nothing
    is remembered from an earlier turn), the same pixels (the same work for the upstream)."""
    if image[:8] != b"\x89PNG\r\n\x1a\n" or image[12:16] != b"IHDR":
        raise ValueError("fresh_png takes a PNG")
    text = b"custody-bench\x00" + str(next(_CALLS)).encode()
    crc = zlib.crc32(b"tEXt" + text)
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", crc)
    return image[:_IHDR_END] + chunk + image[_IHDR_END:]


def _contents(image: bytes) -> list[types.Part | str]:
    data = image if same_input() else fresh_png(image)
    return [types.Part.from_bytes(data=data, mime_type="image/png"), "make it teal"]


def unary_call(client: genai.Client, image: bytes) -> float:
    """One edit by ``generate_content``; its wall time in ms. Fails unless an image came back."""
    start = time.perf_counter()
    response = client.models.generate_content(model=MODEL, contents=_contents(image))
    elapsed = (time.perf_counter() - start) * 1000
    if not any(p.inline_data for p in (response.candidates or [])[0].content.parts or []):
        raise RuntimeError("the edit returned no image: the benchmark would time nothing")
    return elapsed


def streamed_call(client: genai.Client, image: bytes) -> float:
    """One edit by ``generate_content_stream``, read to its end; its wall time in ms."""
    start = time.perf_counter()
    images = 0
    for chunk in client.models.generate_content_stream(model=MODEL, contents=_contents(image)):
        for candidate in chunk.candidates or []:
            images += sum(1 for p in (candidate.content.parts or []) if p.inline_data)
    elapsed = (time.perf_counter() - start) * 1000
    if not images:
        raise RuntimeError("the streamed edit returned no image: the benchmark would time nothing")
    return elapsed


Call = Callable[[genai.Client, bytes], float]


def interleaved(
    stack: Stack,
    call: Call,
    clients: int,
    rounds: int,
    image: bytes,
    first_actor: int = 0,
    through_floor: bool = False,
) -> tuple[list[float], list[float]]:
    """Each of ``clients`` threads (actors ``first_actor``, ``first_actor + 1``, ...) alternates a
    direct and a via call ``rounds`` times; via the pass-through floor when ``through_floor``."""
    direct_ms: list[float] = []
    via_ms: list[float] = []

    def worker(n: int) -> None:
        via = stack.floor if through_floor and stack.floor else stack.via(first_actor + n)
        for _ in range(rounds):
            direct_ms.append(call(stack.direct, image))
            via_ms.append(call(via, image))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return direct_ms, via_ms


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile ``p`` of ``values``."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def verdict(value: float, target: float) -> str:
    return f"met (≤ {target:g})" if value <= target else f"MISSED (target ≤ {target:g})"


def main() -> None:
    short = quick()
    rounds_1, rounds_16, rounds_stream = (8, 1, 8) if short else (60, 6, 60)
    image = photo_like_png()
    floor = with_floor()
    with running_stack(with_floor=floor) as stack:
        interleaved(stack, unary_call, 1, 3, image)  # warm-up: connections, caches, PKI, Rego
        interleaved(stack, streamed_call, 1, 2, image, first_actor=1)
        if floor:
            interleaved(stack, unary_call, 1, 3, image, through_floor=True)
            interleaved(stack, streamed_call, 1, 2, image, through_floor=True)
        started = sample_process(stack.gateway_pid)
        print(
            f"\nGateway added latency, 1024x1024 PNG edit ({len(image) / 1e6:.2f} MB image),"
            " SDK → Custody → emulator vs SDK → emulator, interleaved in one run"
            f"{' (--quick: rough)' if short else ''}; "
            + (
                "the same input bytes every call (--same-input)"
                if same_input()
                else "new input bytes every call (a tEXt chunk each)"
            )
            + "; gateway RSS after warm-up"
            f" {started.rss_mib:.0f} MiB"
        )
        print(
            f"{'run':>14} {'n':>4} {'direct p50':>10} {'direct p99':>10} {'via p50':>8}"
            f" {'via p99':>8} {'added p50':>9} {'added p99':>9} {'ratio':>6}"
            f" {'RSS':>5} {'HWM':>5} {'CPU/turn':>8}"
        )
        runs: list[tuple[str, Call, int, int, int]] = [  # label, call, clients, rounds, actor
            ("unary, 1", unary_call, 1, rounds_1, 0),
            ("unary, 16", unary_call, 16, rounds_16, 0),
            ("streamed, 1", streamed_call, 1, rounds_stream, 1),
        ]
        if floor:
            runs += [(f"floor {label}", c, n, r, a) for label, c, n, r, a in runs]
        added: dict[str, tuple[float, float]] = {}
        served = 0
        for label, call, clients, rounds, actor in runs:
            through_floor = label.startswith("floor ")
            pid = stack.floor_pid if through_floor else stack.gateway_pid
            before = sample_process(pid)
            d, v = interleaved(
                stack, call, clients, rounds, image, first_actor=actor, through_floor=through_floor
            )
            after = sample_process(pid)
            served += 0 if through_floor else len(v)
            d50, d99 = percentile(d, 50), percentile(d, 99)
            v50, v99 = percentile(v, 50), percentile(v, 99)
            added[label] = (v50 - d50, v99 - d99)
            cpu_ms = (after.cpu_s - before.cpu_s) / len(v) * 1000
            print(
                f"{label:>14} {len(v):>4} {d50:>8.1f}ms {d99:>8.1f}ms {v50:>6.1f}ms"
                f" {v99:>6.1f}ms {v50 - d50:>+7.1f}ms {v99 - d99:>+7.1f}ms {v50 / d50:>5.2f}x"
                f" {after.rss_mib:>5.0f} {after.hwm_mib:>5.0f} {cpu_ms:>6.1f}ms"
            )
            if clients == 1:  # one client: requests are strictly paired, so pair them
                paired = statistics.median(b - a for a, b in zip(d, v, strict=True))
                print(f"{'':>14} median of paired differences: {paired:+.1f} ms")
        end = sample_process(stack.gateway_pid)
        rollup = memory_breakdown(stack.gateway_pid)
    if floor:
        print(
            "Custody beyond the pass-through floor"
            " (added p50 via Custody − added p50 via the floor):"
        )
        for label in ("unary, 1", "unary, 16", "streamed, 1"):
            own, hop = added[label][0], added[f"floor {label}"][0]
            print(
                f"  {label:<12} floor {hop:+7.1f} ms, Custody {own:+7.1f} ms,"
                f" beyond {own - hop:+7.1f} ms"
            )
    print(
        f"gateway after {served} turns (+ warm-up): RSS {end.rss_mib:.0f} MiB, HWM"
        f" {end.hwm_mib:.0f} MiB, anonymous {rollup.get('Anonymous', 0):.0f} MiB"
        " (RSS after 1,000 turns: bench.gateway_memory_bench)"
    )
    print("targets:")
    print(f"  added p50, 1 client       {added['unary, 1'][0]:+7.1f} ms  "
          + verdict(added["unary, 1"][0], TARGET_ADDED_P50_1))  # fmt: skip
    print(f"  added p99, 1 client       {added['unary, 1'][1]:+7.1f} ms  "
          + verdict(added["unary, 1"][1], TARGET_ADDED_P99_1))  # fmt: skip
    print(f"  added p50, 16 clients     {added['unary, 16'][0]:+7.1f} ms  "
          + verdict(added["unary, 16"][0], TARGET_ADDED_P50_16))  # fmt: skip
    print(f"  streamed added p50        {added['streamed, 1'][0]:+7.1f} ms  "
          + verdict(added["streamed, 1"][0], TARGET_ADDED_P50_STREAM))  # fmt: skip
    print(f"  gateway RSS (this run)    {end.rss_mib:7.0f} MiB "
          + verdict(end.rss_mib, TARGET_RSS_MIB))  # fmt: skip


if __name__ == "__main__":
    main()
