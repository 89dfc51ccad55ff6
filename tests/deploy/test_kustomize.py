"""Assertions on `kustomize build manifests/` (the real kustomize) and on the plain files.

Run by .ci/check-deploy with the venv's pytest; KUSTOMIZE names the kustomize binary
(default: `kustomize` from PATH), KUBECTL the kubectl (default: `kubectl`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "build"))  # gen_profiles_yaml, sbom: release inputs
import gen_profiles_yaml  # noqa: E402

IMAGE = "ghcr.io/example/apparmor-profile-loader:0.1.0"
GATE_KEYS = {
    "WaitingForAppArmorProfiles",
    "startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles",
}
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
HOST_VOLUMES = {
    "host-apparmor-d",
    "host-cache",
    "securityfs",
    "host-apparmor-conf",
    "host-apparmor-features",
    "host-os-release",
}
NODE_CONFIG = {"host-apparmor-conf": True, "host-apparmor-features": True}
# Per container: (user, capabilities added, volumes mounted -> read-only?)
EXPECTED = {
    # copy reads the kernel's profile list and features (read-only) and fills the compile
    # cache load reads; both read the node's own parser configuration.
    "copy": (
        0,
        [],
        {
            "profiles": True,
            "host-apparmor-d": False,
            "host-cache": False,
            "securityfs": True,
            "tmp": False,
            "host-os-release": True,
            **NODE_CONFIG,
        },
    ),
    "load": (
        0,
        ["MAC_ADMIN"],
        {
            "host-apparmor-d": True,
            "host-cache": False,
            "securityfs": False,
            "tmp": False,
            "report": False,
            **NODE_CONFIG,
        },
    ),
    # untaint reads load's report (pod-local emptyDir) to label the node.
    "untaint": (65532, [], {"token": True, "report": True}),
    "pause": (65532, [], {}),
}


def tool(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found (set {env} or put it on PATH)")
    return path


def kustomize_build(directory: str) -> list[dict]:
    out = subprocess.run(
        [tool("KUSTOMIZE", "kustomize"), "build", str(REPO / directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize_build("manifests")


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def pod(rendered) -> dict:
    return one(rendered, "DaemonSet")["spec"]["template"]["spec"]


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}


def seconds(duration: str) -> int:
    """A `--timeout` value as the loader reads it: a number with an optional s, m or h."""
    unit = {"s": 1, "m": 60, "h": 3600}.get(duration[-1:], None)
    return int(duration[:-1]) * unit if unit else int(duration)


def profiles_configmap_name(rendered) -> str:
    names = [d["metadata"]["name"] for d in rendered
             if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("apparmor-profiles-")]
    assert len(names) == 1, names
    return names[0]


def test_rendered_kinds_and_namespaces(rendered):
    hashed = profiles_configmap_name(rendered)
    kinds = sorted(
        (d["kind"], "apparmor-profiles-<hash>" if d["metadata"]["name"] == hashed else d["metadata"]["name"])
        for d in rendered
    )
    assert kinds == sorted(
        [
            ("ServiceAccount", "apparmor-profile-loader"),
            ("ClusterRole", "apparmor-profile-loader"),
            ("ClusterRoleBinding", "apparmor-profile-loader"),
            ("ConfigMap", "apparmor-profiles-<hash>"),
            ("ConfigMap", "apparmor-profile-loader-config"),
            ("DaemonSet", "apparmor-profile-loader"),
            ("ValidatingAdmissionPolicy", "apparmor-profile-loader-untaint"),
            ("ValidatingAdmissionPolicyBinding", "apparmor-profile-loader-untaint"),
        ]
    )
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding"}
    for d in rendered:
        ns = d["metadata"].get("namespace")
        assert ns == (None if d["kind"] in cluster_scoped else "kube-system"), d["kind"]


def test_init_order_and_one_image(pod):
    assert [c["name"] for c in pod["initContainers"]] == ["copy", "load", "untaint"]
    assert [c["name"] for c in pod["containers"]] == ["pause"]
    for name, c in containers(pod).items():
        assert c["image"] == IMAGE, name
        assert c["args"] == [name], name
        assert "command" not in c, name


def test_token_only_in_untaint(pod):
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "apparmor-profile-loader"
    token_volumes = {
        v["name"]
        for v in pod["volumes"]
        if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))
    }
    assert token_volumes == {"token"}
    token = next(v for v in pod["volumes"] if v["name"] == "token")["projected"]["sources"]
    sat = next(s["serviceAccountToken"] for s in token if "serviceAccountToken" in s)
    # Short-lived on purpose (see the comment in daemonset.yaml): the API's minimum, 600 s, never
    # the kubelet's 3607 (extended to a year), and longer than untaint's whole --timeout.
    assert sat["expirationSeconds"] == 600, sat
    untaint_env = {e["name"]: e.get("value") for e in containers(pod)["untaint"].get("env", [])}
    assert seconds(untaint_env.get("APPARMOR_LOADER_TIMEOUT", "5m")) < sat["expirationSeconds"]
    assert "audience" not in sat  # the API server's own audience
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in token)
    assert any("downwardAPI" in s for s in token)
    for name, c in containers(pod).items():
        mounts = c.get("volumeMounts", [])
        has_token = [m for m in mounts if m["name"] == "token"]
        if name == "untaint":
            assert has_token == [
                {"name": "token", "mountPath": TOKEN_PATH, "readOnly": True}
            ]
        else:
            assert not has_token, name
            assert all(m["mountPath"] != TOKEN_PATH for m in mounts), name


def test_mounts_per_container(rendered, pod):
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {n for n, v in volumes.items() if "hostPath" in v} == HOST_VOLUMES
    assert volumes["host-apparmor-d"]["hostPath"]["path"] == "/etc/apparmor.d"
    assert volumes["host-cache"]["hostPath"] == {
        "path": "/var/cache/apparmor-profile-loader",
        "type": "DirectoryOrCreate",
    }
    assert volumes["securityfs"]["hostPath"]["path"] == "/sys/kernel/security"
    assert volumes["host-apparmor-conf"]["hostPath"]["path"] == "/etc/apparmor"
    assert volumes["host-apparmor-features"]["hostPath"]["path"] == "/usr/share/apparmor-features"
    # copy's reboot-parity check reads the node's release; it fails closed without it.
    assert volumes["host-os-release"]["hostPath"] == {"path": "/etc/os-release", "type": "File"}
    copy_mounts = {m["name"]: m for m in containers(pod)["copy"]["volumeMounts"]}
    assert copy_mounts["host-os-release"]["mountPath"] == "/host/etc/os-release"
    copy_env = {e["name"]: e.get("value") for e in containers(pod)["copy"]["env"]}
    assert copy_env["APPARMOR_LOADER_NODE_ROOT"] == "/host"
    assert "APPARMOR_LOADER_NODE_APPARMOR" not in copy_env, "auto: read from the node"
    # The generated (hashed) ConfigMap: a profile change is a new DaemonSet revision.
    assert volumes["profiles"]["configMap"]["name"] == profiles_configmap_name(rendered)
    for name, c in containers(pod).items():
        mounts = {m["name"]: bool(m.get("readOnly", False)) for m in c.get("volumeMounts", [])}
        assert mounts == EXPECTED[name][2], name
    for name in ("untaint", "pause"):
        assert not HOST_VOLUMES & {m["name"] for m in containers(pod)[name].get("volumeMounts", [])}


def test_security_contexts(pod):
    assert pod.get("hostNetwork", False) is False
    assert pod.get("hostPID", False) is False
    assert pod.get("hostIPC", False) is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for name, c in containers(pod).items():
        user, added, _ = EXPECTED[name]
        sc = c["securityContext"]
        assert sc.get("privileged", False) is False, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert sc["capabilities"].get("add", []) == added, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert sc["runAsUser"] == user, name
        assert sc["runAsNonRoot"] is (user != 0), name
        if name == "load":
            assert sc["appArmorProfile"] == {"type": "Unconfined"}
        else:
            assert "appArmorProfile" not in sc, name


def test_resources_and_node_name(pod):
    for name, c in containers(pod).items():
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, (name, kind)
        node_name = [e for e in c["env"] if e["name"] == "NODE_NAME"]
        assert node_name == [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        ], name
        for e in c["env"]:
            assert e["name"] == "NODE_NAME" or e["name"].startswith("APPARMOR_LOADER_"), e


def test_runs_on_exactly_the_image_architectures(pod):
    # The image is a manifest list of linux/amd64 and linux/arm64 (.ci/check-deploy checks both platforms):
    # the DaemonSet must reach both and nothing else (an s390x node would fail with exec format error).
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}
    ]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["nodeAffinity"]


def test_scheduling(rendered, pod):
    ds = one(rendered, "DaemonSet")
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    tolerations = pod["tolerations"]
    assert sorted(tolerations, key=lambda t: t["key"]) == sorted(
        # Every effect of a gate key: untaint removes a near miss such as
        # WaitingForAppArmorProfiles:NoExecute, so the pod must be able to run there.
        ({"key": k, "operator": "Exists"} for k in GATE_KEYS),
        key=lambda t: t["key"],
    )
    assert all(t.get("key") for t in tolerations), "no blanket toleration"


def test_rbac_exactly_get_patch_nodes(rendered):
    role = one(rendered, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    binding = one(rendered, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "apparmor-profile-loader"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "apparmor-profile-loader", "namespace": "kube-system"}
    ]
    sa = one(rendered, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_admission_policy(rendered):
    policy = one(rendered, "ValidatingAdmissionPolicy")
    binding = one(rendered, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    rules = spec["matchConstraints"]["resourceRules"]
    assert [r["resources"] for r in rules] == [["nodes", "nodes/status"]], \
        "nodes and nodes/status (the condition), nothing else"
    assert "UPDATE" in rules[0]["operations"]
    # Any namespace's account whose name holds the loader's (as an overlay's namePrefix and
    # nameSuffix leave it); no namespace written in the policy.
    assert [m["expression"].split() for m in spec["matchConditions"]] == [
        ["request.userInfo.username.startsWith('system:serviceaccount:')", "&&",
         "request.userInfo.username.split(':').size()", "==", "4", "&&",
         "request.userInfo.username.split(':')[3].contains('apparmor-profile-loader')"]
    ]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    # The first validation refuses every such account but the one the param names.
    assert variables["loaderUser"].split() == [
        "'system:serviceaccount:'", "+", "params.metadata.namespace", "+", "':'", "+",
        "params.data.?serviceAccountName.orValue('apparmor-profile-loader')"]
    assert spec["validations"][0]["expression"] == "request.userInfo.username == variables.loaderUser"
    assert "kube-system" not in yaml.safe_dump(policy)
    assert "authentication.kubernetes.io/node-name" in variables["tokenNodeName"]
    assert all(k in variables["gateKeys"] for k in GATE_KEYS)
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
        # the label prefix; a missing ConfigMap denies every node write (the loader's too)
        "paramRef": {
            "name": "apparmor-profile-loader-config",
            "namespace": "kube-system",
            "parameterNotFoundAction": "Deny",
        },
    }


def kustomize_overlay(tmp_path: Path, namespace: str, components: tuple[str, ...] = (),
                      extra: str = "") -> list[dict]:
    """What an operator's overlay renders that moves the installation: `namespace:` and the
    repository's manifests/ as its only resource, the given components of manifests/ and
    `extra` lines (e.g. `namePrefix: prod-`)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir(parents=True)
    base = os.path.relpath(REPO / "manifests", overlay)
    text = f"namespace: {namespace}\nresources:\n  - {base}\n{extra}"
    if components:
        text += "components:\n" + "".join(f"  - {base}/{c}\n" for c in components)
    (overlay / "kustomization.yaml").write_text(text)
    out = subprocess.run(
        [tool("KUSTOMIZE", "kustomize"), "build", str(overlay)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_an_overlay_namespace_reaches_the_policy_binding_and_rbac(tmp_path):
    """With `namespace: <other>` in an overlay, everything that names the loader's namespace
    follows it: the ServiceAccount, both ConfigMaps, the DaemonSet, the RBAC subject and the
    binding's paramRef (kustomizeconfig.yaml), which is where the policy learns the loader's
    namespace. No `kube-system` is left anywhere."""
    docs = kustomize_overlay(tmp_path, "aapl-elsewhere")
    assert "kube-system" not in yaml.safe_dump_all(docs)
    namespaced = {d["kind"] for d in docs if "namespace" in d["metadata"]}
    assert namespaced == {"ServiceAccount", "ConfigMap", "DaemonSet"}
    assert {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]} == {"aapl-elsewhere"}
    assert one(docs, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "apparmor-profile-loader", "namespace": "aapl-elsewhere"}
    ]
    param = one(docs, "ValidatingAdmissionPolicyBinding")["spec"]["paramRef"]
    assert param == {"name": "apparmor-profile-loader-config", "namespace": "aapl-elsewhere",
                     "parameterNotFoundAction": "Deny"}
    config = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == param["name"]]
    assert len(config) == 1 and config[0]["metadata"]["namespace"] == "aapl-elsewhere"


@pytest.mark.parametrize("components", [(), ("node-condition",)])
def test_an_overlay_that_renames_the_installation_keeps_every_reference(tmp_path, components):
    """With `namePrefix:`/`nameSuffix:` in an overlay, every name the installation refers to
    follows the rename: the binding's paramRef (else the API server refuses every node write in
    the cluster: no params found), the ServiceAccount's name in that param (by which the policy
    knows the loader), the policy's name in the binding, the RBAC subjects and roles, and the
    DaemonSet's account and ConfigMaps. The renamed account still holds the name the policy's
    matchConditions look for. `tests/apiserver_e2e.rs` applies such an overlay to the real API
    server."""
    docs = kustomize_overlay(tmp_path, "aapl-elsewhere", components,
                             "namePrefix: prod-\nnameSuffix: -blue\n")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert sa == "prod-apparmor-profile-loader-blue"
    binding = one(docs, "ValidatingAdmissionPolicyBinding")["spec"]
    assert ("ValidatingAdmissionPolicy", binding["policyName"]) in names
    param = binding["paramRef"]
    assert param["name"] == "prod-apparmor-profile-loader-config-blue"
    assert param["namespace"] == "aapl-elsewhere"
    config = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == param["name"]]
    assert len(config) == 1, "the binding's param is the installation's ConfigMap"
    assert config[0]["data"]["serviceAccountName"] == sa
    assert "apparmor-profile-loader" in sa, "what the policy's matchConditions look for"
    for b in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "aapl-elsewhere"}]
        assert (b["roleRef"]["kind"], b["roleRef"]["name"]) in names
    ds = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert ds["serviceAccountName"] == sa
    refs = [e["valueFrom"]["configMapKeyRef"]["name"]
            for c in ds["initContainers"] for e in c.get("env", [])
            if "configMapKeyRef" in e.get("valueFrom", {})]
    assert refs and all(("ConfigMap", r) in names for r in refs)
    volumes = [v["configMap"]["name"] for v in ds["volumes"] if "configMap" in v]
    assert volumes and all(("ConfigMap", v) in names for v in volumes)


def test_the_param_names_the_installations_service_account(rendered):
    """The policy knows the loader by the param's `serviceAccountName`: it must be the
    ServiceAccount the DaemonSet runs as."""
    sa = one(rendered, "ServiceAccount")["metadata"]["name"]
    config = [d for d in rendered if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == "apparmor-profile-loader-config"]
    assert config[0]["data"]["serviceAccountName"] == sa
    assert one(rendered, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == sa


def test_untaint_proves_the_policy_it_is_deployed_with(rendered, pod):
    """The default build has the policy, so untaint requires it (`--require-admission-policy`:
    a dry run the policy must refuse before any write); `apiserver_e2e` proves what it does."""
    assert any(d["kind"] == "ValidatingAdmissionPolicy" for d in rendered)
    env = {e["name"]: e.get("value") for e in containers(pod)["untaint"].get("env", [])}
    assert env["APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY"] == "true"
    for name in ("copy", "load", "pause"):
        names = {e["name"] for e in containers(pod)[name].get("env", [])}
        assert "APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY" not in names


def test_component_can_be_left_out(tmp_path):
    """An older cluster drops the `components:` entry: the base must still build."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    kust = tmp_path / "manifests" / "kustomization.yaml"
    doc = yaml.safe_load(kust.read_text())
    assert doc.pop("components") == ["admission-policy"]
    kust.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [tool("KUSTOMIZE", "kustomize"), "build", str(tmp_path / "manifests")],
        check=True, capture_output=True, text=True,
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert "ValidatingAdmissionPolicy" not in kinds and "DaemonSet" in kinds


def test_plain_files_match_rendered(rendered):
    """Each file applies alone (kubectl apply -f): same objects, namespace set in the file."""
    files = ["serviceaccount.yaml", "rbac.yaml", "config.yaml", "daemonset.yaml",
             "admission-policy/validating-admission-policy.yaml"]
    plain = [d for f in files for d in yaml.safe_load_all((REPO / "manifests" / f).read_text()) if d]
    plain += [yaml.safe_load((REPO / "profiles" / "profiles.yaml").read_text())]
    # The only difference: kustomize names the profiles ConfigMap after its content and points
    # the DaemonSet at that name; the plain files use the plain name.
    hashed = profiles_configmap_name(rendered)
    unhashed = yaml.safe_load(yaml.safe_dump(rendered).replace(hashed, "apparmor-profiles"))
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(plain, key=key) == sorted(unhashed, key=key)


def test_profiles_configmap_in_sync():
    """profiles/profiles.yaml and the generator's kustomization match the profile files."""
    diffs = gen_profiles_yaml.stale()
    assert not diffs, "".join(diffs.values()) + "\nrun build/gen_profiles_yaml.py"
    generated = one(kustomize_build("profiles"), "ConfigMap")
    plain = yaml.safe_load((REPO / "profiles" / "profiles.yaml").read_text())
    assert generated["metadata"].pop("name").startswith("apparmor-profiles-")
    plain["metadata"].pop("name")
    assert generated == plain
    files = gen_profiles_yaml.profile_files()
    assert set(plain["data"]) == {f.name for f in files}
    for f in files:
        assert plain["data"][f.name] == f.read_text(encoding="utf-8"), f.name


def test_drift_is_detected(tmp_path, monkeypatch):
    """The drift check fails when a profile changes without regenerating profiles.yaml."""
    copy = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles", copy)
    monkeypatch.setattr(gen_profiles_yaml, "PROFILES", copy)
    monkeypatch.setattr(gen_profiles_yaml, "REPO", tmp_path)
    assert gen_profiles_yaml.stale() == {}
    victim = gen_profiles_yaml.profile_files(copy)[0]
    victim.write_text(victim.read_text() + "# changed\n")
    assert set(gen_profiles_yaml.stale()) == {copy / "profiles.yaml"}
    (copy / "k8s-new-profile").write_text("profile k8s-new-profile {}\n")
    assert set(gen_profiles_yaml.stale()) == {copy / "profiles.yaml", copy / "kustomization.yaml"}


def test_kubectl_create_configmap_from_dir(tmp_path):
    """The README command: --from-file=<dir>/ gives one key per file (the seed's
    --from-file=*.profile only works if the shell expands the glob, and not at all here:
    the profiles have no .profile suffix)."""
    kubectl = tool("KUBECTL", "kubectl")
    src = tmp_path / "my-profiles"
    src.mkdir()
    for f in gen_profiles_yaml.profile_files():
        shutil.copy(f, src / f.name)
    out = subprocess.run(
        [kubectl, "-n", "kube-system", "create", "configmap", "apparmor-profiles",
         f"--from-file={src}/", "--dry-run=client", "-o", "yaml"],
        check=True, capture_output=True, text=True,
    ).stdout
    cm = yaml.safe_load(out)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "apparmor-profiles"
    assert cm["metadata"]["namespace"] == "kube-system"
    plain = yaml.safe_load((REPO / "profiles" / "profiles.yaml").read_text())
    assert cm["data"] == plain["data"]
    assert sorted(cm["data"]) == sorted(f.name for f in gen_profiles_yaml.profile_files())



def test_the_policy_and_untaint_take_the_label_prefix_from_one_configmap(rendered, pod):
    untaint = containers(pod)["untaint"]
    env = {e["name"]: e for e in untaint["env"]}
    ref = env["APPARMOR_LOADER_LABEL_PREFIX"]["valueFrom"]["configMapKeyRef"]
    config = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref["name"]]
    assert len(config) == 1 and config[0]["data"][ref["key"]] == "apparmor-profile-loader"
    policy = one(rendered, "ValidatingAdmissionPolicy")
    assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["labelPrefix"] == f"params.data.{ref['key']} + '/'"
    binding = one(rendered, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["paramRef"] == {
        "name": ref["name"],
        "namespace": "kube-system",
        "parameterNotFoundAction": "Deny",
    }
    report = {v["name"]: v for v in pod["volumes"]}["report"]
    assert report["emptyDir"]["medium"] == "Memory"
    load_env = {e["name"]: e.get("value") for e in containers(pod)["load"]["env"]}
    assert load_env["APPARMOR_LOADER_NODE_REPORT"] == env["APPARMOR_LOADER_NODE_REPORT"]["value"]


def test_a_changed_profile_is_a_new_daemonset_revision(tmp_path):
    """kustomize names the profiles ConfigMap after its content, and the DaemonSet's pod
    template refers to that name: changing a profile changes the template, so the DaemonSet's
    rolling update carries it to every node without a `kubectl rollout restart`."""
    import shutil as sh
    for d in ("manifests", "profiles"):
        sh.copytree(REPO / d, tmp_path / d)

    def template_and_name():
        out = subprocess.run(
            [tool("KUSTOMIZE", "kustomize"), "build", str(tmp_path / "manifests")],
            check=True, capture_output=True, text=True,
        ).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        ds = one(docs, "DaemonSet")
        return ds["spec"]["template"], profiles_configmap_name(docs)

    before, name_before = template_and_name()
    again, _ = template_and_name()
    assert again == before, "the same profiles render the same template"
    profile = tmp_path / "profiles" / "k8s-deny-write"
    profile.write_text(profile.read_text() + "# changed\n")
    after, name_after = template_and_name()
    assert name_after != name_before
    assert after != before
    volumes = {v["name"]: v for v in after["spec"]["volumes"]}
    assert volumes["profiles"]["configMap"]["name"] == name_after


def test_the_node_condition_component_adds_its_rbac_env_and_toleration_and_nothing_else(tmp_path):
    """manifests/node-condition (untaint --node-condition): patch on nodes/status for the
    loader's account in the overlay's namespace, the env var on untaint, the toleration of the
    example NodeReadinessRule's taint; every other object as without it. The default build has
    none of the three."""
    plain = kustomize_overlay(tmp_path / "plain", "aapl-nrc")
    docs = kustomize_overlay(tmp_path / "nrc", "aapl-nrc", ("node-condition",))
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    before = {(d["kind"], d["metadata"]["name"]): d for d in plain}
    added = sorted(set(by) - set(before))
    assert added == [("ClusterRole", "apparmor-profile-loader-node-condition"),
                     ("ClusterRoleBinding", "apparmor-profile-loader-node-condition")]
    assert by[added[0]]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]
    assert by[added[1]]["subjects"] == [
        {"kind": "ServiceAccount", "name": "apparmor-profile-loader", "namespace": "aapl-nrc"}]
    assert by[added[1]]["roleRef"]["name"] == "apparmor-profile-loader-node-condition"
    ds, ds_before = (d[("DaemonSet", "apparmor-profile-loader")] for d in (by, before))
    spec, spec_before = ds["spec"]["template"]["spec"], ds_before["spec"]["template"]["spec"]
    assert spec["tolerations"] == spec_before["tolerations"] + [
        {"key": "readiness.k8s.io/WaitingForAppArmorProfiles", "operator": "Exists"}]
    untaint = {c["name"]: c for c in spec["initContainers"]}["untaint"]
    untaint_before = {c["name"]: c for c in spec_before["initContainers"]}["untaint"]
    assert untaint["env"] == untaint_before["env"] + [
        {"name": "APPARMOR_LOADER_NODE_CONDITION", "value": "true"}]
    assert not any(e["name"] == "APPARMOR_LOADER_NODE_CONDITION" for e in untaint_before["env"])
    for key, doc in before.items():
        if key != ("DaemonSet", "apparmor-profile-loader"):
            assert by[key] == doc, key
    rules = [r for d in plain if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert all("nodes/status" not in r["resources"] for r in rules), rules
