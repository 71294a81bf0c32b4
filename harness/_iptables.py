"""The one driver of iptables: which backend, loading and reading rules
inside a host's namespace, and which tables the harness made there.

Every fault that uses iptables (firewall drop/reject/partition/blackhole,
the NFQUEUE packet faults, power_off's blackhole) and the feature probes
come through here, so they agree on three things:

- **Backend.** ``iptables --version`` names it, "nf_tables" or "legacy";
  the matching ``{ip,ip6}tables-{nft,legacy}-{restore,save}`` are used, never
  a mix.  The legacy backend serialises on /run/xtables.lock (shared by
  every namespace of the machine), so its restores wait for the lock (-w)
  instead of failing.
- **Atomic loads.** Rules go in and out by ``iptables-restore --noflush``:
  one transaction per family and text; the other chains of the table stay.
- **Who made a table.** On nf_tables a table exists only once something
  uses it; ``acquire`` notes whether the harness's first user found it
  absent, and ``release`` by its last user deletes it again (``nft delete
  table``) when nothing else lives in it, so ``iptables-save`` reads the
  same before and after.  (The legacy backend's tables are built in and
  never deleted.)  This record belongs to one namespace: it is kept per
  host *and* the generation of its namespace, so a host that ``power_on``
  gave a fresh namespace starts with a fresh record (the old namespace
  took its rules, tables and queues with it).

Failures are harness errors: a missing binary is Unsupported (a skip naming
it), a restore or save the kernel refused is FaultError with the command,
its stderr and the namespace.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import weakref

import trio

from .errors import FaultError, SetupError, Unsupported

FAMILIES = (4, 6)
_STEM = {4: "iptables", 6: "ip6tables"}
_NFT_FAMILY = {4: "ip", 6: "ip6"}
_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
            "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")}


@functools.cache
def _version() -> str:
    exe = shutil.which("iptables")
    if exe is None:
        raise Unsupported("iptables is not installed (apt-get install iptables)")
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unsupported(f"iptables --version failed: {exc}") from exc


def backend() -> str:
    """"nf_tables" or "legacy", as ``iptables --version`` names it;
    Unsupported when iptables is missing or says neither."""
    out = _version()
    if "nf_tables" in out:
        return "nf_tables"
    if "legacy" in out:
        return "legacy"
    raise Unsupported(f"cannot tell the iptables backend from {out!r}")


def command(family: int) -> str:
    """The backend's own ``iptables`` (``iptables-nft``, ``ip6tables-legacy``...)
    for a family, for a one-off rule (the feature probes)."""
    return f"{_STEM[family]}-{'nft' if backend() == 'nf_tables' else 'legacy'}"


@functools.cache
def tools(family: int) -> tuple[list[str], list[str]]:
    """(restore argv, save argv) of the backend's tools for a family."""
    kind = "nft" if backend() == "nf_tables" else "legacy"
    restore, save = f"{command(family)}-restore", f"{command(family)}-save"
    for tool in (restore, save):
        if shutil.which(tool) is None:
            raise Unsupported(f"{tool} is not installed (iptables backend {backend()})")
    wait = ["-w"] if kind == "legacy" else []
    return [restore, "--noflush", *wait], [save]


async def _run(host, argv: list[str], text: str | None = None) -> str:
    try:
        res = await host.run(argv, input=None if text is None else text.encode(), check=False)
    except subprocess.TimeoutExpired as exc:
        raise FaultError(f"{' '.join(argv)} did not finish within {exc.timeout}s in host "
                         f"{host.name} (a held xtables lock?)", netns=host.netns,
                         call=argv[0]) from exc
    except SetupError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise Unsupported(f"{argv[0]} is not installed (needed in host {host.name})") \
                from exc
        raise FaultError(f"{' '.join(argv)} in host {host.name}: {exc}", netns=host.netns,
                         call=argv[0]) from exc
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip()[-2000:]
        message = f"{' '.join(argv)} failed with {res.returncode} in host {host.name}: {err}"
        where = re.search(r"line (\d+) failed", err)
        if where and text is not None and 0 < int(where[1]) <= len(text.splitlines()):
            message += f"\n  line {where[1]} of what it loaded: {text.splitlines()[int(where[1]) - 1]}"
        raise FaultError(message, netns=host.netns, call=argv[0])
    return res.stdout.decode()


async def restore(host, family: int, text: str) -> None:
    """Load ``text`` (iptables-restore format, one or more tables, each
    ending in COMMIT) into ``host``'s namespace: one transaction."""
    await _run(host, tools(family)[0], text)


async def save(host, family: int, table: str | None = None, *, counters: bool = False) -> str:
    """``iptables-save`` of ``host`` (one table, or every table that exists;
    with packet and byte counters when asked)."""
    argv = tools(family)[1] + (["-t", table] if table else []) + (["-c"] if counters else [])
    return await _run(host, argv)


def pristine(saved: str, table: str, without: set[str] = frozenset()) -> bool:
    """Would ``table`` in ``saved`` (iptables-save output of it) be empty --
    built-in chains only, with policy ACCEPT, no rule -- once the chains in
    ``without`` and the jumps to them are gone?"""
    for line in saved.splitlines():
        if not line or line.startswith(("#", "*", "COMMIT")):
            continue
        if line.startswith("["):  # counters of a rule (-c)
            line = line.split("] ", 1)[1]
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if name in without or (name in _BUILTIN.get(table, ()) and policy == "ACCEPT"):
                continue
            return False
        parts = line.split()
        if parts[:1] == ["-A"] and (parts[1] in without or parts[-1] in without):
            continue
        return False
    return True


# --- what the harness did to one namespace ------------------------------------------

class Tables:
    """One namespace's record: a lock serialising the harness's edits, the
    users of each (table, family) and whether the harness created it, and
    the NFQUEUE numbers bound there."""

    def __init__(self, generation: int) -> None:
        self.generation = generation  # of the host's namespace this describes
        self.lock = trio.Lock()
        self.users: dict[tuple[str, int], int] = {}
        self.created: set[tuple[str, int]] = set()
        self.queues: set[int] = set()


_records: "weakref.WeakKeyDictionary[object, Tables]" = weakref.WeakKeyDictionary()


def tables(host) -> Tables:
    """The record of ``host``'s current namespace (a fresh one after
    power_on replaced it)."""
    t = _records.get(host)
    if t is None or t.generation != host.generation:
        t = _records[host] = Tables(host.generation)
    return t


async def acquire(host, family: int, table: str) -> None:
    """Count a user of ``table``; the first one notes whether the table
    existed.  Call with ``tables(host).lock`` held."""
    rec = tables(host)
    key = (table, family)
    if key not in rec.users:
        present = await _exists(host, family, table)
        rec.users[key] = 0
        if not present:
            rec.created.add(key)
    rec.users[key] += 1


async def _exists(host, family: int, table: str) -> bool:
    """Whether the table exists in the namespace (``iptables-save`` without
    ``-t`` lists the existing ones; with ``-t`` it prints the table's
    built-in chains whether it exists or not)."""
    return f"*{table}" in (await save(host, family)).splitlines()


async def release(host, family: int, table: str, without: set[str] = frozenset()) -> bool:
    """Uncount a user of ``table``.  The last one deletes the table when the
    harness created it and, ``without`` the caller's own chains, it is
    empty.  Returns whether the table is gone (deleted now, or never made:
    a load that failed), the caller's chains with it.  Call with
    ``tables(host).lock`` held."""
    rec = tables(host)
    key = (table, family)
    if key not in rec.users:
        return False
    rec.users[key] -= 1
    if rec.users[key] > 0:
        return False
    del rec.users[key]
    if key not in rec.created:
        return False
    rec.created.discard(key)
    if backend() != "nf_tables" or shutil.which("nft") is None:
        return False  # iptables cannot delete a table; an empty one stays (harmless)
    if not await _exists(host, family, table):
        return True   # never made (the load that would have made it failed)
    if not pristine(await save(host, family, table), table, without):
        return False  # someone else put rules, chains or a policy there: leave it
    await _run(host, ["nft", "delete", "table", _NFT_FAMILY[family], table])
    return True
