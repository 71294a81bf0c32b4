"""The harness's peer program: socket endpoints that can die like a process.

``python -m harness._peer`` runs inside a host's namespace and executes socket
calls sent as JSON lines on stdin, each concurrently, answering with the same
Outcome the test process would get.  Killing it (SIGKILL), pausing it
(SIGSTOP) or powering off its host affects its sockets exactly as it would a
real server's: the kernel closes them (FIN, or RST with unread data).

Protocol, one JSON object per line:
  -> {"id": 7, "op": "send", "args": {"h": 2, "data": {"b": "78"}}}
  <- {"id": 7, "outcome": {"call": "send", "value": 1, "errno": null, ...}}
  <- {"id": 7, "error": "ValueError: ..."}        (a harness bug or bad call)
  -> {"id": 8, "op": "cancel", "args": {"id": 7}}  (the test cancelled call 7)
  <- {"id": 7, "cancelled": true}    (it had not completed: it did nothing)
     or call 7's outcome, if it completed before the cancel arrived
Special ops: "ready" (answers once the loop runs), "sigpipe" (restore the
default SIGPIPE action, so a write to a reset socket kills the process as it
would a C program that did not ignore it).
"""

from __future__ import annotations

import json
import signal
import sys

import trio

from ._sockops import Outcome, SocketTable


def _decode(args: dict) -> dict:
    return {k: (bytes.fromhex(v["b"]) if isinstance(v, dict) and "b" in v else v)
            for k, v in args.items()}


async def _serve() -> None:
    table = SocketTable()
    stdin = trio.lowlevel.FdStream(0)
    out_lock = trio.Lock()

    async def reply(msg: dict) -> None:
        line = (json.dumps(msg) + "\n").encode()
        async with out_lock:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()

    scopes: dict = {}  # id -> the CancelScope of a call still running

    async def run(msg: dict, scope: trio.CancelScope) -> None:
        mid, op = msg.get("id"), msg.get("op")
        try:
            if op == "ready":
                outcome = Outcome("ready", True)
            elif op == "sigpipe":
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                outcome = Outcome("sigpipe", True)
            else:
                with scope:
                    outcome = await table.call(op, _decode(msg.get("args", {})))
                scopes.pop(mid, None)
                if scope.cancelled_caught:
                    # trio's calls are atomic under cancellation: nothing
                    # was consumed or sent
                    await reply({"id": mid, "cancelled": True})
                    return
            scopes.pop(mid, None)
            await reply({"id": mid, "outcome": outcome.to_wire()})
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            scopes.pop(mid, None)
            await reply({"id": mid, "error": f"{type(exc).__name__}: {exc}"})

    async with trio.open_nursery() as nursery:
        buf = b""
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                msg = json.loads(line)
                if msg.get("op") == "cancel":  # the test cancelled call {"id"}
                    scope = scopes.get(msg.get("args", {}).get("id"))
                    if scope is not None:  # else it has already answered
                        scope.cancel()
                    continue
                # the scope exists from now: a cancel may come before the task runs
                scopes[msg.get("id")] = scope = trio.CancelScope()
                nursery.start_soon(run, msg, scope)
        nursery.cancel_scope.cancel()
    table.abort_all()


def main() -> None:
    trio.run(_serve)


if __name__ == "__main__":
    main()
