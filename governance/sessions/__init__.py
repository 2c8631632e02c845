"""Editing sessions: each image's version graph, how a turn joins it, and its ledger record.

``lineage`` holds the values (a turn's place in a session, an image's provenance facts);
``linking`` finds a Gemini-route turn's session and parent version from content hashes;
``records`` turns a lineage into ledger event bodies and index rows; ``graph`` shows a session's
graph from its rows or rebuilds the same graph from ledger events alone.
"""

from governance.sessions.graph import graph_from_rows, rebuild_from_ledger
from governance.sessions.lineage import Lineage, OutputVersion, Provenance, SessionHint

__all__ = [
    "Lineage",
    "OutputVersion",
    "Provenance",
    "SessionHint",
    "graph_from_rows",
    "rebuild_from_ledger",
]
