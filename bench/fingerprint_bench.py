"""Fingerprint lookup at 10⁶ images on SQLite and PostgreSQL, and what hashing costs per output.

1. **Lookup.** A migrated database gets ``--images`` (default 10⁶) synthesised fingerprint rows
   (uniformly random 256-bit PDQ hashes, the worst case for the band index: every band value
   equally likely, so the most candidates per probe), in two tenants, bulk-inserted (COPY on
   PostgreSQL). Then ``--lookups`` searches through ``storage.fingerprint_index.find_similar``,
   alternating a copy of a stored hash with 8–31 bits flipped (it must be found, and only it) and
   a fresh random hash (nothing may be found). Reported: p50 and p95 per lookup. Target (issue
   18): p95 ≤ 50 ms.
3. **Robustness.** The PDQ and ISCC distances of changed copies (re-encoded, resized,
   brightness, contrast, crops, rotations) of the repository's photographs: the table of
   docs/provenance.md.
2. **Hashing cost.** PDQ + ISCC Image-Code (``governance.provenance.fingerprint``) of an output
   against ``OutputSigner.sign_output`` of the same bytes, alternating, same run: the ratio of the
   medians, for 512², 1024² and 2048² PNG and JPEG. Then each step of a fingerprint in CPU time
   of the thread (``time.thread_time``, minimum of ``--rounds``; wall-clock says little on a shared
   machine): PNG inflate and re-wrap, Pillow's decode, EXIF transposition, the 512 px reduction,
   PDQ, ISCC. ``--gateway-malloc`` first sets glibc's malloc as ``custody serve`` does by default
   (2 arenas, a fixed 1 MiB mmap threshold: every larger buffer is a fresh mapping), which is
   what a turn pays; ``--steps`` measures only the steps.

``python -m bench.fingerprint_bench [sqlite] [postgres] [--images N] [--lookups N] [--steps]
[--rounds N] [--gateway-malloc]``; ``CUSTODY_BENCH_QUICK=1`` uses 10⁵ images. PostgreSQL:
``CUSTODY_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``); a scratch
database is created and dropped.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps
from sqlalchemy import Engine, create_engine

from bench.c2pa_bench import FORMATS, SIZES, _context, _image
from governance.cli import tune_malloc
from governance.provenance import fingerprint as fp
from governance.provenance.fingerprint import (
    Fingerprint,
    fingerprint,
    iscc_distance,
    pdq_distance,
)
from governance.provenance.pki import ensure_dev_pki
from governance.provenance.signer import FileKeyBackend, OutputSigner
from governance.settings import Settings
from storage.db import migrate, normalise_url
from storage.fingerprint_index import FINGERPRINT_COLUMNS, MAX_DISTANCE, find_similar, pdq_bands

PG_ADMIN_URL = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 20_000


def _rows(count: int, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for n in range(count):
        pdq = f"{rng.getrandbits(256):064x}"
        yield (
            f"{n:032x}",
            "acme" if n % 2 == 0 else "globex",
            "output",
            "output",
            0,
            0,
            "0" * 64,
            pdq,
            100,
            "ISCC:EEAYAAAAAAAAAAAA",
            *pdq_bands(pdq),
            n,
        )


def _fill_sqlite(engine: Engine, count: int, rng: random.Random) -> None:
    marks = ", ".join("?" for _ in FINGERPRINT_COLUMNS)
    sql = f"INSERT INTO image_fingerprints ({', '.join(FINGERPRINT_COLUMNS)}) VALUES ({marks})"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        rows = _rows(count, rng)
        while batch := [row for _, row in zip(range(BATCH), rows, strict=False)]:
            cur.executemany(sql, batch)
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()


def _fill_postgres(engine: Engine, count: int, rng: random.Random) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        columns = ", ".join(FINGERPRINT_COLUMNS)
        with cur.copy(f"COPY image_fingerprints ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in _rows(count, rng):
                copy.write_row(row)
        raw.commit()
        cur.execute("ANALYZE image_fingerprints")
        raw.commit()
    finally:
        raw.close()


@contextmanager
def _database(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="custody-fp-bench-"))
        yield f"sqlite:///{folder / 'fp.db'}"
        return
    import psycopg

    name = f"custody_fp_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        print(f"  PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}; not measured")
        yield None
        return
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for bit in bits:
        value ^= 1 << bit
    return f"{value:064x}"


def lookup_bench(kind: str, images: int, lookups: int) -> None:
    with _database(kind) as url:
        if url is None:
            return
        migrate(url)
        engine = create_engine(normalise_url(url))
        try:
            rng = random.Random(18)
            t = time.perf_counter()
            (_fill_sqlite if kind == "sqlite" else _fill_postgres)(engine, images, rng)
            fill_s = time.perf_counter() - t
            # The stored hashes are replayed from the same seed to pick known targets.
            replay = random.Random(18)
            targets = {}
            for n in range(min(images, 5000)):
                pdq = f"{replay.getrandbits(256):064x}"
                if n % 2 == 0:  # acme's
                    targets[f"{n:032x}"] = pdq
            probe_rng = random.Random(7)
            picks = list(targets.items())
            times, wrong = [], 0
            for n in range(lookups):
                if n % 2 == 0:
                    turn, pdq = probe_rng.choice(picks)
                    query = _flip(pdq, probe_rng.sample(range(256), probe_rng.randint(8, 31)))
                else:
                    turn, query = "", f"{probe_rng.getrandbits(256):064x}"
                t = time.perf_counter()
                found = find_similar(engine, query, tenant="acme", max_distance=MAX_DISTANCE)
                times.append((time.perf_counter() - t) * 1000)
                if [m.turn_id for m in found] != ([turn] if turn else []):
                    wrong += 1
            times.sort()
            p50 = statistics.median(times)
            p95 = times[int(len(times) * 0.95) - 1]
            print(
                f"{kind:<10}{images:>10,} images (filled in {fill_s:5.1f} s)  {lookups} lookups:"
                f" p50 {p50:5.1f} ms  p95 {p95:5.1f} ms  wrong answers {wrong}"
                f"  (target p95 <= 50 ms: {'met' if p95 <= 50 else 'NOT met'})",
                flush=True,
            )
        finally:
            engine.dispose()


def hashing_cost(rounds: int = 9) -> None:
    folder = Path(tempfile.mkdtemp(prefix="custody-fp-bench-pki-"))
    pki = ensure_dev_pki(folder)
    backend = FileKeyBackend(pki.signer_chain.read_bytes(), pki.signer_key.read_bytes())
    signer = OutputSigner(backend, pki.root_cert.read_text(), development=True)
    print(f"{'image':<12}{'bytes':>11}{'sign p50':>10}{'PDQ+ISCC p50':>14}{'ratio':>8}")
    for size in SIZES:
        for fmt, mime in FORMATS:
            data = _image(size, fmt)
            ctx = _context(mime, data)
            signer.sign_output(data, mime, ctx)
            fingerprint(data)
            signs, hashes = [], []
            for _ in range(rounds):
                t = time.perf_counter()
                signer.sign_output(data, mime, ctx)
                signs.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                fingerprint(data)
                hashes.append((time.perf_counter() - t) * 1000)
            sp, hp = statistics.median(signs), statistics.median(hashes)
            print(
                f"{fmt + ' ' + str(size) + '²':<12}{len(data):>11,}{sp:>8.1f}ms{hp:>12.1f}ms"
                f"{hp / sp:>7.2f}x",
                flush=True,
            )
    print(
        "ratio: computing both fingerprints of an output (decode, 512 px PDQ, 32x32 ISCC) over"
        " signing the same bytes (sign_output, full manifest); both in the signing worker thread."
    )


STEPS = ("inflate + re-wrap", "Pillow decode", "EXIF transpose", "reduce to 512", "PDQ", "ISCC")


def _steps(data: bytes, spent: dict[str, list[float]]) -> None:
    """One fingerprint, step by step as ``fingerprint`` takes them, each step's CPU into spent."""
    clock = time.thread_time
    t0 = clock()
    inflated = fp.inflated_png(data)
    t1 = clock()
    with Image.open(io.BytesIO(inflated or data)) as image:
        image.draft("RGB", (fp.PDQ_SIDE, fp.PDQ_SIDE))
        image.load()
        t2 = clock()
        ImageOps.exif_transpose(image, in_place=True)
        t3 = clock()
        small = fp._reduced(image)
        t4 = clock()
        fp._pdq(small)
        t5 = clock()
        fp._iscc(small)
        t6 = clock()
    for name, (a, b) in zip(STEPS, itertools.pairwise((t0, t1, t2, t3, t4, t5, t6)), strict=True):
        spent[name].append((b - a) * 1000)


def hashing_steps(rounds: int = 15) -> None:
    """CPU of each step of a fingerprint and of ``fingerprint`` itself: minimum of ``rounds``."""
    print(f"{'image':<12}" + "".join(f"{name:>19}" for name in (*STEPS, "fingerprint()")))
    for size in SIZES:
        for fmt, _ in FORMATS:
            data = _image(size, fmt)
            spent: dict[str, list[float]] = {name: [] for name in (*STEPS, "fingerprint()")}
            for _ in range(rounds):
                _steps(data, spent)
                t = time.thread_time()
                fingerprint(data)
                spent["fingerprint()"].append((time.thread_time() - t) * 1000)
            print(
                f"{fmt + ' ' + str(size) + '²':<12}"
                + "".join(f"{min(values):>17.2f}ms" for values in spent.values()),
                flush=True,
            )
    print(f"CPU time of the thread, minimum of {rounds} rounds per cell.")


PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos"
# sample1.png is IMG_0003.jpg as a PNG (PDQ distance 0): the same picture, counted once.
DISTINCT_PHOTOS = ("P1000827.jpg", "IMG_0003.jpg", "earth_apollo17.jpg", "mars.webp")


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _half(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)


def _crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((int(w * left), int(h * top), int(w * right), int(h * bottom)))


CHANGES = {
    "JPEG quality 70": lambda im: _jpeg(im, 70),
    "half size, JPEG quality 70 (the held-out copy)": lambda im: _jpeg(_half(im), 70),
    "quarter size, JPEG 85": lambda im: _jpeg(_half(_half(im))),
    "WebP quality 60": lambda im: _webp(im),
    "brightness +20 %": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
    "brightness -20 %": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.8)),
    "contrast +30 %": lambda im: _jpeg(ImageEnhance.Contrast(im).enhance(1.3)),
    "grayscale": lambda im: _jpeg(im.convert("L")),
    "crop 10 % off every side": lambda im: _jpeg(_crop(im, 0.1, 0.1, 0.9, 0.9)),
    "crop 25 % off one side": lambda im: _jpeg(_crop(im, 0, 0, 0.75, 1)),
    "rotation 5°": lambda im: _jpeg(im.rotate(5)),
    "rotation 90°": lambda im: _jpeg(im.rotate(90, expand=True)),
    "mirror": lambda im: _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
}


def _webp(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "WEBP", quality=60)
    return out.getvalue()


def robustness() -> None:
    """What a lookup finds: PDQ and ISCC distances of changed copies of the fixture photos."""
    found_by: dict[str, tuple[Fingerprint, Image.Image]] = {}
    for name in DISTINCT_PHOTOS:
        data = (PHOTOS / name).read_bytes()
        found = fingerprint(data)
        assert found is not None
        found_by[name] = (found, Image.open(io.BytesIO(data)).convert("RGB"))
    print(f"| change | PDQ distances ({', '.join(DISTINCT_PHOTOS)}) | found (≤ {MAX_DISTANCE}) |"
          " ISCC distances |")  # fmt: skip
    print("|---|---|---|---|")
    for change, make in CHANGES.items():
        pdq, iscc = [], []
        for original, image in found_by.values():
            copy = fingerprint(make(image))
            assert copy is not None
            pdq.append(pdq_distance(original.pdq, copy.pdq))
            iscc.append(iscc_distance(original.iscc, copy.iscc))
        found = sum(d <= MAX_DISTANCE for d in pdq)
        print(f"| {change} | {', '.join(map(str, pdq))} | {found} of {len(pdq)} |"
              f" {', '.join(map(str, iscc))} |")  # fmt: skip
    pairs = [
        (pdq_distance(a.pdq, b.pdq), iscc_distance(a.iscc, b.iscc))
        for (a, _), (b, _) in itertools.combinations(found_by.values(), 2)
    ]
    print(
        f"unrelated photographs (each pair): PDQ {min(p for p, _ in pairs)}–"
        f"{max(p for p, _ in pairs)}, ISCC {min(i for _, i in pairs)}–{max(i for _, i in pairs)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fingerprint_bench")
    parser.add_argument("kinds", nargs="*", default=["sqlite", "postgres"])
    quick = os.environ.get("CUSTODY_BENCH_QUICK") == "1"
    parser.add_argument("--images", type=int, default=100_000 if quick else 1_000_000)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--no-hashing", action="store_true")
    parser.add_argument("--steps", action="store_true", help="only the CPU of each hashing step")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--gateway-malloc", action="store_true")
    args = parser.parse_args(argv or [])
    if args.gateway_malloc:  # before the big buffers of the run: as `custody serve` starts
        defaults = Settings.model_fields
        arenas = defaults["malloc_arena_max"].default
        threshold = defaults["malloc_mmap_threshold"].default
        print(f"glibc malloc as custody serve sets it: {tune_malloc(arenas, threshold)}")
    if args.steps:
        hashing_steps(args.rounds)
        return
    for kind in args.kinds:
        lookup_bench(kind, args.images, args.lookups)
    if not args.no_hashing:
        hashing_cost()
        hashing_steps(args.rounds)
    robustness()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
