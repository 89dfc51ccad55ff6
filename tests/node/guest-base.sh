#!/usr/bin/env bash
# guest-base.sh OUT.cpio.gz: the node guest's static tree (called by tests/node/prepare.sh, which sets
# K8S_BIN, KVER, EXTRACTED, PACKAGES). The per-run part (images, configuration, certificates, /init)
# is a second cpio the test appends; the kernel unpacks both.
#   /bin/*                       busybox-static and its applets
#   /usr/local/bin/kubelet, kube-proxy
#   /usr/bin/containerd, containerd-shim-runc-v2, ctr     trixie's containerd (ldd: host libraries)
#   /usr/sbin/runc, /usr/sbin/nft                         this machine's bookworm runc and nftables
#   /usr/sbin/apparmor_parser + /etc/apparmor.d/{abi,abstractions,tunables}, parser.conf: containerd
#                                loads its default profile (cri-containerd.apparmor.d) with it
#   /usr/lib/cni/{bridge,host-local,loopback}             trixie's containernetworking-plugins
#   /lib/modules/KVER/...        the modules below and everything they depend on, with modules.dep
set -euo pipefail
out=$1
: "${K8S_BIN:?}" "${KVER:?}" "${EXTRACTED:?}" "${PACKAGES:?}"
die() { echo "guest-base.sh: $*" >&2; exit 1; }

# Modules the node loads (tests/node/guest/init): NIC, the node's disk, container filesystem, pod network,
# kube-proxy's nftables.
MODULES="virtio_net virtio_pci virtio_blk overlay bridge veth br_netfilter nf_tables nf_conntrack nf_nat nft_ct nft_nat
 nft_masq nft_chain_nat nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_reject_inet nft_reject_ipv4 nft_numgen nft_limit
 nft_compat nf_conntrack_netlink nft_reject_ipv6"

root=$(mktemp -d "${TMPDIR:-/tmp}/aapl-node-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/lib/cni,dev,proc,sys,tmp,run,root,etc/apparmor,etc/apparmor.d,var/lib,var/log}
chmod 1777 "$root/tmp"

cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done

copy_with_parents() { mkdir -p "$root$(dirname "$2")" && cp -L "$1" "$root$2"; }
# with_libs SRC DEST: a dynamic executable and the libraries ldd names (host paths)
with_libs() {
	copy_with_parents "$1" "$2"
	local lib
	for lib in $(ldd "$1" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
		[ -e "$root$lib" ] || copy_with_parents "$lib" "$lib"
	done
}
for b in kubelet kube-proxy; do cp "$K8S_BIN/$b" "$root/usr/local/bin/$b"; done
for b in containerd containerd-shim-runc-v2 ctr; do
	[ -x "$EXTRACTED/usr/bin/$b" ] || die "containerd package has no /usr/bin/$b"
	with_libs "$EXTRACTED/usr/bin/$b" "/usr/bin/$b"
done
for b in /usr/sbin/runc /usr/sbin/nft /usr/sbin/apparmor_parser; do
	[ -x "$b" ] || die "missing $b (.ci/install-deps installs runc, nftables, apparmor)"
	with_libs "$b" "$b"
done
ldd "$root/usr/sbin/runc" >/dev/null 2>&1 || true
for p in bridge host-local loopback; do
	[ -x "$EXTRACTED/usr/lib/cni/$p" ] || die "containernetworking-plugins has no /usr/lib/cni/$p"
	cp "$EXTRACTED/usr/lib/cni/$p" "$root/usr/lib/cni/$p"
done
cp -a /etc/apparmor.d/abi /etc/apparmor.d/abstractions /etc/apparmor.d/tunables "$root/etc/apparmor.d/"
cp /etc/apparmor/parser.conf "$root/etc/apparmor/parser.conf"
features=$(sed -n 's/^[[:space:]]*policy-features[[:space:]]*=[[:space:]]*//p' /etc/apparmor/parser.conf | tail -n 1)
[ -z "$features" ] || copy_with_parents "$features" "$features"

# kernel modules: busybox depmod over the package's whole tree, then the closure of $MODULES
kmods=$EXTRACTED/lib/modules/$KVER
[ -d "$kmods/kernel" ] || die "no $kmods/kernel in the kernel package"
/bin/busybox depmod -b "$EXTRACTED" "$KVER" || die "depmod failed"
dep=$kmods/modules.dep
declare -A want=()
resolve() {
	local name=$1 line path d
	line=$(grep -E "(^|/)${name//_/[_-]}\.ko:" "$dep" | head -n 1) || true
	[ -n "$line" ] || die "module $name is not in $KVER"
	path=${line%%:*}
	[ -n "${want[$path]:-}" ] && return 0
	want[$path]=1
	for d in ${line#*:}; do
		d=${d##*/}
		resolve "${d%.ko}"
	done
}
for m in $MODULES; do resolve "$m"; done
mkdir -p "$root/lib/modules/$KVER"
for path in "${!want[@]}"; do
	mkdir -p "$root/lib/modules/$KVER/$(dirname "$path")"
	cp "$kmods/$path" "$root/lib/modules/$KVER/$path"
done
for path in "${!want[@]}"; do grep -E "^${path//./\\.}:" "$dep"; done >"$root/lib/modules/$KVER/modules.dep"
echo "guest-base.sh: ${#want[@]} modules ($(du -sh "$root/lib/modules" | cut -f1))" >&2

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
cp "$PACKAGES" "$root/etc/aapl-node-packages"
echo "guest-base.sh: tree $(du -sh "$root" | cut -f1)" >&2
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
