#!/bin/sh
# Build the initramfs that the QEMU end-to-end tests boot.
#
#   tests/vm/build-initramfs.sh OUT.cpio.gz LOADER_BIN PAYLOAD_DIR [INIT]
#
# Contents: busybox-static (+ one symlink per applet); the image's parser tree, laid out by
# build/parser-rootfs.sh --vm exactly as in the image (Debian trixie's apparmor 4.1 parser at
# /usr/sbin/apparmor_parser with trixie's libc and include tree /etc/apparmor.d/{abi,abstractions,tunables}, a
# non-pinning /etc/apparmor/parser.conf, bookworm's 3.0 parser at /usr/lib/apparmor-profile-loader/apparmor_parser-3
# with its include tree) plus bookworm's AppArmor 3.0 feature file at /usr/share/apparmor-features/features for
# pinned-node scenarios; our static loader at /usr/local/bin/apparmor-loader (+ busybox-style links);
# PAYLOAD_DIR at /aapl, and INIT (default: tests/vm/guest/init) at /init.
# PARSER_ROOTFS=DIR takes that tree from DIR (made by `parser-rootfs.sh --vm DIR`) instead of building it.
# BUSYBOX=FILE takes another busybox-static; BUSYBOX_LIST=FILE a busybox of the same version that runs here, to
# list the applets of a foreign-architecture BUSYBOX (tests/kernel_arm64.rs: the arm64 one, listed by the host's).
set -eu

die() { echo "build-initramfs.sh: $*" >&2; exit 1; }
[ $# -ge 3 ] || die "usage: $0 OUT.cpio.gz LOADER_BIN PAYLOAD_DIR [INIT]"
out=$1 loader=$2 payload=$3
here=$(cd "$(dirname "$0")" && pwd)
init=${4:-$here/guest/init}

busybox=${BUSYBOX:-/bin/busybox}
busybox_list=${BUSYBOX_LIST:-$busybox}
for f in "$busybox" "$busybox_list" "$loader" "$init"; do
    [ -e "$f" ] || die "missing $f"
done
"$busybox_list" --list >/dev/null 2>&1 || die "$busybox_list is not a busybox binary (install busybox-static)"
file_type=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
case $file_type in *"not a dynamic executable"*|*"statically linked"*) ;; *) die "$busybox is not static (install busybox-static)";; esac

root=$(mktemp -d "${TMPDIR:-/tmp}/aapl-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root" # mktemp made it 0700: it becomes the guest's /, which unprivileged users must traverse
mkdir -p "$root"/bin "$root"/sbin "$root"/usr/bin "$root"/usr/sbin "$root"/usr/local/bin "$root"/dev "$root"/proc \
    "$root"/sys "$root"/tmp "$root"/run "$root"/root "$root"/etc/apparmor "$root"/etc/apparmor.d "$root"/var/cache \
    "$root"/var/tmp
chmod 1777 "$root"/tmp "$root"/var/tmp

# busybox and its applets
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox_list" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done

# the image's parsers, libc and include trees (+ bookworm's feature file), as the image has them
if [ -n "${PARSER_ROOTFS:-}" ]; then
    [ -x "$PARSER_ROOTFS/usr/sbin/apparmor_parser" ] || die "PARSER_ROOTFS=$PARSER_ROOTFS has no usr/sbin/apparmor_parser"
    cp -a "$PARSER_ROOTFS"/. "$root/"
else
    sh "$here/../../build/parser-rootfs.sh" --vm "$root" || die "build/parser-rootfs.sh --vm failed"
fi
[ -f "$root/usr/share/apparmor-features/features" ] || die "the parser tree lacks usr/share/apparmor-features/features (use --vm)"

# our loader: static, stripped of debug info to keep the initramfs small
cp "$loader" "$root/usr/local/bin/apparmor-loader"
if command -v objcopy >/dev/null 2>&1; then
    objcopy --strip-debug "$root/usr/local/bin/apparmor-loader" 2>/dev/null || cp "$loader" "$root/usr/local/bin/apparmor-loader"
fi
chmod 0755 "$root/usr/local/bin/apparmor-loader"
# the contract says static (the guest's only libc is trixie's, for the parser; the host's must not leak in)
case $(LC_ALL=C ldd "$loader" 2>&1 || true) in
*"not a dynamic executable"*|*"statically linked"*) ;;
*) die "$loader is not statically linked (see .cargo/config.toml)" ;;
esac
for link in copy load untaint pause validate; do
    ln -s apparmor-loader "$root/usr/local/bin/$link"
done

# users for the unprivileged scenarios
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# the test payload and /init
cp -a "$payload" "$root/aapl"
cp "$init" "$root/init"
chmod 0755 "$root/init"

tmp_out="$out.tmp.$$"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$tmp_out"
mv "$tmp_out" "$out"
