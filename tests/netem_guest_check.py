import sys, time, trio
t0 = time.monotonic()
from harness import open_lab
print("import", time.monotonic() - t0, flush=True)
async def main():
    async with open_lab() as lab:
        print("lab", time.monotonic() - t0, flush=True)
        c, s = await lab.pair()
        print("pair", time.monotonic() - t0, flush=True)
        l = await s.listen(9000)
        conn = await c.connect(s, 9000)
        p = await l.accept()
        t = time.monotonic()
        await conn.send(b"x"); out = await p.recv()
        print("rtt-ish", time.monotonic() - t, out, flush=True)
    print("done", time.monotonic() - t0, flush=True)
trio.run(main)
