"""netem limited to a peer and/or a port (Chaos Mesh's target, pumba's
--target and --egress-port), on the NFQUEUE engine."""

import pytest

from harness import InvalidArgument, Unsupported, faults


async def connect_time(client, target, port):
    sock = await client.socket(4)
    out = await sock.connect(target, port)
    assert out.ok, out
    await sock.close(linger=0)
    return out.duration


async def test_netem_only_towards_one_peer(lab):
    client, server = await lab.pair()
    other = await lab.host("other")
    await server.listen(9000)
    await other.listen(9000)
    async with faults.netem(client, delay=0.1, peer=server) as f:
        assert f.engine == "nfqueue"
        slow = await connect_time(client, server, 9000)
        fast = await connect_time(client, other, 9000)
    assert slow >= 0.1       # the SYN (and the handshake's ACK) held 100 ms
    assert fast < 0.05       # the same host's traffic to another peer untouched


async def test_netem_only_on_one_port(lab):
    client, server = await lab.pair()
    await server.listen(9000)
    await server.listen(9001)
    async with faults.netem(server, delay=0.1, port=9000):
        slow = await connect_time(client, server, 9000)
        fast = await connect_time(client, server, 9001)
    assert slow >= 0.1 and fast < 0.05


async def test_selectors_are_validated(lab):
    client, server = await lab.pair()
    with pytest.raises(InvalidArgument, match="peer must be another Host"):
        faults.netem(client, delay=0.1, peer="nohost")
    with pytest.raises(InvalidArgument, match="peer must be another Host"):
        faults.netem(client, delay=0.1, peer=client)
    with pytest.raises(InvalidArgument, match="port must be an int"):
        faults.netem(client, delay=0.1, port=70000)
    with pytest.raises(Unsupported, match="tc filters"):
        faults.netem(client, delay=0.1, port=9000, engine="tc")
