"""Detector signals for policy: a pluggable step that runs before the engine decides.

A detector looks at a turn's facts and returns named signals; each lands in ``input.signals`` and
in the decision record. The shipped ``PromptClassifier`` matches ALL the text the upstream reads —
system instruction, every earlier turn, the new turn, thought parts, structured parts and text
attachments — against term lists and regular expressions kept with the policy
(``custody/classifier/data.json``), so changing a list changes the bundle revision like any rule.
Text is matched in its folded form (``governance.policy.normalise``): zero-width characters,
homoglyphs, spaced-out letters and the like do not hide a term; a term of several words also
matches with its words run together (a hashtag, letters spaced across the word gap), and a
term followed by "s" (a plural, a possessive) still matches. "Do what I asked above" is caught
because the earlier turn is classified too.

A signal is ``{"matched": bool, "terms": [...], "patterns": [...], "fields": [...], "detector":
name}``: which listed terms matched, the indexes of the patterns that did and the fields they were
found in (``systemInstruction``, ``history`` (earlier user turns), ``model`` (earlier model
turns), ``new``, ``thought``, ``structured``, ``attachment``, and ``across_parts`` for a term
split over parts or turns) — never the user's words.

Cost is linear in the text: every term of every category is found in one Aho-Corasick pass, each
pattern is one bounded scan, and the parser caps the text before the classifier sees it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Protocol

import ahocorasick

from governance.policy.bundle import PolicyBundle
from governance.policy.decision import RequestFacts
from governance.policy.normalise import fold, variants, warm

CLASSIFIER_DATA = ("custody", "classifier", "categories")
FIELD_ACROSS = "across_parts"
MODEL_FIELDS = frozenset({"model", "thought"})  # text the model wrote in earlier turns


class Detector(Protocol):
    """Turns a request into named signals (``{"minors": {"matched": True, ...}}``)."""

    name: str

    def detect(self, facts: RequestFacts) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class _Category:
    name: str
    patterns: tuple[re.Pattern[str], ...]


def normalise(text: str) -> str:
    """The folded form the term lists are matched in (see ``governance.policy.normalise``)."""
    return fold(text)


_LITERAL_UPPER = re.compile(r"(?<!\\)[A-Z]")
# Around a boundary between two pieces, how far a pattern that spans it may reach.
SPAN_REACH = 160
# A term of several words also matches run together (``#ElonMusk``, ``T a y l o r S w i f t``
# joins to ``taylorswift``) when that form is this long: short ones ("my son") are other words.
SQUASHED_MIN = 8


def _compile(pattern: str) -> re.Pattern[str]:
    """The text is case-folded already; IGNORECASE (twice as slow) only for a capital literal."""
    flags = re.IGNORECASE if _LITERAL_UPPER.search(pattern) else 0
    return re.compile(pattern, flags)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


class _Hits:
    """What one category matched so far."""

    def __init__(self) -> None:
        self.terms: set[str] = set()
        self.patterns: set[int] = set()
        self.fields: set[str] = set()


class _Joined:
    """Pieces of text joined into one string, with the field of every offset."""

    def __init__(self, pieces: list[tuple[str, str]], sep: str) -> None:
        self.starts: list[int] = []
        self.fields: list[str] = []
        out: list[str] = []
        pos = 0
        for field_name, text in pieces:
            self.starts.append(pos)
            self.fields.append(field_name)
            out.append(text)
            pos += len(text) + len(sep)
        self.text = sep.join(out)

    def piece_at(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1


class PromptClassifier:
    """Matches all of a request's text against each category's terms (whole words) and patterns."""

    name = "prompt_terms"

    def __init__(self, categories: dict[str, Any]) -> None:
        warm()
        compiled = []
        automaton = ahocorasick.Automaton()
        by_term: dict[str, set[str]] = {}
        for cat_name, spec in sorted(categories.items()):
            for term in spec.get("terms", []):
                folded = fold(term) if isinstance(term, str) else ""
                if folded:
                    by_term.setdefault(folded, set()).add(cat_name)
                squashed = folded.replace(" ", "")
                if squashed != folded and len(squashed) >= SQUASHED_MIN:
                    by_term.setdefault(squashed, set()).add(cat_name)
            try:
                patterns = tuple(_compile(p) for p in spec.get("patterns", []))
            except re.error as exc:
                raise ValueError(f"classifier category {cat_name!r}: bad pattern: {exc}") from exc
            compiled.append(_Category(cat_name, patterns))
        for term, cats in by_term.items():
            automaton.add_word(term, (term, tuple(sorted(cats))))
        self._automaton = automaton if by_term else None
        if self._automaton is not None:
            self._automaton.make_automaton()
        self._categories = tuple(compiled)

    @classmethod
    def from_bundle(cls, bundle: PolicyBundle) -> PromptClassifier:
        """The classifier the bundle's data describes (no categories: it never matches)."""
        categories = bundle.data_at(*CLASSIFIER_DATA, default={})
        return cls(categories if isinstance(categories, dict) else {})

    def detect(self, facts: RequestFacts) -> dict[str, dict[str, Any]]:
        if facts.texts:
            return self.classify_texts(list(facts.texts))
        return self.classify(facts.prompt)

    def classify(self, prompt: str) -> dict[str, dict[str, Any]]:
        """One signal per category for one prompt text (the new turn alone)."""
        return self.classify_texts([("new", prompt)])

    def classify_texts(self, texts: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """One signal per category for every (field, text) piece of a request."""
        hits = {cat.name: _Hits() for cat in self._categories}
        forms = [variants(text) for _, text in texts]
        # Every form of every piece, one piece per line: matches inside one piece.
        within = _Joined([(f, "\n".join(v)) for (f, _), v in zip(texts, forms, strict=True)], "\n")
        self._terms(within, hits, spanning=False)
        self._patterns(within, hits, spanning=False)
        # The pieces run together — all of them, the caller's alone (a model turn between two
        # halves must not hide a split term), the model's alone: a term split over parts/turns.
        pieces = [(f, v[0]) for (f, _), v in zip(texts, forms, strict=True)]
        streams = [
            pieces,
            [p for p in pieces if p[0] not in MODEL_FIELDS],
            [p for p in pieces if p[0] in MODEL_FIELDS],
        ]
        seen: list[list[tuple[str, str]]] = []
        for stream in streams:
            if len(stream) > 1 and stream not in seen:
                seen.append(stream)
                across = _Joined(stream, "")
                self._terms(across, hits, spanning=True)
                self._patterns(across, hits, spanning=True)
        return {
            cat.name: {
                "matched": bool(hits[cat.name].terms or hits[cat.name].patterns),
                "terms": sorted(hits[cat.name].terms),
                "patterns": sorted(hits[cat.name].patterns),
                "fields": sorted(hits[cat.name].fields),
                "detector": self.name,
            }
            for cat in self._categories
        }

    def _record(self, joined: _Joined, start: int, end: int, spanning: bool, hit: _Hits) -> bool:
        first, last = joined.piece_at(start), joined.piece_at(max(end - 1, start))
        if spanning and first == last:
            return False  # found by the within-piece pass already
        hit.fields.update(joined.fields[first : last + 1])
        if spanning:
            hit.fields.add(FIELD_ACROSS)
        return True

    def _terms(self, joined: _Joined, hits: dict[str, _Hits], spanning: bool) -> None:
        if self._automaton is None:
            return
        text = joined.text
        for end, (term, cats) in self._automaton.iter(text):
            start = end - len(term) + 1
            if start > 0 and _is_word(text[start - 1]):
                continue
            after = end + 1
            if after < len(text) and text[after] == "s":  # a plural or a joined possessive
                after += 1
            if after < len(text) and _is_word(text[after]):
                continue
            for cat in cats:
                if self._record(joined, start, end + 1, spanning, hits[cat]):
                    hits[cat].terms.add(term)

    def _patterns(self, joined: _Joined, hits: dict[str, _Hits], spanning: bool) -> None:
        ranges = _around_boundaries(joined) if spanning else [(0, len(joined.text))]
        for cat in self._categories:
            for index, pattern in enumerate(cat.patterns):
                for start, end in ranges:
                    for m in pattern.finditer(joined.text, start, end):
                        if self._record(joined, m.start(), m.end(), spanning, hits[cat.name]):
                            hits[cat.name].patterns.add(index)


def _around_boundaries(joined: _Joined) -> list[tuple[int, int]]:
    """Merged windows of ``SPAN_REACH`` either side of every boundary between two pieces: only
    there can a match span pieces, so a spanning pass scans no more than that."""
    ranges: list[tuple[int, int]] = []
    for boundary in joined.starts[1:]:
        start, end = max(boundary - SPAN_REACH, 0), min(boundary + SPAN_REACH, len(joined.text))
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


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
