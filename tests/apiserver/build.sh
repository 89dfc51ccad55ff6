#!/usr/bin/env bash
# Builds the test-only kube-apiserver + etcd harness (tests/apiserver/main.go) once per machine.
#
#   tests/apiserver/build.sh          build if needed, print the binary's path (last line of stdout)
#   tests/apiserver/build.sh --path   only print where the binary lives (or will live); never builds
#
# Cache: ${AAPL_CI_CACHE:-/var/cache/aapl-ci}/apiserver-<k8s version>/<hash>/apiserver-harness,
# <hash> = sha256 of go.mod, go.sum, main.go and this script, so any change rebuilds and an
# unchanged tree reuses the binary. Needs Go (go.mod's version) and the Go module proxy; no Docker.
set -euo pipefail

# The pinned Kubernetes release: newest whose module graph builds from the proxy as of writing.
# To bump: edit go.mod (require k8s.io/kubernetes vX.Y.Z and every replace k8s.io/* => v0.Y.Z),
# KubernetesVersion in main.go and this line, then `go mod tidy`.
K8S_VERSION=v1.37.2

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

grep -qE "^[[:space:]]*(require )?k8s\.io/kubernetes ${K8S_VERSION//./\\.}\$" go.mod ||
	{ echo "build.sh: go.mod does not require k8s.io/kubernetes ${K8S_VERSION}" >&2; exit 1; }
grep -q "const KubernetesVersion = \"${K8S_VERSION}\"" main.go ||
	{ echo "build.sh: main.go KubernetesVersion is not ${K8S_VERSION}" >&2; exit 1; }

hash="$(cat go.mod go.sum main.go build.sh | sha256sum | cut -c1-16)"
cache_root="${AAPL_CI_CACHE:-/var/cache/aapl-ci}"
dir="${cache_root}/apiserver-${K8S_VERSION}/${hash}"
bin="${dir}/apiserver-harness"

if [[ "${1:-}" == "--path" ]]; then
	echo "$bin"
	exit 0
fi
if [[ $# -gt 0 ]]; then
	echo "usage: $0 [--path]" >&2
	exit 2
fi

if [[ -x "$bin" ]]; then
	echo "build.sh: cached ${bin}" >&2
	echo "$bin"
	exit 0
fi

mkdir -p "$dir"
# One build at a time per machine; a waiting run reuses the result.
exec 9>"${cache_root}/apiserver-${K8S_VERSION}.lock"
flock 9
if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

echo "build.sh: building kube-apiserver ${K8S_VERSION} harness into ${dir} (first build takes minutes)" >&2
start=$(date +%s)
tmp="${bin}.tmp.$$"
# -mod=readonly: go.sum is committed, the build must not change it. GOTOOLCHAIN=local: never
# download another Go. CGO off: static, faster, no C toolchain needed.
GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false" \
	nice -n 10 go build -ldflags="-s -w" -o "$tmp" .
"$tmp" version >/dev/null
mv -f "$tmp" "$bin"
echo "build.sh: built in $(($(date +%s) - start)) s" >&2
# Other builds of the harness (older trees, older pins) are ~125 MB each: keep only this one.
# A test still running an old binary is unaffected (its inode stays until it exits).
for old in "${cache_root}"/apiserver-*/*/; do
	old="${old%/}"
	[[ "$old" == "$dir" ]] && continue
	echo "build.sh: removing stale ${old}" >&2
	rm -rf "$old"
	rmdir "$(dirname "$old")" 2>/dev/null || true
done
echo "$bin"
