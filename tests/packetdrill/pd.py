"""What the ported packetdrill scripts share: their defaults.sh, and the
handshake most of them open with.

packetdrill (github.com/google/packetdrill, gtests/net/) runs one stack
against a tun device and a script speaking for the other end.  Here the
stack under test is a lab host's and the script speaks through
faults.scripted_peer (the other host's kernel silenced for the port), so
every ``<`` line is ``wire.send`` and every ``>`` line ``wire.expect``;
``+x`` is ``wait=x`` on a send, and an expectation's default time base is
the wire's previous event, as packetdrill's.  packetdrill's default
tolerance (--tolerance_usecs=4000) is TOL.
"""

from harness._kernels import TICK_LAG_JIFFIES
from harness.faults._segments import scripted_peer

TOL = 0.004  # packetdrill's default --tolerance_usecs=4000
# One jiffy at this kernel's HZ=250.  A delayed ACK due "now" (ato 0) fires
# on the next tick: 1 ms on the HZ=1000 kernels packetdrill's scripts were
# written on, within their tolerance; up to 4 ms here, so lines that wait
# for such a timer get TOL + JIFFY.
JIFFY = 0.004
# ...and a timer may fire one tick later still on a CPU that does not keep
# jiffies (harness._kernels.TICK_LAG_JIFFIES): every line that waits for a
# timer gets TICK_LAG more.
TICK_LAG = TICK_LAG_JIFFIES * JIFFY
PORT = 8080

# gtests/net/common/defaults.sh, the sysctls that exist per namespace on 6.18
# (tcp_fack is gone since 4.15; tcp_fastopen's key is irrelevant here)
DEFAULTS = {
    "net.ipv4.tcp_rmem": "4096 540000 15728640",
    "net.ipv4.tcp_wmem": "4096 262144 4194304",
    "net.ipv4.tcp_timestamps": 1,
    "net.ipv4.tcp_syn_retries": 5,
    "net.ipv4.tcp_synack_retries": 5,
    "net.ipv4.tcp_frto": 2,
    "net.ipv4.tcp_sack": 1,
    "net.ipv4.tcp_dsack": 1,
    "net.ipv4.tcp_reordering": 3,
    "net.ipv4.tcp_slow_start_after_idle": 0,
    "net.ipv4.tcp_early_retrans": 4,
    "net.ipv4.tcp_recovery": 1,
    "net.ipv4.tcp_tso_win_divisor": 3,
    "net.ipv4.tcp_ecn": 0,
    "net.ipv4.tcp_pacing_ss_ratio": 200,
    "net.ipv4.tcp_pacing_ca_ratio": 120,
    "net.ipv4.tcp_notsent_lowat": 4294967295,
    "net.ipv4.tcp_syncookies": 1,
}


async def pair(lab, **extra):
    """client (the script) and server (the stack under test), defaults.sh pinned."""
    return await lab.pair(sysctls={**DEFAULTS, **extra})


async def cubic(sock):
    """defaults.sh's tcp_congestion_control=cubic, per socket: a child
    namespace may only pick an algorithm of the machine's
    tcp_allowed_congestion_control (EPERM otherwise; this machine allows
    reno and bbr), while TCP_CONGESTION with CAP_NET_ADMIN may pick any
    available one.  Accepted sockets inherit their listener's."""
    assert (await sock.setsockopt("TCP_CONGESTION", "cubic")).ok
    return sock


async def accepted(lab, family, w, listener, *, syn: str, synack: str, ack: str,
                   ack_wait: float = 0.0):
    """packetdrill's opening: ``< S``, ``> S.``, ``+ack_wait < .``, accept()."""
    await w.send(f"client > server {syn}")
    await w.expect(f"server > client {synack}", within=TOL)
    await w.send(f"client > server {ack}", wait=ack_wait)
    return await listener.accept()


def mss(family: int) -> int:
    """The MSS a 1500-byte link announces: packetdrill's scripts say 1460
    (IPv4); over IPv6 the header is 20 bytes longer (packetdrill's own IPv6
    runs rewrite it the same way)."""
    return 1460 if family == 4 else 1440


def standard(family: int) -> dict:
    return dict(syn="S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>",
                synack=f"S. 0:0(0) ack 1 <mss {mss(family)},nop,nop,sackOK,nop,wscale 8>",
                ack=". 1:1(0) ack 1 win 257")


async def listening(lab, family, **extra):
    """defaults.sh pinned, the client host silenced for port 8080, the
    server listening: (wire, listener)."""
    client, server = await pair(lab, **extra)
    fault = await scripted_peer(server, client, port=PORT, family=family).start()
    listener = await cubic(await server.listen(PORT, family=family))
    return fault.wire, listener


async def server_conn(lab, family, **extra):
    """The opening of gtests/net/tcp/close and shutdown's server scripts:
    listen on 8080, the standard handshake, accept.  Returns (wire, conn);
    the scripted peer stays until the lab ends."""
    w, listener = await listening(lab, family, **extra)
    conn = await accepted(lab, family, w, listener, **standard(family))
    return w, conn
