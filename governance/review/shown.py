"""What a reviewer is shown, as digests, and the one digest every decision commits to.

``Shown`` names the content a task puts in front of its reviewers: the request as received,
the prompt, each input image, each mask and each held output. Each is a SHA-256 hex digest or a
salted commitment (``salted-sha256:…``) from the blob store. ``digest`` is the SHA-256 of the
RFC 8785 canonical JSON of ``to_json()``: a decision carries it, and a decision whose digest is
not exactly its task's is refused, so an approval cannot be moved to other content; anyone
holding the same list recomputes the same digest in any language.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785

from governance.review.errors import ReviewError

REFERENCE = re.compile(r"^(?:[0-9a-f]{64}|salted-sha256:[A-Za-z0-9_-]{43})$")
MAX_ITEMS = 64


@dataclass(frozen=True)
class Shown:
    """Digests (or commitments) of everything the reviewer sees."""

    request: str
    prompt: str | None = None
    inputs: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        refs = [self.request, *self.inputs, *self.masks, *self.outputs]
        if self.prompt is not None:
            refs.append(self.prompt)
        bad = [r for r in refs if not isinstance(r, str) or not REFERENCE.match(r)]
        if bad or len(refs) > 1 + 4 * MAX_ITEMS:
            raise ReviewError(
                400,
                "What a reviewer is shown is named by SHA-256 hex digests or salted commitments"
                f" (salted-sha256:…), at most {MAX_ITEMS} of each kind; got {bad[:3]!r}.",
                "BAD_SHOWN",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "prompt": self.prompt,
            "inputs": list(self.inputs),
            "masks": list(self.masks),
            "outputs": list(self.outputs),
        }

    @property
    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON (RFC 8785) of ``to_json()``."""
        return shown_digest(self.to_json())

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Shown:
        return cls(
            request=doc["request"],
            prompt=doc.get("prompt"),
            inputs=_strings(doc.get("inputs", ())),
            masks=_strings(doc.get("masks", ())),
            outputs=_strings(doc.get("outputs", ())),
        )


def _strings(items: Sequence[Any]) -> tuple[str, ...]:
    return tuple(items)


def shown_digest(shown: Mapping[str, Any]) -> str:
    """The digest a decision must carry for a task that showed ``shown``."""
    return hashlib.sha256(rfc8785.dumps(dict(shown))).hexdigest()
