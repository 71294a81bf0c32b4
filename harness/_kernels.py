"""Guest kernels: which ones the harness knows, and how the built one is made.

Three kernels can run a test (``--harness-kernel`` / ``@pytest.mark.kernel``):

==============  ==========================================================
``host``        the machine's own kernel (the default)
``uml-6.12-tt`` user-mode Linux 6.12 built here from Debian's
                ``linux-source-6.12`` with :data:`RECIPE`, booted with
                ``time-travel=inf-cpu``: the guest's clock jumps over idle
                time, so a 2-hour keepalive takes about a second of wall time
``uml-6.1``     Debian's own ``user-mode-linux`` package (6.1), real time;
                its features are modules (loaded by harness._uml)
==============  ==========================================================

The built kernel is reproducible: the same recipe (config fragment + make
command) applied to the same source package version gives the same cache
entry, ``<cache>/uml-6.12-<key>/linux``, where ``key`` hashes the recipe and
the package version.  :func:`build` makes it on first use (about 9 minutes
on 2 cores, at ``nice 19``); ``python -m harness kernel build`` runs it with
progress.  Concurrent builders serialise on a lock file in the cache.

What no UML kernel has is syscall tracepoints (``HAVE_SYSCALL_TRACEPOINTS``
is x86-only), so the timeline's syscall events are a skip in every guest;
Debian's 6.1 also lacks tracing, ``INET_DIAG_DESTROY`` and time-travel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field

from .errors import InvalidArgument, SetupError, Unsupported

#: Debian source package the guest kernel is built from, and where it puts the tarball.
SOURCE_PACKAGE = "linux-source-6.12"
SOURCE_TARBALL = "/usr/src/linux-source-6.12.tar.xz"
#: What ARCH=um needs to build, beyond the source (checked before starting).
BUILD_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc",
               "perl": "perl"}

#: The config fragment applied on top of ``make ARCH=um defconfig``.  The first
#: block is the issue's list; the second is what the harness's own faults need
#: besides (iptables-nft tables and matches, REJECT, the mangle table for NFQUEUE
#: rules, nft's arp/inet families for host_unreachable), and SYN cookies
#: (UML's defconfig lacks them; every other kernel the catalog runs on has them,
#: so net.ipv4.tcp_syncookies is pinned alike everywhere).
RECIPE = """\
CONFIG_UML_TIME_TRAVEL_SUPPORT=y
CONFIG_HOSTFS=y
CONFIG_NET_NS=y
CONFIG_VETH=y
CONFIG_BRIDGE=y
CONFIG_NET_SCHED=y
CONFIG_NET_SCH_NETEM=y
CONFIG_NET_SCH_TBF=y
CONFIG_INET_DIAG=y
CONFIG_INET_TCP_DIAG=y
CONFIG_INET_DIAG_DESTROY=y
CONFIG_IPV6=y
CONFIG_NETFILTER=y
CONFIG_NF_TABLES=y
CONFIG_NFT_COMPAT=y
CONFIG_IP_NF_IPTABLES=y
CONFIG_IP_NF_FILTER=y
CONFIG_IP6_NF_IPTABLES=y
CONFIG_IP6_NF_FILTER=y
CONFIG_NETFILTER_NETLINK_QUEUE=y
CONFIG_NETFILTER_XT_TARGET_NFQUEUE=y
CONFIG_ENABLE_DEFAULT_TRACERS=y
CONFIG_DEVTMPFS=y
CONFIG_TMPFS=y
CONFIG_PACKET=y
# CONFIG_MODULES is not set
CONFIG_NF_TABLES_INET=y
CONFIG_NF_TABLES_IPV4=y
CONFIG_NF_TABLES_IPV6=y
CONFIG_NF_TABLES_ARP=y
CONFIG_NFT_REJECT=y
CONFIG_NFT_QUEUE=y
CONFIG_IP_NF_MANGLE=y
CONFIG_IP6_NF_MANGLE=y
CONFIG_IP_NF_TARGET_REJECT=y
CONFIG_IP6_NF_TARGET_REJECT=y
CONFIG_NETFILTER_XT_MATCH_COMMENT=y
CONFIG_NETFILTER_XT_MATCH_MARK=y
CONFIG_NETFILTER_XT_MARK=y
CONFIG_NETFILTER_XT_MATCH_MULTIPORT=y
CONFIG_NETFILTER_XT_MATCH_LENGTH=y
CONFIG_NETFILTER_XT_MATCH_STATISTIC=y
CONFIG_NET_SCH_FQ_CODEL=y
CONFIG_UNIX=y
CONFIG_INET=y
CONFIG_TUN=y
CONFIG_SYN_COOKIES=y
"""
#: The make invocation (part of the cache key).  nice 19 and -j2: the machine is shared.
MAKE = ("nice", "-n", "19", "make", "ARCH=um", "-j2", "linux")
#: Objects compiled by a full build of this recipe (measured): the progress denominator.
EXPECTED_OBJECTS = 1080


@dataclass(frozen=True)
class Kernel:
    """One kernel a test can run on."""
    name: str
    release: str                      # what uname -r says (for the table)
    time: str                         # "real" or "virtual"
    lacks: dict = field(default_factory=dict)   # harness feature -> why it is missing
    modules: tuple = ()               # modules harness._uml loads (Debian's 6.1 only)
    args: tuple = ()                  # extra UML command-line words
    sysctls: dict = field(default_factory=dict)  # set in the guest before the test

    def binary(self) -> str | None:
        """The UML binary (None: Debian's, harness._uml's default)."""
        return built_path() if self.name == "uml-6.12-tt" else None


_NO_SYSCALL_TP = ("UML has no syscall tracepoints (HAVE_SYSCALL_TRACEPOINTS is x86-only), "
                  "so failing socket calls of spawned programs cannot be observed")
KERNELS = {
    "host": Kernel("host", os.uname().release, "real"),
    "uml-6.12-tt": Kernel("uml-6.12-tt", "6.12", "virtual",
                          lacks={"syscall_tracepoints": _NO_SYSCALL_TP},
                          # the guest's clock skips idle time; CPU time counts as none
                          args=("time-travel=inf-cpu",),
                          # IPv6 (built in) brings sit0 into every new namespace, at
                          # ifindex 2, where a lab's switch puts its bridge
                          sysctls={"net.core.fb_tunnels_only_for_init_net": "1"}),
    "uml-6.1": Kernel(
        "uml-6.1", "6.1", "real",
        lacks={"syscall_tracepoints": _NO_SYSCALL_TP,
               "tracefs": "Debian's user-mode-linux 6.1 is built without tracing (no tracefs)",
               "sock_destroy": "Debian's user-mode-linux 6.1 lacks INET_DIAG_DESTROY"},
        modules=("veth", "bridge", "sch_netem", "sch_tbf", "nf_tables", "nft_compat",
                 "xt_tcpudp", "xt_mark", "xt_comment", "xt_multiport", "xt_length",
                 "xt_NFQUEUE", "nfnetlink_queue", "nft_queue", "ipt_REJECT", "ip6t_REJECT")),
}


def get(name: str, where: str = "--harness-kernel") -> Kernel:
    """The kernel called ``name``; a clear error naming the choices otherwise."""
    try:
        return KERNELS[name]
    except (KeyError, TypeError):
        raise InvalidArgument(f"kernel must be one of {sorted(KERNELS)}, got {name!r} "
                              f"(from {where})") from None


# --------------------------------------------------------------------------
# the built kernel's cache


def cache_root() -> str:
    """$HARNESS_KERNEL_CACHE, else /var/cache/harness/kernels for root, else
    ~/.cache/harness/kernels."""
    env = os.environ.get("HARNESS_KERNEL_CACHE")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/cache/harness/kernels"
    return os.path.join(os.path.expanduser("~"), ".cache", "harness", "kernels")


#: dpkg's database: its mtime changes whenever a package is installed or removed.
_DPKG_STATUS = "/var/lib/dpkg/status"


def source_version() -> str | None:
    """The installed version of the source package (None when absent).
    Asked of dpkg-query once per state of dpkg's database: in a UML guest a
    dpkg-query run costs seconds of wall time (it parses the whole database,
    and every system call is a ptrace round trip)."""
    try:
        stamp = os.stat(_DPKG_STATUS).st_mtime_ns
    except OSError:
        stamp = None
    return _source_version(stamp)


@functools.lru_cache(maxsize=4)
def _source_version(_stamp) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", SOURCE_PACKAGE],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.stdout.split()
    if out.returncode != 0 or words[:3] != ["install", "ok", "installed"] or len(words) < 4:
        return None
    return words[3]


def recipe_key(version: str) -> str:
    """Hash of everything that determines the binary: fragment, make, source version."""
    blob = json.dumps({"fragment": RECIPE, "make": MAKE, "source": [SOURCE_PACKAGE, version]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def built_path(version: str | None = None) -> str | None:
    """Where the built kernel for the installed source is (None without the source)."""
    version = version or source_version()
    if version is None:
        return None
    return os.path.join(cache_root(), f"uml-6.12-{recipe_key(version)}", "linux")


def unavailable_reason(name: str) -> str | None:
    """Why kernel ``name`` cannot run a test here (None if it can).  File checks only."""
    if name == "host":
        return None
    from . import _uml
    if name == "uml-6.1":
        return _uml.guest_unavailable_reason(KERNELS[name].modules)
    version = source_version()
    if version is None:
        return (f"kernel uml-6.12-tt is not built: {SOURCE_PACKAGE} is not installed "
                f"(apt-get install {SOURCE_PACKAGE}, then python -m harness kernel build)")
    path = built_path(version)
    if not os.path.isfile(path):
        return (f"kernel uml-6.12-tt is not built for {SOURCE_PACKAGE} {version}: no {path} "
                f"(python -m harness kernel build)")
    return _uml.guest_unavailable_reason(modules=(), kernel=path)


# --------------------------------------------------------------------------
# building


def _missing_tools() -> list[str]:
    return sorted({pkg for tool, pkg in BUILD_TOOLS.items() if shutil.which(tool) is None})


def _fragment_options() -> dict[str, str]:
    """CONFIG_X -> 'y' or 'n' as the recipe asks."""
    out = {}
    for line in RECIPE.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            out[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:].split()[0]] = "n"
    return out


def check_config(config_text: str) -> list[str]:
    """Recipe options that ``make olddefconfig`` did not keep (dependencies
    missing): each as 'CONFIG_X: wanted y, got n'."""
    got = {}
    for line in config_text.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            got[key] = value
    bad = []
    for key, want in _fragment_options().items():
        have = got.get(key, "n")
        if have != want:
            bad.append(f"{key}: wanted {want}, got {have}")
    return bad


def _say(progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _run(argv, cwd, progress=None, log=None) -> None:
    """Run a build step; on failure raise SetupError with the command and the log's tail."""
    t0 = time.monotonic()
    last = 0.0
    objects = 0
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    tail: list[str] = []
    try:
        for line in proc.stdout:
            if log is not None:
                log.write(line)
            tail = (tail + [line.rstrip()])[-30:]
            if line.lstrip().startswith(("CC ", "AS ")):
                objects += 1
            now = time.monotonic()
            if progress is not None and argv[:1] == ["nice"] and now - last >= 5:
                last = now
                pct = min(99, 100 * objects // EXPECTED_OBJECTS)
                progress(f"  make: {objects} objects (~{pct}%), {now - t0:.0f} s: "
                         f"{line.strip()[:60]}")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise SetupError(f"kernel build step failed (exit {rc}): {' '.join(argv)} in {cwd}\n"
                         + "\n".join(tail), call=" ".join(argv))


def work_dir(version: str) -> str:
    """Where the kernel for ``version`` is built (kept when a build is
    interrupted, so the next one resumes: make only compiles what is missing)."""
    return os.path.join(cache_root(), f".build-uml-6.12-{recipe_key(version)}")


def build(progress=print, force: bool = False) -> str:
    """The built uml-6.12-tt kernel's path; build it first if the cache lacks it.

    Checks before touching anything: the source package and the build tools.
    The build happens in :func:`work_dir` beside the cache entry, which is
    renamed into place only when complete, so there is never a half entry;
    an interrupted build (Ctrl-C, a killed CI job) leaves the work directory
    and the next build resumes from it.  Concurrent builders serialise on a
    lock file: the second one finds the first one's result."""
    version = source_version()
    if version is None:
        raise Unsupported(f"building kernel uml-6.12-tt needs Debian's {SOURCE_PACKAGE} "
                          f"(apt-get install {SOURCE_PACKAGE})")
    if not os.path.isfile(SOURCE_TARBALL):
        raise Unsupported(f"{SOURCE_PACKAGE} {version} is installed but {SOURCE_TARBALL} "
                          "is missing")
    missing = _missing_tools()
    if missing:
        raise Unsupported(f"building kernel uml-6.12-tt needs the Debian packages "
                          f"{' '.join(missing)} (apt-get install {' '.join(missing)})")
    target = built_path(version)
    entry = os.path.dirname(target)
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    import fcntl
    with open(os.path.join(os.path.dirname(entry), ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another builder: wait for it, then reuse its result
        if os.path.isfile(target) and not force:
            _say(progress, f"kernel uml-6.12-tt: cached at {target}")
            return target
        t0 = time.monotonic()
        work = work_dir(version)
        src = os.path.join(work, f"linux-source-{version.split('.')[0]}.{version.split('.')[1]}")
        frag = os.path.join(work, "recipe.config")
        resumed = os.path.isfile(os.path.join(src, "Makefile")) and os.path.isfile(frag) \
            and open(frag).read() == RECIPE and not force
        _say(progress, f"kernel uml-6.12-tt: building from {SOURCE_PACKAGE} {version} in {work}"
                       f" ({'resuming an interrupted build' if resumed else 'about 9 min on 2 idle cores'})")
        if not resumed:
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            _say(progress, "  unpacking the source")
            with tarfile.open(SOURCE_TARBALL) as tar:
                top = tar.next().name.split("/")[0]
                if sys.version_info >= (3, 12):
                    tar.extractall(work, filter="fully_trusted")
                else:
                    tar.extractall(work)
            src = os.path.join(work, top)
            with open(frag, "w") as f:
                f.write(RECIPE)
        with open(os.path.join(work, "build.log"), "a") as log:
            _say(progress, "  configuring: defconfig + recipe + olddefconfig")
            _run(["make", "ARCH=um", "defconfig"], src, log=log)
            _run(["scripts/kconfig/merge_config.sh", "-m", ".config", frag], src, log=log)
            _run(["make", "ARCH=um", "olddefconfig"], src, log=log)
            with open(os.path.join(src, ".config")) as f:
                config = f.read()
            bad = check_config(config)
            if bad:
                raise SetupError("the kernel recipe does not hold after olddefconfig "
                                 "(a dependency is missing):\n  " + "\n  ".join(bad))
            _say(progress, f"  compiling: {' '.join(MAKE)} (log: {work}/build.log)")
            _run(list(MAKE), src, progress=progress, log=log)
        done = os.path.join(work, "entry")
        shutil.rmtree(done, ignore_errors=True)
        os.makedirs(done)
        shutil.copy2(os.path.join(src, "linux"), os.path.join(done, "linux"))
        with open(os.path.join(done, "config"), "w") as f:
            f.write(config)
        with open(os.path.join(done, "recipe.json"), "w") as f:
            json.dump({"source": [SOURCE_PACKAGE, version], "make": MAKE, "fragment": RECIPE,
                       "seconds": round(time.monotonic() - t0), "resumed": resumed}, f, indent=1)
        if os.path.isdir(entry):
            shutil.rmtree(entry)
        os.rename(done, entry)
        shutil.rmtree(work, ignore_errors=True)
        _say(progress, f"kernel uml-6.12-tt: built in {time.monotonic() - t0:.0f} s: {target}")
        return target


# --------------------------------------------------------------------------
# the running kernel's clock


#: Set by the guest runner in a guest's environment: the config its kernel was built with.
ENV_CONFIG = "HARNESS_GUEST_CONFIG"


def config_path(name: str) -> str | None:
    """The .config kernel ``name`` was built with, when the harness knows it."""
    if name == "uml-6.12-tt":
        path = built_path()
        return os.path.join(os.path.dirname(path), "config") if path else None
    if name == "uml-6.1":
        return "/usr/share/doc/user-mode-linux/config.gz"
    return None


def hz() -> int:
    """CONFIG_HZ of the kernel this process runs on: /proc/config.gz when the
    kernel has it, else (in a guest, which has not) the config the guest was
    built with: $HARNESS_GUEST_CONFIG (set by the runner), the recipe's build
    in the cache, or Debian's for uml-6.1."""
    import gzip
    import re
    guest = os.environ.get("HARNESS_GUEST_KERNEL")
    candidates = ["/proc/config.gz"]
    if guest and os.environ.get(ENV_CONFIG):
        candidates.append(os.environ[ENV_CONFIG])   # the runner says where (no dpkg-query)
    if guest:
        candidates.append(lambda: config_path(guest))   # asked only if the above have none
    tried = []
    for path in candidates:
        path = path() if callable(path) else path
        if path is None:
            continue
        tried.append(path)
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                m = re.search(r"^CONFIG_HZ=(\d+)$", f.read(), re.M)
        except OSError:
            continue
        if m:
            return int(m.group(1))
    raise Unsupported(f"cannot tell this kernel's CONFIG_HZ: none of {tried} has it")


# How many ticks late, past the wheel's rule, a timer_list timer may fire on
# an SMP kernel: a CPU runs the timers whose bucket jiffies has reached, on
# its own tick, but only one CPU (tick_do_timer_cpu) advances jiffies, on its
# tick (kernel/time/tick-sched.c, tick_sched_do_timer()).  Ticks are aligned
# across CPUs, so another CPU's tick at the same instant can read jiffies
# before the advance: its due timers wait one more tick.  Traced on the 2-CPU
# 6.18 VM (timer:timer_start's bucket_expiry against timer_expire_entry, 211
# TCP timers, the suite running): 27 of the 90 on the other CPU fired one
# jiffy after their bucket, the rest on it, none later (+0.09 ms at most).
# (A timekeeper stalled by its hypervisor, not this rule, can hold jiffies
# up to MAX_STALLED_JIFFIES = 5 ticks before another CPU forces the update.)
TICK_LAG_JIFFIES = 1


def wheel_granularity(seconds: float, hz_: int) -> float:
    """How late the timer wheel may fire a timer armed ``seconds`` ahead
    (kernel/time/timer.c): a timer goes to the level n whose range holds its
    delta (LVL_START(n) = 63 * 8^(n-1) jiffies) and calc_index() rounds its
    expiry up to that level's granularity, LVL_GRAN(n) = 8^n jiffies.  At
    HZ=100: 0.63-5.03 s -> 0.08 s, 5.04-40.3 s -> 0.64 s, 40.3-322 s -> 5.12 s,
    322-2580 s -> 40.96 s, 2580-20643 s (7200 s) -> 327.68 s."""
    jiffies, level = seconds * hz_, 0
    while jiffies >= 63 * 8 ** level:
        level += 1
    return 8 ** level / hz_
