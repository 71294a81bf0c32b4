"""harness._iptables: the one driver of iptables.  Its record of a host is
per namespace generation (proven with a packet fault across power_on in
test_faults_packets); here its own error paths: what the machine lacks is
Unsupported naming it, what the kernel refuses is FaultError with the
command's stderr, and nothing is left behind."""

from __future__ import annotations

import subprocess

import pytest

from harness import FaultError, Unsupported, _iptables
from helpers import rules


@pytest.fixture
def fresh_probe():
    """Forget the cached backend before and after (the mocks change it)."""
    _iptables._version.cache_clear()
    _iptables.tools.cache_clear()
    yield
    _iptables._version.cache_clear()
    _iptables.tools.cache_clear()


def test_no_iptables_is_unsupported(monkeypatch, fresh_probe):
    monkeypatch.setattr(_iptables.shutil, "which", lambda name: None)
    with pytest.raises(Unsupported, match=r"iptables is not installed \(apt-get install "
                                          r"iptables\)"):
        _iptables.backend()
    with pytest.raises(Unsupported, match="iptables is not installed"):
        _iptables.tools(4)


def test_an_unknown_backend_is_unsupported(monkeypatch, fresh_probe):
    monkeypatch.setattr(_iptables.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="iptables v1.8.9 (something else)\n", stderr=""))
    with pytest.raises(Unsupported, match=r"cannot tell the iptables backend from "
                                          r"'iptables v1.8.9 \(something else\)'"):
        _iptables.backend()


def test_a_missing_tool_of_the_backend_is_unsupported(monkeypatch, fresh_probe):
    real = _iptables.shutil.which
    monkeypatch.setattr(_iptables.shutil, "which",
                        lambda name: None if name.startswith("ip6tables-") else real(name))
    assert _iptables.tools(4)[0][0].startswith("iptables-")
    with pytest.raises(Unsupported, match=r"ip6tables-(nft|legacy)-restore is not installed "
                                          r"\(iptables backend (nf_tables|legacy)\)"):
        _iptables.tools(6)


async def test_a_refused_load_is_a_fault_error_and_changes_nothing(lab):
    host = await lab.host("h")
    before = await rules(host)
    with pytest.raises(FaultError, match=r"(?s)restore --noflush failed.*nosuchchain") as info:
        await _iptables.restore(host, 4, "*filter\n-A nosuchchain -j DROP\nCOMMIT\n")
    assert info.value.netns == host.netns and info.value.call.startswith("iptables-")
    assert await rules(host) == before


async def test_a_tool_gone_at_run_time_is_unsupported(lab, monkeypatch):
    host = await lab.host("h")
    monkeypatch.setattr(_iptables, "tools", lambda family: (["/nonexistent/iptables-restore"],
                                                             ["/nonexistent/iptables-save"]))
    with pytest.raises(Unsupported, match=r"/nonexistent/iptables-save is not installed "
                                          r"\(needed in host h\)"):
        await _iptables.save(host, 4)


async def test_release_without_acquire_and_a_table_never_made(lab):
    """release() of a table nobody acquired does nothing; the last user of a
    table whose load failed finds it absent and reports it gone."""
    host = await lab.host("h")
    before = await rules(host)
    assert await _iptables.release(host, 6, "mangle") is False
    async with _iptables.tables(host).lock:
        await _iptables.acquire(host, 6, "mangle")
        assert _iptables.tables(host).created == {("mangle", 6)}
        assert await _iptables.release(host, 6, "mangle") is True
    assert _iptables.tables(host).users == {} and await rules(host) == before


async def test_a_hung_tool_is_a_fault_error(lab, monkeypatch):
    """host.run's timeout (subprocess.TimeoutExpired) does not leak
    (mocked: a restore that never returns on demand)."""
    host = await lab.host("h")

    async def hung(argv, **kw):
        raise subprocess.TimeoutExpired(argv, 30.0)
    monkeypatch.setattr(host, "run", hung)
    with pytest.raises(FaultError, match=r"did not finish within 30.0s in host h") as info:
        await _iptables.restore(host, 4, "*filter\nCOMMIT\n")
    assert isinstance(info.value.__cause__, subprocess.TimeoutExpired)


@pytest.mark.parametrize("version, restore, save", [
    ("iptables v1.8.9 (nf_tables)", ["ip6tables-nft-restore", "--noflush"], ["ip6tables-nft-save"]),
    # the legacy backend serialises on /run/xtables.lock: wait for it (-w)
    ("iptables v1.8.9 (legacy)", ["ip6tables-legacy-restore", "--noflush", "-w"],
     ["ip6tables-legacy-save"]),
])
def test_the_backend_picks_its_own_tools(monkeypatch, fresh_probe, version, restore, save):
    """Never a mix: the restore and save of the backend ``iptables
    --version`` names (mocked: both backends on one machine)."""
    monkeypatch.setattr(_iptables.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=version + "\n", stderr=""))
    monkeypatch.setattr(_iptables.shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert _iptables.tools(6) == (restore, save)
    assert _iptables.command(6) == restore[0].removesuffix("-restore")
