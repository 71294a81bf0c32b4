"""Real multi-process servers from Debian's packages, observed whole: the
failing socket calls of nginx's workers, of PostgreSQL's backends, of a
container's main process, and of children that fork and exit at once, are
in the timeline, attributed to the process the test started and its host.

Each server runs with a configuration in a temporary directory, listening
on its lab host's address only.
"""

import glob
import os
import pathlib
import re
import shutil
import struct

import pytest
import trio

import harness
from harness._names import owned_tempdir
from harness._tracer import tracer as _tracer
from helpers import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="labs need root (network namespaces)")


def _needs(binary: str) -> str:
    """The Debian package's binary (PostgreSQL's live under
    /usr/lib/postgresql/<version>/bin, off PATH)."""
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{binary}"))  # the newest last
    path = debian[-1] if debian else shutil.which(binary, path=os.defpath + ":/usr/sbin")
    if path is None:
        pytest.skip(f"{binary} is not installed (.ci/setup.sh installs it from Debian)")
    return path


@pytest.fixture(autouse=True)
def so_error_probe(monkeypatch):
    """getsockopt(SO_ERROR) is watched only when asked for (it traps every
    glibc getsockopt on the machine while a lab is open)."""
    monkeypatch.setenv("HARNESS_SO_ERROR_PROBE", "1")


@pytest.fixture
def srvdir():
    """A directory the servers' unprivileged users (nginx's workers run as
    nobody, PostgreSQL as postgres) can reach: pytest's tmp_path is under a
    0700 directory.  Named by its owner, as the lab's own directories: if
    this run is killed, the next start removes it."""
    d = owned_tempdir()
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _child_of(proc):
    """A syscall event of one of ``proc``'s descendants, not of proc itself."""
    return lambda e: e.kind == "syscall" and e.pid != proc.kernel_pid and \
        proc.kernel_pid in e.ancestors


# --- children that fork at once and exit at once --------------------------------

async def test_a_child_that_forks_and_exits_at_once_is_seen_50_of_50(lab):
    """bash's ( ... ) forks a subshell as its very first act; the subshell's
    connect() is refused and it exits.  The kernel lists the child at fork
    (event-fork) and the fork event records its parent: each of the 50 is
    in the timeline, read only after it is long gone."""
    client, server = await lab.pair()
    script = f"(exec 3<>/dev/tcp/{server.v4}/9) 2>/dev/null; exit 0"
    procs = []
    for _ in range(50):
        proc = await client.spawn(["bash", "-c", script])
        assert await proc.wait(timeout=10) == 0
        procs.append(proc)
    events = lab.timeline.syscalls()
    for proc in procs:
        mine = [e for e in events if harness.syscall_failed(proc, "connect", "ECONNREFUSED")(e)]
        assert len(mine) == 1, (proc, lab.timeline.syscalls(proc))
        assert mine[0].pid != proc.kernel_pid and mine[0].ancestors[-1] == proc.kernel_pid
        assert mine[0].host == "client"
    # by host: every one of them, and nothing of the server's
    assert len(lab.timeline.syscalls(client)) == len(lab.timeline.syscalls()) >= 50
    assert lab.timeline.syscalls(server) == []


async def test_grandchildren_and_the_spawned_process_itself_are_attributed(lab):
    """sh -> sh -> a Python program: its failing connect is its
    grandparent's (the process the test spawned) and its host's."""
    client, server = await lab.pair()
    inner = f"python3 -c 'import socket; socket.create_connection((\"{server.v4}\", 9))'; exit 0"
    proc = await client.spawn(["sh", "-c", 'sh -c "$1" 2>/dev/null; exit 0', "sh", inner])
    assert await proc.wait(timeout=10) == 0
    ev = await lab.timeline.wait_for(harness.syscall_failed(proc, "connect", "ECONNREFUSED"))
    assert len(ev.ancestors) == 2 and ev.ancestors[-1] == proc.kernel_pid
    assert await lab.timeline.wait_for(harness.syscall_failed(client, "connect"))
    with pytest.raises(harness.ObservationTimeout):
        await lab.timeline.wait_for(harness.syscall_failed(server), timeout=0.05)
    # through a wrapper that forks (runuser: PAM session in the parent)
    wrapped = await client.spawn(["runuser", "-u", "postgres", "--", "bash", "-c",
                                  f"(exec 3<>/dev/tcp/{server.v4}/9) 2>/dev/null; exit 0"])
    assert await wrapped.wait(timeout=10) == 0, wrapped.output()
    ev = await lab.timeline.wait_for(harness.syscall_failed(wrapped, "connect", "ECONNREFUSED"))
    assert len(ev.ancestors) >= 2 and ev.ancestors[-1] == wrapped.kernel_pid


# --- nginx: a master and two workers ---------------------------------------------

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    server {{
        listen {addr}:8080;
        location / {{ root {d}/www; }}
        location /up {{ proxy_pass http://{upstream}:9; }}
    }}
}}
"""


async def _nginx(lab, srvdir):
    nginx = _needs("nginx")
    client, server = await lab.pair()
    d = srvdir / "nginx"
    (d / "www").mkdir(parents=True)
    os.chmod(d, 0o755)
    with open(d / "www" / "big", "wb") as f:
        f.truncate(32 << 20)  # sparse: sendfile reads zeros
    os.chmod(d / "www" / "big", 0o644)
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, addr=server.v4, upstream=client.v4))
    proc = await server.spawn([nginx, "-c", str(d / "nginx.conf"), "-p", str(d),
                               "-e", str(d / "error.log")],
                              ready=harness.listening(8080))
    # the master forks its workers once it listens
    await wait_until(lambda: len(_children(proc.pid)) == 2, what="nginx's two workers")
    return client, server, proc


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


async def test_nginx_worker_sees_the_client_reset_while_sending(lab, srvdir):
    """A client reads the start of a 32 MB download and resets.  The worker
    serving it (not the master) learns it while sending: here nginx takes
    the error from getsockopt(SO_ERROR) after epoll reports EPOLLERR (a
    sendfile/writev failing with ECONNRESET or EPIPE is the other road), and
    its error log names the same worker and errno."""
    client, server, proc = await _nginx(lab, srvdir)
    conn = await client.connect(server, 8080)
    await conn.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await conn.recv(4096)).value.startswith(b"HTTP/1.1 200")
    await conn.close(linger=0)
    ev = await lab.timeline.wait_for(
        lambda e: _child_of(proc)(e) and e.detail in ("sendfile", "writev", "getsockopt")
        and e.errno in ("ECONNRESET", "EPIPE"), timeout=5)
    assert ev.host == "server" and ev.pid in _children(proc.pid)  # a worker
    assert len(_children(proc.pid)) == 2
    code = {"ECONNRESET": 104, "EPIPE": 32}[ev.errno]
    log = srvdir / "nginx" / "error.log"
    # "client prematurely closed connection (104: ...)" after SO_ERROR,
    # "sendfile() failed (32: ...)" after a failing call
    line = re.compile(rf"\b{ev.pid}#{ev.pid}: \*\d+ .*\({code}: ")
    await wait_until(lambda: line.search(log.read_text()), what="nginx's log line")


async def test_nginx_worker_learns_a_refused_upstream_through_so_error(lab, srvdir):
    """proxy_pass to a port nobody listens on: the worker's non-blocking
    connect() returns EINPROGRESS, the RST arrives, and nginx learns
    ECONNREFUSED from getsockopt(SO_ERROR), a call that succeeds."""
    client, server, proc = await _nginx(lab, srvdir)
    conn = await client.connect(server, 8080)
    await conn.send(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await conn.recv(4096)).value.startswith(b"HTTP/1.1 502")
    ev = await lab.timeline.wait_for(harness.syscall_failed(proc, "getsockopt", "ECONNREFUSED"))
    assert ev.reason == "SO_ERROR" and ev.pid != proc.kernel_pid


# --- PostgreSQL: a postmaster that forks a backend per connection ---------------

async def _postgres(lab, srvdir):
    initdb, postgres = _needs("initdb"), _needs("postgres")
    client, server = await lab.pair()
    d = srvdir / "pg"
    d.mkdir()
    shutil.chown(d, "postgres", "postgres")
    init = await server.spawn([initdb, "-D", str(d / "data"), "-A", "trust", "-U", "postgres",
                               "--no-sync", "--no-instructions"], user="postgres")
    assert await init.wait(timeout=60) == 0, init.output()
    (d / "pg_hba.conf").write_text(f"host all all {client.v4}/32 trust\n")
    proc = await server.spawn([postgres, "-D", str(d / "data"), "-k", str(d),
                               "-c", f"hba_file={d / 'pg_hba.conf'}",
                               "-c", f"listen_addresses={server.v4}", "-c", "port=5432",
                               "-c", "fsync=off", "-c", "max_connections=10",
                               "-c", "shared_buffers=1MB"], user="postgres")
    await proc.wait_output("ready to accept connections", timeout=30)
    return client, server, proc


def _startup(user: str) -> bytes:
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    return struct.pack("!I", len(body) + 4) + body


async def test_postgres_backend_recv_fails_when_the_client_resets(lab, srvdir):
    """A client logs in (the postmaster forks a backend), then resets: the
    backend's recv() fails with ECONNRESET ("could not receive data from
    client"), and it is the postmaster's descendant."""
    client, server, proc = await _postgres(lab, srvdir)
    assert proc.argv[0].endswith("postgres")
    conn = await client.connect(server, 5432)
    await conn.send(_startup("postgres"))
    reply = b""
    while b"Z" not in reply:  # ReadyForQuery: the backend now waits in recv()
        out = await conn.recv()
        assert out.ok and out.value, out
        reply += out.value
    await conn.close(linger=0)
    ev = await lab.timeline.wait_for(
        lambda e: _child_of(proc)(e) and e.detail == "recvfrom" and e.errno == "ECONNRESET",
        timeout=5)
    assert ev.host == "server"
    await proc.wait_output("could not receive data from client", timeout=5)
    # its shared memory is the host's own: the lab's SIGKILL leaves nothing on the machine
    shm = (await server.run(["ls", "-A", "/dev/shm"])).stdout.decode().split()
    assert any(n.startswith("PostgreSQL.") for n in shm)
    assert not set(shm) & set(os.listdir("/dev/shm"))
    key = (srvdir / "pg" / "data" / "postmaster.pid").read_text().splitlines()[6].split()[0]
    sysv = (await server.run(["cat", "/proc/sysvipc/shm"])).stdout.decode()
    with open("/proc/sysvipc/shm") as f:
        machine = f.read()
    assert key in [line.split()[0] for line in sysv.splitlines()[1:]]
    assert key not in [line.split()[0] for line in machine.splitlines()[1:]]


async def test_spawn_as_a_user_drops_privileges_in_the_child(lab):
    client, _ = await lab.pair()
    proc = await client.spawn(["id", "-u", "-n"], user="postgres")
    assert await proc.wait(timeout=5) == 0
    assert (await proc.wait_output(r"^postgres$")).group(0) == "postgres"
    with pytest.raises(harness.InvalidArgument, match="no user 'nobody-here'"):
        await client.spawn(["true"], user="nobody-here")


async def test_wait_output_fails_early_when_the_process_exits_without_the_line(lab):
    client, _ = await lab.pair()
    proc = await client.spawn(["sh", "-c", "echo starting; exit 3"])
    with pytest.raises(harness.ObservationTimeout, match="exited .*without writing"):
        await proc.wait_output("ready", timeout=10)
    with pytest.raises(harness.InvalidArgument, match="stream must be"):
        await proc.wait_output("x", stream="both-ish")


# --- a container's main process -------------------------------------------------

REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "",
         "--appendonly", "no"]


async def _reset_while_redis_reads(lab, client, server):
    await server.main.wait_output("Ready to accept connections", timeout=10)
    conn = await client.connect(server, 6379)
    await conn.send(b"PING\r\n")
    assert (await conn.recv()).value == b"+PONG\r\n"
    await conn.send(b"*2\r\n$3\r\nGET\r\n")  # half a command: redis waits to read the rest
    await lab.wait_until(lambda snap: [s for s in snap["server"].where(port=6379)
                                       if s.state == "ESTABLISHED" and s.recv_queue == 0],
                         what="redis has read the half command")
    await conn.close(linger=0)
    ev = await lab.timeline.wait_for(harness.syscall_failed(server.main, "read", "ECONNRESET"))
    assert ev.pid == server.main.pid and ev.host == "server"
    assert harness.syscall_failed(server, "read", "ECONNRESET")(ev)
    return ev


async def test_container_main_process_failing_read_is_in_the_timeline(lab):
    """redis (the container's main process) reads a client's RST: its read()
    fails with ECONNRESET.  After a reboot (a new container, a new main
    process) the same holds for the new one."""
    from harness import _docker, faults
    if _docker.daemon_unavailable_reason():
        pytest.skip(f"no docker daemon: {_docker.daemon_unavailable_reason()}")
    client = await lab.host("client")
    server = await lab.container("server", image="redis", command=REDIS,
                                 ready=harness.listening(6379))
    first = await _reset_while_redis_reads(lab, client, server)
    # users come from the container's own /etc/passwd (root only, in this image)
    with pytest.raises(harness.InvalidArgument, match=r"no user 'postgres' in /proc/\d+/root"):
        await server.spawn(["redis-cli", "ping"], user="postgres")
    cli = await server.spawn(["redis-cli", "ping"], user="root")  # nsenter drops to it
    assert await cli.wait(timeout=10) == 0 and cli.stdout().strip() == "PONG"
    await faults.reboot(server)
    await lab.wait_until(lambda snap: snap["server"].where(state="LISTEN", port=6379),
                         timeout=10, what="the new redis listening")
    assert server.main.pid != first.pid
    second = await _reset_while_redis_reads(lab, client, server)
    assert second.t > first.t


# --- the two bugs of issue 11 ---------------------------------------------------

async def test_a_finished_lab_leaves_nothing_for_the_timeline_to_touch(lab):
    """Bug 5: a finished lab stayed registered with the tracer (it was
    unregistered by a slot it had already given back), and the next refresh
    fstat'ed its closed namespace fds: EBADF.  Now it is forgotten."""
    async with harness.open_lab() as old:
        a, _ = await old.pair(names=("a", "b"))
        proc = await a.spawn(["sleep", "30"])
        assert _tracer.roots[proc.kernel_pid][0] is a
    assert old not in _tracer.labs.values()
    assert all(h.lab is not old for h, _ in _tracer.roots.values())
    client, server = await lab.pair()
    # the fallback walks every registered host: none of them is a closed fd
    assert _tracer._host_of(os.getpid()) is None
    proc = await client.spawn(["bash", "-c", f"exec 3<>/dev/tcp/{server.v4}/9"])
    await proc.wait(timeout=5)
    await lab.timeline.wait_for(harness.syscall_failed(proc, "connect", "ECONNREFUSED"))


async def test_a_cancelled_peer_call_does_not_swallow_the_next_data(lab):
    """Bug 6: a recv cancelled in the test kept running in the peer program
    and took the next data.  Now the peer cancels it too."""
    client, server = await lab.pair()
    srv = await server.program()
    listener = await srv.listen(9000)
    conn = await client.connect(server, 9000)
    peer = await listener.accept()
    with trio.move_on_after(0.2) as scope:
        await peer.recv()
    assert scope.cancelled_caught
    await conn.send(b"x")
    with trio.fail_after(3):
        assert (await peer.recv()).value == b"x"
    # cancelled before it reached the peer, then once more while it waits there
    for timeout in (0, 0.05):
        with trio.move_on_after(timeout) as scope:
            await peer.recv()
        assert scope.cancelled_caught
    await conn.send(b"yz")
    with trio.fail_after(3):
        assert (await peer.recv()).value == b"yz"


# --- waiting on any snapshot predicate --------------------------------------------

async def test_wait_until_any_snapshot_predicate(lab):
    """lab.wait_until polls fresh snapshots of every host: here until the
    server's accepted connection has its keepalive timer armed."""
    client, server = await lab.pair()
    listener = await server.listen(7100)
    conn = await client.connect(server, 7100)
    peer = await listener.accept()
    await peer.keepalive(idle=1, interval=1, count=3)
    found = await lab.wait_until(lambda snap: [s for s in snap["server"].where(port=7100)
                                               if s.timer == "keepalive"])
    assert found[0].local == peer.local and found[0].remote == conn.local

    async def never(snap):
        return snap["client"].where(state="LISTEN")
    with pytest.raises(harness.ObservationTimeout, match="a client listener") as info:
        await lab.wait_until(never, timeout=0.05, what="a client listener")
    assert set(info.value.last) == {"client", "server"}
    with pytest.raises(harness.InvalidArgument, match="predicate must be callable"):
        await lab.wait_until("server")
    with pytest.raises(harness.InvalidArgument, match="timeout must be"):
        await lab.wait_until(lambda snap: True, timeout=-1)
    with pytest.raises(harness.InvalidArgument, match="expected a process"):
        harness.syscall_failed("nginx")
