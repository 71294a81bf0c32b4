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

import os
import re
from dataclasses import dataclass
from typing import Callable

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


SYSCALLS = ("connect", "accept", "accept4", "bind", "listen", "sendto", "sendmsg", "recvfrom",
            "recvmsg", "write", "writev", "read", "readv", "shutdown", "close")
_SYSCALL_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):"
                           r"\s+sys_(?P<call>\w+) -> 0x(?P<ret>[0-9a-f]+)$")


@dataclass(frozen=True)
class SyscallExit:
    t: float
    pid: int
    task: str
    call: str
    ret: int  # negative: -errno


class SyscallSession(_Instance):
    """A second instance (``<name>-sys``) for the failing socket calls of
    the processes the labs spawned: set_event_pid lists them, event-fork adds
    their children.  Kept apart from TraceSession because a pid filter would
    also hide the TCP tracepoints, which fire in whatever task the softirq
    interrupted."""

    def __init__(self, name: str, first_pid: int = 0):
        if not os.path.isdir(f"{ROOT}/events/syscalls"):
            raise Unsupported("kernel lacks syscall tracepoints (CONFIG_FTRACE_SYSCALLS)")

        def setup(inst: _Instance) -> None:
            _write(f"{inst.path}/options/event-fork", "1")
            # never empty (empty means every task); pid 0, the idle task, makes no calls
            _write(f"{inst.path}/set_event_pid", str(first_pid))
            for call in SYSCALLS:
                if os.path.isdir(f"{ROOT}/events/syscalls/sys_exit_{call}"):
                    inst.enable(f"syscalls/sys_exit_{call}", "ret < 0")
        super().__init__(name, setup)

    def add_pid(self, pid: int) -> None:
        fd = os.open(f"{self.path}/set_event_pid", os.O_WRONLY | os.O_APPEND)  # no O_CREAT
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)

    def drain(self) -> list[SyscallExit]:
        out = []
        for line in self.lines():
            m = _SYSCALL_LINE.match(line)
            if m:
                ret = int(m.group("ret"), 16)
                out.append(SyscallExit(float(m.group("ts")), int(m.group("pid")),
                                       m.group("task").strip(), m.group("call"),
                                       ret - (1 << 64) if ret >= 1 << 63 else ret))
        return out


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
