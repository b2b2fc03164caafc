"""Raw-frame clients in the simulator: a client that sends bytes and reads bytes, as a real one does.

Owns the simulator's side of the node's client intake for frames a test
built itself (`Simulation.send_frame`): in-session frames, handshake
requests, malformed bytes. Each such client is known by its ZeroMQ identity
and has an inbox of the raw frames its node answered (`Simulation.inbox`).
The handle-based clients of `Simulation.submit` (which encode and decode
for the test) are `keyswarm.sim.driver`'s.

Rules (as `keyswarm.node.client_intake`, minus sockets and the in-flight table):
- Frames are told apart as the real intake does: the first four bytes of a
  version-1 in-session frame go to the `sessions` actor as a `SessionFrame`
  (the counter in the request-id slot, the session id in the reference);
  anything else is decoded as a plain request for the gateway.
- Bad input is answered, never raised: a frame that does not parse gets the
  error reply the real node sends, under the id it carried (0 if none).
- A refused delivery is answered too: BUSY for a full mailbox, UNAVAILABLE
  for a stopped actor, UNAUTHENTICATED for in-session frames to a node that
  runs no sessions actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import SESSIONS, ClientRef, Delivery
from keyswarm.actors.session_messages import SessionFrame
from keyswarm.crypto.session_keys import parse_frame
from keyswarm.errors import ErrorCode, ProtocolError
from keyswarm.node.client_intake import SESSION_FRAME_PREFIX
from keyswarm.transport import frames

if TYPE_CHECKING:
    from keyswarm.sim.node import SimNode


class RawClients:
    """The inboxes of raw-frame clients, and the intake of their frames on a node."""

    def __init__(self, gateway: str):
        self.gateway = gateway
        self._inboxes: dict[bytes, list[bytes]] = {}

    def register(self, identity: bytes) -> list[bytes]:
        """The inbox of client `identity` (created on first use): every frame a node sent it, in arrival order."""
        inbox = self._inboxes.get(identity)
        if inbox is None:
            inbox = self._inboxes[identity] = []
        return inbox

    def take(self, identity: bytes, frame: bytes) -> bool:
        """File a frame a node sent to `identity`; False when it is no raw client's."""
        inbox = self._inboxes.get(identity)
        if inbox is None:
            return False
        inbox.append(frame)
        return True

    def deliver(self, node: SimNode, identity: bytes, frame: bytes) -> str:
        """Hand a raw frame to `node`'s actors as its real intake would; returns what happened (for the trace)."""
        if frame[:4] == SESSION_FRAME_PREFIX:
            try:
                counter, session_id, ciphertext = parse_frame(frame)
            except ProtocolError as exc:
                return self._refuse(node, identity, exc)
            ref = ClientRef(node.name, identity, counter, session_id)
            target, msg = SESSIONS, SessionFrame(counter, session_id, ciphertext)
        else:
            try:
                request_id, msg = frames.decode_request(frame)
            except ProtocolError as exc:
                return self._refuse(node, identity, exc)
            ref, target = ClientRef(node.name, identity, request_id), self.gateway
        result = node.runtime.deliver(target, ref, msg)
        if result is Delivery.FULL:
            node.reply_client(ref, Failure.of(ErrorCode.BUSY, f"{target} is over its queue bound"))
        elif result is Delivery.NO_SUCH_ACTOR and target == SESSIONS:
            node.reply_client(ref, Failure.of(ErrorCode.UNAUTHENTICATED, "this node holds no sessions"))
        elif result is not Delivery.QUEUED:
            node.reply_client(ref, Failure.of(ErrorCode.UNAVAILABLE, f"{target} is {result.value}"))
        return f"#{ref.request_id} {msg!r} -> {target} {result.value}"

    @staticmethod
    def _refuse(node: SimNode, identity: bytes, exc: ProtocolError) -> str:
        rid = exc.request_id if exc.request_id is not None else 0
        node.reply_client(ClientRef(node.name, identity, rid), Failure.of(exc.code, str(exc)))
        return f"bad frame ({exc.code}): {exc}"
