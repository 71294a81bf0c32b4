"""A lean inet_diag client (NETLINK_SOCK_DIAG), decoded with struct.

This is the hot path of every ``wait_state`` poll and every snapshot, so it
does not go through pyroute2's DiagSocket (which decodes 10,000 sockets in
about a second); bench/bench_snapshot.py keeps the measurement beside it.
It also implements SOCK_DESTROY (``ss -K``), which the harness uses to abort
every socket of a namespace before deleting it: an orphaned socket would keep
the deleted namespace alive and retransmitting into a vanished link.

Layouts: linux/inet_diag.h (inet_diag_req_v2, inet_diag_msg) and
linux/tcp.h (struct tcp_info).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from . import _nlmsg

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO, INET_DIAG_SHUTDOWN = 2, 8

_NLH = _nlmsg.HDR
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
_REQ = struct.Struct("=BBBxI")
# inet_diag_sockid: sport, dport (network order), src[16], dst[16], if, cookie[2]
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retrans, sockid(48), expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")

ALL_STATES = 0xFFFFFFFF
# TCP_BOUND_INACTIVE (13): bound, never listened nor connected.  Asking for it
# makes the kernel walk the machine-wide bind table (bhash2: ~65,536 buckets,
# ~0.75 ms per dump here, namespace or not: inet_diag_dump_icsk()); such a
# socket has no connection, no timer and sends nothing, so no dump of ours
# asks for it.  Every other state lives in the namespace's own tables.
TCPF_BOUND_INACTIVE = 1 << 13
STATES = ALL_STATES & ~TCPF_BOUND_INACTIVE


def open_socket(ns_fd: int | None = None) -> socket.socket:
    """Open a diag socket in the namespace ``ns_fd`` (None: the calling
    thread's)."""
    from ._netns import socket_in
    return socket_in(ns_fd, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                     NETLINK_SOCK_DIAG)


def _request(family: int, protocol: int, states: int, sockid: bytes | None = None, *,
             msg_type: int = SOCK_DIAG_BY_FAMILY, flags: int = NLM_F_REQUEST | NLM_F_DUMP,
             ext: int = 1 << (INET_DIAG_INFO - 1)) -> bytes:
    body = _REQ.pack(family, protocol, ext, states) + (sockid or bytes(48))
    return _nlmsg.message(msg_type, flags, 1, body)


def dump(sock: socket.socket, family: int) -> list[tuple[bytes, int, int]]:
    """The raw inet_diag_msg records of one family, as (buffer, offset of
    the payload, payload length); decoding is left to the caller."""
    return [(r[-2], r[-1] + 16, r[0] - 16) for r in records(sock, family, tuple, ())]


def destroy(sock: socket.socket, family: int, protocol: int, sockid: bytes) -> int:
    """SOCK_DESTROY one socket (sockid as returned in its diag message,
    cookie included).  Returns 0 or the errno (ENOENT: already gone)."""
    sock.send(_request(family, protocol, ALL_STATES, sockid, msg_type=SOCK_DESTROY,
                       flags=NLM_F_REQUEST | NLM_F_ACK, ext=0))
    data = sock.recv(65536)
    _length, mtype, *_ = _NLH.unpack_from(data, 0)
    if mtype == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        return -err
    return 0


def destroy_all(sock: socket.socket) -> int:
    """Abort every TCP socket (any state, both families) visible to ``sock``'s
    namespace.  Returns how many were destroyed; Unsupported where the kernel
    has no SOCK_DESTROY (Debian's 6.1 UML, kernels without
    CONFIG_INET_DIAG_DESTROY)."""
    n = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        for buf, off, _len in dump(sock, family):
            sockid = bytes(buf[off + 4: off + 52])
            err = destroy(sock, family, socket.IPPROTO_TCP, sockid)
            if err == 0:
                n += 1
            elif err == errno.EOPNOTSUPP:
                from .errors import Unsupported
                raise Unsupported("inet_diag SOCK_DESTROY is not in this kernel "
                                  "(CONFIG_INET_DIAG_DESTROY)")
            elif err not in (errno.ENOENT,):
                raise OSError(err, f"SOCK_DESTROY: {os.strerror(err)}")
    return n


# --- decoding -------------------------------------------------------------

# what every snapshot decodes at once, from the nlmsghdr and inet_diag_msg:
# len, type, family, state, timer, retrans, sport, dport (network order, read
# natively); the rest (REST, at offset +24) is read only when asked for
RECORD = struct.Struct("=IH10xBBBBHH")
# src[16], dst[16], if, cookie[2], expires, rqueue, wqueue, uid, inode
REST = struct.Struct("=16s16sIIIIIIII")


def records(sock: socket.socket, family: int, cls, extra: tuple) -> list:
    """Dump one family into ``cls`` tuples: RECORD's fields, then the
    buffer and the message's offset, then ``extra``.  The hot path of every
    snapshot: one struct call and one tuple per socket."""
    sock.send(_request(family, socket.IPPROTO_TCP, STATES))
    new, unpack, out = tuple.__new__, RECORD.unpack_from, []
    size = RECORD.size
    while True:
        data = sock.recv(1 << 20)
        off, n = 0, len(data)
        while off < n:
            # NLMSG_DONE (20 bytes) may end the buffer: too short for RECORD
            head = unpack(data, off) if n - off >= size else _NLH.unpack_from(data, off)
            mtype = head[1]
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + 16)
                if err:
                    raise OSError(-err, f"inet_diag dump: {os.strerror(-err)}")
                return out
            out.append(new(cls, head + (data, off) + extra))
            off += (head[0] + 3) & ~3

def decode_header(buf: bytes, off: int):
    """(family, state, timer, retrans, sport, dport, src16, dst16, cookie,
    expires_ms, rqueue, wqueue, uid, inode)"""
    family, state, timer, retrans = _MSG.unpack_from(buf, off)
    sport, dport, src, dst = _SOCKID.unpack_from(buf, off + 4)
    _ifindex, c0, c1 = _SOCKID_TAIL.unpack_from(buf, off + 40)
    expires, rqueue, wqueue, uid, ino = _MSG_TAIL.unpack_from(buf, off + 52)
    return (family, state, timer, retrans, sport, dport, src, dst, c0 | (c1 << 32),
            expires, rqueue, wqueue, uid, ino)


def attributes(buf: bytes, off: int, length: int) -> dict[int, memoryview]:
    """The attributes after the inet_diag_msg (72 bytes) of a record."""
    return _nlmsg.attrs(buf, off + 72, off + length)


# struct tcp_info (linux/tcp.h), the fields we expose, by offset
TCP_INFO_FIELDS = {
    "ca_state": (1, "B"), "retransmits": (2, "B"), "probes": (3, "B"), "backoff": (4, "B"),
    "options": (5, "B"),
    "rto_us": (8, "I"), "ato_us": (12, "I"), "snd_mss": (16, "I"), "rcv_mss": (20, "I"),
    "unacked": (24, "I"), "sacked": (28, "I"), "lost": (32, "I"), "retrans": (36, "I"),
    "last_data_sent_ms": (44, "I"), "last_ack_sent_ms": (48, "I"),
    "last_data_recv_ms": (52, "I"), "last_ack_recv_ms": (56, "I"),
    "pmtu": (60, "I"), "rtt_us": (68, "I"), "rttvar_us": (72, "I"),
    "snd_cwnd": (80, "I"), "advmss": (84, "I"), "total_retrans": (100, "I"),
    "bytes_acked": (120, "Q"), "bytes_received": (128, "Q"),
    "segs_out": (136, "I"), "segs_in": (140, "I"), "notsent_bytes": (144, "I"),
    "data_segs_in": (152, "I"), "data_segs_out": (156, "I"), "dsack_dups": (216, "I"),
    "reord_seen": (220, "I"), "rcv_ooopack": (224, "I"),
    "bytes_sent": (200, "Q"), "bytes_retrans": (208, "Q"), "snd_wnd": (228, "I"),
    "rcv_wnd": (232, "I"),
}


def decode_tcp_info(raw: memoryview) -> dict[str, int]:
    info = {}
    n = len(raw)
    for name, (off, fmt) in TCP_INFO_FIELDS.items():
        size = 8 if fmt == "Q" else (1 if fmt == "B" else 4)
        if off + size <= n:
            info[name] = struct.unpack_from("=" + fmt, raw, off)[0]
    return info
