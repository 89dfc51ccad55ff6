"""The Helm chart (charts/apparmor-profile-loader), rendered by the real helm.

Run by .ci/check-deploy with the venv's pytest; HELM names the helm binary (built there from
its Go module), KUSTOMIZE the kustomize binary.

The chart and the kustomize base must render the same objects: every field of every object
is compared (so every security-relevant one: securityContext, mounts, volumes, RBAC, the
admission policy, tolerations), except what differs by design: Helm's own labels, the
DaemonSet's checkov annotations, the profiles ConfigMap's name (kustomize hashes it, the
chart puts a checksum on the pod template instead) and that checksum.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_profiles_yaml  # noqa: E402
from test_kustomize import (  # noqa: E402
    REPO, containers, kustomize_build, kustomize_overlay, one, profiles_configmap_name, tool,
)

CHART = REPO / "charts" / "apparmor-profile-loader"
KUBE_VERSION = "1.37.0"
# Labels Helm's chart adds on top of the kustomize base's two.
HELM_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
}


def profile_args() -> list[str]:
    return [a for f in gen_profiles_yaml.profile_files()
            for a in ("--set-file", f"profiles.files.{f.name}={f}")]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([tool("HELM", "helm"), *args], check=check, capture_output=True, text=True)


def template(*args: str, namespace: str = "kube-system") -> list[dict]:
    out = helm("template", "aapl", str(CHART), "--namespace", namespace,
               "--kube-version", KUBE_VERSION, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def template_fails(*args: str) -> str:
    done = helm("template", "aapl", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert done.returncode != 0, f"helm template accepted {args}"
    return done.stderr


@pytest.fixture(scope="module")
def chart() -> list[dict]:
    return template(*profile_args())


def keyed(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def normalised(doc: dict, profiles_name: str) -> dict:
    """doc without what differs by design (see the module's docstring)."""
    doc = copy.deepcopy(doc)
    meta = doc["metadata"]
    labels = {k: v for k, v in meta.get("labels", {}).items() if k not in HELM_LABELS}
    meta["labels"] = labels
    if doc["kind"] == "DaemonSet":
        meta.pop("annotations", None)
        doc["spec"]["template"]["metadata"].pop("annotations", None)
        for volume in doc["spec"]["template"]["spec"]["volumes"]:
            if volume["name"] == "profiles":
                assert volume["configMap"]["name"] == profiles_name
                volume["configMap"]["name"] = "<profiles>"
    if doc["kind"] == "ConfigMap" and meta["name"] == profiles_name:
        meta["name"] = "<profiles>"
    return doc


def test_chart_renders_what_kustomize_renders(chart):
    base = kustomize_build("manifests")
    ours = keyed([normalised(d, "apparmor-profiles") for d in chart])
    theirs = keyed([normalised(d, profiles_configmap_name(base)) for d in base])
    assert sorted(ours) == sorted(theirs)
    for key, doc in theirs.items():
        assert ours[key] == doc, f"{key}: the chart and manifests/ disagree"
    for doc in chart:
        assert HELM_LABELS <= set(doc["metadata"]["labels"]), doc["metadata"]["name"]


def test_the_chart_in_a_namespace_renders_what_a_kustomize_overlay_renders_there(tmp_path):
    """`helm -n <ns>` and an overlay with `namespace: <ns>` install the same objects there."""
    base = kustomize_overlay(tmp_path, "aapl-elsewhere")
    chart = template(*profile_args(), namespace="aapl-elsewhere")
    ours = keyed([normalised(d, "apparmor-profiles") for d in chart])
    theirs = keyed([normalised(d, profiles_configmap_name(base)) for d in base])
    assert sorted(ours) == sorted(theirs)
    for key, doc in theirs.items():
        assert ours[key] == doc, f"{key}: the chart and the overlay disagree"


def test_helm_lint_strict():
    done = helm("lint", "--strict", str(CHART), *profile_args(), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_profiles_are_required_and_exclusive():
    assert "no profiles: set profiles.files" in template_fails()
    both = template_fails(*profile_args(), "--set", "profiles.existingConfigMap=mine")
    assert "set either profiles.files or profiles.existingConfigMap, not both" in both


def test_an_existing_configmap_is_used_and_not_rendered():
    docs = template("--set", "profiles.existingConfigMap=my-profiles")
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] != "apparmor-profile-loader-config"]
    volumes = {v["name"]: v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["profiles"]["configMap"]["name"] == "my-profiles"


def checksum(docs: list[dict]) -> str:
    return one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/profiles"]


def test_a_changed_profile_changes_the_pod_template(tmp_path, chart):
    """The checksum of the profiles is on the pod template: a changed profile is a new
    DaemonSet revision, rolled out by the DaemonSet's own update with no manual restart."""
    assert checksum(template(*profile_args())) == checksum(chart), "same profiles, same template"
    changed = tmp_path / "k8s-deny-write"
    changed.write_text((REPO / "profiles" / "k8s-deny-write").read_text() + "# changed\n")
    after = template(*profile_args(), "--set-file", f"profiles.files.k8s-deny-write={changed}")
    assert checksum(after) != checksum(chart)
    cm = keyed(after)[("ConfigMap", "apparmor-profiles")]
    assert cm["data"]["k8s-deny-write"].endswith("# changed\n")
    existing = template("--set", "profiles.existingConfigMap=mine")
    bumped = template("--set", "profiles.existingConfigMap=mine", "--set", "profiles.revision=2")
    assert checksum(existing) != checksum(bumped), "revision rolls out an operator-managed ConfigMap"


def test_taints_prefix_and_rollout_are_values_and_agree_everywhere():
    docs = template(
        *profile_args(),
        "--set", "labelPrefix=profiles.example.com",
        "--set", "maxUnavailable=25%",
        "--set", "gateTaints[0].key=example.com/apparmor-gate",
        "--set", "gateTaints[0].effect=NoExecute",
        "--set", "gateTaints[1].key=example.com/apparmor-gate",
        "--set", "gateTaints[1].value=later",
        "--set", "gateTaints[1].effect=NoSchedule",
        "--set", "image.digest=sha256:" + "a" * 64,
    )
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "25%"
    assert pod["tolerations"] == [{"key": "example.com/apparmor-gate", "operator": "Exists"}]
    env = {e["name"]: e.get("value") for e in containers(pod)["untaint"]["env"]}
    assert env["APPARMOR_LOADER_TAINTS"] == "example.com/apparmor-gate:NoExecute,example.com/apparmor-gate=later:NoSchedule"
    policy = one(docs, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["gateKeys"] == "['example.com/apparmor-gate']"
    config = keyed(docs)[("ConfigMap", "apparmor-profile-loader-config")]
    assert config["data"] == {"labelPrefix": "profiles.example.com"}
    images = {c["image"] for c in containers(pod).values()}
    assert images == {"ghcr.io/example/apparmor-profile-loader@sha256:" + "a" * 64}


def test_the_namespace_follows_the_release_into_the_policy_and_rbac():
    docs = template(*profile_args(), namespace="apparmor")
    # The policy learns the loader's namespace from its param's (test_kustomize.py).
    assert one(docs, "ValidatingAdmissionPolicyBinding")["spec"]["paramRef"]["namespace"] == "apparmor"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["namespace"] == "apparmor"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] not in
            ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
             "ValidatingAdmissionPolicyBinding")} == {"apparmor"}


def test_the_admission_policy_can_be_left_out():
    kinds = {d["kind"] for d in template(*profile_args(), "--set", "admissionPolicy.enabled=false")}
    assert "ValidatingAdmissionPolicy" not in kinds and "ValidatingAdmissionPolicyBinding" not in kinds
    assert "DaemonSet" in kinds


@pytest.mark.parametrize("value, complaint", [
    ("labelPrefix=Not_A_Domain", "/labelPrefix"),
    ("maxUnavailable=0", "/maxUnavailable"),
    ("gateTaints[0].effect=Sometimes", "/gateTaints/0/effect"),
    ("gateTaints[0].key=it's", "/gateTaints/0/key"),
    ("image.digest=latest", "/image/digest"),
    ("untaintTimeout=forever", "/untaintTimeout"),
    ("resources.load.limits.memory=lots", "/resources/load/limits/memory"),
    ("hostNetwork=true", "hostNetwork"),
])
def test_values_outside_the_schema_are_refused(value, complaint):
    assert complaint in template_fails(*profile_args(), "--set", value)


def test_the_schema_is_json_schema_with_every_default_described():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert sorted(values) == sorted(schema["properties"])
