"""TCP state names: the kernel's (include/net/tcp_states.h), one spelling.

Input may use the RFC spelling (FIN_WAIT_1, TIME-WAIT, closed); output is
always the kernel's (FIN_WAIT1, TIME_WAIT).  CLOSED is not a kernel state: it
names a socket that no longer exists (inet_diag no longer lists it).
"""

from __future__ import annotations

from ..errors import InvalidArgument

BY_NUMBER = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV",
}
NUMBER = {v: k for k, v in BY_NUMBER.items()}
CLOSED = "CLOSED"
NAMES = frozenset(NUMBER) | {CLOSED}

TIMERS = {0: None, 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "zero_window_probe"}


def canonical(name: object, *, where: str = "state") -> str:
    """Normalise a state name or raise InvalidArgument naming the choices."""
    if isinstance(name, str):
        s = name.strip().upper().replace("-", "_")
        if s.startswith("TCP_"):
            s = s[4:]
        s = {"FIN_WAIT_1": "FIN_WAIT1", "FIN_WAIT_2": "FIN_WAIT2", "SYN_RCVD": "SYN_RECV",
             "SYN_RECEIVED": "SYN_RECV"}.get(s, s)
        if s in NAMES:
            return s
    raise InvalidArgument(
        f"{where} must be a TCP state name, one of {sorted(NAMES)}, got {name!r}")
