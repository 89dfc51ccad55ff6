"""The gate examples of manifests/examples/ (README, "Choosing a gate"), checked offline.

- Each example validates against the openAPIV3Schema of the real CRD at a pinned release
  (tests/deploy/fetch_crds.py puts them in $AAPL_CI_CACHE/crds; .ci/check-deploy runs it first),
  made strict as `kubectl apply` (server-side field validation Strict) is: an unknown field is an
  error, not pruned. CEL rules (x-kubernetes-validations) are not evaluated; the ones that matter
  for the examples are asserted by hand below.
- The validator is shown to reject broken copies of each example (a misspelled field, a bad enum
  value, a missing required field), so a pass means something.
- The NAP startup taint is the gate of `kustomize build manifests`: tolerated by the DaemonSet,
  one of `untaint`'s `--taint` values, a gate key of the admission policy. Renaming the gate
  without the example fails here.
- manifests/examples/ is not part of `kustomize build manifests`.

KUSTOMIZE names the kustomize binary (default: `kustomize` on PATH).
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_crds  # noqa: E402
from test_kustomize import containers, kustomize_build, kustomize_overlay, one  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
NAP = EXAMPLES / "nap-nodepool.yaml"
NRR = EXAMPLES / "node-readiness-rule.yaml"
GATE = {"key": "WaitingForAppArmorProfiles", "value": "true", "effect": "NoSchedule"}
NRR_CONDITION = "AppArmorProfilesLoaded"

# The example's image families: Ubuntu ones (Azure Linux has AppArmor only from node image 20251107
# on, README "Requirements", which an AKSNodeClass cannot pin).
APPARMOR_IMAGE_FAMILIES = {"Ubuntu", "Ubuntu2204", "Ubuntu2404"}


# --- loading ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize_build("manifests")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(path: Path, kind: str) -> dict:
    found = [d for d in docs(path) if d["kind"] == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, got {len(found)}"
    return found[0]


def crd(pin: fetch_crds.Crd) -> dict:
    """The pinned CRD from the cache, checked against its SHA-256 again."""
    try:
        data = pin.path.read_bytes()
    except OSError:
        pytest.fail(f"{pin.path} missing: run tests/deploy/fetch_crds.py (as .ci/check-deploy does)")
    assert fetch_crds.sha256(data) == pin.sha256, f"{pin.path} is not the pinned file"
    return yaml.safe_load(data)


# --- validation ------------------------------------------------------------------------------

def strict(schema):
    """A copy of a structural schema in which every object with `properties` refuses other fields
    (what the API server's Strict field validation does), unless it preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def errors(doc: dict, definition: dict) -> list[str]:
    """What the CRD's schema finds wrong with `doc`: [] when it is valid."""
    spec = definition["spec"]
    group, _, version = doc["apiVersion"].rpartition("/")
    if group != spec["group"] or doc["kind"] != spec["names"]["kind"]:
        return [f"{doc['apiVersion']} {doc['kind']} is not {spec['group']} {spec['names']['kind']}"]
    served = {v["name"]: v for v in spec["versions"] if v.get("served")}
    if version not in served:
        return [f"{spec['group']}/{version} is not served (served: {sorted(served)})"]
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft4Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc))


NODEPOOL_CRDS = [fetch_crds.KARPENTER_NODEPOOL, fetch_crds.AKS_NODEPOOL]


@pytest.mark.parametrize("pin", NODEPOOL_CRDS, ids=lambda p: f"{p.module}@{p.version}")
def test_nap_nodepool_is_valid(pin):
    assert errors(by_kind(NAP, "NodePool"), crd(pin)) == []


def test_nap_aksnodeclass_is_valid():
    assert errors(by_kind(NAP, "AKSNodeClass"), crd(fetch_crds.AKS_NODECLASS)) == []


def set_path(doc: dict, path: str, value) -> dict:
    """A copy of doc with `path` (dot-separated; integers index lists) set, or removed when value is
    REMOVE; a key named `old>new` is renamed."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if ">" in last:
        old, new = last.split(">")
        node[new] = node.pop(old)
    elif value is REMOVE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return out


REMOVE = object()

NODEPOOL_BREAKAGES = {
    "misspelled startupTaints": ("spec.template.spec.startupTaints>startupTaint", None, "startupTaint"),
    "misspelled taint effect": ("spec.template.spec.startupTaints.0.effect", "NoSchedul", "NoSchedul"),
    "taint without a key": ("spec.template.spec.startupTaints.0.key", REMOVE, "'key' is a required"),
    "no nodeClassRef": ("spec.template.spec.nodeClassRef", REMOVE, "'nodeClassRef' is a required"),
    "unknown top-level spec field": ("spec.templates", {}, "templates"),
    "taint value that is not a label value": ("spec.template.spec.startupTaints.0.value", "true!", "true!"),
}


@pytest.mark.parametrize("pin", NODEPOOL_CRDS, ids=lambda p: f"{p.module}@{p.version}")
@pytest.mark.parametrize("breakage", sorted(NODEPOOL_BREAKAGES))
def test_the_nodepool_schema_rejects_a_broken_copy(pin, breakage):
    path, value, expected = NODEPOOL_BREAKAGES[breakage]
    found = errors(set_path(by_kind(NAP, "NodePool"), path, value), crd(pin))
    assert any(expected in e for e in found), f"{breakage}: {found}"


def test_the_aksnodeclass_schema_rejects_a_broken_copy():
    node_class = by_kind(NAP, "AKSNodeClass")
    definition = crd(fetch_crds.AKS_NODECLASS)
    assert any("Ubuntu2004" in e for e in errors(set_path(node_class, "spec.imageFamily", "Ubuntu2004"), definition))
    assert any("imagefamily" in e for e in errors(set_path(node_class, "spec.imageFamily>imagefamily", None),
                                                   definition))
    wrong_version = dict(node_class, apiVersion="karpenter.azure.com/v1")
    assert any("not served" in e for e in errors(wrong_version, definition))


# --- the NAP example against the loader's own gate ----------------------------------------------

def tolerates(toleration: dict, taint: dict) -> bool:
    """Kubernetes' rule (core/v1 Toleration.ToleratesTaint)."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if not toleration.get("key") and toleration.get("operator") != "Exists":
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value", "") == taint.get("value", "")


def parse_taint(text: str) -> dict:
    """`key[=value]:effect`, as `untaint --taint` reads it."""
    key_value, _, effect = text.rpartition(":")
    key, _, value = key_value.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def untaint_taints(rendered) -> list[dict]:
    untaint = containers(one(rendered, "DaemonSet")["spec"]["template"]["spec"])["untaint"]
    env = {e["name"]: e.get("value") for e in untaint.get("env", [])}
    args = untaint.get("args", [])
    flagged = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--taint"]
    flagged += [a.split("=", 1)[1] for a in args if a.startswith("--taint=")]
    listed = flagged or env.get("APPARMOR_LOADER_TAINTS", "").split(",")
    assert listed, "untaint is given no --taint"
    return [parse_taint(t) for t in listed]


def policy_gate_keys(rendered) -> list[str]:
    policy = one(rendered, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    return re.findall(r"'([^']*)'", variables["gateKeys"])


def test_nap_startup_taint_is_the_gate_the_loader_removes(rendered):
    pool = by_kind(NAP, "NodePool")["spec"]["template"]["spec"]
    assert pool["startupTaints"] == [GATE]
    # tolerated by the DaemonSet, so the loader runs on the new node
    tolerations = one(rendered, "DaemonSet")["spec"]["template"]["spec"]["tolerations"]
    assert any(tolerates(t, GATE) for t in tolerations), tolerations
    # removed by untaint, exactly as written (key, value and effect)
    assert GATE in untaint_taints(rendered)
    # and the admission policy lets the loader remove it
    assert GATE["key"] in policy_gate_keys(rendered)
    # never a permanent NodePool taint: Karpenter keeps `taints` and needs pods to tolerate them
    assert all(t["key"] != GATE["key"] for t in pool.get("taints", []))


def test_nap_nodes_are_where_the_daemonset_runs(rendered):
    """The NodePool asks for Linux amd64/arm64 nodes, exactly the DaemonSet's node affinity, on an
    Ubuntu image (AppArmor)."""
    pool = by_kind(NAP, "NodePool")["spec"]["template"]["spec"]
    wanted = {r["key"]: set(r["values"]) for r in pool["requirements"] if r["operator"] == "In"}
    pod = one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1, terms
    daemonset = {e["key"]: set(e["values"]) for e in terms[0]["matchExpressions"] if e["operator"] == "In"}
    daemonset.update({k: {v} for k, v in pod.get("nodeSelector", {}).items()})
    assert wanted["kubernetes.io/os"] == daemonset["kubernetes.io/os"] == {"linux"}
    assert wanted["kubernetes.io/arch"] == daemonset["kubernetes.io/arch"]
    ref = pool["nodeClassRef"]
    node_class = by_kind(NAP, "AKSNodeClass")
    assert (ref["group"], ref["kind"], ref["name"]) == (
        node_class["apiVersion"].split("/")[0], node_class["kind"], node_class["metadata"]["name"])
    assert node_class["spec"]["imageFamily"] in APPARMOR_IMAGE_FAMILIES


# --- the NodeReadinessRule example --------------------------------------------------------------

def test_nrr_is_bootstrap_only_on_the_loader_condition():
    spec = by_kind(NRR, "NodeReadinessRule")["spec"]
    assert spec["enforcementMode"] == "bootstrap-only"
    assert spec["conditions"] == [{"type": NRR_CONDITION, "requiredStatus": "True"}]  # no defaultStatus
    taint = spec["taint"]
    assert taint["effect"] == "NoSchedule"
    # The CRD's CEL rules on the key (not evaluated by the schema check above), and its name part
    # is the loader's plain gate key, so a renamed gate shows here too.
    prefix, name = taint["key"].split("/")
    assert prefix == "readiness.k8s.io"
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name) and len(name) <= 63
    assert name == GATE["key"]
    assert len(taint.get("value", "")) <= 63


def test_nrr_path_is_wired_by_the_node_condition_component(rendered, tmp_path):
    """The default build neither tolerates the example rule's taint nor writes its condition; an
    overlay with manifests/node-condition tolerates the taint, runs untaint with
    --node-condition (env), and the condition type is the one `untaint` writes
    (src/kube/condition.rs) and the admission policy lets it write. The taint is the
    controller's to remove: it is never one of untaint's gate taints."""
    taint = by_kind(NRR, "NodeReadinessRule")["spec"]["taint"]
    tolerations = one(rendered, "DaemonSet")["spec"]["template"]["spec"]["tolerations"]
    assert not any(tolerates(t, taint) for t in tolerations)
    overlay = kustomize_overlay(tmp_path, "kube-system", ("node-condition",))
    ds = one(overlay, "DaemonSet")
    assert any(tolerates(t, taint) for t in ds["spec"]["template"]["spec"]["tolerations"])
    env = {e["name"]: e.get("value") for e in containers(ds["spec"]["template"]["spec"])["untaint"]["env"]}
    assert env["APPARMOR_LOADER_NODE_CONDITION"] == "true"
    for docs_ in (rendered, overlay):
        assert all(t["key"] != taint["key"] for t in untaint_taints(docs_))
    source = (REPO / "src" / "kube" / "condition.rs").read_text()
    assert f'pub const CONDITION_TYPE: &str = "{NRR_CONDITION}";' in source
    policy = one(overlay, "ValidatingAdmissionPolicy")["spec"]["variables"]
    assert {"name": "conditionType", "expression": f"'{NRR_CONDITION}'"} in policy


# --- examples stay examples -----------------------------------------------------------------------

def test_examples_are_not_in_the_kustomize_build(rendered):
    example_kinds = {d["kind"] for p in EXAMPLES.glob("*.yaml") for d in docs(p)}
    assert example_kinds == {"NodePool", "AKSNodeClass", "NodeReadinessRule"}
    assert not example_kinds & {d["kind"] for d in rendered}
    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", []) + kustomization.get("components", [])
    assert not any("examples" in entry for entry in listed), listed


# --- the README says what is tested -----------------------------------------------------------------

def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_readme_choosing_a_gate_names_the_pinned_versions_and_files():
    section = readme_section("Choosing a gate")
    assert f"Karpenter {fetch_crds.KARPENTER_NODEPOOL.version}" in section
    assert f"AKS provider {fetch_crds.AKS_NODEPOOL.version}" in section
    assert fetch_crds.AKS_NODECLASS.version == fetch_crds.AKS_NODEPOOL.version
    assert "is not validated against" in section  # the rule's CRD: see fetch_crds.PINS
    for path in (NAP, NRR):
        assert str(path.relative_to(REPO)) in section
    # the preview API version the cluster templates use
    bicep = (REPO / "bicep" / "cluster.bicep").read_text()
    api = re.search(r"'Microsoft\.ContainerService/managedClusters@([^']+)'", bicep).group(1)
    assert api.endswith("-preview") and f"`{api}`" in section
    for kind, doc in (("NodePool", by_kind(NAP, "NodePool")), ("AKSNodeClass", by_kind(NAP, "AKSNodeClass")),
                      ("NodeReadinessRule", by_kind(NRR, "NodeReadinessRule"))):
        assert f"`{doc['apiVersion']}` {kind}" in section, kind
    assert f"`{GATE['key']}={GATE['value']}:{GATE['effect']}`" in section
    assert "not implemented yet" not in section
    assert "`manifests/node-condition`" in section and (REPO / "manifests" / "node-condition").is_dir()
