"""Settings of one emulator instance (what `custody emulator` flags and tests set)."""

from __future__ import annotations

from dataclasses import dataclass, field

EMULATOR_VERSION = "0.1"


@dataclass
class EmulatorConfig:
    """How the emulator behaves.

    blocked_words: a prompt containing one of these (case-insensitive, whole word) is blocked with
        ``promptFeedback.blockReason = PROHIBITED_CONTENT`` and no candidates (HTTP 200).
    latency_ms: added to every generate call (before any work), like a slow upstream.
    api_key: when set, callers must send it in ``x-goog-api-key`` or ``?key=`` (else 403).
    version: the emulator's version label; ``modelVersion`` reads
        ``custody-emulator-<version> (emulating <model>)``.
    signature_secret: HMAC key of the ``thoughtSignature``s it issues and verifies. Fixed by
        default so a restarted emulator still accepts the signatures of an earlier run.
    request_log_size: how many requests ``GET /emulator/requests`` remembers (a ring buffer).
    """

    blocked_words: list[str] = field(default_factory=lambda: ["forbidden", "gore"])
    latency_ms: int = 0
    api_key: str | None = None
    version: str = EMULATOR_VERSION
    signature_secret: bytes = b"custody-emulator-thought-signature-v1"
    request_log_size: int = 1000

    def model_version(self, model: str) -> str:
        """The ``modelVersion`` string: always names the emulator, never Gemini alone."""
        return f"custody-emulator-{self.version} (emulating {model})"
