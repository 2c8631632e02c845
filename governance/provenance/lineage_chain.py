"""The version chain of a Custody image, read from its manifest store alone.

Each Custody manifest names its output's place in a session (``session`` in the
``com.custody.turn`` assertion) and holds the parent version as its one ``parentOf`` ingredient,
whose own manifest (an earlier Custody output) is kept in the store. Following those ingredients
gives the chain back to the upload: the first parent without Content Credentials (or with
someone else's).
"""

from __future__ import annotations

from typing import Any

from governance.provenance.types import ASSERTION_LABEL


def _custody(manifest: dict[str, Any]) -> dict[str, Any] | None:
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") == ASSERTION_LABEL:
            data = assertion.get("data")
            return data if isinstance(data, dict) else None
    return None


def lineage_chain(store: dict[str, Any]) -> list[dict[str, Any]]:
    """From the active manifest back along ``parentOf``: one entry per Custody version
    (``version``, ``parent_version``, ``kind``, ``session``, ``turn``), then the origin
    (``origin``: the parent ingredient's title, ``credentials``: whether it had any). Empty
    when the active manifest names no session."""
    manifests: dict[str, Any] = store.get("manifests") or {}
    label = store.get("active_manifest")
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    while isinstance(label, str) and label not in seen:
        seen.add(label)
        manifest = manifests.get(label) or {}
        custody = _custody(manifest)
        facts = (custody or {}).get("session")
        if not isinstance(facts, dict):
            if chain:  # an earlier output not in a session, or someone else's credentials
                chain.append({"origin": manifest.get("title"), "credentials": True})
            break
        chain.append({**facts, "turn": (custody or {}).get("turn_id")})
        parents = [
            i for i in manifest.get("ingredients") or [] if i.get("relationship") == "parentOf"
        ]
        if not parents:
            break
        label = parents[0].get("active_manifest")
        if label is None:
            chain.append({"origin": parents[0].get("title"), "credentials": False})
    return chain
