"""A policy input document handed to rego-cpp in one pass, with the cost of one C call per value.

``DocumentInput(document)`` is a ``regopy.Input`` built from plain JSON values (dict, list, tuple,
str, int, float, bool, None; sets become Rego sets) through rego-cpp's input builder, as regopy
does, without regopy's per-value wrappers and abstract-type checks: a turn's input builds in about
half the time. It must be built, used and freed on the engine thread that evaluates it (see
``engine_regopy``).

rego-cpp takes strings as C strings: a NUL character would silently end a string there, so that a
rule would read ``"remove"`` where the caller sent ``"remove\\x00 the watermark"``. NUL characters
(and lone surrogates, which are not text) reach the policy as U+FFFD instead. An integer outside
the signed 64-bit range is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NoReturn

from regopy import Input
from regopy.rego_shared import rego

from governance.policy import EngineError

_new = rego.regoNewInput
_free = rego.regoFreeInput
_int = rego.regoInputInt
_float = rego.regoInputFloat
_str = rego.regoInputString
_bool = rego.regoInputBoolean
_null = rego.regoInputNull
_item = rego.regoInputObjectItem
_object = rego.regoInputObject
_array = rego.regoInputArray
_set = rego.regoInputSet
_INT64 = range(-(2**63), 2**63)
_REPLACEMENT = "\ufffd".encode()


class DocumentInput(Input):  # type: ignore[misc]  # regopy ships no type information
    """A ``regopy.Input`` for ``document``; freed by regopy's own destructor."""

    def __init__(self, document: Any) -> None:
        handle = _new()
        if not handle:
            raise EngineError("rego-cpp could not allocate the policy input")
        try:
            _add(handle, document)
        except BaseException:
            _free(handle)
            raise
        self._impl = handle


def _add(handle: int, value: Any) -> None:
    # The hot loop of every decision: one C call per value, checks inlined, keys encoded once.
    kind = type(value)
    if kind is str:
        code = _str(handle, _c_string(value))
    elif kind is dict:
        for key, item in value.items():
            if code := _str(handle, _key(key if type(key) is str else str(key))):
                _refused(code)
            _add(handle, item)
            if code := _item(handle):
                _refused(code)
        code = _object(handle, len(value))
    elif kind is list or kind is tuple:
        for item in value:
            _add(handle, item)
        code = _array(handle, len(value))
    elif kind is bool:
        code = _bool(handle, value)
    elif kind is int:
        if value not in _INT64:
            raise EngineError(f"a number in the policy input is out of range: {value}")
        code = _int(handle, value)
    elif kind is float:
        code = _float(handle, value)
    elif value is None:
        code = _null(handle)
    elif kind is set or kind is frozenset:
        for item in value:
            _add(handle, item)
        code = _set(handle, len(value))
    else:
        raise EngineError(f"the policy input holds a {kind.__name__}, which is not JSON")
    if code:
        _refused(code)


_KEYS: dict[str, bytes] = {}  # object keys repeat on every decision; bounded, short keys only


def _key(key: str) -> bytes:
    data = _KEYS.get(key)
    if data is None:
        data = _c_string(key)
        if len(key) <= 64 and len(_KEYS) < 4096:
            _KEYS[key] = data
    return data


def _c_string(text: str) -> bytes:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): not text, U+FFFD in its place
        data = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    return data.replace(b"\x00", _REPLACEMENT) if b"\x00" in data else data


def _refused(code: int) -> NoReturn:
    raise EngineError(f"rego-cpp refused the policy input (error code {code})")


# --- the part of the document the rules can read ------------------------------------------------


class InputProjection:
    """The parts of an input document a set of Rego modules can read, found in their source.

    Handing rego-cpp only those parts is the same decision for less work: the default policy
    never reads the prompt, the session or the signals' terms, and every value handed over costs
    a C call and rego-cpp's own copy. A module can only read the input through a reference
    starting with ``input``: ``input.request.labels``, ``input.signals[name].matched``,
    ``object.get(input.request, "labels", {})``. Every such reference keeps the value at its end
    whole; a bracket whose key is not a string literal keeps every key at that level; lists keep
    every element (``count`` sees them), each projected by the union of the paths below it;
    sets are kept whole. A bare ``input`` (``x := input``, ``with input as``, ``walk(input)``)
    or a source this scanner cannot read (an unterminated string) keeps the whole document.
    Comments and string literals are not code: a word ``input`` inside them is no reference.
    """

    __slots__ = ("_root",)

    def __init__(self, root: _Node | None) -> None:
        self._root = root  # None: the whole document

    @classmethod
    def of_modules(cls, sources: Iterable[str]) -> InputProjection:
        root = _Node()
        for source in sources:
            code = _code_only(source)
            if code is None:
                return cls(None)
            for path in _input_paths(code):
                if not path:
                    return cls(None)
                root.add(path)
        root.settle()
        return cls(root)

    @property
    def whole(self) -> bool:
        """True when the rules may read anything: documents are handed over unchanged."""
        return self._root is None

    def project(self, document: Any) -> Any:
        """``document`` with only what the rules can read (the same object when ``whole``)."""
        return document if self._root is None else _project(document, self._root)


class _Node:
    """One level of referenced paths: named keys, any key (``*``), or the whole value."""

    __slots__ = ("any", "keys", "whole")

    def __init__(self) -> None:
        self.keys: dict[str, _Node] = {}
        self.any: _Node | None = None
        self.whole = False

    def add(self, path: Sequence[str | None]) -> None:
        node = self
        for step in path:
            if node.whole:
                return
            if step is None:
                node.any = node.any or _Node()
                node = node.any
            else:
                node = node.keys.setdefault(step, _Node())
        node.whole, node.keys, node.any = True, {}, None

    def merge(self, other: _Node) -> None:
        if self.whole or other.whole:
            self.whole, self.keys, self.any = True, {}, None
            return
        for key, child in other.keys.items():
            self.keys.setdefault(key, _Node()).merge(child)
        if other.any is not None:
            self.any = self.any or _Node()
            self.any.merge(other.any)

    def settle(self) -> None:
        """Fold ``any`` into every named key, so a key's node alone says what to keep of it."""
        if self.any is not None:
            self.any.settle()
            for child in self.keys.values():
                child.merge(self.any)
        for child in self.keys.values():
            child.settle()

    def element(self) -> _Node:
        """What to keep of each element of a list found at this node (any index may be read)."""
        node = _Node()
        for child in self.keys.values():
            node.merge(child)
        if self.any is not None:
            node.merge(self.any)
        return node


def _project(value: Any, node: _Node) -> Any:
    if node.whole:
        return value
    kind = type(value)
    if kind is dict:
        out = {}
        for key, item in value.items():
            child = node.keys.get(key if type(key) is str else str(key), node.any)
            if child is not None:
                out[key] = _project(item, child)
        return out
    if kind is list or kind is tuple:
        element = node.element()
        return [_project(item, element) for item in value]
    return value  # a scalar (read whole if at all) or a set (kept whole: its elements are keys)


def _code_only(source: str) -> str | None:
    """``source`` with comments removed and string literals blanked; None if unterminated."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
        elif c == '"':
            j = i + 1
            while j < n and source[j] != '"':
                if source[j] == "\n":
                    return None
                j += 2 if source[j] == "\\" else 1
            if j >= n:
                return None
            out.append('"' + _literal_marker(source[i + 1 : j]) + '"')
            i = j + 1
        elif c == "`":
            j = source.find("`", i + 1)
            if j < 0:
                return None
            out.append('""')  # a raw string's content is never a key here
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


_LITERAL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _literal_marker(content: str) -> str:
    """A plain-word string keeps its text between ``\\x01`` marks (it may be a key, and is no
    reference); any other string becomes ``\\x00``, which no key step accepts, so a bracket or
    ``object.get`` holding it keeps every key."""
    return f"\x01{content}\x01" if _LITERAL.fullmatch(content) else "\x00"


_REF = re.compile(r"(?<![\w.\x01])input\b")
_STEP = re.compile(r'\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(?:"\x01([A-Za-z_]\w*)\x01"\s*\]|[^\]]*\]))')
_GET = re.compile(r'\s*,\s*"\x01([A-Za-z_]\w*)\x01"')
_OBJECT_GET = re.compile(r"object\.get\(\s*$")


def _input_paths(code: str) -> Iterator[list[str | None]]:
    """Each ``input`` reference of ``code`` as its path (a key, or None for any key)."""
    for ref in _REF.finditer(code):
        path: list[str | None] = []
        pos = ref.end()
        while (step := _STEP.match(code, pos)) is not None:
            path.append(step.group(1) or step.group(2) or None)
            pos = step.end()
        if _OBJECT_GET.search(code, 0, ref.start()) and (key := _GET.match(code, pos)):
            path.append(key.group(1))  # object.get(input.x, "k", default) reads input.x.k only
        yield path
