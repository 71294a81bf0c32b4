"""Captures keep every frame — ARP, neighbour discovery, ICMP, not only TCP —
and save them as pcapng with one interface per switch port named after its
host, which a real reader (tshark, from Debian) opens: each frame says whose
port it crossed."""

import shutil
import subprocess

import pytest


def tshark(path: str, display_filter: str) -> list[list[str]]:
    run = subprocess.run(
        ["tshark", "-r", path, "-Y", display_filter, "-T", "fields", "-E", "separator=|",
         "-e", "frame.interface_name", "-e", "frame.interface_description",
         "-e", "_ws.col.Info"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [line.split("|") for line in run.stdout.splitlines()]


async def ping(host, target: str, family: int) -> None:
    argv = ["busybox", "ping", f"-{family}", "-c", "1", "-W", "5", target]
    proc = await host.spawn(argv)
    assert await proc.wait(timeout=10) == 0, argv


async def test_arp_nd_and_icmp_frames_are_kept_with_the_port_they_crossed(lab):
    client, server = await lab.pair()
    cap = await lab.capture()
    await ping(client, server.v4, 4)      # first contact: ARP, then the echo
    await ping(client, server.v6, 6)      # neighbour discovery, then the echo
    arp = [(f.ingress, f.what, f.src, f.dst) for f in cap.frames("arp")]
    assert ("client", "request", client.v4, server.v4) in arp
    assert ("server", "reply", server.v4, client.v4) in arp
    icmp = [(f.ingress, f.what) for f in cap.frames("icmp")]
    assert icmp == [("client", "echo-request"), ("server", "echo-reply")]
    nd = {(f.ingress, f.what) for f in cap.frames("nd")}
    assert ("client", "neighbor-solicitation") in nd and ("server", "neighbor-advertisement") in nd
    assert [(f.ingress, f.what) for f in cap.frames("icmp6") if f.what.startswith("echo")] == \
        [("client", "echo-request"), ("server", "echo-reply")]
    assert all(f.what.startswith("mld") for f in cap.frames("mld"))   # a new port's reports
    assert {f.ingress for f in cap.frames(host=server)} == {"server"}
    assert cap.summary() == []            # TCP-only views unchanged: no segment crossed


@pytest.mark.skipif(shutil.which("tshark") is None,
                    reason="tshark (Debian package tshark) is not installed: .ci/setup.sh")
async def test_tshark_reads_the_pcapng_one_interface_per_host(lab, tmp_path):
    client, server = await lab.pair()
    cap = await lab.capture()
    await ping(client, server.v4, 4)
    path = cap.write_pcapng(str(tmp_path / "wire.pcapng"))
    arp = tshark(path, "arp")
    assert [client_name for client_name, *_ in arp] == ["client", "server"], arp
    assert arp[0][2].startswith(f"Who has {server.v4}? Tell {client.v4}"), arp
    assert arp[1][2].startswith(f"{server.v4} is at"), arp
    icmp = tshark(path, "icmp")
    assert [(row[0], row[2].split(" ")[0:2]) for row in icmp] == \
        [("client", ["Echo", "(ping)"]), ("server", ["Echo", "(ping)"])], icmp
    assert "request" in icmp[0][2] and "reply" in icmp[1][2], icmp
    assert icmp[0][1] == f"switch port p{client.index} of host client"




async def test_a_tap_the_os_refuses_is_a_setup_error(lab):
    """A switch port that is not there: the OS's ENODEV does not leak; the
    socket opened for it is closed."""
    from harness import SetupError, _tap
    await lab.pair()
    with pytest.raises(SetupError, match=r"cannot set up the AF_PACKET socket on switch port "
                                         r"p99") as info:
        _tap.open_tap(lab.context.switch[1], "p99")
    assert info.value.errno == "ENODEV" and isinstance(info.value.__cause__, OSError)
