"""A session's chronological record of acts, built only from its ledger leaves.

Each act says who did it (``human`` or ``ai``), what, and which ledger entries state it
(``entries``: index and event type). Human acts: creating the session, uploads with their stated
provenance, prompts written, masks drawn, candidates chosen (an edit of a version that was not
the newest of its image: a branch) and rejected (a rollback: the versions it leaves behind),
labels, review decisions with the reviewer. AI acts: a model (and the version it reported) making
versions. ``opener`` opens a commitment (a prompt) when the caller may read content; without it
acts show the commitment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Opener = Callable[[str], bytes | None]
PROVENANCE_FIELDS = ("source", "rights_holder", "licence", "identifiable_people", "consent")


def _ref(leaf: dict[str, Any]) -> dict[str, Any]:
    return {"index": leaf["index"], "type": leaf["type"]}


@dataclass
class Version:
    version: str
    image: str
    parent: str | None
    kind: str  # upload | edit | rollback
    turn: str | None
    index: int  # the entry that states it
    masks: list[str] = field(default_factory=list)  # commitments of the turn's masks
    model: str | None = None


@dataclass
class Record:
    session: str
    acts: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Version] = field(default_factory=dict)
    ai_systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)

    def act(self, who: str, kind: str, leaf: dict[str, Any], text: str, **more: Any) -> None:
        refs = [_ref(leaf), *more.pop("also", [])]
        self.acts.append(
            {
                "n": len(self.acts) + 1,
                "who": who,
                "kind": kind,
                "actor": leaf.get("actor"),
                "time_ms": leaf.get("time_ms"),
                "turn": leaf.get("turn"),
                "text": text,
                "entries": refs,
                **more,
            }
        )


def _by_turn(leaves: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    turns: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for leaf in leaves:
        if leaf.get("turn"):
            turns.setdefault(leaf["turn"], {}).setdefault(leaf["type"], []).append(leaf)
    return turns


def _prompt(body: dict[str, Any], opener: Opener | None) -> dict[str, Any]:
    commitment = body.get("prompt")
    shown: dict[str, Any] = {"commitment": commitment, "chars": body.get("prompt_chars")}
    if commitment and opener is not None:
        data = opener(commitment)
        shown["text"] = data.decode("utf-8", "replace") if data is not None else None
        shown["erased"] = data is None
    return shown


def _short(version: str | None) -> str:
    return version or "-"


def build_record(leaves: list[dict[str, Any]], session_id: str, opener: Opener | None) -> Record:
    """The record of ``session_id`` from its leaves (oldest first)."""
    rec = Record(session_id)
    # A turn's lineage entry names its turn in its body (the leaf's ``turn`` is unset).
    leaves = [
        {**leaf, "turn": (leaf.get("body") or {}).get("turn")}
        if leaf["type"] == "lineage.recorded" and not leaf.get("turn")
        else leaf
        for leaf in leaves
    ]
    turns = _by_turn(leaves)
    lineage = {
        t: evs["lineage.recorded"][0] for t, evs in turns.items() if "lineage.recorded" in evs
    }
    latest: dict[str, str] = {}  # image -> its newest version so far
    for leaf in leaves:
        kind, body = leaf["type"], leaf.get("body") or {}
        if kind == "session.created":
            rec.act("human", "session", leaf, f"Created the session ({body.get('origin')}).")
        elif kind == "session.image_added" and body.get("version"):
            facts = {k: body.get(k) for k in PROVENANCE_FIELDS}
            stated = ", ".join(
                f"{k.replace('_', ' ')}: {v}" for k, v in facts.items() if v is not None
            )
            rec.versions[body["version"]] = Version(
                body["version"], body["image"], None, "upload", body.get("turn"), leaf["index"]
            )
            latest[body["image"]] = body["version"]
            upload = {"version": body["version"], "image": body["image"], **facts}
            rec.uploads.append(upload)
            rec.act(
                "human",
                "upload",
                leaf,
                f"Provided image {body['image']} as version {body['version']}"
                f" (stated provenance: {stated or 'none'}).",
                version=body["version"],
                provenance=facts,
                content=body.get("content"),
            )
        elif kind == "turn.received":
            turn = leaf["turn"]
            lin = lineage.get(turn)
            lbody = (lin or {}).get("body") or {}
            if lbody.get("kind") == "rollback":
                continue  # stated by its lineage entry below: a selection, not a prompt
            prompt = _prompt(body, opener)
            wording = (
                f"Wrote the prompt {prompt['text']!r}."
                if prompt.get("text") is not None
                else f"Wrote a prompt of {prompt['chars']} characters (commitment"
                f" {prompt['commitment']})."
            )
            rec.act("human", "prompt", leaf, wording, prompt=prompt, model=body.get("model"))
            for target in lbody.get("targets", []):
                image = rec.versions[target].image if target in rec.versions else None
                if image is not None and latest.get(image) not in (None, target):
                    rec.act(
                        "human",
                        "selection",
                        leaf,
                        f"Chose version {target} to continue from, not the newest version"
                        f" {latest[image]} of its image (a branch).",
                        also=[_ref(lin)] if lin else [],
                        version=target,
                        rejected=[latest[image]],
                    )
            for n, mask in enumerate(lbody.get("masks", []), 1):
                rec.act(
                    "human",
                    "mask",
                    leaf,
                    f"Drew mask {n} on {', '.join(lbody.get('targets', [])) or 'the input'},"
                    " limiting where the model may change the image"
                    f" (commitment {mask}).",
                    also=[_ref(lin)] if lin else [],
                    mask=mask,
                )
        elif kind == "lineage.recorded":
            _lineage(rec, leaf, body, turns.get(leaf["turn"], {}), latest)
        elif kind == "version.labelled":
            rec.act(
                "human",
                "label",
                leaf,
                f"Labelled version {body.get('version')} {body.get('label')!r}.",
                version=body.get("version"),
                label=body.get("label"),
            )
        elif kind == "review.decided":
            rec.act(
                "human",
                "review",
                leaf,
                f"Reviewer {body.get('credit')} decided {body.get('decision')!r} on the turn"
                f" (task {body.get('task')}, {body.get('stage')} stage).",
                reviewer=body.get("credit"),
                decision=body.get("decision"),
            )
    return rec


def _lineage(
    rec: Record,
    leaf: dict[str, Any],
    body: dict[str, Any],
    events: dict[str, list[dict[str, Any]]],
    latest: dict[str, str],
) -> None:
    outputs = body.get("outputs", []) if body.get("status") == "released" else []
    received = (events.get("turn.received") or [{}])[0]
    model = (received.get("body") or {}).get("model")
    if body.get("kind") == "rollback":
        for out in outputs:
            target = out.get("parent")
            rejected = _left_behind(rec, latest.get(out["image"]), target)
            rec.versions[out["version"]] = Version(
                out["version"], out["image"], target, "rollback", leaf["turn"], leaf["index"]
            )
            latest[out["image"]] = out["version"]
            rec.act(
                "human",
                "rollback",
                leaf,
                f"Rolled back to version {_short(target)} (new version {out['version']}),"
                f" rejecting {', '.join(rejected) or 'no later version'}.",
                version=out["version"],
                chosen=target,
                rejected=rejected,
            )
        return
    returned = events.get("upstream.returned") or []
    model_version = next(
        (r["body"].get("model_version") for r in returned if r["body"].get("model_version")), None
    )
    signed = events.get("output.signed") or []
    for out in outputs:
        rec.versions[out["version"]] = Version(
            out["version"],
            out["image"],
            out.get("parent"),
            out.get("kind", "edit"),
            leaf["turn"],
            leaf["index"],
            masks=list(body.get("masks", [])),
            model=model,
        )
        latest[out["image"]] = out["version"]
    if not outputs:
        if body.get("status") != "released":
            rec.act("ai", "failed", leaf, "The turn produced no version (it failed).")
        return
    if model:
        system = rec.ai_systems.setdefault(
            model, {"model": model, "model_versions": [], "turns": 0, "entries": []}
        )
        if model_version and model_version not in system["model_versions"]:
            system["model_versions"].append(model_version)
        system["turns"] += 1
        system["entries"].append(_ref(leaf))
    masked = " inside the drawn mask" if body.get("masks") else " (whole image, no mask)"
    made = ", ".join(f"{o['version']} from {_short(o.get('parent'))}" for o in outputs)
    rec.act(
        "ai",
        "generation",
        leaf,
        f"{model or 'The model'}{f' (version {model_version})' if model_version else ''}"
        f" generated version {made}{masked}.",
        also=[_ref(r) for r in returned[-1:]] + [_ref(s) for s in signed],
        model=model,
        model_version=model_version,
        versions=[o["version"] for o in outputs],
    )


def _left_behind(rec: Record, newest: str | None, target: str | None) -> list[str]:
    """The versions from ``newest`` back to (not including) ``target``: what a rollback
    rejects."""
    out: list[str] = []
    seen = set()
    while newest is not None and newest != target and newest not in seen:
        seen.add(newest)
        out.append(newest)
        version = rec.versions.get(newest)
        newest = version.parent if version else None
    return out
