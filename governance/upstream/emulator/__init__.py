"""Custody's Gemini emulator: Gemini's REST wire format for image models, answered locally.

It stands in for Gemini in tests, demos and benchmarks (real Gemini is unreachable offline). It
never calls Google and labels everything it produces as its own: ``modelVersion`` reads
``custody-emulator-<version> (emulating <model>)`` and every response has ``x-custody-emulator: 1``.

    app = create_emulator_app(EmulatorConfig(blocked_words=["gore"], latency_ms=0))

See ``app`` (routes), ``engine`` (safety triggers, Gemini-3 thoughts and signatures), ``edits``
(prompt keywords → Pillow edits, measured costs), ``faults`` (fault directives, error envelope).
"""

from governance.upstream.emulator.app import RequestLog, create_emulator_app
from governance.upstream.emulator.config import EmulatorConfig

__all__ = ["EmulatorConfig", "RequestLog", "create_emulator_app"]
