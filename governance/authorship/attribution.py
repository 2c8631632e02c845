"""Where the final version's pixels came from, walked from its upload along its parents.

Method (stated in every report): every pixel starts as what the first version of the chain is:
human-provided for an upload, generated whole for an image the model made from text. An edit
with masks marks the pixels inside the masks' white area (value ≥ 128, scaled to the final
version's size) as generated inside a mask and leaves the rest as it was; an edit without a mask
marks every pixel as generated whole; a rollback takes its target's map unchanged. Pixels of an
edit whose mask can no longer be opened (erased) count as ``unknown``. The figures state what the
human allowed the model to change, not a comparison of pixel values.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from governance.authorship.record import Opener, Version

HUMAN, IN_MASK, WHOLE, UNKNOWN = 0, 1, 2, 3
NAMES = {
    HUMAN: "human_provided",
    IN_MASK: "generated_inside_masks",
    WHOLE: "generated_whole",
    UNKNOWN: "unknown",
}
METHOD = (
    "Each pixel of the final version is traced along its chain of versions back to the first:"
    " an upload's pixels are human-provided; an edit with a drawn mask marks the pixels in the"
    " mask's white area as generated inside a mask and keeps the rest; an edit without a mask"
    " marks the whole image as generated; a rollback keeps its target's pixels. This counts what"
    " the human allowed the model to change; it does not compare pixel values."
)
GRID = 256  # the map's longer side when the final version's size is unknown


def _chain(versions: dict[str, Version], final: str) -> list[Version]:
    out: list[Version] = []
    seen: set[str] = set()
    current: str | None = final
    while current is not None and current in versions and current not in seen:
        seen.add(current)
        out.append(versions[current])
        current = versions[current].parent
    return list(reversed(out))


def _mask(data: bytes | None, size: tuple[int, int]) -> np.ndarray | None:
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as img:
        grey = img.convert("L").resize(size, Image.Resampling.NEAREST)
        return np.asarray(grey) >= 128


def attribute(
    versions: dict[str, Version],
    final: str,
    opener: Opener | None,
    size: tuple[int, int] | None,
) -> dict[str, Any]:
    """The attribution overview of version ``final``: pixel counts and percentages per origin,
    the steps of its chain, and the method. ``size`` is the final version's (width, height)."""
    chain = _chain(versions, final)
    width, height = size or (GRID, GRID)
    labels = np.full((height, width), HUMAN, dtype=np.uint8)
    steps: list[dict[str, Any]] = []
    for v in chain:
        step: dict[str, Any] = {"version": v.version, "kind": v.kind, "index": v.index}
        if v.kind == "upload":
            labels[:] = HUMAN
        elif v.kind == "rollback":
            pass  # its target's pixels, unchanged
        elif not v.masks:
            labels[:] = WHOLE
        else:
            union = np.zeros((height, width), dtype=bool)
            known = True
            for commitment in v.masks:
                mask = _mask(opener(commitment) if opener else None, (width, height))
                if mask is None:
                    known = False
                    break
                union |= mask
            labels[:] = UNKNOWN if not known else np.where(union, IN_MASK, labels)
            step["mask_share"] = round(float(union.mean()) * 100, 2) if known else None
        steps.append(step)
    if chain and chain[0].kind != "upload":
        steps[0]["note"] = "the chain starts at a version the model made from text"
    total = int(labels.size)
    counts = {NAMES[k]: int((labels == k).sum()) for k in NAMES}
    return {
        "version": final,
        "pixels": total,
        "width": width,
        "height": height,
        "counts": counts,
        "percent": {k: round(c * 100 / total, 2) for k, c in counts.items()},
        "chain": steps,
        "method": METHOD,
    }
