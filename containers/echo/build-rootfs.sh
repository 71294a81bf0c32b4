#!/usr/bin/env bash
# Root filesystem of the harness "echo" image: a static busybox.
#
#   build-rootfs.sh inputs         print what the rootfs depends on outside this
#                                  directory (hashed into the image tag)
#   build-rootfs.sh build [OUTDIR] write OUTDIR/rootfs.tar (default: this dir)
#
# BUSYBOX (default /usr/bin/busybox, from Debian's busybox-static) must be a
# statically linked busybox: the image has no dynamic loader and no libc.
set -euo pipefail
BUSYBOX=${BUSYBOX:-/usr/bin/busybox}

die() { echo "build-rootfs.sh (echo): $*" >&2; exit 1; }

check_static() {
    [ -x "$BUSYBOX" ] || die "$BUSYBOX not found: apt-get install busybox-static"
    if readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'program interpreter'; then
        die "$BUSYBOX is dynamically linked: install busybox-static"
    fi
}

case "${1:-}" in
inputs)
    check_static
    echo "busybox $(sha256sum <"$BUSYBOX" | cut -d' ' -f1)"
    dpkg-query -W -f '${Package} ${Version}\n' busybox-static 2>/dev/null || true
    ;;
build)
    check_static
    out=$(realpath "${2:-$(dirname "$0")}")
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    root=$work/root
    mkdir -p "$root/bin" "$root/www" "$root/etc" "$root/usr"
    ln -s bin "$root/sbin"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    install -d -m 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 \
        -cf "$out/rootfs.tar.tmp" .
    mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
    ;;
*)
    echo "usage: $0 inputs | build [OUTDIR]" >&2
    exit 2
    ;;
esac
