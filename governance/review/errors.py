"""The one error of the review subsystem: a step refused, with the status an API answers with."""

from __future__ import annotations

from governance.refusal_error import Refusal


class ReviewError(Refusal):
    """A review step that cannot be done (unknown task, separation of duties, a claim held by
    someone else, a decision on content other than what the task showed, ...)."""
