"""Which sysctls a lab may write, checked before anything is made.

Only per-network-namespace keys: a host namespace must never reach a
machine-wide setting.  The kernel itself is the list: /proc/sys/net, read
from a child namespace, shows only the keys registered per namespace
(``register_net_sysctl(net, ...)``); the global ones (net.core.
netdev_max_backlog, net.ipv4.tcp_mem...) and everything outside net. are
either absent there or not ours to touch.

Values are checked by the kernel too, without touching any lab: each
requested key is written into a private scratch namespace (made once per
process, never named, gone with the process), so a value the kernel refuses
('abc', out of range) is an InvalidArgument before the switch, the host
namespaces or the tracefs instance exist.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import threading
from typing import Any, Mapping

from . import _netns
from .errors import InvalidArgument, SetupError, Unsupported

_KEY = re.compile(r"^net(\.[A-Za-z0-9_-]+)+$")
# per-device keys: net.ipv4.conf.eth0.rp_filter exists only where eth0 does;
# the scratch namespace checks them on its loopback device's (every device has
# the same table, and a child namespace has no neigh "default" entry)
_DEVICE = re.compile(r"^(net\.ipv[46]\.(?:conf|neigh))\.([^.]+)\.([^.]+)$")

_lock = threading.Lock()
_scratch: int | None = None


def _scratch_fd() -> int:
    """An fd of a fresh network namespace of this process's own (unnamed:
    it dies with the fd, so a SIGKILL leaves nothing)."""
    global _scratch
    with _lock:
        if _scratch is None:
            orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _netns._libc.unshare(_netns.CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise SetupError(f"cannot make a scratch namespace to check sysctls: "
                                     f"{os.strerror(err)}", call="unshare(CLONE_NEWNET)",
                                     errno=err)
                try:
                    _scratch = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                finally:
                    if _netns._libc.setns(orig, _netns.CLONE_NEWNET) != 0:  # pragma: no cover
                        raise SetupError("setns(back) failed after the scratch namespace")
            finally:
                os.close(orig)
        return _scratch


def check_name(key: object, where: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidArgument(
            f"sysctl names are full keys under net. (e.g. 'net.ipv4.tcp_fin_timeout'); only "
            f"per-namespace network settings can be changed from a lab, got {key!r} from {where}")
    return key


def check_value(key: str, value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"sysctl {key} takes an int or a string, got {value!r} "
                              f"({type(value).__name__}) from {where}")
    if isinstance(value, int) and value < 0:
        raise InvalidArgument(f"sysctl {key} must be >= 0, got {value} from {where}")
    return str(value)


def _missing(key: str, where: str, optional: bool) -> Exception:
    if optional:
        return Unsupported(f"sysctl {key} (asked for by the test) does not exist in this kernel")
    return InvalidArgument(
        f"sysctl {key} does not exist in a network namespace on this kernel, from {where}: "
        f"either it is unknown or it is machine-wide (only per-namespace sysctls can be set "
        f"from a lab)")


def check(key: object, value: object, where: str, *, optional: bool = False) -> str:
    """Name, type, and the kernel's own verdict in the scratch namespace;
    returns the value as written."""
    key = check_name(key, where)
    text = check_value(key, value, where)
    probe = key
    m = _DEVICE.match(key)
    if m and m.group(2) not in ("all", "default", "lo"):
        probe = f"{m.group(1)}.lo.{m.group(3)}"
    path = f"/proc/sys/{probe.replace('.', '/')}"
    with _netns.inside(_scratch_fd()):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _missing(key, where, optional) from None
        except IsADirectoryError:
            raise InvalidArgument(f"{key} is a group of sysctls, not one, from {where}") from None
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise InvalidArgument(f"sysctl {key} cannot be written in a network namespace "
                                      f"({exc.strerror}), from {where}") from None
            # /proc/sys mounted read-only here (a container): the name is known to
            # exist; the value is left to the write that sets it for real
            return text
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise InvalidArgument(f"sysctl {key}={value!r} is refused by the kernel "
                              f"({os.strerror(exc.errno or 0)}), from {where}") from None
    finally:
        os.close(fd)
    return text


def check_all(sysctls: object, where: str, optional: Mapping[str, Any] = {}) -> dict[str, str]:
    """A test's sysctls: a mapping of net.* keys to values, each checked."""
    if sysctls is None:
        return {}
    if not isinstance(sysctls, Mapping):
        raise InvalidArgument(f"sysctls must be a dict of full keys to values (e.g. "
                              f"{{'net.ipv4.tcp_fin_timeout': 5}}), got {sysctls!r} "
                              f"({type(sysctls).__name__}) from {where}")
    return {k: check(k, v, where, optional=k in optional) for k, v in sysctls.items()}
