"""Labs, hosts, sockets, observation: the foundation against the real kernel."""

import ipaddress
import os
import sys

import pytest
import trio

import harness
from harness import _netns
from harness.errors import CallFailed, InvalidArgument, ObservationTimeout, SetupError

SERVER = [sys.executable, "-c", """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
"""]


async def test_pair_has_both_families_in_the_labs_own_subnet(lab, family):
    client, server = await lab.pair()
    for host in (client, server):
        addr = ipaddress.ip_address(host.address(family))
        net = lab.slot.v4_network if family == 4 else lab.slot.v6_network
        assert addr in net
        assert host.netns.startswith(f"fih{os.getpid()}-") and _netns.exists(host.netns)
    listener = await server.listen(7000, family=family)
    conn = await client.connect(server, 7000, family=family)
    peer = await listener.accept()
    assert (await conn.send(b"ping")).value == 4
    assert (await peer.recv()).value == b"ping"
    assert conn.remote == peer.local and conn.local == peer.remote


async def test_profiles_pin_sysctls_per_host(lab):
    a = await lab.host("a")
    b = await lab.host("b", profile="fast", sysctls={"net.ipv4.tcp_fin_timeout": 7})
    assert a.sysctl("net.ipv4.tcp_fin_timeout") == "60"
    assert a.sysctl("net.ipv4.tcp_max_tw_buckets") == "131072"   # pinned, not RAM-derived
    assert b.sysctl("net.ipv4.tcp_fin_timeout") == "7"           # override beats profile
    assert b.sysctl("net.ipv4.tcp_keepalive_time") == "1"        # fast profile
    b.sysctl("net.ipv4.tcp_retries2", 4)
    assert b.sysctl("net.ipv4.tcp_retries2") == "4"
    assert a.sysctl("net.ipv4.tcp_retries2") == "15"             # per namespace


async def test_snapshot_shows_time_wait_with_its_timer_and_tcp_info(lab):
    client, server = await lab.pair()
    listener = await server.listen(7001)
    conn = await client.connect(server, 7001)
    peer = await listener.accept()
    live = conn.info()
    assert live.state == "ESTABLISHED" and live.tcp_info["rtt_us"] > 0 and live.inode > 0
    await conn.shutdown("w")
    await lab.wait_state(peer, "CLOSE_WAIT")
    assert peer.info().shutdown == "r" and conn.info().shutdown == "w"
    await conn.close()
    await peer.close()
    tw = await lab.wait_state(conn, "TIME_WAIT")
    assert tw.timer == "time_wait" and 59.0 < tw.timer_left <= 60.0
    assert tw.inode == 0 and tw.tcp_info == {}
    snap = client.sockets(state="TIME_WAIT")
    assert [s.local for s in snap] == [conn.local]
    assert server.sockets(state="LISTEN")[0].sport == 7001


async def test_wait_state_reports_what_it_saw_instead(lab):
    client, server = await lab.pair()
    listener = await server.listen(7002)
    conn = await client.connect(server, 7002)
    with pytest.raises(ObservationTimeout, match="not CLOSE_WAIT within 0.05s; it is ESTABLISHED"):
        await lab.wait_state(conn, "CLOSE_WAIT", timeout=0.05)
    assert (await lab.wait_state(listener, "LISTEN")).state == "LISTEN"


async def test_timeline_has_rst_reason_errno_and_the_calls(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(7003, family=family)
    conn = await client.connect(server, 7003, family=family)
    peer = await listener.accept()
    await peer.close(linger=0)
    rst = await lab.timeline.wait_for(harness.rst_sent(peer))
    # SO_LINGER {1,0} on an established socket: tcp_close() -> tcp_disconnect(),
    # which resets with SK_RST_REASON_TCP_STATE (not ..._ABORT_ON_LINGER: that is
    # the TCP_LINGER2 < 0 path out of FIN_WAIT2)
    assert rst.reason == "TCP_STATE"
    await lab.timeline.wait_for(harness.rst_received(conn))
    err = await lab.timeline.wait_for(harness.error_reported(conn))
    assert err.errno == "ECONNRESET"
    assert (await conn.recv()).errno == "ECONNRESET"
    calls = [e.detail for e in lab.timeline.events(conn, kind="call")]
    assert calls == ["connect -> (('%s', %d), ('%s', 7003))" % (conn.local[0], conn.local[1],
                                                              server.address(family)),
                     "recv -> ECONNRESET"]


async def test_peer_program_sockets_die_with_the_process(lab):
    client, server = await lab.pair()
    peer_proc = await server.program()
    listener = await peer_proc.listen(7004)
    conn = await client.connect(server, 7004)
    remote = await listener.accept()
    assert (await conn.send(b"unread")).ok
    assert (await remote.send(b"hi")).value == 2
    assert (await conn.recv()).value == b"hi"
    await lab.wait_state(remote, "ESTABLISHED")
    assert remote.info().recv_queue == 6          # data left unread in the peer
    assert await peer_proc.kill() == -9
    # unread data at close: the kernel sends RST, not FIN (tcp_close: data_was_unread)
    await lab.timeline.wait_for(harness.rst_received(conn))
    assert (await conn.recv()).errno == "ECONNRESET"
    with pytest.raises(harness.HarnessError, match="is gone"):
        await remote.send(b"x")


async def test_spawn_with_readiness_and_captured_output(lab):
    client, server = await lab.pair()
    proc = await server.spawn(SERVER + ["8080"], ready=harness.listening(8080))
    conn = await client.connect(server, 8080)
    await conn.send(b"echo")
    assert (await conn.recv()).value == b"echo"
    assert await proc.wait(timeout=5) == 0
    assert proc.stdout() == "listening\n"


async def test_capture_sees_the_handshake_and_close(lab):
    client, server = await lab.pair()
    cap = await lab.capture()
    listener = await server.listen(7005)
    conn = await client.connect(server, 7005)
    peer = await listener.accept()
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")
    flags = cap.summary(conn)
    assert flags[:3] == ["client:S", "server:SA", "client:A"]
    assert flags[3:] == ["client:FA", "server:A", "server:FA", "client:A"] or \
        flags[3:] == ["client:FA", "server:FA", "client:A"]  # delayed ACK merged with FIN


# --- bad input: a clear error naming the value, and nothing left behind ------

async def test_unknown_host(lab):
    await lab.pair()
    with pytest.raises(InvalidArgument, match=r"unknown host 'nope'; this lab has \['client', 'server'\]"):
        lab["nope"]
    with pytest.raises(InvalidArgument, match="'Nope'"):
        await lab.host("Nope")
    with pytest.raises(InvalidArgument, match="already exists"):
        await lab.host("client")
    assert sorted(lab.hosts) == ["client", "server"]


async def test_port_already_bound(lab):
    client, server = await lab.pair()
    await server.listen(7006)
    before = [(s.state, s.local) for s in server.sockets()]
    with pytest.raises(CallFailed, match="port 7006 of host server.*EADDRINUSE.*already bound"):
        await server.listen(7006, reuseaddr=False)
    assert [(s.state, s.local) for s in server.sockets()] == before  # the failed one is closed


async def test_address_family_not_of_the_host(lab):
    client, server = await lab.pair()
    with pytest.raises(InvalidArgument, match="family must be 4 or 6, got 5"):
        await client.connect(server, 7007, family=5)
    with pytest.raises(InvalidArgument, match="is IPv6 but family=4"):
        await client.connect(server.v6, 7007, family=4)
    with pytest.raises(InvalidArgument, match="port must be an int in 1..65535, got 70000"):
        await client.connect(server, 70000)
    assert len(client.sockets()) == 0


async def test_negative_timeout_and_unknown_state(lab):
    client, server = await lab.pair()
    listener = await server.listen(7008)
    with pytest.raises(InvalidArgument, match="timeout must be seconds >= 0, got -1"):
        await lab.wait_state(listener, "LISTEN", timeout=-1)
    with pytest.raises(InvalidArgument, match="TCP state name.*got 'HALF_OPEN'"):
        await lab.wait_state(listener, "HALF_OPEN")
    assert (await lab.wait_state(listener, "listen", timeout=0)).state == "LISTEN"


async def test_spawn_missing_binary(lab):
    client, server = await lab.pair()
    with pytest.raises(SetupError, match="cannot spawn '/no/such/server' in host server: no such file"):
        await server.spawn(["/no/such/server", "--port", "1"])
    assert _netns.pids_in(_netns.inode(_netns.path(server.netns))) == []


async def test_readiness_never_met_kills_the_process(lab):
    client, server = await lab.pair()
    with pytest.raises(ObservationTimeout, match=r"not ready within 0.3s: listening\(9999\) never held"):
        await server.spawn(["sleep", "30"], ready=harness.listening(9999), ready_timeout=0.3)
    assert _netns.pids_in(_netns.inode(_netns.path(server.netns))) == []
    with pytest.raises(SetupError, match="exited with 3 before it was ready"):
        await server.spawn(["sh", "-c", "exit 3"], ready=harness.listening(9999))


async def test_lab_teardown_leaves_nothing():
    """Processes, sockets of every kind (TIME_WAIT, orphans, listeners) and
    namespaces are gone after the lab, and the slot is free again."""
    async with harness.open_lab() as lab:
        client, server = await lab.pair()
        await server.spawn(["sleep", "60"])
        listener = await server.listen(7009)
        conn = await client.connect(server, 7009)
        peer = await listener.accept()
        await peer.send(b"x" * 1000)
        await conn.close()                  # orphan in FIN_WAIT2 once the peer ACKs
        names = [h.netns for h in lab.hosts.values()] + [lab._switch[0]]
        pids = _netns.pids_in(_netns.inode(_netns.path(server.netns)))
        slot = lab.slot.index
    assert pids and not any(_netns.exists(n) for n in names)
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                   for p in pids)
    assert not holds_slot(slot)   # (another run may have leased it since)


def test_a_free_slot_with_a_dead_owners_namespaces_is_swept_before_reuse():
    """A killed run's slot frees with it, but its namespaces stay until a
    sweep, with the slot's addresses and live sockets: their timers and the
    sweep's socket aborts (a RST with reason TCP_STATE, seen in a catalog
    run) would land in the next lab's timeline, which attributes kernel
    events by address.  The lease sweeps them first."""
    import subprocess
    from harness import _names, _sweep
    dead = subprocess.Popen(["true"])
    dead.wait()                                  # a pid no process has now
    probe = _names.lease_slot(300)
    index = probe.index
    probe.release()
    name = f"fih{dead.pid}-{index}-a"
    _netns.create(name)
    try:
        slot = _sweep.lease_slot(index)
        try:
            assert slot.index == index and not _netns.exists(name)
        finally:
            slot.release()
    finally:
        if _netns.exists(name):
            _netns.delete(name)


def holds_slot(index: int) -> bool:
    """Whether this process still holds slot ``index``'s lease: its flock
    file or its abstract socket open."""
    from harness._names import PREFIX
    inodes = {ln.split()[6] for ln in open("/proc/net/unix").read().splitlines()[1:]
              if ln.split()[-1] == f"@{PREFIX}-slot-{index}"}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(f"/slot-{index}.lock") or target in {f"socket:[{i}]" for i in inodes}:
            return True
    return False


async def test_cancellation_still_tears_down():
    with trio.move_on_after(0.5):
        async with harness.open_lab() as lab:
            client, server = await lab.pair()
            await server.spawn(["sleep", "60"])      # a process: not reusable
            names = [h.netns for h in lab.hosts.values()] + [lab._switch[0]]
            await trio.sleep_forever()
    assert not any(_netns.exists(n) for n in names)


async def _socket_lab(names=("client", "server"), sysctls=None):
    """A lab that only used sockets, leaving TIME_WAIT, neighbour entries
    and tcp_metrics behind; returns its namespaces."""
    async with harness.open_lab() as lab:
        client, server = await lab.pair(names=names, sysctls=sysctls)
        listener = await server.listen(7010)
        conn = await client.connect(server, 7010)
        peer = await listener.accept()
        await conn.close()
        await lab.wait_state(peer, "CLOSE_WAIT")
        await peer.close()
        await lab.wait_state(conn, "TIME_WAIT")
        return [h.netns for h in lab.hosts.values()], lab.slot.index


@pytest.mark.requires("netns_reuse")
async def test_a_socket_only_lab_is_scrubbed_and_reused():
    from harness import _lab as labmod
    labmod._pool.close()
    first, slot = await _socket_lab(sysctls={"net.ipv4.tcp_fin_timeout": 9})
    assert all(_netns.exists(n) for n in first)  # kept for the next lab...
    async with harness.open_lab() as lab:
        client, server = await lab.pair()
        assert [h.netns for h in lab.hosts.values()] == first and lab.slot.index == slot
        for host in (client, server):  # ...and as fresh as a new one
            assert len(host.sockets()) == 0                                   # TIME_WAIT gone
            assert host.run_sync(["ip", "neigh", "show"]).stdout.strip() == b""
            assert host.run_sync(["ip", "tcp_metrics", "show"]).stdout.strip() == b""
            assert host.sysctl("net.ipv4.tcp_fin_timeout") == "60"             # re-pinned
    # run() tainted that lab: destroyed, not pooled
    assert not any(_netns.exists(n) for n in first)
    again, _ = await _socket_lab(names=("a", "b"))
    labmod._pool.close()
    assert not any(_netns.exists(n) for n in again)


CLIENT = [sys.executable, "-c", """
import socket, sys, time
s = socket.socket()
print(s.connect_ex((sys.argv[1], 7999)), flush=True)    # nobody listens: refused
c = socket.create_connection((sys.argv[1], 7011))
for call in (lambda: c.recv(1), lambda: c.send(b"x"), lambda: c.send(b"x")):
    try:
        call()                                             # the peer resets us
    except OSError as e:
        print(e.errno, flush=True)
"""]


async def test_timeline_has_the_failing_calls_of_spawned_programs(lab):
    """A user's binary cannot report its errno to the test: the syscall
    tracepoints do, per process."""
    client, server = await lab.pair()
    listener = await server.listen(7011)
    proc = await client.spawn(CLIENT + [server.v4])
    peer = await listener.accept()
    await peer.close(linger=0)
    assert await proc.wait(timeout=10) == 0
    await lab.timeline.wait_for(harness.syscall_failed(proc, "sendto", "EPIPE"))
    calls = [(e.detail, e.errno) for e in lab.timeline.syscalls(proc)]
    assert calls[0] == ("connect", "ECONNREFUSED")
    assert ("recvfrom", "ECONNRESET") in calls
    assert calls[-2:] == [("sendto", "EPIPE"), ("sendto", "EPIPE")]  # RST consumed by recv
    assert proc.stdout().split() == ["111", "104", "32", "32"]


async def test_each_connection_gets_only_its_own_syn_sent(lab):
    """SYN_SENT is traced before the source port exists; two connections
    from one host to one port must not share it."""
    client, server = await lab.pair()
    listener = await server.listen(7012)
    first = await client.connect(server, 7012)
    second = await client.connect(server, 7012)
    await listener.accept()
    await listener.accept()
    for conn in (first, second):
        assert lab.timeline.states(conn) == ["SYN_SENT", "ESTABLISHED"]


@pytest.mark.requires("netns_reuse")
async def test_a_reused_host_carries_no_sysctl_of_the_lab_before():
    from harness import _lab as labmod
    labmod._pool.close()
    def ns(host):  # a namespace's identity (names repeat when a slot is leased again)
        return os.fstat(host.ns_fd).st_ino

    async with harness.open_lab() as lab:                 # pinned keys only: reusable
        a, _ = await lab.pair(sysctls={"net.ipv4.tcp_rto_max_ms": 1000})
        first = ns(a)
    async with harness.open_lab() as lab:
        a, _ = await lab.pair()
        assert ns(a) == first                             # the same namespace...
        assert a.sysctl("net.ipv4.tcp_rto_max_ms") == "120000"   # ...re-pinned
        a.sysctl("net.ipv4.tcp_rto_max_ms", 1000)        # a runtime write taints it
    async with harness.open_lab() as lab:
        a, _ = await lab.pair(sysctls={"net.ipv4.neigh.eth0.retrans_time_ms": 100})
        assert ns(a) != first and a.sysctl("net.ipv4.neigh.eth0.retrans_time_ms") == "100"
        second = ns(a)
    async with harness.open_lab() as lab:                 # an unpinned key: not reused
        a, _ = await lab.pair()
        assert ns(a) != second and a.sysctl("net.ipv4.neigh.eth0.retrans_time_ms") == "1000"


async def test_captures_stop_cleanly_under_traffic(lab):
    """stop() closes the capture socket only after the reader left its wait
    (a frame arriving during stop() used to fail that wait instead)."""
    client, server = await lab.pair()
    listener = await server.listen(7013)
    conn = await client.connect(server, 7013)
    peer = await listener.accept()

    async def traffic():
        while True:
            await conn.send(b"x" * 100)
            await peer.recv()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic)
        for _ in range(100):
            cap = await lab.capture()
            await trio.sleep(0.0005)
            await cap.stop()
        nursery.cancel_scope.cancel()
    assert cap.packets(conn)


async def test_a_failed_connect_keeps_its_addresses(lab, family):
    client, server = await lab.pair()
    sock = await client.socket(family)
    out = await sock.connect(server, 7999)                     # nobody listens
    assert out.errno == "ECONNREFUSED"
    assert sock.remote == (server.address(family), 7999) and sock.local[1] > 0
    await lab.timeline.wait_for(harness.rst_received(sock))   # its events still match
