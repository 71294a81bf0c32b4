"""harness._kernels: the guest kernels' registry, the recipe and its cache
key, the timer-wheel rule the default-timer cases use, and the
``python -m harness kernel`` command."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pytest

from harness import _kernels
from harness.errors import InvalidArgument


def test_unknown_kernel_names_the_choices():
    with pytest.raises(InvalidArgument, match=r"kernel must be one of \['host', 'uml-6.1', "
                                              r"'uml-6.12-tt'\], got 'uml-7' \(from here\)"):
        _kernels.get("uml-7", "here")


def test_recipe_holds_the_issue_fragment_and_no_modules():
    opts = _kernels._fragment_options()
    for name in ("UML_TIME_TRAVEL_SUPPORT", "HOSTFS", "NET_NS", "VETH", "BRIDGE", "NET_SCHED",
                 "NET_SCH_NETEM", "NET_SCH_TBF", "INET_DIAG", "INET_TCP_DIAG",
                 "INET_DIAG_DESTROY", "IPV6", "NETFILTER", "NF_TABLES", "NFT_COMPAT",
                 "IP_NF_IPTABLES", "IP_NF_FILTER", "IP6_NF_IPTABLES", "IP6_NF_FILTER",
                 "NETFILTER_NETLINK_QUEUE", "NETFILTER_XT_TARGET_NFQUEUE",
                 "ENABLE_DEFAULT_TRACERS", "DEVTMPFS", "TMPFS", "PACKET"):
        assert opts[f"CONFIG_{name}"] == "y", name
    assert opts["CONFIG_MODULES"] == "n"


def test_check_config_names_what_olddefconfig_dropped():
    config = "\n".join(f"{k}={v}" for k, v in _kernels._fragment_options().items() if v == "y")
    assert _kernels.check_config(config) == []
    dropped = config.replace("CONFIG_NFT_COMPAT=y", "# CONFIG_NFT_COMPAT is not set")
    assert _kernels.check_config(dropped) == ["CONFIG_NFT_COMPAT: wanted y, got n"]
    assert _kernels.check_config(config + "\nCONFIG_MODULES=y") == [
        "CONFIG_MODULES: wanted n, got y"]


def test_cache_key_follows_recipe_and_source_version(monkeypatch):
    a = _kernels.recipe_key("6.12.117-1~deb12u1")
    assert a == _kernels.recipe_key("6.12.117-1~deb12u1")
    assert a != _kernels.recipe_key("6.12.118-1~deb12u1")
    monkeypatch.setattr(_kernels, "RECIPE", _kernels.RECIPE + "CONFIG_TUN=n\n")
    assert a != _kernels.recipe_key("6.12.117-1~deb12u1")


def test_cache_root_and_unbuilt_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path))
    version = _kernels.source_version()
    if version is None:
        assert "linux-source-6.12 is not installed" in _kernels.unavailable_reason("uml-6.12-tt")
        return
    path = _kernels.built_path(version)
    assert path == str(tmp_path / f"uml-6.12-{_kernels.recipe_key(version)}" / "linux")
    assert _kernels.unavailable_reason("uml-6.12-tt") == (
        f"kernel uml-6.12-tt is not built for linux-source-6.12 {version}: no {path} "
        "(python -m harness kernel build)")
    assert _kernels.unavailable_reason("host") is None


@pytest.mark.parametrize("seconds, hz, gran", [
    (0.5, 100, 0.01),          # level 0: 1 jiffy
    (1.0, 100, 0.08),          # 100 jiffies: level 1, 8 jiffies
    (60.0, 100, 5.12),         # TIME_WAIT at HZ=100: level 3, 512 jiffies
    (60.0, 250, 2.048),        # ... at HZ=250 (this host)
    (75.0, 100, 5.12),         # keepalive interval
    (7200.0, 100, 327.68),     # keepalive time: level 5, 32768 jiffies
])
def test_wheel_granularity_is_the_levels(seconds, hz, gran):
    assert _kernels.wheel_granularity(seconds, hz) == pytest.approx(gran)


def test_hz_of_this_kernel_matches_its_config():
    with gzip.open("/proc/config.gz", "rt") as f:
        want = next(int(ln.split("=")[1]) for ln in f if ln.startswith("CONFIG_HZ="))
    assert _kernels.hz() == want


def test_hz_of_debian_uml_from_its_shipped_config(monkeypatch):
    monkeypatch.setenv("HARNESS_GUEST_KERNEL", "uml-6.1")
    real_open = gzip.open
    monkeypatch.setattr(gzip, "open", lambda p, *a, **k: real_open(
        "/nonexistent" if p == "/proc/config.gz" else p, *a, **k))
    if not os.path.exists("/usr/share/doc/user-mode-linux/config.gz"):
        pytest.skip("user-mode-linux's config.gz is not installed")
    assert _kernels.hz() == 100


def test_kernel_command_usage_and_list():
    run = subprocess.run([sys.executable, "-m", "harness", "kernel", "frobnicate"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "kernel build [--force] | kernel list" in run.stderr
    run = subprocess.run([sys.executable, "-m", "harness", "kernel", "list"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert [ln.split()[1] for ln in run.stdout.splitlines() if ln.split()[0] in ("yes", "no")] == [
        "host", "uml-6.12-tt", "uml-6.1"]


def test_kernel_build_when_cached_says_so():
    reason = _kernels.unavailable_reason("uml-6.12-tt")
    if reason is not None:
        pytest.skip(reason)
    run = subprocess.run([sys.executable, "-m", "harness", "kernel", "build"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    assert run.stdout == f"kernel uml-6.12-tt: cached at {_kernels.built_path()}\n"


def test_hz_in_a_guest_reads_the_config_the_runner_names(monkeypatch, tmp_path):
    """In a guest, hz() must not ask dpkg-query (seconds of wall time under
    UML): the runner names the kernel's config in HARNESS_GUEST_CONFIG."""
    config = tmp_path / "config"
    config.write_text("CONFIG_UML=y\nCONFIG_HZ=300\n")
    monkeypatch.setenv("HARNESS_GUEST_KERNEL", "uml-6.12-tt")
    monkeypatch.setenv(_kernels.ENV_CONFIG, str(config))
    real_open = gzip.open
    monkeypatch.setattr(gzip, "open", lambda p, *a, **k: real_open(
        "/nonexistent" if p == "/proc/config.gz" else p, *a, **k))

    def no_dpkg(*args, **kwargs):
        raise AssertionError(f"hz() ran {args[0]!r}")
    monkeypatch.setattr(subprocess, "run", no_dpkg)
    assert _kernels.hz() == 300


def test_source_version_asks_dpkg_once_per_database_state(monkeypatch, tmp_path):
    status = tmp_path / "status"            # stands for /var/lib/dpkg/status
    status.write_text("")
    monkeypatch.setattr(_kernels, "_DPKG_STATUS", str(status))
    calls = []
    real_run = subprocess.run

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)
    monkeypatch.setattr(subprocess, "run", counting)
    first = _kernels.source_version()
    assert _kernels.source_version() == first
    assert len(calls) == 1
    os.utime(status, ns=(0, 10**9))         # a package installed or removed: asked again
    assert _kernels.source_version() == first
    assert len(calls) == 2


def test_the_built_kernel_has_syn_cookies():
    """The recipe's CONFIG_SYN_COOKIES: the guest has net.ipv4.tcp_syncookies,
    so the hosts of a lab pin it there as on any other kernel."""
    reason = _kernels.unavailable_reason("uml-6.12-tt")
    if reason is not None:
        pytest.skip(reason)
    from harness import _uml
    kernel = _kernels.get("uml-6.12-tt")
    res = _uml.run_in_guest(["cat", "/proc/sys/net/ipv4/tcp_syncookies"], modules=(),
                            kernel=kernel.binary(), kernel_args=kernel.args, timeout=120)
    assert (res.returncode, res.stdout.strip()) == (0, "1"), (res.stdout, res.stderr)
