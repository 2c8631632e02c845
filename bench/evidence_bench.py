"""Evidence bundles at 10^4 turns: export time and peak memory, verify-bundle time.

A ledger of ``TURNS`` turns (five events each: ``turn.received`` with prompt and request
commitments whose blobs are stored, ``policy.decided``, ``upstream.requested``,
``upstream.returned``, ``turn.released``; a checkpoint every 1,000 turns) is exported whole with
``custody export --disclose all`` and checked with ``custody verify-bundle``, each in its own
process (peak RSS from ``wait4``). Images are left out: their C2PA validation is
``bench/c2pa_bench.py``'s subject. Baselines, measured in the same run in processes of their
own: for the export, reading the same entries and writing their leaves into a zip (what any
export costs before proofs and openings); for the verification, reading and hashing every
member of the bundle (what any verifier costs before checking proofs). Figures are printed as
seconds and as ratios to those baselines.

``python -m bench.evidence_bench [--turns N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from governance.settings import Settings
from governance.state import open_state
from storage.ledger.events import LedgerEvent

TURNS = 10_000
REPO = Path(__file__).resolve().parent.parent

_BASELINE_EXPORT = """
import sys, zipfile
from governance.settings import Settings
from governance.state import open_state
from governance.evidence.export import Selection, select_entries
state = open_state(Settings(), create=False)
size = state.ledger.size()
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as zf:
    for e in select_entries(state.ledger, Selection(tenant="acme"), size):
        zf.writestr(f"entries/{e.index:012d}.json", e.leaf)
state.close()
"""

_BASELINE_VERIFY = """
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    for info in zf.infolist():
        hashlib.sha256(zf.read(info)).hexdigest()
"""


def _populate(data_dir: Path, turns: int) -> None:
    state = open_state(Settings(data_dir=data_dir), create=True)
    ledger, commitments = state.ledger, state.commitments
    try:
        for start in range(0, turns, 100):
            events = []
            chunk = range(start, min(turns, start + 100))
            contents = []
            for t in chunk:
                prompt = f"make the sofa teal, pass {t}".encode()
                contents += [(prompt, None), (b'{"contents": [{"text": "' + prompt + b'"}]}', None)]
            made = commitments.put_committed_many(contents)
            for n, t in enumerate(chunk):
                turn = f"t{t:08d}"
                p, r = made[2 * n], made[2 * n + 1]
                base = {"tenant": "acme", "actor": "editor@acme", "session": f"s{t // 50}"}
                events += [
                    LedgerEvent(
                        "turn.received",
                        body={"prompt": p.commitment, "request": r.commitment, "model": "m"},
                        turn=turn,
                        **base,
                    ),
                    LedgerEvent("policy.decided", body={"outcome": "allow"}, turn=turn, **base),
                    LedgerEvent("upstream.requested", body={"path": "/v1beta"}, turn=turn, **base),
                    LedgerEvent("upstream.returned", body={"status": 200}, turn=turn, **base),
                    LedgerEvent("turn.released", body={"status": 200}, turn=turn, **base),
                ]
            ledger.append(events)
            if (start + 100) % 1000 == 0:
                ledger.issue_checkpoint()
    finally:
        state.close()


def _run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of one child process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        errors = err.read()
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[2:5]} failed ({proc.returncode}): {(out + errors)[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=TURNS)
    opts = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "custody"
        started = time.perf_counter()
        _populate(data, opts.turns)
        print(f"{opts.turns} turns ({5 * opts.turns} entries) written in"
              f" {time.perf_counter() - started:.1f} s")  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")},
            "CUSTODY_DATA_DIR": str(data),
            "PYTHONPATH": str(REPO),
        }
        py = sys.executable
        base_s, base_mb, _ = _run([py, "-c", _BASELINE_EXPORT, f"{tmp}/plain.zip"], env)
        bundle = f"{tmp}/bundle.zip"
        exp_s, exp_mb, out = _run(
            [py, "-m", "governance.cli", "export", "--tenant", "acme", "--disclose", "all",
             "--out", bundle],
            env,
        )  # fmt: skip
        vkey = out.rsplit("--log-key '", 1)[1].split("'")[0]
        vbase_s, vbase_mb, _ = _run([py, "-c", _BASELINE_VERIFY, bundle], env)
        ver_s, ver_mb, report = _run(
            [py, "-m", "governance.cli", "verify-bundle", bundle, "--log-key", vkey], env
        )
        assert "VERIFIES" in report, report[-2000:]
        size_mb = Path(bundle).stat().st_size / 2**20
        print(f"bundle: {size_mb:.1f} MiB")
        print(
            f"export:        {exp_s:6.1f} s, peak RSS {exp_mb:5.0f} MiB   (baseline: leaves into"
            f" a zip {base_s:.1f} s, {base_mb:.0f} MiB; ratio {exp_s / base_s:.1f}x time,"
            f" {exp_mb / base_mb:.1f}x memory)"
        )
        print(
            f"verify-bundle: {ver_s:6.1f} s, peak RSS {ver_mb:5.0f} MiB   (baseline: hash every"
            f" member {vbase_s:.1f} s, {vbase_mb:.0f} MiB; ratio {ver_s / vbase_s:.1f}x time,"
            f" {ver_mb / vbase_mb:.1f}x memory)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
