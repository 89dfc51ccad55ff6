#!/bin/sh
# Fetch (once) the Debian cloud kernel that the QEMU end-to-end tests boot, and print the path of its vmlinuz.
#
# Idempotent: the kernel is cached under ${AAPL_CI_CACHE:-/var/cache/aapl-ci}/kernel/<package>/vmlinuz, and
# <cache>/kernel/current is a symlink to the newest one. Nothing is installed on the host: the .deb of
# linux-image-<ver>-cloud-amd64 (the version linux-image-cloud-amd64 depends on) is fetched with `apt-get download`
# and unpacked with `dpkg-deb -x`.
#
# It also fetches (once) the Debian .debs of the guest's parsers (build/parser-rootfs.sh: trixie's apparmor
# 4.1 and libc6, bookworm's apparmor 3.0, cached in <cache>/trixie/debs), so that a missing archive shows here
# rather than in the middle of a test.
#
# Needs: apt lists (run `apt-get update` once on a fresh machine), dpkg-deb, and write access to the cache.
set -eu

cache_root=${AAPL_CI_CACHE:-/var/cache/aapl-ci}
kdir=$cache_root/kernel

die() { echo "prepare.sh: $*" >&2; exit 1; }

pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }')
if [ -z "$pkg" ]; then
    # No apt lists (fresh machine) or no network: fall back to the newest kernel we already have.
    if [ -f "$kdir/current/vmlinuz" ]; then
        echo "prepare.sh: cannot resolve linux-image-cloud-amd64 (run apt-get update?); using the cached kernel" >&2
        echo "$kdir/current/vmlinuz"
        exit 0
    fi
    die "cannot resolve the package that linux-image-cloud-amd64 depends on; run 'apt-get update' first"
fi

out=$kdir/$pkg
if [ ! -f "$out/vmlinuz" ]; then
    mkdir -p "$kdir"
    work=$(mktemp -d "$kdir/.tmp.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # apt-get download writes into the current directory; _apt may not be able to write there, so let it run
    # unsandboxed (it warns otherwise).
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
    deb=$(ls "$work"/"$pkg"_*.deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] || die "apt-get download produced no .deb for $pkg"
    dpkg-deb -x "$deb" "$work/root"
    vmlinuz=$(ls "$work"/root/boot/vmlinuz-* 2>/dev/null | head -n 1)
    [ -n "$vmlinuz" ] || die "$deb contains no /boot/vmlinuz-*"
    config=$(ls "$work"/root/boot/config-* 2>/dev/null | head -n 1)
    if [ -n "$config" ] && ! grep -q '^CONFIG_SECURITY_APPARMOR=y' "$config"; then
        die "$pkg is not built with CONFIG_SECURITY_APPARMOR=y"
    fi
    mkdir -p "$work/out"
    cp "$vmlinuz" "$work/out/vmlinuz"
    [ -z "$config" ] || cp "$config" "$work/out/config"
    echo "$pkg" > "$work/out/package"
    rm -rf "$out"
    mv "$work/out" "$out"
    # keep the cache bounded: drop kernels that linux-image-cloud-amd64 no longer points at
    for old in "$kdir"/linux-image-*; do
        [ "$old" = "$out" ] || rm -rf "$old"
    done
fi
ln -sfn "$pkg" "$kdir/current.tmp" && mv -T "$kdir/current.tmp" "$kdir/current"

parsers=$(mktemp -d "${TMPDIR:-/tmp}/aapl-parsers.XXXXXX")
sh "$(dirname "$0")/../../build/parser-rootfs.sh" --vm "$parsers/root" >&2 || { rm -rf "$parsers"; die "build/parser-rootfs.sh --vm failed"; }
rm -rf "$parsers"
echo "$out/vmlinuz"
