"""A lean rtnetlink client (NETLINK_ROUTE), packed with struct: the hot
paths of building and scrubbing a host.

pyroute2 (``_netlink``) stays for everything else; measured per host on
this 2-core VM, opening an ``IPRoute`` and decoding its replies cost more
than the kernel work they ask for: wiring a host (veth, two addresses, two
links up, the readiness poll) and flushing its neighbour cache (4 ms per
host, the biggest part of a reused lab's teardown).  Here each is a few
requests on one socket opened in the namespace, as bench/_floor.py does.

Layouts: linux/netlink.h, linux/rtnetlink.h (ifinfomsg, ifaddrmsg, ndmsg),
linux/if_link.h (IFLA_*, VETH_INFO_PEER), linux/neighbour.h (NDA_*).
Errors are SetupError naming the request, the namespace and the errno.
Synchronous: called from a worker thread.
"""

from __future__ import annotations

import socket
import struct

from . import _netns, _nlmsg
from ._nlmsg import attr
from .errors import SetupError

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR = 20
RTM_DELNEIGH, RTM_GETNEIGH = 29, 30
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME, IFLA_MASTER, IFLA_QDISC, IFLA_OPERSTATE, IFLA_LINKINFO = 3, 10, 6, 16, 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_BR_MCAST_SNOOPING = 23
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02        # usable at once: no duplicate address detection
NDA_DST = 1
IFF_UP = 1
IF_OPER_UP = 6

_NLH = _nlmsg.HDR
_IFINFO = struct.Struct("=BxHiII")   # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


class Rtnl:
    """One NETLINK_ROUTE socket opened inside the namespace ``fd``."""

    def __init__(self, fd: int, netns: str):
        self.netns = netns
        self.sock = _netns.socket_in(fd, socket.AF_NETLINK, socket.SOCK_RAW
                                     | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.seq = 0

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.sock.send(_nlmsg.message(mtype, NLM_F_REQUEST | flags, self.seq, body))
        return self.seq

    def request(self, mtype: int, body: bytes, what: str,
                flags: int = NLM_F_CREATE | NLM_F_EXCL) -> None:
        """Send one request and wait for its acknowledgement."""
        seq = self._send(mtype, NLM_F_ACK | flags, body)
        while True:
            data = self.sock.recv(65536)
            _len, kind, _flags, got, _pid = _NLH.unpack_from(data, 0)
            if kind == NLMSG_ERROR and got == seq:
                (err,) = struct.unpack_from("=i", data, 16)
                if err:
                    raise SetupError(f"rtnetlink {what} failed", netns=self.netns, call=what,
                                     errno=-err)
                return

    def dump(self, mtype: int, body: bytes, what: str) -> list[tuple[bytes, int, int]]:
        """Every record of a dump, as (buffer, offset of the payload, end)."""
        seq = self._send(mtype, NLM_F_DUMP, body)
        out = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, got, _pid = _NLH.unpack_from(data, off)
                if got == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        if err:
                            raise SetupError(f"rtnetlink {what} failed", netns=self.netns,
                                             call=what, errno=-err)
                        return out
                    out.append((data, off + 16, off + length))
                off += (length + 3) & ~3

    # --- links and addresses ----------------------------------------------
    def veth(self, index: int, name: str, master: int, peer_index: int, peer_name: str,
             peer_fd: int) -> None:
        """A veth ``name`` (ifindex ``index``, up, enslaved to ``master``)
        whose peer ``peer_name`` (``peer_index``) lands in ``peer_fd``."""
        peer = _IFINFO.pack(socket.AF_UNSPEC, 0, peer_index, 0, 0) + \
            attr(IFLA_IFNAME, peer_name.encode() + b"\0") + \
            attr(IFLA_NET_NS_FD, struct.pack("=I", peer_fd))
        info = attr(IFLA_INFO_KIND, b"veth\0") + \
            attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
        self.request(RTM_NEWLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
                     + attr(IFLA_IFNAME, name.encode() + b"\0")
                     + attr(IFLA_MASTER, struct.pack("=I", master)) + attr(IFLA_LINKINFO, info),
                     f"add veth {name}")

    def bridge(self, index: int, name: str) -> None:
        """A bridge, up, with multicast snooping off: it floods multicast
        like a hub, so an IPv6 neighbour solicitation never waits on an MLD
        report sent before the port forwarded (measured: ~1 in 300 fresh
        labs stalled 1 s with snooping on)."""
        info = attr(IFLA_INFO_KIND, b"bridge\0") + \
            attr(IFLA_INFO_DATA, attr(IFLA_BR_MCAST_SNOOPING, b"\0"))
        self.request(RTM_NEWLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
                     + attr(IFLA_IFNAME, name.encode() + b"\0") + attr(IFLA_LINKINFO, info),
                     f"add bridge {name}")

    def up(self, index: int) -> None:
        self.request(RTM_NEWLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP),
                     f"set link {index} up", flags=0)

    def address(self, index: int, address: str, prefixlen: int) -> None:
        """Add an address (IPv6 without duplicate address detection)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        raw = socket.inet_pton(family, address)
        body = _IFADDR.pack(family, prefixlen, 0, 0, index) + attr(IFA_LOCAL, raw) + \
            attr(IFA_ADDRESS, raw)
        if family == socket.AF_INET6:
            body += attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))
        self.request(RTM_NEWADDR, body, f"add address {address}/{prefixlen}")

    def link_ready(self, index: int) -> bool:
        """Operationally up with its qdisc attached (until the kernel's
        linkwatch attaches it a veth drops everything: the first-ARP stall)."""
        seq = self._send(RTM_GETLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0))
        while True:
            data = self.sock.recv(65536)
            _len, kind, _flags, got, _pid = _NLH.unpack_from(data, 0)
            if got != seq:
                continue
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, 16)
                if err:
                    raise SetupError(f"rtnetlink get link {index} failed", netns=self.netns,
                                     call="get link", errno=-err)
                return False
            attrs = _nlmsg.attrs(data, 16 + _IFINFO.size, len(data))
            qdisc = bytes(attrs.get(IFLA_QDISC, b"")).rstrip(b"\0")
            oper = attrs.get(IFLA_OPERSTATE, b"\0")[0]
            return oper == IF_OPER_UP and qdisc not in (b"", b"noop")

    # --- neighbours ---------------------------------------------------------
    def flush_neighbours(self) -> int:
        """Delete every neighbour entry that has an address (``ip neigh
        flush all``); returns how many went.  All deletions in one send."""
        found = self.dump(RTM_GETNEIGH, _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
                          "dump neighbours")
        batch, seqs = [], []
        for data, off, end in found:
            family, ifindex, _state, _flags, _type = _NDMSG.unpack_from(data, off)
            dst = _nlmsg.attrs(data, off + _NDMSG.size, end).get(NDA_DST)
            if dst:
                self.seq += 1
                body = _NDMSG.pack(family, ifindex, 0, 0, 0) + attr(NDA_DST, bytes(dst))
                batch.append(_nlmsg.message(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, self.seq,
                                            body))
                seqs.append(self.seq)
        if not batch:
            return 0
        self.sock.send(b"".join(batch))
        pending = set(seqs)
        while pending:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, got, _pid = _NLH.unpack_from(data, off)
                if kind == NLMSG_ERROR and got in pending:
                    pending.discard(got)
                    (err,) = struct.unpack_from("=i", data, off + 16)
                    if err and -err != 2:  # ENOENT: expired meanwhile
                        raise SetupError("rtnetlink delete neighbour failed", netns=self.netns,
                                         call="del neigh", errno=-err)
                off += (length + 3) & ~3
        return len(batch)
