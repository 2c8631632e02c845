"""Authorship reports: a session's record of human and AI contributions, from its ledger events.

``entries`` reads the session's ledger entries; ``record`` turns them into the chronological
acts, the versions and the AI systems used; ``attribution`` measures the final version's pixels
by where they came from; ``wording`` drafts the Copyright Office fields for counsel; ``render``
writes the report as HTML (Jinja2) or PDF (fpdf2). ``report`` ties them together.
"""

from governance.authorship.report import AuthorshipError, build_report

__all__ = ["AuthorshipError", "build_report"]
