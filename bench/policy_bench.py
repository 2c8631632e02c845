"""Decision latency in-process: the default policy against a trivial allow-all policy, same run.

Each timing is one full ``PolicyService.decide_request`` (classifier, rate-limit reservation,
input build, regopy evaluation, masking) on a typical edit turn, alternating the two policies.
Target (issue 5): p50 ≤ 1 ms for the default policy.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from governance.policy.decision import ImageFacts, RequestFacts
from governance.policy.service import PolicyService

POLICIES = Path(__file__).resolve().parents[1] / "policies"
ALLOW_ALL = (
    'package custody\n\ndecision := {"outcome": "allow", "reasons": [], "obligations": {}}\n'
)
ROUNDS = 2000


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def _facts(i: int) -> RequestFacts:
    image = ImageFacts("parent", "image/png", 4_200_000, 1024, 1024, "ab" * 32, False)
    return RequestFacts(
        f"bench{i // 500}", f"editor{i % 50}", ("editor",), "gemini-2.5-flash-image",
        "make the sofa teal and flatten the fabric", (image,), "s1", 3, (), {"asset": "draft"},
    )  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "custody.rego").write_text(ALLOW_ALL)
        services = {"default": PolicyService(POLICIES), "allow-all": PolicyService(Path(tmp))}
        timings: dict[str, list[float]] = {name: [] for name in services}
        engine_us: dict[str, list[int]] = {name: [] for name in services}
        for i in range(ROUNDS + 100):
            for name, service in services.items():
                start = time.perf_counter()
                decision = service.decide_request(_facts(i))
                elapsed = (time.perf_counter() - start) * 1000
                if i >= 100:  # warm-up
                    timings[name].append(elapsed)
                    engine_us[name].append(decision.elapsed_us)
                assert decision.outcome == "allow", decision.reasons
        print(f"policy decision latency, {ROUNDS} decide_request calls each, in-process (regopy)")
        for name, values in timings.items():
            print(
                f"  {name:10} p50 {_percentile(values, 50):.3f} ms  "
                f"p99 {_percentile(values, 99):.3f} ms  "
                f"(engine only p50 {statistics.median(engine_us[name]) / 1000:.3f} ms)"
            )
        added = _percentile(timings["default"], 50) - _percentile(timings["allow-all"], 50)
        verdict = "meets" if _percentile(timings["default"], 50) <= 1.0 else "MISSES"
        print(f"  default policy adds {added:.3f} ms p50 over allow-all; {verdict} p50 ≤ 1 ms")


if __name__ == "__main__":
    main()
