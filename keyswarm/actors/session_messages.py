"""What the sessions actor receives besides handshake requests, and what it asks the event log.

Owns `SessionFrame` (an in-session frame, parsed by the driver),
`LoadPolicy` / `PolicyLoaded` (the sessions actor's request to the
`event-log` blocking service and its answer), and `RequestLimits` (the
limits the sessions actor applies to in-session requests). New policy
events written on this node reach the sessions actor as the key service's
`PolicyChanged` (`keyswarm.actors.key_messages`, sent by the `admin` actor).

Rules:
- None of these is a registered message, so no peer frame can carry one: a
  peer must never be able to hand this node an in-session frame as if a
  client had sent it, nor policy events that no signature vouched for.
  `PolicyChanged` is accepted from this node's own actors only.
- The handshake requests themselves (`handshake.hello`, `handshake.auth`,
  `handshake.resume`, tags 0x0701-0x0709) are `keyswarm.crypto`'s: they are
  client operations and travel in ordinary request frames. Tags
  0x0710-0x07FF stay reserved for sessions; nothing here needs one yet.
- `LoadPolicy` is incremental: it names the last local sequence of
  partition 0 already folded, and the answer carries only the policy events
  after it (DESIGN section 6: policies live in partition 0). Folding is
  convergent and idempotent, so an event that arrives both ways (a
  `PolicyChanged` and a later `LoadPolicy`) folds once in effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyswarm.storage.events import Event
from keyswarm.transport.codec import DEFAULT_LIMITS, Limits

#: Policy events live in this partition (DESIGN section 6).
POLICY_PARTITION = 0


@dataclass(frozen=True, slots=True)
class SessionFrame:
    """An in-session frame `[1, "s", counter, [session_id, ciphertext]]`, parsed but not yet authenticated.

    The driver delivers it to the `sessions` actor with the sender
    `ClientRef(node, identity, counter, session_id)`: the frame's in-flight slot.
    """

    counter: int
    session_id: bytes
    ciphertext: bytes

    def __repr__(self) -> str:  # simulator traces: a frame may carry megabytes
        return f"SessionFrame({self.counter}, {self.session_id.hex()[:8]}, {len(self.ciphertext)}B)"


@dataclass(frozen=True, slots=True)
class LoadPolicy:
    """To the `event-log` service: partition 0's policy events after local sequence `after_seq`."""

    after_seq: int = 0


@dataclass(frozen=True, slots=True)
class PolicyLoaded:
    """The policy events of partition 0 after the request's `after_seq`, up to local sequence `seq`."""

    events: tuple[Event, ...]
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimits:
    """Limits on in-session requests (the node's `[limits]`): past them, TOO_LARGE or BAD_REQUEST, sealed."""

    max_plaintext_bytes: int = 16 * 1024 * 1024  # an inner request's bytes ([limits] max_frame_bytes)
    max_key_name_bytes: int = 256  # UTF-8 bytes of one key name a request names
    max_batch_items: int = 1000  # key names one batch request may name
    codec: Limits = field(default=DEFAULT_LIMITS)  # decoding the inner request

    def __post_init__(self) -> None:
        for name in ("max_plaintext_bytes", "max_key_name_bytes", "max_batch_items"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
