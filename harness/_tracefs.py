"""The kernel's tracepoints through a tracefs instance of our own.

One instance per pytest process (``fih<pid>``; removing one costs ~44 ms, so
not one per lab), 8 MB per CPU so churn loses nothing, clocked with ``mono``
so event times compare with ``time.monotonic()``.  Never the global buffer.

Tracepoints carry addresses but no namespace: the caller keeps the events
whose addresses fall in its labs' subnets (``keep``), the rest are dropped at
parse time.  Reading is on demand: ``drain()`` empties trace_pipe without
blocking, so a query sees every event committed before it.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import _exclusive
from .errors import Unsupported

ROOT = "/sys/kernel/tracing"
EVENTS = (
    "sock/inet_sock_set_state",
    "tcp/tcp_send_reset",
    "tcp/tcp_receive_reset",
    "sock/inet_sk_error_report",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_retransmit_synack",
)
_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+"
                   r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s+(?P<body>.*)$")
_ADDRPORT = re.compile(r"^\[?(?P<addr>[0-9a-fA-F.:]+?)\]?:(?P<port>\d+)$")


@dataclass(frozen=True)
class RawEvent:
    t: float
    name: str
    fields: dict
    task: str
    pid: int


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "tracefs needs root"
    from ._names import outer_uid
    if outer_uid() != 0:  # a user namespace's mapped root: the tracing is the machine's
        return (f"tracefs needs the machine's root; this is a user namespace (uid 0 here is "
                f"uid {outer_uid()} outside)")
    if not os.path.isdir(f"{ROOT}/events"):
        if os.system(f"mount -t tracefs nodev {ROOT} >/dev/null 2>&1") != 0:
            return f"tracefs is not mounted at {ROOT} and cannot be mounted"
    if not os.access(f"{ROOT}/instances", os.W_OK):
        return f"{ROOT}/instances is not writable (read-only sysfs or no CAP_SYS_ADMIN?)"
    missing = [e for e in EVENTS if not os.path.isdir(f"{ROOT}/events/{e}")]
    if missing:
        return f"kernel lacks tracepoints {missing}"
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def parse_body(event: str, body: str) -> dict:
    fields = {}
    for part in body.split():
        k, _, v = part.partition("=")
        fields[k] = v
    if event == "tcp_send_reset":  # src/dest are sockaddrs: 1.2.3.4:80 or [fd00::1]:80
        for key, akey, pkey in (("src", "saddr", "sport"), ("dest", "daddr", "dport")):
            m = _ADDRPORT.match(fields.get(key, ""))
            if m:
                fields[akey], fields[pkey] = m.group("addr"), m.group("port")
    elif fields.get("family") == "AF_INET6":
        fields["saddr"], fields["daddr"] = fields.get("saddrv6"), fields.get("daddrv6")
    for k in ("sport", "dport", "error", "err"):
        if k in fields:
            try:
                fields[k] = int(fields[k])
            except ValueError:
                pass
    for k in ("oldstate", "newstate", "state"):
        if k in fields and fields[k].startswith("TCP_"):
            fields[k] = fields[k][4:]
    return fields


class _Instance:
    """A tracefs instance of ours: made, read without blocking through
    trace_pipe, and on close every event it enabled disabled and the
    instance removed."""

    def __init__(self, name: str, setup: Callable[["_Instance"], None]):
        reason = unavailable_reason()
        if reason:
            raise Unsupported(reason)
        self.name, self.path = name, f"{ROOT}/instances/{name}"
        self._enabled: list[str] = []
        self._fd: int | None = None
        self._partial = b""
        try:
            os.makedirs(self.path, exist_ok=True)
        except PermissionError as exc:
            raise Unsupported(f"cannot create tracefs instance {self.path}: {exc.strerror}") \
                from exc
        try:
            _write(f"{self.path}/trace_clock", "mono")
            setup(self)
            self._fd = os.open(f"{self.path}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def enable(self, event: str, filter: str | None = None) -> None:
        if filter:
            _write(f"{self.path}/events/{event}/filter", filter)
        _write(f"{self.path}/events/{event}/enable", "1")
        self._enabled.append(event)

    def lines(self) -> list[str]:
        """Every complete line committed so far."""
        chunks = []
        while True:
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                break
            except InterruptedError:  # pragma: no cover
                continue
            if not data:
                break
            chunks.append(data)
        if not chunks:
            return []
        lines = (self._partial + b"".join(chunks)).split(b"\n")
        self._partial = lines.pop()
        return [raw.decode("utf-8", "replace") for raw in lines]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for event in self._enabled:
            try:
                _write(f"{self.path}/events/{event}/enable", "0")
            except OSError:
                pass
        self._enabled = []
        remove_instance(self.name)


class TraceSession(_Instance):
    """The process's TCP tracepoints.  ``keep(fields) -> bool`` filters."""

    def __init__(self, name: str, keep: Callable[[dict], bool]):
        self.keep = keep

        def setup(inst: _Instance) -> None:
            _write(f"{inst.path}/buffer_size_kb", "8192")
            for e in EVENTS:
                inst.enable(e)
        super().__init__(name, setup)

    def drain(self) -> list[RawEvent]:
        """Every event committed so far that ``keep`` accepts."""
        out = []
        for line in self.lines():
            m = _LINE.match(line)
            if not m:
                continue
            fields = parse_body(m.group("event"), m.group("body"))
            if self.keep(fields):
                out.append(RawEvent(float(m.group("ts")), m.group("event"), fields,
                                    m.group("task").strip(), int(m.group("pid"))))
        return out


# The calls servers make on sockets.  read/write/close also fail on other
# files; the process and the errno tell them apart.  sendfile is
# sys_sendfile64 in the kernel and reported as "sendfile".
SYSCALLS = ("connect", "accept", "accept4", "bind", "listen", "shutdown", "close",
            "read", "readv", "write", "writev", "recvfrom", "recvmsg", "recvmmsg",
            "sendto", "sendmsg", "sendmmsg", "sendfile64", "splice", "getsockopt")
_ALIASES = {"sendfile64": "sendfile"}
_SYSCALL_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):"
                           r"\s+(?:sys_(?P<call>\w+) -> 0x(?P<ret>[0-9a-f]+)"
                           r"|sched_process_fork: .*? pid=(?P<parent>\d+) child_comm=.*? "
                           r"child_pid=(?P<child>\d+)"
                           r"|soerr\d+: \(\S+\) level=\S+ optname=\S+ value=(?P<soerr>-?\d+).*"
                           r"|tracing_mark_write: fih-tid (?P<local>\d+))\s*$")
# the kernel's pid namespace: /proc/self/ns/pid of a process in it
PROC_PID_INIT_INO = 0xEFFFFFFC
SO_ERROR, SOL_SOCKET = 4, 1


@dataclass(frozen=True)
class SyscallExit:
    """A failing call.  ``pid`` is the kernel's (init pid namespace) pid.
    ``reason`` is "SO_ERROR" for a getsockopt(SO_ERROR) that succeeded
    while handing the socket's pending error to the program (ret = -error)."""
    t: float
    pid: int
    task: str
    call: str
    ret: int  # negative: -errno
    reason: str | None = None


@dataclass(frozen=True)
class Fork:
    """sched_process_fork of a traced task (threads included): kernel pids."""
    t: float
    parent: int
    child: int


def libc_getsockopt_return(path: str) -> int | None:
    """File offset of the instruction after ``syscall`` in glibc's
    getsockopt(): there rsi is the level, rdx the option, r10 the user's
    optval pointer (the kernel preserves all three) and the value is
    already written.  None when the file has no such function."""
    import struct
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    for sec in sections:
        if sec[1] != 11:  # SHT_DYNSYM
            continue
        strtab = sections[sec[6]]
        for off in range(sec[4], sec[4] + sec[5], 24):
            name, info, _, _, value, size = struct.unpack_from("<IBBHQQ", data, off)
            end = data.index(b"\0", strtab[4] + name)
            if data[strtab[4] + name:end] != b"getsockopt" or not size:
                continue
            for ptype, _, poff, vaddr, _, filesz, _, _ in loads:
                if ptype == 1 and vaddr <= value < vaddr + filesz:
                    body = data[value - vaddr + poff:value - vaddr + poff + size]
                    at = body.find(b"\x0f\x05")
                    # mov %rcx,%r10 must precede it: optval rides in r10
                    if at >= 0 and b"\x49\x89\xca" in body[:at]:
                        return value - vaddr + poff + at + 2
            return None
    return None


def probe_group(instance: str) -> str:
    """The uprobe event group of an instance: its name as an identifier
    ("fih123-sys" -> "fih123_sys"); ``instance_of`` maps it back."""
    return re.sub(r"\W", "_", instance)


def instance_of(group: str) -> str:
    return group.replace("_", "-")


def _append(path: str, line: str) -> None:
    """Append to a tracefs control file (open(..., "a") seeks, which
    uprobe_events refuses with EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def probe_events() -> list[str]:
    """The uprobe events defined on this machine, as ``group/event``."""
    try:
        with open(f"{ROOT}/uprobe_events") as f:
            return [line.split()[0].split(":", 1)[1] for line in f if line.strip()]
    except OSError:
        return []


def probe_groups() -> list[str]:
    """Groups of the uprobe events defined on this machine."""
    return sorted({name.split("/")[0] for name in probe_events()})


def remove_probes(group: str) -> None:
    """Remove every uprobe event of ``group`` (events must be disabled)."""
    for name in probe_events():
        if name.split("/")[0] == group:
            try:
                _append(f"{ROOT}/uprobe_events", f"-:{name}\n")
            except OSError:
                pass


@functools.lru_cache(maxsize=1)
def in_init_pid_namespace() -> bool:
    """Whether this process's pids are the kernel's (a process never changes
    its own pid namespace: cached)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


class SyscallSession(_Instance):
    """A second instance (``<name>-sys``) for the failing socket calls of
    the processes the labs run.  Kept apart from TraceSession because a pid
    filter would also hide the TCP tracepoints, which fire in whatever task
    the softirq interrupted.

    Who is traced: set_event_pid, with options/event-fork so the kernel adds
    every child (and thread) of a listed task in copy_process() itself, before
    the child runs: no child is missed however soon it forks.  A spawn adds
    the spawning *thread* (one made for that fork, which exits at once and
    leaves the list: event-fork also removes exiting tasks), so the new
    process is listed from its first instruction.  sched_process_fork events
    of listed tasks give the lineage, so a child that exits before the
    buffer is read is still attributed to its ancestor and host.

    getsockopt(SO_ERROR) succeeds while handing over the socket's error: a
    uprobe on the instruction after glibc's ``syscall`` in getsockopt() reads
    the value the kernel wrote (this kernel has no kprobe events, and the
    syscall tracepoint carries only the return value).  Programs that do not
    call glibc's getsockopt (static binaries) are not seen there.

    All pids here are the kernel's (the init pid namespace's), as tracefs
    reports and expects them."""

    def __init__(self, name: str, first_pid: int = 0):
        if not os.path.isdir(f"{ROOT}/events/syscalls"):
            raise Unsupported("kernel lacks syscall tracepoints (CONFIG_FTRACE_SYSCALLS)")
        self._libcs: dict[tuple[int, int], str] = {}  # (dev, ino) -> event name
        self._group = probe_group(name)
        self._pending: list[str] = []
        self._lock = threading.Lock()

        def setup(inst: _Instance) -> None:
            _write(f"{inst.path}/options/event-fork", "1")
            # never empty (empty means every task); pid 0, the idle task, makes no calls
            _write(f"{inst.path}/set_event_pid", str(first_pid))
            for call in SYSCALLS:
                if os.path.isdir(f"{ROOT}/events/syscalls/sys_exit_{call}"):
                    inst.enable(f"syscalls/sys_exit_{call}", "ret < 0")
            inst.enable("sched/sched_process_fork")
        super().__init__(name, setup)

    def add_pid(self, pid: int) -> None:
        """List a task by its kernel pid (its children follow by event-fork)."""
        _append(f"{self.path}/set_event_pid", f"{pid}\n")

    def kernel_tid(self) -> int:
        """The calling thread's kernel pid.  In a pid namespace of its own
        (a CI container) the thread writes a trace marker and reads back the
        pid the kernel recorded with it."""
        local = threading.get_native_id()
        if in_init_pid_namespace():
            return local
        with self._lock:
            _write(f"{self.path}/trace_marker", f"fih-tid {local}")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                for line in self._read_lines():
                    m = _SYSCALL_LINE.match(line)
                    if m and m.group("local") == str(local):
                        return int(m.group("pid"))
                    self._pending.append(line)
            raise Unsupported("cannot learn this thread's kernel pid from tracefs "
                              "(the trace marker never came back)")

    def probe_libc(self, path: str) -> bool:
        """Watch getsockopt(SO_ERROR) in the glibc at ``path`` (e.g.
        /proc/<pid>/root/usr/lib/x86_64-linux-gnu/libc.so.6 for a
        container's).  False when it is not a glibc we understand or this
        kernel has no uprobe events."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in self._libcs:
            return True
        offset = libc_getsockopt_return(path)
        if offset is None or not os.path.exists(f"{ROOT}/uprobe_events"):
            return False
        event = f"soerr{len(self._libcs)}"
        if not self._libcs:   # a user-mode Linux guest hangs on it: never beside one
            _exclusive.hold("uprobe", _exclusive.UPROBE_WAIT)
        try:
            _append(f"{ROOT}/uprobe_events",
                    f"p:{self._group}/{event} {path}:{offset:#x} "
                    f"level=%si:s32 optname=%dx:s32 value=+0(%r10):s32\n")
            self.enable(f"{self._group}/{event}",
                        f"level == {SOL_SOCKET} && optname == {SO_ERROR} && value != 0")
        except OSError:
            if not self._libcs:
                _exclusive.release("uprobe")
            return False
        self._libcs[key] = event
        return True

    def _read_lines(self) -> list[str]:
        return super().lines()

    def lines(self) -> list[str]:
        with self._lock:
            pending, self._pending = self._pending, []
            return pending + self._read_lines()

    def drain(self) -> list:
        """SyscallExit and Fork records in time order."""
        out: list = []
        for line in self.lines():
            m = _SYSCALL_LINE.match(line)
            if not m:
                continue
            t, pid = float(m.group("ts")), int(m.group("pid"))
            if m.group("child"):
                out.append(Fork(t, int(m.group("parent")), int(m.group("child"))))
            elif m.group("soerr"):
                out.append(SyscallExit(t, pid, m.group("task").strip(), "getsockopt",
                                       -abs(int(m.group("soerr"))), "SO_ERROR"))
            elif m.group("call"):
                ret = int(m.group("ret"), 16)
                call = m.group("call")
                out.append(SyscallExit(t, pid, m.group("task").strip(), _ALIASES.get(call, call),
                                       ret - (1 << 64) if ret >= 1 << 63 else ret))
        return out

    def unprobe_libcs(self) -> None:
        """Take the getsockopt uprobes away (disabled, then removed): while
        they exist every glibc getsockopt() on the machine traps, which a
        ptrace-driven user-mode Linux guest does not survive."""
        for event in self._libcs.values():
            name = f"{self._group}/{event}"
            try:
                _write(f"{self.path}/events/{name}/enable", "0")
            except OSError:
                pass
            if name in self._enabled:
                self._enabled.remove(name)
        if self._libcs:
            remove_probes(self._group)
            self._libcs.clear()
            _exclusive.release("uprobe")

    def close(self) -> None:
        super().close()
        if self._libcs:
            remove_probes(self._group)
            self._libcs.clear()
            _exclusive.release("uprobe")


def remove_instance(name: str) -> None:
    try:
        os.rmdir(f"{ROOT}/instances/{name}")
    except FileNotFoundError:
        pass


def list_instances() -> list[str]:
    """Every instance's name; none where tracefs is absent or not ours to
    read (a plain user, a user namespace): we could not have made any."""
    try:
        return os.listdir(f"{ROOT}/instances")
    except (FileNotFoundError, PermissionError):
        return []
