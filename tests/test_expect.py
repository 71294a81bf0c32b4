"""Expected segments (harness._observe.expect) against two real stacks.

The lines are packetdrill's notation with host names; seq/ack relative to
each side's ISN, learnt from the SYNs the capture saw.
"""

import re
import time

import pytest

from harness import InvalidArgument
from harness import _tcpline, _wire
from harness._observe.expect import SegmentMismatch


async def connect(lab, family):
    client, server = await lab.pair()
    cap = await lab.capture()
    listener = await server.listen(9000, family=family)
    t0 = time.monotonic()
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    return cap, conn, peer, t0


async def test_handshake_and_close_as_lines(lab, family):
    cap, conn, peer, t0 = await connect(lab, family)
    syn = await cap.expect(conn, "client > server S 0:0(0) win * <mss *,sackOK,TS val * ecr 0,"
                                 "nop,wscale 7>", after=t0)
    synack = await cap.expect(conn, "server > client S. 0:0(0) ack 1 <mss *,sackOK,TS val * "
                                    "ecr *,nop,wscale 7>", after=syn)
    assert synack.tsecr == syn.tsval
    mss = 1460 if family == 4 else 1440  # 1500-byte MTU minus 40 / 60 bytes of headers
    assert syn.option("mss") == ("mss", mss)
    sent = await conn.send(b"hello")
    data = await cap.expect(conn, "client > server P. 1:6(5) ack 1", after=sent)
    assert data.payload == b"hello"
    await cap.expect(conn, "server > client . 1:1(0) ack 6 <nop,nop,TS val * ecr *>",
                     after=data, within=0.05)
    out = await conn.close()
    fin = await cap.expect(conn, "client > server F. 6:6(0) ack 1", after=out,
                           within=0.05)
    await cap.expect(conn, "server > client . 1:1(0) ack 7", after=fin, within=0.05)


async def test_mismatch_shows_the_line_beside_what_was_seen(lab):
    cap, conn, peer, _ = await connect(lab, 4)
    out = await conn.close()
    with pytest.raises(SegmentMismatch) as err:
        await cap.expect(conn, "client > server R. 1:1(0) ack 1", after=out)
    text = str(err.value)
    assert "flags F. != R." in text
    lines = text.splitlines()
    # the window: from close()'s start to 1 s after its end
    assert re.match(r"expected \+0\.0000~\+1\.0\d{3} client > server R\. 1:1\(0\)",
                    lines[1].strip()), lines[1]
    assert "client:" in lines[2] and " > server:9000 F. 1:1(0) ack 1 win " in lines[2]


async def test_timing_window_is_enforced(lab):
    cap, conn, peer, _ = await connect(lab, 4)
    out = await conn.close()
    # the FIN leaves within ~0.1 ms of close(): a window starting at 50 ms rejects it
    with pytest.raises(SegmentMismatch, match=r"time \+0\.0\d+s outside \+0\.05~\+0\.1\d* "
                                              r"\(\+0\.1 after the call, which took 0\.\d+s\)"):
        await cap.expect(conn, "client > server F. 1:1(0)", after=out,
                         within=(0.05, 0.1))


async def test_nothing_seen_times_out_with_what_was_seen(lab):
    cap, conn, peer, _ = await connect(lab, 4)
    with pytest.raises(SegmentMismatch, match=r"nothing from server:9000 within \+0.1s"):
        await cap.expect(conn, "server > client F. 1:1(0)", within=0.1)


async def test_bad_lines_are_refused_before_waiting(lab):
    cap, conn, peer, _ = await connect(lab, 4)
    with pytest.raises(InvalidArgument, match="cannot parse segment line"):
        await cap.expect(conn, "client -> server F.")
    with pytest.raises(InvalidArgument, match="unknown TCP option 'md5'"):
        await cap.expect(conn, "client > server F. <md5>")
    with pytest.raises(InvalidArgument, match="not an end of the connection"):
        await cap.expect(conn, "nobody > server F.")
    with pytest.raises(InvalidArgument, match=r"within must be"):
        await cap.expect(conn, "client > server F.", within=(0.4, 0.3))
    with pytest.raises(InvalidArgument, match="END - START must equal LEN"):
        _tcpline.parse("a > b P. 1:5(3)")


def test_options_round_trip():
    opts = _tcpline.parse_options("mss 1000,sackOK,TS val 7 ecr 0,nop,wscale 7,"
                                  "nop,nop,sack 1:2 5:9")
    raw = _wire.encode_options(opts)
    assert len(raw) % 4 == 0
    assert _wire.decode_options(raw)[:len(opts)] == opts
    assert _tcpline.options_text(opts) == ("<mss 1000,sackOK,TS val 7 ecr 0,nop,wscale 7,nop,"
                                           "nop,sack 1:2 5:9>")
    with pytest.raises(InvalidArgument, match="room for 40"):
        _wire.encode_options(opts + (("TS", 1, 2),) * 2)


@pytest.mark.parametrize("leaves", ["at_the_start", "at_the_end", "after_the_window"])
async def test_after_a_call_the_window_spans_the_call(leaves):
    """``after=outcome``: the segment the call makes the kernel send leaves
    at some moment inside it (a send() preempted for 9 ms under load sent
    its segment 9.9 ms after the call began): the window opens at the
    call's start (+lo) and closes ``hi`` after its end."""
    from harness._sockops import Outcome
    from harness._observe.expect import Isns, Seg, wait_segment
    t0 = time.monotonic()
    call = Outcome("send", value=1, started=t0, ended=t0 + 0.05)
    at = {"at_the_start": t0, "at_the_end": t0 + 0.053, "after_the_window": t0 + 0.055}[leaves]
    a, b = ("198.18.0.2", 8080), ("198.18.0.1", 40000)
    seg = Seg(at, a, b, 1, 1, 0x18, 0, 1, ())
    names = {a[0]: "server", b[0]: "client"}
    wait = wait_segment(lambda: [Seg(t0 - 0.001, a, b, 0, 1, 0x10, 0, 0, ()), seg],
                        _tcpline.parse("server > client P. 1:2(1) ack 1"), a, b, Isns, names,
                        0.004, call, t0)
    if leaves == "after_the_window":
        with pytest.raises(SegmentMismatch, match=r"time \+0\.0550s outside \+0\.0~\+0\.0540 "
                                                  r"\(\+0\.004 after the call, which took "
                                                  r"0\.0500s\)"):
            await wait
    else:
        assert await wait is seg   # (the segment before the call is not it)
