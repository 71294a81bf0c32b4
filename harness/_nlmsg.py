"""Netlink message framing, packed with struct: the header, the message and
the attributes (TLVs) every netlink family shares.  The lean clients --
rtnetlink (``_rtnl``), inet_diag (``_diag``), nfnetlink_queue
(``_nfqueue``) -- build and read their messages with these; pyroute2
(``_netlink``) keeps what they do not do.

Layouts: linux/netlink.h (struct nlmsghdr, struct nlattr, NLA_ALIGN).
"""

from __future__ import annotations

import struct

#: struct nlmsghdr: length, type, flags, sequence, port id (host order)
HDR = struct.Struct("=IHHII")
#: struct nlattr: length, type
ATTR = struct.Struct("=HH")
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK = 0x01, 0x04
# an attribute's type without NLA_F_NESTED (0x8000) and NLA_F_NET_BYTEORDER (0x4000)
TYPE_MASK = 0x3FFF


def align(n: int) -> int:
    """NLA_ALIGN / NLMSG_ALIGN: up to a multiple of 4."""
    return (n + 3) & ~3


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: the header (length, type, flags, sequence, port
    id 0: the kernel fills in ours) and its body."""
    return HDR.pack(HDR.size + len(body), kind, flags, seq, 0) + body


def attr(kind: int, data: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    n = 4 + len(data)
    return ATTR.pack(n, kind) + data + b"\0" * (align(n) - n)


def attrs(buf, pos: int, end: int) -> dict[int, memoryview]:
    """The attributes in ``buf[pos:end]`` by type (flags masked off), as
    views into ``buf`` (no copy: snapshots decode thousands); a truncated
    one ends the walk."""
    out: dict[int, memoryview] = {}
    mv = memoryview(buf)
    unpack = ATTR.unpack_from
    while pos + 4 <= end:
        alen, kind = unpack(mv, pos)
        if alen < 4 or pos + alen > end:
            break
        out[kind & TYPE_MASK] = mv[pos + 4: pos + alen]
        pos += (alen + 3) & ~3
    return out
