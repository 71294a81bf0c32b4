"""The kernel's rule for giving up on an unacknowledged FIN, shared by the
silent-peer cases (see test_fin_wait1_silent_peer.py for the mechanism)."""

import harness

ORPHAN_RETRIES, RETRIES2 = 1, 0
SYSCTLS = {"net.ipv4.tcp_orphan_retries": ORPHAN_RETRIES, "net.ipv4.tcp_retries2": RETRIES2,
           "net.ipv4.tcp_early_retrans": 3}
JIFFY = 0.004


def model(n: int) -> float:
    """tcp_model_timeout() with TCP_RTO_MIN as the base, for n <= 9."""
    return ((2 << n) - 1) * 0.2


def on_time(gap: float, timeout: float) -> bool:
    return timeout - JIFFY <= gap <= timeout * (1 + 8 / 63) + 0.02


def gave_up(lab, sock, state: str, retries: int, rto: float) -> tuple[list[float], float]:
    """Check the retransmissions and the end of ``sock``, which sent its FIN
    on entering ``state``, against the rule; return (retransmission times,
    end time), relative to its FIN."""
    states = lab.timeline.events(sock, kind="state")
    fin = next(e.t for e in states if e.new == state)
    end = next(e.t for e in states if e.old == state and e.new == "CLOSE") - fin
    retx = [e.t - fin for e in lab.timeline.events(sock, kind="retransmit")]
    assert 0.2 - JIFFY <= retx[0] <= rto + 0.02                          # tail-loss probe
    assert all(on_time(b - a, rto * 2 ** k) for k, (a, b) in enumerate(zip(retx, retx[1:] + [end])))
    assert retx[-1] - retx[1] < model(retries) <= end - retx[1]          # the first expiry past it
    assert lab.timeline.count(harness.rst_sent(sock)) == 0
    return retx, end
