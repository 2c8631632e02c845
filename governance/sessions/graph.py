"""A session's version graph, in one form, from its index rows or from the ledger alone.

``graph_from_rows`` is what the API shows; ``rebuild_from_ledger`` reads only ledger leaves
(``session.created``, ``session.image_added``, ``lineage.recorded``, ``version.labelled``) and
must give the same value: the index is a copy, the ledger the record. Lists are sorted by id, so
two turns that closed in either order give one graph; times stay out (the index stamps its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PROVENANCE_FIELDS = ("source", "rights_holder", "licence", "identifiable_people", "consent")


def _empty(session_id: str, actor: str | None, origin: str | None) -> dict[str, Any]:
    return {
        "session": session_id,
        "actor": actor,
        "origin": origin,
        "images": [],
        "versions": [],
        "turns": [],
        "labels": [],
    }


def _sorted(graph: dict[str, Any]) -> dict[str, Any]:
    graph["images"].sort(key=lambda i: i["image"])
    graph["versions"].sort(key=lambda v: v["version"])
    graph["turns"].sort(key=lambda t: t["turn"])
    graph["labels"].sort(key=lambda lab: (lab["version"], lab["label"], lab["by"]))
    return graph


def graph_from_rows(
    session: dict[str, Any], rows: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The graph of ``session`` (its ``edit_sessions`` row) from ``SessionStore.graph_rows``."""
    graph = _empty(session["session_id"], session["actor"], session["origin"])
    graph["images"] = [
        {"image": i["image_id"], **{k: i[k] for k in PROVENANCE_FIELDS}} for i in rows["images"]
    ]
    graph["versions"] = [
        {
            "version": v["version_id"],
            "image": v["image_id"],
            "parent": v["parent_version"],
            "kind": v["kind"],
            "turn": v["turn_id"],
        }
        for v in rows["versions"]
    ]
    items: dict[str, list[dict[str, Any]]] = {}
    for item in sorted(rows["items"], key=lambda r: (r["turn_id"], r["position"])):
        items.setdefault(item["turn_id"], []).append(item)
    for t in rows["turns"]:
        mine = items.get(t["turn_id"], [])
        graph["turns"].append(
            {
                "turn": t["turn_id"],
                "kind": t["kind"],
                "status": t["status"],
                "intent": t["intent_id"],
                "targets": [i["version_id"] for i in mine if i["role"] == "target"],
                "masks": [i["commitment"] for i in mine if i["role"] == "mask"],
                "references": [
                    {"version": i["version_id"]}
                    if i["version_id"]
                    else {"content": i["commitment"]}
                    for i in mine
                    if i["role"] == "reference"
                ],
                "outputs": [i["version_id"] for i in mine if i["role"] == "output"],
            }
        )
    graph["labels"] = [
        {"version": lab["version_id"], "label": lab["label"], "by": lab["actor"]}
        for lab in rows["labels"]
    ]
    return _sorted(graph)


def rebuild_from_ledger(leaves: Iterable[dict[str, Any]], session_id: str) -> dict[str, Any]:
    """The graph of ``session_id`` from decoded ledger leaves alone (any order of reading is
    the ledger's: oldest first)."""
    graph = _empty(session_id, None, None)
    turns: dict[Any, dict[str, Any]] = {}
    for leaf in leaves:
        if leaf.get("session") != session_id:
            continue
        kind, body = leaf.get("type"), leaf.get("body") or {}
        if kind == "session.created":
            graph["actor"], graph["origin"] = leaf.get("actor"), body.get("origin")
        elif kind == "session.image_added":
            graph["images"].append(
                {"image": body["image"], **{k: body.get(k) for k in PROVENANCE_FIELDS}}
            )
            if body.get("version") is not None:
                graph["versions"].append(
                    {
                        "version": body["version"],
                        "image": body["image"],
                        "parent": None,
                        "kind": "upload",
                        "turn": body.get("turn"),
                    }
                )
        elif kind == "lineage.recorded":
            released = body.get("status") == "released"
            outputs = body.get("outputs", []) if released else []
            earlier = turns.get(body.get("turn"))
            if earlier is not None:  # a later slice of one turn's outputs (part of parts)
                earlier["outputs"] += [o["version"] for o in outputs]
            else:
                turns[body.get("turn")] = earlier = {
                    "turn": body.get("turn"),
                    "kind": body.get("kind"),
                    "status": body.get("status"),
                    "intent": body.get("intent"),
                    "targets": list(body.get("targets", [])),
                    "masks": list(body.get("masks", [])),
                    "references": list(body.get("references", [])),
                    "outputs": [o["version"] for o in outputs],
                }
                graph["turns"].append(earlier)
            for o in outputs:
                graph["versions"].append(
                    {
                        "version": o["version"],
                        "image": o["image"],
                        "parent": o["parent"],
                        "kind": o["kind"],
                        "turn": body.get("turn"),
                    }
                )
        elif kind == "version.labelled":
            graph["labels"].append(
                {"version": body["version"], "label": body["label"], "by": leaf.get("actor")}
            )
    return _sorted(graph)
