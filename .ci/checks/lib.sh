# shellcheck shell=bash disable=SC2034 # its variables are used by the scripts that source it
# .ci/checks/lib.sh: what every check of .ci/check-deploy shares. Sourced by .ci/check-deploy and by each
# .ci/checks/<check> script, so a check runs the same in the sequence and alone (e.g. `.ci/checks/yamllint`).
#
# $WORK is the scratch directory the checks hand results through (rendered.yaml and chart.yaml for the
# validators, context-ARCH/rootfs for the SBOM). .ci/check-deploy creates it and exports it as
# CHECK_DEPLOY_WORK; a check started alone makes its own, removed when it exits, and sets CHECK_ALONE=1.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${AAPL_CI_CACHE:-/var/cache/aapl-ci}
MIN_K8S_MINOR=30 # securityContext.appArmorProfile, VAP v1 with matchConditions
IMAGE=localhost/apparmor-profile-loader:ci # the manifest list; the per-arch images are $IMAGE-amd64, $IMAGE-arm64
MAX_IMAGE_BYTES=20000000 # issue 11: each architecture's image, two parsers and a libc included, stays <= 20 MB

export PATH="$CACHE/bin:$PATH:/usr/local/go/bin:$HOME/.cargo/bin"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
if [[ -n ${CHECK_DEPLOY_WORK:-} ]]; then
	WORK=$CHECK_DEPLOY_WORK
	CHECK_ALONE=0
else
	WORK=$(mktemp -d /tmp/check-deploy.XXXXXX)
	CHECK_ALONE=1
	trap 'rm -rf "$WORK"' EXIT
fi
BUILDAH=(buildah --storage-driver vfs --root "$CACHE/containers/storage" --runroot "$WORK/run")

T() { "$CACHE/venv/tools/bin/$1" "${@:2}"; }

# The chart with the repo's example profiles, as an operator installs it (tests/deploy/test_helm.py
# lints it and holds it equal to the kustomize output).
helm_template() {
	local args=() f
	for f in "$REPO"/profiles/k8s-*; do
		args+=(--set-file "profiles.files.$(basename "$f")=$f")
	done
	helm template apparmor-profile-loader "$REPO/charts/apparmor-profile-loader" --namespace kube-system \
		--kube-version "1.$MIN_K8S_MINOR.0" "${args[@]}" > "$WORK/chart.yaml" || return 1
	mkdir -p "$WORK/chart-rendered"
	cp "$WORK/chart.yaml" "$WORK/chart-rendered/chart.yaml"
	echo "helm template charts/apparmor-profile-loader: $(grep -c '^kind:' "$WORK/chart.yaml") objects"
}

# triple ARCH: the Rust target of a Debian architecture
triple() {
	case $1 in
	amd64) echo x86_64-unknown-linux-gnu ;;
	arm64) echo aarch64-unknown-linux-gnu ;;
	*) return 1 ;;
	esac
}
