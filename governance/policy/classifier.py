"""Detector signals for policy: a pluggable step that runs before the engine decides.

A detector looks at a turn's facts and returns named signals; each lands in ``input.signals`` and
in the decision record. The shipped ``PromptClassifier`` matches the prompt against term lists
and regular expressions kept with the policy (``custody/classifier/data.json``), so changing a
list changes the bundle revision like any rule.

A signal is ``{"matched": bool, "terms": [...], "patterns": [...], "detector": name}``: which
listed terms matched and the indexes of the patterns that did — never the user's own words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

from governance.policy.bundle import PolicyBundle
from governance.policy.decision import RequestFacts

CLASSIFIER_DATA = ("custody", "classifier", "categories")


class Detector(Protocol):
    """Turns a request into named signals (``{"minors": {"matched": True, ...}}``)."""

    name: str

    def detect(self, facts: RequestFacts) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class _Category:
    name: str
    terms: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]


def normalise(text: str) -> str:
    """Lower case, accents folded, whitespace collapsed: what the term lists are written in."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(folded.lower().replace("’", "'").split())


class PromptClassifier:
    """Matches the prompt against each category's terms (whole words) and patterns."""

    name = "prompt_terms"

    def __init__(self, categories: dict[str, Any]) -> None:
        compiled = []
        for cat_name, spec in sorted(categories.items()):
            terms = sorted({normalise(t) for t in spec.get("terms", []) if t.strip()}, key=len)
            term_re = (
                re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms[::-1]) + r")(?!\w)")
                if terms
                else None
            )
            try:
                patterns = tuple(re.compile(p, re.IGNORECASE) for p in spec.get("patterns", []))
            except re.error as exc:
                raise ValueError(f"classifier category {cat_name!r}: bad pattern: {exc}") from exc
            compiled.append(_Category(cat_name, term_re, patterns))
        self._categories = tuple(compiled)

    @classmethod
    def from_bundle(cls, bundle: PolicyBundle) -> PromptClassifier:
        """The classifier the bundle's data describes (no categories: it never matches)."""
        categories = bundle.data_at(*CLASSIFIER_DATA, default={})
        return cls(categories if isinstance(categories, dict) else {})

    def detect(self, facts: RequestFacts) -> dict[str, dict[str, Any]]:
        return self.classify(facts.prompt)

    def classify(self, prompt: str) -> dict[str, dict[str, Any]]:
        """One signal per category for this prompt text."""
        text = normalise(prompt)
        signals: dict[str, dict[str, Any]] = {}
        for cat in self._categories:
            terms = sorted(set(cat.terms.findall(text))) if cat.terms else []
            patterns = [i for i, p in enumerate(cat.patterns) if p.search(text)]
            signals[cat.name] = {
                "matched": bool(terms or patterns),
                "terms": terms,
                "patterns": patterns,
                "detector": self.name,
            }
        return signals


def run_detectors(detectors: tuple[Detector, ...], facts: RequestFacts) -> dict[str, Any]:
    """Every detector's signals; a failing detector yields a matched error signal instead."""
    signals: dict[str, Any] = {}
    for detector in detectors:
        try:
            signals.update(detector.detect(facts))
        except Exception as exc:
            signals[f"{detector.name}.error"] = {
                "matched": True,
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "detector": detector.name,
            }
    return signals
