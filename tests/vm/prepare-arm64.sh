#!/bin/sh
# Fetch (once) what the arm64 real-kernel test (tests/kernel_arm64.rs) boots, and lay out the arm64 image's parser
# tree, all under ${AAPL_CI_CACHE:-/var/cache/aapl-ci}/kernel-arm64/:
#
#   current/vmlinuz    Debian trixie's linux-image-<ver>-cloud-arm64 (the version linux-image-cloud-arm64 depends
#                      on; CONFIG_SECURITY_APPARMOR=y), <package>/ kept, older ones dropped
#   busybox            bookworm's busybox-static for arm64, the same version as the host's /bin/busybox (the
#                      initramfs takes the applet list from the host's, which cannot run the arm64 one)
#   parser-rootfs/     build/parser-rootfs.sh --vm --arch arm64: the arm64 image's parsers, libc and include
#                      trees at the versions of build/debian-packages.lock
#
# Nothing is installed on the host: apt runs with the arm64 source list parser-rootfs.sh keeps in
# <cache>/trixie-arm64 (suites trixie and bookworm, Architectures: arm64), `apt-get download` + `dpkg-deb -x`.
# tests/run-all runs it before `cargo test`; the test never downloads anything. Prints the kernel's path.
# Needs: apt-get, apt-cache, dpkg-deb, readelf, qemu-aarch64 (qemu-user, for parser-rootfs.sh's self-check), root.
set -eu

die() { echo "prepare-arm64.sh: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${AAPL_CI_CACHE:-/var/cache/aapl-ci}
kdir=$cache_root/kernel-arm64
apt_dir=$cache_root/trixie-arm64
mkdir -p "$kdir"

# 1. the parser tree (this also sets up and refreshes the arm64 apt lists in $apt_dir)
tree_tmp=$(mktemp -d "$kdir/.parser-rootfs.XXXXXX")
trap 'rm -rf "$tree_tmp"' EXIT
sh "$here/../../build/parser-rootfs.sh" --vm --arch arm64 "$tree_tmp/root" >&2 ||
    die "build/parser-rootfs.sh --vm --arch arm64 failed"
rm -rf "$kdir/parser-rootfs"
mv "$tree_tmp/root" "$kdir/parser-rootfs"

apt_opts="-q -o Dir::Etc::sourcelist=$apt_dir/trixie.sources -o Dir::Etc::sourceparts=- \
-o Dir::State::Lists=$apt_dir/lists -o Dir::Cache=$apt_dir/apt-cache -o APT::Sandbox::User=root \
-o APT::Architecture=arm64 -o APT::Architectures=arm64"
[ -f "$apt_dir/trixie.sources" ] || die "no $apt_dir/trixie.sources (parser-rootfs.sh should have written it)"

# download PACKAGE=VERSION DIR: the .deb's path
download() {
    # shellcheck disable=SC2086 # word splitting of the options is intended
    (cd "$2" && apt-get $apt_opts download "$1" >&2) || die "apt-get download $1 (arm64) failed"
    set -- "$2"/"${1%%=*}"_*.deb
    [ -f "$1" ] || die "apt-get download produced no .deb"
    echo "$1"
}

# 2. the kernel
# shellcheck disable=SC2086
pkg=$(apt-cache $apt_opts depends linux-image-cloud-arm64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-arm64$/ { print $2; exit }')
if [ -z "$pkg" ]; then
    [ -f "$kdir/current/vmlinuz" ] || die "cannot resolve the package linux-image-cloud-arm64 depends on (arm64 lists in $apt_dir)"
    echo "prepare-arm64.sh: cannot resolve linux-image-cloud-arm64; using the cached kernel" >&2
elif [ ! -f "$kdir/$pkg/vmlinuz" ]; then
    work=$(mktemp -d "$kdir/.tmp.XXXXXX")
    deb=$(download "$pkg" "$work")
    dpkg-deb -x "$deb" "$work/root"
    set -- "$work"/root/boot/vmlinuz-*
    [ -f "$1" ] || { rm -rf "$work"; die "$deb contains no /boot/vmlinuz-*"; }
    mkdir -p "$work/out"
    cp "$1" "$work/out/vmlinuz"
    set -- "$work"/root/boot/config-*
    if [ -f "$1" ]; then
        grep -q '^CONFIG_SECURITY_APPARMOR=y' "$1" || { rm -rf "$work"; die "$pkg is not built with CONFIG_SECURITY_APPARMOR=y"; }
        cp "$1" "$work/out/config"
    fi
    echo "$pkg" >"$work/out/package"
    rm -rf "${kdir:?}/$pkg"
    mv "$work/out" "$kdir/$pkg"
    rm -rf "$work"
    for old in "$kdir"/linux-image-*; do
        [ "$old" = "$kdir/$pkg" ] || rm -rf "$old"
    done
fi
[ -z "$pkg" ] || { ln -sfn "$pkg" "$kdir/current.tmp" && mv -T "$kdir/current.tmp" "$kdir/current"; }

# 3. busybox-static for arm64, the host's version
host_bb=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) || die "busybox-static is not installed on the host (apt-get install busybox-static)"
if [ "$(cat "$kdir/busybox.version" 2>/dev/null)" != "$host_bb" ] || [ ! -f "$kdir/busybox" ]; then
    work=$(mktemp -d "$kdir/.tmp.XXXXXX")
    deb=$(download "busybox-static=$host_bb" "$work")
    dpkg-deb -x "$deb" "$work/root"
    [ -f "$work/root/bin/busybox" ] || { rm -rf "$work"; die "$deb has no /bin/busybox"; }
    install -m 0755 "$work/root/bin/busybox" "$kdir/busybox"
    echo "$host_bb" >"$kdir/busybox.version"
    rm -rf "$work"
fi
echo "$kdir/current/vmlinuz"
