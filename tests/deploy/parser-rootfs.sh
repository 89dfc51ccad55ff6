#!/bin/sh
# parser-rootfs.sh DESTDIR
#
# Copies what the image needs from the installed Debian `apparmor` package into DESTDIR,
# laid out as the image's root filesystem:
#   /usr/sbin/apparmor_parser and exactly the shared libraries `ldd` names for it (on
#   bookworm: libc.so.6 and the dynamic loader), as real files at the paths ldd prints;
#   /etc/apparmor.d/{abi,abstractions,tunables}: only the files the package ships
#   (dpkg -L), so `#include <abstractions/...>` resolves against the same package version
#   as the parser; /etc/apparmor/parser.conf and the feature set it pins
#   (Debian's parser.conf says policy-features=/usr/share/apparmor-features/features);
#   the package and libc copyright files, and the parser's package version.
# Used by the Containerfile's `parser` stage (debian:bookworm-slim) and by .ci/check-deploy
# on a bookworm host (no registry in CI), so both builds get the same tree.
set -eu

dest=${1:?usage: parser-rootfs.sh DESTDIR}
pkg=apparmor

dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || {
	echo "parser-rootfs.sh: Debian package '$pkg' is not installed" >&2
	exit 1
}

parser=$(dpkg -L "$pkg" | grep -E '/s?bin/apparmor_parser$' | head -n 1)
[ -n "$parser" ] || { echo "parser-rootfs.sh: $pkg ships no apparmor_parser" >&2; exit 1; }
mkdir -p "$dest"
install -D -m 0755 "$parser" "$dest/usr/sbin/apparmor_parser"

# Shared libraries: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
ldd "$parser" | sed -n -e 's|.*=> \(/[^ ]*\) (.*|\1|p' -e 's|^[[:space:]]*\(/[^ ]*\) (.*|\1|p' |
	while read -r lib; do
		install -D -m 0755 "$(readlink -f "$lib")" "$dest$lib"
	done

dpkg -L "$pkg" |
	grep -E '^(/etc/apparmor\.d/(abi|abstractions|tunables)|/usr/share/apparmor-features)(/|$)' |
	while read -r path; do
		if [ -L "$path" ]; then
			mkdir -p "$dest$(dirname "$path")"
			cp -P "$path" "$dest$path"
		elif [ -d "$path" ]; then
			mkdir -p "$dest$path"
		elif [ -f "$path" ]; then
			install -D -m 0644 "$path" "$dest$path"
		fi
	done
install -D -m 0644 /etc/apparmor/parser.conf "$dest/etc/apparmor/parser.conf"

doc=$dest/usr/share/doc/apparmor-profile-loader
mkdir -p "$doc"
cp /usr/share/doc/apparmor/copyright "$doc/apparmor.copyright"
cp /usr/share/doc/libc6/copyright "$doc/libc6.copyright"
dpkg-query -W -f='${Package} ${Version}\n' "$pkg" libc6 > "$doc/parser-packages"
