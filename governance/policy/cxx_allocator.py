"""One C++ allocator for rego-cpp and the C++ runtime it calls, whatever was imported before it.

The regopy wheel's ``librego_shared.so`` defines its own ``operator new``/``delete`` (snmalloc)
and is loaded with ``RTLD_LOCAL`` (ctypes). When another extension has loaded ``libstdc++`` first
(numpy does, for the fingerprints; so do others), ``libstdc++``'s out-of-line code allocates with
its own ``operator new`` (glibc ``malloc``) while rego-cpp's inline code frees with snmalloc's:
glibc never sees those blocks come back. Measured (2026-12-03, ``mallinfo2``): with numpy
imported first, every policy decision left ~48 KiB in glibc's heap for good, about 80 KiB a
gateway turn (two decisions), 56 -> 126 MiB in use over 1,000 turns; without numpy, nothing.

``use_one_allocator`` makes ``libstdc++`` global before ``librego_shared.so`` is loaded: the
dynamic linker then resolves rego-cpp's ``operator new``/``delete`` to ``libstdc++``'s, as it
does for every other C++ extension, so each block is freed by the allocator that gave it.
"""

from __future__ import annotations

import ctypes
import sys

LIBSTDCXX = "libstdc++.so.6"


def use_one_allocator() -> bool:
    """Make ``libstdc++`` global (loading it if needed); False where that cannot be done
    (not Linux, no such library) or is too late (rego-cpp is already loaded)."""
    if not sys.platform.startswith("linux") or "regopy.rego_shared" in sys.modules:
        return False
    try:
        ctypes.CDLL(LIBSTDCXX, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True
