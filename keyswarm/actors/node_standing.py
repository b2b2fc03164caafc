"""Whether this node may take new sessions: its own revocation and its certificate's validity.

Owns `NodeStanding`, which the sessions actor asks before it serves a
`handshake.hello`, `.auth` or `.resume` (`refusal`), after each fold of
policy events (`observe`) and at each housekeeping tick (`check_certificate`).

Rules:
- Revoked (a folded `NodeRevoked` names this node, DESIGN section 1: a
  revocation always wins): every hello, auth and resume is refused with
  UNAVAILABLE, retryable, and a message saying this node is revoked, so a
  client goes to another node; the sessions actor closes every session it
  holds once, when `observe` first sees the revocation; the node condition
  `revoked` makes health `degraded` with the reason. Permanent: the policy
  table never forgets a node revocation (no event undoes it), and a restart
  folds it again from the event log before any handshake is served (the
  policy gate stays closed until the table is loaded).
- Certificate outside its validity at `ctx.wall_time()` (expired while the
  node runs, or not yet valid after the wall clock stepped back): the same
  UNAVAILABLE, and the node condition `node_certificate`, cleared when the
  clock is back inside the validity (a not-yet-valid certificate becomes
  valid). A node refuses to *start* on such a certificate (`node_token.py`);
  this is for one that stops being valid while it runs.
- A node with no valid sub-key is the sub-keys actor's concern: it sets the
  `subkeys` condition and answers the signing request UNAVAILABLE, which the
  sessions actor passes to the client.
- Cheap on the hot path of a handshake: the certificate is parsed once,
  each check is two float comparisons; pure (time is the caller's
  `ctx.wall_time()`, never a clock read here).
"""

from __future__ import annotations

from datetime import datetime, timezone

from cryptography import x509

from keyswarm.actors.messages import Failure
from keyswarm.actors.runtime import Context
from keyswarm.errors import ErrorCode
from keyswarm.policy import NodeRevocation, PolicyTable

#: The node condition set once this node is revoked (never cleared).
REVOKED_CONDITION = "revoked"
#: The node condition set while this node's certificate is outside its validity.
CERTIFICATE_CONDITION = "node_certificate"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


class NodeStanding:
    """This node's right to take sessions (module docstring)."""

    __slots__ = ("not_before_s", "not_after_s", "revoked", "_problem")

    def __init__(self, node_certificate_der: bytes):
        try:
            cert = x509.load_der_x509_certificate(node_certificate_der)
            self.not_before_s = cert.not_valid_before_utc.timestamp()
            self.not_after_s = cert.not_valid_after_utc.timestamp()
        except ValueError:  # checked at node start (node_token.py); a backstop: no window to check
            self.not_before_s, self.not_after_s = float("-inf"), float("inf")
        self.revoked: NodeRevocation | None = None
        self._problem: str | None = None  # the certificate problem last reported (None: not checked yet)

    def observe(self, ctx: Context, table: PolicyTable) -> bool:
        """After a fold: True exactly once, when this node first finds itself revoked (close its sessions)."""
        if self.revoked is not None:
            return False
        revocation = table.revoked_nodes.get(ctx.node)
        if revocation is None:
            return False
        self.revoked = revocation
        ctx.set_condition(REVOKED_CONDITION, degraded=True, detail=self._revoked_detail())
        return True

    def refusal(self, ctx: Context) -> Failure | None:
        """The UNAVAILABLE answer to a handshake or resumption this node may not take now, or None."""
        if self.revoked is not None:
            return Failure.of(ErrorCode.UNAVAILABLE, f"{self._revoked_detail()} (node {ctx.node!r}): use another node")
        problem = self.check_certificate(ctx)
        if problem:
            return Failure.of(ErrorCode.UNAVAILABLE, f"node {ctx.node!r} cannot take sessions: {problem}; "
                                                     "use another node")
        return None

    def check_certificate(self, ctx: Context) -> str:
        """What is wrong with this node's certificate at `ctx.wall_time()` ("" if nothing); keeps the condition."""
        now = ctx.wall_time()
        if now < self.not_before_s:
            problem = f"its node certificate is not valid before {_iso(self.not_before_s)}"
        elif now > self.not_after_s:
            problem = f"its node certificate expired at {_iso(self.not_after_s)}"
        else:
            problem = ""
        if problem != self._problem:
            self._problem = problem
            ctx.set_condition(CERTIFICATE_CONDITION, degraded=bool(problem), detail=problem)
        return problem

    def _revoked_detail(self) -> str:
        reason = self.revoked.reason if self.revoked is not None else ""
        return f"this node is revoked: {reason}" if reason else "this node is revoked"
