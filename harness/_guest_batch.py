"""Guest sessions: one guest boot runs all of a run's tests for a kernel.

A guest run has a fixed price before its test starts: UML boots (0.05 s),
then Python and pytest start inside it, and under UML every system call of
a guest process is a ptrace round trip through the host, so importing
pytest, trio and the harness and collecting a test module costs seconds of
CPU, more than most guest tests themselves (bench/bench_virtual_time.py
shows both).  So the items of a run that go to the same guest kernel are
run as one **shard**: one guest, one ``python -m pytest <node ids...>``.

The shards are known when collection ends (every xdist worker collects the
same items), and each starts with the first test, in a thread of whichever
process takes its lock first, beside that process's host tests; a process whose
turn comes for a guest item waits for that item's results.  Everything
lives in one directory per run (the xdist controller's, handed to its
workers; else the process's own), per shard ``<kernel>-<index>/``:

``lock``           flock held by the shard's runner while it runs
``started``        written by the runner under the lock (a free lock and
                   ``started`` without ``done``: the runner died)
``reports.jsonl``  written by the guest's pytest (harness._guest_plugin):
                   ``{"start": nodeid}`` when an item starts, then its
                   reports, serialized
``results.jsonl``  written by the runner: one line per finished item, with
                   its wall seconds and, when the guest failed it, why
``done``           the runner has finished
``basetemp-<n>/``  the n-th guest's basetemp (artifacts)

A virtual-time kernel is CPU-bound, so its items form one shard per
``SHARD_ITEMS`` items, at most one per CPU; a real-time kernel's tests
mostly wait, so its items are spread over one shard per worker.  Items are
dealt to shards round-robin, in collection order.

Each item keeps its own wall-clock limit (marker ``timeout=`` or
--harness-kernel-timeout), counted from when the guest became free for it
(the previous item's end, or the guest's start for the first): past it the
guest is killed, that item fails with why, and a fresh guest runs the rest.
An interrupted run (Ctrl-C, -x) kills its guests; a process that ends
normally waits for its runners first (another worker may be waiting for
their results).  If a runner's process dies, whoever waits for one of its
items runs that item in a guest of its own.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import threading
import time

from . import _names

#: A virtual-time shard gets at most this many items (more make another
#: shard, up to one per CPU): a boot and start-up costs about as much CPU as
#: a few tests, so fewer items do not pay for the parallelism.
SHARD_ITEMS = 8
#: How often the runner reads what the guest wrote, and a waiter looks for
#: its item's results (seconds).
POLL = 0.05


class Shard:
    """Items of one kernel run by one guest session, and its directory."""

    def __init__(self, kernel: str, index: int, root: str, nodeids: list[str],
                 timeouts: dict[str, float]):
        self.kernel, self.index, self.nodeids, self.timeouts = kernel, index, nodeids, timeouts
        self.dir = os.path.join(root, f"{kernel}-{index}")
        os.makedirs(self.dir, exist_ok=True)
        self.reports = os.path.join(self.dir, "reports.jsonl")
        self.results = os.path.join(self.dir, "results.jsonl")
        self._lock = os.path.join(self.dir, "lock")
        self._started = os.path.join(self.dir, "started")
        self._done = os.path.join(self.dir, "done")
        self.runner: Runner | None = None

    def result(self, nodeid: str) -> dict | None:
        for line in _lines(self.results):
            if line.get("nodeid") == nodeid:
                return line
        return None

    def reports_of(self, nodeid: str) -> list[dict]:
        return [d for d in _lines(self.reports) if d.get("nodeid") == nodeid and "$report_type" in d]

    def done(self) -> bool:
        return os.path.exists(self._done)

    def runner_alive(self) -> bool:
        """Whether some process holds the shard's lock (runs it)."""
        with open(self._lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def started(self) -> bool:
        return os.path.exists(self._started)


def _lines(path: str) -> list[dict]:
    """The complete JSON lines of a file another process appends to."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for line in text.split("\n")[:-1]:      # the last piece may be a line being written
        try:
            out.append(json.loads(line))
        except ValueError:
            continue                         # a line cut short by a killed guest
    return out


def plan(kernel, nodeids: list[str], timeouts: dict[str, float], root: str,
         workers: int) -> list[Shard]:
    """Deal ``nodeids`` (one kernel's) to shards: see the module."""
    n = len(nodeids)
    if kernel.time == "virtual":
        count = min(math.ceil(n / SHARD_ITEMS), os.cpu_count() or 1, workers)
    else:
        count = min(workers, n)
    count = max(1, count)
    return [Shard(kernel.name, i, root, nodeids[i::count],
                  {k: timeouts[k] for k in nodeids[i::count]}) for i in range(count)]


class Runner(threading.Thread):
    """Runs a shard's items in guests (a fresh one after a guest is lost),
    writing each finished item's line to ``results.jsonl``.  ``launch`` is
    the caller's: launch(nodeids, basetemp, reports_path, watch) boots one
    guest (harness._uml.run_in_guest) and returns its result."""

    def __init__(self, shard: Shard, launch):
        super().__init__(name=f"harness-guest-{shard.kernel}-{shard.index}", daemon=True)
        self.shard, self.launch = shard, launch
        self.stopping = threading.Event()
        self.boot_seconds: float | None = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        shard = self.shard
        with open(shard._lock, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return                     # another process runs it
            if shard.started():
                return                     # it ran (or its runner died): not twice
            with open(shard._started, "w") as f:
                f.write(str(os.getpid()))
            try:
                remaining = list(shard.nodeids)
                n = 0
                while remaining and not self.stopping.is_set():
                    remaining = self._one_guest(remaining, n)
                    n += 1
            finally:
                with open(shard._done, "w") as f:
                    f.write(str(os.getpid()))

    def _record(self, nodeid: str, **fields) -> None:
        with open(self.shard.results, "a", encoding="utf-8") as f:
            f.write(json.dumps({"nodeid": nodeid, **fields}) + "\n")

    def _one_guest(self, remaining: list[str], n: int) -> list[str]:
        """Run ``remaining`` in one guest; return what a next guest must run."""
        from . import _uml
        shard = self.shard
        basetemp = os.path.join(shard.dir, f"basetemp-{n}")
        try:
            offset = os.path.getsize(shard.reports)
        except OSError:
            offset = 0
        t0 = time.monotonic()
        st = {"offset": offset, "buf": "", "current": None, "since": t0, "begun": {},
              "finished": set(), "last": t0}
        todo = set(remaining)

        def follow() -> None:
            try:
                with open(shard.reports, encoding="utf-8") as f:
                    f.seek(st["offset"])
                    chunk = f.read()
                    st["offset"] = f.tell()
            except OSError:
                return
            now = time.monotonic()
            text = st["buf"] + chunk
            *lines, st["buf"] = text.split("\n")
            for line in lines:
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if "start" in data and data["start"] in todo:
                    st["current"] = data["start"]
                    st["begun"][data["start"]] = now
                    if self.boot_seconds is None:
                        self.boot_seconds = now - t0
                elif data.get("when") == "teardown" and data.get("nodeid") in todo:
                    nodeid = data["nodeid"]
                    if nodeid in st["finished"]:
                        continue
                    st["finished"].add(nodeid)
                    self._record(nodeid, wall=now - st["begun"].get(nodeid, st["since"]))
                    st["current"], st["since"] = None, now

        def watch() -> str | None:
            follow()
            if self.stopping.is_set():
                return "the pytest run on the host was interrupted"
            pending = [x for x in remaining if x not in st["finished"]]
            current = st["current"] or (pending[0] if pending else None)
            if current is not None:
                limit = shard.timeouts[current]
                if time.monotonic() - st["since"] > limit:
                    st["current"] = current
                    return f"UML guest running {current} did not finish within {limit:g} s"
            return None

        error = skip = None
        result = None
        try:
            result = self.launch(remaining, basetemp, shard.reports, watch)
        except _uml.GuestUnavailable as exc:
            skip = str(exc)
        except _uml.GuestError as exc:          # GuestTimeout too
            error = str(exc)
        follow()
        left = [x for x in remaining if x not in st["finished"]]
        if skip is not None:
            for nodeid in left:
                self._record(nodeid, wall=0.0, skip=skip)
            return []
        now = time.monotonic()
        current = st["current"]
        if error is None:
            tail = ""
            if result is not None:
                tail = "\n".join(result.stdout.rstrip().splitlines()[-30:] +
                                 result.stderr.rstrip().splitlines()[-30:])
            code = result.returncode if result is not None else "?"
            error = f"the guest's pytest (exit {code}) ended before this test did:\n{tail}"
        if self.stopping.is_set():
            for nodeid in left:
                self._record(nodeid, wall=0.0, failure=error)
            return []
        if current is not None and current in left:
            self._record(current, wall=now - st["begun"].get(current, st["since"]),
                         failure=error)
            left.remove(current)
            return left                         # a fresh guest for the rest
        if not st["begun"]:                     # nothing ran: a fresh guest would fail alike
            for nodeid in left:
                self._record(nodeid, wall=now - t0, failure=error)
            return []
        return left


class Batches:
    """A pytest process's shards (all of them: any may wait for any)."""

    def __init__(self, root: str, own_root: bool):
        self.root, self.own_root = root, own_root
        self.started = False
        self.by_nodeid: dict[str, Shard] = {}
        self.shards: list[Shard] = []

    def add(self, shards: list[Shard]) -> None:
        for shard in shards:
            self.shards.append(shard)
            for nodeid in shard.nodeids:
                self.by_nodeid[nodeid] = shard

    def start(self, shard: Shard, launch) -> None:
        if shard.runner is None:
            shard.runner = Runner(shard, launch)
            shard.runner.start()

    def wait(self, shard: Shard, nodeid: str, launch) -> dict | None:
        """This item's result line, once its shard's runner wrote it; None
        when no runner will (it died): the caller runs the item alone."""
        deadline = time.monotonic() + sum(shard.timeouts.values()) + 120
        while True:
            res = shard.result(nodeid)
            if res is not None:
                return res
            if shard.done():
                return shard.result(nodeid)
            if not shard.started() and not shard.runner_alive():
                self.start(shard, launch)   # not started eagerly here, nor elsewhere yet
            elif shard.started() and not shard.runner_alive() and not shard.done():
                return None
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL)

    def finish(self, interrupted: bool) -> None:
        """Stop (interrupted) or wait for this process's runners; remove the
        run's directory when it is this process's own."""
        for shard in self.shards:
            if shard.runner is not None and interrupted:
                shard.runner.stop()
        for shard in self.shards:
            if shard.runner is not None:
                shard.runner.join()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def new_root() -> str:
    return _names.owned_tempdir("guest")
