#!/bin/sh
# parser-rootfs.sh [--vm] [--arch amd64|arm64] [--refresh-lock] DESTDIR
#
# Lays out in DESTDIR, as the image's root filesystem for ARCH (default amd64), the AppArmor parsers the loader
# runs, all from Debian .debs of that architecture:
#
#   /usr/sbin/apparmor_parser                     Debian trixie's apparmor 4.1.x (reads 3.0 and 4.0 syntax)
#   amd64: /usr/lib/x86_64-linux-gnu/{libc.so.6,ld-linux-x86-64.so.2}, /usr/lib64/ld-linux-x86-64.so.2 -> ...,
#          /lib -> usr/lib, /lib64 -> usr/lib64
#   arm64: /usr/lib/aarch64-linux-gnu/{libc.so.6,ld-linux-aarch64.so.1}, /usr/lib/ld-linux-aarch64.so.1 -> ...,
#          /lib -> usr/lib                        trixie's libc6 (glibc >= 2.38, which 4.1 needs): the
#                                                 rootfs's only libc; exactly the libraries the parser needs
#   /etc/apparmor.d/{abi,abstractions,tunables}   trixie's include tree, same package as the parser
#   /etc/apparmor/parser.conf                     comments only: NO policy-features pin. Debian's file pins
#                                                 /usr/share/apparmor-features/features; `load` decides the
#                                                 feature set per node instead (README "Parser and include tree")
#   /usr/lib/apparmor-profile-loader/apparmor_parser-3
#   /usr/lib/apparmor-profile-loader/apparmor.d-3/{abi,abstractions,tunables}
#                                                 bookworm's apparmor 3.0.x parser and its own include tree,
#                                                 for checking what an AppArmor 3.x node (AKS Ubuntu 22.04)
#                                                 accepts at boot; it runs on trixie's libc
#   /usr/share/doc/apparmor-profile-loader/       copyright files, `parser-packages` (package versions) and
#                                                 `debian-packages` (one line per .deb unpacked here:
#                                                 "package version arch suite sha256 file"; the SBOM's input)
#
# --vm additionally puts bookworm's AppArmor 3.0 feature file at /usr/share/apparmor-features/features (where
# Debian's parser.conf pin points), for the VM's pinned-node scenarios. The image does not ship it.
#
# Nothing is installed on the machine and its apt sources are not changed: apt runs with its own source list
# (the machine's Debian archive, suites trixie and bookworm), its own lists and cache directories, and
# `apt-get download` fetches the .debs, which are checked against the signed lists and unpacked with
# `dpkg-deb -x`. The .debs are kept, keyed by version, in ${AAPL_CI_CACHE:-/var/cache/aapl-ci}/trixie/debs
# (arm64: .../trixie-arm64/debs); the lists are refreshed at most once a day (APT_LISTS_MAX_AGE_MIN, minutes), and
# if the archive is unreachable the lists already there are used. DEBIAN_MIRROR overrides the archive URI.
#
# Versions are pinned by the lock file (DEBIAN_PACKAGES_LOCK, default build/debian-packages.lock beside
# this script; lines "arch package suite version"): a build takes exactly those versions and fails if the archive
# no longer has one. --refresh-lock resolves the newest versions in the archive for ARCH and rewrites that arch's
# lines of the lock file before building. APPARMOR4_VERSION, APPARMOR3_VERSION, LIBC6_VERSION override a pin
# for one build (the Containerfile's build-args).
#
# Used by the Containerfile's `parser` stage (debian:trixie-slim), by .ci/check-deploy (no registry in CI)
# and by tests/vm/build-initramfs.sh, so the image and the VM get the same tree.
# Needs: apt-get, apt-cache, dpkg-deb, and root (apt-get update into its own directories).
set -eu

die() { echo "parser-rootfs.sh: $*" >&2; exit 1; }

usage="usage: parser-rootfs.sh [--vm] [--arch amd64|arm64] [--refresh-lock] DESTDIR"
vm=0 arch=amd64 refresh=0
while [ $# -gt 0 ]; do
	case $1 in
	--vm) vm=1 ;;
	--arch) [ $# -ge 2 ] || die "$usage"; arch=$2; shift ;;
	--arch=*) arch=${1#--arch=} ;;
	--refresh-lock) refresh=1 ;;
	-*) die "unknown option $1; $usage" ;;
	*) break ;;
	esac
	shift
done
[ $# -eq 1 ] || die "$usage"
dest=$1
# triple: Debian's multiarch directory; ldso: the loader's name, as the parser's PT_INTERP names it under /lib*
case $arch in
amd64) triple=x86_64-linux-gnu ldso_name=ld-linux-x86-64.so.2 ldso_link=usr/lib64 ;;
arm64) triple=aarch64-linux-gnu ldso_name=ld-linux-aarch64.so.1 ldso_link=usr/lib ;;
*) die "unsupported architecture '$arch' (amd64 or arm64)" ;;
esac
for cmd in apt-get apt-cache dpkg-deb readelf sha256sum; do
	command -v "$cmd" >/dev/null 2>&1 || die "missing command $cmd (a Debian system with binutils is needed)"
done
lock_file=${DEBIAN_PACKAGES_LOCK:-$(cd "$(dirname "$0")" && pwd)/debian-packages.lock}
[ "$refresh" = 1 ] || [ -f "$lock_file" ] || die "no lock file $lock_file (create it with --refresh-lock)"

# amd64 keeps the cache directory it always had; other architectures get their own lists and .debs
if [ "$arch" = amd64 ]; then
	cache=${AAPL_CI_CACHE:-/var/cache/aapl-ci}/trixie
else
	cache=${AAPL_CI_CACHE:-/var/cache/aapl-ci}/trixie-$arch
fi
max_age=${APT_LISTS_MAX_AGE_MIN:-1440}
mkdir -p "$cache/debs" "$cache/lists/partial" "$cache/apt-cache/archives/partial"

# ===  apt with its own sources, lists and cache  ===

# The archive the machine already uses (deb822 or one-line format), and the key it trusts it with.
sources=/etc/apt/sources.list.d/debian.sources
if [ -n "${DEBIAN_MIRROR:-}" ]; then
	uri=$DEBIAN_MIRROR
elif [ -f "$sources" ]; then
	uri=$(awk '/^URIs:/ { print $2; exit }' "$sources")
else
	uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
		/etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$uri" ] || die "cannot find the machine's Debian archive in $sources or /etc/apt/sources.list; set DEBIAN_MIRROR"
signed_by=""
[ -f "$sources" ] && signed_by=$(awk '/^Signed-By:/ { print $2; exit }' "$sources")
{
	printf 'Types: deb\nURIs: %s\nSuites: trixie bookworm\nComponents: main\nArchitectures: %s\n' "$uri" "$arch"
	[ -z "$signed_by" ] || printf 'Signed-By: %s\n' "$signed_by"
} >"$cache/sources.tmp.$$"

apt_opts() {
	echo "-q -o Dir::Etc::sourcelist=$cache/trixie.sources -o Dir::Etc::sourceparts=- \
-o Dir::State::Lists=$cache/lists -o Dir::Cache=$cache/apt-cache -o APT::Sandbox::User=root \
-o APT::Architecture=$arch -o APT::Architectures=$arch"
}

# One apt run at a time on the shared cache (several worktrees may build at once).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache/.lock"
	flock 9
fi
mv "$cache/sources.tmp.$$" "$cache/trixie.sources"

# refresh the lists when missing or older than $max_age minutes; keep old ones if the archive is unreachable
stamp=$cache/lists/.updated
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +"$max_age" 2>/dev/null)" ]; then
	# shellcheck disable=SC2046 # word splitting of the options is intended
	if apt-get $(apt_opts) update >"$cache/update.log" 2>&1; then
		touch "$stamp"
	elif [ -f "$stamp" ]; then
		echo "parser-rootfs.sh: apt-get update failed (see $cache/update.log); using the lists from $(date -r "$stamp")" >&2
	else
		cat "$cache/update.log" >&2
		die "apt-get update for trixie/bookworm from $uri failed and no lists are cached"
	fi
fi

# The newest versions of apparmor and libc6 per suite ("pkg suite version" lines), resolved once per lists
# refresh (apt-cache parses all lists, which takes seconds).
versions=$cache/lists/.versions
if [ ! -s "$versions" ] || [ "$versions" -ot "$stamp" ]; then
	# shellcheck disable=SC2046
	apt-cache $(apt_opts) madison apparmor libc6 |
		awk -F'|' '{ gsub(/ /, "", $1); gsub(/ /, "", $2); split($3, a, " "); split(a[2], s, "/");
			if (!seen[$1 " " s[1]]++) print $1, s[1], $2 }' >"$versions.tmp"
	mv "$versions.tmp" "$versions"
fi
newest() { awk -v p="$1" -v s="$2" '$1 == p && $2 == s { print $3; exit }' "$versions"; }

# fetch PACKAGE VERSION: path of the cached .deb, downloading it once
fetch() {
	pkg=$1 ver=$2
	file=$cache/debs/${pkg}_$(echo "$ver" | sed 's/:/%3a/')_$arch.deb
	if [ ! -s "$file" ]; then
		tmp=$(mktemp -d "$cache/debs/.dl.XXXXXX")
		# shellcheck disable=SC2046
		(cd "$tmp" && apt-get $(apt_opts) download "$pkg=$ver" >&2) ||
			{ rm -rf "$tmp"; die "apt-get download $pkg=$ver failed (is $ver still in the archive? pin another with the *_VERSION variables)"; }
		set -- "$tmp"/"${pkg}"_*.deb
		[ -f "$1" ] || { rm -rf "$tmp"; die "apt-get download $pkg=$ver produced no .deb"; }
		mv "$1" "$file"
		rm -rf "$tmp"
	fi
	echo "$file"
}

# pinned PACKAGE SUITE: the lock file's version for this arch
pinned() { awk -v a="$arch" -v p="$1" -v s="$2" '$1 == a && $2 == p && $3 == s { print $4; exit }' "$lock_file"; }
if [ "$refresh" = 1 ]; then
	aa4_ver=$(newest apparmor trixie) aa3_ver=$(newest apparmor bookworm) libc_ver=$(newest libc6 trixie)
	[ -n "$aa4_ver" ] && [ -n "$aa3_ver" ] && [ -n "$libc_ver" ] ||
		die "cannot resolve the newest versions for $arch (apparmor trixie '$aa4_ver', apparmor bookworm '$aa3_ver', libc6 trixie '$libc_ver')"
	{
		if [ -f "$lock_file" ]; then
			grep -v "^$arch " "$lock_file" || true
		else
			echo "# Debian package versions build/parser-rootfs.sh builds the image's parser tree from."
			echo "# arch package suite version; rewritten per arch by \`parser-rootfs.sh --arch ARCH --refresh-lock DIR\`."
		fi
		printf '%s apparmor trixie %s\n%s apparmor bookworm %s\n%s libc6 trixie %s\n' \
			"$arch" "$aa4_ver" "$arch" "$aa3_ver" "$arch" "$libc_ver"
	} >"$lock_file.tmp.$$"
	mv "$lock_file.tmp.$$" "$lock_file"
	echo "parser-rootfs.sh: $lock_file: $arch pinned to apparmor $aa4_ver (trixie), $aa3_ver (bookworm), libc6 $libc_ver" >&2
fi
aa4_ver=${APPARMOR4_VERSION:-$(pinned apparmor trixie)}
aa3_ver=${APPARMOR3_VERSION:-$(pinned apparmor bookworm)}
libc_ver=${LIBC6_VERSION:-$(pinned libc6 trixie)}
[ -n "$aa4_ver" ] && [ -n "$aa3_ver" ] && [ -n "$libc_ver" ] ||
	die "$lock_file pins no version for $arch (apparmor trixie '$aa4_ver', apparmor bookworm '$aa3_ver', libc6 trixie '$libc_ver'); run parser-rootfs.sh --arch $arch --refresh-lock DIR"
aa4_deb=$(fetch apparmor "$aa4_ver")
aa3_deb=$(fetch apparmor "$aa3_ver")
libc_deb=$(fetch libc6 "$libc_ver")
[ "$(command -v flock)" = "" ] || flock -u 9

# ===  the tree  ===

work=$(mktemp -d "${TMPDIR:-/tmp}/parser-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$aa4_deb" "$work/aa4"
dpkg-deb -x "$aa3_deb" "$work/aa3"
dpkg-deb -x "$libc_deb" "$work/libc"
# the parser's path differs between releases (/sbin in bookworm, /usr/sbin in trixie)
parser_in() {
	for p in "$1/usr/sbin/apparmor_parser" "$1/sbin/apparmor_parser"; do
		[ -f "$p" ] && { echo "$p"; return 0; }
	done
	die "no apparmor_parser in $2"
}
aa4_parser=$(parser_in "$work/aa4" "${aa4_deb##*/}")
aa3_parser=$(parser_in "$work/aa3" "${aa3_deb##*/}")
libdir=$work/libc/usr/lib/$triple
ldso=$libdir/$ldso_name
[ -f "$libdir/libc.so.6" ] && [ -f "$ldso" ] || die "${libc_deb##*/} has no usr/lib/$triple/{libc.so.6,$ldso_name}"

mkdir -p "$dest/usr/sbin" "$dest/usr/lib/$triple" "$dest/$ldso_link" "$dest/etc/apparmor.d" \
	"$dest/usr/lib/apparmor-profile-loader/apparmor.d-3"
[ -e "$dest/lib" ] || ln -s usr/lib "$dest/lib"
[ "$arch" != amd64 ] || [ -e "$dest/lib64" ] || ln -s usr/lib64 "$dest/lib64"
install -m 0755 "$aa4_parser" "$dest/usr/sbin/apparmor_parser"
install -m 0755 "$aa3_parser" "$dest/usr/lib/apparmor-profile-loader/apparmor_parser-3"

# Libraries: exactly the parsers' DT_NEEDED entries (and theirs), each found in trixie's libc6; the loader is
# the parser's PT_INTERP. Anything not in trixie's libc6 fails the build. readelf reads either architecture.
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
: >"$work/libs"
todo="$aa4_parser $aa3_parser"
while [ -n "$todo" ]; do
	set -- $todo
	f=$1
	shift
	todo=$*
	interp=$(readelf -l "$f" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
	case $interp in "" | */"$ldso_name") ;; *) die "${f##*/} asks for the loader $interp, not $ldso_name" ;; esac
	for lib in $(needed "$f"); do
		[ "$lib" != "$ldso_name" ] || continue
		grep -qxF "$lib" "$work/libs" && continue
		[ -f "$libdir/$lib" ] || die "${f##*/} needs $lib, which trixie's libc6 ($arch) does not ship"
		echo "$lib" >>"$work/libs"
		install -m 0755 "$libdir/$lib" "$dest/usr/lib/$triple/$lib"
		todo="$todo $libdir/$lib"
	done
done
install -m 0755 "$ldso" "$dest/usr/lib/$triple/$ldso_name"
if [ "$arch" = amd64 ]; then
	ln -sfn "../lib/$triple/$ldso_name" "$dest/usr/lib64/$ldso_name"
else
	ln -sfn "$triple/$ldso_name" "$dest/usr/lib/$ldso_name"
fi

# include trees: the whole abi/, abstractions/ and tunables/ of each package
for d in abi abstractions tunables; do
	[ -d "$work/aa4/etc/apparmor.d/$d" ] || die "${aa4_deb##*/} has no /etc/apparmor.d/$d"
	[ -d "$work/aa3/etc/apparmor.d/$d" ] || die "${aa3_deb##*/} has no /etc/apparmor.d/$d"
	rm -rf "${dest:?}/etc/apparmor.d/$d" "$dest/usr/lib/apparmor-profile-loader/apparmor.d-3/$d"
	cp -a "$work/aa4/etc/apparmor.d/$d" "$dest/etc/apparmor.d/$d"
	cp -a "$work/aa3/etc/apparmor.d/$d" "$dest/usr/lib/apparmor-profile-loader/apparmor.d-3/$d"
done

mkdir -p "$dest/etc/apparmor"
cat >"$dest/etc/apparmor/parser.conf" <<'EOF'
# apparmor-profile-loader: deliberately no `policy-features=` line (Debian's parser.conf pins one).
# `load` compiles for the node it runs on: the node's own parser.conf pin when it has one, otherwise the
# running kernel's features. See the README, "Parser and include tree".
EOF

if [ "$vm" = 1 ]; then
	f=$work/aa3/usr/share/apparmor-features/features
	[ -f "$f" ] || die "${aa3_deb##*/} has no /usr/share/apparmor-features/features"
	install -D -m 0644 "$f" "$dest/usr/share/apparmor-features/features"
fi

doc=$dest/usr/share/doc/apparmor-profile-loader
mkdir -p "$doc"
cp "$work/aa4/usr/share/doc/apparmor/copyright" "$doc/apparmor.copyright"
cp "$work/aa3/usr/share/doc/apparmor/copyright" "$doc/apparmor-3.copyright"
cp "$work/libc/usr/share/doc/libc6/copyright" "$doc/libc6.copyright"
printf 'apparmor %s /usr/sbin/apparmor_parser\napparmor %s /usr/lib/apparmor-profile-loader/apparmor_parser-3\nlibc6 %s\n' \
	"$aa4_ver" "$aa3_ver" "$libc_ver" >"$doc/parser-packages"
# the manifest of every .deb whose files are in the tree (read by build/sbom.py)
for entry in "apparmor $aa4_ver trixie $aa4_deb" "apparmor $aa3_ver bookworm $aa3_deb" "libc6 $libc_ver trixie $libc_deb"; do
	set -- $entry
	deb_arch=$(dpkg-deb -f "$4" Architecture)
	[ "$deb_arch" = "$arch" ] || die "${4##*/} is for $deb_arch, not $arch"
	printf '%s %s %s %s %s %s\n' "$1" "$2" "$deb_arch" "$3" "$(sha256sum <"$4" | cut -d' ' -f1)" "${4##*/}"
done >"$doc/debian-packages"

# ===  self-check: both parsers run with the tree's own loader and libc  ===

# one libc only
n=$(find "$dest" -name 'libc.so.6' | wc -l)
[ "$n" -eq 1 ] || die "$dest holds $n copies of libc.so.6, expected exactly one"
# run TREE-BINARY ARGS...: runs a binary of the tree with the tree's own loader and libc (through qemu-user for a
# foreign architecture)
lib=$dest/usr/lib/$triple
run() {
	case $arch in
	amd64) "$lib/$ldso_name" --library-path "$lib" "$@" ;;
	*)
		if [ "$(uname -m)" = aarch64 ]; then
			"$lib/$ldso_name" --library-path "$lib" "$@"
		else
			command -v qemu-aarch64 >/dev/null 2>&1 || die "qemu-aarch64 is missing (apt-get install qemu-user) to check the arm64 parsers"
			qemu-aarch64 -L "$dest" "$lib/$ldso_name" --library-path "$lib" "$@"
		fi
		;;
	esac
}
v4=$(run "$dest/usr/sbin/apparmor_parser" --version | head -n 1)
v3=$(run "$dest/usr/lib/apparmor-profile-loader/apparmor_parser-3" --version | head -n 1)
case $v4 in *" version 4."*) ;; *) die "/usr/sbin/apparmor_parser reports '$v4', expected 4.x" ;; esac
case $v3 in *" version 3."*) ;; *) die "apparmor_parser-3 reports '$v3', expected 3.x" ;; esac
echo "parser-rootfs.sh: $dest ($arch): $v4 (apparmor $aa4_ver), $v3 (apparmor $aa3_ver), libc6 $libc_ver" >&2
