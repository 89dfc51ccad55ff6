#!/usr/bin/env python3
"""Check that arm/cluster.json is the ARM equivalent of bicep/cluster.bicep.

The Bicep file is parsed with pycep (PyPI pycep-parser) and translated into the ARM JSON
that `bicep build` would produce for the constructs this repo uses (parameters with
decorators, variables, resources, outputs; expressions: references, string
interpolation, `?:`, `!`, `empty()`, `resourceGroup()`, property access). The ARM file's
expressions are normalised (whitespace outside string literals removed) and both are
compared: parameters, variables, resources (type, apiVersion, name and every property)
and outputs, and the checkov suppressions (Bicep `// checkov:skip=` comments, ARM
resource metadata.checkov) must be the same list. Any difference is reported with its
path, and the exit status is 1.

Usage: compare_bicep_arm.py [BICEP [ARM]]   (defaults: bicep/cluster.bicep arm/cluster.json)

pycep hands identifiers and string literals over alike (both as plain strings), so a
plain string is read as a reference when it names a parameter, variable or resource of
the file; do not use a string literal equal to such a name.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Bicep decorator -> ARM parameter field
DECORATORS = {
    "allowed": "allowedValues",
    "min_value": "minValue",
    "max_value": "maxValue",
    "min_length": "minLength",
    "max_length": "maxLength",
}
FUNCTIONS = {"empty": "empty", "resource_group": "resourceGroup"}
BINARY = {
    "equals": "equals",
    "and": "and",
    "or": "or",
    "greater_than": "greater",
    "greater_than_or_equals": "greaterOrEquals",
    "less_than": "less",
    "less_than_or_equals": "lessOrEquals",
}


class Unsupported(Exception):
    pass


BICEP_ESCAPES = {"\\": "\\", "'": "'", "n": "\n", "r": "\r", "t": "\t", "$": "$"}


def unescape(s: str) -> str:
    """Bicep string escapes (pycep returns string literals as written)."""
    return re.sub(r"\\(.)", lambda m: BICEP_ESCAPES.get(m.group(1), m.group(0)), s)


class Translator:
    def __init__(self, doc: dict):
        self.params = set(doc.get("parameters", {}))
        self.variables = set(doc.get("variables", {}))
        self.resources = doc.get("resources", {})

    # -- expressions ------------------------------------------------------------------
    def top(self, node: Any) -> Any:
        """A property value: JSON literal, or "[expression]"."""
        if isinstance(node, list):
            return [self.top(n) for n in node]
        if isinstance(node, dict) and not ({"operator", "function"} & node.keys()):
            return {k: self.top(v) for k, v in node.items()}
        if node is None or isinstance(node, (bool, int, float)):
            return node
        if isinstance(node, str) and not self.is_reference(node) and "${" not in node:
            node = unescape(node)
            return "[" + node if node.startswith("[") else node  # ARM escapes a leading [
        return "[" + self.inner(node) + "]"

    def is_reference(self, s: str) -> bool:
        return s in self.params or s in self.variables or s in self.resources

    def inner(self, node: Any) -> str:
        """An ARM template-language expression (without the brackets)."""
        if node is None:
            return "null()"
        if isinstance(node, bool):
            return "true()" if node else "false()"
        if isinstance(node, int):
            return str(node)
        if isinstance(node, str):
            if node in self.params:
                return f"parameters('{node}')"
            if node in self.variables:
                return f"variables('{node}')"
            if node in self.resources:
                raise Unsupported(f"bare resource reference {node!r}")
            if "${" in node:
                return self.interpolation(node)
            return "'" + unescape(node).replace("'", "''") + "'"
        if isinstance(node, list):
            return "createArray(" + ", ".join(self.inner(n) for n in node) + ")"
        if "function" in node:
            fn = node["function"]
            name = FUNCTIONS.get(fn["type"])
            if name is None:
                raise Unsupported(f"function {fn['type']}")
            args = [a for a in fn.get("parameters", {}).values() if a is not None]
            return f"{name}(" + ", ".join(self.inner(a) for a in args) + ")"
        if "operator" in node:
            op = node["operator"]
            kind, ops = op["type"], op["operands"]
            if kind == "conditional":
                return "if({}, {}, {})".format(
                    self.inner(ops["condition"]),
                    self.inner(ops["true_value"]),
                    self.inner(ops["false_value"]),
                )
            if kind == "not":
                return f"not({self.inner(ops['bool_value'])})"
            if kind in BINARY:
                a, b = ops.values()
                return f"{BINARY[kind]}({self.inner(a)}, {self.inner(b)})"
            if kind == "property_accessor":
                target, prop = ops["operand_1"], ops["operand_2"]
                if isinstance(target, str) and target in self.resources:
                    if prop == "name":
                        return self.inner(self.resources[target]["config"]["name"])
                    raise Unsupported(f"{target}.{prop}")
                return f"{self.inner(target)}.{prop}"
            raise Unsupported(f"operator {kind}")
        raise Unsupported(repr(node))

    def interpolation(self, text: str) -> str:
        parts = re.split(r"\$\{([^}]*)\}", text)
        fmt, args = "", []
        for i, part in enumerate(parts):
            if i % 2:
                ref = part.strip()
                if not self.is_reference(ref):
                    raise Unsupported(f"interpolation of {ref!r} (only plain references)")
                fmt += "{%d}" % len(args)
                args.append(self.inner(ref))
            else:
                fmt += unescape(part).replace("{", "{{").replace("}", "}}")
        return "format(" + ", ".join(["'" + fmt.replace("'", "''") + "'"] + args) + ")"


def bicep_to_arm(doc: dict) -> dict:
    tr = Translator(doc)
    params = {}
    for name, p in doc.get("parameters", {}).items():
        out: dict[str, Any] = {"type": p["type"]}
        for dec in p.get("decorators", []):
            if dec["type"] == "description":
                out["metadata"] = {"description": unescape(dec["argument"])}
            elif dec["type"] == "secure":
                out["type"] = "secure" + p["type"]
            elif dec["type"] in DECORATORS:
                out[DECORATORS[dec["type"]]] = tr.top(dec["argument"])
            else:
                raise Unsupported(f"parameter decorator {dec['type']}")
        if "default" in p:
            out["defaultValue"] = tr.top(p["default"])
        params[name] = out
    variables = {n: tr.top(v["value"]) for n, v in doc.get("variables", {}).items()}
    resources = []
    for sym, r in doc.get("resources", {}).items():
        if r.get("existing"):
            continue
        res = {"type": r["type"], "apiVersion": r["api_version"]}
        res.update({k: tr.top(v) for k, v in r["config"].items()})
        resources.append(res)
    outputs = {}
    for name, o in doc.get("outputs", {}).items():
        out = {"type": o["type"], "value": tr.top(o["value"])}
        for dec in o.get("decorators", []):
            if dec["type"] == "description":
                out["metadata"] = {"description": unescape(dec["argument"])}
        outputs[name] = out
    return {"parameters": params, "variables": variables, "resources": resources,
            "outputs": outputs}


def normalise_expression(s: str) -> str:
    """Remove whitespace outside '...' literals in an ARM "[...]" expression."""
    if not (s.startswith("[") and s.endswith("]")) or s.startswith("[["):
        return s
    out, quoted = [], False
    for ch in s:
        if ch == "'":
            quoted = not quoted
        if quoted or not ch.isspace():
            out.append(ch)
    return "".join(out)


def normalise(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: normalise(v) for k, v in node.items()}
    if isinstance(node, list):
        return [normalise(v) for v in node]
    if isinstance(node, str):
        return normalise_expression(node)
    return node


def bicep_suppressions(text: str) -> list[str]:
    """checkov suppressions written as `// checkov:skip=ID:reason` comments in Bicep."""
    return [m.strip() for m in re.findall(r"//\s*(checkov:skip=[^\n]*)", text)]


def arm_suppressions(arm: dict) -> list[str]:
    """The same in ARM JSON, where checkov reads them from a resource's metadata.checkov."""
    return [
        str(item).strip()
        for r in arm.get("resources", [])
        for item in r.get("metadata", {}).get("checkov", [])
    ]


def arm_view(arm: dict) -> dict:
    resources = []
    for r in arm.get("resources", []):
        r = {k: v for k, v in r.items() if k != "dependsOn" or v}
        if "metadata" in r:  # checkov suppressions are compared separately
            metadata = {k: v for k, v in r["metadata"].items() if k != "checkov"}
            r = {k: v for k, v in r.items() if k != "metadata"}
            if metadata:
                r["metadata"] = metadata
        resources.append(r)
    return normalise({
        "parameters": arm.get("parameters", {}),
        "variables": arm.get("variables", {}),
        "resources": resources,
        "outputs": arm.get("outputs", {}),
    })


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between a (from Bicep) and b (from ARM), one line per path."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in b:
                out.append(f"{p}: only in Bicep: {json.dumps(a[k])}")
            elif k not in a:
                out.append(f"{p}: only in ARM: {json.dumps(b[k])}")
            else:
                out += diff(a[k], b[k], p)
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            p = f"{path}[{i}]"
            if i >= len(b):
                out.append(f"{p}: only in Bicep: {json.dumps(a[i])}")
            elif i >= len(a):
                out.append(f"{p}: only in ARM: {json.dumps(b[i])}")
            else:
                out += diff(a[i], b[i], p)
        return out
    if a != b or type(a) is not type(b):
        return [f"{path}: Bicep {json.dumps(a)} != ARM {json.dumps(b)}"]
    return []


def keyed_resources(view: dict) -> dict:
    """Resources keyed by type and name, so the report names them."""
    view = dict(view)
    view["resources"] = {f"{r.get('type')}({r.get('name')})": r for r in view["resources"]}
    return view


def compare(bicep_path: Path, arm_path: Path) -> list[str]:
    from pycep import BicepParser  # PyPI: pycep-parser

    doc = BicepParser().parse(file_path=bicep_path)
    arm = json.loads(arm_path.read_text(encoding="utf-8"))
    problems = []
    schema = arm.get("$schema", "")
    if "deploymentTemplate.json" not in schema:
        problems.append(f"$schema: not an ARM deployment template schema: {schema!r}")
    scope = doc.get("globals", {}).get("scope", {}).get("value", "resourceGroup")
    if scope != "resourceGroup" or "subscriptionDeploymentTemplate" in schema:
        problems.append(f"targetScope {scope!r} does not match $schema {schema!r}")
    from_bicep = keyed_resources(normalise(bicep_to_arm(doc)))
    from_arm = keyed_resources(arm_view(arm))
    problems += diff(from_bicep, from_arm)
    problems += diff(
        {"checkov-suppressions": bicep_suppressions(bicep_path.read_text(encoding="utf-8"))},
        {"checkov-suppressions": arm_suppressions(arm)},
    )
    return problems


def main(argv: list[str]) -> int:
    bicep = Path(argv[1]) if len(argv) > 1 else REPO / "bicep" / "cluster.bicep"
    arm = Path(argv[2]) if len(argv) > 2 else REPO / "arm" / "cluster.json"
    problems = compare(bicep, arm)
    for p in problems:
        print(f"DRIFT {p}")
    if problems:
        print(f"{arm} is not the ARM equivalent of {bicep}: {len(problems)} difference(s)")
        return 1
    print(f"{arm} matches {bicep}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
