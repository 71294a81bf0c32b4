"""Sysctl profiles: every relevant TCP setting pinned, per host namespace.

``net.ipv4.tcp_*`` are per network namespace; the kernel does not even show
the global ones (tcp_mem, tcp_max_orphans) inside a child namespace, so a
lab can never change the machine's.  Every host starts from DEFAULT (Linux's
own defaults, pinned so results do not depend on the machine, e.g.
tcp_max_tw_buckets scales with RAM), then the chosen profile, then the
test's own overrides.

FAST compresses the timers that make teardown behaviours take minutes or
hours, so they reproduce in seconds.  What each compresses, with the
default's duration:

=====================  =======  ====  ==============================================
sysctl                 default  fast  governs
=====================  =======  ====  ==============================================
tcp_retries2           15       3     data retransmissions before ETIMEDOUT (~924.6 s)
tcp_syn_retries        6        2     SYN retransmissions before connect() fails (~127 s)
tcp_synack_retries     5        2     SYN-ACK retransmissions in SYN_RECV (~63 s)
tcp_orphan_retries     0 (=8)   2     retransmissions of a closed (orphaned) socket
tcp_fin_timeout        60       2     orphaned FIN_WAIT2 lifetime (not TIME_WAIT: 60 s fixed)
tcp_keepalive_time     7200     1     idle seconds before the first keepalive probe
tcp_keepalive_intvl    75       1     seconds between probes
tcp_keepalive_probes   9        3     unanswered probes before ETIMEDOUT
=====================  =======  ====  ==============================================
"""

from __future__ import annotations

from types import MappingProxyType

from .errors import InvalidArgument

_V4 = "net.ipv4."
DEFAULT = MappingProxyType({
    _V4 + "tcp_retries1": 3, _V4 + "tcp_retries2": 15,
    _V4 + "tcp_syn_retries": 6, _V4 + "tcp_synack_retries": 5,
    _V4 + "tcp_orphan_retries": 0, _V4 + "tcp_fin_timeout": 60,
    _V4 + "tcp_keepalive_time": 7200, _V4 + "tcp_keepalive_intvl": 75,
    _V4 + "tcp_keepalive_probes": 9,
    _V4 + "tcp_tw_reuse": 2, _V4 + "tcp_max_tw_buckets": 131072,
    _V4 + "tcp_timestamps": 1, _V4 + "tcp_sack": 1, _V4 + "tcp_dsack": 1,
    _V4 + "tcp_window_scaling": 1, _V4 + "tcp_rfc1337": 0,
    _V4 + "tcp_abort_on_overflow": 0,
    _V4 + "tcp_max_syn_backlog": 2048, _V4 + "tcp_ecn": 2, _V4 + "tcp_fastopen": 1,
    _V4 + "tcp_autocorking": 1, _V4 + "tcp_early_retrans": 3, _V4 + "tcp_frto": 2,
    _V4 + "tcp_recovery": 1, _V4 + "tcp_thin_linear_timeouts": 0,
    _V4 + "tcp_slow_start_after_idle": 1, _V4 + "tcp_no_metrics_save": 0,
    _V4 + "tcp_mtu_probing": 0, _V4 + "tcp_invalid_ratelimit": 500,
    _V4 + "tcp_challenge_ack_limit": 2147483647,
    _V4 + "tcp_rmem": "4096 131072 6291456", _V4 + "tcp_wmem": "4096 16384 4194304",
    _V4 + "ip_local_port_range": "32768 60999",
    "net.core.somaxconn": 4096,
})
# present only on newer kernels; pinned when present
OPTIONAL = MappingProxyType({
    _V4 + "tcp_tw_reuse_delay": 1000,     # ms, 6.13+
    _V4 + "tcp_rto_min_us": 200000,       # 6.11+
    _V4 + "tcp_rto_max_ms": 120000,       # 6.15+
    _V4 + "tcp_syn_linear_timeouts": 4,   # 6.5+: the first SYN retransmissions at 1 s, linear
    _V4 + "tcp_syncookies": 1,            # only with CONFIG_SYN_COOKIES (not in UML's defconfig)
})

FAST = MappingProxyType({
    _V4 + "tcp_retries2": 3, _V4 + "tcp_syn_retries": 2, _V4 + "tcp_synack_retries": 2,
    _V4 + "tcp_orphan_retries": 2, _V4 + "tcp_fin_timeout": 2,
    _V4 + "tcp_keepalive_time": 1, _V4 + "tcp_keepalive_intvl": 1,
    _V4 + "tcp_keepalive_probes": 3,
})

PROFILES = {"default": MappingProxyType({}), "fast": FAST}


def pinned(key: str) -> bool:
    """Whether every host resets this key (so a reused host cannot carry
    an earlier lab's value)."""
    return key in DEFAULT or key in OPTIONAL


def explicit(overrides: dict | None) -> frozenset:
    """Keys a test asked for itself: missing on this kernel, they are a skip
    (an OPTIONAL key pinned by default is just left out)."""
    return frozenset(overrides or ())


def resolve(profile: str, overrides: dict | None) -> dict[str, str]:
    """The sysctls a host gets, as strings.  The test's own are checked
    before anything is made: per-namespace net.* keys only, values the
    kernel accepts (see harness._sysctls)."""
    from ._sysctls import check_all
    if profile not in PROFILES:
        raise InvalidArgument(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    out = {**DEFAULT, **OPTIONAL, **PROFILES[profile]}
    out.update(check_all(overrides, "the host's sysctls=", OPTIONAL))
    return {k: str(v) for k, v in out.items()}
