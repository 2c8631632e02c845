"""Submit checkpoints to witnesses (C2SP tlog-witness ``add-checkpoint``) and keep what they sign.

For each witness: ``old`` is the size it last cosigned for this log (stored; 0 at first), with
the RFC 6962 consistency proof from there to the new checkpoint. A 409 answer carries the size
the witness holds: the request is made once more from that size. A 200 answer's cosignature
line is verified against the witness's configured key before it is stored. When fewer than the
quorum cosigned, the checkpoint is not published (``storage.ledger.witnessed``) and
``checkpoint.witness_refused`` records each witness's answer: a witness that saw another tree
of that size (a fork) answers 422 and refuses for ever.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

import httpx

from governance.ledger_vocabulary import ledger_event
from governance.witness.config import Witness, WitnessPolicy
from storage.ledger.checkpoint import Checkpoint
from storage.ledger.cosignature import CosignatureError, verify_line
from storage.ledger.log import Ledger
from storage.ledger.store import read_checkpoints
from storage.ledger.witnessed import CosignatureStore

log = logging.getLogger("custody.witness")
MAX_PROOF_LINES = 63  # tlog-witness: at most 63 consistency-proof hashes


@dataclass
class Answer:
    """One witness's answer to one checkpoint."""

    witness: str
    host: str
    status: int | None  # HTTP status (None: no answer)
    cosigned: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "witness": self.witness,
            "host": self.host,
            "status": self.status,
            "cosigned": self.cosigned,
            "reason": self.reason,
        }


@dataclass
class Outcome:
    checkpoint: Checkpoint
    quorum: int
    answers: list[Answer] = field(default_factory=list)

    @property
    def cosigned(self) -> int:
        return sum(1 for a in self.answers if a.cosigned)

    @property
    def published(self) -> bool:
        return self.cosigned >= self.quorum


def request_body(old: int, proof: list[bytes], note: str) -> bytes:
    """The ``add-checkpoint`` body: ``old N``, the proof lines, a blank line, the note."""
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


class WitnessPublisher:
    """Sends checkpoints of ``ledger`` to the witnesses of ``policy``."""

    def __init__(self, ledger: Ledger, policy: WitnessPolicy) -> None:
        self.ledger = ledger
        self.policy = policy
        self.store = CosignatureStore(ledger.engine)
        self.last_attempted = 0

    def _ask(
        self, client: httpx.Client, witness: Witness, old: int, cp: Checkpoint
    ) -> httpx.Response:
        proof = self.ledger.prove_consistency(old, cp.size) if 0 < old < cp.size else []
        return client.post(
            witness.url + "/add-checkpoint",
            content=request_body(old, proof, cp.note),
            headers={"content-type": "text/plain; charset=utf-8"},
        )

    def _submit(self, client: httpx.Client, witness: Witness, cp: Checkpoint) -> Answer:
        answer = Answer(witness.key.name, witness.host, None, False, "")
        old = min(self.store.last_cosigned(witness.key), cp.size)
        try:
            resp = self._ask(client, witness, old, cp)
            if resp.status_code == 409:
                held = resp.text.strip()
                if held.isdigit() and int(held) <= cp.size and int(held) != old:
                    old = int(held)
                    resp = self._ask(client, witness, old, cp)
        except httpx.HTTPError as exc:
            answer.reason = f"no answer from {witness.host}: {exc}"
            return answer
        answer.status = resp.status_code
        if resp.status_code != 200:
            answer.reason = f"HTTP {resp.status_code}: {resp.text.strip()[:300]}"
            if resp.status_code == 422:
                answer.reason += (
                    " (the witness holds another tree of this log at that size, or the"
                    " consistency proof failed: a fork; run `custody ledger verify`)"
                )
            return answer
        body = cp.note.rpartition("\n\n")[0] + "\n"
        for line in resp.text.splitlines():
            try:
                cosig = verify_line(line, witness.key, body)
            except CosignatureError as exc:
                answer.reason = str(exc)
                continue
            self.store.add(cp.size, witness.key, cosig)
            answer.cosigned, answer.reason = True, "cosigned"
            break
        else:
            answer.reason = answer.reason or "the answer held no cosignature line"
        return answer

    def publish(self, cp: Checkpoint) -> Outcome:
        """Submit ``cp`` to every witness; record a refusal when the quorum is not met."""
        outcome = Outcome(cp, self.policy.quorum)
        self.last_attempted = max(self.last_attempted, cp.size)
        with httpx.Client(timeout=self.policy.timeout_s) as client:
            for witness in self.policy.witnesses:
                outcome.answers.append(self._submit(client, witness, cp))
        if not outcome.published:
            log.warning(
                "checkpoint %d is not published: %d of %d witnesses cosigned (quorum %d)",
                cp.size,
                outcome.cosigned,
                len(self.policy.witnesses),
                self.policy.quorum,
            )
            self.ledger.append(
                [
                    ledger_event(
                        "checkpoint.witness_refused",
                        {
                            "size": cp.size,
                            "root": base64.b64encode(cp.root).decode(),
                            "quorum": self.policy.quorum,
                            "cosigned": outcome.cosigned,
                            "answers": [a.to_dict() for a in outcome.answers],
                        },
                        tenant="*",
                        actor="custody",
                    )
                ]
            )
        return outcome

    def publish_if_new(self) -> Outcome | None:
        """The background job's call: submit the newest stored checkpoint once."""
        newest = read_checkpoints(self.ledger.read_engine, self.ledger.origin, newest_only=True)
        if not newest or newest[0].size <= self.last_attempted:
            return None
        return self.publish(newest[0])
