#!/usr/bin/env bash
# Root filesystem of the harness "redis" image, assembled from Debian packages
# (no image registry): redis-server and redis-cli from the redis-server and
# redis-tools .debs, plus exactly the shared libraries they load and the
# dynamic loader, all taken from .debs of the same apt sources.
#
#   build-rootfs.sh inputs         print the package set (name version sha256),
#                                  hashed into the image tag by harness._docker
#   build-rootfs.sh build [OUTDIR] write OUTDIR/rootfs.tar (default: this dir)
#
# Package set: the seeds below plus the closure of their Depends/Pre-Depends
# restricted to lib* packages (first alternative), at the apt candidate
# version.  Build: apt-get download of exactly those versions (sha256
# checked), dpkg -x into a staging tree, then the staged loader's `--list`
# (ldd) resolves each binary's libraries strictly inside the staging tree, and
# only those files are copied, at their own paths, into the rootfs.
set -euo pipefail

SEEDS=(redis-server redis-tools)
# staged file -> path in the image.  /usr/bin/redis-server is a symlink to
# redis-check-rdb in the package (one binary; argv[0] selects the mode).
BINARIES=(
    usr/bin/redis-check-rdb:usr/bin/redis-server
    usr/bin/redis-cli:usr/bin/redis-cli
)

die() { echo "build-rootfs.sh (redis): $*" >&2; exit 1; }

resolve() {
    local names
    names=$(apt-cache depends --recurse --no-recommends --no-suggests \
                --no-conflicts --no-breaks --no-replaces --no-enhances "${SEEDS[@]}" \
            | grep -v '^[ <]' | sort -u) \
        || die "apt-cache depends failed (apt lists missing? run apt-get update)"
    # shellcheck disable=SC2086
    apt-cache show --no-all-versions $names 2>/dev/null | awk -v seeds="${SEEDS[*]}" '
        function flush() {
            if (pkg != "") { ver[pkg] = v; sha[pkg] = s; deps[pkg] = d }
            pkg = ""; v = ""; s = ""; d = ""
        }
        /^Package: /     { flush(); pkg = $2; next }
        /^Version: /     { v = $2; next }
        /^SHA256: /      { s = $2; next }
        /^(Pre-)?Depends: / { sub(/^[A-Za-z-]+: /, ""); d = d (d == "" ? "" : ", ") $0; next }
        END {
            flush()
            n = split(seeds, queue, " ")
            for (i = 1; i <= n; i++) seen[queue[i]] = 1
            for (i = 1; i <= n; i++) {
                p = queue[i]
                if (!(p in ver)) { print "MISSING " p; continue }
                m = split(deps[p], ds, /, */)
                for (j = 1; j <= m; j++) {
                    dep = ds[j]
                    sub(/ *\|.*/, "", dep)     # first alternative
                    sub(/ *\(.*/, "", dep)     # version constraint
                    sub(/:.*/, "", dep)        # :any / :amd64
                    if (dep ~ /^lib/ && !(dep in seen)) { seen[dep] = 1; queue[++n] = dep }
                }
            }
            for (i = 1; i <= n; i++)
                if (queue[i] in ver) print queue[i], ver[queue[i]], sha[queue[i]]
        }' | sort
}

case "${1:-}" in
inputs)
    pkgs=$(resolve)
    if grep -q '^MISSING' <<<"$pkgs"; then die "packages not in apt lists: $(grep '^MISSING' <<<"$pkgs" | tr '\n' ' ')"; fi
    echo "$pkgs"
    ;;
build)
    out=$(realpath "${2:-$(dirname "$0")}")
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    debs=$work/debs stage=$work/stage root=$work/root
    mkdir -p "$debs" "$stage" "$root"

    pkgs=$(resolve)
    if grep -q '^MISSING' <<<"$pkgs"; then die "packages not in apt lists: $(grep '^MISSING' <<<"$pkgs" | tr '\n' ' ')"; fi
    mapfile -t specs < <(awk '{print $1 "=" $2}' <<<"$pkgs")
    (cd "$debs" && apt-get -q -o APT::Sandbox::User=root download "${specs[@]}" >"$work/download.log" 2>&1) \
        || { cat "$work/download.log" >&2; die "apt-get download failed"; }
    sums=$(cd "$debs" && sha256sum -- *.deb)
    while read -r name version sha; do
        grep -q "^$sha " <<<"$sums" || die "sha256 mismatch or missing .deb for $name $version"
    done <<<"$pkgs"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$stage"; done

    libdirs=$stage/lib/x86_64-linux-gnu:$stage/usr/lib/x86_64-linux-gnu
    # Copy a staged file to the same path in the rootfs, dereferencing symlinks.
    put() { local rel=${1#"$stage"/}; mkdir -p "$root/$(dirname "$rel")"; cp -L "$1" "$root/$rel"; }

    interp=""
    for spec in "${BINARIES[@]}"; do
        src=$stage/${spec%%:*} dst=$root/${spec#*:}
        [ -f "$src" ] || die "missing ${spec%%:*} in the extracted packages"
        mkdir -p "$(dirname "$dst")"
        cp -L "$src" "$dst"
        i=$(readelf -l "$src" | sed -n 's/.*program interpreter: \(.*\)]/\1/p')
        [ -n "$i" ] || die "${spec%%:*}: no program interpreter"
        interp=${interp:-$i}
        [ "$i" = "$interp" ] || die "binaries disagree on the program interpreter"
        # The staged loader (absolute symlink inside the package) resolves
        # the libraries; anything found outside the staging tree is an error.
        loader=$stage$interp
        while [ -L "$loader" ]; do
            t=$(readlink "$loader")
            case $t in /*) loader=$stage$t ;; *) loader=$(dirname "$loader")/$t ;; esac
        done
        listing=$("$loader" --library-path "$libdirs" --list "$src") \
            || die "${spec%%:*}: loader --list failed: $listing"
        if grep -q 'not found' <<<"$listing"; then
            die "${spec%%:*}: unresolved libraries:"$'\n'"$(grep 'not found' <<<"$listing")"
        fi
        while read -r lib; do
            case $lib in "$stage"/*) ;; *) die "${spec%%:*}: $lib is not from the downloaded packages" ;; esac
            put "$lib"
        done < <(sed -n 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' <<<"$listing")
    done
    # The dynamic loader at its real path, plus the PT_INTERP path as a symlink.
    put "$loader"
    mkdir -p "$root$(dirname "$interp")"
    [ -e "$root$interp" ] || ln -s "/${loader#"$stage"/}" "$root$interp"

    install -d -m 1777 "$root/tmp"
    mkdir -p "$root/data" "$root/etc"
    printf 'root:x:0:0:root:/data:/nonexistent\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    # Record what went in (handy for debugging an image).
    echo "$pkgs" >"$root/etc/harness-packages"

    tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 \
        -cf "$out/rootfs.tar.tmp" .
    mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
    ;;
*)
    echo "usage: $0 inputs | build [OUTDIR]" >&2
    exit 2
    ;;
esac
