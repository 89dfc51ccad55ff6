#!/usr/bin/env bash
# Prepares (once, cached) what the node end-to-end suite (tests/node_e2e.rs) boots, and prints the
# directory of the guest's static part:
#   - kubelet, kube-proxy, kube-scheduler, kube-controller-manager (tests/node/build-k8s.sh);
#   - Debian trixie's containerd and CNI plugins (bridge, host-local, loopback), fetched with
#     `apt-get download` through a private source list (the machine's own sources are untouched);
#   - the kernel modules of the VM's kernel (tests/vm/prepare.sh) the node needs (virtio_net, overlay,
#     bridge, veth, br_netfilter, nf_tables and friends), from the same linux-image package;
#   - the guest's base tree, packed as a gzip'd cpio (node-base.cpio.gz): busybox, those binaries
#     and the libraries `ldd` names (runc, nft, apparmor_parser from this bookworm machine), modules.
# Cache: ${AAPL_CI_CACHE:-/var/cache/aapl-ci}/node-guest/<key>/, <key> over this directory's scripts,
# the kernel package and the k8s build; a warm run takes seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${AAPL_CI_CACHE:-/var/cache/aapl-ci}"
die() { echo "prepare.sh: $*" >&2; exit 1; }

"$repo/tests/vm/prepare.sh" >/dev/null
kpkg=$(cat "$cache_root/kernel/current/package") || die "no kernel package name (tests/vm/prepare.sh)"
kver=${kpkg#linux-image-}
k8s=$("$here/build-k8s.sh" | tail -n 1)

# Debian packages: containerd and CNI plugins from trixie (they need glibc >= 2.34; bookworm has
# 2.36), the kernel's own package for its modules.
TRIXIE_PACKAGES=(containerd containernetworking-plugins)
key=$(cat "$here/prepare.sh" "$here/guest-base.sh" | { cat; echo "$kpkg $k8s"; } | sha256sum | cut -c1-16)
out="$cache_root/node-guest/$key"
if [[ -f $out/node-base.cpio.gz ]]; then
	echo "prepare.sh: cached $out" >&2
	echo "$out"
	exit 0
fi
mkdir -p "$cache_root/node-guest"
exec 9>"$cache_root/node-guest.lock"
flock 9
[[ -f $out/node-base.cpio.gz ]] && { echo "$out"; exit 0; }

work=$(mktemp -d "$cache_root/node-guest/.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/lists/partial" "$work/x"
uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $uri ]] || uri=http://deb.debian.org/debian
printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\n' "$uri" >"$work/trixie.sources"
apt_trixie=(-o "Dir::Etc::sourcelist=$work/trixie.sources" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
	-o APT::Sandbox::User=root -q)
apt-get "${apt_trixie[@]}" update >&2 || die "apt-get update of trixie lists failed"
(cd "$work/debs" && apt-get "${apt_trixie[@]}" download "${TRIXIE_PACKAGES[@]}" >&2) || die "apt-get download ${TRIXIE_PACKAGES[*]} (trixie) failed"
(cd "$work/debs" && apt-get -q -o APT::Sandbox::User=root download "$kpkg" >&2) || die "apt-get download $kpkg failed"
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$work/x"
	dpkg-deb -f "$deb" Package Version | paste -sd' ' >>"$work/packages"
done

K8S_BIN=$k8s KVER=$kver EXTRACTED=$work/x PACKAGES=$work/packages "$here/guest-base.sh" "$work/node-base.cpio.gz" >&2
mkdir -p "$out"
mv "$work/node-base.cpio.gz" "$work/packages" "$out/"
for old in "$cache_root"/node-guest/*/; do
	old=${old%/}
	[[ $old == "$out" || ${old##*/} == .tmp.* ]] || rm -rf "$old"
done
echo "$out"
