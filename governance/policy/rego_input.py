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

from typing import Any

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
    kind = type(value)
    if kind is str:
        code = _str(handle, _c_string(value))
    elif kind is dict:
        for key, item in value.items():
            _check(_str(handle, _c_string(key if type(key) is str else str(key))))
            _add(handle, item)
            _check(_item(handle))
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
    _check(code)


def _c_string(text: str) -> bytes:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): not text, U+FFFD in its place
        data = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    return data.replace(b"\x00", _REPLACEMENT) if b"\x00" in data else data


def _check(code: int) -> None:
    if code != 0:
        raise EngineError(f"rego-cpp refused the policy input (error code {code})")
