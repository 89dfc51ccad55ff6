#!/usr/bin/env bash
# Builds the node and control-plane binaries the node end-to-end suite (tests/node_e2e.rs) runs:
# kubelet and kube-proxy (inside the QEMU guest), kube-scheduler and kube-controller-manager (on this
# machine, next to the kube-apiserver harness of tests/apiserver). All four are the upstream `cmd/*`
# packages of k8s.io/kubernetes, pinned to the same release as tests/apiserver (go.mod here lists
# them as `tool`s so go.sum covers them), built static (CGO off) and stamped with the version.
#
#   tests/node/build-k8s.sh          build if needed; prints the directory holding the binaries
#   tests/node/build-k8s.sh --path   prints that directory; never builds
#
# Cache: ${AAPL_CI_CACHE:-/var/cache/aapl-ci}/node-k8s-<version>/<hash>/, <hash> over go.mod, go.sum
# and this script: a warm run takes no time, any change rebuilds (older builds are removed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$here/../apiserver/build.sh")
[[ -n $K8S_VERSION ]] || { echo "build-k8s.sh: no K8S_VERSION in tests/apiserver/build.sh" >&2; exit 1; }
cd "$here/k8s"
grep -qE "^[[:space:]]*k8s\.io/kubernetes ${K8S_VERSION//./\\.}( |\$)" go.mod ||
	{ echo "build-k8s.sh: tests/node/k8s/go.mod does not pin k8s.io/kubernetes ${K8S_VERSION} (tests/apiserver does)" >&2; exit 1; }

BINARIES=(kubelet kube-proxy kube-scheduler kube-controller-manager)
hash="$(cat go.mod go.sum "$here/build-k8s.sh" | sha256sum | cut -c1-16)"
cache_root="${AAPL_CI_CACHE:-/var/cache/aapl-ci}"
dir="${cache_root}/node-k8s-${K8S_VERSION}/${hash}"

if [[ "${1:-}" == "--path" ]]; then
	echo "$dir"
	exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--path]" >&2; exit 2; }

complete() {
	local b
	for b in "${BINARIES[@]}"; do [[ -x $dir/$b ]] || return 1; done
}
if complete; then
	echo "build-k8s.sh: cached ${dir}" >&2
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
exec 9>"${cache_root}/node-k8s-${K8S_VERSION}.lock"
flock 9
if complete; then echo "$dir"; exit 0; fi

minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION}"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
for b in "${BINARIES[@]}"; do
	[[ -x $dir/$b ]] && continue
	echo "build-k8s.sh: building ${b} ${K8S_VERSION} (cold: minutes)" >&2
	start=$(date +%s)
	GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false" \
		nice -n 10 go build -ldflags="$ldflags" -o "$dir/$b.tmp" "k8s.io/kubernetes/cmd/$b"
	"$dir/$b.tmp" --version >&2
	mv -f "$dir/$b.tmp" "$dir/$b"
	echo "build-k8s.sh: ${b} built in $(($(date +%s) - start)) s" >&2
done
for old in "${cache_root}"/node-k8s-*/*/; do
	old="${old%/}"
	[[ "$old" == "$dir" ]] && continue
	echo "build-k8s.sh: removing stale ${old}" >&2
	rm -rf "$old"
	rmdir "$(dirname "$old")" 2>/dev/null || true
done
echo "$dir"
