"""Text as the policy's term lists see it: one canonical form for every way of writing a word.

Contract: ``fold(text)`` returns the matching form of ``text`` — Unicode NFKC, then canonical
decomposition with combining marks dropped (accents fold: ``beyoncé`` → ``beyonce``), format
characters (category Cf: zero-width spaces and joiners, bidi controls, soft hyphens) and invisible
fillers removed, case folded, confusable letters of other scripts folded to the Latin letter they
imitate (UTS #39 confusables: Cyrillic ``а`` → ``a``), whitespace collapsed, and runs of three or
more single letters joined (``w-a-t-e-r``, ``w a t e r``, ``w.a.t.e.r`` → ``water``). Unicode tag
characters (U+E0020–U+E007E, invisible on screen) are read as the ASCII they encode: models decode
them ("ASCII smuggling"). ``variants(text)`` adds the forms an evader relies on a reader to
reconstruct: text under a right-to-left override reversed as it is displayed, common
digit-for-letter substitutions, letter pairs read as one letter (``rn`` → ``m``, ``vv`` →
``w``), HTML character references, percent-encoding and base64 runs decoded, and punctuation or
underscores inside words read as spaces (``water_mark``, ``wAtEr.MaRk``, ``W_a_T_e_R``).
Regional-indicator, negative circled and squared letters and small capitals read as the letters
they show; ``©`` reads as "copyright".

Why: the upstream model reads through all of those tricks; a policy that compares raw strings
does not. The original text is never changed — it is what the record keeps — only matched.

The confusables come from the ``confusable-homoglyphs`` package, which ships Unicode's
confusables data; its table is symmetric (no prototype direction), so the fold maps only
non-ASCII characters, each to the ASCII letter (or digit) it is confusable with. ASCII text stays
as written, so the classifier's regular expressions keep matching ordinary prose.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import sys
import unicodedata
from importlib import resources
from urllib.parse import unquote

RLO, PDF = "\u202e", "\u202c"  # RIGHT-TO-LEFT OVERRIDE and the POP that ends it
# Invisible letters (category Lo/So, not Cf) used to split words: Hangul fillers, braille blank.
_INVISIBLE = ("\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s"})  # fmt: skip
# Three or more single letters, each apart from the next by one to three separators.
_SPACED = re.compile(r"(?<!\w)[^\W\d_](?:[^\w\n]{1,3}[^\W\d_](?!\w)){2,}")
# Punctuation and underscores, which a reader skips inside a word (not line breaks: pieces).
_INNER_SEPARATORS = re.compile(r"[^\w\s]+|_+")
_INSIDE_A_WORD = re.compile(r"[^\W_](?:[^\w\s]+|_+|-\s)[^\W_]")  # water_mark, water- mark
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")
TAGS = range(0xE0020, 0xE007F)  # TAG SPACE .. TAG TILDE: ASCII, invisibly
# Regional indicators (🇼), negative circled (🅦) and negative squared (🅰) letters: A–Z each.
_LETTER_BLOCKS = (0x1F1E6, 0x1F150, 0x1F170)
_SMALL_CAPITALS = "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘꞯʀꜱᴛᴜᴠᴡʏᴢ"  # a–z but x, which has none
# Letter pairs read as one letter (UTS #39 lists them): "waterrnark", "vvatermark".
_PAIRS = (("rn", "m"), ("vv", "w"))
# A run of base64 long enough to hold a sentence: models decode it and obey what it says.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")


@functools.cache
def _table() -> dict[int, str | None]:
    """One ``str.translate`` table: drop format and mark characters, fold confusables."""
    table: dict[int, str | None] = {}
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)) in ("Cf", "Mn", "Me"):
            table[cp] = None
    for ch in _INVISIBLE:
        table[ord(ch)] = None
    for cp in TAGS:
        table[cp] = chr(cp - 0xE0000)
    for first in _LETTER_BLOCKS:  # symbols that read as letters but have no decomposition
        for offset in range(26):
            table[first + offset] = chr(ord("a") + offset)
    for small, letter in zip(_SMALL_CAPITALS, "abcdefghijklmnopqrstuvwyz", strict=True):
        table[ord(small)] = letter
    table[ord("\u00a9")] = " copyright "  # ©
    table[ord("\u2019")] = "'"
    table[ord("\u2018")] = "'"
    source = resources.files("confusable_homoglyphs").joinpath("confusables.json")
    confusables: dict[str, list[str]] = {
        key: [e["c"] for e in entries]
        for key, entries in json.loads(source.read_text(encoding="utf-8")).items()
        if len(key) == 1 and not key.isascii()
    }
    for key, similar in confusables.items():
        if ord(key) in table:
            continue
        targets = [c for c in similar if c.isascii() and c.isalnum()]
        if targets:
            upper = key != key.lower()  # a capital imitates a capital: Greek Ι is I, not l
            best = min(targets, key=lambda t: (len(t), not t.isalpha(), t.isupper() != upper, t))
            if upper and best == "l":  # UTS #39's prototype of the I/l/1 class is "l"
                best = "I"
            table[ord(key)] = best.lower()
    _fold_through_lookalikes(table, confusables)
    return table


def _fold_through_lookalikes(
    table: dict[int, str | None], confusables: dict[str, list[str]]
) -> None:
    """Fold, in ``table``, the letters confusable only with other non-ASCII letters that fold.

    UTS #39 gives some letters a non-ASCII prototype: Greek ``τ`` and Cyrillic ``т`` are listed
    as small capital ``ᴛ``, Cyrillic ``к`` as ``ĸ`` (itself ``ᴋ``), ``м`` as ``ʍ`` (``ᴍ``). In
    a lower-case word they read as ``t``, ``k``, ``m`` (``wατermαrk``), so each takes the ASCII
    letter of a confusable that already folds, following at most three such steps."""
    for _ in range(3):
        found: dict[int, str] = {}
        for key, similar in confusables.items():
            if ord(key) in table:
                continue
            letters = sorted(
                {
                    folded
                    for c in similar
                    if len(c) == 1
                    and (folded := table.get(ord(c))) is not None
                    and folded.isascii()
                    and folded.isalpha()
                }
            )
            if letters:
                found[ord(key)] = letters[0]
        if not found:
            return
        table.update(found)


def _join_spaced(match: re.Match[str]) -> str:
    return "".join(c for c in match.group() if c.isalpha())


def _fold_raw(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    table = _table()  # before and after case folding: the table has both cases' confusables
    text = unicodedata.normalize("NFD", text).translate(table).casefold().translate(table)
    return " ".join(unicodedata.normalize("NFC", text).split())


def fold(text: str) -> str:
    """The matching form of ``text`` (see the module docstring)."""
    return _SPACED.sub(_join_spaced, _fold_raw(text))


def _displayed(text: str) -> str:
    """``text`` with each right-to-left-override run reversed, as a reader sees it."""
    out: list[str] = []
    for i, segment in enumerate(text.split(RLO)):
        if i == 0:
            out.append(segment)
            continue
        overridden, _, rest = segment.partition(PDF)
        out.append(overridden[::-1] + rest)
    return "".join(out)


def _base64_text(text: str) -> str | None:
    """The text that the base64 runs in ``text`` decode to, where they decode to text."""
    found = []
    for match in _BASE64_RUN.finditer(text):
        run = match.group().rstrip("=")
        altchars = b"-_" if "-" in run or "_" in run else None
        try:
            data = base64.b64decode(run + "=" * (-len(run) % 4), altchars=altchars, validate=True)
            decoded = data.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if decoded.isprintable() or all(c.isprintable() or c.isspace() for c in decoded):
            found.append(decoded)
    return " ".join(found) if found else None


def _decoded(text: str) -> list[str]:
    """``text``; then as a reader of HTML entities and percent-encoding (repeated) reads it, in
    one form; then the text its base64 runs decode to. Each form only if it differs."""
    out = [text]
    decoded = html.unescape(text) if "&" in text else text
    for _ in range(3):  # %2520 is a percent-encoded %20
        if not _PERCENT.search(decoded):
            break
        decoded = unquote(decoded)
    if decoded != text:
        out.append(decoded)
    if len(text) >= 16:
        inner = _base64_text(text)
        if inner:
            out.append(inner)
    return out


def _read_as(raw: str) -> str:
    """``raw`` with digits read as letters and letter pairs read as one letter."""
    if any(c in raw for c in "013457@$"):
        raw = raw.translate(_LEET)
    for pair, letter in _PAIRS:
        raw = raw.replace(pair, letter)
    return raw


def variants(text: str) -> list[str]:
    """``fold(text)`` first, then the other forms it may be read as (each distinct, folded).

    At most four forms of each decoding of ``text`` (as written, read as a reader reads it, each
    with inner punctuation as spaces), so the classifier's cost stays a small multiple of the
    text's length."""
    forms: list[str] = []
    for source in _decoded(text):
        raw = _fold_raw(source)
        for form in dict.fromkeys((raw, _read_as(raw))):
            forms.append(_SPACED.sub(_join_spaced, form))
            if _INSIDE_A_WORD.search(form):
                spaced = " ".join(_INNER_SEPARATORS.sub(" ", form).split())
                forms.append(_SPACED.sub(_join_spaced, spaced))
    if RLO in text:
        forms.append(fold(_displayed(text)))
    return list(dict.fromkeys(forms))


def warm() -> None:
    """Build the translation table now (about a second, once) rather than on the first turn."""
    _table()
