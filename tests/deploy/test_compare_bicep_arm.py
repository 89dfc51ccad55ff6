"""compare_bicep_arm.py: the committed templates match, and drift is caught with its path."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_bicep_arm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BICEP = REPO / "bicep" / "cluster.bicep"
ARM = REPO / "arm" / "cluster.json"


def test_committed_templates_match():
    assert compare_bicep_arm.compare(BICEP, ARM) == []


def test_cli_exit_status(tmp_path, capsys):
    assert compare_bicep_arm.main(["x", str(BICEP), str(ARM)]) == 0
    broken = tmp_path / "cluster.json"
    arm = json.loads(ARM.read_text())
    arm["resources"][0]["properties"]["disableLocalAccounts"] = False
    broken.write_text(json.dumps(arm))
    assert compare_bicep_arm.main(["x", str(BICEP), str(broken)]) == 1
    assert "DRIFT resources." in capsys.readouterr().out


def pools(arm):
    return arm["resources"][0]["properties"]["agentPoolProfiles"]


ARM_MUTATIONS = {
    "api version": (lambda a: a["resources"][0].update(apiVersion="2024-02-01"), "apiVersion"),
    "taint effect": (
        lambda a: a["variables"].update(gateTaint=a["variables"]["gateTaint"].replace(
            "true:NoSchedule')]", "true:NoExecute')]")),
        "variables.gateTaint",
    ),
    "nodeTaints instead of init taints": (
        lambda a: pools(a)[1].update(nodeTaints=pools(a)[1].pop("nodeInitializationTaints")),
        "agentPoolProfiles[1].nodeInitializationTaints: only in Bicep",
    ),
    "system pool taint": (
        lambda a: pools(a)[0].update(nodeTaints=[]),
        "agentPoolProfiles[0].nodeTaints[0]: only in Bicep",
    ),
    "parameter default": (
        lambda a: a["parameters"]["userPoolOsSku"].update(defaultValue="Ubuntu2404"),
        "parameters.userPoolOsSku.defaultValue",
    ),
    "allowed values": (
        lambda a: a["parameters"]["userPoolOsSku"]["allowedValues"].append("AzureLinux"),
        "parameters.userPoolOsSku.allowedValues[3]: only in ARM",
    ),
    "extra parameter": (
        lambda a: a["parameters"].update(extra={"type": "string"}),
        "parameters.extra: only in ARM",
    ),
    "output": (
        lambda a: a["outputs"]["clusterName"].update(value="[parameters('location')]"),
        "outputs.clusterName.value",
    ),
    "extra resource": (
        lambda a: a["resources"].append({"type": "Microsoft.Resources/tags", "name": "default"}),
        "resources.Microsoft.Resources/tags(default): only in ARM",
    ),
    "suppression dropped": (
        lambda a: a["resources"][0]["metadata"]["checkov"].pop(),
        "checkov-suppressions[4]: only in Bicep",
    ),
    "aad": (
        lambda a: a["resources"][0]["properties"]["aadProfile"].update(enableAzureRBAC=False),
        "aadProfile.enableAzureRBAC",
    ),
}


@pytest.mark.parametrize("name", sorted(ARM_MUTATIONS))
def test_arm_drift_is_detected(tmp_path, name):
    mutate, expected_path = ARM_MUTATIONS[name]
    arm = json.loads(ARM.read_text())
    mutated = copy.deepcopy(arm)
    mutate(mutated)
    assert mutated != arm
    target = tmp_path / "cluster.json"
    target.write_text(json.dumps(mutated, indent=2))
    problems = compare_bicep_arm.compare(BICEP, target)
    assert problems, name
    assert any(expected_path in p for p in problems), problems


BICEP_MUTATIONS = {
    "bicep property": ("disableLocalAccounts: true", "disableLocalAccounts: false",
                       "properties.disableLocalAccounts"),
    "bicep api version": ("@2026-08-02-preview", "@2025-01-01", "apiVersion"),
    "bicep description": ("Number of System pool nodes.", "How many system nodes.",
                          "parameters.systemPoolCount.metadata.description"),
    "bicep min value": ("@minValue(1)\n@maxValue(100)", "@minValue(2)\n@maxValue(100)",
                        "parameters.systemPoolCount.minValue"),
}


@pytest.mark.parametrize("name", sorted(BICEP_MUTATIONS))
def test_bicep_drift_is_detected(tmp_path, name):
    old, new, expected_path = BICEP_MUTATIONS[name]
    text = BICEP.read_text()
    assert old in text, name
    target = tmp_path / "cluster.bicep"
    target.write_text(text.replace(old, new, 1))
    problems = compare_bicep_arm.compare(target, ARM)
    assert any(expected_path in p for p in problems), problems


def test_whitespace_in_arm_expressions_is_not_drift(tmp_path):
    arm = json.loads(ARM.read_text())
    pools(arm)[1]["minCount"] = pools(arm)[1]["minCount"].replace(", ", " ,  ")
    target = tmp_path / "cluster.json"
    target.write_text(json.dumps(arm))
    assert compare_bicep_arm.compare(BICEP, target) == []
