"""File descriptors for connections, with a reserve the gateway's own work can always open.

Every connection costs one descriptor; so do the database pool, blob files, the upstream client
and the background jobs. A process whose sockets took them all failed those jobs with ``EMFILE``.
At start-up the soft ``RLIMIT_NOFILE`` is raised to the hard one, and the connection cap is kept
``CUSTODY_FD_RESERVE`` below it (``governance.connection_guard`` closes idle connections first).
"""

from __future__ import annotations

import logging

log = logging.getLogger("custody")

MIN_CONNECTIONS = 16


def raise_open_file_limit() -> int:
    """Raise the soft descriptor limit to the hard one where the OS allows; the soft limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_budget(requested: int, reserve: int) -> int:
    """How many connections may be held: ``requested`` (0: as many as fit), at most the soft
    descriptor limit minus ``reserve``, and never fewer than a handful."""
    fit = max(MIN_CONNECTIONS, raise_open_file_limit() - reserve)
    return fit if requested <= 0 else min(requested, fit)
