"""The signing step's time against c2pa-python's own lean signing of the same bytes, same run.

Custody's ``OutputSigner.sign_output`` (a full manifest: actions, Custody assertion,
training-mining, the upstream-credentials check, hashes for the record) against the floor: a
minimal manifest signed by c2pa-python with the same key and thumbnails off. Both alternate on
identical bytes, for 512², 1024² and 2048² PNG and JPEG. Target (issue 4): within 1.3x of the floor.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import c2pa
from PIL import Image

from governance.provenance.pki import ensure_dev_pki
from governance.provenance.signer import FileKeyBackend, OutputSigner
from governance.provenance.types import InputImage, ProvenanceContext
from governance.upstream.identity import UpstreamIdentity

SIZES = (512, 1024, 2048)
FORMATS = (("PNG", "image/png"), ("JPEG", "image/jpeg"))


def _image(size: int, fmt: str) -> bytes:
    # Noise over a gradient: compresses like a photograph, not like a flat test card.
    base = Image.radial_gradient("L").resize((size, size))
    noise = Image.effect_noise((size, size), 40)
    img = Image.merge("RGB", (base, noise, Image.blend(base, noise, 0.5)))
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def _context(mime: str, data: bytes, with_input: bool = True) -> ProvenanceContext:
    return ProvenanceContext(
        turn_id="bench",
        tenant="acme",
        actor="bench@acme",
        model="gemini-2.5-flash-image",
        model_version="custody-emulator-0.1",
        is_emulator=True,
        upstream=UpstreamIdentity("custody-emulator", "127.0.0.1"),
        inputs=[InputImage(data, mime, "0" * 64, "parent", "input 1")] if with_input else [],
        prompt_commitment="salted-sha256:" + "A" * 43,
        prompt_text=None,
        mask_commitments=[],
        policy={"bundle_revision": "0" * 64, "outcome": "allow", "reasons": []},
        approvals=[],
        ledger_ref={"log_origin": "custody.local/ledger", "turn_id": "bench", "leaf_index": 0},
        gateway_version="bench",
    )


def _lean(
    signer: c2pa.Signer, context: c2pa.Context, mime: str, data: bytes, *, hash_output: bool = False
) -> float:
    manifest = {
        "claim_generator_info": [{"name": "lean", "version": "1"}],
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/"
                            "trainedAlgorithmicMedia",
                        }
                    ]
                },
            }
        ],
    }
    t = time.perf_counter()
    builder = c2pa.Builder.from_json(manifest, context=context)
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(data), out)
    builder.close()
    if hash_output:  # what any caller must add: the released file's hash for the ledger
        hashlib.sha256(out.getbuffer()).hexdigest()
    return (time.perf_counter() - t) * 1000


def main(rounds: int = 15) -> None:
    folder = Path(tempfile.mkdtemp(prefix="custody-c2pa-bench-"))
    pki = ensure_dev_pki(folder)
    backend = FileKeyBackend(pki.signer_chain.read_bytes(), pki.signer_key.read_bytes())
    ours = OutputSigner(backend, pki.root_cert.read_text(), development=True)
    lean_signer = backend.make_signer()
    lean_context = c2pa.Context(
        c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    )
    print(
        f"{'image':<12}{'bytes':>11}{'lean p50':>10}{'lean+sha':>11}{'custody':>10}"
        f"{'/lean':>7}{'/+sha':>7}{'+ingredient':>13}{'/lean':>7}"
    )
    for size in SIZES:
        for fmt, mime in FORMATS:
            data = _image(size, fmt)
            bare, with_input = _context(mime, data, False), _context(mime, data)
            ours.sign_output(data, mime, with_input)  # warm up every path
            _lean(lean_signer, lean_context, mime, data)
            lean, lean_hashed, full, ingr = [], [], [], []
            for _ in range(rounds):
                lean.append(_lean(lean_signer, lean_context, mime, data))
                lean_hashed.append(_lean(lean_signer, lean_context, mime, data, hash_output=True))
                for ctx, out in ((bare, full), (with_input, ingr)):
                    t = time.perf_counter()
                    ours.sign_output(data, mime, ctx)
                    out.append((time.perf_counter() - t) * 1000)
            lp, hp, fp, ip = (statistics.median(x) for x in (lean, lean_hashed, full, ingr))
            print(
                f"{fmt + ' ' + str(size) + '²':<12}{len(data):>11,}{lp:>8.1f}ms{hp:>9.1f}ms"
                f"{fp:>8.1f}ms{fp / lp:>6.2f}x{fp / hp:>6.2f}x{ip:>11.1f}ms{ip / lp:>6.2f}x",
                flush=True,
            )
    print(
        "lean: c2pa-python, minimal manifest, same signer, thumbnails off; lean+sha: plus the"
        " SHA-256 of the signed file, which the ledger needs and sign_output returns; custody:"
        " sign_output with the full manifest; +ingredient: also the parent input (no credentials)"
        " as a described parentOf ingredient. Target: custody <= 1.3x lean."
    )


if __name__ == "__main__":
    main()
