"""There is no tcp_tw_recycle any more: Linux 4.12 removed it, so it can be
neither set nor relied on.

Seed 004 (快速复用): "tcp_tw_recycle选项也可以快速复用,但是在使用了NAT网络的情况下
是不安全的".  False on modern Linux: commit 4396e46187ca ("tcp: remove
tcp_tw_recycle", 4.12) deleted the option, and the same release the
per-destination timestamp cache its PAWS check by peer address relied on,
once timestamps had become randomised per connection (4.10) and that check
would have broken even more clients than NAT did.  /proc/sys/net/ipv4 has tcp_tw_reuse but no
tcp_tw_recycle, and "sysctl -w net.ipv4.tcp_tw_recycle=1" fails.
"""

import os

import pytest

import harness

SEED = "004"
CLAIM = "tcp_tw_recycle also reuses TIME_WAIT quickly (unsafe behind NAT)"
VERDICT = "false"


async def test_tw_recycle_does_not_exist(lab, evidence):
    client, server = await lab.pair()
    names = (await client.run(["ls", "/proc/sys/net/ipv4"])).stdout.decode().split()
    assert "tcp_tw_reuse" in names and "tcp_tw_recycle" not in names
    cmd = await client.run(["sysctl", "-w", "net.ipv4.tcp_tw_recycle=1"], check=False)
    assert cmd.returncode != 0 and b"No such file or directory" in cmd.stderr
    with pytest.raises(harness.InvalidArgument, match="tcp_tw_recycle does not exist"):
        client.sysctl("net.ipv4.tcp_tw_recycle", 1)
    assert not os.path.exists("/proc/sys/net/ipv4/tcp_tw_recycle")   # nor in the machine's
    evidence("sysctl -w net.ipv4.tcp_tw_recycle=1", cmd.stderr.decode().strip())
