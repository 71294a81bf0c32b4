#!/usr/bin/env bash
# Install and start everything the harness needs on a fresh Debian 12 machine,
# as root; idempotent (each step is skipped when already done).
#   - Debian packages: python3 and python3-venv (ensurepip: a fresh Debian 12
#     has neither), iproute2, iptables, tcpdump, user-mode-linux (a whole
#     kernel with sch_netem, for the netem tests), docker.io, busybox-static
#     (container images are built locally), binutils (readelf for the redis
#     image), procps, util-linux (nsenter); libnetfilter-queue-dev is not
#     needed: NFQUEUE is spoken raw; nginx-light and postgresql: real
#     multi-process servers for tests/test_servers.py (never started as
#     services: the tests run them with configurations of their own inside
#     lab hosts); tshark (a test opens the captures' pcapng with it)
#   - a virtualenv at .venv with the package installed (pip install -e .[dev])
#   - the uml-6.12-tt guest kernel, built once and cached (python -m harness kernel build)
#   - tracefs mounted at /sys/kernel/tracing (where it can be; else the
#     timeline tests skip, naming why)
#   - dockerd started with every network-touching feature off (.ci/dockerd.sh)
#     where it can start; where it cannot (no docker, a container without the
#     privilege), set-up goes on and the container tests skip with the reason
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "setup: run as root (network namespaces need it)" >&2; exit 1; }

PKGS=(python3 python3-venv iproute2 iptables tcpdump user-mode-linux docker.io busybox-static
      binutils procps util-linux nginx-light postgresql
      tshark)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# the redis image is assembled from Debian's .debs: it needs apt lists too
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    # no package starts its service (nginx on :80, a postgresql cluster): the
    # tests run their own servers inside lab hosts (policy-rc.d, Debian's way)
    norc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        norc=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ $norc = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import harness, pytest_trio, xdist, pytest_asyncio, anyio, build" 2>/dev/null; then
    echo "setup: creating .venv"
    python3 -m venv .venv
    # the distribution was called "harness" before it became pytest-netfault
    .venv/bin/pip uninstall -q -y harness >/dev/null 2>&1 || true
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
fi

# The uml-6.12-tt guest kernel (Linux's default timers in virtual time): built
# once per machine from Debian's linux-source-6.12 with the harness's recipe
# (harness/_kernels.py) and cached by recipe + source version in
# /var/cache/harness/kernels; ~9 min on 2 idle cores, at nice 19.  ARCH=um
# needs gcc/make (build-essential), flex, bison, bc and perl; no libelf
# (no objtool for UML) and no openssl (no modules to sign).
KPKGS=(linux-source-6.12 build-essential flex bison bc perl)
kmissing=()
for p in "${KPKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || kmissing+=("$p")
done
if [ ${#kmissing[@]} -gt 0 ]; then
    echo "setup: installing ${kmissing[*]}"
    DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock apt-get install -y -qq "${kmissing[@]}" >/dev/null
fi
.venv/bin/python -m harness kernel build

[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || echo "setup: tracefs cannot be mounted at /sys/kernel/tracing: timeline tests will skip"

if ! out=$(bash .ci/dockerd.sh 2>&1); then
    echo "setup: no docker daemon (container tests will skip): $(printf '%s\n' "$out" | tail -n 3)"
fi
