#!/usr/bin/env python3
"""Fetch the CRDs that tests/deploy/test_gate_examples.py validates manifests/examples/ against.

Each CRD is one file of a Go module at an exact version, taken with the Go command from the Go
module proxy (`go mod download -json <module>@<version>`, which also checks the module against
the Go checksum database), then checked twice against the pins below: the SHA-256 of the
module's zip and of the CRD file in it. The file is written to
${AAPL_CI_CACHE:-/var/cache/aapl-ci}/crds/<module>@<version>/<file name>; a file already there
with the pinned SHA-256 is not fetched again. The Go module cache used is $AAPL_CI_CACHE/gomod.

Run by .ci/check-deploy before `pytest tests/deploy`; by hand: `python3 tests/deploy/fetch_crds.py`.
Exit 1 if a CRD cannot be had or does not match its pins.

To move to a newer release: change `version`, run this script, and copy the SHA-256 values it
prints for the mismatch into the pins (after reading the new CRD's diff).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Crd:
    module: str
    version: str
    member: str  # the CRD's path inside the module
    sha256: str  # of the CRD file
    zip_sha256: str  # of the module zip the proxy serves

    @property
    def path(self) -> Path:
        return crd_dir() / f"{self.module.replace('/', '_')}@{self.version}" / Path(self.member).name


# Upstream Karpenter: the version the AKS provider below is built on (its go.mod).
KARPENTER_NODEPOOL = Crd(
    module="sigs.k8s.io/karpenter",
    version="v1.14.0",
    member="pkg/apis/crds/karpenter.sh_nodepools.yaml",
    sha256="62990043212a239704c0195bbd37abd0fddad90a586f5b37dfb403a0a0aefe1e",
    zip_sha256="5bd67e13e48a061848552c87704781107e6a3d1e335e5d496087fd05ac1ee9cd",
)
# The AKS Karpenter provider, which AKS Node Auto Provisioning runs: its own copy of the NodePool
# CRD (with AKS's label rules) and AKSNodeClass (karpenter.azure.com, v1beta1 the stored version).
AKS_NODEPOOL = Crd(
    module="github.com/Azure/karpenter-provider-azure",
    version="v1.14.2",
    member="pkg/apis/crds/karpenter.sh_nodepools.yaml",
    sha256="dac0c89352d5e3af2a5725c1f1fb7e85abda400caea6e670a1a9fbc1c0ae60e0",
    zip_sha256="0e94f4a3715124d53232b5efdf343c570b76397793546cc9acb1c3c09675bc68",
)
AKS_NODECLASS = Crd(
    module="github.com/Azure/karpenter-provider-azure",
    version="v1.14.2",
    member="pkg/apis/crds/karpenter.azure.com_aksnodeclasses.yaml",
    sha256="de66b67b890b0094fb9315c67247b4eb46d88eebfd19b49faf539d6ab012e4ff",
    zip_sha256="0e94f4a3715124d53232b5efdf343c570b76397793546cc9acb1c3c09675bc68",
)
# Not pinned: the node-readiness-controller's NodeReadinessRule CRD. The Go module proxy reachable
# from CI refuses sigs.k8s.io/node-readiness-controller (403 for v0.5.0 and v0.4.1, 2026-12-06),
# so its example is checked for shape only (tests/deploy/test_gate_examples.py), never skipped.
PINS = [KARPENTER_NODEPOOL, AKS_NODEPOOL, AKS_NODECLASS]


def cache() -> Path:
    return Path(os.environ.get("AAPL_CI_CACHE") or "/var/cache/aapl-ci")


def crd_dir() -> Path:
    return cache() / "crds"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def have(crd: Crd) -> bool:
    """The CRD is in the cache with its pinned SHA-256."""
    try:
        return sha256(crd.path.read_bytes()) == crd.sha256
    except OSError:
        return False


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if not found:
        raise RuntimeError("go not found (on PATH or /usr/local/go/bin)")
    return found


def download(module: str, version: str) -> Path:
    """`go mod download` of one module version; returns its zip in the module cache."""
    env = dict(os.environ, GOMODCACHE=str(cache() / "gomod"), GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    with tempfile.TemporaryDirectory() as empty:  # no go.mod around: module@version mode
        out = subprocess.run(
            [go_binary(), "mod", "download", "-json", f"{module}@{version}"],
            cwd=empty, env=env, capture_output=True, text=True,
        )
    try:
        info = json.loads(out.stdout)
    except ValueError:
        raise RuntimeError(f"go mod download {module}@{version}: exit {out.returncode}: {out.stderr.strip()}")
    if info.get("Error") or out.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version}: {info.get('Error') or out.stderr.strip()}")
    return Path(info["Zip"])


def fetch(crd: Crd) -> None:
    archive = download(crd.module, crd.version)
    data = archive.read_bytes()
    if sha256(data) != crd.zip_sha256:
        raise RuntimeError(f"{archive}: SHA-256 {sha256(data)}, pinned {crd.zip_sha256}")
    with zipfile.ZipFile(archive) as z:
        content = z.read(f"{crd.module}@{crd.version}/{crd.member}")
    if sha256(content) != crd.sha256:
        raise RuntimeError(f"{crd.module}@{crd.version}/{crd.member}: SHA-256 {sha256(content)}, pinned {crd.sha256}")
    crd.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = crd.path.with_name(f".{crd.path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, crd.path)


def main() -> int:
    failed = 0
    for crd in PINS:
        name = f"{crd.module}@{crd.version} {crd.member}"
        if have(crd):
            print(f"{name}: up to date ({crd.path})")
            continue
        try:
            fetch(crd)
            print(f"{name}: fetched, SHA-256 {crd.sha256} ({crd.path})")
        except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as e:
            print(f"{name}: FAILED: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
