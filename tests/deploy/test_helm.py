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
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "build"))  # gen_profiles_yaml, sbom: release inputs
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


def set_file_key(name: str) -> str:
    """A file name as a `--set-file` path segment: helm splits the path at every unescaped dot."""
    return name.replace(".", "\\.")


def profile_args(files: list[Path] | None = None) -> list[str]:
    files = gen_profiles_yaml.profile_files() if files is None else files
    return [a for f in files for a in ("--set-file", f"profiles.files.{set_file_key(f.name)}={f}")]


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


def test_the_node_condition_value_renders_what_the_node_condition_component_renders(tmp_path):
    """nodeCondition.enabled=true installs what an overlay with manifests/node-condition does."""
    base = kustomize_overlay(tmp_path, "aapl-nrc", ("node-condition",))
    chart = template(*profile_args(), "--set", "nodeCondition.enabled=true", namespace="aapl-nrc")
    ours = keyed([normalised(d, "apparmor-profiles") for d in chart])
    theirs = keyed([normalised(d, profiles_configmap_name(base)) for d in base])
    assert sorted(ours) == sorted(theirs)
    for key, doc in theirs.items():
        assert ours[key] == doc, f"{key}: the chart and the overlay disagree"


def test_the_chart_templates_of_plain_objects_are_generated_from_manifests(tmp_path):
    """One source: the chart's ServiceAccount, config, RBAC and admission policy templates are
    build/gen_chart.py's output from manifests/, and a change there makes them stale."""
    import gen_chart  # build/, on the path above
    assert {t.target for t in gen_chart.GENERATED} == {
        "serviceaccount.yaml", "config.yaml", "rbac.yaml", "admission-policy.yaml"}
    for template in gen_chart.GENERATED:
        assert CHART.joinpath("templates", template.target).read_text() == gen_chart.generate(template), \
            f"{template.target} is stale: run build/gen_chart.py"
    edited = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", edited)
    policy = edited / "admission-policy" / "validating-admission-policy.yaml"
    policy.write_text(policy.read_text().replace("may only update nodes", "may only ever update nodes"))
    (policy_template,) = [t for t in gen_chart.GENERATED if t.target == "admission-policy.yaml"]
    regenerated = gen_chart.generate(policy_template, edited)
    assert "may only ever update nodes" in regenerated
    assert CHART.joinpath("templates", "admission-policy.yaml").read_text() != regenerated


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
    assert config["data"] == {"labelPrefix": "profiles.example.com",
                              "serviceAccountName": "apparmor-profile-loader"}
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
    """Without the policy, untaint must not require it (it would keep every node gated)."""
    docs = template(*profile_args(), "--set", "admissionPolicy.enabled=false")
    kinds = {d["kind"] for d in docs}
    assert "ValidatingAdmissionPolicy" not in kinds and "ValidatingAdmissionPolicyBinding" not in kinds
    env = {e["name"]: e.get("value") for e in containers(one(docs, "DaemonSet")["spec"]["template"]["spec"])["untaint"]["env"]}
    assert env["APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY"] == "false"
    docs = template(*profile_args())
    env = {e["name"]: e.get("value") for e in containers(one(docs, "DaemonSet")["spec"]["template"]["spec"])["untaint"]["env"]}
    assert env["APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY"] == "true"


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


# === Hostile values: refused by the schema, or rendered as exactly the string given ===
#
# Issue 26, class 4. Each value an operator can pass is either refused by values.schema.json (with
# an error naming where, and the value where the rule can quote it) before anything is rendered,
# or reaches its field in the parsed objects as the very same string: never re-typed by YAML
# (`null`, `on`, `1.0`, `010`), never turned into other fields (a newline), and never a value the
# loader itself would refuse on every node (untaint exits 2 on a timeout over 24h).


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "DaemonSet")["spec"]["template"]["spec"]


def untaint_env(name: str) -> Callable[[list[dict]], object]:
    def get(docs: list[dict]) -> object:
        env = {e["name"]: e for e in containers(pod_spec(docs))["untaint"]["env"]}
        return env[name].get("value")
    return get


def tolerations(docs: list[dict]) -> object:
    return pod_spec(docs)["tolerations"]


def profiles_data(docs: list[dict]) -> object:
    return keyed(docs)[("ConfigMap", "apparmor-profiles")]["data"]


def label_prefix(docs: list[dict]) -> object:
    return keyed(docs)[("ConfigMap", "apparmor-profile-loader-config")]["data"]["labelPrefix"]


def priority_class(docs: list[dict]) -> object:
    return pod_spec(docs).get("priorityClassName")


def profiles_volume(docs: list[dict]) -> object:
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    return volumes["profiles"]["configMap"]["name"]


def namespaces(docs: list[dict]) -> object:
    """The namespace of every namespaced object, and the ServiceAccount subject's."""
    ours = {d["metadata"].get("namespace") for d in docs if d["kind"] in
            ("ConfigMap", "DaemonSet", "ServiceAccount")}
    return ours | {one(docs, "ClusterRoleBinding")["subjects"][0]["namespace"]}


def instance_labels(docs: list[dict]) -> object:
    return {d["metadata"]["labels"]["app.kubernetes.io/instance"] for d in docs}


def gate(key: str) -> dict:
    return {"gateTaints": [{"key": key, "value": "true", "effect": "NoSchedule"}]}


@dataclass(frozen=True)
class Hostile:
    """One hostile value. `values` go into a values file (strings stay strings there: this is
    the chart's quoting under test, not the operator's YAML); `args` are helm flags as typed
    (`--set` types its values itself); `profiles` are files passed with `--set-file`, named as
    given (empty: the repository's profiles; None: no files). `refused` is the JSON pointer
    helm's schema error must name (None: accepted) and `says` what else it must say (the value,
    quoted, wherever the rule lets helm quote it); `fields` pairs a reader of the rendered
    objects with what it must return. The readers also hold with the schema skipped, for values
    given as strings (`typed` is False): the templates quote every value on their own."""

    id: str
    values: dict = field(default_factory=dict)
    args: tuple[str, ...] = ()
    profiles: tuple[str, ...] | None = ()
    refused: str | None = None
    says: str | None = None
    fields: tuple[tuple[Callable[[list[dict]], object], object], ...] = ()
    typed: bool = False
    namespace: str = "kube-system"
    release: str = "aapl"


def accepted(id: str, reader, want, **kw) -> Hostile:
    return Hostile(id, fields=((reader, want),), **kw)


def refused(id: str, at: str, quoted: str | None, reader=None, want=None, **kw) -> Hostile:
    """`quoted`: the value as helm's error quotes it (None: the error names only `at`)."""
    says = None if quoted is None else f"'{quoted}'"
    return Hostile(id, refused=at, says=says, fields=((reader, want),) if reader else (), **kw)


def toleration(key: str) -> list[dict]:
    return [{"key": key, "operator": "Exists"}]


LONG_LABEL = "a" * 64


def short(value: str) -> str:
    """A test id for a value: long ones by their length."""
    return value if len(value) <= 32 else f"{value[:8]}...{len(value)}-chars"
HOSTILE = [
    # Taint keys: the toleration must name exactly the key (an empty key with Exists tolerates
    # every taint), and untaint must get it in its --taint.
    Hostile("taint-key-null", values=gate("null"), fields=(
        (tolerations, toleration("null")),
        (untaint_env("APPARMOR_LOADER_TAINTS"), "null=true:NoSchedule"))),
    Hostile("taint-key-true", values=gate("true"), fields=(
        (tolerations, toleration("true")),
        (untaint_env("APPARMOR_LOADER_TAINTS"), "true=true:NoSchedule"))),
    Hostile("taint-key-010", values=gate("010"), fields=((tolerations, toleration("010")),)),
    refused("taint-key-tilde", "/gateTaints/0/key", "~", tolerations, toleration("~"), values=gate("~")),
    refused("taint-key-long-prefix-label", "/gateTaints/0/key", LONG_LABEL + ".example.com/gate",
            tolerations, toleration(LONG_LABEL + ".example.com/gate"), values=gate(LONG_LABEL + ".example.com/gate")),
    refused("taint-key-double-dot", "/gateTaints/0/key", "a..b/gate",
            tolerations, toleration("a..b/gate"), values=gate("a..b/gate")),
    Hostile("taint-key-null-set-string", typed=True, args=(
        "--set-string", "gateTaints[0].key=null", "--set", "gateTaints[0].effect=NoSchedule"),
        fields=((tolerations, toleration("null")),
                (untaint_env("APPARMOR_LOADER_TAINTS"), "null:NoSchedule"))),
    Hostile("taint-key-true-set", refused="/gateTaints/0/key", says="got boolean, want string", typed=True, args=(
        "--set", "gateTaints[0].key=true", "--set", "gateTaints[0].effect=NoSchedule")),
    Hostile("taint-key-null-set", refused="/gateTaints/0/key", says="got null, want string", typed=True, args=(
        "--set", "gateTaints[0].key=null", "--set", "gateTaints[0].effect=NoSchedule")),
    # Profile names: the ConfigMap key is the file name on the node, byte for byte.
    *[accepted(f"profile-name-{short(name)}", profiles_data, {name: f"# {name}\n"}, profiles=(name,))
      for name in ("1.0", "on", "010", "null", "usr.sbin.nginx", "a" * 253, "kustomization.yaml")],
    # (names the host's boot-time parser skips, or copy refuses; the error's path names the key)
    *[Hostile(f"profile-name-{name}", refused=f"/profiles/files/{name}", says="false schema",
              fields=((profiles_data, {name: f"# {name}\n"}),), profiles=(name,))
      for name in ("README", "a..b", "x.dpkg-new", "x.orig")],
    refused("profile-name--flag", "/profiles/files", "-flag", profiles_data, {"-flag": "# -flag\n"},
            profiles=("-flag",)),
    refused("profile-name-254-chars", "/profiles/files", "a" * 254, profiles_data, {"a" * 254: f"# {'a' * 254}\n"},
            profiles=("a" * 254,)),
    # priorityClassName: one field, whatever it holds.
    refused("priority-class-newline", "/priorityClassName", "system-node-critical\\n: injected",
            priority_class, "system-node-critical\n: injected",
            values={"priorityClassName": "system-node-critical\n: injected"}),
    refused("priority-class-injects-a-field", "/priorityClassName",
            "x\\n      shareProcessNamespace: true",
            priority_class, "x\n      shareProcessNamespace: true",
            values={"priorityClassName": "x\n      shareProcessNamespace: true"}),
    accepted("priority-class-null", priority_class, "null", values={"priorityClassName": "null"}),
    # Label prefixes: a DNS subdomain of labels of 1..63 characters, outside Kubernetes' own.
    # (and outside the domains Kubernetes and AKS label nodes under: RESERVED_DOMAINS in
    # src/profile/node_labels.rs; a name that merely ends alike is someone else's)
    *[refused(f"label-prefix-{short(prefix)}", "/labelPrefix", prefix, label_prefix, prefix,
              values={"labelPrefix": prefix})
      for prefix in ("kubernetes.io", "node-restriction.kubernetes.io", "node.kubernetes.io", "x.k8s.io",
                     "k8s.io", "kubernetes.azure.com", LONG_LABEL, LONG_LABEL + ".example.com",
                     "Example.com", "a-.example.com", "a..b")],
    refused("label-prefix-255-chars-in-63-char-parts", "/labelPrefix", None, label_prefix,
            ".".join(["a" * 63] * 4), values={"labelPrefix": ".".join(["a" * 63] * 4)}),
    *[accepted(f"label-prefix-{short(prefix)}", label_prefix, prefix, values={"labelPrefix": prefix})
      for prefix in ("a" * 63 + ".example.com", ".".join(["a" * 63] * 3 + ["a" * 61]),
                     "kubernetes.io.example.com", "mykubernetes.io", "notk8s.io", "123", "null")],
    # untaintTimeout: what the loader's --timeout accepts, more than zero and at most 24h.
    *[refused(f"untaint-timeout-{t or 'empty'}", "/untaintTimeout", t,
              untaint_env("APPARMOR_LOADER_TIMEOUT"), t, values={"untaintTimeout": t})
      for t in ("0s", "25h", "999999h", "86401s", "1441m", "86400001ms", "0", "00m", "1.5m", "-5s", "")],
    *[accepted(f"untaint-timeout-{t}", untaint_env("APPARMOR_LOADER_TIMEOUT"), t,
               values={"untaintTimeout": t})
      for t in ("24h", "1440m", "86400", "86400000ms", "90", "010s", "1ms")],
    accepted("untaint-timeout-90-set", untaint_env("APPARMOR_LOADER_TIMEOUT"), "90",
             typed=True, args=("--set", "untaintTimeout=90")),
    accepted("untaint-timeout-86400-integer", untaint_env("APPARMOR_LOADER_TIMEOUT"), "86400",
             typed=True, values={"untaintTimeout": 86400}),
    refused("untaint-timeout-86401-integer", "/untaintTimeout", None, typed=True, values={"untaintTimeout": 86401}),
    refused("untaint-timeout-0-set", "/untaintTimeout", None, typed=True, args=("--set", "untaintTimeout=0")),
    # Names the chart puts in objects: an existing ConfigMap, the namespace, the release.
    accepted("existing-configmap-123", profiles_volume, "123",
             values={"profiles": {"existingConfigMap": "123"}}, profiles=None),
    accepted("namespace-null", namespaces, {"null"}, namespace="null"),
    accepted("release-123", instance_labels, {"123"}, release="123"),
]


def render_hostile(case: Hostile, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = list(case.args)
    if case.values:
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump(case.values))
        args += ["-f", str(values)]
    if case.profiles:
        files = []
        for name in case.profiles:
            f = tmp_path / "profiles" / name
            f.parent.mkdir(exist_ok=True)
            f.write_text(f"# {name}\n")
            files.append(f)
        args += profile_args(files)
    elif case.profiles is not None:
        args += profile_args()
    return helm("template", case.release, str(CHART), "--namespace", case.namespace,
                "--kube-version", KUBE_VERSION, *args, *extra, check=False)


def parsed(done: subprocess.CompletedProcess) -> list[dict]:
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def pod_fields(chart) -> set[str]:
    return set(pod_spec(chart))


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.id)
def test_hostile_values_are_refused_or_arrive_as_the_same_string(case, tmp_path, pod_fields):
    done = render_hostile(case, tmp_path)
    if case.refused:
        assert done.returncode != 0, f"helm accepted {case.id}:\n{done.stdout[-2000:]}"
        assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
        assert f"at '{case.refused}'" in done.stderr, done.stderr
        if case.says is not None:
            assert case.says in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    docs = parsed(done)
    for reader, want in case.fields:
        assert reader(docs) == want, reader.__name__
    assert set(pod_spec(docs)) == pod_fields, "a value added or removed a field of the pod"


@pytest.mark.parametrize("case", [c for c in HOSTILE if not c.typed and c.fields], ids=lambda c: c.id)
def test_templates_quote_every_value_even_without_the_schema(case, tmp_path, pod_fields):
    """Defence in depth: with the schema skipped, every string still arrives as itself."""
    done = render_hostile(case, tmp_path, "--skip-schema-validation")
    assert done.returncode == 0, done.stderr
    docs = parsed(done)
    for reader, want in case.fields:
        assert reader(docs) == want, reader.__name__
    assert set(pod_spec(docs)) == pod_fields, "a value added or removed a field of the pod"


# === The README's helm install, as written ===

def readme_helm_install() -> str:
    """The indented shell block under "**With Helm**" in the README, unchanged."""
    text = (REPO / "README.md").read_text()
    after = text.split("**With Helm**", 1)[1]
    block = re.search(r"\n\n((?:    .*\n)+)", after)
    assert block, "no indented command block after **With Helm** in README.md"
    return "".join(line[4:] + "\n" for line in block.group(1).splitlines())


def test_the_readme_set_file_loop_passes_dotted_names_as_one_key(tmp_path):
    """helm's --set-file splits its path at dots: usr.sbin.nginx must arrive as one key, not
    as usr: {sbin: {nginx: ...}}. Runs the README's own two lines with bash, `helm install`
    replaced by `helm template` and the placeholders filled in (a <dir> with a space)."""
    command = readme_helm_install()
    assert "helm install apparmor-profile-loader charts/apparmor-profile-loader" in command
    profiles = tmp_path / "my profiles"
    profiles.mkdir()
    names = ["usr.sbin.nginx", "k8s-nginx", "1.0", "on"]
    for name in names:
        (profiles / name).write_text(f"# {name}\nprofile x {{\n}}\n")
    script = (command
              .replace("helm install", f'"$HELM" template --kube-version {KUBE_VERSION}')
              .replace("<dir>", '"$DIR"')
              .replace("<registry>", "registry.example")
              .replace("<digest>", "b" * 64))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HELM": tool("HELM", "helm"), "DIR": str(profiles),
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, f"{script}\n{done.stderr}"
    docs = parsed(done)
    assert profiles_data(docs) == {name: f"# {name}\nprofile x {{\n}}\n" for name in names}
    images = {c["image"] for c in containers(pod_spec(docs)).values()}
    assert images == {"registry.example/apparmor-profile-loader@sha256:" + "b" * 64}


def loader_accepts_duration(s: str) -> bool:
    """parse_duration in src/cli.rs, for strings without surrounding whitespace (which it trims
    and the schema refuses)."""
    digits = len(s) - len(s.lstrip("0123456789"))
    number, unit = s[:digits], s[digits:]
    if not number or unit not in ("ms", "", "s", "m", "h"):
        return False
    millis = int(number) * {"ms": 1, "": 1000, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]
    return 0 < millis <= 86_400_000


def test_the_schema_takes_exactly_the_durations_the_loader_takes():
    """The untaintTimeout pattern against the loader's rule, over every boundary of every unit
    (the table above runs a few of them through helm itself)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    string_form = [s for s in schema["properties"]["untaintTimeout"]["oneOf"] if s["type"] == "string"]
    pattern = re.compile(string_form[0]["pattern"])
    numbers = {*range(0, 2000), *(b + d for b in (24, 1440, 86_400, 86_400_000) for d in range(-3, 4)),
               *(10**k for k in range(12)), 99_999, 999_999, 9_999_999, 79_999_999, 85_999_999, 86_399_999}
    cases = [f"{zeros}{n}{unit}" for n in numbers for unit in ("ms", "", "s", "m", "h", "d", "us")
             for zeros in ("", "0", "000")]
    cases += ["", "m", "-5s", "+5s", "1.5m", "5 m", "5M", "5mh", "0x10s"]
    wrong = [c for c in cases if bool(pattern.fullmatch(c)) != loader_accepts_duration(c)]
    assert not wrong, wrong[:20]
