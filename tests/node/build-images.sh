#!/usr/bin/env bash
# build-images.sh OUTDIR LOADER: the container images the node guest imports (`ctr -n k8s.io images
# import`), saved as docker archives (they carry the full image name, so the import names them):
#   OUTDIR/loader.tar   ghcr.io/example/apparmor-profile-loader:0.1.0 (the name manifests/daemonset.yaml
#                       uses): the product image, built from the Containerfile with ROOTFS_FROM=prebuilt
#                       exactly as .ci/check-deploy does (build/parser-rootfs.sh + LOADER + links)
#   OUTDIR/sandbox.tar  localhost/aapl-sandbox:ci: the pod sandbox ("pause") image containerd is told to
#                       use: our own executable's `pause` step, FROM scratch, uid 65535
#   OUTDIR/busybox.tar  localhost/aapl-busybox:ci: busybox-static, the workload
# No registry: FROM scratch only; buildah (vfs) with its own storage under the cache.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 OUTDIR LOADER" >&2; exit 2; }
out=$1 loader=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${AAPL_CI_CACHE:-/var/cache/aapl-ci}"
LOADER_IMAGE=ghcr.io/example/apparmor-profile-loader:0.1.0
SANDBOX_IMAGE=localhost/aapl-sandbox:ci
BUSYBOX_IMAGE=localhost/aapl-busybox:ci

work=$(mktemp -d "${TMPDIR:-/tmp}/aapl-node-images.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache_root/node-images/storage" "$out"
B=(buildah --storage-driver vfs --root "$cache_root/node-images/storage" --runroot "$work/run")
exec 9>"$cache_root/node-images.lock"
flock 9

# the product image, as .ci/check-deploy builds it
ctx=$work/context
sh "$repo/build/parser-rootfs.sh" "$ctx/rootfs"
install -D -m 0755 "$loader" "$ctx/rootfs/usr/local/bin/apparmor-loader"
objcopy --strip-debug "$ctx/rootfs/usr/local/bin/apparmor-loader" 2>/dev/null || true
for cmd in copy load untaint pause validate; do ln -s apparmor-loader "$ctx/rootfs/usr/local/bin/$cmd"; done
"${B[@]}" rmi -f "$LOADER_IMAGE" "$SANDBOX_IMAGE" "$BUSYBOX_IMAGE" >/dev/null 2>&1 || true
nice -n 10 "${B[@]}" bud --quiet --build-arg ROOTFS_FROM=prebuilt -f "$repo/Containerfile" -t "$LOADER_IMAGE" "$ctx" >/dev/null

# scratch_image NAME USER ENTRYPOINT_JSON SRC...: FROM scratch with the SRC trees copied to /
scratch_image() {
	local name=$1 user=$2 entrypoint=$3 c
	shift 3
	c=$("${B[@]}" from scratch)
	for src in "$@"; do "${B[@]}" copy "$c" "$src" / >/dev/null; done
	"${B[@]}" config --user "$user" --entrypoint "$entrypoint" --cmd '' "$c"
	"${B[@]}" commit --quiet "$c" "$name" >/dev/null
	"${B[@]}" rm "$c" >/dev/null
}
mkdir -p "$work/sandbox/usr/local/bin" "$work/busybox/bin" "$work/busybox/tmp" "$work/busybox/data"
cp "$ctx/rootfs/usr/local/bin/apparmor-loader" "$work/sandbox/usr/local/bin/apparmor-loader"
scratch_image "$SANDBOX_IMAGE" 65535:65535 '["/usr/local/bin/apparmor-loader","pause"]' "$work/sandbox"
cp /bin/busybox "$work/busybox/bin/busybox"
for applet in sh sleep touch cat id ls echo; do ln -s busybox "$work/busybox/bin/$applet"; done
chmod 1777 "$work/busybox/tmp"
scratch_image "$BUSYBOX_IMAGE" 10001:10001 '["/bin/sleep"]' "$work/busybox"

for pair in "loader:$LOADER_IMAGE" "sandbox:$SANDBOX_IMAGE" "busybox:$BUSYBOX_IMAGE"; do
	rm -f "$out/${pair%%:*}.tar"
	"${B[@]}" push --quiet "${pair#*:}" "docker-archive:$out/${pair%%:*}.tar:${pair#*:}" >/dev/null
done
ls -la "$out" >&2
