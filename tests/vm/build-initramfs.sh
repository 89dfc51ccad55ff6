#!/bin/sh
# Build the initramfs that the QEMU end-to-end tests boot.
#
#   tests/vm/build-initramfs.sh OUT.cpio.gz LOADER_BIN PAYLOAD_DIR [INIT]
#
# Contents: busybox-static (+ one symlink per applet), /usr/sbin/apparmor_parser and the libraries ldd lists,
# the host's AppArmor include tree (/etc/apparmor.d/{abi,abstractions,tunables}, /etc/apparmor/parser.conf and the
# features file it names), our static loader at /usr/local/bin/apparmor-loader (+ busybox-style links),
# PAYLOAD_DIR at /aapl, and INIT (default: tests/vm/guest/init) at /init.
set -eu

die() { echo "build-initramfs.sh: $*" >&2; exit 1; }
[ $# -ge 3 ] || die "usage: $0 OUT.cpio.gz LOADER_BIN PAYLOAD_DIR [INIT]"
out=$1 loader=$2 payload=$3
here=$(cd "$(dirname "$0")" && pwd)
init=${4:-$here/guest/init}

busybox=${BUSYBOX:-/bin/busybox}
parser=${APPARMOR_PARSER:-/usr/sbin/apparmor_parser}
for f in "$busybox" "$parser" "$loader" "$init" /etc/apparmor/parser.conf /etc/apparmor.d/abi; do
    [ -e "$f" ] || die "missing $f"
done
"$busybox" --list >/dev/null 2>&1 || die "$busybox is not a busybox binary (install busybox-static)"
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
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done

# apparmor_parser and its shared libraries (ldd: "name => /path (addr)" or "/path (addr)")
copy_with_parents() { mkdir -p "$root$(dirname "$1")" && cp -L "$1" "$root$1"; }
copy_with_parents "$parser"
for lib in $(ldd "$parser" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
    copy_with_parents "$lib"
done

# the AppArmor include tree and parser configuration
cp -a /etc/apparmor.d/abi /etc/apparmor.d/abstractions /etc/apparmor.d/tunables "$root/etc/apparmor.d/"
cp /etc/apparmor/parser.conf "$root/etc/apparmor/parser.conf"
features=$(sed -n 's/^[[:space:]]*policy-features[[:space:]]*=[[:space:]]*//p' /etc/apparmor/parser.conf | tail -n 1)
if [ -n "$features" ]; then
    [ -e "$features" ] || die "parser.conf names policy-features=$features, which does not exist"
    copy_with_parents "$features"
fi

# our loader: static, stripped of debug info to keep the initramfs small
cp "$loader" "$root/usr/local/bin/apparmor-loader"
if command -v objcopy >/dev/null 2>&1; then
    objcopy --strip-debug "$root/usr/local/bin/apparmor-loader" 2>/dev/null || cp "$loader" "$root/usr/local/bin/apparmor-loader"
fi
chmod 0755 "$root/usr/local/bin/apparmor-loader"
# the contract says static; should it ever be dynamic, bring its libraries along rather than fail obscurely
if ldd "$loader" >/dev/null 2>&1; then
    for lib in $(ldd "$loader" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
        [ -e "$root$lib" ] || copy_with_parents "$lib"
    done
fi
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
