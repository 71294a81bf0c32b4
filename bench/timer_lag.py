"""How late TCP's timers fire past the timer wheel's rule, per CPU: the
measurement behind harness._kernels.TICK_LAG_JIFFIES.

A lab pair trades a small message every 50 ms (the receiver's delayed-ACK
timer fires for each); meanwhile a tracefs instance of this process records
``timer:timer_start`` (with the wheel's ``bucket_expiry``) and
``timer:timer_expire_entry`` for tcp_delack_timer, tcp_write_timer and
tcp_keepalive_timer, of every TCP socket on the machine (run it alongside a
suite to see the machine under load).  A timer is due at the tick where
jiffies reaches its bucket; the tick grid is read off the trace itself (each
event's time minus its jiffies times the tick, at the least).  Printed: per
CPU, how many timers fired on their bucket's tick, one tick later, or more,
and how far past that tick the latest ran.

    .venv/bin/python bench/timer_lag.py [SECONDS]
"""

from __future__ import annotations

import collections
import sys

import trio

import harness
from harness import _kernels, _names, _tracefs

FUNCTIONS = ("tcp_delack_timer", "tcp_write_timer", "tcp_keepalive_timer")


def addresses() -> dict[int, str]:
    found = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, _, name = line.split()[:3]
            if name in FUNCTIONS:
                found[int(addr, 16)] = name
    if len(found) != len(FUNCTIONS) or 0 in found:
        sys.exit(f"/proc/kallsyms does not give the addresses of {FUNCTIONS} (root needed)")
    return found


def lateness(lines: list[str], tick: float) -> list[tuple[int, float]]:
    """(cpu, seconds past the bucket's tick) of each expiry whose arming was seen."""
    events = []
    for line in lines:
        m = _tracefs._LINE.match(line)
        if not m or m.group("event") not in ("timer_start", "timer_expire_entry"):
            continue
        fields = _tracefs.parse_body(m.group("event"), m.group("body"))
        # timer_start prints "[timeout=N]" (expires - now), timer_expire_entry "now=N"
        now = int(fields["now"]) if "now" in fields else \
            int(fields["expires"]) - int(fields["[timeout"].rstrip("]"))
        events.append((float(m.group("ts")), m.group("event"), fields["timer"], now, fields,
                       int(m.group("cpu"))))
    if not events:
        return []
    grid = min(ts - now * tick for ts, _, _, now, _, _ in events)  # when jiffy 0 began
    armed, out = {}, []
    for ts, kind, timer, now, fields, cpu in events:
        if kind == "timer_start":
            armed[timer] = int(fields["bucket_expiry"])
        elif timer in armed:
            out.append((cpu, ts - (grid + armed.pop(timer) * tick)))
    return out


async def traffic(seconds: float) -> None:
    async with harness.open_lab() as lab:
        client, server = await lab.pair()
        listener = await server.listen(9000)
        conn = await client.connect(server, 9000)
        peer = await listener.accept()
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            await peer.send(b"x" * 100)
            await conn.recv(100)
            await trio.sleep(0.05)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    tick = 1 / _kernels.hz()
    filt = " || ".join(f"function == 0x{a:x}" for a in addresses())
    lines: list[str] = []

    def setup(inst):
        _tracefs._write(f"{inst.path}/buffer_size_kb", "8192")
        for event in ("timer/timer_start", "timer/timer_expire_entry"):
            inst.enable(event, filt)

    inst = _tracefs._Instance(f"{_names.owner_tag()}-timerlag", setup)
    try:
        async def run():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(traffic, seconds)
                while True:  # drain often: the buffer is per CPU and finite
                    lines.extend(inst.lines())
                    if not nursery.child_tasks:
                        break
                    await trio.sleep(0.5)
        trio.run(run)
        lines.extend(inst.lines())
    finally:
        inst.close()

    late = lateness(lines, tick)
    per_cpu: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    worst: dict[int, float] = collections.defaultdict(float)
    for cpu, past in late:
        ticks = max(0, round(past / tick - 0.5 + 1e-9)) if past > 0 else 0
        per_cpu[cpu][min(ticks, 2)] += 1
        worst[cpu] = max(worst[cpu], past - ticks * tick)
    print(f"{len(late)} TCP timer expiries in {seconds:g} s, tick {tick * 1000:g} ms")
    for cpu in sorted(per_cpu):
        c = per_cpu[cpu]
        print(f"cpu{cpu}: on the bucket's tick {c[0]}, one tick later {c[1]}, "
              f"two or more {c[2]}; latest {worst[cpu] * 1000:.2f} ms past its tick")


if __name__ == "__main__":
    main()
