"""The kernel's timer rules the default-timer cases assert, with tolerances
from the running kernel's HZ and the timer wheel (harness._kernels).

These cases run in the ``uml-6.12-tt`` guest: Linux's default sysctls,
uncompressed, in virtual time (the guest's clock skips idle time), so a 2 h
keepalive costs about a second of wall time.
"""

from harness._kernels import hz, wheel_granularity

KERNEL = "uml-6.12-tt"
TCP_RTO_MIN = 0.2      # include/net/tcp.h, HZ / 5
TCP_RTO_MAX = 120.0    # HZ * 120 (a sysctl only from 6.15)
TCP_TIMEOUT_INIT = 1.0


def window(expected: float) -> tuple[float, float]:
    """[earliest, latest] a timer armed ``expected`` seconds ahead fires: a
    jiffy early at most (armed in whole jiffies), and late by at most its
    timer-wheel level's granularity plus a jiffy."""
    h = hz()
    return expected - 1 / h, expected + wheel_granularity(expected, h) + 1 / h


def chain(timeouts: list[float]) -> tuple[float, float]:
    """[earliest, latest] a chain of timers, each armed when the previous fired, ends."""
    lo = sum(window(t)[0] for t in timeouts)
    hi = sum(window(t)[1] for t in timeouts)
    return lo, hi


def model_timeout(boundary: int, rto_base: float = TCP_RTO_MIN,
                  rto_max: float = TCP_RTO_MAX) -> float:
    """tcp_model_timeout() (net/ipv4/tcp_timer.c), in seconds."""
    thresh = 0
    while rto_base * 2 ** (thresh + 1) <= rto_max:   # ilog2(rto_max / rto_base)
        thresh += 1
    if boundary <= thresh:
        return ((2 << boundary) - 1) * rto_base
    return ((2 << thresh) - 1) * rto_base + (boundary - thresh) * rto_max


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def times(evidence, name: str, guest_seconds: float) -> None:
    """Evidence in guest seconds (the runner adds the wall seconds of the run)."""
    evidence(name, guest_seconds, " s guest time")


async def wait_event(lab, ep, cond, *, timeout: float, every: float = 1.0):
    """lab.timeline.wait_for, polling every ``every`` seconds: an event
    carries the kernel's own timestamp, so coarse polling loses no precision,
    and in virtual time each poll costs wall time while a sleep costs none."""
    import time

    import trio
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline  # before the look (see harness._poll)
        for e in lab.timeline.events(ep):
            if cond(e):
                return e
        if expired:
            raise AssertionError(f"no event {cond!r} within {timeout} s; last events: "
                                 f"{lab.timeline.events()[-5:]}")
        await trio.sleep(every)
