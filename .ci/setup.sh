#!/usr/bin/env bash
# Install and start everything the harness needs on a fresh Debian 12 machine,
# as root; idempotent (each step is skipped when already done).
#   - Debian packages: iproute2, iptables, tcpdump, user-mode-linux (a whole
#     kernel with sch_netem, for the netem tests), docker.io, busybox-static
#     (container images are built locally), binutils (readelf for the redis
#     image), libnetfilter-queue-dev is not needed: NFQUEUE is spoken raw
#   - a virtualenv at .venv with the package installed (pip install -e .[dev])
#   - the uml-6.12-tt guest kernel, built once and cached (python -m harness kernel build)
#   - tracefs mounted at /sys/kernel/tracing
#   - dockerd started with every network-touching feature off (.ci/dockerd.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "setup: run as root (network namespaces need it)" >&2; exit 1; }

PKGS=(iproute2 iptables tcpdump user-mode-linux docker.io busybox-static binutils procps)
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
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import harness, pytest_trio, xdist" 2>/dev/null; then
    echo "setup: creating .venv"
    python3 -m venv .venv
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

[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

bash .ci/dockerd.sh >/dev/null
