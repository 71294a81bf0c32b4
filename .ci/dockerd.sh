#!/usr/bin/env bash
# Start a docker daemon for the harness if none answers, then wait until it does.
#
# The daemon is started with every network-touching feature off, so the root
# network namespace keeps its links, routes, iptables/ip6tables rules and
# sysctls exactly as they were:
#   --bridge=none        no docker0 link, no default bridge network
#   --iptables=false     no iptables rules / chains (DOCKER, DOCKER-USER, ...)
#   --ip6tables=false    same for ip6tables
#   --ip-forward=false   do not set net.ipv4.ip_forward=1 (dockerd does it by
#                        default even with --bridge=none)
#   --ip-masq=false      no MASQUERADE rule (redundant with --iptables=false)
# Containers of the harness all run with network_mode=none anyway.
#
# Debian's systemd unit is not usable here, so the binary is started directly.
# No --containerd is given: Debian's dockerd then supervises its own
# containerd (/usr/bin/containerd, socket /var/run/docker/containerd/).
#
# Idempotent: exits 0 at once when `docker info` already succeeds, and never
# starts a second dockerd while one (from the pid file) is still alive.
#
# Environment: DOCKERD_LOG (default /var/log/dockerd.log),
#              DOCKERD_TIMEOUT seconds (default 60).
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
TIMEOUT=${DOCKERD_TIMEOUT:-60}
PIDFILE=/var/run/docker.pid
DOCKERD_FLAGS=(--iptables=false --ip6tables=false --bridge=none
               --ip-forward=false --ip-masq=false)

answers() { timeout 5 docker info >/dev/null 2>&1; }

if answers; then
    echo "dockerd.sh: a docker daemon already answers"
    exit 0
fi

command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd not found in PATH" >&2; exit 1; }
command -v docker  >/dev/null || { echo "dockerd.sh: docker CLI not found in PATH" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
    echo "dockerd.sh: must run as root to start dockerd" >&2
    exit 1
fi
# dockerd starts its own containerd when none is configured: it needs the binary.
command -v containerd >/dev/null || { echo "dockerd.sh: containerd not found in PATH (dockerd needs it)" >&2; exit 1; }

pid="" started=""
if [ -s "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    if ! kill -0 "$pid" 2>/dev/null || ! grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
        pid=""   # stale pid file
    fi
fi

if [ -n "$pid" ]; then
    echo "dockerd.sh: dockerd (pid $pid) is running but not answering yet; waiting"
else
    mkdir -p "$(dirname "$LOG")"
    echo "dockerd.sh: starting dockerd ${DOCKERD_FLAGS[*]} (log: $LOG)"
    # setsid + nohup: detach from this shell's session so the daemon outlives it.
    setsid nohup dockerd "${DOCKERD_FLAGS[@]}" >>"$LOG" 2>&1 </dev/null &
    pid=$! started=1
fi

deadline=$((SECONDS + TIMEOUT))
until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "dockerd.sh: dockerd (pid $pid) exited before answering; last log lines:" >&2
        tail -n 20 "$LOG" >&2 || true
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "dockerd.sh: timeout: no docker daemon answered within ${TIMEOUT}s (pid $pid); last log lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.5
done
# Answering is not enough: a daemon inside a container may answer and still be
# unable to start one (read-only cgroups: "unable to apply cgroup configuration").
# Run a container of a one-file image (busybox-static's binary) to know; if it
# cannot, stop the daemon this script started and say why.
if command -v busybox >/dev/null && [ "$(readlink -f "$(command -v busybox)")" ]; then
    bb=$(readlink -f "$(command -v busybox)")
    if ! err=$(tar -C / -cf - "${bb#/}" | docker import - fih-dockerd-check:latest >/dev/null \
               && docker run --rm --network none fih-dockerd-check:latest "$bb" true 2>&1); then
        echo "dockerd.sh: the daemon answers but cannot run a container: $(printf '%s' "$err" | tail -n 1)" >&2
        [ -z "$started" ] || kill "$pid" 2>/dev/null || true
        exit 1
    fi
fi
echo "dockerd.sh: docker daemon answers and runs containers (pid $pid)"
