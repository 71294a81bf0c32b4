"""harness._wire: the one spelling of TCP flag filters, the flags' letters,
the one segment type, and segments built from raw bytes parsed back (the
kernel's view of built segments is proven by test_faults_inject and
test_segments, which send them to real sockets)."""

from __future__ import annotations

import pytest

from harness import InvalidArgument, _wire
from harness._wire import ACK, FIN, PSH, RST, SYN, Seg


@pytest.mark.parametrize("spec, mask, comp", [
    ("SYN", SYN | ACK | FIN | RST, SYN),
    ("fin, ack", SYN | ACK | FIN | RST, FIN | ACK),
    ("FIN/FIN", FIN, FIN),
    ("NONE/RST", RST, 0),
    ("PSH/ALL", 0x3F, PSH),
])
def test_flag_filter_spelling(spec, mask, comp):
    f = _wire.flag_filter(spec, "drop()")
    assert (f.mask, f.comp) == (mask, comp)
    assert _wire.flag_filter(str(f), "drop()") == f      # its text is the same spelling


def test_flag_filter_matches_like_iptables():
    syn_only = _wire.flag_filter("SYN", "x")
    assert syn_only.matches(SYN) and syn_only.matches(SYN | PSH)
    assert not syn_only.matches(SYN | ACK)               # the SYN-ACK is not "SYN"
    assert _wire.flag_filter("SYN/SYN", "x").matches(SYN | ACK)


@pytest.mark.parametrize("bad, message", [
    (("FIN", "FIN"), r"iptables' \(MASK, COMP\) pair: write tcp_flags='FIN/FIN' from drop\(\)"),
    (("SYN,ACK,FIN,RST", "ACK"), r"write tcp_flags='ACK/SYN,ACK,FIN,RST'"),
    ("SYN,BOGUS", r"tcp_flags must be TCP flags from SYN, ACK, FIN, RST, PSH, URG .*got "
                  r"tcp_flags='SYN,BOGUS' from drop\(\)"),
    ("SYN,SYN", "tcp_flags must be"),
    ("", "tcp_flags must be"),
    ("SYN/ACK", "SYN outside the mask ACK can never match"),
    ("SYN/NONE", "the mask cannot be empty"),
    (0x02, r"got tcp_flags=2 \(int\)"),
])
def test_other_spellings_are_refused_with_the_one_to_use(bad, message):
    with pytest.raises(InvalidArgument, match=message):
        _wire.flag_filter(bad, "drop()")


def test_letters_read_back_in_any_order():
    assert _wire.from_letters("SA", "x") == _wire.from_letters("AS", "x") == SYN | ACK
    assert _wire.from_letters("", "x") == 0
    for bad in ("SYN", "S.", "SS", None):
        with pytest.raises(InvalidArgument, match=r"flags must be a segment's flag letters from "
                                                  r"SFRPAUEC .* from packets\(\)"):
            _wire.from_letters(bad, "packets()")


def test_flag_notations():
    assert _wire.letters(SYN | ACK) == "SA" and _wire.letters(RST | ACK) == "RA"
    assert _wire.letters(FIN | PSH | ACK) == "FPA" and _wire.letters(0) == ""
    assert _wire.tcpdump(SYN | ACK) == "S." and _wire.tcpdump(FIN | ACK) == "F."
    assert _wire.names(PSH | ACK) == "PSH,ACK" and _wire.names(0) == "NONE"


@pytest.mark.parametrize("family, src, dst", [(4, "198.18.0.1", "198.18.0.2"),
                                              (6, "fd66::1", "fd66::2")])
def test_built_segment_decodes_to_the_same_seg(family, src, dst):
    options = _wire.encode_options((("nop",), ("nop",), ("TS", 7, 9)))
    packet = _wire.tcp_packet(family, (src, 40000), (dst, 9000), 2**32 - 1, 5, PSH | ACK,
                              1000, options, b"hello")
    frame = _wire.ether("02:00:00:00:00:02", "02:00:00:00:00:01", packet)
    seg = _wire.decode_frame(frame, 1.5, ingress="client")
    assert seg == Seg(1.5, (src, 40000), (dst, 9000), 2**32 - 1, 5, PSH | ACK, 1000, 5,
                      (("nop",), ("nop",), ("TS", 7, 9)), b"hello", "client")
    assert seg.frame == frame and seg.family == family and seg.flags == "PA"
    assert seg.timestamps == (7, 9) and seg.end() == 4      # wraps past 2**32
    # the checksums the builder filled in are what fix_checksums computes
    assert _wire.fix_checksums(packet) == packet
    broken = bytearray(packet)
    broken[-1] ^= 0xFF
    assert _wire.fix_checksums(bytes(broken)) != bytes(broken)


def test_not_tcp_is_none():
    assert _wire.decode_frame(b"\x00" * 14 + b"\x45" + b"\x00" * 30, 0.0) is None
    assert _wire.decode_frame(b"short", 0.0) is None
    assert _wire.parse_tcp(b"") is None
